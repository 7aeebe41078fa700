//! A [`ProxyConfig`] made ready for traffic: lookups by address and host name, compiled routes
//! and egress rules, and one balancer per destination port. Built once per config change;
//! requests read the current one through [`ConfigStore`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::types::{
    Destination, DestinationPort, Limits, OutboundTrafficPolicy, Protocol, ProxyConfig, Workload,
};
use crate::balance::Balancer;
use crate::egress::{EgressError, EgressPolicy};
use crate::retry::RetryBudget;
use crate::routes::{RouteError, RouteTable};
use skein_core::identity::SpiffeId;

/// Why a configuration was refused (the previous one stays active).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("destination {destination:?}: {source}")]
    Routes {
        destination: String,
        #[source]
        source: Box<RouteError>,
    },
    #[error("egress: {0}")]
    Egress(#[from] EgressError),
    #[error("destination {destination:?}: {problem}")]
    Destination {
        destination: String,
        problem: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One port of one destination, as requests to it need it.
#[derive(Debug)]
pub struct Service {
    /// The destination's canonical name (`destination_service` in metrics).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub balancer: Balancer,
    pub routes: RouteTable,
    /// One retry budget per route (same index), shared by all requests on it.
    pub retry_budgets: Vec<Arc<RetryBudget>>,
    pub limits: Limits,
    /// Endpoints the control plane saw that cannot take requests (not ready), for messages.
    pub not_ready: u32,
    /// Requests in flight or waiting, for `maxPendingRequests`.
    pub pending: std::sync::atomic::AtomicU32,
}

/// The active configuration, compiled.
#[derive(Debug)]
pub struct Compiled {
    /// The configuration as given, for `/config`.
    pub source: ProxyConfig,
    by_address: HashMap<SocketAddr, Arc<Service>>,
    by_host: HashMap<(String, u16), Arc<Service>>,
    pub egress: EgressPolicy,
    pub opaque_ports: HashSet<u16>,
    workloads: HashMap<IpAddr, Workload>,
    /// Endpoints that accept mutual TLS, and as whom.
    identities: HashMap<SocketAddr, SpiffeId>,
    /// The identity of the workload at an address (any of its ports), to trust an inbound
    /// peer's address only when its certificate says the same.
    identities_by_ip: HashMap<IpAddr, SpiffeId>,
    /// Meshed endpoints whose proxy takes HTTP/1 requests over HTTP/2.
    http2_upgrade: HashSet<SocketAddr>,
    /// No `--config`: forward everything to its original destination, as before a mesh.
    pub passthrough: bool,
    /// A stand-in until the control plane's first configuration: nothing is known yet, and under
    /// `RegistryOnly` every unknown destination is refused (see `proxy::egress`).
    pub awaiting_first: bool,
}

impl Compiled {
    /// Validates and compiles `config`; `previous` lends its balancers' state (latency
    /// estimates, ejections) to endpoints that are still there.
    pub fn new(config: ProxyConfig, previous: Option<&Compiled>) -> Result<Self, ConfigError> {
        let egress = EgressPolicy::compile(&config.egress)?;
        if config.detect_timeout.as_std().is_zero() {
            return Err(ConfigError::Invalid(
                "detectTimeout must be more than 0s".to_owned(),
            ));
        }
        let mut by_address = HashMap::new();
        let mut by_host = HashMap::new();
        let mut workloads = HashMap::new();
        let mut identities = HashMap::new();
        let mut identities_by_ip = HashMap::new();
        let mut http2_upgrade = HashSet::new();
        let mut names = HashSet::new();
        for destination in &config.destinations {
            if !names.insert(destination.name.as_str()) {
                return Err(invalid(destination, "appears twice"));
            }
            if destination.ports.is_empty() {
                return Err(invalid(destination, "has no ports"));
            }
            for port in &destination.ports {
                let previous_service =
                    previous.and_then(|p| p.service_named(&destination.name, port.port));
                let service = Arc::new(compile_service(destination, port, previous_service)?);
                for endpoint in &port.endpoints {
                    let ip = endpoint.address.ip().to_canonical();
                    if let Some(workload) = &endpoint.workload {
                        workloads.insert(ip, workload.clone());
                    }
                    if let Some(identity) = &endpoint.identity {
                        let id = identity.parse::<SpiffeId>().map_err(|err| {
                            invalid(
                                destination,
                                &format!("endpoint {}: {err}", endpoint.address),
                            )
                        })?;
                        let address = SocketAddr::new(ip, endpoint.address.port());
                        identities_by_ip.insert(ip, id.clone());
                        identities.insert(address, id);
                        if endpoint.http2_upgrade {
                            http2_upgrade.insert(address);
                        }
                    }
                }
                for address in &destination.addresses {
                    let key = SocketAddr::new(address.to_canonical(), port.port);
                    if by_address.insert(key, service.clone()).is_some() {
                        return Err(invalid(
                            destination,
                            &format!("address {key} is used twice"),
                        ));
                    }
                }
                for host in &destination.hosts {
                    let key = (normalize_host(host), port.port);
                    if by_host.insert(key, service.clone()).is_some() {
                        return Err(invalid(
                            destination,
                            &format!("host {host}:{} is used twice", port.port),
                        ));
                    }
                }
            }
        }
        Ok(Self {
            opaque_ports: config.opaque_ports.iter().copied().collect(),
            egress,
            by_address,
            by_host,
            workloads,
            identities,
            identities_by_ip,
            http2_upgrade,
            passthrough: false,
            awaiting_first: false,
            source: config,
        })
    }

    /// The configuration of a proxy started without `--config`: every connection goes to its
    /// original destination (HTTP is still understood, measured and traced).
    pub fn passthrough() -> Self {
        Self::without_configuration(OutboundTrafficPolicy::AllowAny, false)
    }

    /// What a proxy without a configuration (yet) does: nothing is known, `policy` decides on
    /// every destination. `awaiting_first`: one is coming from the control plane.
    pub fn without_configuration(policy: OutboundTrafficPolicy, awaiting_first: bool) -> Self {
        let source = ProxyConfig {
            outbound_traffic_policy: policy,
            ..ProxyConfig::default()
        };
        Self {
            opaque_ports: source.opaque_ports.iter().copied().collect(),
            egress: EgressPolicy::default(),
            by_address: HashMap::new(),
            by_host: HashMap::new(),
            workloads: HashMap::new(),
            identities: HashMap::new(),
            identities_by_ip: HashMap::new(),
            http2_upgrade: HashSet::new(),
            passthrough: true,
            awaiting_first,
            source,
        }
    }

    /// The mesh service behind a connection's original destination (a Service VIP).
    pub fn service_at(&self, original: SocketAddr) -> Option<&Arc<Service>> {
        self.by_address.get(&SocketAddr::new(
            original.ip().to_canonical(),
            original.port(),
        ))
    }

    /// The mesh service an HTTP `Host` names, on the port the connection went to.
    pub fn service_for_host(&self, host: &str, port: u16) -> Option<&Arc<Service>> {
        self.by_host.get(&(normalize_host(host), port))
    }

    fn service_named(&self, name: &str, port: u16) -> Option<&Service> {
        self.services()
            .find(|s| s.name == name && s.port == port)
            .map(Arc::as_ref)
    }

    /// Every destination port once.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        let mut seen = HashSet::new();
        self.by_address
            .values()
            .chain(self.by_host.values())
            .filter(move |s| seen.insert(Arc::as_ptr(s)))
    }

    /// The workload behind an inbound peer. With mutual TLS, the address is believed only if
    /// the workload there has the identity the peer proved (an address alone can be a NAT, a
    /// reused pod IP or anyone's); without it, the address is the only clue.
    pub fn workload_at(&self, ip: IpAddr, peer: Option<&SpiffeId>) -> Option<&Workload> {
        let ip = ip.to_canonical();
        let workload = self.workloads.get(&ip)?;
        match peer {
            Some(peer) => (self.identities_by_ip.get(&ip) == Some(peer)).then_some(workload),
            None => Some(workload),
        }
    }

    /// The identity an endpoint proves with mutual TLS; `None`: it takes plaintext.
    pub fn identity_of(&self, endpoint: SocketAddr) -> Option<&SpiffeId> {
        self.identities.get(&SocketAddr::new(
            endpoint.ip().to_canonical(),
            endpoint.port(),
        ))
    }

    /// Whether the meshed endpoint's proxy takes HTTP/1 requests carried over HTTP/2.
    pub fn takes_http2_upgrade(&self, endpoint: SocketAddr) -> bool {
        self.http2_upgrade.contains(&SocketAddr::new(
            endpoint.ip().to_canonical(),
            endpoint.port(),
        ))
    }

    pub fn allow_any(&self) -> bool {
        self.source.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny
    }
}

fn compile_service(
    destination: &Destination,
    port: &DestinationPort,
    previous: Option<&Service>,
) -> Result<Service, ConfigError> {
    let routes =
        RouteTable::compile(&destination.routes).map_err(|source| ConfigError::Routes {
            destination: destination.name.clone(),
            source: Box::new(source),
        })?;
    if let Some(outlier) = &destination.outlier_detection
        && (outlier.consecutive_failures == 0 || outlier.max_ejection_percent > 100)
    {
        return Err(invalid(
            destination,
            "outlierDetection needs consecutiveFailures ≥ 1 and maxEjectionPercent ≤ 100",
        ));
    }
    let retry_budgets = destination
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            // A route that kept its place and retry policy keeps its budget's history.
            previous
                .filter(|p| p.routes.len() > index)
                .and_then(|p| p.retry_budgets.get(index))
                .filter(|_| route.retry.is_some())
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(RetryBudget::new(
                        &route
                            .retry
                            .as_ref()
                            .map(|r| r.budget.clone())
                            .unwrap_or_default(),
                    ))
                })
        })
        .collect();
    Ok(Service {
        name: destination.name.clone(),
        port: port.port,
        protocol: port.protocol,
        balancer: Balancer::new(
            port.endpoints.clone(),
            destination.load_balancer,
            destination.outlier_detection.clone(),
            previous.map(|p| &p.balancer),
        ),
        routes,
        retry_budgets,
        limits: destination.limits.clone(),
        not_ready: port.not_ready_endpoints,
        pending: std::sync::atomic::AtomicU32::new(0),
    })
}

