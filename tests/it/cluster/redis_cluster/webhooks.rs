//! The shard holding the dashboard (every dashboard and webhook key shares the `{dashboard}`
//! hash tag, so one slot) failed over under registrations whose REGISTER events fire webhooks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::reshard::{off_runtime, print_node_log};
use super::RedisCluster;
use crate::cluster::{node, root, DUE_KEY, RETRIES_KEY};
use crate::common::*;
use crate::dashboard::{subscribe, verify, Receiver};

/// Flags of nodes that acknowledge a change once a replica holds its event, and may call the
/// loopback receiver, retrying after 100 ms and 200 ms (those of `cluster/webhooks.rs`).
const WEBHOOK_NODE: &[&str] = &[
    "--redis-replicas",
    "1",
    "--webhook-allow-private",
    "--webhook-retry-schedule",
    "100ms,200ms",
    "--webhook-timeout",
    "2s",
];

/// Registers `iso` through the node at `root`, as a dashboard client does; the status, or
/// `None` if the node did not answer.
async fn try_register(root: &str, iso: &str) -> Option<StatusCode> {
    let res = client()
        .post(format!("{root}/dashboard/v1/registrations"))
        .send_json(&json!({"country": "", "isoCode": iso, "features": {"temperature": true}}))
        .await
        .ok()?;
    Some(res.status())
}

/// The `webhook-id`s `path` received for each country, each with how often.
fn ids_by_country(receiver: &Receiver, path: &str) -> HashMap<String, HashMap<String, usize>> {
    let mut by_country: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for r in receiver.received(path) {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let country = body["country"].as_str().unwrap().to_string();
        let id = r.headers["webhook-id"].to_str().unwrap().to_string();
        *by_country
            .entry(country)
            .or_default()
            .entry(id)
            .or_default() += 1;
    }
    by_country
}

