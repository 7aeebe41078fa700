//! Load balancing and outlier detection for one destination port: which endpoint a request goes
//! to, given what earlier requests told us. Pure logic: callers report outcomes through
//! [`Pick::finish`]; nothing here connects or reads the clock (every call takes `now`), so tests
//! drive time by hand.
//!
//! Algorithms ([`LoadBalancer`]):
//! - `PeakEwma` (default): power of two choices on `max(latency estimate, 5 ms) × (in-flight +
//!   1)`. The estimate jumps up to any slower sample at once and eases down toward faster ones
//!   with a 10 s time constant, so one slow response is felt immediately and recovery takes a
//!   while. Of the two, each wins in inverse proportion to its cost rather than the cheaper
//!   always: an endpoint 60 times slower gets under 2% of its draws, but a replica that was
//!   somewhat slow once keeps a share, is measured, and is back as soon as it is fast (with
//!   three replicas, "the cheaper always wins" gives the slowest nothing at all for as long as
//!   its estimate takes to decay). Below 5 ms latencies count as equal: scheduling noise on a
//!   busy host must not steer traffic.
//! - `LeastRequest`: power of two choices on the in-flight count.
//! - `RoundRobin`: a shared counter over the eligible endpoints.
//!
//! Choices made here (and why):
//! - An endpoint never measured counts as fast, so a new replica (scale-up, restart) gets
//!   traffic at once and is measured; the in-flight factor keeps it from being flooded. A connect
//!   failure counts as a 1 s sample, so a dead endpoint is avoided even without outlier
//!   detection; a failure on an endpoint never measured counts as at least 30 ms.
//! - A failed (5xx) response never lowers the estimate: a backend answering 503 at once would
//!   otherwise look like the fastest endpoint and attract more traffic.
//! - Between samples an estimate fades toward zero (same 10 s constant): an endpoint that was slow
//!   once and then gets no traffic is probed again later instead of being starved forever.
//! - Eligibility is relaxed in this order: endpoints must carry the subset labels (always); they
//!   must not be ejected unless all of the subset is (panic mode: a possibly bad endpoint beats
//!   none); they must not be terminating unless nothing else is left (a pod being deleted still
//!   serves, so it beats no endpoint, as in kube-proxy); they should not be in `avoid` unless
//!   nothing else is left.
//! - Outlier detection ejects at most `floor(endpoints × maxEjectionPercent / 100)` endpoints but
//!   always at least one, so small destinations (under ten endpoints at the default 10 %) still
//!   shed a failing endpoint; with a single endpoint that only means panic mode.
//!   `maxEjectionPercent: 0`, `consecutiveFailures: 0` or a zero `baseEjectionTime` turn outlier
//!   detection off. When the cap is reached, the failing endpoint stays in with its failure count
//!   and is ejected by its next failure once there is room.
//! - The n-th ejection lasts `baseEjectionTime × 2^(n-1)`, at most 300 s (or the base time, if
//!   that is longer). `n` restarts at 1 once an endpoint has stayed in for one base ejection time
//!   after returning: a flapping endpoint is kept out longer and longer, a recovered one is not
//!   punished for an old incident.
//! - An ejection forgets the endpoint's latency estimate: the 1 s connect-failure samples that
//!   led to it would otherwise keep it unpicked long after it returns, and what comes back (often
//!   a restarted pod) is measured afresh.
//! - Outcomes reported while an endpoint is ejected are ignored (neither failures nor latency
//!   samples): they come from requests sent before the ejection or from panic mode, and say
//!   nothing new.
//! - The address is an endpoint's identity: duplicates in the config are dropped (first wins),
//!   and a new [`Balancer`] shares the state of the endpoints it has in common with the one it
//!   replaces, so picks still in flight on the old one are counted and reported on the new one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{Endpoint, LoadBalancer, OutlierDetection, Workload};

/// What a failure counts as on an endpoint never measured (failures only ever raise it).
const DEFAULT_ESTIMATE: Duration = Duration::from_millis(30);
/// Latencies below this count as equal: differences of a millisecond on a busy host are noise
/// (a connection's first request, a scheduling hiccup) and must not starve a replica.
const LATENCY_FLOOR: Duration = Duration::from_millis(5);
/// Time constant of the peak-EWMA decay.
const DECAY: Duration = Duration::from_secs(10);
/// The latency sample a connect failure counts as.
const CONNECT_FAILURE_SAMPLE: Duration = Duration::from_secs(1);
/// Longest ejection (unless the base ejection time itself is longer).
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The endpoints of one destination port, shared by every request to it.
#[derive(Debug)]
pub struct Balancer {
    inner: Arc<Inner>,
}

