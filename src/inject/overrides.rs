//! Per-pod overrides of the MeshConfig's proxy and capture settings, read from pod annotations.
//!
//! | Annotation | Value | Effect |
//! |---|---|---|
//! | `skein.dev/proxy-cpu` | quantity (`100m`, `0.5`) | CPU request of the proxy |
//! | `skein.dev/proxy-memory` | quantity (`64Mi`, `1e8`) | memory request of the proxy |
//! | `skein.dev/proxy-cpu-limit` | quantity | CPU limit of the proxy |
//! | `skein.dev/proxy-memory-limit` | quantity | memory limit of the proxy |
//! | `skein.dev/proxy-log-level` | log filter (a level, or `target=level` directives: `debug`, `warn,skein_proxy=debug`), no whitespace | the proxy's `SKEIN_LOG` |
//! | `skein.dev/proxy-image` | image reference, no whitespace, allowed by the MeshConfig (`proxy.allowedImages`; the mesh's own image always is) | image of `skein-proxy` and `skein-init` |
//! | `traffic.skein.dev/exclude-inbound-ports` | comma-separated ports 1-65535 (`22,8081`) | inbound ports not redirected to the proxy |
//! | `traffic.skein.dev/exclude-outbound-ports` | comma-separated ports 1-65535 (`5432`) | outbound destination ports not redirected |
//! | `traffic.skein.dev/include-outbound-ip-ranges` | comma-separated CIDRs, or `*` for all (the default) | only outbound traffic to these ranges is redirected |
//! | `traffic.skein.dev/exclude-outbound-ip-ranges` | comma-separated CIDRs (`10.96.0.0/12,fd00::/8`) | outbound traffic to these ranges is not redirected |
//!
//! Quantities follow Kubernetes' grammar: a non-negative decimal number (`1`, `0.5`, `.5`, `2.`)
//! followed by nothing, a suffix `m k M G T P E Ki Mi Gi Ti Pi Ei`, or an exponent `e3`/`E-2`.
//! A request above the corresponding limit (from an annotation or from the MeshConfig) is
//! refused here, rather than by the apiserver with a message that does not mention the
//! annotation.
//!
//! In lists, whitespace around items and empty items (`80,,443`, a trailing comma) are ignored.
//!
//! Validation collects **all** errors, so a user fixes every annotation in one round trip
//! instead of one rejected pod creation per mistake.

use std::collections::BTreeMap;

use crate::api::meshconfig::{ProxyResources, ResourceAmounts};
use crate::capture::IpCidr;

pub const PROXY_CPU: &str = "skein.dev/proxy-cpu";
pub const PROXY_MEMORY: &str = "skein.dev/proxy-memory";
pub const PROXY_CPU_LIMIT: &str = "skein.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "skein.dev/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "skein.dev/proxy-log-level";
pub const PROXY_IMAGE: &str = "skein.dev/proxy-image";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.skein.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.skein.dev/exclude-outbound-ports";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.skein.dev/include-outbound-ip-ranges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.skein.dev/exclude-outbound-ip-ranges";

/// Every override annotation, in the order of the table above.
pub const ALL: [&str; 10] = [
    PROXY_CPU,
    PROXY_MEMORY,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    PROXY_IMAGE,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_OUTBOUND_IP_RANGES,
    EXCLUDE_OUTBOUND_IP_RANGES,
];

/// The pod's overrides. `None` / empty: the annotation is absent, the MeshConfig decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub proxy_cpu: Option<String>,
    pub proxy_memory: Option<String>,
    pub proxy_cpu_limit: Option<String>,
    pub proxy_memory_limit: Option<String>,
    pub log_level: Option<String>,
    pub image: Option<String>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub include_outbound_ip_ranges: IpRanges,
    pub exclude_outbound_ip_ranges: Vec<IpCidr>,
}

/// Which outbound destinations are captured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IpRanges {
    /// Every destination (`*`, or no annotation).
    #[default]
    All,
    /// Only these networks.
    Only(Vec<IpCidr>),
}

