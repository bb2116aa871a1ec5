//! The demo page in headless Chromium (Debian's `chromium` and `chromium-driver`), driven
//! through WebDriver like a person would: click, type, and see the result on the page.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::common::*;

/// One browser at a time: four Chromiums starting at once beside the rest of the suite on a
/// two-core CI machine took longer than any fair deadline to open a session.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

/// How long Chromium may take to start and open a session on a loaded machine.
const BROWSER_START: Duration = Duration::from_secs(60);

/// A chromedriver process and a browser session on it; both end when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    _turn: SemaphorePermit<'static>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: Chromium outlives a chromedriver killed alone, and every
        // test left a browser running behind it.
        let group = self.driver.id() as libc::pid_t;
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

impl Browser {
    pub async fn start() -> Self {
        Self::start_trusting_any_certificate(false).await
    }

    /// A browser that takes any certificate (the tests' CA is new in every test) when
    /// `insecure`.
    pub async fn start_trusting_any_certificate(insecure: bool) -> Self {
        let turn = ONE_AT_A_TIME
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // A group of its own, which the browser it starts joins: `drop` ends them together.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver; see .ci/run)");
        let profile = tempfile::tempdir().unwrap();
        // Flags for a root, offline sandbox: no setuid sandbox, no background networking.
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let mut caps = caps.as_object().unwrap().clone();
        caps.insert("acceptInsecureCerts".into(), insecure.into());
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for_within(BROWSER_START, "chromedriver to accept a session", || {
            let (caps, connector, url) = (caps.clone(), connector.clone(), url.clone());
            async move {
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        Self {
            client,
            driver,
            _profile: profile,
            _turn: turn,
        }
    }

    /// Waits for an element to appear.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(DEADLINE)
            .every(Duration::from_millis(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
    }

    /// Waits until an element's text satisfies `check`.
    pub async fn wait_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        wait_for(css, || async {
            let text = self.find(css).await.text().await.ok()?;
            check(&text).then_some(text)
        })
        .await
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }
}

#[actix_rt::test]
async fn demo_page_publishes_and_shows_sse_events() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let browser = Browser::start().await;
    browser.client.goto(&srv.url("/")).await.unwrap();

    browser.fill("#sse-sub", "browser-user").await;
    browser.find("#sse-connect").await.click().await.unwrap();
    browser
        .wait_text("#sse-status", |t| t.contains("connected as browser-user"))
        .await;

    let doc = browser
        .find("#pub-doc")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    browser
        .find("#pub-status option[value=COMPLETED]")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#pub-btn").await.click().await.unwrap();
    browser
        .wait_text("#pub-result", |t| t.starts_with("202"))
        .await;

    let item = browser
        .find(&format!("#sse-events li[data-document-id='{doc}']"))
        .await;
    assert_eq!(
        item.attr("data-status").await.unwrap().as_deref(),
        Some("COMPLETED")
    );

    // An event published by another client (curl, a producer) shows up too.
    srv.publish_status("browser-user", "ERROR").await;
    browser
        .wait_text("#sse-events li:first-child", |t| t.starts_with("ERROR"))
        .await;

    // The metrics strip follows /metrics: two events published, one SSE subscriber.
    let count = |t: &str| t.parse::<u64>().unwrap_or(0);
    browser.wait_text("#m-published", |t| count(t) >= 2).await;
    browser.wait_text("#m-sse", |t| count(t) == 1).await;
    browser.wait_text("#m-delivered", |t| count(t) >= 2).await;
    browser.client.clone().close().await.unwrap();
}

#[actix_rt::test]
async fn demo_page_announces_pushes_and_drops_over_websocket() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let browser = Browser::start().await;
    browser.client.goto(&srv.url("/")).await.unwrap();

    browser.fill("#ws-access", "browser-ws").await;
    browser.fill("#ws-ts", "100").await;
    browser.find("#ws-connect").await.click().await.unwrap();
    browser
        .wait_text("#ws-status", |t| t.contains("announced as browser-ws"))
        .await;

    // Pushed from the panel; even if it beats the subscription, the replay brings it.
    browser.fill("#ws-created", "150").await;
    browser.fill("#ws-payload", r#"{"from":"page"}"#).await;
    browser.find("#ws-push").await.click().await.unwrap();
    browser
        .wait_text("#ws-result", |t| t == "push: 200 true")
        .await;
    let item = browser.find("#ws-events li[data-created-at='150']").await;
    assert!(item.text().await.unwrap().contains(r#"{"from":"page"}"#));

    // Pushed by a producer: one too old for the announced timestamp, one in range.
    let res = client()
        .post(srv.url("/push_events"))
        .send_json(&json!([
            {"accessid": "browser-ws", "created_at": 99, "payload": "too old"},
            {"accessid": "browser-ws", "created_at": 200, "payload": "from curl"}
        ]))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    browser
        .wait_text("#ws-events li:first-child", |t| t.contains("from curl"))
        .await;
    let events = browser.find("#ws-events").await.text().await.unwrap();
    assert!(!events.contains("too old"), "{events}");

    browser.find("#ws-clients").await.click().await.unwrap();
    browser
        .wait_text("#ws-result", |t| t == r#"clients: ["browser-ws"]"#)
        .await;
    browser.find("#ws-drop").await.click().await.unwrap();
    browser
        .wait_text("#ws-status", |t| t == "closed 1000 dropped")
        .await;
    browser.client.clone().close().await.unwrap();
}

#[actix_rt::test]
async fn demo_page_long_polls_instance_notifications_with_the_cursor() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let browser = Browser::start().await;
    browser.client.goto(&srv.url("/")).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    browser.fill("#lp-instance", &id).await;
    browser.find("#lp-start").await.click().await.unwrap();
    browser
        .wait_text("#lp-status", |t| t.starts_with("polling"))
        .await;
    // The page's first poll is waiting in the server.
    wait_for("the page's poll", || async {
        (srv.subscribers(&format!("instance:{id}")).await == 1).then_some(())
    })
    .await;

    browser.fill("#lp-message", "from the page").await;
    browser.find("#lp-create").await.click().await.unwrap();
    browser
        .wait_text("#lp-result", |t| t.starts_with("200"))
        .await;
    browser
        .find("#lp-events li[data-message='from the page']")
        .await;

    // The loop polls again from the cursor it got: a notification created elsewhere arrives
    // exactly once, and the cursor shown is its id.
    let last =
        crate::instances::create_messages(&srv.url(""), &id, &["from curl".to_string()]).await;
    browser
        .find("#lp-events li[data-message='from curl']")
        .await;
    browser.wait_text("#lp-cursor", |t| t == last).await;
    let items = browser
        .client
        .find_all(Locator::Css("#lp-events li"))
        .await
        .unwrap();
    assert_eq!(items.len(), 2, "each notification is shown once");
    browser.find("#lp-stop").await.click().await.unwrap();
    browser.wait_text("#lp-status", |t| t == "stopped").await;
    browser.client.clone().close().await.unwrap();
}

#[actix_rt::test]
async fn demo_page_registers_and_shows_signed_webhook_deliveries() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let browser = Browser::start().await;
    browser.client.goto(&srv.url("/")).await.unwrap();

    // Subscribe the built-in sink (the URL field is pre-filled with it) to REGISTER in NO.
    browser.fill("#wh-country", "NO").await;
    browser
        .find("#wh-event option[value=REGISTER]")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#wh-subscribe").await.click().await.unwrap();
    browser
        .wait_text("#wh-result", |t| {
            t.starts_with("201") && t.contains("whsec_")
        })
        .await;
    // And to DELETE in every country.
    browser.fill("#wh-country", "").await;
    browser
        .find("#wh-event option[value=DELETE]")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#wh-subscribe").await.click().await.unwrap();
    browser
        .wait_text("#wh-list", |t| t.contains("DELETE *"))
        .await;

    browser.fill("#reg-country", "").await;
    browser.fill("#reg-iso", "NO").await;
    browser.find("#reg-create").await.click().await.unwrap();
    browser
        .wait_text("#reg-result", |t| t.starts_with("201"))
        .await;
    let delivered = browser
        .find("#sink-log li[data-event=REGISTER][data-country=NO]")
        .await;
    assert_eq!(
        delivered.attr("data-verified").await.unwrap().as_deref(),
        Some("true")
    );
    browser
        .wait_text("#wh-list", |t| {
            t.contains("REGISTER NO") && t.contains("1 attempts, last: succeeded 200")
        })
        .await;

    // Delete the registration from its row: the DELETE subscription hears about it.
    browser
        .wait_text("#reg-list", |t| t.contains("NO Norway"))
        .await;
    let delete = browser.find("#reg-list li button:nth-of-type(3)").await;
    assert_eq!(delete.text().await.unwrap(), "Delete");
    delete.click().await.unwrap();
    browser
        .wait_text("#reg-result", |t| t.starts_with("DELETE 204"))
        .await;
    browser
        .find("#sink-log li[data-event=DELETE][data-country=NO][data-verified=true]")
        .await;
    browser.client.clone().close().await.unwrap();
}

#[actix_rt::test]
async fn demo_page_resumes_an_expired_stream_and_refreshes_its_websocket_token() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let browser = Browser::start().await;
    browser.client.goto(&srv.url("/")).await.unwrap();

    // SSE with 2 s tokens: the stream ends at expiry and the page resumes under a new token,
    // after the last event it saw.
    browser.fill("#sse-sub", "expiring").await;
    browser.fill("#sse-ttl", "2").await;
    browser.find("#sse-connect").await.click().await.unwrap();
    browser
        .wait_text("#sse-status", |t| t.contains("connected as expiring"))
        .await;
    srv.publish_status("expiring", "PENDING").await;
    browser
        .wait_text("#sse-events li:first-child", |t| t.starts_with("PENDING"))
        .await;
    browser
        .wait_text("#sse-events", |t| t.contains("token expired; resuming"))
        .await;
    srv.publish_status("expiring", "COMPLETED").await;
    browser
        .wait_text("#sse-events li:first-child", |t| t.starts_with("COMPLETED"))
        .await;
    let log = browser.find("#sse-events").await.text().await.unwrap();
    assert_eq!(log.matches("PENDING").count(), 1, "nothing twice: {log}");

    // WebSocket with 3 s tokens, refreshed by the page at 80%: the session outlives its first
    // token and still receives.
    browser.fill("#ws-access", "refreshing").await;
    browser.fill("#ws-ts", "0").await;
    browser.fill("#ws-ttl", "3").await;
    browser.find("#ws-connect").await.click().await.unwrap();
    browser
        .wait_text("#ws-status", |t| t.contains("announced as refreshing"))
        .await;
    browser.find("#ws-events li[data-refreshed]").await;
    wait_for_within(
        Duration::from_secs(8),
        "the first token's expiry",
        || async {
            // Refreshed at least twice: past the first token's 3 s.
            let refreshed = browser
                .client
                .find_all(Locator::Css("#ws-events li[data-refreshed]"))
                .await
                .ok()?;
            (refreshed.len() >= 2).then_some(())
        },
    )
    .await;
    let res = client()
        .post(srv.url("/push_events"))
        .send_json(&json!([{"accessid": "refreshing", "created_at": 7, "payload": "later"}]))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    browser.find("#ws-events li[data-created-at='7']").await;
    let status = browser.find("#ws-status").await.text().await.unwrap();
    assert!(status.contains("announced"), "{status}");
    browser.client.clone().close().await.unwrap();
}

/// Opens `n` EventSources to `/events/client` from the page open in `browser`; each counts
/// the events it gets into `window.received`.
async fn open_event_sources(browser: &Browser, n: usize, access_token: &str) {
    browser
        .client
        .execute(
            "window.received = 0;
             for (let i = 0; i < arguments[0]; i++) {
               const es = new EventSource('/events/client?access_token=' + arguments[1]);
               es.onmessage = () => { window.received += 1; };
             }",
            vec![json!(n), json!(access_token)],
        )
        .await
        .unwrap();
}

async fn received(browser: &Browser) -> u64 {
    let value = browser
        .client
        .execute("return window.received;", vec![])
        .await
        .unwrap();
    value.as_u64().unwrap_or(0)
}

/// Over HTTPS the page gets HTTP/2, and ten EventSources to one origin all receive their
/// event: they share one connection.
#[actix_rt::test]
async fn ten_event_sources_over_https_all_receive_their_event() {
    let pki = crate::tls::TestPki::new();
    let (cert, key) = (pki.cert(), pki.key());
    let srv = TestServer::start_with(|c| {
        c.dev = true;
        c.tls = Some(herald::config::TlsFiles { cert, key });
    })
    .await;
    let browser = Browser::start_trusting_any_certificate(true).await;
    let origin = format!("https://127.0.0.1:{}", srv.addr.port());
    browser.client.goto(&format!("{origin}/")).await.unwrap();
    open_event_sources(&browser, 10, &token("tabs", &[])).await;
    wait_for("ten subscribers", || async {
        (srv.subscribers("client:tabs").await == 10).then_some(())
    })
    .await;
    let http = crate::tls::https_client(&pki.ca, awc::http::Version::HTTP_2);
    let res = http
        .post(format!("{origin}/events/client/tabs"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!({"documentId": uuid::Uuid::new_v4(), "status": "COMPLETED"}))
        .await
        .unwrap();
    assert_eq!(res.status(), awc::http::StatusCode::ACCEPTED);
    wait_for("every EventSource to get the event", || async {
        (received(&browser).await == 10).then_some(())
    })
    .await;
}

/// The same page over plain HTTP/1.1: the browser opens at most six connections to one
/// origin, so only six of the ten EventSources are served; the others wait for a connection.
#[actix_rt::test]
async fn ten_event_sources_over_http1_are_held_to_six_connections() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let browser = Browser::start().await;
    browser.client.goto(&srv.url("/")).await.unwrap();
    open_event_sources(&browser, 10, &token("tabs", &[])).await;
    wait_for("six subscribers", || async {
        (srv.subscribers("client:tabs").await == 6).then_some(())
    })
    .await;
    srv.publish_status("tabs", "COMPLETED").await;
    wait_for("six EventSources to get the event", || async {
        (received(&browser).await == 6).then_some(())
    })
    .await;
    // The event has reached every stream the server holds: six, not ten.
    assert_eq!(srv.subscribers("client:tabs").await, 6);
    assert_eq!(received(&browser).await, 6);
}