/// What a [`Pick`] keeps alive so it can report after the balancer has been replaced.
#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    algorithm: LoadBalancer,
    outlier: Option<Outlier>,
    round_robin: AtomicUsize,
    /// Serializes ejection decisions so concurrent failures cannot exceed the cap; shared with
    /// the balancers this one replaces or is replaced by.
    eject_lock: Arc<Mutex<()>>,
}

#[derive(Debug)]
struct Member {
    endpoint: Endpoint,
    stats: Arc<Stats>,
}

/// Per-address state, carried over config changes.
#[derive(Debug, Default)]
struct Stats {
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Peak-EWMA estimate in nanoseconds and when it was last updated; None until measured.
    estimate: Option<(f64, Instant)>,
    /// Consecutive failures since the last success or ejection.
    failures: u32,
    /// End of the current (or last) ejection.
    ejected_until: Option<Instant>,
    /// Ejections so far (see the module docs for when it restarts).
    times: u32,
}

/// Outlier detection settings, only when they can eject anything.
#[derive(Debug, Clone, Copy)]
struct Outlier {
    consecutive_failures: u32,
    base: Duration,
    max_percent: u8,
}

/// A chosen endpoint; holds an in-flight slot until finished or dropped.
#[derive(Debug)]
pub struct Pick {
    inner: Arc<Inner>,
    index: usize,
}

/// What became of a request sent to a [`Pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response received (any status) after `latency`; `failure` = 5xx.
    Response { latency: Duration, failure: bool },
    /// The endpoint could not be connected to.
    ConnectFailure,
    /// Cancelled by the caller: no signal about the endpoint.
    Cancelled,
}

/// An endpoint taken out of rotation by outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub address: SocketAddr,
    pub until: Instant,
    /// How many times this endpoint has been ejected in a row (1 for the first).
    pub times: u32,
}

impl Balancer {
    /// `previous`: the balancer this one replaces on a config change; endpoints present in both
    /// (same address) keep their latency estimate, in-flight count and outlier state.
    pub fn new(
        endpoints: Vec<Endpoint>,
        algorithm: LoadBalancer,
        outlier: Option<OutlierDetection>,
        previous: Option<&Balancer>,
    ) -> Self {
        let carried: HashMap<SocketAddr, &Arc<Stats>> = previous
            .map(|p| {
                p.inner
                    .members
                    .iter()
                    .map(|m| (m.endpoint.address, &m.stats))
                    .collect()
            })
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let members = endpoints
            .into_iter()
            .filter(|e| seen.insert(e.address))
            .map(|endpoint| Member {
                stats: carried
                    .get(&endpoint.address)
                    .map(|s| Arc::clone(s))
                    .unwrap_or_default(),
                endpoint,
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                members,
                algorithm,
                outlier: outlier.as_ref().and_then(Outlier::new),
                round_robin: AtomicUsize::new(0),
                eject_lock: previous
                    .map(|p| Arc::clone(&p.inner.eject_lock))
                    .unwrap_or_default(),
            }),
        }
    }

    /// Picks an endpoint carrying all `subset` labels (None = any), not ejected, not terminating
    /// and not in `avoid` (addresses already tried by this request), each relaxed in turn when
    /// nothing else is eligible. If the whole subset is ejected, ejection is ignored (panic
    /// mode). None only when no endpoint carries the labels.
    pub fn pick(
        &self,
        subset: Option<&BTreeMap<String, String>>,
        avoid: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<Pick> {
        let inner = &self.inner;
        let mut candidates: Vec<usize> = inner
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| carries(&m.endpoint.labels, subset))
            .map(|(i, _)| i)
            .collect();
        if inner.outlier.is_some() {
            narrow(&mut candidates, |i| !inner.is_ejected(i, now));
        }
        narrow(&mut candidates, |i| !inner.members[i].endpoint.terminating);
        if !avoid.is_empty() {
            narrow(&mut candidates, |i| {
                !avoid.contains(&inner.members[i].endpoint.address)
            });
        }
        let index = inner.choose(&candidates, now, rng)?;
        Some(Pick::new(Arc::clone(inner), index))
    }

    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.members.is_empty()
    }

    /// The endpoints, in config order without duplicates (for /config).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.inner.members.iter().map(|m| &m.endpoint)
    }

    /// Addresses currently ejected (for /config and tests).
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        if self.inner.outlier.is_none() {
            return Vec::new();
        }
        (0..self.inner.members.len())
            .filter(|&i| self.inner.is_ejected(i, now))
            .map(|i| self.inner.members[i].endpoint.address)
            .collect()
    }

    /// Requests in flight to `address`, across the balancers sharing its state (for /config).
    pub fn in_flight(&self, address: SocketAddr) -> Option<usize> {
        self.inner
            .members
            .iter()
            .find(|m| m.endpoint.address == address)
            .map(|m| m.stats.in_flight.load(Ordering::Relaxed))
    }
}