impl IpRanges {
    /// As `CaptureSettings::include_outbound_cidrs` spells it: empty means all.
    pub fn to_cidrs(&self) -> Vec<IpCidr> {
        match self {
            Self::All => Vec::new(),
            Self::Only(cidrs) => cidrs.clone(),
        }
    }
}

/// One invalid annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} {problem}")]
pub struct OverrideError {
    pub annotation: &'static str,
    /// The offending value (for lists, the offending item).
    pub value: String,
    /// What is wrong, phrased to follow the value: "is not a port (1-65535)".
    pub problem: String,
}

/// Every invalid annotation of a pod (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideErrors(pub Vec<OverrideError>);

impl std::fmt::Display for OverrideErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OverrideErrors {}

/// Parses and validates the override annotations of a pod (`metadata.annotations`; `None` for a
/// pod without annotations). Other annotations are ignored.
pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<Overrides, OverrideErrors> {
    let empty = BTreeMap::new();
    let mut p = Parser {
        annotations: annotations.unwrap_or(&empty),
        errors: Vec::new(),
    };
    let overrides = Overrides {
        proxy_cpu: p.scalar(PROXY_CPU, check_quantity),
        proxy_memory: p.scalar(PROXY_MEMORY, check_quantity),
        proxy_cpu_limit: p.scalar(PROXY_CPU_LIMIT, check_quantity),
        proxy_memory_limit: p.scalar(PROXY_MEMORY_LIMIT, check_quantity),
        log_level: p.scalar(PROXY_LOG_LEVEL, check_log_filter),
        image: p.scalar(PROXY_IMAGE, check_word),
        exclude_inbound_ports: p.list(EXCLUDE_INBOUND_PORTS, parse_port),
        exclude_outbound_ports: p.list(EXCLUDE_OUTBOUND_PORTS, parse_port),
        include_outbound_ip_ranges: p.ip_ranges(INCLUDE_OUTBOUND_IP_RANGES),
        exclude_outbound_ip_ranges: p.list(EXCLUDE_OUTBOUND_IP_RANGES, parse_cidr),
    };
    if p.errors.is_empty() {
        Ok(overrides)
    } else {
        Err(OverrideErrors(p.errors))
    }
}

/// Reads annotations, recording every problem instead of stopping at the first.
struct Parser<'a> {
    annotations: &'a BTreeMap<String, String>,
    errors: Vec<OverrideError>,
}

impl<'a> Parser<'a> {
    fn error(&mut self, annotation: &'static str, value: &str, problem: String) {
        self.errors.push(OverrideError {
            annotation,
            value: value.to_owned(),
            problem,
        });
    }

    fn scalar(
        &mut self,
        key: &'static str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let value = self.annotations.get(key)?;
        match check(value) {
            Ok(()) => Some(value.clone()),
            Err(problem) => {
                self.error(key, value, problem);
                None
            }
        }
    }

