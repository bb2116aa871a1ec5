//! The `herald` binary as an operator runs it: start-up refusals, `herald token`, `--dev`,
//! and the graceful drain on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

pub fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_clear().env("RUST_LOG", "info");
    cmd
}

/// A `herald serve` child process; killed if the test ends early.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// Its log lines so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `herald serve` on a random port and reads the bound address from its log.
pub fn serve(args: &[&str]) -> Served {
    serve_with(herald(), args)
}

/// `serve` with a prepared command (limits, environment).
pub fn serve_with(mut cmd: Command, args: &[&str]) -> Served {
    let mut child = cmd
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("listening on ").nth(1) {
                let addr = url.split("://").nth(1).unwrap_or(url);
                let _ = tx.send(addr.trim_end_matches('/').to_string());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx.recv_timeout(DEADLINE).unwrap_or_else(|e| {
        // What the server said instead (a refusal to start, say).
        let said = log.lock().unwrap().join("\n");
        panic!("server did not announce its address ({e}); it said:\n{said}")
    });
    Served { child, addr, log }
}

/// Runs `cmd`, which must refuse to start: it fails, says why in one line, and does not
/// panic. That line.
pub fn refusal(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} started");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn refuses_to_start_without_a_verification_key() {
    let line = refusal(
        herald()
            // One line even where backtraces are asked for.
            .env("RUST_BACKTRACE", "1")
            .args(["serve", "--memory", "--listen", "127.0.0.1:0"]),
    );
    assert!(line.contains("--jwt-secret"), "{line}");
}

#[test]
fn help_lists_every_flag_with_its_variable() {
    let out = herald().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "HERALD_LISTEN",
        "--history-size",
        "[default: 1000]",
        "--dev",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[actix_rt::test]
async fn dev_mode_keeps_its_secret_and_mints_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let srv = serve(&["--dev", "--data-dir", data_dir]);
    let base = format!("http://{}", srv.addr);

    let mut res = client()
        .get(format!("{base}/dev/token?sub=ivy&permission=publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let token = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();

    // `herald token` signs with the same kept secret.
    let out = herald()
        .args(["token", "--sub", "ivy", "--data-dir", data_dir])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli_token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    for t in [&token, &cli_token] {
        let req = client()
            .get(format!("{base}/events/client"))
            .insert_header(("Accept", "text/event-stream"))
            .bearer_auth(t);
        let mut sub = SseClient::open(req).await;
        // Publishing is open in --dev: no credential.
        let doc = uuid::Uuid::new_v4();
        let res = client()
            .post(format!("{base}/events/client/ivy"))
            .send_json(&json!({"documentId": doc, "status": "PENDING"}))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let event = sub.expect_event().await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["documentId"], doc.to_string());
    }
}

#[actix_rt::test]
async fn the_access_log_has_a_line_per_request_whichever_path_serves_it() {
    let srv = serve(&["--dev", "--memory"]);
    let base = format!("http://{}", srv.addr);
    // A publish opening its connection is served on the direct path; `/health` by actix-web.
    let res = client()
        .post(format!("{base}/events/client/jo"))
        .insert_header(("User-Agent", "probe/1"))
        .send_json(&json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Tokens in the query are not logged: a stream on the direct path (its line is written
    // when it ends), and a refused one, which actix-web answers.
    let mut res = client()
        .get(format!("{base}/dev/token?sub=jo"))
        .send()
        .await
        .unwrap();
    let token = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let subscribe = |token: &str| {
        let url = format!("{base}/events/client?access_token={token}");
        async move { client().get(url).send().await.unwrap() }
    };
    let stream = subscribe(&token).await;
    assert_eq!(stream.status(), StatusCode::OK);
    drop(stream);
    let res = subscribe("not-a-token").await;
    assert_eq!(res.status(), StatusCode::OK);

    // `%a "%r" %s %b "%{Referer}i" "%{User-Agent}i" %T`, as actix-web's Logger writes it.
    let logger = "actix_web::middleware::logger] 127.0.0.1";
    let expected = [
        format!(r#"{logger} "POST /events/client/jo HTTP/1.1" 202 34 "-" "probe/1" "#),
        format!(r#"{logger} "GET /health HTTP/1.1" 200 "#),
    ];
    let redacted =
        format!(r#"{logger} "GET /events/client?access_token=[redacted] HTTP/1.1" 200 "#);
    wait_for("the access log lines", || async {
        let log = srv.log.lock().unwrap();
        let found = |line: &str| log.iter().filter(|l| l.contains(line)).count();
        (expected.iter().all(|line| found(line) == 1) && found(&redacted) == 2).then_some(())
    })
    .await;
    let log = srv.log.lock().unwrap();
    assert!(!log
        .iter()
        .any(|l| l.contains(&token) || l.contains("not-a-token")));
}

#[actix_rt::test]
async fn sigterm_drains_streams_and_exits_zero() {
    let mut srv = serve(&["--memory", "--jwt-secret", SECRET, "--drain-delay", "0s"]);
    let base = format!("http://{}", srv.addr);
    let mut res = client()
        .get(format!("{base}/events/client"))
        .insert_header(("Accept", "text/event-stream"))
        .bearer_auth(token("jack", &[]))
        .send()
        .await
        .unwrap();

    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // The stream ends cleanly, with a hint to come back soon.
    let body = actix_rt::time::timeout(DEADLINE, res.body().limit(1 << 20))
        .await
        .expect("stream ends within the deadline")
        .expect("clean end of body");
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.ends_with("retry: 1000\n\n"), "{body:?}");
    let status = wait_for("exit", || {
        let status = srv.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_corrupt_store_is_a_one_line_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.db"), vec![0x42u8; 8192]).unwrap();
    let line = refusal(
        herald()
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(line.contains("herald.db"), "{line}");
}

/// During `--drain-delay` the server still accepts: `/health` answers 503 on a new connection.
/// After it, nothing new is accepted, but a publish whose body was still arriving completes.
#[actix_rt::test]
async fn a_drain_answers_health_503_and_lets_a_publish_under_way_finish() {
    use std::io::{Read, Write};
    let mut srv = serve(&[
        "--memory",
        "--jwt-secret",
        SECRET,
        "--publisher-key",
        PUBLISHER_KEY,
        "--drain-delay",
        "3s",
    ]);
    let body = json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut publish = std::net::TcpStream::connect(&srv.addr).unwrap();
    write!(
        publish,
        "POST /events/client/late HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISHER_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("/health 503 on a new connection", || {
        let url = format!("http://{}/health", srv.addr);
        async move {
            let res = client().get(url).send().await.ok()?;
            (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        }
    })
    .await;
    // Readiness says the same; liveness does not (a restart would not help a drain).
    let root = format!("http://{}", srv.addr);
    let ready = crate::ops::probe(&root, "/health/ready").await.unwrap();
    assert_eq!(ready, (503, json!({"status": "draining"})));
    let live = crate::ops::probe(&root, "/health/live").await.unwrap();
    assert_eq!(live, (200, json!({"status": "ok"})));
    wait_for("the end of the drain delay", || {
        let paused = srv
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("no longer accepting; requests under way: 1"));
        async move { paused.then_some(()) }
    })
    .await;

    publish.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 1024];
    publish.set_read_timeout(Some(DEADLINE)).unwrap();
    while !answer.ends_with('}') {
        let n = publish.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed: {answer:?}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    drop(publish);
    let status = wait_for("exit", || {
        let status = srv.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
}
