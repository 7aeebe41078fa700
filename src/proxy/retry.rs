//! Retry decisions of an HTTP route: which outcomes a [`RetryPolicy`] retries, how long to back
//! off, and the per-route [`RetryBudget`] that keeps retries from multiplying the load on an
//! upstream that is already failing. Pure logic; the forwarding code does the I/O.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{RetryBudget as RetryBudgetConfig, RetryOn, RetryPolicy};

/// The largest request body kept in memory so a retry can send it again. Requests with a larger
/// body, or one of unknown length that grows past this, are sent once and never retried (the
/// forwarding code enforces it): buffering more would let one request pin unbounded memory.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

/// gRPC status codes the policy can name.
const GRPC_CANCELLED: i32 = 1;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

/// What one attempt ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// No connection to the endpoint could be made.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the server did not process the request.
    RefusedStream,
    /// The connection or stream was reset or closed before a response.
    Reset,
    /// The per-try timeout fired.
    PerTryTimeout,
    /// A response head arrived.
    Response {
        status: http::StatusCode,
        grpc_status: Option<i32>,
    },
}

/// What an attempt counts as for the retry policy. Nothing of a response came back in two more
/// cases than a refused connection, and both are as safe to send again, whatever the method:
/// - the connection was reset or closed before any byte of a response (the keep-alive race with
///   a server closing an idle connection as the request went out, or a pod going away);
/// - the upstream pod's own proxy answered for its app that the app refused the connection or
///   reset it before answering (`x-skein-error: connect-failure` or `upstream-reset` on a 5xx):
///   the app is stopping or restarting, and another endpoint may well answer.
///
/// Both count as `ConnectFailure`, which the mesh's default policy retries.
pub fn retried_as(
    outcome: AttemptOutcome,
    response_headers: Option<&http::HeaderMap>,
) -> AttemptOutcome {
    match outcome {
        AttemptOutcome::Reset => AttemptOutcome::ConnectFailure,
        AttemptOutcome::Response { status, .. }
            if status.is_server_error()
                && response_headers
                    .and_then(|headers| headers.get(crate::http::ERROR_HEADER))
                    .is_some_and(|reason| {
                        reason == "connect-failure" || reason == "upstream-reset"
                    }) =>
        {
            AttemptOutcome::ConnectFailure
        }
        other => other,
    }
}

/// The `grpc-status` of response headers: trailers-only gRPC responses (errors without a body)
/// carry it there. Anything but plain decimal digits is `None`, so garbage never looks like a
/// status worth retrying.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    let text = headers.get("grpc-status")?.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `policy` retries `outcome`. A successful response (2xx without a gRPC error) is never
/// retried, whatever the policy lists.
pub fn should_retry(policy: &RetryPolicy, outcome: &AttemptOutcome) -> bool {
    if let AttemptOutcome::Response {
        status,
        grpc_status,
    } = outcome
        && status.is_success()
        && matches!(grpc_status, None | Some(0))
    {
        return false;
    }
    policy
        .retry_on
        .iter()
        .any(|on| retries(*on, &policy.retriable_status_codes, outcome))
}

fn retries(on: RetryOn, codes: &[u16], outcome: &AttemptOutcome) -> bool {
    use AttemptOutcome as O;
    let (status, grpc) = match outcome {
        O::Response {
            status,
            grpc_status,
        } => (Some(status.as_u16()), *grpc_status),
        _ => (None, None),
    };
    match on {
        RetryOn::ConnectFailure => matches!(outcome, O::ConnectFailure),
        RetryOn::RefusedStream => matches!(outcome, O::RefusedStream),
        RetryOn::Reset => matches!(outcome, O::Reset | O::PerTryTimeout),
        // No response at all is as much a server failure as a 5xx; a refused stream is the
        // safest retry there is.
        RetryOn::FiveXx => match status {
            Some(status) => (500..600).contains(&status),
            None => true,
        },
        RetryOn::GatewayError => matches!(status, Some(502..=504)),
        RetryOn::RetriableStatusCodes => status.is_some_and(|status| codes.contains(&status)),
        RetryOn::Unavailable => grpc == Some(GRPC_UNAVAILABLE),
        RetryOn::Cancelled => grpc == Some(GRPC_CANCELLED),
        RetryOn::DeadlineExceeded => grpc == Some(GRPC_DEADLINE_EXCEEDED),
    }
}

