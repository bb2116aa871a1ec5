//! `herald serve --config FILE` as an operator runs it: the file under variables under
//! flags, secrets read from files, `herald config check` and `herald config example`.

use awc::http::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::process::{herald, refusal, serve_with};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The status of publishing a document event whose body is `size` bytes long (padded with
/// JSON whitespace).
async fn publish(base: &str, size: usize, token: Option<&str>) -> StatusCode {
    let body = json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"}).to_string();
    let body = format!("{body:size$}");
    let mut req = client()
        .post(format!("{base}/events/client/ivy"))
        .insert_header(("Content-Type", "application/json"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send_body(body).await.unwrap().status()
}

/// `limits.max_body` from the file, `HERALD_MAX_BODY` over it, `--max-body` over both: each
/// seen by what a publish of a body between the limits gets.
#[actix_rt::test]
async fn a_variable_overrides_the_file_and_a_flag_overrides_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "herald.toml",
        "dev = true\nmemory = true\n[limits]\nmax_body = 150\n",
    );
    let file_only = serve_with(herald(), &["--config", &config]);
    let base = format!("http://{}", file_only.addr);
    assert_eq!(publish(&base, 140, None).await, StatusCode::ACCEPTED);
    assert_eq!(
        publish(&base, 200, None).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let mut env = herald();
    env.env("HERALD_MAX_BODY", "250");
    let with_env = serve_with(env, &["--config", &config]);
    let base = format!("http://{}", with_env.addr);
    assert_eq!(publish(&base, 200, None).await, StatusCode::ACCEPTED);
    assert_eq!(
        publish(&base, 300, None).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The log says why the file's key does not count.
    let said = format!("{config}: limits.max_body is overridden by HERALD_MAX_BODY");
    assert!(
        with_env
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&said)),
        "{said}"
    );

    let mut env = herald();
    env.env("HERALD_MAX_BODY", "250");
    let with_flag = serve_with(env, &["--config", &config, "--max-body", "350"]);
    let base = format!("http://{}", with_flag.addr);
    assert_eq!(publish(&base, 300, None).await, StatusCode::ACCEPTED);
    assert_eq!(
        publish(&base, 400, None).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // HERALD_CONFIG names the file as --config does.
    let mut env = herald();
    env.env("HERALD_CONFIG", &config);
    let by_variable = serve_with(env, &[]);
    let base = format!("http://{}", by_variable.addr);
    assert_eq!(
        publish(&base, 200, None).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

/// A mounted secret file signs tokens for `serve` and `token`, both reading the same file.
#[actix_rt::test]
async fn the_jwt_secret_comes_from_a_mounted_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "jwt", "a-secret-of-thirty-two-bytes-at-least\n");
    let config = write(
        &dir,
        "herald.toml",
        &format!("memory = true\n[auth]\njwt_secret_file = {secret:?}\n"),
    );
    let srv = serve_with(herald(), &["--config", &config]);
    let base = format!("http://{}", srv.addr);
    let out = herald()
        .args(["token", "--config", &config, "--sub", "ivy"])
        .args(["--permission", "publish"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        publish(&base, 100, Some(token.trim())).await,
        StatusCode::ACCEPTED
    );
    let other = herald()
        .args(["token", "--sub", "ivy", "--permission", "publish"])
        .args(["--jwt-secret", "another-secret-of-thirty-two-bytes"])
        .output()
        .unwrap();
    let other = String::from_utf8(other.stdout).unwrap();
    assert_eq!(
        publish(&base, 100, Some(other.trim())).await,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn a_bad_file_refuses_the_start_in_one_line_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "herald.toml",
        "memory = true\n[limits]\nmax_bdy = 3\n",
    );
    let line = refusal(herald().args(["serve", "--config", &config]));
    assert!(
        line.contains(&format!("{config}: unknown key `limits.max_bdy`")),
        "{line}"
    );
    let missing = format!("{}/absent.toml", dir.path().display());
    let line = refusal(herald().args(["serve", "--config", &missing]));
    assert!(
        line.contains(&format!("{missing}: cannot read it")),
        "{line}"
    );
}

/// The example, as printed, checks (given a secret); `check` starts nothing and names what is
/// wrong in one line.
#[test]
fn config_check_reads_the_file_as_serve_would_without_starting() {
    let out = herald().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    let example = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "herald.toml", &example);

    let line = refusal(herald().args(["config", "check", &path]));
    assert!(
        line.contains(&format!("{path}: no token verification key")),
        "{line}"
    );

    let out = herald()
        .env("HERALD_JWT_SECRET", "a-secret-of-thirty-two-bytes-at-least")
        .args(["config", "check", &path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{path}: ok\n")
    );

    // The TLS pair is loaded, not only named.
    let cert = write(&dir, "cert.pem", "not a certificate");
    let bad = write(
        &dir,
        "tls.toml",
        &format!("dev = true\nmemory = true\n[tls]\ncert = {cert:?}\nkey = {cert:?}\n"),
    );
    let line = refusal(herald().args(["config", "check", &bad]));
    assert!(
        line.contains(&format!("{bad}: cannot serve TLS: {cert}")),
        "{line}"
    );
}
