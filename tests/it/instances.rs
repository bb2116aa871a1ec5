//! Face 2: instance notifications (RallyHere-style), against a real server: auth, query
//! validation, paging, get by id, and the helpers the submodules share. Long-poll timing,
//! limits and the polling loop are in `longpoll.rs`, create validation in `create.rs`, the
//! OpenAPI document in `openapi.rs`.

mod create;
mod longpoll;
pub mod openapi;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    /// The JSON body, or `Null` when there is none.
    pub json: Value,
    pub headers: awc::http::header::HeaderMap,
}

/// Sends a request (with a JSON body if given) and reads the whole answer.
pub async fn send(req: awc::ClientRequest, body: Option<&Value>) -> Reply {
    finish(match body {
        Some(body) => req.send_json(body),
        None => req.send(),
    })
    .await
}

/// Reads the whole answer of a request on its way.
pub async fn finish(sent: awc::SendClientRequest) -> Reply {
    let mut res = sent.await.expect("request");
    let bytes = res.body().limit(16 << 20).await.expect("response body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    Reply {
        status: res.status(),
        json,
        headers: res.headers().clone(),
    }
}

/// The face's base path for an instance.
pub fn base(id: &str) -> String {
    format!("/notification/v1/instance/{id}")
}

/// A fresh instance id.
pub fn instance() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A token that may read its own instance's notifications.
pub fn reader(id: &str) -> String {
    token(id, &["notification:instance:self:read"])
}

/// `GET .../stream/notification/lp?<query>` with a bearer token, on the server at `root`.
pub async fn poll(root: &str, id: &str, query: &str, token: &str) -> Reply {
    let url = format!("{root}{}/stream/notification/lp?{query}", base(id));
    send(
        client()
            .get(url)
            .insert_header(("Authorization", format!("bearer {token}"))),
        None,
    )
    .await
}

/// `POST .../notification` with the publisher key.
pub async fn create(root: &str, id: &str, body: &Value) -> Reply {
    let url = format!("{root}{}/notification", base(id));
    send(client().post(url).bearer_auth(PUBLISHER_KEY), Some(body)).await
}

/// Creates one notification per message; returns the id of the last.
pub async fn create_messages(root: &str, id: &str, messages: &[String]) -> String {
    let items: Vec<Value> = messages.iter().map(|m| json!({ "message": m })).collect();
    let r = create(root, id, &json!({ "notifications": items })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json["notification_id"]
        .as_str()
        .expect("notification_id")
        .to_string()
}

/// The messages of a page, in order.
pub fn messages(r: &Reply) -> Vec<String> {
    r.json["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {}", r.json))
        .iter()
        .map(|n| n["message"].as_str().expect("message").to_string())
        .collect()
}

/// The `cursor` of a page.
pub fn cursor(r: &Reply) -> String {
    r.json["cursor"].as_str().expect("cursor").to_string()
}

