//! Scenario 4: memory per idle SSE connection. N subscribers, each on a stream of its own,
//! connect and stay idle; the serving process's private resident memory (RSS minus shared
//! memory) is read before and after, and for nchan the growth of its shared memory (from
//! `nchan_stub_status`) is added, since nchan keeps channels and subscribers there.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::fanout::{wait_until, CONNECT_CONCURRENCY};
use crate::http::Conn;
use crate::peer;
use crate::report::{Better, Outcome};
use crate::server::{Peer, Server};

/// How long all subscribers may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Lets the server finish what connecting started (allocator, timers) before measuring.
const SETTLE: Duration = Duration::from_secs(1);

async fn shared_memory(server: &Server) -> anyhow::Result<u64> {
    if server.peer == Peer::Nchan {
        server.nchan_shared_memory().await
    } else {
        Ok(0)
    }
}

/// Scenario `scenario` (4, or 14 over HTTPS when the server has `tls`).
pub async fn run(scenario: u8, server: &Server, n: usize) -> Outcome {
    let peer = server.peer;
    let mut out = Outcome::new(scenario, peer);
    let before = match (server.private_rss(), shared_memory(server).await) {
        (Ok(rss), Ok(shm)) => (rss, shm),
        (Err(e), _) | (_, Err(e)) => {
            out.notes.push(format!("cannot read memory: {e}"));
            return out;
        }
    };
    let connected = Rc::new(Cell::new(0usize));
    let failed: Rc<RefCell<(usize, Option<String>)>> = Rc::default();
    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let addr = server.addr;
    let tls = server.tls.clone();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (connected, failed, gate) = (connected.clone(), failed.clone(), gate.clone());
            let tls = tls.clone();
            let request = peer::sse_subscribe(peer, &format!("idle{i}"));
            tokio::task::spawn_local(async move {
                let result = async {
                    let permit = gate.acquire().await.ok();
                    let mut conn = Conn::open(addr, tls.as_ref()).await?;
                    conn.send(&request).await?;
                    let head = conn.read_head().await?;
                    if head.status != 200 {
                        return Err(std::io::Error::other(format!("status {}", head.status)));
                    }
                    drop(permit);
                    connected.set(connected.get() + 1);
                    let mut events = conn.into_events(&head);
                    while events.next_batch(|_, _| {}).await? {}
                    Err::<(), _>(std::io::Error::other("stream ended"))
                }
                .await;
                if let Err(e) = result {
                    let mut f = failed.borrow_mut();
                    f.0 += 1;
                    f.1.get_or_insert(e.to_string());
                }
            })
        })
        .collect();
    let notify = Notify::new();
    let ok = wait_until(CONNECT_TIMEOUT, &notify, || {
        connected.get() + failed.borrow().0 >= n
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let after = (server.private_rss(), shared_memory(server).await);
    let lost = failed.borrow().clone();
    for t in tasks {
        t.abort();
    }
    if !ok || lost.0 > 0 {
        out.notes.push(format!(
            "only {} of {n} subscribers connected ({} failed, first: {})",
            connected.get(),
            lost.0,
            lost.1.unwrap_or_default()
        ));
        return out;
    }
    let (rss, shm) = match after {
        (Ok(rss), Ok(shm)) => (rss, shm),
        (Err(e), _) | (_, Err(e)) => {
            out.notes.push(format!("cannot read memory: {e}"));
            return out;
        }
    };
    let per = |after: u64, before: u64| (after as f64 - before as f64) / n as f64;
    let rss_per = per(rss, before.0);
    let shm_per = per(shm, before.1);
    out.add(
        "memory per connection",
        rss_per + shm_per,
        "B",
        Better::Lower,
    );
    out.add(
        "private RSS growth per connection",
        rss_per,
        "B",
        Better::Info,
    );
    out.add(
        "shared memory growth per connection",
        shm_per,
        "B",
        Better::Info,
    );
    out.add(
        "private RSS before",
        before.0 as f64 / 1048576.0,
        "MiB",
        Better::Info,
    );
    out.add(
        "private RSS with all connected",
        rss as f64 / 1048576.0,
        "MiB",
        Better::Info,
    );
    out.add("idle connections", n as f64, "", Better::Info);
    out
}
