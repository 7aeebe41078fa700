//! One proxy's counters over time, pure: each scrape becomes a [`Snapshot`] (absolute counter
//! values), and the difference to the previous one an [`Increment`]; a window's totals are the
//! sum of the increments that end inside it. A counter that went down (the proxy restarted)
//! counts from zero, as Prometheus' `increase` does.
//!
//! Memory: the last snapshot plus at most [`MAX_INCREMENTS`] increments, each holding only the
//! series that moved (as references to one copy of each series per proxy), of at most [`MAX_SERIES`] series a proxy (the rest are dropped and
//! counted), with label values cut at [`MAX_LABEL_BYTES`]: bounded, whatever the request rate.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::parse::Sample;

/// The longest window a query may ask for, in seconds.
pub const MAX_WINDOW_SECONDS: f64 = 300.0;
/// Increments kept per proxy: the longest window at the shortest scrape interval (5 s).
pub const MAX_INCREMENTS: usize = 60;
/// Series kept per proxy and scrape.
pub const MAX_SERIES: usize = 1000;
/// Label values longer than this are cut (a workload or identity name is far shorter).
pub const MAX_LABEL_BYTES: usize = 256;

pub const REQUESTS: &str = "skein_proxy_requests_total";
pub const LATENCY_BUCKETS: &str = "skein_proxy_request_duration_seconds_bucket";
pub const LOCAL_RESPONSES: &str = "skein_proxy_local_responses_total";
pub const TCP_OPENED: &str = "skein_proxy_tcp_connections_opened_total";
pub const TCP_CLOSED: &str = "skein_proxy_tcp_connections_closed_total";

/// The metrics [`Snapshot::from_samples`] reads: the parser skips every other line.
pub fn wanted(name: &str) -> bool {
    [
        REQUESTS,
        LATENCY_BUCKETS,
        LOCAL_RESPONSES,
        TCP_OPENED,
        TCP_CLOSED,
    ]
    .contains(&name)
}

/// The labels of one `skein_proxy_requests_total` series that stats use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RequestKey {
    pub inbound: bool,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub tls: bool,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub status_code: u16,
    pub grpc_status: String,
    pub failure: bool,
}

/// One counter a proxy exports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    Request(RequestKey),
    /// A response the proxy made itself, by direction (inbound?) and `x-skein-error` reason.
    Local {
        inbound: bool,
        reason: String,
    },
    /// The inbound latency histogram's cumulative bucket `le` (as written), summed over
    /// services and classifications: the workload's own answers.
    InboundLatency {
        le: String,
    },
}

/// Counter values of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub counters: BTreeMap<Series, f64>,
    /// Inbound TCP connections open now (opened − closed).
    pub tcp_open: f64,
    /// Series dropped because the proxy exported more than [`MAX_SERIES`].
    pub dropped: usize,
}

/// `value` cut at [`MAX_LABEL_BYTES`] (on a character boundary).
pub fn cut(value: &str) -> String {
    let mut end = value.len().min(MAX_LABEL_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

impl Snapshot {
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut snapshot = Snapshot::default();
        let (mut opened, mut closed) = (0.0, 0.0);
        for sample in samples {
            let inbound = sample.label("direction") == "inbound";
            let series = match sample.name.as_str() {
                REQUESTS => Series::Request(RequestKey {
                    inbound,
                    source_workload: cut(sample.label("source_workload")),
                    source_namespace: cut(sample.label("source_namespace")),
                    source_principal: cut(sample.label("source_principal")),
                    tls: sample.label("tls") == "true",
                    destination_service: cut(sample.label("destination_service")),
                    destination_workload: cut(sample.label("destination_workload")),
                    destination_namespace: cut(sample.label("destination_namespace")),
                    status_code: sample.label("status_code").parse().unwrap_or(0),
                    grpc_status: cut(sample.label("grpc_status")),
                    failure: sample.label("classification") == "failure",
                }),
                LOCAL_RESPONSES => Series::Local {
                    inbound,
                    reason: cut(sample.label("reason")),
                },
                LATENCY_BUCKETS if inbound => Series::InboundLatency {
                    le: cut(sample.label("le")),
                },
                TCP_OPENED if inbound => {
                    opened += sample.value;
                    continue;
                }
                TCP_CLOSED if inbound => {
                    closed += sample.value;
                    continue;
                }
                _ => continue,
            };
            let known = snapshot.counters.contains_key(&series);
            if !known && snapshot.counters.len() >= MAX_SERIES {
                snapshot.dropped += 1;
                continue;
            }
            *snapshot.counters.entry(series).or_default() += sample.value;
        }
        snapshot.tcp_open = (opened - closed).max(0.0);
        snapshot
    }

    /// The workload this proxy serves, as its request series name it: the destination of its
    /// inbound requests, the source of its outbound ones.
    pub fn workload(&self) -> Option<(String, String)> {
        self.counters.keys().find_map(|series| match series {
            Series::Request(key) if key.inbound && !key.destination_workload.is_empty() => Some((
                key.destination_namespace.clone(),
                key.destination_workload.clone(),
            )),
            Series::Request(key) if !key.inbound && !key.source_workload.is_empty() => {
                Some((key.source_namespace.clone(), key.source_workload.clone()))
            }
            _ => None,
        })
    }
}

/// What moved between two scrapes (`start` and `end`, in seconds on a monotonic clock). The
/// series are the proxy's interned ones ([`ProxyWindow`]): 60 increments of a hundred series
/// cost a hundred label sets, not six thousand.
#[derive(Debug, Clone, PartialEq)]
pub struct Increment {
    pub start: f64,
    pub end: f64,
    pub counters: Vec<(Arc<Series>, f64)>,
}

/// `current − previous` per series; a series that went down restarted from zero.
pub fn increment(previous: &Snapshot, current: &Snapshot) -> BTreeMap<Series, f64> {
    current
        .counters
        .iter()
        .filter_map(|(series, &now)| {
            let before = previous.counters.get(series).copied().unwrap_or(0.0);
            let moved = if now >= before { now - before } else { now };
            (moved > 0.0).then(|| (series.clone(), moved))
        })
        .collect()
}

/// The shared copy of `series`, made the first time it is seen.
fn intern(interned: &mut HashSet<Arc<Series>>, series: Series) -> Arc<Series> {
    if let Some(known) = interned.get(&series) {
        return known.clone();
    }
    let series = Arc::new(series);
    interned.insert(series.clone());
    series
}

/// Counter sums over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub counters: BTreeMap<Series, f64>,
    /// The time the summed increments cover (at most the window).
    pub seconds: f64,
}

