//! Should this pod get the proxy? A pure function of the pod, its namespace and the MeshConfig's
//! injection settings, so the webhook, `skein inject` and the tests all agree.
//!
//! # Precedence
//!
//! The rules are checked in this order; the first that matches decides (and is the reason
//! reported in metrics and events):
//!
//! | # | Condition                                                                 | Decision                  |
//! |---|---------------------------------------------------------------------------|---------------------------|
//! | 1 | pod label or annotation `skein.dev/inject: "false"`                       | skip `opted_out`          |
//! | 2 | already injected (a `skein-proxy` container or init container, or the `skein.dev/injection-status` annotation) | skip `already_injected` |
//! | 3 | `spec.hostNetwork: true`                                                  | skip `host_network`       |
//! | 4 | namespace listed in `injection.excludedNamespaces`                        | skip `excluded_namespace` |
//! | 5 | pod label or annotation `skein.dev/inject: "true"`                        | inject `pod_opt_in`       |
//! | 6 | namespace labelled with `injection.namespaceLabel` (`key=value`)          | inject `namespace_label`  |
//! | 7 | otherwise                                                                 | skip `not_enabled`        |
//!
//! An explicit opt-out comes first because it is the user's stated intent and the most useful
//! reason to report. Every other "never" rule comes before both opt-ins, so no label can pull a
//! host-network pod or a system namespace into the mesh. Only the exact values `"true"` and
//! `"false"` count (as with Kubernetes' own boolean-like labels); any other value is ignored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::patch;
use crate::api::meshconfig::InjectionSpec;
use crate::api::names;

/// The outcome for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Inject(InjectReason),
    Skip(SkipReason),
}

impl Decision {
    /// Stable snake_case label for metrics (`namespace_label`, `opted_out`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inject(reason) => reason.as_str(),
            Self::Skip(reason) => reason.as_str(),
        }
    }

    pub fn should_inject(self) -> bool {
        matches!(self, Self::Inject(_))
    }
}

/// Why a pod is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectReason {
    /// The namespace carries the MeshConfig's injection label.
    NamespaceLabel,
    /// The pod has `skein.dev/inject: "true"`.
    PodOptIn,
}

impl InjectReason {
    /// Stable snake_case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NamespaceLabel => "namespace_label",
            Self::PodOptIn => "pod_opt_in",
        }
    }

    /// A sentence for events and logs.
    pub fn message(self) -> &'static str {
        match self {
            Self::NamespaceLabel => "the namespace has the mesh's injection label",
            Self::PodOptIn => "the pod has skein.dev/inject: \"true\"",
        }
    }
}

impl std::fmt::Display for InjectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the namespace nor the pod asks for injection.
    NotEnabled,
    /// The pod has `skein.dev/inject: "false"`.
    OptedOut,
    /// The pod shares the node's network namespace; capturing its traffic would capture the node's.
    HostNetwork,
    /// The namespace is in the MeshConfig's excluded namespaces.
    ExcludedNamespace,
    /// The pod already has the proxy.
    AlreadyInjected,
}

impl SkipReason {
    /// Stable snake_case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotEnabled => "not_enabled",
            Self::OptedOut => "opted_out",
            Self::HostNetwork => "host_network",
            Self::ExcludedNamespace => "excluded_namespace",
            Self::AlreadyInjected => "already_injected",
        }
    }

    /// A sentence for events and logs.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotEnabled => {
                "injection is not enabled: neither the namespace label nor skein.dev/inject: \"true\" is set"
            }
            Self::OptedOut => "the pod opted out with skein.dev/inject: \"false\"",
            Self::HostNetwork => {
                "the pod uses the host network, whose traffic the mesh must not capture"
            }
            Self::ExcludedNamespace => "the namespace is excluded from injection by the MeshConfig",
            Self::AlreadyInjected => "the pod already has the Skein proxy",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Decides whether `pod` gets the proxy. `namespace` is passed separately because a pod being
