//! Revocations across nodes: a revocation made on one node closes the subject's connections
//! on every node and every face, and every node refuses the subject until it is lifted, a
//! node started later included.

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::access::WsClient;
use crate::instances::{assert_error, instance, poll, send};
use crate::tokens::revoke;

/// The next SSE event, which must be the `error` event `code`.
async fn expect_error(stream: &mut SseClient, code: &str) {
    let event = stream.expect_event().await;
    assert_eq!(event.event, "error", "{event:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({ "error": code })
    );
}

on_both!(a_revocation_on_one_node_closes_the_subject_everywhere);
async fn a_revocation_on_one_node_closes_the_subject_everywhere(backend: Backend) {
    let nodes = [node(&backend, "a", &[]), node(&backend, "b", &[])];
    let [a, b] = nodes.each_ref().map(root);
    let alice = token("alice", &["notification:instance:read"]);
    let mut stream = sse(&a, "alice", None).await;
    let mut ws = WsClient::announce_to(&b, "alice", 0, Some(&alice)).await;
    wait_for("the WebSocket session", || async {
        (crate::access::clients_of(&b).await == ["alice"]).then_some(())
    })
    .await;
    let id = instance();
    let polling = actix_rt::spawn({
        let (b, id, alice) = (b.clone(), id.clone(), alice.clone());
        async move { poll(&b, &id, "deadline=20", &alice).await }
    });

    let r = revoke(&a, &json!({"sub": "alice", "ttl": 120})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    expect_error(&mut stream, "revoked").await;
    assert_eq!(ws.expect_close().await, (4003, "revoked".to_string()));
    assert_error(&polling.await.unwrap(), 403, "auth_token_revoked");

    // Refused on every node, one started after the revocation included.
    let late = node(&backend, "c", &[]);
    let c = root(&late);
    for root in [&a, &b, &c] {
        let mut again = sse(root, "alice", None).await;
        expect_error(&mut again, "revoked").await;
    }
    let listed = send(
        client()
            .get(format!("{c}/revocations"))
            .bearer_auth(PUBLISHER_KEY),
        None,
    )
    .await;
    assert_eq!(listed.json[0]["sub"], "alice", "{}", listed.json);

    // Lifted on B: C accepts the subject again.
    let lifted = send(
        client()
            .delete(format!("{b}/revocations/sub/alice"))
            .bearer_auth(PUBLISHER_KEY),
        None,
    )
    .await;
    assert_eq!(lifted.status, StatusCode::NO_CONTENT);
    let mut back = wait_for("alice accepted on C", || async {
        let mut stream = sse(&c, "alice", None).await;
        stream
            .next_within(std::time::Duration::from_millis(200))
            .await
            .is_none()
            .then_some(stream)
    })
    .await;
    let ids = publish(&a, "alice", 1).await;
    assert_eq!(sse_ids(&mut back, 1).await, ids);
}
