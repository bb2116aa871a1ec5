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

/// Flags of nodes that may call the loopback receiver, retrying after 100 ms and 200 ms.
const WEBHOOK_NODE: &[&str] = &[
    "--webhook-allow-private",
    "--webhook-retry-schedule",
    "100ms,200ms",
    "--webhook-timeout",
    "2s",
];

/// The `webhook-id`s of what `path` received, each with how often.
fn ids(receiver: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in receiver.received(path) {
        *ids.entry(r.headers["webhook-id"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

on_both!(dashboard_changes_on_every_node_fire_once_and_webhooks_are_shared);
async fn dashboard_changes_on_every_node_fire_once_and_webhooks_are_shared(backend: Backend) {
    let nodes = three_nodes(&backend, WEBHOOK_NODE);
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

    // Nothing was delivered twice, once no attempt can come any more.
    settled(&backend).await;
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

/// The longest a node takes from a receiver's answer to the settle of that attempt in Redis.
const SETTLING: Duration = Duration::from_millis(500);

/// Waits until the cluster has no delivery left to attempt: none due or in flight (an entry
/// leaves the due stream only when its attempt is settled) and none waiting for a retry. From
/// then on no attempt can come, so what the receiver has is all it will get.
async fn settled(backend: &Backend) {
    wait_for(
        "no delivery due, in flight or waiting for a retry",
        || async {
            let due = backend.command_on_key(DUE_KEY, &["XLEN", DUE_KEY])?;
            let retries = backend.command_on_key(RETRIES_KEY, &["ZCARD", RETRIES_KEY])?;
            (due == "0" && retries == "0").then_some(())
        },
    )
    .await;
}

/// How many due entries each node's dispatcher holds now (`XPENDING`).
fn held(backend: &Backend) -> HashMap<String, usize> {
    let summary = backend
        .query_on_key(DUE_KEY, &["XPENDING", DUE_KEY, DISPATCHERS_GROUP])
        .expect("Redis answers");
    // [count, first id, last id, consumer, count, consumer, count, ...], or an error.
    assert!(summary.len() >= 3, "XPENDING {DUE_KEY}: {summary:?}");
    summary[3..]
        .chunks(2)
        .filter_map(|pair| Some((pair[0].clone(), pair.get(1)?.parse().ok()?)))
        .collect()
}

on_both!(the_deliveries_of_a_node_killed_mid_attempt_are_carried_on_by_another);
async fn the_deliveries_of_a_node_killed_mid_attempt_are_carried_on_by_another(backend: Backend) {
    let mut nodes = three_nodes(&backend, WEBHOOK_NODE);
    let [a, b, c] = [0, 1, 2].map(|i| root(&nodes[i]));
    let receiver = Receiver::start().await;
    let (slow, secret) = subscribe(&a, &receiver.url("/slow"), "", "REGISTER").await;

    const DELIVERIES: usize = 30;
    for i in 0..DELIVERIES {
        register([&a, &b, &c][i % 3], "NO").await;
    }
    // Attempts are under way (each takes `SLOW`), some of them B's.
    wait_for("B to hold attempts under way", || async {
        (held(&backend).get("b").copied().unwrap_or(0) > 0
            && !receiver.received("/slow").is_empty())
        .then_some(())
    })
    .await;
    nodes[1].child.kill().expect("kill -9 B");
    let killed = std::time::Instant::now();

    // Every delivery arrives, and every attempt is settled: B holds nothing any more.
    wait_for("every delivery, every attempt settled", || async {
        let settled = held(&backend).values().all(|&n| n == 0);
        (settled && ids(&receiver, "/slow").len() == DELIVERIES).then_some(())
    })
    .await;
    let in_flight_at_kill: Vec<String> = receiver
        .received("/slow")
        .iter()
        // In flight until B settled it: its answer comes `SLOW` after the request, and B
        // settles it in Redis a moment later (longer on a loaded machine).
        .filter(|r| r.at <= killed && killed < r.at + crate::dashboard::SLOW + SETTLING)
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    let got = ids(&receiver, "/slow");
    let twice: Vec<&String> = got
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(got.values().all(|&n| n <= 2), "at most twice: {got:?}");
    assert!(
        twice.iter().all(|id| in_flight_at_kill.contains(id)),
        "only attempts in flight at the kill came twice: {twice:?} of {in_flight_at_kill:?}"
    );
    assert!(!twice.is_empty(), "B was killed with attempts in flight");
    // Each delivery has its success in the log, read on A or C.
    let log = attempts(&c, &slow).await;
    let succeeded: std::collections::HashSet<&str> = log
        .iter()
        .filter(|a| a["outcome"] == "succeeded")
        .map(|a| a["webhookId"].as_str().unwrap())
        .collect();
    assert_eq!(succeeded.len(), DELIVERIES);
    for r in receiver.received("/slow") {
        verify(&r, &secret, &slow, "NO", "REGISTER");
    }
}

on_both!(a_receiver_down_for_a_while_gets_everything_on_schedule_once);
async fn a_receiver_down_for_a_while_gets_everything_on_schedule_once(backend: Backend) {
    let schedule = [
        "--webhook-allow-private",
        "--webhook-retry-schedule",
        "100ms,200ms,400ms,800ms,1600ms",
    ];
    let nodes = [
        node(&backend, "a", &schedule),
        node(&backend, "b", &schedule),
    ];
    let [a, b] = nodes.each_ref().map(root);
    let receiver = Receiver::start().await;
    let (sub, _) = subscribe(&a, &receiver.url("/recover"), "", "REGISTER").await;
    const DELIVERIES: usize = 5;
    for i in 0..DELIVERIES {
        register([&a, &b][i % 2], "SE").await;
    }
    // While the receiver fails, every node shows the cluster's queue: all five wait.
    for node in [&a, &b] {
        wait_for("the cluster's queue depth on every node", || async {
            let depth = crate::ops::Scrape::take_at(node)
                .await
                .total("herald_webhook_queue_depth");
            (depth == DELIVERIES as f64).then_some(())
        })
        .await;
    }
    wait_for("three attempts of each", || async {
        (ids(&receiver, "/recover")
            .values()
            .filter(|&&n| n >= 3)
            .count()
            == DELIVERIES)
            .then_some(())
    })
    .await;
    receiver.recover();
    wait_for("every delivery succeeded", || async {
        let log = attempts(&b, &sub).await;
        (log.iter().filter(|a| a["outcome"] == "succeeded").count() == DELIVERIES).then_some(log)
    })
    .await;
    settled(&backend).await;
    let log = attempts(&a, &sub).await;
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for attempt in log.iter().rev() {
        by_id
            .entry(attempt["webhookId"].as_str().unwrap())
            .or_default()
            .push(attempt);
    }
    for (id, tries) in &by_id {
        let numbers: Vec<u64> = tries
            .iter()
            .map(|t| t["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(
            numbers,
            (1..=numbers.len() as u64).collect::<Vec<_>>(),
            "{id}: one attempt at a time, none repeated"
        );
        let outcomes: Vec<&str> = tries
            .iter()
            .map(|t| t["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes.last(), Some(&"succeeded"), "{id}");
        assert!(
            outcomes[..outcomes.len() - 1]
                .iter()
                .all(|o| *o == "retrying"),
            "{id}: none given up: {outcomes:?}"
        );
    }
    // On schedule: the receiver saw each retry after its delay (±20% jitter).
    let delays = [100u64, 200, 400, 800, 1600];
    let mut arrivals: HashMap<String, Vec<std::time::Instant>> = HashMap::new();
    for r in receiver.received("/recover") {
        arrivals
            .entry(r.headers["webhook-id"].to_str().unwrap().to_string())
            .or_default()
            .push(r.at);
    }
    for (id, at) in &arrivals {
        assert_eq!(
            at.len(),
            by_id[id.as_str()].len(),
            "{id}: each attempt reached the receiver once"
        );
        for (i, pair) in at.windows(2).enumerate() {
            let waited = pair[1] - pair[0];
            assert!(
                waited >= Duration::from_millis(delays[i] * 8 / 10),
                "{id}: retry {i} after {waited:?}"
            );
        }
    }
    // Each node counted its own attempts; together, all of them.
    let mut counted = 0.0;
    for node in [&a, &b] {
        counted += crate::ops::Scrape::take_at(node)
            .await
            .total("herald_webhook_attempts_total");
    }
    assert_eq!(counted, log.len() as f64);
}

#[actix_rt::test]
async fn retries_survive_a_redis_restart_and_a_lost_group_heals() {
    let mut redis = Redis::start(Persistence::Always);
    let slow_retry = [
        "--webhook-allow-private",
        "--webhook-retry-schedule",
        "1500ms",
    ];
    let nodes = [
        node(&redis, "a", &slow_retry),
        node(&redis, "b", &slow_retry),
    ];
    let [a, b] = nodes.each_ref().map(root);
    let receiver = Receiver::start().await;
    let (sub, _) = subscribe(&a, &receiver.url("/recover"), "", "REGISTER").await;
    register(&b, "DK").await;
    receiver.wait_for("/recover", 1).await;
    // The retry waits in Redis; Redis restarts (with its AOF) before it is due.
    redis.restart();
    receiver.recover();
    let tries = receiver.wait_for("/recover", 2).await;
    assert_eq!(
        tries[0].headers["webhook-id"],
        tries[1].headers["webhook-id"]
    );
    let log = wait_for("the success in the log", || async {
        let log = attempts(&b, &sub).await;
        (log.len() == 2).then_some(log)
    })
    .await;
    assert_eq!(log[0]["outcome"], "succeeded");
    assert_eq!(log[1]["outcome"], "retrying");

    // A Redis that lost the queue (and its consumer group) under the dispatchers' feet: they
    // make the group again instead of staying stuck on NOGROUP.
    assert_eq!(redis.command(&["DEL", DUE_KEY]).as_deref(), Some("1"));
    subscribe(&b, &receiver.url("/ok-after"), "", "REGISTER").await;
    register(&a, "FI").await;
    receiver.wait_for("/ok-after", 1).await;
}

on_both!(every_node_refuses_private_targets);
async fn every_node_refuses_private_targets(backend: Backend) {
    let nodes = [node(&backend, "a", &[]), node(&backend, "b", &[])];
    for root in nodes.each_ref().map(root) {
        let (code, body) = call(
            &root,
            "POST",
            "/dashboard/v1/notifications",
            Some(json!({"url": "http://127.0.0.1:9/hook", "country": "", "event": "REGISTER"})),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["field"], "url");
    }
}
