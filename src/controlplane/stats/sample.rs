//! One recent failing request per proxy, shown under a FAIL row (`skein stat`, the dashboard).
//!
//! Where it comes from: each proxy's ring of recent errors (`/debug/recent-errors`,
//! [`crate::proxy::recent`]), which holds both the 5xx responses the proxy made itself and
//! the 5xx its upstream answered (an app's own 503s included). The collector reads it only
//! after a scrape in which the proxy counted failing requests, and keeps one entry per proxy:
//! memory stays one small request line per proxy, and a healthy mesh costs no extra request.
//! Requests that fail without a 5xx (a gRPC status over HTTP 200, a client gone before the
//! answer) are not in the ring, so they have no sample.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::window::cut;
use crate::proxy::recent::RecentError;

/// A failing request, as a report shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SampleRequest {
    /// The pod whose proxy saw it.
    pub pod: String,
    /// `inbound` (the workload answered it) or `outbound` (its call to another failed).
    pub direction: String,
    pub method: String,
    pub authority: String,
    /// Without the query string.
    pub path: String,
    pub status: u16,
    /// The `x-skein-error` reason, when a proxy answered itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the proxy saw it (RFC 3339, the proxy's clock).
    pub at: String,
    /// Its age when the report was made (the control plane's clock).
    #[serde(default)]
    pub age_seconds: f64,
    /// Its trace (32 lowercase hex digits), when the proxy sampled it: the dashboard links it
    /// to the tracing UI (`tracing.traceUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl SampleRequest {
    /// `GET backend/api 503 (backend-v1-7f9c-x2x, inbound, 4s ago)`; the reason after the
    /// status when a proxy made the response.
    pub fn line(&self) -> String {
        let reason = self
            .reason
            .as_ref()
            .map(|r| format!(" x-skein-error {r}"))
            .unwrap_or_default();
        let trace = self
            .trace_id
            .as_ref()
            .map(|id| format!(", trace {id}"))
            .unwrap_or_default();
        format!(
            "{} {}{} {}{reason} ({}, {}, {:.0}s ago{trace})",
            self.method,
            self.authority,
            self.path,
            self.status,
            self.pod,
            self.direction,
            self.age_seconds.max(0.0),
        )
    }
}

/// A trace id as W3C and Zipkin write it; anything else a proxy reports is dropped, since the
/// dashboard puts it into a link.
fn trace_id(text: &str) -> Option<String> {
    let valid = text.len() == 32
        && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && text.bytes().any(|b| b != b'0');
    valid.then(|| text.to_owned())
}

/// The entry of a proxy's recent errors (oldest first) to show: the newest 5xx it answered
/// inbound (what the workload's row counts), else the newest 5xx of its calls out.
pub fn pick(errors: &[RecentError]) -> Option<&RecentError> {
    let failing = || errors.iter().rev().filter(|e| e.status >= 500);
    failing()
        .find(|e| e.direction == "inbound")
        .or_else(|| failing().next())
}

/// What the store keeps of `error`, seen by `pod`'s proxy: strings cut as label values are,
/// and when it happened. `None` when its time does not parse (not a proxy's entry).
pub fn keep(pod: &str, error: &RecentError) -> Option<(Timestamp, SampleRequest)> {
    let at: Timestamp = error.at.parse().ok()?;
    Some((
        at,
        SampleRequest {
            pod: cut(pod),
            direction: cut(&error.direction),
            method: cut(&error.method),
            authority: cut(&error.authority),
            path: cut(&error.path),
            status: error.status,
            reason: error.reason.as_deref().map(cut),
            at: cut(&error.at),
            age_seconds: 0.0,
            trace_id: error.trace_id.as_deref().and_then(trace_id),
        },
    ))
}

/// `sample` as of `now`, if it happened within the last `window` seconds (a clock slightly
/// ahead on the proxy's node counts as now).
pub fn within(
    (at, sample): &(Timestamp, SampleRequest),
    now: Timestamp,
    window: f64,
) -> Option<SampleRequest> {
    let age = now.duration_since(*at).as_secs_f64().max(0.0);
    (age <= window).then(|| SampleRequest {
        age_seconds: age,
        ..sample.clone()
    })
}

