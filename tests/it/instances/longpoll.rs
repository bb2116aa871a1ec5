//! The long-poll of instance notifications: backlog, start points, deadline, wake-up latency,
//! the cursor loop under a concurrent publisher, listener and connection limits, clients
//! that go away, and the drain.

use std::time::{Duration, Instant};

use awc::http::StatusCode;

use super::*;
use crate::common::*;

/// The stream name of an instance, for `TestServer::subscribers`.
fn stream(id: &str) -> String {
    format!("instance:{id}")
}

/// Waits until `n` polls of the instance are registered with the Broker.
async fn polls_waiting(srv: &TestServer, id: &str, n: usize) {
    wait_for(&format!("{n} polls waiting on {id}"), || async {
        (srv.subscribers(&stream(id)).await == n).then_some(())
    })
    .await;
}

/// Starts a poll in the background; the handle yields its reply and how long it took.
fn spawn_poll(root: &str, id: &str, query: &str) -> actix_rt::task::JoinHandle<(Reply, Duration)> {
    let (root, id, query) = (root.to_string(), id.to_string(), query.to_string());
    actix_rt::spawn(async move {
        let start = Instant::now();
        let reply = poll(&root, &id, &query, &reader(&id)).await;
        (reply, start.elapsed())
    })
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[actix_rt::test]
async fn a_backlog_answers_at_once_oldest_first_in_pages() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let t = reader(&id);
    let start = cursor(&poll(&root, &id, "deadline=0", &t).await);
    create_messages(&root, &id, &names(0..25)).await;
    let mut from = start;
    let mut seen = Vec::new();
    for expected in [10, 10, 5] {
        let began = Instant::now();
        let r = poll(
            &root,
            &id,
            &format!("exclude_before={from}&deadline=30"),
            &t,
        )
        .await;
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "a backlog does not wait"
        );
        let got = messages(&r);
        assert_eq!(got.len(), expected);
        let last_id = r.json["notifications"][expected - 1]["notification_id"].clone();
        assert_eq!(
            r.json["cursor"], last_id,
            "the cursor is the last returned id"
        );
        assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
        seen.extend(got);
        from = cursor(&r);
    }
    assert_eq!(seen, names(0..25));
}

#[actix_rt::test]
async fn the_start_follows_offset_reset_strategy() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    for query in [
        "",
        "exclude_before=garbage&",
        "exclude_before=AAAAAAAAAAAAAAAA&",
    ] {
        let id = instance();
        let t = reader(&id);
        create_messages(&root, &id, &names(0..3)).await;
        let latest = poll(&root, &id, &format!("{query}deadline=0"), &t).await;
        assert!(
            messages(&latest).is_empty(),
            "latest: nothing old ({query})"
        );
        let earliest = poll(
            &root,
            &id,
            &format!("{query}offset_reset_strategy=earliest&deadline=0"),
            &t,
        )
        .await;
        assert_eq!(
            messages(&earliest),
            names(0..3),
            "earliest: all retained ({query})"
        );
        // Feeding either cursor back misses nothing published after it.
        let last = create_messages(&root, &id, &["next".to_string()]).await;
        for from in [cursor(&latest), cursor(&earliest)] {
            let r = poll(&root, &id, &format!("exclude_before={from}&deadline=0"), &t).await;
            assert_eq!(messages(&r), vec!["next"]);
            assert_eq!(cursor(&r), last);
        }
        // A valid cursor wins over the strategy.
        let r = poll(
            &root,
            &id,
            &format!("exclude_before={last}&offset_reset_strategy=earliest&deadline=0"),
            &t,
        )
        .await;
        assert!(messages(&r).is_empty());
        assert_eq!(cursor(&r), last, "an empty answer keeps the cursor");
    }
}

#[actix_rt::test]
async fn an_empty_answer_comes_at_the_deadline_not_before() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let began = Instant::now();
    let r = poll(&root, &id, "deadline=1", &reader(&id)).await;
    let took = began.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert!(messages(&r).is_empty());
    assert!(
        took >= Duration::from_millis(990),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let began = Instant::now();
    let r = poll(&root, &id, "deadline=0", &reader(&id)).await;
    assert!(messages(&r).is_empty());
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "deadline 0 answers at once"
    );
    assert_eq!(
        srv.subscribers(&stream(&id)).await,
        0,
        "answered polls unregister"
    );
}

