//! Every face across nodes: what is published on one node reaches the subscribers of the
//! others, with the same ids and in order, and every cursor resumes on any node.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::access::{event, WsClient};
use crate::instances::{base, create_messages, cursor, messages, poll, reader};

on_both!(a_publish_on_one_node_reaches_every_face_on_the_others);
async fn a_publish_on_one_node_reaches_every_face_on_the_others(backend: Backend) {
    let nodes = three_nodes(&backend, &[]);
    let [a, b, c] = nodes.each_ref().map(root);

    // SSE on A and C.
    let mut sse_a = sse(&a, "doc-owner", None).await;
    let mut sse_c = sse(&c, "doc-owner", None).await;
    // WebSocket on A and C.
    let ws_token = token("player", &[]);
    let mut ws_a = WsClient::announce_to(&a, "player", 0, Some(&ws_token)).await;
    let mut ws_c = WsClient::announce_to(&c, "player", 0, Some(&ws_token)).await;
    // Long-polls waiting on A and C, from the instance's current position.
    let instance = crate::instances::instance();
    let poller = reader(&instance);
    let start = poll(&a, &instance, "deadline=0", &poller).await;
    let from = cursor(&start);
    let query = format!("exclude_before={from}&deadline=20");
    let waiting_a = poll(&a, &instance, &query, &poller);
    let waiting_c = poll(&c, &instance, &query, &poller);
    // Every session is registered on its node before B publishes.
    let registered = async {
        wait_for("the WebSocket sessions on every node", || async {
            let listed = crate::access::clients_of(&b).await;
            (listed == ["player"]).then_some(())
        })
        .await;
    };

    let published = async {
        registered.await;
        // Give the waiting polls a moment to register; they are answered by the publish
        // either way (a poll that arrives after it finds the notification waiting).
        let ids = publish(&b, "doc-owner", 5).await;
        let batch = json!([
            event("player", 1, json!("one")),
            event("player", 2, json!({"n": 2}))
        ]);
        crate::access::push_to(&b, &batch).await;
        let created = create_messages(&b, &instance, &["hello".to_string()]).await;
        (ids, batch, created)
    };
    let (polled_a, polled_c, (ids, batch, created)) =
        futures_util::join!(waiting_a, waiting_c, published);

    assert_eq!(sse_ids(&mut sse_a, 5).await, ids, "A: same ids, in order");
    assert_eq!(sse_ids(&mut sse_c, 5).await, ids, "C: same ids, in order");
    for ws in [&mut ws_a, &mut ws_c] {
        assert_eq!(Value::Array(ws.collect(2).await), batch);
    }
    for polled in [polled_a, polled_c] {
        assert_eq!(polled.status, StatusCode::OK, "{}", polled.json);
        assert_eq!(messages(&polled), vec!["hello"]);
        assert_eq!(
            cursor(&polled),
            created,
            "the same notification id on every node"
        );
    }
    // Exactly once: nothing more arrives.
    sse_a.expect_silence(Duration::from_millis(200)).await;
    ws_c.expect_silence(Duration::from_millis(100)).await;
}

on_both!(a_cursor_taken_on_one_node_resumes_on_another);
async fn a_cursor_taken_on_one_node_resumes_on_another(backend: Backend) {
    let nodes = three_nodes(&backend, &[]);
    let [a, b, c] = nodes.each_ref().map(root);

    // SSE: the last id seen on A resumes on C with exactly the events after it.
    let mut on_a = sse(&a, "resumer", None).await;
    let first = publish(&b, "resumer", 3).await;
    assert_eq!(sse_ids(&mut on_a, 3).await, first);
    drop(on_a);
    let missed = publish(&a, "resumer", 4).await;
    let mut on_c = sse(&c, "resumer", Some(&first[2])).await;
    assert_eq!(
        sse_ids(&mut on_c, 4).await,
        missed,
        "exactly the missing events"
    );
    on_c.expect_silence(Duration::from_millis(200)).await;
    // An id the node has not seen yet (just published elsewhere) is not a gap either.
    let newest = publish(&b, "resumer", 1).await;
    let mut fresh = sse(&c, "resumer", Some(&missed[3])).await;
    assert_eq!(sse_ids(&mut fresh, 1).await, newest);

    // Long-poll: each answer's cursor, fed back to another node, skips and repeats nothing.
    let instance = crate::instances::instance();
    let token = reader(&instance);
    let names: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    create_messages(&a, &instance, &names[..3]).await;
    let page = poll(
        &b,
        &instance,
        "offset_reset_strategy=earliest&deadline=0&max_page_size=2",
        &token,
    )
    .await;
    assert_eq!(messages(&page), ["m1", "m2"]);
    let next = poll(
        &c,
        &instance,
        &format!("exclude_before={}&deadline=0", cursor(&page)),
        &token,
    )
    .await;
    assert_eq!(messages(&next), ["m3"]);
    create_messages(&b, &instance, &names[3..]).await;
    let rest = poll(
        &a,
        &instance,
        &format!("exclude_before={}&deadline=0", cursor(&next)),
        &token,
    )
    .await;
    assert_eq!(messages(&rest), ["m4", "m5", "m6"]);

    // Paging and reads by id, newer to older, from any node.
    let url = |root: &str, query: &str| format!("{root}{}/notification?{query}", base(&instance));
    let read = |url: String| {
        let token = token.clone();
        async move {
            crate::instances::send(
                client()
                    .get(url)
                    .insert_header(("Authorization", format!("bearer {token}"))),
                None,
            )
            .await
        }
    };
    let newest = read(url(&b, "page_size=4")).await;
    assert_eq!(messages(&newest), ["m6", "m5", "m4", "m3"]);
    let older = read(url(
        &c,
        &format!("page_size=4&start_at={}", cursor(&newest)),
    ))
    .await;
    assert_eq!(messages(&older), ["m2", "m1"]);
    let id = newest.json["notifications"][0]["notification_id"]
        .as_str()
        .unwrap()
        .to_string();
    let one = read(format!("{c}{}/notification/{id}", base(&instance))).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json["message"], "m6");
}

