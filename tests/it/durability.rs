//! The embedded SQLite store: nothing acknowledged is lost when the process is killed.

use std::cell::RefCell;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::process::{serve, Served};

fn start(dir: &std::path::Path) -> Served {
    serve(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "--jwt-secret",
        SECRET,
        "--publisher-key",
        PUBLISHER_KEY,
    ])
}

async fn publish(base: &str, stream: &str, doc: &str) -> Option<String> {
    let mut res = client()
        .post(format!("{base}/events/client/{stream}"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!({"documentId": doc, "status": "PENDING"}))
        .await
        .ok()?;
    if res.status() != StatusCode::ACCEPTED {
        return None;
    }
    let body: Value = res.json().await.ok()?;
    Some(body["ids"][0].as_str()?.to_string())
}

/// Reads `stream`'s events after `cursor` until `until` returns true for the collected
/// (id, documentId)s.
async fn read_after(
    base: &str,
    stream: &str,
    cursor: &str,
    until: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let req = client()
        .get(format!("{base}/events/client"))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("Last-Event-ID", cursor))
        .bearer_auth(token(stream, &[]));
    let mut sub = SseClient::open(req).await;
    let mut seen = Vec::new();
    while !until(&seen) {
        let event = sub.expect_event().await;
        assert_eq!(event.event, "message", "no gap after a restart: {event:?}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        seen.push((event.id, data["documentId"].as_str().unwrap().to_string()));
    }
    // Events committed just before the kill may have lost only their ack; they still belong
    // to the stream and follow the acknowledged ones. Take them too, until the stream is quiet.
    while let Some(event) = sub.next_within(Duration::from_millis(300)).await {
        let data: Value = serde_json::from_str(&event.data).unwrap();
        seen.push((event.id, data["documentId"].as_str().unwrap().to_string()));
    }
    seen
}

/// One sample of the server's `/metrics`, 0 when absent.
async fn metric(base: &str, name: &str) -> f64 {
    let Ok(mut res) = client().get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    let body = res.body().await.unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Kills the server with `publishers` concurrent publishers spread over `streams` streams,
/// once 300 publishes are acknowledged and at least `overlapped` group commits were written
/// while a sync was in flight; then checks that a restarted server has every acknowledged
/// event, under its cursor, in order, and resumes and numbers on from there.
async fn killed_under_load(publishers: usize, streams: usize, overlapped: f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(dir.path());
    let base = format!("http://{}", srv.addr);
    let streams: Vec<String> = (0..streams).map(|s| format!("durable-{s}")).collect();
    let mut markers = Vec::new();
    for stream in &streams {
        let doc = uuid::Uuid::new_v4().to_string();
        markers.push(
            publish(&base, stream, &doc)
                .await
                .expect("marker published"),
        );
    }

    // Each publisher records what was acknowledged, as (stream, id, document).
    let acked: Rc<RefCell<Vec<(usize, String, String)>>> = Rc::default();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (acked, base) = (acked.clone(), base.clone());
            let (s, stream) = (p % streams.len(), streams[p % streams.len()].clone());
            actix_rt::spawn(async move {
                loop {
                    let doc = uuid::Uuid::new_v4().to_string();
                    match publish(&base, &stream, &doc).await {
                        Some(id) => acked.borrow_mut().push((s, id, doc)),
                        None => break,
                    }
                }
            })
        })
        .collect();
    wait_for("300 acknowledged publishes and overlapping syncs", || {
        let (n, base) = (acked.borrow().len(), base.clone());
        async move {
            let written = metric(&base, "herald_store_overlapped_commits_total").await;
            (n >= 300 && written >= overlapped).then_some(())
        }
    })
    .await;
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    for t in tasks {
        t.await.unwrap();
    }
    let _ = srv.child.wait();
    let acked = acked.take();

    let srv = start(dir.path());
    let base = format!("http://{}", srv.addr);
    for (s, stream) in streams.iter().enumerate() {
        let acked: Vec<_> = acked.iter().filter(|a| a.0 == s).collect();
        let after_marker = read_after(&base, stream, &markers[s], |seen| {
            acked.iter().all(|a| seen.iter().any(|s| s.0 == a.1))
        })
        .await;
        // Same cursors and documents, in cursor order.
        for (_, id, doc) in &acked {
            let found = after_marker.iter().find(|s| &s.0 == id).unwrap();
            assert_eq!(
                &found.1, doc,
                "cursor {id} names the same event after the restart"
            );
        }
        let positions: Vec<_> = after_marker
            .iter()
            .map(|(id, _)| herald::event::Position::from_cursor(id).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
        if s > 0 || acked.is_empty() {
            continue;
        }

        // Resuming from a pre-crash cursor in the middle gives exactly the later events.
        let middle = &acked[acked.len() / 2].1;
        let expected: Vec<_> = after_marker
            .iter()
            .skip_while(|(id, _)| id != middle)
            .skip(1)
            .cloned()
            .collect();
        let resumed = read_after(&base, stream, middle, |seen| seen.len() >= expected.len()).await;
        // (read_after also waited for quiet, so nothing beyond `expected` arrived either.)
        assert_eq!(resumed, expected);

        // And the restarted server keeps numbering after the old events.
        let doc = uuid::Uuid::new_v4().to_string();
        let next = publish(&base, stream, &doc).await.unwrap();
        let last = herald::event::Position::from_cursor(&after_marker.last().unwrap().0).unwrap();
        assert!(herald::event::Position::from_cursor(&next).unwrap() > last);
    }
}

#[actix_rt::test]
async fn sigkill_mid_stream_loses_no_acknowledged_event() {
    killed_under_load(8, 1, 0.0).await;
}

/// 64 publishers keep the writer committing while syncs run (the metric says so before the
/// kill), so the kill lands with groups written and not yet synced, or synced and not yet
/// acknowledged.
#[actix_rt::test]
async fn sigkill_while_syncs_overlap_commits_loses_no_acknowledged_event() {
    killed_under_load(64, 8, 20.0).await;
}

async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = client().request(method.parse().unwrap(), format!("{base}{path}"));
    let mut res = match body {
        Some(body) => req.send_json(&body).await,
        None => req.send().await,
    }
    .expect("request");
    let bytes = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Waits until the attempt log of subscription `id` shows `n` successful deliveries.
async fn succeeded(base: &str, id: &str, n: usize) {
    let path = format!("/dashboard/v1/notifications/{id}/deliveries");
    wait_for(&format!("{n} deliveries to {id} to succeed"), || {
        let path = path.clone();
        async move {
            let (code, log) = call(base, "GET", &path, None).await;
            assert_eq!(code, 200, "{log}");
            let ok = log
                .as_array()?
                .iter()
                .filter(|a| a["outcome"] == "succeeded")
                .count();
            (ok == n).then_some(())
        }
    })
    .await;
}

#[actix_rt::test]
async fn webhook_deliveries_survive_sigkill_with_their_ids() {
    let receiver = crate::dashboard::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let schedule = vec!["100ms"; 200].join(",");
    let args = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--jwt-secret",
        SECRET,
        "--publisher-key",
        PUBLISHER_KEY,
        "--webhook-allow-private",
        "--webhook-retry-schedule",
        schedule.as_str(),
    ];
    let mut srv = serve(&args);
    let base = format!("http://{}", srv.addr);
    let subscribe =
        |path: &str| json!({"url": receiver.url(path), "country": "", "event": "REGISTER"});
    let (code, failing) = call(
        &base,
        "POST",
        "/dashboard/v1/notifications",
        Some(subscribe("/recover")),
    )
    .await;
    assert_eq!(code, 201, "{failing}");
    let (code, done) = call(
        &base,
        "POST",
        "/dashboard/v1/notifications",
        Some(subscribe("/ok-done")),
    )
    .await;
    assert_eq!(code, 201, "{done}");
    for (country, iso) in [("Norway", "NO"), ("Sweden", "SE"), ("Denmark", "DK")] {
        let body = json!({"country": country, "isoCode": iso, "features": {}});
        let (code, json) = call(&base, "POST", "/dashboard/v1/registrations", Some(body)).await;
        assert_eq!(code, 201, "{json}");
    }
    // Three completed deliveries, and three failing ones that have been tried at least once.
    receiver.wait_for("/ok-done", 3).await;
    // Received is not yet stored: a delivery whose success was not durable when the server
    // died is sent again (at least once). So wait until the dispatcher has recorded all three,
    // then for a publish acknowledged after that: the store commits in order, so the three
    // outcomes are durable too.
    succeeded(&base, done["id"].as_str().unwrap(), 3).await;
    let barrier = uuid::Uuid::new_v4().to_string();
    assert!(
        publish(&base, "durable", &barrier).await.is_some(),
        "a durable publish"
    );
    let ids_of = |path: &str| {
        let mut ids: Vec<String> = receiver
            .received(path)
            .iter()
            .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let before = wait_for("three failing deliveries tried", || {
        let ids = ids_of("/recover");
        async move { (ids.len() == 3).then_some(ids) }
    })
    .await;

    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let _ = srv.child.wait();
    receiver.recover();
    let srv = serve(&args);
    let base = format!("http://{}", srv.addr);

    // The pending deliveries resume with the ids they had, and all succeed.
    succeeded(&base, failing["id"].as_str().unwrap(), 3).await;
    assert_eq!(
        ids_of("/recover"),
        before,
        "same webhook-ids, no new deliveries"
    );
    assert_eq!(
        receiver.received("/ok-done").len(),
        3,
        "completed ones are not sent again"
    );

    // Registrations and subscriptions are back too.
    let (_, registrations) = call(&base, "GET", "/dashboard/v1/registrations", None).await;
    assert_eq!(
        registrations.as_array().unwrap().len(),
        3,
        "{registrations}"
    );
    let (_, subscriptions) = call(&base, "GET", "/dashboard/v1/notifications", None).await;
    assert_eq!(
        subscriptions.as_array().unwrap().len(),
        2,
        "{subscriptions}"
    );
}

#[actix_rt::test]
async fn a_full_disk_fails_publishes_with_503_and_reads_go_on() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = crate::process::herald();
    // No file of the process may grow past 1 MiB: writes beyond fail as on a full disk.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let srv = crate::process::serve_with(
        cmd,
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--jwt-secret",
            SECRET,
            "--publisher-key",
            PUBLISHER_KEY,
        ],
    );
    let base = format!("http://{}", srv.addr);
    let mut accepted = publish(&base, "durable", &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap();

    // Batches of 100 until the store refuses one.
    let mut refused = None;
    for _ in 0..2000 {
        let batch: Vec<Value> = (0..100)
            .map(|_| json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"}))
            .collect();
        let mut res = client()
            .post(format!("{base}/events/client/durable"))
            .bearer_auth(PUBLISHER_KEY)
            .send_json(&batch)
            .await
            .unwrap();
        let json: Value = res.json().await.unwrap();
        if res.status() != StatusCode::ACCEPTED {
            refused = Some((res.status(), json));
            break;
        }
        accepted = json["ids"][0].as_str().unwrap().to_string();
    }
    let (status, body) = refused.expect("the store filled up");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("store"), "{body}");

    // Reads go on: health, and a resume from the last accepted batch.
    let health = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let req = client()
        .get(format!("{base}/events/client"))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("Last-Event-ID", accepted.as_str()))
        .bearer_auth(token("durable", &[]));
    let mut sub = SseClient::open(req).await;
    assert_eq!(sub.expect_event().await.event, "message");
}