/// Asserts the face's error shape.
pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{code}: {}", r.json);
    assert_eq!(r.json["error_code"], code, "{}", r.json);
    assert_eq!(r.json["auth_success"], status != 403, "{}", r.json);
    assert!(r.json["desc"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(r.json.as_object().unwrap().len(), 3, "{}", r.json);
}

/// Asserts a FastAPI-shaped 422 with exactly these `(loc, type)` entries.
pub fn assert_invalid(r: &Reply, expected: &[(Value, &str)]) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    let detail = r.json["detail"].as_array().expect("detail");
    let found: Vec<(Value, &str)> = detail
        .iter()
        .map(|d| {
            assert!(d["msg"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
            (d["loc"].clone(), d["type"].as_str().expect("type"))
        })
        .collect();
    assert_eq!(found, expected, "{}", r.json);
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[actix_rt::test]
async fn every_auth_refusal_has_its_code() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let exp = now_secs() + 600;
    let dir = env!("CARGO_MANIFEST_DIR");
    let rsa = std::fs::read(format!("{dir}/tests/fixtures/rsa.pem")).unwrap();
    let mut unknown_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    unknown_kid.kid = Some("who".into());
    let unknown_kid = jsonwebtoken::encode(
        &unknown_kid,
        &json!({"sub": id, "exp": exp, "permissions": ["notification:instance:read"]}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&rsa).unwrap(),
    )
    .unwrap();
    let garbage_claims = {
        let input = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64("[[["));
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{input}.{sig}")
    };
    let claims = |extra: Value| {
        let mut c =
            json!({"sub": id, "exp": exp, "permissions": ["notification:instance:self:read"]});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        token_with_claims(SECRET, &c)
    };
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "auth_not_jwt"),
        (Some("bearer not-a-jwt".into()), "auth_not_jwt"),
        (Some("Basic dXNlcjpwYXNz".into()), "auth_token_format"),
        (Some("bearer".into()), "auth_token_format"),
        (Some("bearer e30.e30.sig".into()), "auth_token_format"),
        (
            Some(format!(
                "bearer {}",
                token_with_claims("wrong", &json!({"sub": id, "exp": exp}))
            )),
            "auth_token_sig_invalid",
        ),
        (Some(format!("bearer {unknown_kid}")), "auth_invalid_key_id"),
        (
            Some(format!(
                "bearer {}",
                claims(json!({"exp": now_secs() - 600}))
            )),
            "auth_token_expired",
        ),
        (
            Some(format!("bearer {}", claims(json!({"ver": 2})))),
            "auth_invalid_version",
        ),
        (
            Some(format!(
                "bearer {}",
                claims(json!({"permissions": "notification:instance:read"}))
            )),
            "auth_malformed_access",
        ),
        (
            Some(format!("bearer {}", claims(json!({"permissions": [1]})))),
            "auth_malformed_access",
        ),
        (
            Some(format!(
                "bearer {}",
                token_with_claims(SECRET, &json!({"sub": id}))
            )),
            "auth_token_invalid_claim",
        ),
        (
            Some(format!(
                "bearer {}",
                token_with_claims(SECRET, &json!({"exp": exp}))
            )),
            "auth_token_invalid_claim",
        ),
        (
            Some(format!("bearer {garbage_claims}")),
            "auth_token_unknown",
        ),
        (
            Some(format!("bearer {}", token(&id, &[]))),
            "insufficient_permissions",
        ),
        (
            Some(format!("bearer {}", reader(&instance()))),
            "insufficient_permissions",
        ),
        (
            Some(format!(
                "bearer {}",
                token(&id, &["notification:instance:self:write"])
            )),
            "insufficient_permissions",
        ),
    ];
    let url = format!("{root}{}/stream/notification/lp?deadline=0", base(&id));
    for (auth, code) in cases {
        let mut req = client().get(&url);
        if let Some(auth) = &auth {
            req = req.insert_header(("Authorization", auth.as_str()));
        }
        let r = send(req, None).await;
        assert_error(&r, 403, code);
    }
    // What is allowed: the instance itself (any casing of its id), or any-instance readers.
    let upper = id.to_uppercase();
    for (path_id, t) in [
        (&id, reader(&id)),
        (&upper, reader(&id)),
        (&id, claims(json!({"ver": 1}))),
        (&id, token("someone", &["notification:instance:read"])),
        (&id, token("someone", &["notification:instance:*"])),
        (&id, token(&id, &["notification:instance:self:*"])),
    ] {
        let r = poll(&root, path_id, "deadline=0", &t).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    }
    let r = send(
        client()
            .get(&url)
            .insert_header(("Authorization", format!("BEARER {}", reader(&id)))),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the scheme is case-insensitive");
}

