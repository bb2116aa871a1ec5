//! What a cluster does when a part of it fails: a node killed under load, the live channel
//! cut, Redis restarted with and without its data, Redis away for seconds. Every test checks
//! that nothing acknowledged is lost or doubled, or that the face's gap signal is given.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use awc::http::StatusCode;
use herald::event::Position;
use serde_json::json;

use super::*;

/// The position of an id a face handed out.
fn position(id: &str) -> Position {
    Position::from_cursor(id).unwrap_or_else(|| panic!("not a cursor: {id}"))
}

/// Reads `stream` until every id of `expected` has arrived, then a little longer; asserts the
/// ids came in strictly increasing positions (none twice) and answers them.
async fn read_all(stream: &mut SseClient, expected: &BTreeSet<Position>) -> Vec<Position> {
    let mut seen = Vec::new();
    while !expected.iter().all(|p| seen.contains(p)) {
        let event = stream.expect_event().await;
        assert_eq!(event.event, "message", "{event:?}");
        seen.push(position(&event.id));
    }
    while let Some(event) = stream.next_within(Duration::from_millis(100)).await {
        seen.push(position(&event.id));
    }
    assert!(
        seen.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].epoch == w[1].epoch),
        "in order, each once: {seen:?}"
    );
    seen
}

on_both!(kill_9_of_a_node_under_four_publishers_loses_nothing_acknowledged);
async fn kill_9_of_a_node_under_four_publishers_loses_nothing_acknowledged(backend: Backend) {
    let mut nodes = three_nodes(&backend, &[]);
    let [a, b, c] = [0, 1, 2].map(|i| root(&nodes[i]));
    let mut on_a = sse(&a, "hot", None).await;
    let mut on_b = sse(&b, "hot", None).await;
    let mut on_c = sse(&c, "hot", None).await;

    const EACH: usize = 150;
    let acked: RefCell<BTreeSet<Position>> = RefCell::default();
    // Publishers 0 and 1 go through B until it dies, then through A, as a load balancer would
    // send them; 2 uses A and 3 uses C throughout.
    let publisher = |target: String| {
        let (acked, fallback) = (&acked, a.clone());
        async move {
            let mut target = target;
            for _ in 0..EACH {
                match try_publish(&target, "hot").await {
                    Some((StatusCode::ACCEPTED, body)) => {
                        acked
                            .borrow_mut()
                            .insert(position(body["ids"][0].as_str().unwrap()));
                    }
                    // No answer: the node is gone. Anything else is an error here.
                    None => target = fallback.clone(),
                    Some(other) => panic!("publish refused: {other:?}"),
                }
            }
        }
    };
    let killer = async {
        wait_for("publishing under way", || async {
            (acked.borrow().len() >= 150).then_some(())
        })
        .await;
        nodes[1].child.kill().expect("kill -9 B");
    };
    futures_util::join!(
        publisher(b.clone()),
        publisher(b.clone()),
        publisher(a.clone()),
        publisher(c.clone()),
        killer
    );
    let acked = acked.into_inner();
    assert!(
        acked.len() >= 3 * EACH,
        "the publishers through A and C never failed"
    );

    // Subscribers of the surviving nodes: every acknowledged event, once, in order.
    read_all(&mut on_a, &acked).await;
    read_all(&mut on_c, &acked).await;

    // B's subscriber saw its stream end; it resumes on A from the last id it got.
    let mut before = Vec::new();
    while let Some(event) = on_b.next_or_end().await {
        if event.event == "message" {
            before.push(event.id);
        }
    }
    let last = before.last().cloned();
    let mut resumed = sse(&a, "hot", last.as_deref()).await;
    let rest: BTreeSet<Position> = acked
        .iter()
        .filter(|p| last.as_deref().is_none_or(|l| p.seq > position(l).seq))
        .copied()
        .collect();
    let after = read_all(&mut resumed, &rest).await;
    let mut all: Vec<Position> = before.iter().map(|id| position(id)).collect();
    all.extend(after);
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "no loss or repeat at the resume"
    );
    assert!(acked.iter().all(|p| all.contains(p)));
}