fn invalid(destination: &Destination, problem: &str) -> ConfigError {
    ConfigError::Destination {
        destination: destination.name.clone(),
        problem: problem.to_owned(),
    }
}

/// `Backend.Demo.:8080` → `backend.demo`: what a `Host` header and a configured host name are
/// compared as.
pub fn normalize_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        // `[v6]` or `[v6]:port`.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.split_once(':') {
            // One colon: `name:port`; more: a bare IPv6 address.
            Some((name, port)) if !port.contains(':') => name,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The active configuration, swapped whole on a change; requests take a cheap snapshot.
#[derive(Debug)]
pub struct ConfigStore {
    current: RwLock<Arc<Compiled>>,
    /// While the initial configuration is [`Compiled::awaiting_first`]: until when new outbound
    /// connections wait for the first one.
    first_by: Option<Instant>,
    /// Bumped on every change, for those waiting.
    replaced: tokio::sync::watch::Sender<()>,
}

impl ConfigStore {
    pub fn new(initial: Compiled) -> Self {
        Self::with_first_wait(initial, None)
    }

    /// A store whose `initial` configuration stands in until the control plane's first one:
    /// connections wait for that up to `wait` from now ([`ConfigStore::first`]).
    pub fn awaiting_first(initial: Compiled, wait: Duration) -> Self {
        Self::with_first_wait(initial, Some(Instant::now() + wait))
    }

