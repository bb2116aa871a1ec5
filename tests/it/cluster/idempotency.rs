//! Idempotency keys across nodes: Redis keeps a publish's key in the stream's slot, so a
//! repeat on any node answers the first publish, and repeats sent at once to two nodes are
//! serialized by Redis: one appends.

use super::*;
use crate::idempotency::{assert_one_appended, at_once, Face, Target, FACES};

on_both!(a_key_used_on_one_node_answers_on_another);
async fn a_key_used_on_one_node_answers_on_another(backend: Backend) {
    let (a, b) = (node(&backend, "a", &[]), node(&backend, "b", &[]));
    let (a, b) = (root(&a), root(&b));
    for face in FACES {
        let target = Target::new(face);
        let first = target.publish(&a, Some("across"), 1).await;
        target.assert_ok(&first, false);
        let again = target.publish(&b, Some("across"), 1).await;
        target.assert_ok(&again, true);
        assert_eq!(again.body, first.body, "{face:?}: the same answer on B");
        target.assert_reused(&target.publish(&b, Some("across"), 2).await);
        target.assert_reused(&target.publish(&a, Some("across"), 2).await);
        assert_eq!(target.seen(&b).await, target.expected(1), "{face:?}");
    }
    // The key lives beside the stream's other keys, for the window (5 minutes by default).
    let target = Target::new(Face::Documents);
    target.assert_ok(&target.publish(&a, Some("where"), 1).await, false);
    let key = idempotency_key("client", &target.id, "where");
    let ttl: u64 = backend
        .command_on_key(&key, &["PTTL", &key])
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300_000).contains(&ttl), "{key}: {ttl} ms");
}

on_both!(repeats_at_once_on_two_nodes_publish_once);
async fn repeats_at_once_on_two_nodes_publish_once(backend: Backend) {
    let nodes = [node(&backend, "a", &[]), node(&backend, "b", &[])];
    let roots = nodes.each_ref().map(root);
    for face in FACES {
        let target = Target::new(face);
        let answers = at_once(&target, &roots, "together", 8).await;
        assert_one_appended(&target, &answers);
        assert_eq!(target.seen(&roots[1]).await, target.expected(1), "{face:?}");
    }
}

on_both!(after_the_window_a_key_publishes_again_on_any_node);
async fn after_the_window_a_key_publishes_again_on_any_node(backend: Backend) {
    let window = ["--idempotency-window", "1s"];
    let (a, b) = (node(&backend, "a", &window), node(&backend, "b", &window));
    let (a, b) = (root(&a), root(&b));
    let target = Target::new(Face::Documents);
    let first = target.publish(&a, Some("brief"), 1).await;
    target.assert_ok(&first, false);
    let again = wait_for("the key to expire in Redis", || {
        let (target, b) = (&target, &b);
        async move {
            let again = target.publish(b, Some("brief"), 1).await;
            assert_eq!(again.status, StatusCode::ACCEPTED);
            (!again.replayed).then_some(again)
        }
    })
    .await;
    assert!(again.positions()[0] > first.positions()[1]);
    assert_eq!(target.seen(&a).await, target.expected_all(&[1, 1]));
}
