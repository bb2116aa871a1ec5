//! HTTPS and HTTP/2 (`--tls-cert`, `--tls-key`; h2c with prior knowledge): every face over h2
//! and over HTTP/1.1 with TLS, WebSocket over `wss://`, a certificate swapped under open
//! streams, and refusals. The certificates come from a test CA made by each test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use awc::http::{StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};

use crate::common::*;
use crate::process;

/// A test CA, and a certificate it issued for 127.0.0.1 and localhost in `cert.pem` and
/// `key.pem` of a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca: String,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = issue(dir.path());
        Self { dir, ca }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// A new CA and a certificate from it, written over the files; the new CA.
    pub fn renew(&mut self) -> String {
        self.ca = issue(self.dir.path());
        self.ca.clone()
    }
}

/// Makes a CA and a certificate it signed, writes the certificate and its key into `dir`,
/// and returns the CA's certificate.
fn issue(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Herald test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    // Written beside and renamed over, as a renewal tool does, so the server never reads a
    // half-written file.
    for (name, pem) in [("cert.pem", leaf.pem()), ("key.pem", key.serialize_pem())] {
        let part = dir.join(format!("{name}.part"));
        std::fs::write(&part, pem).unwrap();
        std::fs::rename(&part, dir.join(name)).unwrap();
    }
    ca_cert.pem()
}