#[actix_rt::test]
async fn a_publish_wakes_a_waiting_poll_at_once() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let waiting = spawn_poll(&root, &id, "deadline=20");
    polls_waiting(&srv, &id, 1).await;
    let published = Instant::now();
    let nid = create_messages(&root, &id, &["wake".to_string()]).await;
    let (r, took) = waiting.await.unwrap();
    let latency = published.elapsed();
    assert_eq!(messages(&r), vec!["wake"]);
    assert_eq!(cursor(&r), nid);
    assert!(
        latency < Duration::from_secs(2),
        "woke {latency:?} after the publish"
    );
    assert!(
        took < Duration::from_secs(10),
        "well before the deadline: {took:?}"
    );
}

#[actix_rt::test]
async fn a_polling_loop_receives_every_notification_once_in_order() {
    const TOTAL: usize = 400;
    let srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let t = reader(&id);
    let mut from = cursor(&poll(&root, &id, "deadline=0", &t).await);
    let publisher = {
        let (root, id) = (root.clone(), id.clone());
        actix_rt::spawn(async move {
            let mut next = 0;
            let mut batch = 1;
            while next < TOTAL {
                let end = (next + batch).min(TOTAL);
                create_messages(&root, &id, &names(next..end)).await;
                next = end;
                // Batches of 1 to 13, so some polls see a backlog larger than their page.
                batch = batch % 13 + 1;
            }
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let began = Instant::now();
    while seen.len() < TOTAL {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "stuck after {}",
            seen.len()
        );
        let r = poll(
            &root,
            &id,
            &format!("exclude_before={from}&max_page_size=7&deadline=5"),
            &t,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let page = r.json["notifications"].as_array().unwrap();
        assert!(page.len() <= 7);
        for n in page {
            seen.push(n["message"].as_str().unwrap().to_string());
            ids.push(n["notification_id"].as_str().unwrap().to_string());
        }
        from = cursor(&r);
        if let Some(last) = ids.last().filter(|_| !page.is_empty()) {
            assert_eq!(&from, last);
        }
    }
    publisher.await.unwrap();
    assert_eq!(
        seen,
        names(0..TOTAL),
        "every notification exactly once, in order"
    );
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), TOTAL);
    let r = poll(&root, &id, &format!("exclude_before={from}&deadline=0"), &t).await;
    assert!(messages(&r).is_empty(), "nothing is repeated at the end");
}

#[actix_rt::test]
async fn concurrent_polls_of_one_instance_are_limited() {
    let srv = TestServer::start_with(|c| c.max_listeners_per_instance = 3).await;
    let root = srv.url("");
    let id = instance();
    let waiting: Vec<_> = (0..3)
        .map(|_| spawn_poll(&root, &id, "deadline=20"))
        .collect();
    polls_waiting(&srv, &id, 3).await;
    let r = poll(&root, &id, "deadline=0", &reader(&id)).await;
    assert_error(&r, 409, "too_many_listening_to_single_client");
    // Other instances are not affected.
    let other = instance();
    assert_eq!(
        poll(&root, &other, "deadline=0", &reader(&other))
            .await
            .status,
        StatusCode::OK
    );
    // One publish answers every waiting poll and frees their places at once.
    create_messages(&root, &id, &["all".to_string()]).await;
    for w in waiting {
        assert_eq!(messages(&w.await.unwrap().0), vec!["all"]);
    }
    let r = poll(&root, &id, "deadline=0", &reader(&id)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[actix_rt::test]
async fn back_to_back_polls_never_exceed_the_limit() {
    let srv = TestServer::start_with(|c| c.max_listeners_per_instance = 1).await;
    let root = srv.url("");
    let id = instance();
    let t = reader(&id);
    let mut from = cursor(&poll(&root, &id, "deadline=0", &t).await);
    for i in 0..30 {
        create_messages(&root, &id, &[format!("m{i}")]).await;
        let r = poll(&root, &id, &format!("exclude_before={from}&deadline=5"), &t).await;
        assert_eq!(r.status, StatusCode::OK, "poll {i}: {}", r.json);
        from = cursor(&r);
    }
}

#[actix_rt::test]
async fn the_server_connection_limit_is_503() {
    let srv = TestServer::start_with(|c| c.max_connections = 1).await;
    let root = srv.url("");
    let id = instance();
    let waiting = spawn_poll(&root, &id, "deadline=20");
    polls_waiting(&srv, &id, 1).await;
    let other = instance();
    let r = poll(&root, &other, "deadline=0", &reader(&other)).await;
    assert_error(&r, 503, "connection_limit_reached");
    create_messages(&root, &id, &["go".to_string()]).await;
    assert_eq!(messages(&waiting.await.unwrap().0), vec!["go"]);
    // The answered poll gave its place back before answering.
    let r = poll(&root, &other, "deadline=0", &reader(&other)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[actix_rt::test]
async fn a_client_that_goes_away_frees_its_place() {
    let srv = TestServer::start_with(|c| c.max_listeners_per_instance = 1).await;
    let root = srv.url("");
    let id = instance();
    let waiting = spawn_poll(&root, &id, "deadline=60");
    polls_waiting(&srv, &id, 1).await;
    waiting.abort();
    polls_waiting(&srv, &id, 0).await;
    let r = poll(&root, &id, "deadline=0", &reader(&id)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[actix_rt::test]
async fn a_drain_answers_waiting_polls_with_their_cursor() {
    let mut srv = TestServer::start().await;
    let root = srv.url("");
    let id = instance();
    let t = reader(&id);
    let from = cursor(&poll(&root, &id, "deadline=0", &t).await);
    let waiting = spawn_poll(&root, &id, &format!("exclude_before={from}&deadline=60"));
    polls_waiting(&srv, &id, 1).await;
    srv.herald.take().unwrap().shutdown().await;
    let (r, took) = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(messages(&r).is_empty());
    assert_eq!(cursor(&r), from, "the client resumes where it was");
    assert!(took < Duration::from_secs(30));
}

#[actix_rt::test]
async fn polls_are_counted_in_metrics() {
    use crate::ops::Scrape;
    let srv = TestServer::start_with(|c| c.max_listeners_per_instance = 1).await;
    let root = srv.url("");
    let id = instance();
    let before = Scrape::take(&srv).await;
    let waiting = spawn_poll(&root, &id, "exclude_before=garbage&deadline=20");
    polls_waiting(&srv, &id, 1).await;
    let during = Scrape::take(&srv).await;
    assert_eq!(
        during.value("herald_subscribers", ("face", "longpoll")),
        1.0
    );
    assert_error(
        &poll(&root, &id, "deadline=0", &reader(&id)).await,
        409,
        "too_many_listening_to_single_client",
    );
    create_messages(&root, &id, &names(0..2)).await;
    waiting.await.unwrap();
    poll(&root, &id, "deadline=0", &reader(&id)).await;
    // Data waiting is answered without waiting, and counted alike.
    let lost = "exclude_before=garbage&offset_reset_strategy=earliest&max_page_size=1";
    assert_eq!(
        messages(&poll(&root, &id, lost, &reader(&id)).await).len(),
        1
    );
    let after = Scrape::take(&srv).await;
    let delta = |name, label| after.value(name, label) - before.value(name, label);
    assert_eq!(
        delta("herald_longpolls_answered_total", ("outcome", "data")),
        2.0
    );
    assert_eq!(
        delta("herald_longpolls_answered_total", ("outcome", "deadline")),
        1.0
    );
    assert_eq!(
        delta("herald_longpolls_answered_total", ("outcome", "limit")),
        1.0
    );
    assert_eq!(
        delta("herald_events_delivered_total", ("face", "longpoll")),
        2.0
    );
    assert_eq!(delta("herald_gaps_total", ("face", "longpoll")), 2.0);
    assert_eq!(
        delta("herald_events_published_total", ("kind", "instance")),
        2.0
    );
    assert_eq!(after.value("herald_subscribers", ("face", "longpoll")), 0.0);
}
