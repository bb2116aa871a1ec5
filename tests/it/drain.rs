//! Graceful drain while events keep being published: every face sees its documented ending,
//! and nothing acknowledged is lost (checked by restarting on the same data dir).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;

use crate::access::WsClient;
use crate::common::*;
use crate::instances::{instance, poll, reader};

#[actix_rt::test]
async fn every_face_ends_cleanly_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let configure = move |c: &mut herald::Config| {
        c.memory = false;
        c.data_dir = data_dir.clone();
        c.dev = true;
        c.shutdown_timeout = Duration::from_secs(5);
    };
    let mut srv = TestServer::start_with(configure.clone()).await;
    let root = srv.url("");
    let t = token("drain", &[]);
    let mut sse = srv.subscribe(&t, &[]).await;
    let mut ws = WsClient::announce(&srv, "drain", 0).await;
    let id = instance();
    let waiting = {
        let (root, id) = (root.clone(), id.clone());
        actix_rt::spawn(async move { poll(&root, &id, "deadline=60", &reader(&id)).await })
    };
    wait_for("the long-poll to wait", || async {
        let herald = srv.herald.as_ref().unwrap();
        let key = herald::event::StreamKey::new(herald::event::StreamKind::Instance, &id);
        (herald.subscribers(key).await == 1).then_some(())
    })
    .await;

    // A publisher that keeps going until the server stops answering.
    let acked: Rc<RefCell<Vec<String>>> = Rc::default();
    let publisher = {
        let (acked, url) = (acked.clone(), srv.url("/events/client/drain"));
        actix_rt::spawn(async move {
            loop {
                let body = json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"});
                let Ok(mut res) = client().post(&url).send_json(&body).await else {
                    break;
                };
                if res.status() != 202 {
                    break;
                }
                let json: serde_json::Value = res.json().await.unwrap();
                acked
                    .borrow_mut()
                    .push(json["ids"][0].as_str().unwrap().to_string());
            }
        })
    };
    wait_for("some publishes", || {
        let n = acked.borrow().len();
        async move { (n >= 50).then_some(()) }
    })
    .await;
    srv.herald.take().unwrap().shutdown().await;
    publisher.await.unwrap();

    // SSE: the stream ends. WebSocket: 1001. Long-poll: answered at once with a cursor.
    while sse.next().await.is_some() {}
    let closed = loop {
        match ws.next_frame().await {
            Some(awc::ws::Frame::Close(reason)) => break reason.unwrap(),
            Some(_) => continue,
            None => panic!("the WebSocket ended without a close frame"),
        }
    };
    assert_eq!(u16::from(closed.code), 1001);
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["notifications"], json!([]));
    assert!(answer.json["cursor"].is_string(), "{}", answer.json);

    // Every acknowledged event is there after a restart, in order.
    let acked = acked.take();
    let srv = TestServer::start_with(configure).await;
    let mut resumed = srv.subscribe(&t, &[("Last-Event-ID", &acked[0])]).await;
    for id in &acked[1..] {
        assert_eq!(&resumed.expect_event().await.id, id);
    }
}