#[actix_rt::test]
async fn the_authorization_cookie_carries_a_token() {
    let srv = TestServer::start().await;
    let id = instance();
    let url = srv.url(&format!("{}/stream/notification/lp?deadline=0", base(&id)));
    let with_cookie = |value: String| client().get(&url).insert_header(("Cookie", value));
    let raw = send(
        with_cookie(format!("Authorization=bearer {}", reader(&id))),
        None,
    )
    .await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.json);
    let encoded = send(
        with_cookie(format!("Authorization=bearer%20{}", reader(&id))),
        None,
    )
    .await;
    assert_eq!(encoded.status, StatusCode::OK, "{}", encoded.json);
    let other = send(
        with_cookie(format!("a=b; Authorization=Bearer {}", reader(&id))),
        None,
    )
    .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.json);
    assert_error(
        &send(with_cookie("Authorization=bearer x".into()), None).await,
        403,
        "auth_not_jwt",
    );
    assert_error(
        &send(with_cookie(format!("Authorization={}", reader(&id))), None).await,
        403,
        "auth_token_format",
    );
    // The header wins over the cookie.
    let both = client()
        .get(&url)
        .insert_header(("Cookie", format!("Authorization=bearer {}", reader(&id))))
        .insert_header(("Authorization", "bearer nope"));
    assert_error(&send(both, None).await, 403, "auth_not_jwt");
}

#[actix_rt::test]
async fn every_route_checks_the_id_then_the_permissions() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let any_reader = token("ops", &["notification:instance:read"]);
    let writer = token(&id, &["notification:instance:self:write"]);
    let one = json!({"notifications": [{"message": "m"}]});
    let req = |name: &str, id: &str, t: &str| {
        let at = |tail: &str| format!("{root}{}{tail}", base(id));
        match name {
            "lp" => client().get(at("/stream/notification/lp?deadline=0")),
            "page" => client().get(at("/notification")),
            "get" => client().get(at("/notification/x")),
            _ => client().post(at("/notification")),
        }
        .bearer_auth(t)
    };
    let routes = [
        ("lp", None),
        ("page", None),
        ("get", None),
        ("create", Some(one.clone())),
    ];
    for (name, body) in &routes {
        let req = |id: &str, t: &str| req(name, id, t);
        let r = send(req("not-a-uuid", &any_reader), body.as_ref()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(
            r.json,
            json!({"auth_success": true, "error_code": "bad_id", "desc": "Passed client id is not a valid id"}),
            "{name}"
        );
        // A bad token is reported before a bad id.
        assert_error(
            &send(req("not-a-uuid", "x"), body.as_ref()).await,
            403,
            "auth_not_jwt",
        );
        // Readers cannot create, writers cannot read, nobody reaches other instances by `self`.
        let (allowed, refused) = if *name == "create" {
            (writer.clone(), reader(&id))
        } else {
            (reader(&id), writer.clone())
        };
        assert_error(
            &send(req(&id, &refused), body.as_ref()).await,
            403,
            "insufficient_permissions",
        );
        assert_error(
            &send(req(&instance(), &allowed), body.as_ref()).await,
            403,
            "insufficient_permissions",
        );
        let ok = send(req(&id, &allowed), body.as_ref()).await;
        let expected = if *name == "get" { 404 } else { 200 };
        assert_eq!(ok.status.as_u16(), expected, "{name}: {}", ok.json);
    }
    // Create also takes the any-instance permissions, `publish`, and a publisher key.
    for t in [
        token("svc", &["notification:instance:write"]),
        token("svc", &["notification:instance:*"]),
        token("svc", &["publish"]),
        PUBLISHER_KEY.to_string(),
    ] {
        let url = format!("{root}{}/notification", base(&id));
        let r = send(client().post(url).bearer_auth(&t), Some(&one)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    }
}

#[actix_rt::test]
async fn every_parameter_is_bounded() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let t = reader(&id);
    let all: Vec<String> = (0..101).map(|i| format!("m{i}")).collect();
    create_messages(&root, &id, &all[..100]).await;
    create_messages(&root, &id, &all[100..]).await;
    let lp = |q: String| {
        let (root, id, t) = (root.clone(), id.clone(), t.clone());
        async move {
            poll(
                &root,
                &id,
                &format!("offset_reset_strategy=earliest&{q}"),
                &t,
            )
            .await
        }
    };
    let q = |name: &str| json!(["query", name]);
    for (value, expected) in [
        ("0", Some("greater_than_equal")),
        ("1", None),
        ("100", None),
        ("101", Some("less_than_equal")),
        ("-1", Some("greater_than_equal")),
        ("ten", Some("int_parsing")),
        ("1.5", Some("int_parsing")),
        ("", Some("int_parsing")),
    ] {
        let r = lp(format!("max_page_size={value}")).await;
        match expected {
            Some(kind) => assert_invalid(&r, &[(q("max_page_size"), kind)]),
            None => assert_eq!(messages(&r).len(), value.parse::<usize>().unwrap()),
        }
        let page = format!("{root}{}/notification?page_size={value}", base(&id));
        let r = send(client().get(page).bearer_auth(&t), None).await;
        match expected {
            Some(kind) => assert_invalid(&r, &[(q("page_size"), kind)]),
            None => assert_eq!(messages(&r).len(), value.parse::<usize>().unwrap()),
        }
    }
    assert_eq!(
        messages(&lp(String::new()).await).len(),
        10,
        "default page size"
    );
    // Deadlines 0 and 900 are accepted (a backlog answers at once); the rest are not.
    for value in ["0", "900"] {
        assert_eq!(lp(format!("deadline={value}")).await.status, StatusCode::OK);
    }
    for (value, kind) in [
        ("901", "less_than_equal"),
        ("-1", "greater_than_equal"),
        ("soon", "int_parsing"),
        ("99999999999999999999", "less_than_equal"),
    ] {
        assert_invalid(
            &lp(format!("deadline={value}")).await,
            &[(q("deadline"), kind)],
        );
    }
    assert_invalid(
        &poll(&root, &id, "offset_reset_strategy=oldest", &t).await,
        &[(q("offset_reset_strategy"), "enum")],
    );
    // Every bad parameter is reported at once, in declaration order.
    assert_invalid(
        &poll(
            &root,
            &id,
            "deadline=x&max_page_size=0&offset_reset_strategy=",
            &t,
        )
        .await,
        &[
            (q("max_page_size"), "greater_than_equal"),
            (q("offset_reset_strategy"), "enum"),
            (q("deadline"), "int_parsing"),
        ],
    );
}