/// created often has no `metadata.namespace` yet (the admission request carries it).
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    injection: &InjectionSpec,
) -> Decision {
    let pod_says = pod_inject_value(pod);
    if pod_says == Some(false) {
        return Decision::Skip(SkipReason::OptedOut);
    }
    if patch::is_injected(pod) {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if injection
        .excluded_namespaces
        .iter()
        .any(|ns| ns == namespace)
    {
        return Decision::Skip(SkipReason::ExcludedNamespace);
    }
    if pod_says == Some(true) {
        return Decision::Inject(InjectReason::PodOptIn);
    }
    let label = &injection.namespace_label;
    if namespace_labels.get(&label.key) == Some(&label.value) {
        return Decision::Inject(InjectReason::NamespaceLabel);
    }
    Decision::Skip(SkipReason::NotEnabled)
}

/// The pod's `skein.dev/inject` setting from its labels and annotations: `Some(false)` if either
/// says "false" (so a stray "true" elsewhere cannot override an opt-out), `Some(true)` if either
/// says "true", else `None`.
fn pod_inject_value(pod: &Pod) -> Option<bool> {
    let meta = &pod.metadata;
    let values = [meta.labels.as_ref(), meta.annotations.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|map| map.get(names::INJECT_POD_KEY))
        .map(String::as_str);
    let mut result = None;
    for value in values {
        match value {
            "false" => return Some(false),
            "true" => result = Some(true),
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[derive(Default)]
    struct Case {
        name: &'static str,
        namespace: &'static str,
        namespace_labels: &'static [(&'static str, &'static str)],
        pod_labels: &'static [(&'static str, &'static str)],
        pod_annotations: &'static [(&'static str, &'static str)],
        host_network: bool,
        extra_containers: &'static [&'static str],
        extra_init_containers: &'static [&'static str],
        no_spec: bool,
        want: Option<Decision>,
    }

    fn pod_for(case: &Case) -> Pod {
        let mut pod = Pod::default();
        if !case.pod_labels.is_empty() {
            pod.metadata.labels = Some(map(case.pod_labels));
        }
        if !case.pod_annotations.is_empty() {
            pod.metadata.annotations = Some(map(case.pod_annotations));
        }
        if case.no_spec {
            return pod;
        }
        let container = |name: &str| Container {
            name: name.to_owned(),
            ..Container::default()
        };
        let mut containers = vec![container("app")];
        containers.extend(case.extra_containers.iter().map(|n| container(n)));
        let init: Vec<Container> = case
            .extra_init_containers
            .iter()
            .map(|n| container(n))
            .collect();
        pod.spec = Some(PodSpec {
            containers,
            init_containers: (!init.is_empty()).then_some(init),
            host_network: case.host_network.then_some(true),
            ..PodSpec::default()
        });
        pod
    }

    const ENABLED: &[(&str, &str)] = &[(names::INJECTION_LABEL_KEY, names::INJECTION_LABEL_VALUE)];
    const OPT_IN: &[(&str, &str)] = &[(names::INJECT_POD_KEY, "true")];
    const OPT_OUT: &[(&str, &str)] = &[(names::INJECT_POD_KEY, "false")];

    use Decision::{Inject, Skip};

    #[test]
    fn decision_table() {
        let cases = [
            Case {
                name: "plain pod in a plain namespace",
                namespace: "default",
                want: Some(Skip(SkipReason::NotEnabled)),
                ..Case::default()
            },
            Case {
                name: "namespace label",
                namespace: "default",
                namespace_labels: ENABLED,
                want: Some(Inject(InjectReason::NamespaceLabel)),
                ..Case::default()
            },
            Case {
                name: "namespace label with another value",
                namespace: "default",
                namespace_labels: &[(names::INJECTION_LABEL_KEY, "disabled")],
                want: Some(Skip(SkipReason::NotEnabled)),
                ..Case::default()
            },
            Case {
                name: "pod label opt-in",
                namespace: "default",
                pod_labels: OPT_IN,
                want: Some(Inject(InjectReason::PodOptIn)),
                ..Case::default()
            },
            Case {
                name: "pod annotation opt-in",
                namespace: "default",
                pod_annotations: OPT_IN,
                want: Some(Inject(InjectReason::PodOptIn)),
                ..Case::default()
            },
            Case {
                name: "pod opt-in is reported over the namespace label",
                namespace: "default",
                namespace_labels: ENABLED,
                pod_labels: OPT_IN,
                want: Some(Inject(InjectReason::PodOptIn)),
                ..Case::default()
            },
            Case {
                name: "pod label opt-out beats the namespace label",
                namespace: "default",
                namespace_labels: ENABLED,
                pod_labels: OPT_OUT,
                want: Some(Skip(SkipReason::OptedOut)),
                ..Case::default()
            },
            Case {
                name: "pod annotation opt-out beats a pod label opt-in",
                namespace: "default",
                pod_labels: OPT_IN,
                pod_annotations: OPT_OUT,
                want: Some(Skip(SkipReason::OptedOut)),
                ..Case::default()
            },
            Case {
                name: "pod label opt-out beats a pod annotation opt-in",
                namespace: "default",
                pod_labels: OPT_OUT,
                pod_annotations: OPT_IN,
                want: Some(Skip(SkipReason::OptedOut)),
                ..Case::default()
            },
            Case {
                name: "opt-out is reported over already injected",
                namespace: "default",
                pod_labels: OPT_OUT,
                extra_containers: &[names::PROXY_CONTAINER],
                want: Some(Skip(SkipReason::OptedOut)),
                ..Case::default()
            },
            Case {
                name: "unrecognised value is ignored",
                namespace: "default",
                pod_labels: &[(names::INJECT_POD_KEY, "yes")],
                want: Some(Skip(SkipReason::NotEnabled)),
                ..Case::default()
            },
            Case {
                name: "host network beats the pod opt-in",
                namespace: "default",
                namespace_labels: ENABLED,
                pod_labels: OPT_IN,
                host_network: true,
                want: Some(Skip(SkipReason::HostNetwork)),
                ..Case::default()
            },
            Case {
                name: "excluded namespace beats the namespace label and the pod opt-in",
                namespace: "kube-system",
                namespace_labels: ENABLED,
                pod_annotations: OPT_IN,
                want: Some(Skip(SkipReason::ExcludedNamespace)),
                ..Case::default()
            },
            Case {
                name: "the mesh's own namespace is excluded by default",
                namespace: names::MESH_NAMESPACE,
                namespace_labels: ENABLED,
                want: Some(Skip(SkipReason::ExcludedNamespace)),
                ..Case::default()
            },
            Case {
                name: "host network is reported over an excluded namespace",
                namespace: "kube-system",
                host_network: true,
                want: Some(Skip(SkipReason::HostNetwork)),
                ..Case::default()
            },
            Case {
                name: "proxy container means already injected",
                namespace: "default",
                namespace_labels: ENABLED,
                extra_containers: &[names::PROXY_CONTAINER],
                want: Some(Skip(SkipReason::AlreadyInjected)),
                ..Case::default()
            },
            Case {
                name: "native sidecar proxy means already injected",
                namespace: "default",
                namespace_labels: ENABLED,
                extra_init_containers: &[names::INIT_CONTAINER, names::PROXY_CONTAINER],
                want: Some(Skip(SkipReason::AlreadyInjected)),
                ..Case::default()
            },
            Case {
                name: "status annotation means already injected",
                namespace: "default",
                pod_annotations: &[(patch::STATUS_ANNOTATION, "{}")],
                want: Some(Skip(SkipReason::AlreadyInjected)),
                ..Case::default()
            },
            Case {
                name: "already injected is reported over host network",
                namespace: "default",
                host_network: true,
                extra_containers: &[names::PROXY_CONTAINER],
                want: Some(Skip(SkipReason::AlreadyInjected)),
                ..Case::default()
            },
            Case {
                name: "a pod without a spec does not panic",
                namespace: "default",
                namespace_labels: ENABLED,
                no_spec: true,
                want: Some(Inject(InjectReason::NamespaceLabel)),
                ..Case::default()
            },
        ];
        let injection = InjectionSpec::default();
        for case in &cases {
            let got = decide(
                &pod_for(case),
                case.namespace,
                &map(case.namespace_labels),
                &injection,
            );
            assert_eq!(Some(got), case.want, "{}", case.name);
        }
    }

    #[test]
    fn a_custom_namespace_label_and_exclusion_list_are_honoured() {
        let mut injection = InjectionSpec::default();
        injection.namespace_label.key = "mesh.example.com/enabled".to_owned();
        injection.namespace_label.value = "yes".to_owned();
        injection.excluded_namespaces = vec!["legacy".to_owned()];
        let pod = pod_for(&Case::default());
        let labels = map(&[("mesh.example.com/enabled", "yes")]);
        assert_eq!(
            decide(&pod, "shop", &labels, &injection),
            Inject(InjectReason::NamespaceLabel)
        );
        assert_eq!(
            decide(&pod, "legacy", &labels, &injection),
            Skip(SkipReason::ExcludedNamespace)
        );
        // kube-system is only excluded by the default list.
        assert_eq!(
            decide(&pod, "kube-system", &labels, &injection),
            Inject(InjectReason::NamespaceLabel)
        );
    }

    #[test]
    fn metric_labels_are_stable_snake_case() {
        let all = [
            Inject(InjectReason::NamespaceLabel),
            Inject(InjectReason::PodOptIn),
            Skip(SkipReason::NotEnabled),
            Skip(SkipReason::OptedOut),
            Skip(SkipReason::HostNetwork),
            Skip(SkipReason::ExcludedNamespace),
            Skip(SkipReason::AlreadyInjected),
        ];
        let labels: Vec<&str> = all.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            labels,
            [
                "namespace_label",
                "pod_opt_in",
                "not_enabled",
                "opted_out",
                "host_network",
                "excluded_namespace",
                "already_injected"
            ]
        );
        assert!(all[..2].iter().all(|d| d.should_inject()));
        assert!(all[2..].iter().all(|d| !d.should_inject()));
        assert!(SkipReason::HostNetwork.to_string().contains("host network"));
    }
}
