//! Graceful shutdown in three steps: go away (keep serving, but send inbound clients elsewhere),
//! stop accepting, then reset whatever is still open.
//!
//! One [`Drain`] per proxy. Inbound HTTP connections watch [`Drain::went_away`]: from then on
//! HTTP/1 responses carry `Connection: close` and HTTP/2 connections get a GOAWAY, while the
//! listeners still accept, so callers that have not yet learned the pod is going keep being
//! served. Accept loops watch [`Drain::stopped_accepting`]; every accepted connection holds a
//! [`Tracked`] guard for its whole life, so [`Drain::idle`] knows when the last one is gone;
//! connection handlers watch [`Drain::aborted`] to close at once when the drain timeout has run
//! out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{Notify, watch};

#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Set once, to when the proxy started sending inbound clients elsewhere.
    going_away: watch::Sender<Option<Instant>>,
    /// Becomes true once: accept loops stop.
    stop_accepting: watch::Sender<bool>,
    /// Becomes true once: open connections close now.
    abort: watch::Sender<bool>,
    /// Connections accepted and not yet closed.
    active: AtomicUsize,
    /// Notified whenever `active` drops to zero.
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                going_away: watch::Sender::new(None),
                stop_accepting: watch::Sender::new(false),
                abort: watch::Sender::new(false),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Starts sending inbound clients elsewhere while still serving them (idempotent: the first
    /// call's instant is kept). Returns when it started.
    pub fn go_away(&self) -> Instant {
        let mut started = Instant::now();
        self.inner.going_away.send_if_modified(|since| match since {
            Some(earlier) => {
                started = *earlier;
                false
            }
            None => {
                *since = Some(started);
                true
            }
        });
        started
    }

    /// When [`Drain::go_away`] was first called.
    pub fn going_away_since(&self) -> Option<Instant> {
        *self.inner.going_away.borrow()
    }

    /// Resolves once [`Drain::go_away`] has been called.
    pub async fn went_away(&self) {
        let _ = self
            .inner
            .going_away
            .subscribe()
            .wait_for(Option::is_some)
            .await;
    }

    /// Tells the accept loops to stop (idempotent).
    pub fn stop_accepting(&self) {
        self.inner.stop_accepting.send_replace(true);
    }

    /// Whether [`Drain::stop_accepting`] was called.
    pub fn is_draining(&self) -> bool {
        *self.inner.stop_accepting.borrow()
    }

    /// Resolves once [`Drain::stop_accepting`] has been called.
    pub async fn stopped_accepting(&self) {
        wait_true(&self.inner.stop_accepting).await;
    }

    /// Tells every open connection to close now (idempotent).
    pub fn abort(&self) {
        self.inner.abort.send_replace(true);
    }

    /// Resolves once [`Drain::abort`] has been called.
    pub async fn aborted(&self) {
        wait_true(&self.inner.abort).await;
    }

    /// Registers an open connection until the guard drops.
    pub fn track(&self) -> Tracked {
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        Tracked {
            inner: self.inner.clone(),
        }
    }

    /// The number of open connections.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Resolves when no connection is open.
    pub async fn idle(&self) {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

async fn wait_true(flag: &watch::Sender<bool>) {
    // The sender lives in `Inner`, which `flag` borrows from: the wait cannot fail.
    let _ = flag.subscribe().wait_for(|set| *set).await;
}

/// An open connection; dropping it (however the connection's task ends) unregisters it.
#[derive(Debug)]
pub struct Tracked {
    inner: Arc<Inner>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_connection() {
        let drain = Drain::new();
        drain.idle().await; // nothing open: immediate
        let first = drain.track();
        let second = drain.track();
        assert_eq!(drain.active(), 2);

        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "idle with a connection still open");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle after the last connection closed")
            .expect("waiter task");
    }

    #[tokio::test]
    async fn signals_are_sticky_and_idempotent() {
        let drain = Drain::new();
        assert!(!drain.is_draining());
        drain.stop_accepting();
        drain.stop_accepting();
        assert!(drain.is_draining());
        // Waiters that arrive after the signal still see it.
        tokio::time::timeout(Duration::from_secs(5), drain.stopped_accepting())
            .await
            .expect("stopped accepting");
        drain.abort();
        tokio::time::timeout(Duration::from_secs(5), drain.aborted())
            .await
            .expect("aborted");
    }

    #[tokio::test]
    async fn going_away_keeps_its_first_instant_and_keeps_accepting() {
        let drain = Drain::new();
        assert_eq!(drain.going_away_since(), None);
        let first = drain.go_away();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            drain.go_away(),
            first,
            "a second call keeps the first instant"
        );
        assert_eq!(drain.going_away_since(), Some(first));
        assert!(
            !drain.is_draining(),
            "going away alone does not stop accepting"
        );
        tokio::time::timeout(Duration::from_secs(5), drain.went_away())
            .await
            .expect("went away");
    }
}
