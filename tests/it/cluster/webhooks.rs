//! Dashboard registrations and webhooks across nodes: shared registrations and subscriptions,
//! one delivery per matching subscription per change wherever it was made, retries and 410s
//! that every node agrees on, all received by a real HTTP receiver and verified with the
//! `standardwebhooks` crate.

use std::collections::HashMap;
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::dashboard::{attempts, call, register, subscribe, verify, Receiver};

/// Nodes that may call the loopback receiver, retrying after 100 ms and 200 ms.
fn webhook_node(redis: &Redis, name: &str) -> Served {
    node(
        redis,
        name,
        &[
            "--webhook-allow-private",
            "--webhook-retry-schedule",
            "100ms,200ms",
            "--webhook-timeout",
            "2s",
        ],
    )
}

/// The `webhook-id`s of what `path` received, each with how often.
fn ids(receiver: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in receiver.received(path) {
        *ids.entry(r.headers["webhook-id"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

#[actix_rt::test]
async fn dashboard_changes_on_every_node_fire_once_and_webhooks_are_shared() {
    let redis = Redis::start(Persistence::None);
    let nodes = [
        webhook_node(&redis, "a"),
        webhook_node(&redis, "b"),
        webhook_node(&redis, "c"),
    ];
    let [a, b, c] = nodes.each_ref().map(root);
    let receiver = Receiver::start().await;

    // Subscriptions made on one node are everyone's.
    let (all, all_secret) = subscribe(&a, &receiver.url("/ok-all"), "", "REGISTER").await;
    let (change, change_secret) = subscribe(&b, &receiver.url("/ok-change"), "NO", "CHANGE").await;
    let (_, listed) = call(&c, "GET", "/dashboard/v1/notifications", None).await;
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [all.as_str(), change.as_str()]);

    // A change on each node: one delivery per matching subscription per change.
    let norway = register(&a, "NO").await;
    let sweden = register(&b, "SE").await;
    register(&c, "NO").await;
    let got = receiver.wait_for("/ok-all", 3).await;
    for r in &got {
        let country = serde_json::from_str::<Value>(&r.body).unwrap()["country"]
            .as_str()
            .unwrap()
            .to_string();
        verify(r, &all_secret, &all, &country, "REGISTER");
    }
    // Registrations are shared too: a change made on C to one created on A.
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("/dashboard/v1/registrations/{norway}"),
        Some(json!({"features": {"area": true}})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, read) = call(
        &b,
        "GET",
        &format!("/dashboard/v1/registrations/{norway}"),
        None,
    )
    .await;
    assert_eq!(read["features"]["area"], true);
    let (_, every) = call(&a, "GET", "/dashboard/v1/registrations", None).await;
    assert_eq!(every.as_array().unwrap().len(), 3);
    let changed = receiver.wait_for("/ok-change", 1).await;
    verify(&changed[0], &change_secret, &change, "NO", "CHANGE");

    // An endpoint failing twice: retried on the schedule (by whichever nodes), one success.
    let (flaky, _) = subscribe(&b, &receiver.url("/flaky"), "SE", "INVOKE").await;
    let (code, _) = call(
        &a,
        "GET",
        &format!("/dashboard/v1/dashboards/{sweden}"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let tries = receiver.wait_for("/flaky", 3).await;
    let flaky_id = tries[0].headers["webhook-id"].clone();
    assert!(
        tries.iter().all(|r| r.headers["webhook-id"] == flaky_id),
        "one delivery, retried"
    );
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(70) && gaps[1] >= Duration::from_millis(140),
        "{gaps:?}"
    );
    // Every node shows the same attempt log.
    let logs = wait_for("the attempt log on every node", || async {
        let logs = [
            attempts(&a, &flaky).await,
            attempts(&b, &flaky).await,
            attempts(&c, &flaky).await,
        ];
        (logs.iter().all(|l| l.len() == 3)).then_some(logs)
    })
    .await;
    assert!(logs.iter().all(|l| l == &logs[0]));
    let outcomes: Vec<&str> = logs[0]
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["succeeded", "retrying", "retrying"],
        "newest first"
    );

    // 410 disables the subscription, as every node sees it.
    let (gone, _) = subscribe(&c, &receiver.url("/gone"), "", "DELETE").await;
    let (code, _) = call(
        &b,
        "DELETE",
        &format!("/dashboard/v1/registrations/{sweden}"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    receiver.wait_for("/gone", 1).await;
    for node in [&a, &b, &c] {
        wait_for("disabled on every node", || async {
            let (_, sub) = call(
                node,
                "GET",
                &format!("/dashboard/v1/notifications/{gone}"),
                None,
            )
            .await;
            (sub["disabled"] == true).then_some(())
        })
        .await;
    }
    assert_eq!(attempts(&a, &gone).await[0]["outcome"], "disabled");

    // Nothing was delivered twice.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    for path in ["/ok-all", "/ok-change", "/gone"] {
        assert!(
            ids(&receiver, path).values().all(|&n| n == 1),
            "{path}: {:?}",
            ids(&receiver, path)
        );
    }
    assert_eq!(ids(&receiver, "/ok-all").len(), 3);
    assert_eq!(receiver.received("/flaky").len(), 3);
}