/// Of two samples, the more recent.
pub fn newest(a: Option<SampleRequest>, b: Option<SampleRequest>) -> Option<SampleRequest> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.age_seconds < a.age_seconds { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::stats::window::MAX_LABEL_BYTES;

    fn error(direction: &str, status: u16, at: &str) -> RecentError {
        RecentError {
            at: at.into(),
            direction: direction.into(),
            method: "GET".into(),
            authority: "backend".into(),
            path: "/api".into(),
            status,
            reason: None,
            message: None,
            upstream: None,
            attempts: 1,
            trace_id: None,
        }
    }

    #[test]
    fn the_newest_inbound_failure_is_picked_first() {
        let errors = [
            error("inbound", 503, "2026-01-01T10:00:00Z"),
            error("inbound", 502, "2026-01-01T10:00:01Z"),
            error("outbound", 504, "2026-01-01T10:00:02Z"),
            error("inbound", 403, "2026-01-01T10:00:03Z"),
        ];
        assert_eq!(pick(&errors).map(|e| e.status), Some(502));
        assert_eq!(
            pick(&errors[2..]).map(|e| e.status),
            Some(504),
            "else its calls out"
        );
        assert_eq!(pick(&errors[3..]), None, "a 403 is not a failure");
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn a_kept_sample_ages_out_of_the_window() {
        let mut failed = error("inbound", 503, "2026-01-01T10:00:00Z");
        failed.path = "/".repeat(10_000);
        failed.reason = Some("connect-failure".into());
        let kept = keep("backend-v1-abc", &failed).expect("kept");
        assert_eq!(kept.1.path.len(), MAX_LABEL_BYTES, "cut");
        let now: Timestamp = "2026-01-01T10:00:04Z".parse().unwrap();
        let shown = within(&kept, now, 30.0).expect("within the window");
        assert_eq!(shown.age_seconds, 4.0);
        assert_eq!(
            SampleRequest {
                path: "/api".into(),
                ..shown
            }
            .line(),
            "GET backend/api 503 x-skein-error connect-failure (backend-v1-abc, inbound, 4s ago)"
        );
        let later: Timestamp = "2026-01-01T10:01:00Z".parse().unwrap();
        assert_eq!(within(&kept, later, 30.0), None);
        let early: Timestamp = "2026-01-01T09:59:59Z".parse().unwrap();
        assert_eq!(within(&kept, early, 30.0).map(|s| s.age_seconds), Some(0.0));
        assert!(keep("p", &error("inbound", 503, "yesterday")).is_none());
    }

    #[test]
    fn a_sampled_failure_keeps_its_trace_id_and_nothing_else_passes_for_one() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut failed = error("inbound", 503, "2026-01-01T10:00:00Z");
        failed.trace_id = Some(id.into());
        let kept = keep("backend-v1-abc", &failed).expect("kept").1;
        assert_eq!(kept.trace_id.as_deref(), Some(id));
        assert!(
            kept.line().ends_with(&format!(", trace {id})")),
            "{}",
            kept.line()
        );
        for bad in [
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6",
            "javascript:alert(1)/////////////",
        ] {
            failed.trace_id = Some(bad.into());
            assert_eq!(keep("p", &failed).expect("kept").1.trace_id, None, "{bad}");
        }
    }

    #[test]
    fn the_newest_of_two_samples_wins() {
        let aged = |age_seconds| {
            Some(SampleRequest {
                age_seconds,
                ..SampleRequest::default()
            })
        };
        assert_eq!(newest(aged(5.0), aged(2.0)), aged(2.0));
        assert_eq!(newest(aged(1.0), aged(2.0)), aged(1.0));
        assert_eq!(newest(None, aged(2.0)), aged(2.0));
        assert_eq!(newest(None, None), None);
    }
}
