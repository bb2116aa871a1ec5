//! A killed primary under publishers and live subscribers of every face on both nodes.

use super::*;
use crate::cluster::load::{health_status, report, Acked, Faces};

/// Two nodes with `--redis-replicas 1` on three sentinels, a publisher of each face through
/// each node (documents to one client, notifications to one instance, access events to an
/// access id each), every publish with a key of its own and retried with it on every refusal;
/// the primary killed once 100 are acknowledged, and the publishers going on until 100 more
/// were acknowledged by the promoted replica. Subscribers on both nodes, live through it all
/// (SSE, long-polls following the cursor, WebSocket sessions), get every acknowledged event
/// exactly once, in each publisher's order; one whose node lost an event that was applied but
/// never acknowledged is told, by the face's own signal, and does what a client does.
#[actix_rt::test]
async fn a_primary_killed_under_publishers_on_every_face_loses_nothing_acknowledged() {
    let mut primary = Redis::start(Persistence::None);
    let standby = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = sentinels(&primary, standby.len()).await;
    let url = sentinel_url(&sentinels);
    let flags = ["--redis-replicas", "1", "--history-size", "100000"];
    let nodes = [node_on(&url, "a", &flags), node_on(&url, "b", &flags)];
    let faces = Faces::new(nodes.each_ref().map(root), "every-face");
    let a = &faces.roots[0];

    let acked = Acked::new();
    let killed: Cell<Option<Instant>> = Cell::default();
    let loser = async {
        acked.wait_more(100, DEADLINE, "publishing under way").await;
        killed.set(Some(Instant::now()));
        primary.kill();
        wait_for_within(3 * DEADLINE, "health to say redis_failover", || async {
            (health_status(a).await.as_deref() == Some("redis_failover")).then_some(())
        })
        .await;
        wait_for_within(3 * DEADLINE, "a replica promoted", || async {
            let promoted = sentinels[0].primary_port();
            standby
                .iter()
                .any(|r| Some(r.port) == promoted)
                .then_some(())
        })
        .await;
        acked
            .wait_more(
                100,
                3 * DEADLINE,
                "publishes acknowledged by the new primary",
            )
            .await;
        acked.stop();
    };
    let started = Instant::now();
    let seen = faces.run(&acked, loser).await;
    for root in &faces.roots {
        assert_eq!(health_status(root).await.as_deref(), Some("ok"));
    }
    let killed = killed.get().expect("the primary was killed");
    // The outage publishers saw (an attempt under way at the kill may still be acknowledged
    // after the first refusal).
    if let Some((refused, resumed)) = acked.refusal_window(killed, None) {
        eprintln!(
            "publishes refused for {:?} around the failover (the first {:?} after the kill)",
            resumed - refused,
            refused - killed,
        );
    }
    let refusals = acked.refusals();
    let early: Vec<String> = refusals
        .iter()
        .filter(|r| r.answered < killed)
        .map(|r| format!("{:?} through {}", r.face, r.node))
        .collect();
    if !early.is_empty() {
        eprintln!("{} refusals before the kill: {early:?}", early.len());
    }
    // Not replicated in time or Redis away (503), or no answer: nothing else.
    assert!(
        refusals.iter().all(|r| r
            .status
            .is_none_or(|s| s == StatusCode::SERVICE_UNAVAILABLE)),
        "{:?}",
        acked.refusal_counts()
    );
    report(&acked, &seen, started);
}