impl Inner {
    fn is_ejected(&self, index: usize, now: Instant) -> bool {
        self.outlier.is_some() && lock(&self.members[index].stats.state).is_ejected(now)
    }

    fn choose(&self, candidates: &[usize], now: Instant, rng: &mut fastrand::Rng) -> Option<usize> {
        match *candidates {
            [] => None,
            [only] => Some(only),
            _ => Some(match self.algorithm {
                LoadBalancer::RoundRobin => {
                    let turn = self.round_robin.fetch_add(1, Ordering::Relaxed);
                    candidates[turn % candidates.len()]
                }
                LoadBalancer::LeastRequest => two_choices(candidates, rng, |i| {
                    self.members[i].stats.in_flight.load(Ordering::Relaxed) as f64
                }),
                LoadBalancer::PeakEwma => {
                    let cost = |i: usize| {
                        let stats = &self.members[i].stats;
                        let pending = stats.in_flight.load(Ordering::Relaxed) as f64;
                        let estimate = lock(&stats.state).estimate_at(now);
                        estimate.max(nanos(LATENCY_FLOOR)) * (pending + 1.0)
                    };
                    let (a, b) = two_distinct(candidates, rng);
                    let (cost_a, cost_b) = (cost(a), cost(b));
                    // Each wins in inverse proportion to its cost (both are at least the floor).
                    if rng.f64() * (cost_a + cost_b) < cost_b {
                        a
                    } else {
                        b
                    }
                }
            }),
        }
    }

    fn record(&self, index: usize, outcome: Outcome, now: Instant) -> Option<Ejection> {
        let (sample, failure) = match outcome {
            Outcome::Cancelled => return None,
            Outcome::Response { latency, failure } => (latency, failure),
            Outcome::ConnectFailure => (CONNECT_FAILURE_SAMPLE, true),
        };
        let wants_ejection = {
            let mut state = lock(&self.members[index].stats.state);
            if self.outlier.is_some() && state.is_ejected(now) {
                return None;
            }
            state.observe(nanos(sample), !failure, now);
            if !failure {
                state.failures = 0;
                return None;
            }
            state.failures = state.failures.saturating_add(1);
            self.outlier
                .is_some_and(|o| state.failures >= o.consecutive_failures)
        };
        if wants_ejection {
            self.eject(index, now)
        } else {
            None
        }
    }

    /// Ejects `index` if the cap allows; checks again under the lock since another task may have
    /// ejected it (or others) meanwhile.
    fn eject(&self, index: usize, now: Instant) -> Option<Ejection> {
        let outlier = self.outlier?;
        let _decision = lock(&self.eject_lock);
        let ejected = (0..self.members.len())
            .filter(|&i| self.is_ejected(i, now))
            .count();
        if ejected >= outlier.max_ejected(self.members.len()) {
            return None;
        }
        let member = &self.members[index];
        let mut state = lock(&member.stats.state);
        if state.is_ejected(now) || state.failures < outlier.consecutive_failures {
            return None;
        }
        let recovered = state
            .ejected_until
            .is_some_and(|until| now.saturating_duration_since(until) >= outlier.base);
        if recovered {
            state.times = 0;
        }
        state.times = state.times.saturating_add(1);
        state.failures = 0;
        state.estimate = None;
        let duration = outlier.ejection_time(state.times);
        let until = now
            .checked_add(duration)
            .or_else(|| now.checked_add(MAX_EJECTION))
            .unwrap_or(now);
        state.ejected_until = Some(until);
        Some(Ejection {
            address: member.endpoint.address,
            until,
            times: state.times,
        })
    }
}

impl State {
    /// The estimate as seen at `now`, faded since its last update.
    fn estimate_at(&self, now: Instant) -> f64 {
        match self.estimate {
            None => 0.0,
            Some((estimate, at)) => estimate * decay_weight(now.saturating_duration_since(at)),
        }
    }

    /// Peak-EWMA update; `may_lower` is false for failures, which may only raise the estimate.
    fn observe(&mut self, sample: f64, may_lower: bool, now: Instant) {
        let next = match self.estimate {
            None if may_lower => sample,
            None => sample.max(nanos(DEFAULT_ESTIMATE)),
            Some((estimate, _)) if sample >= estimate => sample,
            Some((estimate, _)) if !may_lower => estimate,
            Some((estimate, at)) => {
                let weight = decay_weight(now.saturating_duration_since(at));
                estimate * weight + sample * (1.0 - weight)
            }
        };
        self.estimate = Some((next, now));
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }
}