on_both!(a_live_channel_cut_by_redis_loses_nothing);
async fn a_live_channel_cut_by_redis_loses_nothing(backend: Backend) {
    let nodes = [node(&backend, "a", &[]), node(&backend, "b", &[])];
    let [a, b] = nodes.each_ref().map(root);
    let mut on_a = sse(&a, "cut", None).await;

    let acked: RefCell<BTreeSet<Position>> = RefCell::default();
    let publisher = async {
        for id in publish(&b, "cut", 100).await {
            acked.borrow_mut().insert(position(&id));
        }
        // Publishes continue while the nodes reconnect their live channels.
        for _ in 0..200 {
            let (status, body) = try_publish(&b, "cut").await.expect("B answers");
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            acked
                .borrow_mut()
                .insert(position(body["ids"][0].as_str().unwrap()));
        }
    };
    let cutter = async {
        wait_for("publishing under way", || async {
            (acked.borrow().len() >= 100).then_some(())
        })
        .await;
        let killed = backend.kill_pubsub_clients();
        match &backend {
            Backend::One(_) => assert_eq!(killed, 2, "both nodes' channels cut"),
            // A node may hold a channel per primary (sharded PUB/SUB lives on the slot's
            // primary): at least one each.
            Backend::Cluster(_) => assert!(killed >= 2, "both nodes' channels cut: {killed}"),
        }
    };
    futures_util::join!(publisher, cutter);
    let acked = acked.into_inner();
    let seen = read_all(&mut on_a, &acked).await;
    assert_eq!(seen.len(), 300);
}

/// A subscription that wedges while the connection looks healthy (centrifugo issue 1189): the
/// probe notices, the node reconnects, and reads what it missed. Nothing is published after the
/// wedge but the missed events, so only that read can deliver them.
#[actix_rt::test]
async fn a_wedged_live_channel_is_noticed_and_what_it_missed_is_read() {
    let redis = Redis::start(Persistence::None);
    let proxy = WedgingProxy::start(&redis);
    let nodes = [node_on(&proxy.url(), "a", &[]), node(&redis, "b", &[])];
    let [a, b] = nodes.each_ref().map(root);
    let mut on_a = sse(&a, "wedged", None).await;
    let before = publish(&b, "wedged", 5).await;
    assert_eq!(sse_ids(&mut on_a, 5).await, before);

    proxy.wedge();
    let missed = publish(&b, "wedged", 20).await;
    assert_eq!(
        sse_ids(&mut on_a, 20).await,
        missed,
        "all of them, in order, once"
    );
    on_a.expect_silence(Duration::from_millis(200)).await;
    // And the new channel carries live events again.
    let after = publish(&b, "wedged", 1).await;
    assert_eq!(sse_ids(&mut on_a, 1).await, after);
}

#[actix_rt::test]
async fn a_redis_restart_with_its_data_loses_nothing() {
    let mut redis = Redis::start(Persistence::Always);
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[])];
    let [a, b] = nodes.each_ref().map(root);
    let mut on_a = sse(&a, "durable", None).await;
    let mut acked: BTreeSet<Position> = publish(&b, "durable", 50)
        .await
        .iter()
        .map(|id| position(id))
        .collect();

    redis.restart();
    // Publishes are refused until the nodes are back with Redis, then accepted again.
    let first = wait_for("publishes accepted again", || async {
        match try_publish(&b, "durable").await {
            Some((StatusCode::ACCEPTED, body)) => Some(position(body["ids"][0].as_str().unwrap())),
            Some((StatusCode::SERVICE_UNAVAILABLE, _)) | None => None,
            Some(other) => panic!("{other:?}"),
        }
    })
    .await;
    acked.insert(first);
    wait_for("A back with Redis", || async {
        (health(&a).await == Some(StatusCode::OK)).then_some(())
    })
    .await;
    acked.extend(
        publish(&a, "durable", 20)
            .await
            .iter()
            .map(|id| position(id)),
    );
    let seen = read_all(&mut on_a, &acked).await;
    assert_eq!(
        seen.len(),
        acked.len(),
        "no event but the acknowledged ones, and no gap"
    );
}