/// One proxy's history.
#[derive(Debug, Clone, Default)]
pub struct ProxyWindow {
    last: Option<(f64, Snapshot)>,
    increments: VecDeque<Increment>,
    workload: Option<(String, String)>,
    /// One copy of each series the increments name.
    interned: HashSet<Arc<Series>>,
}

impl ProxyWindow {
    /// Adds the scrape taken at `at` (seconds, monotonic).
    pub fn record(&mut self, at: f64, snapshot: Snapshot) {
        if let Some(workload) = snapshot.workload() {
            self.workload = Some(workload);
        }
        if let Some((before, previous)) = &self.last
            && at > *before
        {
            let counters = increment(previous, &snapshot)
                .into_iter()
                .map(|(series, moved)| (intern(&mut self.interned, series), moved))
                .collect();
            self.increments.push_back(Increment {
                start: *before,
                end: at,
                counters,
            });
        }
        while self.increments.len() > MAX_INCREMENTS
            || self
                .increments
                .front()
                .is_some_and(|oldest| oldest.end < at - MAX_WINDOW_SECONDS)
        {
            self.increments.pop_front();
        }
        self.last = Some((at, snapshot));
        // Series no increment names any more (held only here) are forgotten.
        self.interned.retain(|series| Arc::strong_count(series) > 1);
    }

    /// The sums of the increments that end within `window` seconds before `now`.
    pub fn totals(&self, now: f64, window: f64) -> Totals {
        let mut totals = Totals::default();
        for increment in self.increments.iter().filter(|i| i.end > now - window) {
            totals.seconds += increment.end - increment.start;
            for (series, value) in &increment.counters {
                *totals.counters.entry(Series::clone(series)).or_default() += value;
            }
        }
        totals
    }

    pub fn workload(&self) -> Option<&(String, String)> {
        self.workload.as_ref()
    }

    /// Whether the proxy counted failing requests (either direction) between its last two
    /// scrapes: when its recent errors are worth reading.
    pub fn newly_failing(&self) -> bool {
        let Some((last, _)) = &self.last else {
            return false;
        };
        self.increments.back().is_some_and(|increment| {
            increment.end == *last
                && increment
                    .counters
                    .iter()
                    .any(|(series, _)| matches!(&**series, Series::Request(key) if key.failure))
        })
    }

    pub fn tcp_open(&self) -> f64 {
        self.last.as_ref().map_or(0.0, |(_, s)| s.tcp_open)
    }