impl Outlier {
    fn new(config: &OutlierDetection) -> Option<Self> {
        let outlier = Self {
            consecutive_failures: config.consecutive_failures,
            base: config.base_ejection_time.as_std(),
            max_percent: config.max_ejection_percent.min(100),
        };
        let active =
            outlier.consecutive_failures > 0 && !outlier.base.is_zero() && outlier.max_percent > 0;
        active.then_some(outlier)
    }

    /// The cap, but at least one (see the module docs).
    fn max_ejected(&self, endpoints: usize) -> usize {
        (endpoints * usize::from(self.max_percent) / 100).max(1)
    }

    fn ejection_time(&self, times: u32) -> Duration {
        let factor = 2u32.saturating_pow(times.saturating_sub(1));
        self.base
            .saturating_mul(factor)
            .min(MAX_EJECTION.max(self.base))
    }
}

impl Pick {
    fn new(inner: Arc<Inner>, index: usize) -> Self {
        inner.members[index]
            .stats
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self { inner, index }
    }

    fn member(&self) -> &Member {
        &self.inner.members[self.index]
    }

    pub fn address(&self) -> SocketAddr {
        self.member().endpoint.address
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.member().endpoint.labels
    }

    pub fn workload(&self) -> Option<&Workload> {
        self.member().endpoint.workload.as_ref()
    }