    /// Whitespace around items and empty items (`80,,443`, a trailing comma) are ignored.
    fn items(&self, key: &str) -> Vec<&'a str> {
        self.annotations
            .get(key)
            .map(|value| {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn list<T>(&mut self, key: &'static str, parse: fn(&str) -> Result<T, String>) -> Vec<T> {
        let mut parsed = Vec::new();
        for item in self.items(key) {
            match parse(item) {
                Ok(value) => parsed.push(value),
                Err(problem) => self.error(key, item, problem),
            }
        }
        parsed
    }

    fn ip_ranges(&mut self, key: &'static str) -> IpRanges {
        let items = self.items(key);
        if items.is_empty() {
            return IpRanges::All;
        }
        if items.contains(&"*") {
            if items.len() > 1 {
                let value = items.join(",");
                self.error(
                    key,
                    &value,
                    "mixes \"*\" (all) with CIDRs; use one or the other".to_owned(),
                );
            }
            return IpRanges::All;
        }
        IpRanges::Only(self.list(key, parse_cidr))
    }
}

impl Overrides {
    /// The proxy's resources: the MeshConfig's, with the annotations' values on top. Fails when
    /// an annotation puts a request above its limit, naming that annotation.
    pub fn resources(&self, mesh: &ProxyResources) -> Result<ProxyResources, OverrideErrors> {
        let cpu_request = Amount::new(PROXY_CPU, &self.proxy_cpu, &mesh.requests.cpu);
        let cpu_limit = Amount::new(PROXY_CPU_LIMIT, &self.proxy_cpu_limit, &mesh.limits.cpu);
        let memory_request = Amount::new(PROXY_MEMORY, &self.proxy_memory, &mesh.requests.memory);
        let memory_limit = Amount::new(
            PROXY_MEMORY_LIMIT,
            &self.proxy_memory_limit,
            &mesh.limits.memory,
        );
        let errors: Vec<OverrideError> = [
            check_bound(&cpu_request, &cpu_limit),
            check_bound(&memory_request, &memory_limit),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !errors.is_empty() {
            return Err(OverrideErrors(errors));
        }
        Ok(ProxyResources {
            requests: ResourceAmounts {
                cpu: cpu_request.owned_value(),
                memory: memory_request.owned_value(),
            },
            limits: ResourceAmounts {
                cpu: cpu_limit.owned_value(),
                memory: memory_limit.owned_value(),
            },
        })
    }
}

impl Overrides {
    /// The image of both injected containers: the mesh's own (`own`) unless the pod asks for
    /// another one that `allowed` (MeshConfig `proxy.allowedImages`) lets it use. `skein-init`
    /// runs it as root with NET_ADMIN, so an image the mesh administrator did not allow is
    /// refused rather than replaced: the pod author learns why at once.
    pub fn image(&self, own: &str, allowed: &[String]) -> Result<String, OverrideErrors> {
        let Some(asked) = self.image.as_deref() else {
            return Ok(own.to_owned());
        };
        if image_allowed(asked, own, allowed) {
            return Ok(asked.to_owned());
        }
        let choices = if allowed.is_empty() {
            format!(
                "only the mesh's own image {own} is; list others in the MeshConfig's proxy.allowedImages"
            )
        } else {
            format!(
                "allowed are the mesh's own image {own} and the MeshConfig's proxy.allowedImages ({})",
                allowed.join(", ")
            )
        };
        Err(OverrideErrors(vec![OverrideError {
            annotation: PROXY_IMAGE,
            value: asked.to_owned(),
            problem: format!("is not an allowed proxy image: {choices}"),
        }]))
    }
}

/// Pure: whether a pod may run `image` as its proxy: the mesh's own image, an exact entry of
/// `allowed`, or one starting with an entry's text before its trailing `*`.
pub fn image_allowed(image: &str, own: &str, allowed: &[String]) -> bool {
    image == own
        || allowed.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == entry,
        })
}

/// One resource amount: the annotation that can set it, and its effective value.
struct Amount<'a> {
    annotation: &'static str,
    value: Option<&'a str>,
    from_annotation: bool,
}

impl<'a> Amount<'a> {
    fn new(annotation: &'static str, ours: &'a Option<String>, mesh: &'a Option<String>) -> Self {
        Self {
            annotation,
            value: ours.as_deref().or(mesh.as_deref()),
            from_annotation: ours.is_some(),
        }
    }

    fn owned_value(&self) -> Option<String> {
        self.value.map(str::to_owned)
    }
}

/// An error when a request exceeds its limit because of an annotation, blaming the annotation
/// the user set. When both values come from the MeshConfig, the apiserver reports it.
fn check_bound(request: &Amount, limit: &Amount) -> Option<OverrideError> {
    let (Some(req), Some(lim)) = (request.value, limit.value) else {
        return None;
    };
    if quantity_value(req)? <= quantity_value(lim)? {
        return None;
    }
    let (blamed, problem) = match (request.from_annotation, limit.from_annotation) {
        (true, true) => (request, format!("is above {} ({lim})", limit.annotation)),
        (true, false) => (
            request,
            format!(
                "is above the MeshConfig's proxy limit {lim}; set {} too",
                limit.annotation
            ),
        ),
        (false, true) => (
            limit,
            format!(
                "is below the MeshConfig's proxy request {req}; set {} too",
                request.annotation
            ),
        ),
        (false, false) => return None,
    };
    Some(OverrideError {
        annotation: blamed.annotation,
        value: blamed.owned_value()?,
        problem,
    })
}