pub fn client_config(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An HTTPS client that trusts `ca` and speaks `version` (HTTP/2 is offered by ALPN, and
/// taken if the server agrees).
pub fn https_client(ca: &str, version: Version) -> awc::Client {
    let alpn: &[&[u8]] = if version == Version::HTTP_2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(client_config(ca, alpn)))
        .timeout(Duration::from_secs(30))
        .finish()
}

async fn tls_server(pki: &TestPki) -> TestServer {
    let (cert, key) = (pki.cert(), pki.key());
    TestServer::start_with(|c| {
        c.tls = Some(herald::config::TlsFiles { cert, key });
    })
    .await
}

fn https(srv: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", srv.addr.port())
}

/// Asserts the answer came over `version`; its body as JSON.
async fn json_over(
    res: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
        >,
        awc::error::SendRequestError,
    >,
    version: Version,
    status: StatusCode,
) -> Value {
    let mut res = res.expect("request");
    assert_eq!(res.version(), version);
    let body = res.body().await.expect("body");
    assert_eq!(res.status(), status, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

/// Every face over TLS, once over HTTP/2 and once over HTTP/1.1: SSE subscribe and publish,
/// the long-poll, the dashboard, the operator endpoints, and refusals in the face's shape.
#[actix_rt::test]
async fn every_face_answers_over_h2_and_over_http1_with_tls() {
    let pki = TestPki::new();
    let srv = tls_server(&pki).await;
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let http = https_client(&pki.ca, version);
        let sub = if version == Version::HTTP_2 {
            "tls-h2"
        } else {
            "tls-h1"
        };

        // Document status events: a subscription, then a publish it receives.
        let mut events = SseClient::open(
            http.get(https(&srv, "/events/client"))
                .insert_header(("Accept", "text/event-stream"))
                .bearer_auth(token(sub, &[])),
        )
        .await;
        assert_eq!(events.status, StatusCode::OK);
        assert_eq!(events.content_type, "text/event-stream");
        let document = uuid::Uuid::new_v4();
        let published = json_over(
            http.post(https(&srv, &format!("/events/client/{sub}")))
                .bearer_auth(PUBLISHER_KEY)
                .send_json(&json!({"documentId": document, "status": "COMPLETED"}))
                .await,
            version,
            StatusCode::ACCEPTED,
        )
        .await;
        let event = events.expect_event().await;
        assert_eq!(event.id, published["ids"][0].as_str().unwrap());
        assert!(event.data.contains(&document.to_string()), "{}", event.data);

        // Instance notifications: a long-poll's cursor, a notification created after it,
        // and the long-poll from that cursor.
        let instance = uuid::Uuid::new_v4().to_string();
        let base = format!("/notification/v1/instance/{instance}");
        let read = token(&instance, &["notification:instance:self:read"]);
        let poll = |query: String| {
            let url = https(&srv, &format!("{base}/stream/notification/lp?{query}"));
            http.get(url).bearer_auth(&read).send()
        };
        let head = json_over(poll("deadline=0".into()).await, version, StatusCode::OK).await;
        let cursor = head["cursor"].as_str().expect("a cursor").to_string();
        json_over(
            http.post(https(&srv, &format!("{base}/notification")))
                .bearer_auth(PUBLISHER_KEY)
                .send_json(&json!({"notifications": [{"message": "over TLS"}]}))
                .await,
            version,
            StatusCode::OK,
        )
        .await;
        let page = poll(format!("exclude_before={cursor}")).await;
        let page = json_over(page, version, StatusCode::OK).await;
        assert_eq!(page["notifications"][0]["message"], "over TLS", "{page}");

        // The dashboard: a registration made and read back.
        let made = json_over(
            http.post(https(&srv, "/dashboard/v1/registrations"))
                .send_json(&json!({"country": "", "isoCode": "NO", "features": {}}))
                .await,
            version,
            StatusCode::CREATED,
        )
        .await;
        let id = made["id"].as_str().expect("an id");
        json_over(
            http.get(https(&srv, &format!("/dashboard/v1/dashboards/{id}")))
                .send()
                .await,
            version,
            StatusCode::OK,
        )
        .await;

        // Operator endpoints.
        let health = json_over(
            http.get(https(&srv, "/health")).send().await,
            version,
            StatusCode::OK,
        )
        .await;
        assert_eq!(health["status"], "ok");
        let mut metrics = http.get(https(&srv, "/metrics")).send().await.unwrap();
        assert_eq!(
            (metrics.version(), metrics.status()),
            (version, StatusCode::OK)
        );
        assert!(!metrics.body().await.unwrap().is_empty());

        // A refusal keeps its face's shape: a publish without a credential.
        let refused = json_over(
            http.post(https(&srv, &format!("/events/client/{sub}")))
                .send_json(&json!({"documentId": document, "status": "COMPLETED"}))
                .await,
            version,
            StatusCode::UNAUTHORIZED,
        )
        .await;
        assert!(refused["error"].is_string(), "{refused}");
    }
}

/// A WebSocket session over `wss://` (HTTP/1.1 under TLS): announced, then an event pushed
/// over HTTPS arrives.
#[actix_rt::test]
async fn websocket_sessions_run_over_wss() {
    let pki = TestPki::new();
    let srv = tls_server(&pki).await;
    let http = https_client(&pki.ca, Version::HTTP_11);
    let root = https(&srv, "");
    let mut ws = crate::access::WsClient::connect_with(&http, &root, &[]).await;
    let announcement =
        json!({"access_id": "tls-ws", "timestamp": 0, "token": token("tls-ws", &[])});
    ws.send_text(&announcement.to_string()).await;
    wait_for("the session to follow its stream", || async {
        (srv.subscribers("access:tls-ws").await == 1).then_some(())
    })
    .await;
    let event = json!({"accessid": "tls-ws", "created_at": 1, "payload": "over wss"});
    let pushed = json_over(
        http.post(https(&srv, "/push_events"))
            .bearer_auth(PUBLISHER_KEY)
            .send_json(&json!([event]))
            .await,
        Version::HTTP_11,
        StatusCode::OK,
    )
    .await;
    assert_eq!(pushed, json!(true));
    assert_eq!(ws.next_events().await, vec![event]);
}

/// A plaintext HTTP/2 connection with prior knowledge (h2c), as proxies open upstream.
async fn h2c(srv: &TestServer) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("an HTTP/2 handshake");
    actix_rt::spawn(connection);
    send
}

fn h2_request(srv: &TestServer, method: &str, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", srv.addr))
}

/// `POST /events/client/h2c` with `body`, carrying the publisher key in `keys` `Authorization`
/// headers.
fn h2_publish(srv: &TestServer, keys: usize, body: Bytes) -> hyper::Request<Full<Bytes>> {
    let mut request =
        h2_request(srv, "POST", "/events/client/h2c").header("content-type", "application/json");
    for _ in 0..keys {
        request = request.header("authorization", format!("Bearer {PUBLISHER_KEY}"));
    }
    request.body(Full::new(body)).unwrap()
}

/// Ten SSE subscriptions and a publish multiplexed on one h2c connection: every stream gets
/// the event. And a head refused as on HTTP/1.1 (two `Authorization`s), in the face's shape.
#[actix_rt::test]
async fn h2c_multiplexes_subscriptions_and_publishes_on_one_connection() {
    let srv = TestServer::start().await;
    let send = h2c(&srv).await;
    let subscribe = || {
        let mut send = send.clone();
        let request = h2_request(&srv, "GET", "/events/client")
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {}", token("h2c", &[])))
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move { send.send_request(request).await.expect("a subscription") }
    };
    let mut streams = Vec::new();
    for _ in 0..10 {
        let res = subscribe().await;
        assert_eq!(
            (res.version(), res.status()),
            (hyper::Version::HTTP_2, hyper::StatusCode::OK)
        );
        streams.push(res.into_body());
    }
    wait_for("ten subscribers", || async {
        (srv.subscribers("client:h2c").await == 10).then_some(())
    })
    .await;
    let document = uuid::Uuid::new_v4().to_string();
    let body = json!({"documentId": document, "status": "PENDING"}).to_string();
    let published = send.clone().send_request(h2_publish(&srv, 1, body.into()));
    let published = published.await.unwrap();
    assert_eq!(published.status(), hyper::StatusCode::ACCEPTED);
    for mut stream in streams {
        let mut text = String::new();
        while !text.contains(&document) {
            let frame = tokio::time::timeout(DEADLINE, stream.frame())
                .await
                .expect("the event within the deadline")
                .expect("the stream stays open")
                .unwrap();
            if let Some(data) = frame.data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
            }
        }
    }

    let refused = send.clone().send_request(h2_publish(&srv, 2, "{}".into()));
    let refused = refused.await.unwrap();
    assert_eq!(refused.status(), hyper::StatusCode::BAD_REQUEST);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["error"].is_string(), "{body}");

    // The connection still serves.
    let health = send
        .clone()
        .send_request(
            h2_request(&srv, "GET", "/health")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), hyper::StatusCode::OK);
}

