//! `/openapi.json`: a valid OpenAPI 3.1 document that describes every route of the instance
//! face, with the bounds the server enforces.

use awc::http::StatusCode;
use serde_json::Value;

use super::*;
use crate::common::*;

/// Every method on every path of the face, plus neighbours that are not routes.
#[actix_rt::test]
async fn openapi_describes_every_route() {
    let srv = TestServer::start().await;
    let mut res = client().get(srv.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8(res.body().limit(4 << 20).await.unwrap().to_vec()).unwrap();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_refs_resolve(&doc, &doc);

    let paths = doc["paths"].as_object().unwrap();
    let face: Vec<&String> = paths
        .keys()
        .filter(|p| p.starts_with("/notification/v1/instance/"))
        .collect();
    assert_eq!(face.len(), 3, "{face:?}");
    let id = instance();
    let concrete = |p: &str| {
        p.replace("{instance_id}", &id)
            .replace("{notification_id}", "x")
    };
    let mut probes: Vec<(String, Option<&Value>)> = face
        .iter()
        .map(|p| (concrete(p), Some(&paths[p.as_str()])))
        .collect();
    for neighbour in [
        "",
        "/stream",
        "/stream/notification",
        "/stream/notification/lp/x",
        "/notification/x/y",
        "/notifications",
    ] {
        probes.push((format!("{}{neighbour}", base(&id)), None));
    }
    let t = token("ops", &["notification:instance:*"]);
    for (path, item) in probes {
        for method in ["get", "post", "put", "patch", "delete"] {
            let url = srv.url(&format!("{path}?deadline=0"));
            let method_name: awc::http::Method = method.to_uppercase().parse().unwrap();
            let req = client().request(method_name, url).bearer_auth(&t);
            let mut res = req.send_body("{}").await.unwrap();
            let body = res.body().await.unwrap();
            // Unrouted requests get actix's bare 404 (no such path), or 405 (the path is
            // served for other methods only).
            let routed = !(res.status() == StatusCode::METHOD_NOT_ALLOWED
                || body.is_empty() && res.status() == StatusCode::NOT_FOUND);
            let documented = item.is_some_and(|i| i.get(method).is_some());
            assert_eq!(routed, documented, "{method} {path}: {}", res.status());
            if let Some(op) = item.and_then(|i| i.get(method)) {
                let status = res.status().as_u16().to_string();
                assert!(
                    op["responses"].get(&status).is_some(),
                    "{method} {path}: {status} is not documented"
                );
            }
        }
    }

    // The documented bounds are the enforced ones.
    let lp = &paths["/notification/v1/instance/{instance_id}/stream/notification/lp"]["get"];
    let reader_token = reader(&id);
    for name in ["max_page_size", "deadline"] {
        let schema = &lp["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is documented"))["schema"];
        let (min, max) = (
            schema["minimum"].as_i64().unwrap(),
            schema["maximum"].as_i64().unwrap(),
        );
        for (value, ok) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
            let other = if name == "deadline" {
                "max_page_size=1"
            } else {
                "deadline=0"
            };
            create_messages(&srv.url(""), &id, &["b".to_string()]).await;
            let query = format!("offset_reset_strategy=earliest&{other}&{name}={value}");
            let r = poll(&srv.url(""), &id, &query, &reader_token).await;
            assert_eq!(r.status == StatusCode::OK, ok, "{name}={value}: {}", r.json);
        }
    }
    for (code, schema) in [
        ("403", "ErrorBody"),
        ("400", "ErrorBody"),
        ("422", "ValidationErrors"),
    ] {
        assert_eq!(
            lp["responses"][code]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}")
        );
    }
    assert!(lp["responses"]["409"].is_object() && lp["responses"]["503"].is_object());
    let page = &paths["/notification/v1/instance/{instance_id}/notification"]["get"];
    assert!(page["responses"]["304"].is_object());
    assert!(page["responses"]["200"]["headers"]["ETag"].is_object());
}

/// Every `$ref` in the document points at something that exists.
pub fn assert_refs_resolve(doc: &Value, at: &Value) {
    match at {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target.strip_prefix('#').expect("a local ref");
                assert!(doc.pointer(pointer).is_some(), "dangling {target}");
            }
            map.values().for_each(|v| assert_refs_resolve(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| assert_refs_resolve(doc, v)),
        _ => {}
    }
}
