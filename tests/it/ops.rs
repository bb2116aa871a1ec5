//! Operator endpoints: `/metrics` parsed by a real Prometheus text parser, and `/health`.

use crate::common::*;

/// Scrapes `/metrics` and returns the value of one sample, by name and one label.
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    pub async fn take(srv: &TestServer) -> Self {
        let mut res = client().get(srv.url("/metrics")).send().await.unwrap();
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
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .unwrap_or_else(|| panic!("no sample {name}{{{}={}}}", label.0, label.1));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a number: {other:?}"),
        }
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

/// Every endpoint of API.md, as (method, OpenAPI path).
const CONTRACT: &[(&str, &str)] = &[
    ("get", "/events/client"),
    ("post", "/events/client/{client_id}"),
    (
        "get",
        "/notification/v1/instance/{instance_id}/stream/notification/lp",
    ),
    (
        "get",
        "/notification/v1/instance/{instance_id}/notification",
    ),
    (
        "post",
        "/notification/v1/instance/{instance_id}/notification",
    ),
    (
        "get",
        "/notification/v1/instance/{instance_id}/notification/{notification_id}",
    ),
    ("get", "/subscribe_to_events"),
    ("post", "/push_events"),
    ("post", "/drop_user"),
    ("get", "/clients"),
    ("post", "/dashboard/v1/registrations"),
    ("get", "/dashboard/v1/registrations"),
    ("get", "/dashboard/v1/registrations/{id}"),
    ("put", "/dashboard/v1/registrations/{id}"),
    ("patch", "/dashboard/v1/registrations/{id}"),
    ("delete", "/dashboard/v1/registrations/{id}"),
    ("get", "/dashboard/v1/dashboards/{id}"),
    ("get", "/dashboard/v1/status"),
    ("post", "/dashboard/v1/notifications"),
    ("get", "/dashboard/v1/notifications"),
    ("get", "/dashboard/v1/notifications/{id}"),
    ("delete", "/dashboard/v1/notifications/{id}"),
    ("get", "/dashboard/v1/notifications/{id}/deliveries"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/"),
];

#[actix_rt::test]
async fn openapi_documents_every_endpoint_and_each_documented_route_is_served() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let mut res = client().get(srv.url("/openapi.json")).send().await.unwrap();
    let doc: serde_json::Value = res.json().limit(1 << 22).await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in CONTRACT {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    // Each documented operation reaches a handler: the router's own 404 has an empty body and
    // a wrong method is 405; a handler's 404 (unknown id) has a JSON body.
    for (path, ops) in paths {
        let concrete = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    seg.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ops.as_object().unwrap().keys() {
            let req = client().request(method.to_uppercase().parse().unwrap(), srv.url(&concrete));
            let mut res = if method == "get" || method == "delete" {
                req.send().await
            } else {
                req.send_json(&serde_json::json!({})).await
            }
            .unwrap();
            let status = res.status().as_u16();
            let body = res.body().limit(1 << 22).await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                status != 404 || !body.is_empty(),
                "{method} {path} is not served"
            );
        }
    }
}
