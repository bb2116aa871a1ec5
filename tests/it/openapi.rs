//! `/openapi.json` against the running server: a valid OpenAPI 3.1 document whose operations
//! are exactly the routes the server serves (`herald::api::routes`), each of which answers,
//! and which covers every endpoint of the HTTP contract.

use std::collections::BTreeSet;

use awc::http::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;
use crate::instances::openapi::assert_refs_resolve;

/// Every endpoint of the HTTP contract (API.md), as (method, path template).
const CONTRACT: &[(&str, &str)] = &[
    ("GET", "/events/client"),
    ("POST", "/events/client/{clientId}"),
    (
        "GET",
        "/notification/v1/instance/{instance_id}/stream/notification/lp",
    ),
    (
        "GET",
        "/notification/v1/instance/{instance_id}/notification",
    ),
    (
        "GET",
        "/notification/v1/instance/{instance_id}/notification/{notification_id}",
    ),
    (
        "POST",
        "/notification/v1/instance/{instance_id}/notification",
    ),
    ("GET", "/subscribe_to_events"),
    ("POST", "/push_events"),
    ("POST", "/drop_user"),
    ("GET", "/clients"),
    ("POST", "/dashboard/v1/registrations"),
    ("GET", "/dashboard/v1/registrations"),
    ("GET", "/dashboard/v1/registrations/{id}"),
    ("PUT", "/dashboard/v1/registrations/{id}"),
    ("PATCH", "/dashboard/v1/registrations/{id}"),
    ("DELETE", "/dashboard/v1/registrations/{id}"),
    ("GET", "/dashboard/v1/dashboards/{id}"),
    ("GET", "/dashboard/v1/status"),
    ("POST", "/dashboard/v1/notifications"),
    ("GET", "/dashboard/v1/notifications"),
    ("GET", "/dashboard/v1/notifications/{id}"),
    ("DELETE", "/dashboard/v1/notifications/{id}"),
    ("GET", "/dashboard/v1/notifications/{id}/deliveries"),
    ("GET", "/health"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/dev/token"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document lists exactly the served routes, in both directions, and covers the contract.
#[actix_rt::test]
async fn openapi_documents_exactly_the_served_routes() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let doc = fetch_document(&srv).await;
    let documented = operations(&doc);
    let listed = herald::api::routes();
    let served: BTreeSet<(String, String)> = listed
        .iter()
        .map(|(method, path)| (method.to_string(), path.clone()))
        .collect();
    assert_eq!(served.len(), listed.len(), "a route is registered twice");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served, not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
    for (method, path) in CONTRACT {
        let route = (method.to_string(), path.to_string());
        assert!(
            documented.contains(&route),
            "{method} {path} is not documented"
        );
    }

    let mut ids = BTreeSet::new();
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            ids.insert(id.to_string()),
            "{method} {path}: operationId {id:?}"
        );
        assert!(op["summary"].is_string(), "{method} {path} has no summary");
        assert!(op["tags"].is_array(), "{method} {path} has no tag");
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{method} {path} has no response");
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status} has no description"
            );
        }
    }
}

/// Every documented operation answers from the running server, with a documented status.
#[actix_rt::test]
async fn every_documented_operation_answers() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let doc = fetch_document(&srv).await;

    // The probe tells routes from non-routes: these are not served.
    assert_eq!(probe(&srv, &Method::GET, "/no/such/route").await, None);
    assert_eq!(probe(&srv, &Method::DELETE, "/health").await, None);

    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let concrete = concrete(&path);
        if op["responses"].get("101").is_some() {
            let (res, _conn) = client()
                .ws(srv.url(&concrete))
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
            // A plain request, probed below, gets the documented 400.
        }
        let method: Method = method.parse().unwrap();
        let status = probe(&srv, &method, &concrete)
            .await
            .unwrap_or_else(|| panic!("{method} {path} is not served"));
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.contains_key(status.as_str()) || responses.contains_key("default"),
            "{method} {path}: {status} is not documented"
        );
    }
}

/// The only way to serve a route is `Routes::add` (in `src/api/openapi.rs`), which takes
/// the route's OpenAPI declaration: nothing else in the sources registers one with actix.
#[test]
fn no_route_bypasses_the_declarations() {
    let registering = [
        ".route(",
        "web::resource(",
        "web::scope(",
        "default_service(",
        ".configure(",
        "web::method(",
        "Files::new(",
    ];
    let mut found = Vec::new();
    for (relative, text) in source_files() {
        for (n, line) in text.lines().enumerate() {
            let allowed = match relative.as_str() {
                // `Routes` itself, which registers what `add` was given.
                "api/openapi.rs" => true,
                // What the app hands the server (`api::site`).
                "server.rs" => line.contains(".configure(move |cfg| site.configure(cfg))"),
                _ => false,
            };
            let registers = registering.iter().any(|p| line.contains(p))
                || (line.contains(".service(") && !line.contains(".service()"));
            if registers && !allowed {
                found.push(format!("src/{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "routes registered around `Routes::add`:\n{}",
        found.join("\n")
    );
}

async fn fetch_document(srv: &TestServer) -> Value {
    let mut res = client().get(srv.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8(res.body().limit(4 << 20).await.unwrap().to_vec()).unwrap();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_refs_resolve(&doc, &doc);
    doc
}

/// Every (METHOD, path) of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// A path template with every `{parameter}` filled in.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("a closed parameter") + start;
        out.push_str(&rest[..start]);
        let name = &rest[start + 1..end];
        out.push_str(if name.contains("instance") {
            "0b2f1cf0-8a63-4b5e-9a31-3a4b6c7d8e9f"
        } else {
            "x"
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The status a request without credentials gets, or `None` when no route took it: actix
/// answers those with an empty 404 (no such path) or 405 (no such method), while every
/// handler's 404 has a body.
async fn probe(srv: &TestServer, method: &Method, path: &str) -> Option<StatusCode> {
    let url = srv.url(&format!("{path}?deadline=0"));
    let req = client().request(method.clone(), url);
    let mut res = if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        req.insert_header(("content-type", "application/json"))
            .send_body("{}")
            .await
    } else {
        req.send().await
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status();
    // A path served for other methods only answers 405 (with `Allow`).
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert!(
            res.headers().contains_key("allow"),
            "{method} {path}: 405 without Allow"
        );
        return None;
    }
    if status == StatusCode::NOT_FOUND {
        let body = actix_rt::time::timeout(DEADLINE, res.body())
            .await
            .expect("a 404 or 405 body within the deadline")
            .unwrap();
        if body.is_empty() {
            return None;
        }
    }
    Some(status)
}