    pub fn dropped(&self) -> usize {
        self.last.as_ref().map_or(0, |(_, s)| s.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::stats::parse::parse;

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::from_samples(&parse(text, wanted).unwrap())
    }

    fn requests(ok: u32, failed: u32) -> Snapshot {
        snapshot(&format!(
            "skein_proxy_requests_total{{direction=\"inbound\",destination_workload=\"web\",\
             destination_namespace=\"demo\",status_code=\"200\",classification=\"success\"}} {ok}\n\
             skein_proxy_requests_total{{direction=\"inbound\",destination_workload=\"web\",\
             destination_namespace=\"demo\",status_code=\"503\",classification=\"failure\"}} {failed}\n"
        ))
    }

    fn count(totals: &Totals, failure: bool) -> f64 {
        totals
            .counters
            .iter()
            .filter_map(|(s, v)| match s {
                Series::Request(k) if k.failure == failure => Some(*v),
                _ => None,
            })
            .sum()
    }

    #[test]
    fn increments_share_one_copy_of_each_series_and_forget_what_left_the_window() {
        let mut window = ProxyWindow::default();
        for (at, ok) in [(0.0, 1), (10.0, 2), (20.0, 3)] {
            window.record(at, requests(ok, 0));
        }
        let (first, second) = (&window.increments[0], &window.increments[1]);
        assert!(Arc::ptr_eq(&first.counters[0].0, &second.counters[0].0));
        assert_eq!(window.interned.len(), 1);
        // Once the window has moved past both, nothing holds the series.
        window.record(20.0 + MAX_WINDOW_SECONDS + 20.0, requests(3, 0));
        window.record(20.0 + MAX_WINDOW_SECONDS + 30.0, requests(3, 0));
        assert!(window.increments.iter().all(|i| i.counters.is_empty()));
        assert!(window.interned.is_empty());
    }

    #[test]
    fn windows_sum_the_increments_inside_them() {
        let mut window = ProxyWindow::default();
        window.record(0.0, requests(100, 0));
        window.record(10.0, requests(110, 5));
        window.record(20.0, requests(130, 5));
        window.record(30.0, requests(160, 5));
        let last_10 = window.totals(30.0, 10.0);
        assert_eq!((count(&last_10, false), count(&last_10, true)), (30.0, 0.0));
        assert_eq!(last_10.seconds, 10.0);
        let all = window.totals(30.0, 60.0);
        assert_eq!((count(&all, false), count(&all, true)), (60.0, 5.0));
        assert_eq!(all.seconds, 30.0);
        // Before the first scrape's successor nothing is known: no guess from absolute values.
        let mut fresh = ProxyWindow::default();
        fresh.record(0.0, requests(100, 7));
        assert_eq!(fresh.totals(0.0, 60.0), Totals::default());
        assert_eq!(fresh.workload(), Some(&("demo".into(), "web".into())));
    }

    #[test]
    fn failures_since_the_last_scrape_are_noticed() {
        let mut window = ProxyWindow::default();
        window.record(0.0, requests(100, 5));
        assert!(!window.newly_failing(), "no increment yet");
        window.record(10.0, requests(110, 5));
        assert!(!window.newly_failing(), "the old failures did not move");
        window.record(20.0, requests(120, 6));
        assert!(window.newly_failing());
        window.record(30.0, requests(130, 6));
        assert!(!window.newly_failing());
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let mut window = ProxyWindow::default();
        window.record(0.0, requests(500, 50));
        window.record(10.0, requests(3, 1));
        window.record(20.0, requests(8, 1));
        let totals = window.totals(20.0, 60.0);
        assert_eq!((count(&totals, false), count(&totals, true)), (8.0, 1.0));
    }

    #[test]
    fn old_increments_are_forgotten() {
        let mut window = ProxyWindow::default();
        for i in 0..200u32 {
            window.record(f64::from(i) * 5.0, requests(i, 0));
        }
        assert!(window.increments.len() <= MAX_INCREMENTS);
        assert!(
            window
                .increments
                .iter()
                .all(|i| i.end >= 995.0 - MAX_WINDOW_SECONDS)
        );
    }

    #[test]
    fn series_per_proxy_are_capped() {
        let text: String = (0..MAX_SERIES + 10)
            .map(|i| {
                format!(
                    "skein_proxy_local_responses_total{{direction=\"inbound\",reason=\"r{i}\"}} 1\n"
                )
            })
            .collect();
        let snapshot = snapshot(&text);
        assert_eq!(snapshot.counters.len(), MAX_SERIES);
        assert_eq!(snapshot.dropped, 10);
    }

    #[test]
    fn inbound_latency_and_connections() {
        let snapshot = snapshot(
            "skein_proxy_request_duration_seconds_bucket{direction=\"inbound\",destination_service=\"a\",classification=\"success\",le=\"0.1\"} 3\n\
             skein_proxy_request_duration_seconds_bucket{direction=\"inbound\",destination_service=\"b\",classification=\"failure\",le=\"0.1\"} 2\n\
             skein_proxy_request_duration_seconds_bucket{direction=\"outbound\",destination_service=\"a\",classification=\"success\",le=\"0.1\"} 9\n\
             skein_proxy_tcp_connections_opened_total{direction=\"inbound\"} 10\n\
             skein_proxy_tcp_connections_closed_total{direction=\"inbound\"} 7\n\
             skein_proxy_tcp_connections_opened_total{direction=\"outbound\"} 50\n",
        );
        assert_eq!(
            snapshot
                .counters
                .get(&Series::InboundLatency { le: "0.1".into() }),
            Some(&5.0)
        );
        assert_eq!(snapshot.counters.len(), 1);
        assert_eq!(snapshot.tcp_open, 3.0);
    }
}