    /// Records the outcome. Returns Some(Ejection) if this outcome ejected the endpoint (the
    /// caller counts it in metrics and logs it).
    pub fn finish(self, outcome: Outcome, now: Instant) -> Option<Ejection> {
        self.inner.record(self.index, outcome, now)
        // Dropping `self` releases the in-flight slot.
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.member()
            .stats
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether `labels` include every pair of `subset`.
fn carries(labels: &BTreeMap<String, String>, subset: Option<&BTreeMap<String, String>>) -> bool {
    subset.is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Keeps only the candidates passing `keep`, unless none does (then keeps them all).
fn narrow(candidates: &mut Vec<usize>, keep: impl Fn(usize) -> bool) {
    if candidates.iter().any(|&i| keep(i)) {
        candidates.retain(|&i| keep(i));
    }
}

/// Two distinct random candidates, the cheaper wins (the first on a tie, which is random too).
fn two_choices(
    candidates: &[usize],
    rng: &mut fastrand::Rng,
    cost: impl Fn(usize) -> f64,
) -> usize {
    let (a, b) = two_distinct(candidates, rng);
    if cost(b) < cost(a) { b } else { a }
}

/// Two different candidates at random (there are at least two).
fn two_distinct(candidates: &[usize], rng: &mut fastrand::Rng) -> (usize, usize) {
    let n = candidates.len();
    let first = rng.usize(..n);
    let mut second = rng.usize(..n - 1);
    if second >= first {
        second += 1;
    }
    (candidates[first], candidates[second])
}

fn decay_weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

fn nanos(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

/// A poisoned lock only means another task panicked mid-update of plain numbers: keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 8080))
    }

    /// Endpoint `n`, labelled `name: e<n>` plus `extra`.
    fn ep(n: u8, extra: &[(&str, &str)]) -> Endpoint {
        let mut labels = BTreeMap::from([("name".to_owned(), format!("e{n}"))]);
        for (k, v) in extra {
            labels.insert((*k).to_owned(), (*v).to_owned());
        }
        Endpoint {
            address: addr(n),
            labels,
            workload: Some(Workload {
                name: format!("w{n}"),
                namespace: "demo".to_owned(),
            }),
            terminating: false,
            identity: None,
            http2_upgrade: false,
        }
    }

    fn eps(count: u8) -> Vec<Endpoint> {
        (1..=count).map(|n| ep(n, &[])).collect()
    }

    fn outlier(consecutive: u32, base_secs: u64, percent: u8) -> Option<OutlierDetection> {
        Some(OutlierDetection {
            consecutive_failures: consecutive,
            base_ejection_time: skein_core::Duration::from_secs(base_secs),
            max_ejection_percent: percent,
        })
    }

    fn only(n: u8) -> BTreeMap<String, String> {
        BTreeMap::from([("name".to_owned(), format!("e{n}"))])
    }

    /// Picks endpoint `n` (through its unique label).
    fn pick_one(b: &Balancer, n: u8, now: Instant) -> Pick {
        let mut rng = fastrand::Rng::with_seed(0);
        let pick = b.pick(Some(&only(n)), &[], now, &mut rng);
        let pick = pick.expect("endpoint present");
        assert_eq!(pick.address(), addr(n));
        pick
    }

    fn fail(b: &Balancer, n: u8, now: Instant) -> Option<Ejection> {
        pick_one(b, n, now).finish(Outcome::ConnectFailure, now)
    }

    fn respond(
        b: &Balancer,
        n: u8,
        latency_ms: u64,
        failure: bool,
        now: Instant,
    ) -> Option<Ejection> {
        let outcome = Outcome::Response {
            latency: Duration::from_millis(latency_ms),
            failure,
        };
        pick_one(b, n, now).finish(outcome, now)
    }

    /// How often each address is picked over `rounds` picks dropped at once.
    fn spread(b: &Balancer, rounds: usize, now: Instant, seed: u64) -> HashMap<SocketAddr, usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut counts = HashMap::new();
        for _ in 0..rounds {
            let pick = b.pick(None, &[], now, &mut rng).expect("non-empty");
            *counts.entry(pick.address()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn types_are_shareable_across_tasks() {
        fn check<T: Send + Sync>() {}
        check::<Balancer>();
        check::<Pick>();
    }

    #[test]
    fn equal_endpoints_get_an_even_share_with_every_algorithm() {
        let now = Instant::now();
        for algorithm in [
            LoadBalancer::PeakEwma,
            LoadBalancer::LeastRequest,
            LoadBalancer::RoundRobin,
        ] {
            let b = Balancer::new(eps(3), algorithm, None, None);
            let counts = spread(&b, 3000, now, 7);
            for n in 1..=3 {
                let got = counts.get(&addr(n)).copied().unwrap_or(0);
                assert!((850..=1150).contains(&got), "{algorithm:?}: e{n} got {got}");
            }
        }
    }

    #[test]
    fn peak_ewma_steers_away_from_a_slow_endpoint() {
        let now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, None, None);
        respond(&b, 1, 200, false, now);
        respond(&b, 2, 1, false, now);
        respond(&b, 3, 1, false, now);
        let counts = spread(&b, 1000, now, 3);
        let slow = counts.get(&addr(1)).copied().unwrap_or(0);
        assert!(slow < 50, "slow endpoint got {slow} of 1000");
    }

    #[test]
    fn peak_ewma_rises_at_once_and_decays_slowly() {
        let t0 = Instant::now();
        let mut state = State::default();
        assert_eq!(
            state.estimate_at(t0),
            0.0,
            "unmeasured endpoints are tried at once"
        );
        state.observe(nanos(Duration::from_millis(1)), true, t0);
        assert_eq!(state.estimate_at(t0), 1e6);
        state.observe(nanos(Duration::from_millis(200)), true, t0);
        assert_eq!(state.estimate_at(t0), 200e6);
        // A fast sample 10 s later moves it by 1 - 1/e of the way.
        let t1 = t0 + DECAY;
        state.observe(1e6, true, t1);
        let expected = 200e6 / std::f64::consts::E + 1e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((state.estimate_at(t1) - expected).abs() < 1e3);
        // Without samples the estimate fades so the endpoint is probed again eventually.
        assert!(state.estimate_at(t1 + Duration::from_secs(60)) < 1e6);
    }

    #[test]
    fn failures_never_make_an_endpoint_look_faster() {
        let now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, None, None);
        respond(&b, 2, 2, false, now);
        respond(&b, 3, 2, false, now);
        // Instant 503s from e1: its estimate stays at 30 ms, six times the others' (floored)
        // 5 ms, so it gets about a tenth of the traffic instead of a third.
        for _ in 0..10 {
            respond(&b, 1, 0, true, now);
        }
        let counts = spread(&b, 1000, now, 5);
        let failing = counts.get(&addr(1)).copied().unwrap_or(0);
        assert!(failing < 160, "the failing endpoint got {failing} of 1000");
    }

    #[test]
    fn connect_failures_steer_away_without_outlier_detection() {
        let now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, None, None);
        assert_eq!(fail(&b, 2, now), None);
        assert!(b.ejected(now).is_empty());
        let counts = spread(&b, 1000, now, 9);
        assert!(counts.get(&addr(2)).copied().unwrap_or(0) < 50);
    }

    #[test]
    fn least_request_avoids_a_busy_endpoint() {
        let now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::LeastRequest, None, None);
        let held: Vec<Pick> = (0..10).map(|_| pick_one(&b, 1, now)).collect();
        assert_eq!(b.in_flight(addr(1)), Some(10));
        let counts = spread(&b, 600, now, 11);
        assert_eq!(counts.get(&addr(1)), None);
        drop(held);
        let counts = spread(&b, 600, now, 11);
        assert!(counts.get(&addr(1)).copied().unwrap_or(0) > 100);
    }