fn parse_port(item: &str) -> Result<u16, String> {
    // Digits only: `u16::from_str` would also take "+80".
    item.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| item.parse::<u16>().ok())
        .flatten()
        .filter(|port| *port != 0)
        .ok_or_else(|| "is not a port (1-65535)".to_owned())
}

fn parse_cidr(item: &str) -> Result<IpCidr, String> {
    item.parse::<IpCidr>()
        .map_err(|_| "is not a CIDR such as 10.0.0.0/8 or fd00::/8".to_owned())
}

fn check_quantity(value: &str) -> Result<(), String> {
    quantity_value(value)
        .map(|_| ())
        .ok_or_else(|| "is not a Kubernetes quantity such as 100m, 0.5, 64Mi or 1e9".to_owned())
}

fn check_word(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err("is empty".to_owned())
    } else if value.chars().any(char::is_whitespace) {
        Err("contains whitespace".to_owned())
    } else {
        Ok(())
    }
}

/// A log filter the proxy will use as given (rather than fall back to `info` at start).
fn check_log_filter(value: &str) -> Result<(), String> {
    check_word(value)?;
    crate::telemetry::parse_log_filter(value)
        .map(|_| ())
        .map_err(|err| format!("is not a log filter: {err}"))
}

/// Whether `value` is a valid non-negative Kubernetes quantity.
pub fn is_quantity(value: &str) -> bool {
    quantity_value(value).is_some()
}

