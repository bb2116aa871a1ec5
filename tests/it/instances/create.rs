//! `POST .../notification`: every field of NotificationCreate validated like FastAPI does.

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::common::*;

#[actix_rt::test]
async fn create_validates_every_field() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let n = |i: usize, field: &str| json!(["body", "notifications", i, field]);
    let long = "x".repeat(4097);
    let max = "é".repeat(4096);
    let cases: Vec<(Value, Vec<(Value, &str)>)> = vec![
        (
            json!({}),
            vec![(json!(["body", "notifications"]), "missing")],
        ),
        (json!([]), vec![(json!(["body"]), "model_attributes_type")]),
        (
            json!({"notifications": []}),
            vec![(json!(["body", "notifications"]), "too_short")],
        ),
        (
            json!({"notifications": "x"}),
            vec![(json!(["body", "notifications"]), "list_type")],
        ),
        (
            json!({"notifications": [{}]}),
            vec![(n(0, "message"), "missing")],
        ),
        (
            json!({"notifications": [{"message": 5}]}),
            vec![(n(0, "message"), "string_type")],
        ),
        (
            json!({"notifications": [{"message": long}]}),
            vec![(n(0, "message"), "string_too_long")],
        ),
        (
            json!({"notifications": [{"message": "m", "rh_url": ""}]}),
            vec![(n(0, "rh_url"), "string_too_short")],
        ),
        (
            json!({"notifications": [{"message": "m", "rh_url": long}]}),
            vec![(n(0, "rh_url"), "string_too_long")],
        ),
        (
            json!({"notifications": [{"message": "m", "etag": ""}]}),
            vec![(n(0, "etag"), "string_too_short")],
        ),
        (
            json!({"notifications": [{"message": "m", "custom_data": []}]}),
            vec![(n(0, "custom_data"), "dict_type")],
        ),
        (
            json!({"notifications": [{"message": "m", "custom_data": {"a": "", "b": long, "c": 1}}]}),
            vec![
                (
                    json!(["body", "notifications", 0, "custom_data", "a"]),
                    "string_too_short",
                ),
                (
                    json!(["body", "notifications", 0, "custom_data", "b"]),
                    "string_too_long",
                ),
                (
                    json!(["body", "notifications", 0, "custom_data", "c"]),
                    "string_type",
                ),
            ],
        ),
        (
            json!({"notifications": [{"message": "ok"}, 7, {"message": "m", "rh_url": 1}]}),
            vec![
                (json!(["body", "notifications", 1]), "model_attributes_type"),
                (n(2, "rh_url"), "string_type"),
            ],
        ),
    ];
    for (body, expected) in cases {
        assert_invalid(&create(&root, &id, &body).await, &expected);
    }
    let too_many: Vec<Value> = (0..101).map(|_| json!({"message": "m"})).collect();
    assert_invalid(
        &create(&root, &id, &json!({ "notifications": too_many })).await,
        &[(json!(["body", "notifications"]), "too_long")],
    );
    let url = format!("{root}{}/notification", base(&id));
    let raw = |body: &'static str| {
        finish(
            client()
                .post(&url)
                .bearer_auth(PUBLISHER_KEY)
                .insert_header(("Content-Type", "application/json"))
                .send_body(body),
        )
    };
    let r = raw("{\"notifications\": [").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["detail"][0]["type"], "json_invalid");
    assert_eq!(r.json["detail"][0]["loc"][0], "body");
    assert_invalid(&raw("").await, &[(json!(["body"]), "missing")]);
    // Nothing invalid was created.
    let page = format!("{root}{}/notification", base(&id));
    let r = send(client().get(&page).bearer_auth(reader(&id)), None).await;
    assert!(messages(&r).is_empty(), "{}", r.json);

    // The bounds themselves are accepted, and 100 notifications in one call.
    let edge = json!({"notifications": [{"message": max, "rh_url": max, "custom_data": {"k": max}, "etag": "e", "rh_url2": 1}]});
    assert_eq!(create(&root, &id, &edge).await.status, StatusCode::OK);
    let hundred: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    let last = create_messages(&root, &id, &hundred).await;
    let r = send(client().get(&page).bearer_auth(reader(&id)), None).await;
    assert_eq!(r.json["notifications"][0]["notification_id"], last.as_str());
    assert_eq!(messages(&r)[0], "n99");
}