    #[test]
    fn round_robin_cycles_exactly() {
        let now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::RoundRobin, None, None);
        let mut rng = fastrand::Rng::with_seed(1);
        let order: Vec<SocketAddr> = (0..7)
            .map(|_| {
                b.pick(None, &[], now, &mut rng)
                    .expect("non-empty")
                    .address()
            })
            .collect();
        let expected: Vec<SocketAddr> = [1, 2, 3, 1, 2, 3, 1].into_iter().map(addr).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn single_endpoint_is_always_picked() {
        let now = Instant::now();
        let b = Balancer::new(eps(1), LoadBalancer::PeakEwma, None, None);
        let mut rng = fastrand::Rng::with_seed(2);
        let _held = b.pick(None, &[], now, &mut rng);
        for _ in 0..10 {
            let pick = b.pick(None, &[addr(1)], now, &mut rng).expect("one");
            assert_eq!(pick.address(), addr(1));
        }
    }

    #[test]
    fn empty_balancer_picks_nothing() {
        let b = Balancer::new(Vec::new(), LoadBalancer::PeakEwma, None, None);
        assert!(b.is_empty());
        let mut rng = fastrand::Rng::with_seed(2);
        assert!(b.pick(None, &[], Instant::now(), &mut rng).is_none());
    }

    #[test]
    fn duplicate_addresses_are_dropped() {
        let mut endpoints = eps(2);
        endpoints.push(ep(1, &[("dup", "yes")]));
        let b = Balancer::new(endpoints, LoadBalancer::RoundRobin, None, None);
        assert_eq!(b.len(), 2);
        assert!(b.endpoints().all(|e| !e.labels.contains_key("dup")));
    }

    #[test]
    fn subsets_filter_by_labels() {
        let now = Instant::now();
        let endpoints = vec![
            ep(1, &[("version", "v1")]),
            ep(2, &[("version", "v2")]),
            ep(3, &[("version", "v2"), ("zone", "a")]),
        ];
        let b = Balancer::new(endpoints, LoadBalancer::PeakEwma, None, None);
        let mut rng = fastrand::Rng::with_seed(4);
        let v2 = BTreeMap::from([("version".to_owned(), "v2".to_owned())]);
        for _ in 0..100 {
            let pick = b.pick(Some(&v2), &[], now, &mut rng).expect("v2 exists");
            assert_ne!(pick.address(), addr(1));
            assert_eq!(pick.labels().get("version").map(String::as_str), Some("v2"));
        }
        let v2a = BTreeMap::from([
            ("version".to_owned(), "v2".to_owned()),
            ("zone".to_owned(), "a".to_owned()),
        ]);
        let pick = b.pick(Some(&v2a), &[], now, &mut rng).expect("e3");
        assert_eq!(pick.address(), addr(3));
        assert_eq!(pick.workload().map(|w| w.name.as_str()), Some("w3"));
        let v3 = BTreeMap::from([("version".to_owned(), "v3".to_owned())]);
        assert!(b.pick(Some(&v3), &[], now, &mut rng).is_none());
        // An empty subset selects everything.
        assert!(b.pick(Some(&BTreeMap::new()), &[], now, &mut rng).is_some());
    }

