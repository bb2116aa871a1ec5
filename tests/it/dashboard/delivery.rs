//! What webhook endpoints receive: matching, signatures, retries, 410, timeouts, deletion,
//! and the address policy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::common::*;

#[actix_rt::test]
async fn each_event_reaches_exactly_the_matching_subscriptions() {
    let rx = Receiver::start().await;
    let srv = server_with(&[20], Duration::from_secs(5)).await;
    let subs = [
        ("/ok-no-register", "NO", "REGISTER"),
        ("/ok-all-register", "", "REGISTER"),
        ("/ok-se-register", "SE", "REGISTER"),
        ("/ok-no-change", "NO", "CHANGE"),
        ("/ok-no-delete", "NO", "DELETE"),
        ("/ok-se-delete", "SE", "DELETE"),
        ("/ok-no-invoke", "NO", "INVOKE"),
        ("/ok-all-invoke", "", "INVOKE"),
        ("/ok-dk-change", "DK", "CHANGE"),
    ];
    let mut secrets = HashMap::new();
    for (path, country, event) in subs {
        let (id, secret) = subscribe(&srv, &rx.url(path), country, event).await;
        secrets.insert(path, (id, secret));
    }
    let no = register(&srv, "NO").await;
    let se = register(&srv, "SE").await;
    let reg = format!("/dashboard/v1/registrations/{no}");
    let (code, _) = call(
        &srv,
        "PUT",
        &reg,
        Some(json!({"country": "Norway", "isoCode": "NO"})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = call(
        &srv,
        "PATCH",
        &reg,
        Some(json!({"features": {"area": true}})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = call(&srv, "GET", &format!("/dashboard/v1/dashboards/{no}"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&srv, "DELETE", &reg, None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    let expected = [
        ("/ok-no-register", 1, "NO", "REGISTER"),
        ("/ok-all-register", 2, "", "REGISTER"),
        ("/ok-se-register", 1, "SE", "REGISTER"),
        ("/ok-no-change", 2, "NO", "CHANGE"),
        ("/ok-no-delete", 1, "NO", "DELETE"),
        ("/ok-no-invoke", 1, "NO", "INVOKE"),
        ("/ok-all-invoke", 1, "NO", "INVOKE"),
    ];
    for (path, n, country, event) in expected {
        let (id, secret) = &secrets[path];
        for r in rx.wait_for(path, n).await {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            let country = if country.is_empty() {
                body["country"].as_str().unwrap()
            } else {
                country
            };
            verify(&r, secret, id, country, event);
        }
    }
    // A last event to a fresh subscription fences everything dispatched before it.
    subscribe(&srv, &rx.url("/ok-fence"), "SE", "CHANGE").await;
    let (code, _) = call(
        &srv,
        "PATCH",
        &format!("/dashboard/v1/registrations/{se}"),
        Some(json!({"features": {}})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    rx.wait_for("/ok-fence", 1).await;
    for (path, n, _, _) in expected {
        assert_eq!(rx.received(path).len(), n, "{path}");
        let id = &secrets[path].0;
        assert_eq!(attempts(&srv, id).await.len(), n, "{path}");
    }
    for path in ["/ok-se-delete", "/ok-dk-change"] {
        assert!(rx.received(path).is_empty(), "{path}");
    }
    let all_register: Vec<String> = rx
        .received("/ok-all-register")
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body).unwrap()["country"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(all_register.contains(&"NO".into()) && all_register.contains(&"SE".into()));
}

#[actix_rt::test]
async fn a_flaky_receiver_gets_three_attempts_with_one_webhook_id() {
    let rx = Receiver::start().await;
    let srv = server_with(&[20, 20, 20], Duration::from_secs(5)).await;
    let (id, secret) = subscribe(&srv, &rx.url("/flaky"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    let got = rx.wait_for("/flaky", 3).await;
    let webhook_id = got[0].headers["webhook-id"].clone();
    assert!(webhook_id.to_str().unwrap().starts_with("msg_"));
    for r in &got {
        assert_eq!(r.headers["webhook-id"], webhook_id);
        verify(r, &secret, &id, "NO", "REGISTER");
    }
    assert_eq!(
        got[0].body, got[2].body,
        "the body is stable across retries"
    );
    let log = wait_for("three logged attempts", || {
        let srv = &srv;
        let id = &id;
        async move {
            let log = attempts(srv, id).await;
            (log.len() == 3).then_some(log)
        }
    })
    .await;
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        ["succeeded", "retrying", "retrying"],
        "newest first"
    );
    let statuses: Vec<u64> = log.iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [204, 500, 500]);
    let numbers: Vec<u64> = log.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1]);
    for a in &log {
        assert_eq!(a["webhookId"], webhook_id.to_str().unwrap());
        assert!(a["durationMs"].is_u64() && a["time"].is_string(), "{a}");
    }
    assert_eq!(
        rx.received("/flaky").len(),
        3,
        "no attempt after the success"
    );
    let mut res = client().get(srv.url("/metrics")).send().await.unwrap();
    let metrics = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    for line in [
        r#"herald_webhook_attempts_total{outcome="retrying"} 2"#,
        r#"herald_webhook_attempts_total{outcome="succeeded"} 1"#,
        "herald_webhook_queue_depth 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[actix_rt::test]
async fn a_receiver_that_answers_410_disables_its_subscription() {
    let rx = Receiver::start().await;
    let srv = server_with(&[20, 20], Duration::from_secs(5)).await;
    let (gone, _) = subscribe(&srv, &rx.url("/gone"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/gone", 1).await;
    let sub = wait_for("the subscription to be disabled", || {
        let srv = &srv;
        let gone = &gone;
        async move {
            let (_, sub) = call(
                srv,
                "GET",
                &format!("/dashboard/v1/notifications/{gone}"),
                None,
            )
            .await;
            (sub["disabled"] == true).then_some(sub)
        }
    })
    .await;
    assert_eq!(sub["url"], rx.url("/gone"));
    let log = attempts(&srv, &gone).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["outcome"].as_str()),
        (Some(410), Some("disabled"))
    );
    // Later events pass it by; a fence subscription shows they were dispatched.
    subscribe(&srv, &rx.url("/ok-fence"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/ok-fence", 1).await;
    assert_eq!(rx.received("/gone").len(), 1);
}

#[actix_rt::test]
async fn a_hanging_receiver_times_out_without_delaying_a_healthy_one() {
    let rx = Receiver::start().await;
    let timeout = Duration::from_secs(3);
    let srv = server_with(&[], timeout).await;
    let (hang, _) = subscribe(&srv, &rx.url("/hang"), "NO", "REGISTER").await;
    let (ok, secret) = subscribe(&srv, &rx.url("/ok"), "NO", "REGISTER").await;
    let start = Instant::now();
    register(&srv, "NO").await;
    let first = rx.wait_for("/ok", 1).await;
    rx.wait_for("/hang", 1).await;
    // A second event while the first attempt still hangs reaches the healthy one too.
    register(&srv, "NO").await;
    let second = rx.wait_for("/ok", 2).await;
    assert!(
        second[1].at.duration_since(start) < timeout,
        "the healthy endpoint waited for the hanging one"
    );
    verify(&first[0], &secret, &ok, "NO", "REGISTER");
    assert!(attempts(&srv, &hang).await.is_empty(), "still hanging");
    let log = wait_for("the hanging attempts to time out", || {
        let srv = &srv;
        let hang = &hang;
        async move {
            let log = attempts(srv, hang).await;
            (log.len() == 2).then_some(log)
        }
    })
    .await;
    for a in &log {
        assert_eq!(a["status"], Value::Null);
        assert!(a["error"].as_str().unwrap().contains("no answer"), "{a}");
        assert_eq!(a["outcome"], "failed", "an empty schedule gives up at once");
        assert!(a["durationMs"].as_u64().unwrap() >= timeout.as_millis() as u64 - 50);
    }
    assert!(start.elapsed() >= timeout);
}

#[actix_rt::test]
async fn a_deleted_subscription_gets_no_more_attempts() {
    let rx = Receiver::start().await;
    let srv = server_with(&[30; 100], Duration::from_secs(5)).await;
    let (id, _) = subscribe(&srv, &rx.url("/fail"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/fail", 2).await;
    let (code, _) = call(
        &srv,
        "DELETE",
        &format!("/dashboard/v1/notifications/{id}"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    // At most the attempt in flight during the delete may still land. A fresh failing
    // subscription on the same schedule fences the retry timers: by its third attempt, any
    // retry the deleted one had due has fired.
    let after_delete = rx.received("/fail").len();
    subscribe(&srv, &rx.url("/fail-fence"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/fail-fence", 3).await;
    assert!(rx.received("/fail").len() <= after_delete + 1);
    let (code, _) = call(
        &srv,
        "GET",
        &format!("/dashboard/v1/notifications/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn the_address_policy_refuses_non_public_targets() {
    let srv = TestServer::start().await;
    for url in [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://[::1]/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.0.1/hook",
    ] {
        let (code, body) = call(
            &srv,
            "POST",
            "/dashboard/v1/notifications",
            Some(json!({"url": url, "country": "NO", "event": "REGISTER"})),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["field"], "url", "{url}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("not a public address"),
            "{body}"
        );
    }
    let (_, list) = call(&srv, "GET", "/dashboard/v1/notifications", None).await;
    assert_eq!(list, json!([]));
}

#[actix_rt::test]
async fn a_dispatcher_resumes_the_pending_deliveries_it_is_started_with() {
    use actix::Actor;
    use herald::webhook::messages::Snapshot;
    use herald::webhook::*;
    use std::time::SystemTime;

    let rx = Receiver::start().await;
    let secret = signing::generate_secret();
    let subscription = Subscription {
        id: "sub-1".into(),
        url: rx.url("/ok-resumed"),
        country: "NO".into(),
        event: EventKind::Change,
        secret: secret.clone(),
        disabled: false,
        created: SystemTime::now(),
    };
    let body = json!({"id": "sub-1", "country": "NO", "event": "CHANGE",
        "time": "2026-01-01T00:00:00.000Z"})
    .to_string();
    // As a store would hand it back after a restart: one attempt already failed.
    let state = WebhookState {
        subscriptions: vec![subscription],
        pending: vec![PendingDelivery {
            id: "msg_resumed".into(),
            subscription: "sub-1".into(),
            event: EventKind::Change,
            country: "NO".into(),
            body: body.clone(),
            attempts: 1,
            next_attempt: SystemTime::now(),
        }],
        attempts: Vec::new(),
    };
    let settings = DispatcherSettings {
        timeout: Duration::from_secs(5),
        schedule: vec![Duration::from_millis(20); 3],
        allow_private: true,
    };
    let dispatcher = WebhookDispatcher::new(
        settings,
        state,
        herald::metrics::Metrics::new(),
        memory_store(),
    )
    .start();
    let got = rx.wait_for("/ok-resumed", 1).await;
    assert_eq!(got[0].headers["webhook-id"], "msg_resumed");
    assert_eq!(got[0].body, body);
    verify(&got[0], &secret, "sub-1", "NO", "CHANGE");
    let snapshot = wait_for("the delivery to complete", || {
        let dispatcher = dispatcher.clone();
        async move {
            let s = dispatcher.send(Snapshot).await.ok()?;
            s.pending.is_empty().then_some(s)
        }
    })
    .await;
    assert_eq!(snapshot.attempts.len(), 1);
    assert_eq!(
        snapshot.attempts[0].attempt, 2,
        "counts on from the stored attempts"
    );
    assert_eq!(snapshot.attempts[0].outcome, Outcome::Succeeded);
    let stored = serde_json::to_string(&snapshot).unwrap();
    let restored: WebhookState = serde_json::from_str(&stored).unwrap();
    assert_eq!(restored, snapshot, "the state round-trips through serde");
}

#[actix_rt::test]
async fn shutdown_waits_for_the_attempt_under_way() {
    let rx = Receiver::start().await;
    let timeout = Duration::from_secs(1);
    let mut srv = server_with(&[20], timeout).await;
    subscribe(&srv, &rx.url("/hang"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/hang", 1).await;
    let start = Instant::now();
    srv.herald.take().unwrap().shutdown().await;
    let took = start.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(200),
        "the drain did not wait for the attempt: {took:?}"
    );
    assert!(took < DEADLINE, "{took:?}");
    assert_eq!(
        rx.received("/hang").len(),
        1,
        "no retry starts while draining"
    );
}

#[actix_rt::test]
async fn the_address_policy_is_checked_again_at_delivery() {
    use actix::Actor;
    use herald::webhook::messages::Snapshot;
    use herald::webhook::*;
    use std::time::SystemTime;

    // Subscriptions that passed the policy when created, but whose names now lead to
    // loopback (as after a DNS change); the receiver listens there and must get nothing.
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    let urls = [
        format!("http://localhost:{port}/ok-name"),
        format!("http://127.0.0.1:{port}/ok-literal"),
    ];
    let subscriptions: Vec<Subscription> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| Subscription {
            id: format!("sub-{i}"),
            url: url.clone(),
            country: String::new(),
            event: EventKind::Delete,
            secret: signing::generate_secret(),
            disabled: false,
            created: SystemTime::now(),
        })
        .collect();
    let pending = subscriptions
        .iter()
        .map(|s| PendingDelivery {
            id: format!("msg_{}", s.id),
            subscription: s.id.clone(),
            event: EventKind::Delete,
            country: "NO".into(),
            body: "{}".into(),
            attempts: 0,
            next_attempt: SystemTime::now(),
        })
        .collect();
    let settings = DispatcherSettings {
        timeout: Duration::from_secs(5),
        schedule: Vec::new(),
        allow_private: false,
    };
    let state = WebhookState {
        subscriptions,
        pending,
        attempts: Vec::new(),
    };
    let dispatcher = WebhookDispatcher::new(
        settings,
        state,
        herald::metrics::Metrics::new(),
        memory_store(),
    )
    .start();
    let snapshot = wait_for("both deliveries to be refused", || {
        let dispatcher = dispatcher.clone();
        async move {
            let s = dispatcher.send(Snapshot).await.ok()?;
            (s.attempts.len() == 2).then_some(s)
        }
    })
    .await;
    for attempt in &snapshot.attempts {
        assert_eq!(attempt.status, None);
        assert_eq!(attempt.outcome, Outcome::Failed);
        let error = attempt.error.as_deref().unwrap();
        assert!(error.contains("not a public address"), "{error}");
    }
    assert!(rx.received("/ok-name").is_empty() && rx.received("/ok-literal").is_empty());
}

/// A store writer that keeps nothing, for dispatchers started directly in a test.
fn memory_store() -> herald::store::StoreWriter {
    herald::store::StoreWriter::in_memory()
}