    fn with_first_wait(initial: Compiled, first_by: Option<Instant>) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            first_by,
            replaced: tokio::sync::watch::channel(()).0,
        }
    }

    /// The active configuration; until the control plane's first one arrives, and at most until
    /// the wait for it is over, this waits for it: a connection is then classified with what
    /// the mesh knows instead of going out unchecked. After the wait, the stand-in decides
    /// (under `RegistryOnly`, unknown destinations are refused).
    pub async fn first(&self) -> Arc<Compiled> {
        let mut changes = self.replaced.subscribe();
        loop {
            let current = self.current();
            let Some(by) = self.first_by.filter(|_| current.awaiting_first) else {
                return current;
            };
            let deadline = tokio::time::Instant::from_std(by);
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return self.current(),
            }
        }
    }

    /// Whether the first configuration is still awaited and the wait for it not over (`/ready`
    /// answers 503 meanwhile).
    pub fn waiting_for_first(&self) -> bool {
        self.first_by.is_some_and(|by| Instant::now() < by) && self.current().awaiting_first
    }

    pub fn current(&self) -> Arc<Compiled> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Compiles `config` against the active one and, if valid, makes it active.
    pub fn replace(&self, config: ProxyConfig) -> Result<Arc<Compiled>, ConfigError> {
        let previous = self.current();
        let compiled = Arc::new(Compiled::new(config, Some(&previous))?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = compiled.clone();
        self.replaced.send_replace(());
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ProxyConfig {
        skein_core::yaml::from_str(yaml).expect("valid yaml")
    }

    const BACKEND: &str = r#"
version: "1"
destinations:
  - name: backend.demo.svc.cluster.local
    addresses: ["198.19.0.20"]
    hosts: ["backend", "backend.demo", "backend.demo.svc.cluster.local"]
    ports:
      - port: 80
        endpoints:
          - address: "198.18.0.5:8080"
            labels: {version: v1}
            workload: {name: backend-v1, namespace: demo}
"#;

    #[tokio::test]
    async fn connections_wait_for_the_first_configuration_but_not_forever() {
        let stand_in =
            || Compiled::without_configuration(OutboundTrafficPolicy::RegistryOnly, true);
        let store = Arc::new(ConfigStore::awaiting_first(
            stand_in(),
            Duration::from_secs(60),
        ));
        assert!(store.waiting_for_first());
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.first().await.source.version.clone() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "returned before any configuration");
        store.replace(config(BACKEND)).expect("valid");
        let version = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the first configuration")
            .expect("task");
        assert_eq!(version, "1");
        assert!(!store.waiting_for_first());

        // The control plane never answers: after the wait, the stand-in decides.
        let store = ConfigStore::awaiting_first(stand_in(), Duration::from_millis(100));
        let current = tokio::time::timeout(Duration::from_secs(5), store.first())
            .await
            .expect("the wait is bounded");
        assert!(current.awaiting_first && !current.allow_any());
        assert!(!store.waiting_for_first());
        // A store with a configuration from the start never waits.
        let loaded = ConfigStore::new(Compiled::new(config(BACKEND), None).expect("valid"));
        assert!(!loaded.waiting_for_first());
        assert_eq!(loaded.first().await.source.version, "1");
    }

    #[test]
    fn destinations_are_found_by_address_and_by_host() {
        let compiled = Compiled::new(config(BACKEND), None).expect("valid");
        let by_vip = compiled
            .service_at("198.19.0.20:80".parse().unwrap())
            .expect("by VIP");
        assert_eq!(by_vip.name, "backend.demo.svc.cluster.local");
        assert!(
            compiled
                .service_at("198.19.0.20:81".parse().unwrap())
                .is_none()
        );
        assert!(compiled.service_for_host("Backend.Demo:80", 80).is_some());
        assert!(
            compiled
                .service_for_host("backend.demo.svc.cluster.local.", 80)
                .is_some()
        );
        assert!(compiled.service_for_host("frontend", 80).is_none());
        assert_eq!(
            compiled
                .workload_at("198.18.0.5".parse().unwrap(), None)
                .map(|w| w.name.as_str()),
            Some("backend-v1")
        );
        assert!(!compiled.allow_any(), "RegistryOnly is the default");
    }

    #[test]
    fn inconsistent_configs_are_refused_with_the_reason() {
        let twice = format!(
            "{BACKEND}\n  - name: backend.demo.svc.cluster.local\n    ports: [{{port: 80, endpoints: []}}]\n"
        );
        let err = Compiled::new(config(&twice), None).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let no_ports = "destinations: [{name: a, ports: []}]";
        let err = Compiled::new(config(no_ports), None).unwrap_err();
        assert!(err.to_string().contains("has no ports"), "{err}");
        let shared_vip = r#"
destinations:
  - {name: a, addresses: ["198.19.0.1"], ports: [{port: 80, endpoints: []}]}
  - {name: b, addresses: ["198.19.0.1"], ports: [{port: 80, endpoints: []}]}
"#;
        let err = Compiled::new(config(shared_vip), None).unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }

    #[test]
    fn a_refused_config_leaves_the_active_one_in_place() {
        let store = ConfigStore::new(Compiled::new(config(BACKEND), None).expect("valid"));
        let err = store.replace(config("detectTimeout: 0s"));
        assert!(err.is_err());
        assert_eq!(store.current().source.version, "1");
        store
            .replace(config("version: \"2\""))
            .expect("an empty config is valid");
        assert_eq!(store.current().source.version, "2");
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Backend:8080"), "backend");
        assert_eq!(normalize_host("backend.demo."), "backend.demo");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
    }
}