    #[test]
    fn avoid_is_respected_unless_nothing_else_is_left() {
        let now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, None, None);
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..50 {
            let pick = b
                .pick(None, &[addr(1), addr(2)], now, &mut rng)
                .expect("e3");
            assert_eq!(pick.address(), addr(3));
        }
        let all = [addr(1), addr(2), addr(3)];
        assert!(b.pick(None, &all, now, &mut rng).is_some());
    }

    #[test]
    fn terminating_endpoints_are_used_only_when_nothing_else_is_left() {
        let now = Instant::now();
        let mut endpoints = eps(4);
        endpoints[0].terminating = true;
        endpoints[1].terminating = true;
        let b = Balancer::new(endpoints, LoadBalancer::PeakEwma, None, None);
        let counts = spread(&b, 400, now, 11);
        assert_eq!(counts.get(&addr(1)), None, "{counts:?}");
        assert_eq!(counts.get(&addr(2)), None, "{counts:?}");
        // A retry avoids what it tried among the serving ones, before any terminating one.
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..50 {
            let pick = b.pick(None, &[addr(3)], now, &mut rng).expect("e4");
            assert_eq!(pick.address(), addr(4));
        }
        // Only terminating endpoints carry the subset: they still answer (kube-proxy's rule).
        let pick = b.pick(Some(&only(1)), &[], now, &mut rng);
        assert_eq!(pick.map(|p| p.address()), Some(addr(1)));
        // Everything terminating: all of them share the load.
        let all_leaving: Vec<Endpoint> = eps(2)
            .into_iter()
            .map(|e| Endpoint {
                terminating: true,
                ..e
            })
            .collect();
        let b = Balancer::new(all_leaving, LoadBalancer::RoundRobin, None, None);
        let counts = spread(&b, 100, now, 12);
        assert_eq!(counts.len(), 2, "{counts:?}");
    }

    #[test]
    fn consecutive_failures_eject_until_the_time_is_up() {
        let t0 = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, outlier(3, 30, 100), None);
        assert_eq!(fail(&b, 1, t0), None);
        assert_eq!(respond(&b, 1, 5, true, t0), None);
        let ejection = fail(&b, 1, t0).expect("third failure ejects");
        assert_eq!(
            ejection,
            Ejection {
                address: addr(1),
                until: t0 + Duration::from_secs(30),
                times: 1
            }
        );
        assert_eq!(b.ejected(t0), vec![addr(1)]);
        let during = t0 + Duration::from_secs(29);
        let counts = spread(&b, 300, during, 6);
        assert_eq!(counts.get(&addr(1)), None);

        let back = t0 + Duration::from_secs(30);
        assert!(b.ejected(back).is_empty());
        let counts = spread(&b, 300, back, 6);
        assert!(counts.contains_key(&addr(1)));

        // Failing again soon after: ejected for twice as long.
        fail(&b, 1, back);
        fail(&b, 1, back);
        let again = fail(&b, 1, back).expect("ejected again");
        assert_eq!(again.times, 2);
        assert_eq!(again.until, back + Duration::from_secs(60));
    }

    #[test]
    fn success_and_cancellation_effects_on_the_failure_count() {
        let t0 = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, outlier(3, 30, 100), None);
        fail(&b, 1, t0);
        fail(&b, 1, t0);
        assert_eq!(respond(&b, 1, 5, false, t0), None); // resets
        fail(&b, 1, t0);
        fail(&b, 1, t0);
        // Cancelled neither counts nor resets.
        assert_eq!(pick_one(&b, 1, t0).finish(Outcome::Cancelled, t0), None);
        drop(pick_one(&b, 1, t0));
        assert!(b.ejected(t0).is_empty());
        assert!(fail(&b, 1, t0).is_some());
    }

    #[test]
    fn outcomes_while_ejected_do_not_count() {
        let t0 = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, outlier(2, 30, 100), None);
        let late = pick_one(&b, 1, t0);
        fail(&b, 1, t0);
        assert!(fail(&b, 1, t0).is_some());
        // A request sent before the ejection fails afterwards: no extension, no count.
        assert_eq!(late.finish(Outcome::ConnectFailure, t0), None);
        let back = t0 + Duration::from_secs(30);
        // Nor did its latency penalty survive: it gets its share again.
        let counts = spread(&b, 300, back, 13);
        assert!(counts.get(&addr(1)).copied().unwrap_or(0) > 50);
        assert_eq!(fail(&b, 1, back), None);
        assert!(fail(&b, 1, back).is_some());
    }

    #[test]
    fn ejection_times_double_up_to_the_cap_and_restart_after_recovery() {
        let mut now = Instant::now();
        let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, outlier(1, 30, 100), None);
        let mut durations = Vec::new();
        for _ in 0..6 {
            let ejection = fail(&b, 1, now).expect("ejected");
            durations.push((ejection.until - now).as_secs());
            now = ejection.until; // fails again as soon as it returns
        }
        assert_eq!(durations, vec![30, 60, 120, 240, 300, 300]);
        // Healthy for one base ejection time after returning: the count restarts.
        now += Duration::from_secs(30);
        let ejection = fail(&b, 1, now).expect("ejected");
        assert_eq!(ejection.times, 1);
        assert_eq!(ejection.until, now + Duration::from_secs(30));
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        let now = Instant::now();
        let b = Balancer::new(eps(10), LoadBalancer::PeakEwma, outlier(1, 30, 20), None);
        assert!(fail(&b, 1, now).is_some());
        assert!(fail(&b, 2, now).is_some());
        assert_eq!(fail(&b, 3, now), None);
        assert_eq!(b.ejected(now).len(), 2);
        // Once room frees up, e3's next failure ejects it.
        let later = now + Duration::from_secs(30);
        assert!(fail(&b, 3, later).is_some());
    }

    #[test]
    fn at_least_one_endpoint_may_be_ejected() {
        let now = Instant::now();
        let b = Balancer::new(eps(2), LoadBalancer::PeakEwma, outlier(1, 30, 10), None);
        assert!(fail(&b, 1, now).is_some());
        assert_eq!(fail(&b, 2, now), None);
        assert_eq!(b.ejected(now), vec![addr(1)]);
    }

    #[test]
    fn zero_settings_turn_outlier_detection_off() {
        let now = Instant::now();
        for config in [outlier(0, 30, 100), outlier(1, 0, 100), outlier(1, 30, 0)] {
            let b = Balancer::new(eps(3), LoadBalancer::PeakEwma, config, None);
            assert_eq!(fail(&b, 1, now), None);
            assert!(b.ejected(now).is_empty());
        }
    }

    #[test]
    fn panic_mode_uses_ejected_endpoints_when_nothing_else_is_left() {
        let now = Instant::now();
        let endpoints = vec![
            ep(1, &[("version", "v1")]),
            ep(2, &[("version", "v2")]),
            ep(3, &[("version", "v2")]),
        ];
        let b = Balancer::new(endpoints, LoadBalancer::PeakEwma, outlier(1, 30, 100), None);
        assert!(fail(&b, 1, now).is_some());
        let mut rng = fastrand::Rng::with_seed(8);
        let v1 = BTreeMap::from([("version".to_owned(), "v1".to_owned())]);
        let pick = b.pick(Some(&v1), &[], now, &mut rng).expect("panic mode");
        assert_eq!(pick.address(), addr(1));
        drop(pick);
        // The whole port ejected: still an answer, and `avoid` still steers.
        assert!(fail(&b, 2, now).is_some());
        assert!(fail(&b, 3, now).is_some());
        assert_eq!(b.ejected(now).len(), 3);
        for _ in 0..20 {
            let pick = b
                .pick(None, &[addr(1), addr(2)], now, &mut rng)
                .expect("panic mode");
            assert_eq!(pick.address(), addr(3));
        }
        // Some endpoints healthy: ejected ones are not used, even against `avoid`.
        let b = Balancer::new(eps(2), LoadBalancer::PeakEwma, outlier(1, 30, 100), None);
        assert!(fail(&b, 1, now).is_some());
        let pick = b.pick(None, &[addr(2)], now, &mut rng).expect("e2");
        assert_eq!(pick.address(), addr(2));
    }

    #[test]
    fn previous_balancer_state_is_carried_over() {
        let now = Instant::now();
        let old = Balancer::new(eps(3), LoadBalancer::PeakEwma, outlier(1, 30, 100), None);
        respond(&old, 2, 200, false, now);
        assert!(fail(&old, 1, now).is_some());
        let held = pick_one(&old, 3, now);

        // e1, e2 and e3 stay (e3 relabelled), e4 is new.
        let mut endpoints = eps(2);
        endpoints.push(ep(3, &[("version", "v2")]));
        endpoints.push(ep(4, &[]));
        let new = Balancer::new(
            endpoints,
            LoadBalancer::PeakEwma,
            outlier(1, 30, 100),
            Some(&old),
        );
        assert_eq!(new.ejected(now), vec![addr(1)]);
        assert_eq!(new.in_flight(addr(3)), Some(1));
        assert_eq!(new.in_flight(addr(4)), Some(0));
        // The slow estimate of e2 came along: traffic goes to e3 and e4.
        let counts = spread(&new, 500, now, 12);
        assert!(counts.get(&addr(2)).copied().unwrap_or(0) < 25);
        assert_eq!(counts.get(&addr(1)), None);
        // A pick made on the old balancer reports into the shared state.
        drop(held);
        assert_eq!(new.in_flight(addr(3)), Some(0));
        drop(old);
        assert_eq!(
            new.ejected(now + Duration::from_secs(30)),
            Vec::<SocketAddr>::new()
        );
    }

    #[test]
    fn dropping_or_finishing_a_pick_releases_its_slot() {
        let now = Instant::now();
        let b = Balancer::new(eps(2), LoadBalancer::LeastRequest, None, None);
        let pick = pick_one(&b, 1, now);
        assert_eq!(b.in_flight(addr(1)), Some(1));
        drop(pick);
        assert_eq!(b.in_flight(addr(1)), Some(0));
        let pick = pick_one(&b, 1, now);
        let outcome = Outcome::Response {
            latency: Duration::from_millis(3),
            failure: false,
        };
        assert_eq!(pick.finish(outcome, now), None);
        assert_eq!(b.in_flight(addr(1)), Some(0));
        assert_eq!(b.in_flight(addr(9)), None);
    }
}
