//! Upgrading a one-Redis cluster whose keys predate hash tags: the first node of this version
//! moves registrations, subscriptions, attempt logs, pending deliveries, revocations and the
//! country streams to their tagged names, and they work as before.

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::dashboard::{attempts, call, register, subscribe, verify, Receiver};
use crate::tokens::revoke;

/// Every key of Herald's in the Redis, sorted.
fn keys(redis: &Redis) -> Vec<String> {
    let mut keys = redis.query(&["KEYS", "herald:*"]).expect("Redis answers");
    keys.sort();
    keys
}

/// Waits until `n` attempts of subscription `sub` are logged. An attempt's settle writes its
/// log entry and removes the delivery's record in one script, so its keys are then final.
async fn attempts_logged(root: &String, sub: &str, n: usize) {
    wait_for("the attempt logged", || async {
        (attempts(root, sub).await.len() == n).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn keys_of_the_untagged_layout_move_to_their_tagged_names_at_start() {
    let redis = Redis::start(Persistence::None);
    let receiver = Receiver::start().await;
    let flags = ["--webhook-allow-private"];
    let (sub, secret) = {
        let first = node(&redis, "a", &flags);
        let a = root(&first);
        let (sub, secret) = subscribe(&a, &receiver.url("/ok"), "NO", "REGISTER").await;
        register(&a, "NO").await;
        receiver.wait_for("/ok", 1).await;
        // Settled: its attempt is logged and its record gone, so the keys below are all there is.
        attempts_logged(&a, &sub, 1).await;
        let r = revoke(&a, &json!({"sub": "alice", "ttl": 120})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        (sub, secret)
    };
    let tagged = keys(&redis);

    // Back to the names an earlier version used, with one delivery pending as it wrote them.
    let q = |args: &[&str]| redis.query(args).expect("Redis answers");
    for (old, new) in [
        ("herald:registrations", "herald:{dashboard}:registrations"),
        (
            "herald:wh:subscriptions",
            "herald:{dashboard}:wh:subscriptions",
        ),
        ("herald:wh:due", "herald:{dashboard}:wh:due"),
        ("herald:revocations", "herald:{ctl}:revocations"),
        (
            &format!("herald:wh:attempts:{sub}"),
            &format!("herald:{{dashboard}}:wh:attempts:{sub}"),
        ),
        (
            "herald:{country:NO}:meta",
            "herald:{dashboard}:country:NO:meta",
        ),
        (
            "herald:{country:NO}:log",
            "herald:{dashboard}:country:NO:log",
        ),
    ] {
        assert_eq!(q(&["RENAME", new, old]), ["OK"], "{new}");
    }
    q(&[
        "DEL",
        "herald:{ctl}:layout",
        "herald:{dashboard}:wh:deliveries",
    ]);
    let body = format!(
        r#"{{"country":"NO","event":"REGISTER","id":"{sub}","time":"2026-01-01T00:00:00.000Z"}}"#
    );
    q(&[
        "HSET",
        "herald:wh:delivery:msg_upgraded",
        "subscription",
        &sub,
        "event",
        "REGISTER",
        "country",
        "NO",
        "body",
        &body,
        "attempts",
        "0",
    ]);
    q(&["XADD", "herald:wh:due", "*", "id", "msg_upgraded"]);
    let head = q(&["HGET", "herald:{country:NO}:meta", "head"]);

    let second = node(&redis, "b", &flags);
    let b = root(&second);
    // The pending delivery is made, signed with the subscription's secret.
    let got = receiver.wait_for("/ok", 2).await;
    assert_eq!(got[1].headers["webhook-id"], "msg_upgraded");
    assert_eq!(got[1].body, body);
    verify(&got[1], &secret, &sub, "NO", "REGISTER");
    attempts_logged(&b, &sub, 2).await;
    // Registrations and the revocation are as they were.
    let (_, listed) = call(&b, "GET", "/dashboard/v1/registrations", None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let mut refused = sse(&b, "alice", None).await;
    let event = refused.expect_event().await;
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({"error": "revoked"})
    );
    // The country stream goes on from its head, and no old name is left.
    register(&b, "NO").await;
    receiver.wait_for("/ok", 3).await;
    attempts_logged(&b, &sub, 3).await;
    let next = redis
        .command(&["HGET", "herald:{dashboard}:country:NO:meta", "head"])
        .unwrap();
    assert_eq!(
        next.parse::<u64>().unwrap(),
        head[0].parse::<u64>().unwrap() + 1
    );
    let now = keys(&redis);
    assert!(
        now.iter()
            .all(|k| tagged.contains(k) || k.contains("{node:")),
        "old names left: {now:?} (before: {tagged:?})"
    );
}