on_both!(websocket_replay_clients_and_drop_user_span_the_cluster);
async fn websocket_replay_clients_and_drop_user_span_the_cluster(backend: Backend) {
    let nodes = three_nodes(&backend, &[]);
    let [a, b, c] = nodes.each_ref().map(root);
    let (t1, t2) = (token("client1", &[]), token("client2", &[]));

    // Pushed on B before anyone connected: replayed on A since the announced timestamp.
    let old = [
        event("client1", 10, json!("old")),
        event("client1", 20, json!("newer")),
    ];
    crate::access::push_to(&b, &json!(old)).await;
    let mut one_a = WsClient::announce_to(&a, "client1", 15, Some(&t1)).await;
    assert_eq!(one_a.collect(1).await, vec![old[1].clone()]);
    let mut one_b = WsClient::announce_to(&b, "client1", 0, Some(&t1)).await;
    assert_eq!(one_b.collect(2).await, old.to_vec());
    let mut two_b = WsClient::announce_to(&b, "client2", 0, Some(&t2)).await;

    // `/clients` on C lists every node's sessions.
    wait_for("clients of every node", || async {
        (crate::access::clients_of(&c).await == ["client1", "client2"]).then_some(())
    })
    .await;

    // `drop_user` on C closes client1's sessions on A and B, and the listing at once.
    let mut res = client()
        .post(format!("{c}/drop_user"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!({"drop_access_id": "client1"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!(true));
    assert_eq!(crate::access::clients_of(&a).await, ["client2"]);
    assert_eq!(one_a.expect_close().await, (1000, "dropped".to_string()));
    assert_eq!(one_b.expect_close().await, (1000, "dropped".to_string()));
    // client2 is untouched.
    let later = event("client2", 30, json!("still here"));
    crate::access::push_to(&a, &json!([later])).await;
    assert_eq!(two_b.collect(1).await, vec![later]);
}

on_both!(the_listener_limit_counts_polls_on_every_node);
async fn the_listener_limit_counts_polls_on_every_node(backend: Backend) {
    let limit = ["--max-listeners-per-instance", "2"];
    let nodes = three_nodes(&backend, &limit);
    let [a, b, c] = nodes.each_ref().map(root);
    let instance = crate::instances::instance();
    let token = reader(&instance);

    let waiting_a = poll(&a, &instance, "deadline=30", &token);
    let waiting_b = poll(&b, &instance, "deadline=30", &token);
    let third = async {
        // Once both wait (their places taken in Redis), a third on another node is refused.
        let polls = polls_key(&instance);
        wait_for("both polls waiting", || async {
            let waiting = backend.command_on_key(&polls, &["ZCARD", &polls]);
            (waiting.as_deref() == Some("2")).then_some(())
        })
        .await;
        poll(&c, &instance, "deadline=1", &token).await
    };
    let refused = async {
        let refused = third.await;
        // Then a notification answers the two waiting polls, and their places are free again.
        create_messages(&c, &instance, &["wake".to_string()]).await;
        refused
    };
    let (first, second, refused) = futures_util::join!(waiting_a, waiting_b, refused);
    crate::instances::assert_error(&refused, 409, "too_many_listening_to_single_client");
    assert_eq!(messages(&first), ["wake"]);
    assert_eq!(messages(&second), ["wake"]);
    let again = poll(
        &c,
        &instance,
        &format!("exclude_before={}&deadline=0", cursor(&first)),
        &token,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
}

on_both!(the_demo_page_and_health_name_the_node_that_answered);
async fn the_demo_page_and_health_name_the_node_that_answered(backend: Backend) {
    let node = node(&backend, "node-7", &[]);
    let mut page = client().get(root(&node)).send().await.unwrap();
    let html = String::from_utf8(page.body().await.unwrap().to_vec()).unwrap();
    assert!(html.contains("served by node <b>node-7</b>"), "{html}");
    let mut health = client()
        .get(format!("{}/health", root(&node)))
        .send()
        .await
        .unwrap();
    let body: Value = health.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok", "node": "node-7"}));
}