/// Back-off before retry number `retry` (1-based): uniform in `[0, min(max, base × 2^(retry-1))]`.
/// Full jitter spreads the retries of many clients that failed at the same moment.
pub fn backoff(policy: &RetryPolicy, retry: u32, rng: &mut fastrand::Rng) -> Duration {
    let max = policy.max_backoff.as_std();
    let ceiling = 1u32
        .checked_shl(retry.saturating_sub(1))
        .and_then(|factor| policy.base_backoff.as_std().checked_mul(factor))
        .map_or(max, |grown| grown.min(max));
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..=nanos))
}

/// Buckets of the sliding window: enough to slide smoothly, few enough to sum in O(1).
const BUCKETS: usize = 10;

/// Retry budget shared by all requests of one route (behind an `Arc`, across tasks): retries in
/// the last window may not exceed `percent`% of its requests plus `min_per_second` × window.
#[derive(Debug)]
pub struct RetryBudget {
    /// Percentage of requests that may be retried.
    percent: f64,
    /// Retries allowed per window even without requests, so rare requests can still retry.
    reserve: f64,
    bucket_width: Duration,
    state: Mutex<Window>,
}

/// A ring of buckets, each counting one slice of the window. Held for a few additions only.
#[derive(Debug)]
struct Window {
    /// The first instant seen: slices are counted from it.
    origin: Option<Instant>,
    buckets: [Bucket; BUCKETS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Which slice (since `origin`) the counts belong to; stale slices are reset on reuse.
    slice: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    pub fn new(config: &RetryBudgetConfig) -> Self {
        let window = config.window.as_std();
        // A zero window would divide by zero; a nanosecond-wide one just forgets at once.
        let bucket_width = (window / BUCKETS as u32).max(Duration::from_nanos(1));
        let percent = if config.percent.is_finite() {
            config.percent.max(0.0)
        } else {
            0.0
        };
        Self {
            percent,
            reserve: f64::from(config.min_per_second) * window.as_secs_f64(),
            bucket_width,
            state: Mutex::new(Window {
                origin: None,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    /// Counts a request (its first attempt).
    pub fn record_request(&self, now: Instant) {
        self.with_current(now, |window, index| {
            window.buckets[index].requests += 1;
        });
    }

    /// Asks to retry: `true`, and counted, only if the retries of the last window stay within
    /// the budget with this one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let (percent, reserve) = (self.percent, self.reserve);
        self.with_current(now, |window, index| {
            let current = window.buckets[index].slice;
            let (requests, retries) = window
                .buckets
                .iter()
                .filter(|b| b.slice <= current && current - b.slice < BUCKETS as u64)
                .fold((0u64, 0u64), |(q, r), b| (q + b.requests, r + b.retries));
            // Compared without dividing, so whole percents of whole counts are exact.
            let allowed = requests as f64 * percent + reserve * 100.0;
            if (retries + 1) as f64 * 100.0 <= allowed {
                window.buckets[index].retries += 1;
                true
            } else {
                false
            }
        })
    }

    /// Runs `f` on the window with the index of `now`'s bucket, reset if it held an old slice.
    fn with_current<T>(&self, now: Instant, f: impl FnOnce(&mut Window, usize) -> T) -> T {
        // The counts stay consistent at every step, so a poisoned lock is still usable.
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let origin = *window.origin.get_or_insert(now);
        // An instant from before the origin (tasks racing) counts in the first slice.
        let elapsed = now.saturating_duration_since(origin).as_nanos();
        let slice = u64::try_from(elapsed / self.bucket_width.as_nanos()).unwrap_or(u64::MAX);
        let index = (slice % BUCKETS as u64) as usize;
        let bucket = &mut window.buckets[index];
        if bucket.slice != slice {
            *bucket = Bucket {
                slice,
                ..Bucket::default()
            };
        }
        f(&mut window, index)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use skein_core::duration as api;

    #[test]
    fn a_reset_or_a_peer_proxys_word_that_its_app_never_answered_count_as_connect_failures() {
        use AttemptOutcome as O;
        assert_eq!(retried_as(O::Reset, None), O::ConnectFailure);
        assert_eq!(retried_as(O::RefusedStream, None), O::RefusedStream);
        assert_eq!(retried_as(O::PerTryTimeout, None), O::PerTryTimeout);
        let response = |code: u16| O::Response {
            status: http::StatusCode::from_u16(code).expect("status"),
            grpc_status: None,
        };
        let said = |reason: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                crate::http::ERROR_HEADER,
                http::HeaderValue::from_static(reason),
            );
            headers
        };
        for reason in ["connect-failure", "upstream-reset"] {
            assert_eq!(
                retried_as(response(503), Some(&said(reason))),
                O::ConnectFailure
            );
            assert_eq!(
                retried_as(response(502), Some(&said(reason))),
                O::ConnectFailure
            );
            // Only an error response means the app never answered.
            assert_eq!(
                retried_as(response(200), Some(&said(reason))),
                response(200)
            );
        }
        // Any other 503 is the app's (or another failure's) answer: left to the policy.
        assert_eq!(retried_as(response(503), None), response(503));
        assert_eq!(
            retried_as(response(503), Some(&said("timeout"))),
            response(503)
        );
        let default = policy(&[RetryOn::ConnectFailure]);
        assert!(should_retry(
            &default,
            &retried_as(response(503), Some(&said("connect-failure")))
        ));
    }

    fn policy(retry_on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: retry_on.to_vec(),
            retriable_status_codes: vec![409],
            base_backoff: api::Duration::from_millis(25),
            max_backoff: api::Duration::from_millis(250),
            budget: RetryBudgetConfig::default(),
        }
    }

    fn response(status: u16, grpc_status: Option<i32>) -> AttemptOutcome {
        AttemptOutcome::Response {
            status: http::StatusCode::from_u16(status).expect("status"),
            grpc_status,
        }
    }

    /// Every outcome the tests try, for checking what a single `RetryOn` retries.
    fn all_outcomes() -> Vec<AttemptOutcome> {
        let mut outcomes = vec![
            AttemptOutcome::ConnectFailure,
            AttemptOutcome::RefusedStream,
            AttemptOutcome::Reset,
            AttemptOutcome::PerTryTimeout,
        ];
        for status in [
            200, 204, 301, 400, 404, 409, 429, 500, 501, 502, 503, 504, 599,
        ] {
            outcomes.push(response(status, None));
        }
        for grpc in 0..=16 {
            outcomes.push(response(200, Some(grpc)));
        }
        outcomes
    }

    fn retried_by(on: RetryOn) -> Vec<AttemptOutcome> {
        let policy = policy(&[on]);
        all_outcomes()
            .into_iter()
            .filter(|outcome| should_retry(&policy, outcome))
            .collect()
    }

    #[test]
    fn connect_failure() {
        assert_eq!(
            retried_by(RetryOn::ConnectFailure),
            [AttemptOutcome::ConnectFailure]
        );
    }

    #[test]
    fn refused_stream() {
        assert_eq!(
            retried_by(RetryOn::RefusedStream),
            [AttemptOutcome::RefusedStream]
        );
    }

    #[test]
    fn reset_includes_per_try_timeout() {
        assert_eq!(
            retried_by(RetryOn::Reset),
            [AttemptOutcome::Reset, AttemptOutcome::PerTryTimeout]
        );
    }

    #[test]
    fn five_xx_includes_failures_without_response() {
        let mut expected = vec![
            AttemptOutcome::ConnectFailure,
            AttemptOutcome::RefusedStream,
            AttemptOutcome::Reset,
            AttemptOutcome::PerTryTimeout,
        ];
        expected.extend([500, 501, 502, 503, 504, 599].map(|s| response(s, None)));
        assert_eq!(retried_by(RetryOn::FiveXx), expected);
    }

    #[test]
    fn gateway_error() {
        assert_eq!(
            retried_by(RetryOn::GatewayError),
            [502, 503, 504].map(|s| response(s, None))
        );
    }

    #[test]
    fn retriable_status_codes() {
        assert_eq!(
            retried_by(RetryOn::RetriableStatusCodes),
            [response(409, None)]
        );
        let mut policy = policy(&[RetryOn::RetriableStatusCodes]);
        policy.retriable_status_codes.clear();
        assert!(!should_retry(&policy, &response(409, None)));
    }

    #[test]
    fn grpc_codes() {
        assert_eq!(retried_by(RetryOn::Unavailable), [response(200, Some(14))]);
        assert_eq!(retried_by(RetryOn::Cancelled), [response(200, Some(1))]);
        assert_eq!(
            retried_by(RetryOn::DeadlineExceeded),
            [response(200, Some(4))]
        );
        // A gRPC error on a non-200 response still counts.
        let policy = policy(&[RetryOn::Unavailable]);
        assert!(should_retry(&policy, &response(503, Some(14))));
    }

    #[test]
    fn success_is_never_retried() {
        let everything = policy(&[
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Reset,
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::RetriableStatusCodes,
            RetryOn::Unavailable,
            RetryOn::Cancelled,
            RetryOn::DeadlineExceeded,
        ]);
        let mut listing_200 = everything.clone();
        listing_200.retriable_status_codes = vec![200, 204];
        for policy in [everything, listing_200] {
            assert!(!should_retry(&policy, &response(200, None)));
            assert!(!should_retry(&policy, &response(200, Some(0))));
            assert!(!should_retry(&policy, &response(204, None)));
            assert!(should_retry(&policy, &response(200, Some(14))));
        }
        assert!(!should_retry(&policy(&[]), &AttemptOutcome::ConnectFailure));
    }

    #[test]
    fn grpc_status_parsing() {
        let parse = |value: &[u8]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "grpc-status",
                http::HeaderValue::from_bytes(value).expect("value"),
            );
            grpc_status(&headers)
        };
        assert_eq!(grpc_status(&http::HeaderMap::new()), None);
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(parse(b"14"), Some(14));
        assert_eq!(parse(b" 4 "), Some(4));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"abc",
            b"1.5",
            b"1 4",
            b"99999999999",
            b"\xff",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_stays_within_the_growing_ceiling() {
        let policy = policy(&[]);
        let mut rng = fastrand::Rng::with_seed(7);
        for (retry, ceiling_ms) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (6, 250)] {
            let ceiling = Duration::from_millis(ceiling_ms);
            let samples: Vec<_> = (0..2000)
                .map(|_| backoff(&policy, retry, &mut rng))
                .collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Full jitter: the samples spread over the whole range.
            let max = samples.iter().max().copied().unwrap_or_default();
            let min = samples.iter().min().copied().unwrap_or_default();
            assert!(max > ceiling * 9 / 10, "retry {retry}: max {max:?}");
            assert!(min < ceiling / 10, "retry {retry}: min {min:?}");
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let policy = policy(&[]);
        let mean = |retry: u32| {
            let mut rng = fastrand::Rng::with_seed(42);
            (0..4000)
                .map(|_| backoff(&policy, retry, &mut rng))
                .sum::<Duration>()
                / 4000
        };
        assert!(mean(2) > mean(1) * 3 / 2);
        assert!(mean(3) > mean(2) * 3 / 2);
        let cap = Duration::from_millis(250);
        let mut rng = fastrand::Rng::with_seed(1);
        for retry in [0, 10, 31, 32, 33, 64, 1000, u32::MAX] {
            assert!(backoff(&policy, retry, &mut rng) <= cap, "retry {retry}");
        }
        assert_eq!(mean(5), mean(40), "capped retries draw from the same range");
    }

    #[test]
    fn backoff_zero_base_is_zero() {
        let mut policy = policy(&[]);
        policy.base_backoff = api::Duration::from_millis(0);
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(backoff(&policy, 3, &mut rng), Duration::ZERO);
    }

    fn budget(percent: f64, min_per_second: u32, window_secs: u64) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig {
            percent,
            min_per_second,
            window: api::Duration::from_secs(window_secs),
        })
    }

    #[test]
    fn budget_allows_the_percentage_of_requests() {
        let budget = budget(20.0, 0, 10);
        let now = Instant::now();
        assert!(!budget.try_withdraw(now), "no requests, no reserve");
        for _ in 0..100 {
            budget.record_request(now);
        }
        let granted = (0..100).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 20);
        budget.record_request(now + Duration::from_secs(1));
        budget.record_request(now + Duration::from_secs(2));
        budget.record_request(now + Duration::from_secs(3));
        budget.record_request(now + Duration::from_secs(4));
        budget.record_request(now + Duration::from_secs(4));
        assert!(budget.try_withdraw(now + Duration::from_secs(5)));
        assert!(!budget.try_withdraw(now + Duration::from_secs(5)));
    }

    #[test]
    fn budget_window_expiry_refills() {
        let budget = budget(0.0, 2, 10);
        let start = Instant::now();
        let granted = |at: Instant| (0..100).filter(|_| budget.try_withdraw(at)).count();
        assert_eq!(granted(start), 20, "2/s over 10s");
        assert_eq!(granted(start + Duration::from_secs(5)), 0, "still spent");
        assert_eq!(granted(start + Duration::from_millis(9_500)), 0);
        // The first slice has left the window: its retries no longer count.
        assert_eq!(granted(start + Duration::from_secs(10)), 20);
        // Long idle gaps (many windows) forget everything too.
        assert_eq!(granted(start + Duration::from_secs(1_000)), 20);
    }

    #[test]
    fn budget_requests_expire_too() {
        let budget = budget(50.0, 0, 10);
        let start = Instant::now();
        for _ in 0..10 {
            budget.record_request(start);
        }
        assert!(budget.try_withdraw(start + Duration::from_secs(9)));
        assert!(!budget.try_withdraw(start + Duration::from_secs(10)));
    }

    #[test]
    fn budget_min_per_second_without_requests() {
        let budget = budget(20.0, 1, 10);
        let now = Instant::now();
        let granted = (0..100).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn budget_tolerates_odd_configs_and_instants() {
        let now = Instant::now();
        let zero_window = budget(20.0, 10, 0);
        zero_window.record_request(now);
        assert!(!zero_window.try_withdraw(now));
        let nan = budget(f64::NAN, 0, 10);
        nan.record_request(now);
        assert!(!nan.try_withdraw(now));
        // An instant before the first one seen counts as the first slice.
        let budget = budget(100.0, 0, 10);
        budget.record_request(now + Duration::from_secs(1));
        assert!(budget.try_withdraw(now));
    }

    #[test]
    fn budget_is_shared_across_threads() {
        let budget = Arc::new(budget(20.0, 0, 10));
        let now = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        budget.record_request(now);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
        let granted: usize = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..50).filter(|_| budget.try_withdraw(now)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .sum();
        assert_eq!(granted, 40);
    }

    #[test]
    fn poisoned_lock_keeps_working() {
        let budget = Arc::new(budget(100.0, 0, 10));
        let now = Instant::now();
        let poisoner = budget.clone();
        let _ = std::thread::spawn(move || {
            poisoner.with_current(now, |_, _| panic!("poison the lock"))
        })
        .join();
        assert!(budget.state.is_poisoned());
        budget.record_request(now);
        assert!(budget.try_withdraw(now));
    }
}
