//! A killed primary under dashboard producers whose changes fire webhooks.

use super::*;
use crate::dashboard::{register, subscribe, verify, Receiver};

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

/// Deletes registration `id` through the node at `root`, as a dashboard client does; the
/// status, or `None` if the node did not answer.
async fn delete_registration(root: &str, id: &str) -> Option<StatusCode> {
    let res = client()
        .delete(format!("{root}/dashboard/v1/registrations/{id}"))
        .send()
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

/// Waits until `redis` (the primary now) holds no webhook delivery due, in flight or waiting
/// for a retry. From then on no attempt can come. Entries the dead primary saw settled but
/// did not pass on are taken over once idle for longer than an attempt can take, hence the
/// longer deadline.
async fn settled_on(redis: &Redis) {
    wait_for_within(
        3 * DEADLINE,
        "no delivery due, in flight or waiting for a retry",
        || async {
            let due = redis.command(&["XLEN", DUE_KEY])?;
            let retries = redis.command(&["ZCARD", RETRIES_KEY])?;
            (due == "0" && retries == "0").then_some(())
        },
    )
    .await;
}

/// Two nodes on three sentinels, a webhook subscribed to DELETE, and two producers (one
/// through each node) deleting registrations and retrying every refusal; the primary killed
/// once 40 deletions are acknowledged, the producers going on until 40 more were acknowledged
/// by the promoted replica. Every acknowledged deletion reaches the receiver as one delivery,
/// signed.
///
/// Dashboard requests take no idempotency key, so DELETE is the change used: a retry of it
/// can make no second event (once an attempt removed the registration, the next ones find
/// nothing), where a retried POST, PUT or PATCH is a second change with an event of its own. A
/// delivery names only its country and event, so each registration has a country of its own
/// and the receiver tells the deletions apart by country.
#[actix_rt::test]
async fn webhooks_of_dashboard_events_survive_a_killed_primary() {
    let mut primary = Redis::start(Persistence::None);
    let replicas = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = sentinels(&primary, replicas.len()).await;
    let url = sentinel_url(&sentinels);
    let nodes = [
        node_on(&url, "a", WEBHOOK_NODE),
        node_on(&url, "b", WEBHOOK_NODE),
    ];
    let [a, b] = nodes.each_ref().map(root);
    let receiver = Receiver::start().await;
    let (sub, secret) = subscribe(&a, &receiver.url("/ok-delete"), "", "DELETE").await;
    // One registration per country, half of them deleted through each node.
    let mut registrations: [Vec<(String, String)>; 2] = Default::default();
    for (i, code) in isocountry::CountryCode::iter().enumerate() {
        let country = code.alpha2().to_string();
        let id = register([&a, &b][i % 2], &country).await;
        registrations[i % 2].push((id, country));
    }
    // Whichever replica is promoted holds the subscription and every registration.
    for replica in &replicas {
        replica.wait_for_sync(&primary);
    }

    // Countries whose deletion was acknowledged (204), and those a refused attempt deleted
    // (its retry found nothing): their events may or may not have been made durable.
    let acked: RefCell<Vec<String>> = RefCell::default();
    let unsure: RefCell<Vec<String>> = RefCell::default();
    let done = Cell::new(false);
    // The first refusal, and the first acknowledgement after it.
    let refused: Cell<Option<Instant>> = Cell::default();
    let resumed: Cell<Option<Instant>> = Cell::default();
    let producer = |target: String, mine: Vec<(String, String)>| {
        let (acked, unsure, done, refused, resumed) = (&acked, &unsure, &done, &refused, &resumed);
        async move {
            for (id, country) in mine {
                if done.get() {
                    break;
                }
                // Redis away, not replicated in time, or no answer: retried until answered, as
                // a dashboard client does.
                let retried = Cell::new(false);
                let deleted = wait_for_within(3 * DEADLINE, "a failover", || async {
                    match delete_registration(&target, &id).await {
                        Some(StatusCode::NO_CONTENT) => Some(true),
                        // Only a refused attempt of ours can have deleted it.
                        Some(StatusCode::NOT_FOUND) if retried.get() => Some(false),
                        Some(StatusCode::SERVICE_UNAVAILABLE) | None => {
                            retried.set(true);
                            if refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            None
                        }
                        Some(other) => panic!("deletion of {country} refused: {other}"),
                    }
                })
                .await;
                if deleted {
                    acked.borrow_mut().push(country);
                } else {
                    unsure.borrow_mut().push(country);
                }
                if refused.get().is_some() && resumed.get().is_none() {
                    resumed.set(Some(Instant::now()));
                }
            }
        }
    };
    let loser = async {
        wait_for("deletions under way", || async {
            (acked.borrow().len() >= 40).then_some(())
        })
        .await;
        primary.kill();
        let promoted = wait_for_within(3 * DEADLINE, "a replica promoted", || async {
            let promoted = sentinels[0].primary_port();
            replicas.iter().position(|r| Some(r.port) == promoted)
        })
        .await;
        let after = acked.borrow().len();
        // Each producer has some 120 registrations to delete: more than this takes.
        wait_for_within(
            3 * DEADLINE,
            "deletions acknowledged by the new primary",
            || async { (acked.borrow().len() >= after + 40).then_some(()) },
        )
        .await;
        done.set(true);
        promoted
    };
    let [to_a, to_b] = registrations;
    let ((), (), promoted) =
        futures_util::join!(producer(a.clone(), to_a), producer(b.clone(), to_b), loser);
    if let (Some(refused), Some(resumed)) = (refused.get(), resumed.get()) {
        eprintln!(
            "deletions refused for {:?} around the failover",
            resumed - refused
        );
    }
    let (acked, unsure) = (acked.into_inner(), unsure.into_inner());

    wait_for_within(
        3 * DEADLINE,
        "a delivery of every acknowledged deletion",
        || async {
            let got = ids_by_country(&receiver, "/ok-delete");
            acked.iter().all(|c| got.contains_key(c)).then_some(())
        },
    )
    .await;
    // What arrives late (a delivery the dead primary saw settled, attempted again) is
    // counted too.
    settled_on(&replicas[promoted]).await;
    let got = ids_by_country(&receiver, "/ok-delete");
    for (country, ids) in &got {
        assert!(
            acked.contains(country) || unsure.contains(country),
            "a delivery for {country}, never deleted"
        );
        // An attempt made again (its settle lost with the primary, or retried) keeps its
        // webhook-id, so the receiver can deduplicate it; another id is another event.
        assert_eq!(
            ids.len(),
            1,
            "{country} delivered as several events: {ids:?}"
        );
    }
    for r in receiver.received("/ok-delete") {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        verify(
            &r,
            &secret,
            &sub,
            body["country"].as_str().unwrap(),
            "DELETE",
        );
    }
    let again: usize = got
        .values()
        .flat_map(|ids| ids.values())
        .map(|n| n - 1)
        .sum();
    let unsure_delivered = unsure.iter().filter(|c| got.contains_key(*c)).count();
    eprintln!(
        "{} deletions acknowledged, all delivered; {} deleted by a refused attempt, {} of \
         them delivered; {again} deliveries attempted again",
        acked.len(),
        unsure.len(),
        unsure_delivered,
    );
}