#[actix_rt::test]
async fn a_redis_that_lost_its_data_gives_the_gap_signal() {
    let mut redis = Redis::start(Persistence::None);
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[])];
    let [a, b] = nodes.each_ref().map(root);
    let mut on_a = sse(&a, "amnesia", None).await;
    let before = publish(&b, "amnesia", 3).await;
    assert_eq!(sse_ids(&mut on_a, 3).await, before);
    let instance = crate::instances::instance();
    let old_cursor = crate::instances::create_messages(&b, &instance, &["old".into()]).await;

    redis.restart();
    // A's subscriber is told to come back: its stream ends with a reconnect hint.
    while on_a.next_or_end().await.is_some() {}
    wait_for("A back with Redis", || async {
        (health(&a).await == Some(StatusCode::OK)).then_some(())
    })
    .await;
    let mut resumed = sse(&a, "amnesia", before.last().map(String::as_str)).await;
    let gap = resumed.expect_event().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data, r#"{"reason":"stream_reset"}"#);
    let after = publish(&b, "amnesia", 2).await;
    assert_eq!(sse_ids(&mut resumed, 2).await, after);
    assert_ne!(
        position(&after[0]).epoch,
        position(&before[0]).epoch,
        "a new epoch"
    );

    // A long-poll cursor of the lost life is a gap too: `earliest` starts over.
    let token = crate::instances::reader(&instance);
    crate::instances::create_messages(&b, &instance, &["new".into()]).await;
    let query = format!("exclude_before={old_cursor}&offset_reset_strategy=earliest&deadline=0");
    let page = crate::instances::poll(&a, &instance, &query, &token).await;
    assert_eq!(crate::instances::messages(&page), ["new"]);
}

#[actix_rt::test]
async fn redis_away_for_a_while() {
    let mut redis = Redis::start(Persistence::Always);
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[])];
    let [a, b] = nodes.each_ref().map(root);
    let mut on_a = sse(&a, "patient", None).await;
    let before: BTreeSet<Position> = publish(&b, "patient", 20)
        .await
        .iter()
        .map(|id| position(id))
        .collect();

    redis.kill();
    for node in [&a, &b] {
        wait_for("/health 503", || async {
            (health(node).await == Some(StatusCode::SERVICE_UNAVAILABLE)).then_some(())
        })
        .await;
        // Not ready, but alive: a restart would not bring Redis back.
        let (status, body) = crate::ops::probe(node, "/health/ready").await.unwrap();
        assert_eq!(
            (status, &body["status"]),
            (503, &json!("redis_unreachable"))
        );
        let (status, body) = crate::ops::probe(node, "/health/live").await.unwrap();
        assert_eq!((status, &body["status"]), (200, &json!("ok")));
    }
    // Every publishing face answers 503 in its own shape; nothing is half-accepted.
    let (status, body) = try_publish(&a, "patient").await.expect("A answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].is_string(), "{body}");
    let instance = crate::instances::instance();
    let r = crate::instances::create(&b, &instance, &json!({"notifications": [{"message": "x"}]}))
        .await;
    crate::instances::assert_error(&r, 503, "service_unavailable");
    let mut res = client()
        .post(format!("{a}/push_events"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!([crate::access::event("p", 1, json!(1))]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.json::<serde_json::Value>().await.unwrap()["error"].is_string());

    // The outage lasts until the nodes have tried Redis again and again (28 attempts of the
    // two in five seconds, measured, their live channels backing off to 2 s): a listener on
    // Redis's port takes each attempt and ends it before a word, so none gets through.
    let port = std::net::TcpListener::bind(("127.0.0.1", redis.port)).expect("Redis's port");
    port.set_nonblocking(true).unwrap();
    let mut turned_away = 0;
    wait_for("the nodes to be turned away 24 times", || {
        while port.accept().is_ok() {
            turned_away += 1;
        }
        let enough = turned_away >= 24;
        async move { enough.then_some(()) }
    })
    .await;
    drop(port);
    redis.restart();
    for node in [&a, &b] {
        wait_for("/health 200 again", || async {
            (health(node).await == Some(StatusCode::OK)).then_some(())
        })
        .await;
        let (status, _) = crate::ops::probe(node, "/health/ready").await.unwrap();
        assert_eq!(status, 200);
    }
    let after: BTreeSet<Position> = publish(&b, "patient", 5)
        .await
        .iter()
        .map(|id| position(id))
        .collect();
    // The subscriber stayed connected: it gets what came before the outage and after it.
    let all: BTreeSet<Position> = before.union(&after).copied().collect();
    let seen = read_all(&mut on_a, &all).await;
    assert_eq!(seen.len(), 25);
}

#[test]
fn a_node_that_cannot_reach_redis_refuses_to_start_in_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let line = crate::process::refusal(
        crate::process::herald()
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
            .args(["--redis", &format!("redis://127.0.0.1:{port}/")]),
    );
    assert!(line.contains("--redis"), "{line}");
}
