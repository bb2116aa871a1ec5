//! Server-wide connection accounting for `--max-connections`: every streaming or waiting
//! subscriber (SSE, WebSocket, long-poll) holds a `Permit` for as long as it is connected.
//! Also `Requests`: the requests being answered now, which a drain lets finish before the
//! workers stop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

/// Counts connected subscribers across faces.
#[derive(Debug)]
pub struct Connections {
    /// Most subscribers at once.
    max: usize,
    /// Subscribers connected now.
    current: AtomicUsize,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            current: AtomicUsize::new(0),
        })
    }

    /// A permit for one more subscriber, or `None` at the limit.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                pool: self.clone(),
                gauge: None,
            })
    }

    /// Subscribers connected now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

/// One connected subscriber; releases its place when dropped.
#[derive(Debug)]
pub struct Permit {
    /// The pool it counts against.
    pool: Arc<Connections>,
    /// The face's connected-subscribers gauge, if the permit is counted in metrics.
    gauge: Option<Gauge>,
}

impl Permit {
    /// Counts this subscriber in a face's gauge too, for as long as the permit lives.
    pub fn tracked(mut self, gauge: Gauge) -> Self {
        gauge.inc();
        self.gauge = Some(gauge);
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.current.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// Requests (not streams) being answered now, on either path. A drain waits for none to be
/// left before it stops the workers: a worker that stops takes its Broker shard with it, and a
/// publish under way on another worker to one of that shard's streams would then fail.
#[derive(Debug, Default)]
pub struct Requests {
    current: AtomicUsize,
}

impl Requests {
    /// Counts a request until the guard is dropped.
    pub fn enter(&self) -> Busy<'_> {
        self.current.fetch_add(1, Ordering::AcqRel);
        Busy(self)
    }

    /// Requests being answered now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

/// One request being answered.
#[derive(Debug)]
pub struct Busy<'a>(&'a Requests);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_and_released() {
        let c = Connections::new(2);
        let a = c.try_acquire().unwrap();
        let _b = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_none());
        drop(a);
        assert_eq!(c.current(), 1);
        assert!(c.try_acquire().is_some());
    }
}
