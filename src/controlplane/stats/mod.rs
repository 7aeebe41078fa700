//! Per-workload stats and the per-tier verdict, embedded in the control plane (no Prometheus
//! needed): every interval (`--stats-interval`, 10 s) [`collect`] scrapes `GET /metrics` of
//! every proxy connected to this replica, [`parse`] reads the few metrics stats use,
//! [`window`] keeps each proxy's counter increments for the last five minutes, and [`query`]
//! sums them into what `GET /debug/stats` answers and `skein stat` / `skein edges` print.
//! After a scrape in which a proxy counted failing requests, the collector also reads its
//! recent errors and keeps one of them ([`sample`]): the sample failing request a FAIL row
//! shows.
//!
//! How proxies are reached (`--stats-scrape`): `direct`, the pod's IP and admin port (pod to
//! pod, as in any cluster; the admin server answers `/metrics` to other addresses by design),
//! or `apiserver`, the apiserver's pod proxy (`pods/proxy`), for a control plane outside the
//! pod network such as `skein dev up`'s, which runs on the machine's loopback.
//!
//! Memory: per connected proxy, the last scrape plus at most 60 increments holding only the
//! series that moved, each capped at [`window::MAX_SERIES`] series (label values at
//! [`window::MAX_LABEL_BYTES`]), and one sample request (its strings cut alike); a proxy that
//! disconnects is dropped at the next scrape. The cost follows the number of proxies and of
//! their distinct label sets, never the request rate.

pub mod collect;
pub mod parse;
pub mod query;
pub mod sample;
pub mod window;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;

use crate::proxy::recent::RecentErrors;
use query::{Filter, ProxyView, Report};
use sample::SampleRequest;
use window::{ProxyWindow, Snapshot};

/// What the collector knows, shared with the debug server.
#[derive(Clone)]
pub struct StatsStore {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
}

#[derive(Default)]
struct Inner {
    /// By (namespace, pod).
    proxies: BTreeMap<(String, String), Entry>,
}

#[derive(Default)]
struct Entry {
    window: ProxyWindow,
    /// Why the last scrape failed, if it did.
    error: Option<String>,
    /// The latest failing request read from the proxy's recent errors, and when it happened.
    sample: Option<(Timestamp, SampleRequest)>,
}

impl Default for StatsStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            started: Instant::now(),
        }
    }
}

impl StatsStore {
    /// Seconds on the store's monotonic clock.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets every proxy not in `connected`.
    pub fn retain(&self, connected: &[(String, String)]) {
        self.lock().proxies.retain(|key, _| connected.contains(key));
    }

    pub fn record(&self, pod: (String, String), at: f64, scraped: Result<Snapshot, String>) {
        let mut inner = self.lock();
        let entry = inner.proxies.entry(pod).or_default();
        match scraped {
            Ok(snapshot) => {
                entry.window.record(at, snapshot);
                entry.error = None;
            }
            Err(error) => entry.error = Some(error),
        }
    }

    /// Whether the proxy of `pod` counted failing requests between its last two scrapes.
    pub fn newly_failing(&self, pod: &(String, String)) -> bool {
        self.lock()
            .proxies
            .get(pod)
            .is_some_and(|entry| entry.window.newly_failing())
    }

    /// Keeps the request of `errors` (the proxy's recent errors) a FAIL row would show, if it
    /// has one; the one kept before otherwise.
    pub fn record_errors(&self, pod: &(String, String), errors: &RecentErrors) {
        let Some(kept) = sample::pick(&errors.errors).and_then(|e| sample::keep(&pod.1, e)) else {
            return;
        };
        if let Some(entry) = self.lock().proxies.get_mut(pod) {
            entry.sample = Some(kept);
        }
    }

    /// The report over the last `window_seconds`, not yet finished (see [`Report::finish`]).
    pub fn report(&self, filter: &Filter, window_seconds: f64) -> Report {
        let now = self.now();
        let wall = Timestamp::now();
        let inner = self.lock();
        let views: Vec<ProxyView> = inner
            .proxies
            .values()
            .map(|entry| ProxyView {
                workload: entry.window.workload().cloned(),
                totals: entry.window.totals(now, window_seconds),
                tcp_open: entry.window.tcp_open(),
                sample: entry
                    .sample
                    .as_ref()
                    .and_then(|kept| sample::within(kept, wall, window_seconds)),
            })
            .collect();
        let mut report = query::aggregate(&views, filter, window_seconds);
        report.unreachable = inner
            .proxies
            .iter()
            .filter(|((namespace, _), _)| {
                filter.namespace.as_deref().is_none_or(|n| n == namespace)
            })
            .filter_map(|((namespace, pod), entry)| {
                let error = entry.error.as_ref()?;
                Some(format!("{namespace}/{pod}: {error}"))
            })
            .collect();
        report
    }
}