#[actix_rt::test]
async fn paging_runs_newer_to_older_with_etags() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let t = reader(&id);
    let all: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    create_messages(&root, &id, &all).await;
    let page = |query: String| {
        let url = format!("{root}{}/notification?{query}", base(&id));
        send(client().get(url).bearer_auth(&t), None)
    };
    let mut seen = Vec::new();
    let mut start = String::new();
    loop {
        let r = page(format!("page_size=10{start}")).await;
        assert_eq!(r.status, StatusCode::OK);
        let got = messages(&r);
        if got.is_empty() {
            break;
        }
        seen.extend(got);
        start = format!("&start_at={}", cursor(&r));
    }
    let mut newest_first = all.clone();
    newest_first.reverse();
    assert_eq!(
        seen, newest_first,
        "every notification once, newer to older"
    );

    // `start_at` is inclusive, `exclude_before` exclusive.
    let first = page(String::new()).await;
    let ids: Vec<String> = first.json["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["notification_id"].as_str().unwrap().to_string())
        .collect();
    let r = page(format!("start_at={}&exclude_before={}", ids[2], ids[5])).await;
    assert_eq!(messages(&r), vec!["m22", "m21", "m20"]);
    // A start that is not one of this stream's ids has nothing at or before it.
    assert!(messages(&page("start_at=garbage".into()).await).is_empty());

    // ETag and If-None-Match.
    let etag = first
        .headers
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let cached = |tag: String| {
        let url = format!("{root}{}/notification", base(&id));
        send(
            client()
                .get(url)
                .bearer_auth(&t)
                .insert_header(("If-None-Match", tag)),
            None,
        )
    };
    let r = cached(etag.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.json, Value::Null, "no body");
    assert_eq!(r.headers.get("etag").unwrap().to_str().unwrap(), etag);
    assert_eq!(
        cached(format!("W/{etag}")).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        cached(format!("\"other\", {etag}")).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(cached("*".into()).await.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cached("\"other\"".into()).await.status, StatusCode::OK);
    create_messages(&root, &id, &["m25".to_string()]).await;
    let r = cached(etag.clone()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a new notification changes the page"
    );
    assert_eq!(messages(&r)[0], "m25");
    assert_ne!(r.headers.get("etag").unwrap().to_str().unwrap(), etag);
    // An instance nobody wrote to has an empty page.
    let url = format!("{root}{}/notification", base(&instance()));
    let r = send(
        client()
            .get(url)
            .bearer_auth(token("ops", &["notification:instance:read"])),
        None,
    )
    .await;
    assert_eq!((r.status, messages(&r).len()), (StatusCode::OK, 0));
}

#[actix_rt::test]
async fn a_notification_is_found_by_its_id() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let before = std::time::SystemTime::now();
    let body = json!({"notifications": [{
        "message": "hello", "rh_url": "/v1/thing/1", "custom_data": {"k": "v"}, "etag": "7", "ignored": true
    }]});
    let created = create(&root, &id, &body).await;
    assert_eq!(created.status, StatusCode::OK);
    let nid = created.json["notification_id"]
        .as_str()
        .unwrap()
        .to_string();
    let get = |instance: &str, nid: &str| {
        let url = format!("{root}{}/notification/{nid}", base(instance));
        send(
            client()
                .get(url)
                .bearer_auth(token("ops", &["notification:instance:read"])),
            None,
        )
    };
    let r = get(&id, &nid).await;
    assert_eq!(r.status, StatusCode::OK);
    let created_at = r.json["created"].as_str().unwrap().to_string();
    assert_eq!(
        r.json,
        json!({
            "message": "hello", "rh_url": "/v1/thing/1", "custom_data": {"k": "v"}, "etag": "7",
            "notification_id": nid, "created": created_at,
        })
    );
    assert!(created_at.ends_with('Z'), "UTC: {created_at}");
    let at = humantime::parse_rfc3339(&created_at).expect("RFC 3339");
    assert!(at + std::time::Duration::from_secs(1) >= before);
    // Optional fields that were not given are not rendered.
    let plain = create_messages(&root, &id, &["plain".to_string()]).await;
    let mut keys: Vec<String> = get(&id, &plain)
        .await
        .json
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["created", "custom_data", "message", "notification_id"]
    );
    for (instance, nid) in [
        (id.clone(), "garbage".to_string()),
        (id.clone(), "AAAAAAAAAAAAAAAA".to_string()),
        (instance(), nid.clone()),
    ] {
        assert_error(&get(&instance, &nid).await, 404, "resource_not_found");
    }
}

#[actix_rt::test]
async fn dev_mode_mints_tokens_and_opens_create() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let id = instance();
    let url = srv.url(&format!(
        "/dev/token?sub={id}&permission=notification:instance:self:read"
    ));
    let mut res = client().get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let minted = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let root = srv.url("");
    let r = poll(&root, &id, "deadline=0", &minted).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let url = format!("{root}{}/notification", base(&id));
    let one = json!({"notifications": [{"message": "open"}]});
    assert_eq!(
        send(client().post(&url), Some(&one)).await.status,
        StatusCode::OK
    );
    // A credential that is given is still checked.
    let r = send(client().post(&url).bearer_auth(&minted), Some(&one)).await;
    assert_error(&r, 403, "insufficient_permissions");
}