/// Two nodes with `--redis-replicas 1` on a cluster of three primaries with a replica each, a
/// webhook subscribed to REGISTER, and two producers (one through each node) registering a
/// country each time, retrying every refusal; the primary of the dashboard's slot killed once
/// 40 registrations are acknowledged, promoted, started again (so `WAIT 1` can be met), and
/// the producers going on until 40 more were acknowledged. Every acknowledged registration
/// reaches the receiver, signed; a `webhook-id` belongs to one event (attempts made again
/// repeat it), and a registration attempted once is one event.
///
/// A registration is not idempotent: a refused attempt may have been applied, and its retry
/// is a second registration with an event of its own. Each attempt sequence has a country of
/// its own, so the receiver tells them apart by country, and a country whose registration was
/// retried may have more than one event (at most one per attempt).
#[actix_rt::test]
async fn webhooks_of_registrations_survive_a_killed_dashboard_primary() {
    let cluster = RedisCluster::start(3, 1);
    let nodes = [
        node(&cluster, "a", WEBHOOK_NODE),
        node(&cluster, "b", WEBHOOK_NODE),
    ];
    let [a, b] = nodes.each_ref().map(root);
    let receiver = Receiver::start().await;
    let (sub, secret) = subscribe(&a, &receiver.url("/ok-register"), "", "REGISTER").await;
    let slot = cluster.slot(DUE_KEY);
    let victim = cluster.owner(slot);
    let cluster = RefCell::new(Some(cluster));
    // Half the countries registered through each node.
    let mut countries: [Vec<String>; 2] = Default::default();
    for (i, code) in isocountry::CountryCode::iter().enumerate() {
        countries[i % 2].push(code.alpha2().to_string());
    }

    // Per country: how many attempts it took, for those acknowledged (201).
    let acked: RefCell<HashMap<String, usize>> = RefCell::default();
    let done = Cell::new(false);
    let killed: Cell<Option<Instant>> = Cell::default();
    // The first refusal after the kill, and the first acknowledgement of an attempt sent
    // after it.
    let refused: Cell<Option<Instant>> = Cell::default();
    let resumed: Cell<Option<Instant>> = Cell::default();
    let refusals: RefCell<HashMap<String, usize>> = RefCell::default();
    let producer = |target: String, mine: Vec<String>| {
        let (acked, done, killed, refused, resumed, refusals) =
            (&acked, &done, &killed, &refused, &resumed, &refusals);
        async move {
            for country in mine {
                if done.get() {
                    break;
                }
                let attempts = Cell::new(0);
                // Redis away, not replicated in time, or no answer: retried until answered, as
                // a dashboard client does.
                wait_for_within(3 * DEADLINE, "a registration acknowledged", || async {
                    attempts.set(attempts.get() + 1);
                    let sent = Instant::now();
                    match try_register(&target, &country).await {
                        Some(StatusCode::CREATED) => {
                            if refused.get().is_some_and(|r| sent > r) && resumed.get().is_none() {
                                resumed.set(Some(Instant::now()));
                            }
                            Some(())
                        }
                        Some(status) if status.is_server_error() => {
                            *refusals.borrow_mut().entry(status.to_string()).or_default() += 1;
                            if killed.get().is_some() && refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            None
                        }
                        None => {
                            *refusals.borrow_mut().entry("no answer".into()).or_default() += 1;
                            None
                        }
                        Some(other) => panic!("registration of {country} refused: {other}"),
                    }
                })
                .await;
                acked.borrow_mut().insert(country, attempts.get());
            }
        }
    };
    let loser = async {
        wait_for("registrations under way", || async {
            (acked.borrow().len() >= 40).then_some(())
        })
        .await;
        let mut redis = cluster.borrow_mut().take().expect("the cluster is here");
        killed.set(Some(Instant::now()));
        redis.kill(victim);
        redis = off_runtime(move || {
            redis.wait_promoted(victim);
            redis.restart(victim);
            redis
        })
        .await;
        *cluster.borrow_mut() = Some(redis);
        let after = acked.borrow().len();
        // Each producer has some 120 countries to register: more than this takes.
        wait_for_within(
            3 * DEADLINE,
            "registrations acknowledged after the failover",
            || async { (acked.borrow().len() >= after + 40).then_some(()) },
        )
        .await;
        done.set(true);
    };
    let [to_a, to_b] = countries;
    futures_util::join!(producer(a.clone(), to_a), producer(b.clone(), to_b), loser);
    let killed = killed.get().expect("killed");
    match (refused.get(), resumed.get()) {
        (Some(refused), Some(resumed)) => eprintln!(
            "registrations refused for {:?} (the first refusal {:?} after the kill)",
            resumed - refused,
            refused - killed
        ),
        _ => eprintln!("no registration refused after the kill"),
    }
    let acked = acked.into_inner();

    wait_for_within(
        3 * DEADLINE,
        "a delivery of every acknowledged registration",
        || async {
            let got = ids_by_country(&receiver, "/ok-register");
            acked.keys().all(|c| got.contains_key(c)).then_some(())
        },
    )
    .await;
    // What arrives late (a delivery the dead primary saw settled, attempted again) is
    // counted too: nothing due, in flight or waiting for a retry any more.
    let redis = cluster.borrow_mut().take().expect("the cluster is here");
    wait_for_within(
        3 * DEADLINE,
        "no delivery due, in flight or waiting for a retry",
        || async {
            let due = redis.command_on_key(DUE_KEY, &["XLEN", DUE_KEY])?;
            let retries = redis.command_on_key(RETRIES_KEY, &["ZCARD", RETRIES_KEY])?;
            (due == "0" && retries == "0").then_some(())
        },
    )
    .await;
    let got = ids_by_country(&receiver, "/ok-register");
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for (country, ids) in &got {
        let attempts = *acked
            .get(country)
            .unwrap_or_else(|| panic!("a delivery for {country}, never registered"));
        // One event per registration made, and only an attempt can have made one.
        assert!(
            ids.len() <= attempts,
            "{country}: {} events from {attempts} attempts: {ids:?}",
            ids.len()
        );
        for id in ids.keys() {
            let first = owners.insert(id, country);
            assert!(
                first.is_none(),
                "{id} delivered for {country} and {first:?}"
            );
        }
    }
    for r in receiver.received("/ok-register") {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let country = body["country"].as_str().unwrap();
        verify(&r, &secret, &sub, country, "REGISTER");
    }
    let again: usize = got
        .values()
        .flat_map(|ids| ids.values())
        .map(|n| n - 1)
        .sum();
    let retried = acked.values().filter(|&&n| n > 1).count();
    let doubled = got.values().filter(|ids| ids.len() > 1).count();
    print_node_log(&nodes);
    eprintln!(
        "{} registrations acknowledged, all delivered; {retried} of them retried, {doubled} of \
         those with two events; {again} deliveries attempted again; refusals: {:?}",
        acked.len(),
        refusals.into_inner()
    );
}