/// The certificate is swapped and SIGHUP sent while streams are open over HTTP/2 and HTTP/1.1:
/// they stay open and get the next event, and new connections get the new certificate.
#[actix_rt::test]
async fn a_certificate_read_again_on_sighup_keeps_open_streams() {
    let mut pki = TestPki::new();
    let (cert, key) = (pki.cert(), pki.key());
    let served = process::serve(&[
        "--memory",
        "--jwt-secret",
        SECRET,
        "--publisher-key",
        PUBLISHER_KEY,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let root = format!("https://{}", served.addr);
    let old_ca = pki.ca.clone();
    let mut streams = Vec::new();
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let stream = SseClient::open(
            https_client(&old_ca, version)
                .get(format!("{root}/events/client"))
                .bearer_auth(token("renewed", &[])),
        )
        .await;
        assert_eq!(stream.status, StatusCode::OK);
        streams.push(stream);
    }

    let new_ca = pki.renew();
    let pid = served.child.id() as i32;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let health = format!("{root}/health");
    wait_for("new connections to get the new certificate", || {
        let health = health.clone();
        let client = https_client(&new_ca, Version::HTTP_2);
        async move { client.get(health).send().await.ok().map(|_| ()) }
    })
    .await;
    // The old certificate is no longer what a handshake gets.
    let old = https_client(&old_ca, Version::HTTP_2)
        .get(&health)
        .send()
        .await;
    assert!(old.is_err(), "a handshake trusting only the old CA fails");

    let new = https_client(&new_ca, Version::HTTP_2);
    let document = uuid::Uuid::new_v4().to_string();
    let mut res = new
        .post(format!("{root}/events/client/renewed"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!({"documentId": document, "status": "PENDING"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "{:?}", res.body().await);
    for mut stream in streams {
        assert!(stream.expect_event().await.data.contains(&document));
    }
    let log = served.log.lock().unwrap().join("\n");
    assert!(log.contains("TLS certificate read again"), "{log}");
}

/// A certificate that cannot be served refuses the start in one line naming the file.
#[test]
fn a_missing_or_mismatched_certificate_refuses_the_start() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let missing = pki.cert().with_file_name("missing.pem");
    for (cert, key, names) in [
        (&missing, &pki.key(), &missing),
        (&pki.cert(), &other.key(), &other.key()),
    ] {
        let line = process::refusal(
            process::herald()
                .args(["serve", "--memory", "--listen", "127.0.0.1:0"])
                .args(["--jwt-secret", SECRET, "--tls-cert", cert.to_str().unwrap()])
                .args(["--tls-key", key.to_str().unwrap()]),
        );
        assert!(line.contains("cannot serve TLS"), "{line}");
        assert!(line.contains(names.to_str().unwrap()), "{line}");
    }
}

/// A client that starts a handshake and stalls is cut off after the handshake limit (10 s),
/// not held for ever.
#[actix_rt::test]
async fn a_stalled_handshake_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let pki = TestPki::new();
    let srv = tls_server(&pki).await;
    let mut raw = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    // The first bytes of a TLS record, then nothing.
    raw.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), raw.read(&mut buf))
        .await
        .expect("the connection is closed within the handshake limit");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