/// The value of a non-negative Kubernetes quantity, approximately (enough to compare a request
/// with a limit), or `None` if `value` is not one.
///
/// Grammar: `<digits>[.<digits>] | .<digits>` then `<suffix>` where suffix is empty, one of
/// `m k M G T P E Ki Mi Gi Ti Pi Ei`, or `e`/`E` followed by an optionally signed integer.
fn quantity_value(value: &str) -> Option<f64> {
    let number_len = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_len);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let mantissa: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            // "1E" alone is exa (handled above); "1E3" / "1e-3" are exponents.
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exponent.parse::<i32>().ok()?)
        }
    };
    Some(mantissa * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<Overrides, OverrideErrors> {
        parse(Some(&annotations(pairs)))
    }

    #[test]
    fn no_annotations_means_no_overrides() {
        assert_eq!(parse(None), Ok(Overrides::default()));
        assert_eq!(
            parse_pairs(&[("app.kubernetes.io/name", "web")]),
            Ok(Overrides::default())
        );
    }

    #[test]
    fn every_annotation_is_parsed() {
        let got = parse_pairs(&[
            (PROXY_CPU, "100m"),
            (PROXY_MEMORY, "64Mi"),
            (PROXY_CPU_LIMIT, "1"),
            (PROXY_MEMORY_LIMIT, "1Gi"),
            (PROXY_LOG_LEVEL, "warn,skein_proxy=debug"),
            (PROXY_IMAGE, "registry.local/skein:dev"),
            (EXCLUDE_INBOUND_PORTS, "22, 8081"),
            (EXCLUDE_OUTBOUND_PORTS, "5432,"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12,fd00::/8"),
        ])
        .unwrap();
        assert_eq!(
            got,
            Overrides {
                proxy_cpu: Some("100m".into()),
                proxy_memory: Some("64Mi".into()),
                proxy_cpu_limit: Some("1".into()),
                proxy_memory_limit: Some("1Gi".into()),
                log_level: Some("warn,skein_proxy=debug".into()),
                image: Some("registry.local/skein:dev".into()),
                exclude_inbound_ports: vec![22, 8081],
                exclude_outbound_ports: vec![5432],
                include_outbound_ip_ranges: IpRanges::Only(vec!["10.0.0.0/8".parse().unwrap()]),
                exclude_outbound_ip_ranges: vec![
                    "10.96.0.0/12".parse().unwrap(),
                    "fd00::/8".parse().unwrap()
                ],
            }
        );
    }

    #[test]
    fn star_includes_everything() {
        let got = parse_pairs(&[(INCLUDE_OUTBOUND_IP_RANGES, "*")]).unwrap();
        assert_eq!(got.include_outbound_ip_ranges, IpRanges::All);
        assert!(got.include_outbound_ip_ranges.to_cidrs().is_empty());
        let err = parse_pairs(&[(INCLUDE_OUTBOUND_IP_RANGES, "*,10.0.0.0/8")]).unwrap_err();
        assert!(err.to_string().contains("mixes \"*\""), "{err}");
    }

    #[test]
    fn error_names_the_annotation_and_the_value() {
        let err = parse_pairs(&[(EXCLUDE_INBOUND_PORTS, "80,http")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"annotation traffic.skein.dev/exclude-inbound-ports: "http" is not a port (1-65535)"#
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        let table: &[(&str, &str)] = &[
            (PROXY_CPU, "lots"),
            (PROXY_CPU, ""),
            (PROXY_CPU, "-1"),
            (PROXY_MEMORY, "64MB"),
            (PROXY_MEMORY, "1.2.3"),
            (PROXY_MEMORY, "e3"),
            (PROXY_MEMORY, "1e"),
            (PROXY_MEMORY, "1e+"),
            (PROXY_CPU_LIMIT, "1 m"),
            (PROXY_MEMORY_LIMIT, "Mi"),
            (PROXY_LOG_LEVEL, ""),
            (PROXY_LOG_LEVEL, "info debug"),
            (PROXY_LOG_LEVEL, "verbose"),
            (PROXY_LOG_LEVEL, "info,skein=loud"),
            (PROXY_IMAGE, ""),
            (PROXY_IMAGE, "skein:dev\n"),
            (EXCLUDE_INBOUND_PORTS, "http"),
            (EXCLUDE_INBOUND_PORTS, "0"),
            (EXCLUDE_OUTBOUND_PORTS, "65536"),
            (EXCLUDE_OUTBOUND_PORTS, "+80"),
            (EXCLUDE_OUTBOUND_PORTS, "80-90"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0/8"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0/8"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
        ];
        for (key, value) in table {
            let err = parse_pairs(&[(key, value)])
                .expect_err(&format!("{key}={value:?} should be rejected"));
            assert_eq!(err.0.len(), 1, "{key}={value:?}: {err}");
            assert_eq!(err.0[0].annotation, *key);
            assert!(
                err.to_string().starts_with(&format!("annotation {key}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn all_errors_are_collected() {
        let err = parse_pairs(&[
            (PROXY_CPU, "lots"),
            (EXCLUDE_INBOUND_PORTS, "http,ssh"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0/8"),
        ])
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.annotation).collect();
        assert_eq!(
            keys,
            [
                PROXY_CPU,
                EXCLUDE_INBOUND_PORTS,
                EXCLUDE_INBOUND_PORTS,
                EXCLUDE_OUTBOUND_IP_RANGES
            ]
        );
        assert_eq!(err.to_string().matches("; ").count(), 3);
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for good in [
            "0", "1", "100m", "0.5", ".5", "2.", "1.5Gi", "64Mi", "1k", "1M", "1G", "1T", "1P",
            "1E", "1Ki", "1Ti", "1Pi", "1Ei", "1e3", "1E3", "1e-3", "1e+3", "12.5e2",
        ] {
            assert!(is_quantity(good), "{good} should be a quantity");
        }
        for bad in [
            "lots", "", ".", "-1", "+1", "1MB", "1mi", "1 ", " 1", "1e", "e3", "1e1.5", "1..2",
            "0x10",
        ] {
            assert!(!is_quantity(bad), "{bad:?} should not be a quantity");
        }
        assert_eq!(quantity_value("100m"), Some(0.1));
        assert_eq!(quantity_value("1Ki"), Some(1024.0));
        assert_eq!(quantity_value("1E"), Some(1e18));
        assert_eq!(quantity_value("15e-1"), Some(1.5));
    }

    #[test]
    fn resources_merge_annotations_over_the_meshconfig() {
        let mesh = ProxyResources::default(); // requests 10m/20Mi, limit memory 128Mi
        let overrides = parse_pairs(&[(PROXY_CPU, "200m"), (PROXY_CPU_LIMIT, "1")]).unwrap();
        let merged = overrides.resources(&mesh).unwrap();
        assert_eq!(
            merged.requests,
            ResourceAmounts {
                cpu: Some("200m".into()),
                memory: Some("20Mi".into())
            }
        );
        assert_eq!(
            merged.limits,
            ResourceAmounts {
                cpu: Some("1".into()),
                memory: Some("128Mi".into())
            }
        );
        assert_eq!(Overrides::default().resources(&mesh).unwrap(), mesh);
    }

    #[test]
    fn only_allowed_images_are_used() {
        let own = "ghcr.io/skein-mesh/skein:1.0.0";
        assert_eq!(Overrides::default().image(own, &[]).unwrap(), own);
        let asking = |image: &str| parse_pairs(&[(PROXY_IMAGE, image)]).unwrap();
        // The mesh's own image may always be named.
        assert_eq!(asking(own).image(own, &[]).unwrap(), own);
        // Nothing else by default, with a message naming the annotation, the image and the fix.
        let err = asking("evil.example/root:latest")
            .image(own, &[])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation skein.dev/proxy-image: \"evil.example/root:latest\" is not an allowed proxy \
             image: only the mesh's own image ghcr.io/skein-mesh/skein:1.0.0 is; list others in \
             the MeshConfig's proxy.allowedImages"
        );
        let allowed = vec![
            "registry.local/skein:dev".to_owned(),
            "mirror.local/skein:*".to_owned(),
        ];
        assert_eq!(
            asking("registry.local/skein:dev")
                .image(own, &allowed)
                .unwrap(),
            "registry.local/skein:dev"
        );
        assert_eq!(
            asking("mirror.local/skein:1.2.3")
                .image(own, &allowed)
                .unwrap(),
            "mirror.local/skein:1.2.3"
        );
        for refused in [
            "registry.local/skein:dev2",
            "registry.local/skein",
            "mirror.local/other:1",
            "evil.example/mirror.local/skein:1",
        ] {
            let err = asking(refused).image(own, &allowed).unwrap_err();
            assert!(
                err.to_string().contains(
                    "allowed are the mesh's own image ghcr.io/skein-mesh/skein:1.0.0 and the \
                     MeshConfig's proxy.allowedImages (registry.local/skein:dev, mirror.local/skein:*)"
                ),
                "{refused}: {err}"
            );
        }
    }

    #[test]
    fn a_request_above_the_limit_names_the_annotation() {
        let mesh = ProxyResources::default();
        let err = parse_pairs(&[(PROXY_MEMORY, "256Mi")])
            .unwrap()
            .resources(&mesh)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"annotation skein.dev/proxy-memory: "256Mi" is above the MeshConfig's proxy limit 128Mi; set skein.dev/proxy-memory-limit too"#
        );
        let err = parse_pairs(&[(PROXY_MEMORY_LIMIT, "10Mi")])
            .unwrap()
            .resources(&mesh)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("annotation skein.dev/proxy-memory-limit: \"10Mi\" is below"),
            "{err}"
        );
        let err = parse_pairs(&[(PROXY_CPU, "2"), (PROXY_CPU_LIMIT, "500m")])
            .unwrap()
            .resources(&mesh)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"annotation skein.dev/proxy-cpu: "2" is above skein.dev/proxy-cpu-limit (500m)"#
        );
        // Raising both is fine, and equal is fine.
        let ok = parse_pairs(&[(PROXY_MEMORY, "256Mi"), (PROXY_MEMORY_LIMIT, "0.25Gi")]).unwrap();
        assert!(ok.resources(&mesh).is_ok());
    }
}
