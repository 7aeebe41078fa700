//! The one catalogue of the reasons a proxy gives for a response it makes itself (the
//! `x-skein-error` header, the `reason` label of `skein_proxy_local_responses_total`, the
//! first word of the plain-text body) and for the connections it refuses: each reason's stable
//! name, what it means in plain words, and what to do about it. The proxy's messages, its
//! recent errors (`/debug/recent-errors`) and `skein explain` all read it from here.

use serde::{Serialize, Serializer};

/// Why the proxy answered (or refused) instead of the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An AccessPolicy of the called pod refuses the request.
    AccessDenied,
    /// Plaintext to a port whose mTLS mode is Strict.
    MtlsRequired,
    /// A destination outside the mesh that the outbound policy does not let out.
    EgressBlocked,
    /// The Service has no endpoint that can take the request.
    NoEndpoints,
    /// The chosen endpoint could not be connected to (or its TLS handshake failed).
    ConnectFailure,
    /// The route's timeout or its retry policy's per-try timeout passed.
    Timeout,
    /// The Service's circuit breaker (`maxPendingRequests`/`maxConnections`) is full.
    Overloaded,
    /// The upstream broke the connection or stream before a whole response.
    UpstreamReset,
    /// A RouteRule's fault injection aborted the request on purpose.
    FaultAbort,
    /// The client's request body could not be read.
    ClientBodyError,
    /// The upstream answered `101` to a request the proxy had not upgraded.
    UpstreamProtocolSwitch,
}

impl Reason {
    /// Every reason, for the catalogue's listing and its tests.
    pub const ALL: [Reason; 11] = [
        Reason::AccessDenied,
        Reason::MtlsRequired,
        Reason::EgressBlocked,
        Reason::NoEndpoints,
        Reason::ConnectFailure,
        Reason::Timeout,
        Reason::Overloaded,
        Reason::UpstreamReset,
        Reason::FaultAbort,
        Reason::ClientBodyError,
        Reason::UpstreamProtocolSwitch,
    ];

    /// The stable name: the `x-skein-error` value and the metrics' `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::AccessDenied => "access-denied",
            Reason::MtlsRequired => "mtls-required",
            Reason::EgressBlocked => "egress-blocked",
            Reason::NoEndpoints => "no-endpoints",
            Reason::ConnectFailure => "connect-failure",
            Reason::Timeout => "timeout",
            Reason::Overloaded => "overloaded",
            Reason::UpstreamReset => "upstream-reset",
            Reason::FaultAbort => "fault-abort",
            Reason::ClientBodyError => "client-body-error",
            Reason::UpstreamProtocolSwitch => "upstream-protocol-switch",
        }
    }

    /// What it means, in plain words.
    pub const fn meaning(self) -> &'static str {
        match self {
            Reason::AccessDenied => {
                "an AccessPolicy that selects the called pod refuses this caller or request; \
                 the request never reached the app"
            }
            Reason::MtlsRequired => {
                "the called port takes mutual TLS only (mTLS mode Strict) and the client spoke \
                 plaintext; only the kubelet's probes may"
            }
            Reason::EgressBlocked => {
                "the destination is outside the mesh and the outbound policy (RegistryOnly) \
                 has no EgressRule allowing it"
            }
            Reason::NoEndpoints => {
                "the Service has no endpoint that can take the request: none ready, none \
                 with the labels the route picked, or every one ejected by outlier detection"
            }
            Reason::ConnectFailure => {
                "the proxy could not open a connection (or mutual TLS) to the chosen endpoint"
            }
            Reason::Timeout => "the upstream did not answer within the route's timeout",
            Reason::Overloaded => {
                "the Service's circuit breaker is full (TrafficPolicy maxPendingRequests or \
                 maxConnections): the request was refused without being sent"
            }
            Reason::UpstreamReset => {
                "the upstream closed or reset the connection before a whole response"
            }
            Reason::FaultAbort => {
                "a RouteRule's fault injection aborted the request on purpose (a test)"
            }
            Reason::ClientBodyError => "the client's request body could not be read",
            Reason::UpstreamProtocolSwitch => {
                "the upstream switched protocols (101) although no WebSocket upgrade was asked \
                 for; the proxy refused to hand it the connection unrouted"
            }
        }
    }

    /// What to do about it.
    pub const fn hint(self) -> &'static str {
        match self {
            Reason::AccessDenied => {
                "read the named policy (kubectl get accesspolicy -n NS NAME -o yaml) and allow \
                 the caller's identity, or call as an allowed workload"
            }
            Reason::MtlsRequired => {
                "mesh the client (label its namespace and restart it), or set the port's mode \
                 to Permissive in an MtlsPolicy"
            }
            Reason::EgressBlocked => {
                "add an EgressRule for the host and port, or set the MeshConfig's \
                 outboundTrafficPolicy to AllowAny"
            }
            Reason::NoEndpoints => {
                "check the Service's pods: kubectl get pods,endpointslices -n NS (are they \
                 Ready? do the route's subset labels match any?)"
            }
            Reason::ConnectFailure => {
                "is the app listening on the target port? is the endpoint's proxy up and its \
                 certificate valid (skein check)?"
            }
            Reason::Timeout => {
                "the upstream is slow: look at its latency (skein stat), or raise the \
                 RouteRule's timeout / perTryTimeout"
            }
            Reason::Overloaded => {
                "scale the upstream, or raise the TrafficPolicy's connection limits"
            }
            Reason::UpstreamReset => {
                "look at the upstream's logs for crashes or restarts; a retry policy with \
                 retryOn reset covers brief ones"
            }
            Reason::FaultAbort => "remove or lower the RouteRule's fault.abort when done testing",
            Reason::ClientBodyError => {
                "the client went away or sent a malformed body; see the client's side"
            }
            Reason::UpstreamProtocolSwitch => {
                "fix the upstream to upgrade only when asked, or send a WebSocket upgrade"
            }
        }
    }

    /// The reason named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.name() == name)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// `backend.demo.svc.cluster.local` → `demo/backend`, as people name a Service; any other
/// name as it is.
pub fn service_ref(canonical: &str) -> String {
    let mut labels = canonical.split('.');
    match (labels.next(), labels.next(), labels.next()) {
        (Some(name), Some(namespace), Some("svc")) => format!("{namespace}/{name}"),
        _ => canonical.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_name_a_meaning_and_a_hint() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len(), "names are distinct");
        for reason in Reason::ALL {
            assert!(!reason.meaning().is_empty() && !reason.hint().is_empty());
            assert_eq!(Reason::from_name(reason.name()), Some(reason));
            // Header values must be plain tokens.
            assert!(
                reason
                    .name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{reason}"
            );
        }
        assert_eq!(Reason::from_name("nonsense"), None);
    }

    #[test]
    fn the_metrics_docs_list_every_reason() {
        // The proxy can only name a reason through this enum (`Local::new` takes a `Reason`);
        // the metrics' docs, which users read for the `reason` label, must list each.
        let documented = include_str!("metrics.rs");
        for reason in Reason::ALL {
            assert!(
                documented.contains(&format!("`{}`", reason.name())),
                "{reason} is listed in the metrics' reason label docs"
            );
        }
    }

    #[test]
    fn services_are_named_as_people_name_them() {
        assert_eq!(
            service_ref("backend.demo.svc.cluster.local"),
            "demo/backend"
        );
        assert_eq!(service_ref("backend.demo.svc"), "demo/backend");
        assert_eq!(service_ref("api.example.com"), "api.example.com");
        assert_eq!(service_ref(""), "");
    }
}
