//! Operator endpoints: `/metrics` parsed by a real Prometheus text parser, `/health` and its
//! probes.

use crate::common::*;

/// Scrapes `/metrics` and returns the value of one sample, by name and one label.
pub struct Scrape(pub prometheus_parse::Scrape);

impl Scrape {
    pub async fn take(srv: &TestServer) -> Self {
        Self::take_at(&srv.url("")).await
    }

    /// The metrics of the server at `root`.
    pub async fn take_at(root: &str) -> Self {
        let mut res = client()
            .get(format!("{root}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let ct = res
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let body = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
        let lines = body.lines().map(|l| Ok(l.to_string()));
        Self(prometheus_parse::Scrape::parse(lines).expect("valid exposition"))
    }

    pub fn value(&self, name: &str, label: (&str, &str)) -> f64 {
        self.value_with(name, &[label])
    }

    /// The value of the sample of `name` with all of `labels`.
    pub fn value_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a number: {other:?}"),
        }
    }

    /// The sum of every sample of `name`, whatever its labels (0 if there is none).
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is not a number: {other:?}"),
            })
            .sum()
    }
}

#[actix_rt::test]
async fn metrics_move_as_events_flow() {
    // Disconnects are noticed when a write fails, so keep-alives must flow for the last check.
    let srv =
        TestServer::start_with(|c| c.sse_keepalive = std::time::Duration::from_millis(50)).await;
    let before = Scrape::take(&srv).await;
    assert_eq!(before.value("herald_subscribers", ("face", "sse")), 0.0);

    let t = token("mia", &[]);
    let mut a = srv.subscribe(&t, &[]).await;
    let mut b = srv.subscribe(&t, &[]).await;
    for _ in 0..3 {
        srv.publish_status("mia", "PENDING").await;
    }
    for _ in 0..3 {
        a.expect_event().await;
        b.expect_event().await;
    }
    let _gap = srv.subscribe(&t, &[("Last-Event-ID", "garbage")]).await;

    let after = Scrape::take(&srv).await;
    let delta = |name, label| after.value(name, label) - before.value(name, label);
    assert_eq!(
        delta("herald_events_published_total", ("kind", "client")),
        3.0
    );
    assert_eq!(delta("herald_events_delivered_total", ("face", "sse")), 6.0);
    assert_eq!(delta("herald_gaps_total", ("face", "sse")), 1.0);
    assert_eq!(after.value("herald_subscribers", ("face", "sse")), 3.0);
    assert_eq!(
        delta("herald_events_published_total", ("kind", "access")),
        0.0
    );

    drop((a, b));
    wait_for("subscribers to leave", || async {
        let now = Scrape::take(&srv).await;
        (now.value("herald_subscribers", ("face", "sse")) == 1.0).then_some(())
    })
    .await;
}

/// `GET root + path`: its status and JSON body.
pub async fn probe(root: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let mut res = client().get(format!("{root}{path}")).send().await.ok()?;
    Some((res.status().as_u16(), res.json().await.ok()?))
}

/// On a serving node with the SQLite store, both probes go through every Broker shard and the
/// store's writer and sync threads, and answer 200.
#[actix_rt::test]
async fn probes_answer_ok_through_the_shards_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_with(|c| {
        c.memory = false;
        c.data_dir = dir.path().to_path_buf();
    })
    .await;
    let before = Scrape::take(&srv).await;
    for path in ["/health/live", "/health/ready", "/health"] {
        let (status, body) = probe(&srv.url(""), path).await.unwrap();
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "ok"})),
            "{path}"
        );
    }
    // The two probes each made the store sync once; `/health` does not touch the store.
    let syncs = |s: &Scrape| {
        s.0.samples
            .iter()
            .find(|x| x.metric == "herald_store_sync_seconds_count")
            .map(|x| match x.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
                _ => panic!("{:?}", x.value),
            })
            .unwrap()
    };
    assert_eq!(syncs(&Scrape::take(&srv).await) - syncs(&before), 2.0);
}
