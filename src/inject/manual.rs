//! `skein inject -f FILE`: adds the proxy to workload YAML the way the webhook would, for GitOps
//! pipelines and clusters without the webhook (`-f -` reads standard input; like
//! `istioctl kube-inject`).
//!
//! Every document of the input is written to standard output, separated by `---`:
//! - `Pod` (`v1`), `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet` (`apps/v1`), `Job` and
//!   `CronJob` (`batch/v1`) get the proxy in their pod (template), through the same
//!   [`patch::inject`] the webhook calls; a `v1` `List` (`kubectl get -o yaml`) has each item
//!   handled that way.
//! - anything else passes through with the same content. Output is re-serialized, so comments,
//!   formatting and key order are not kept (keys come out sorted, which for Kubernetes objects
//!   is the order `kubectl` prints them in anyway); empty documents are dropped.
//!
//! Asking for manual injection is an explicit opt-in, so namespace labels and the MeshConfig's
//! excluded namespaces are not consulted. A pod template is still left alone when it opts out
//! (`skein.dev/inject: "false"`), uses the host network, or is already injected: [`decide`] runs
//! as if the namespace carried the injection label and nothing were excluded.
//!
//! Jobs and CronJobs: with a native sidecar (the default) the Job completes when the app exits.
//! With `--no-native-sidecar` the proxy is a regular container that never exits on its own, so
//! the app must call `POST /shutdown` on the proxy's admin port at `127.0.0.1` when done (the
//! endpoint answers only from inside the pod), or the Job never completes.
//!
//! Documents are numbered from 1 in messages, empty ones not counted; YAML syntax errors give
//! the line and column instead.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::InjectConfig;
use super::decide::{Decision, SkipReason, decide};
use super::patch::{self, InjectError};
use crate::api::meshconfig::{InjectionSpec, NativeSidecar};
use crate::api::{MeshConfig, MeshConfigSpec};
use crate::cli::InjectArgs;
use crate::yaml::{self, YamlError};

#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("invalid YAML")]
    InvalidYaml { source: YamlError },
    #[error("document {index} ({object}): not a valid {kind}")]
    InvalidObject {
        index: usize,
        object: String,
        kind: String,
        source: serde_json::Error,
    },
    #[error("document {index} ({object}): cannot inject the proxy")]
    Inject {
        index: usize,
        object: String,
        source: InjectError,
    },
    #[error("document {index} ({object}): cannot write it back as YAML")]
    Write {
        index: usize,
        object: String,
        source: YamlError,
    },
    #[error("document {index} ({object}): cannot encode the injected object")]
    Encode {
        index: usize,
        object: String,
        source: serde_json::Error,
    },
}

/// What happened to one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Document number, from 1.
    pub index: usize,
    /// `Kind namespace/name`, for messages.
    pub object: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(SkipReason),
}

/// `skein inject`: reads the file (or stdin), prints the injected YAML to stdout.
pub fn run(args: &InjectArgs) -> anyhow::Result<()> {
    let input = read_input(&args.filename)?;
    let mesh = match &args.meshconfig {
        Some(path) => load_meshconfig(path)?,
        None => MeshConfigSpec::default(),
    };
    let mut cfg = config(mesh, &args.xds_address, args.no_native_sidecar);
    if let Some(path) = &args.xds_trust_bundle {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the trust bundle {}", path.display()))?;
        anyhow::ensure!(
            pem.contains("-----BEGIN CERTIFICATE-----"),
            "{} holds no PEM certificate",
            path.display()
        );
        cfg.xds_trust_bundle_pem = Some(pem);
    }
    let (output, reports) = inject_documents_with_reports(&input, &cfg)?;
    for report in &reports {
        match report.outcome {
            Outcome::Injected => {
                tracing::debug!(document = report.index, "{}: injected", report.object)
            }
            Outcome::Skipped(reason) => tracing::info!(
                document = report.index,
                reason = reason.as_str(),
                "{}: not injected: {reason}",
                report.object
            ),
        }
    }
    std::io::stdout()
        .lock()
        .write_all(output.as_bytes())
        .context("writing to standard output")
}

/// The injector settings for `skein inject`. `--no-native-sidecar` wins over a MeshConfig that
/// asks for native sidecars: the user knows the target cluster, the MeshConfig may not.
pub fn config(
    mut mesh: MeshConfigSpec,
    xds_address: &str,
    no_native_sidecar: bool,
) -> InjectConfig {
    if no_native_sidecar {
        mesh.proxy.native_sidecar = NativeSidecar::Disabled;
    }
    InjectConfig {
        mesh,
        xds_address: xds_address.to_owned(),
        xds_trust_bundle_pem: None,
        native_sidecars_supported: !no_native_sidecar,
        // Manifests are injected for a current cluster; an older one refuses the hook with a
        // message naming it.
        sleep_hooks_supported: true,
    }
}

/// Injects every workload of a multi-document YAML stream; see the module documentation.
pub fn inject_documents(text: &str, cfg: &InjectConfig) -> Result<String, ManualError> {
    inject_documents_with_reports(text, cfg).map(|(output, _)| output)
}

/// [`inject_documents`], also saying what happened to each workload.
pub fn inject_documents_with_reports(
    text: &str,
    cfg: &InjectConfig,
) -> Result<(String, Vec<Report>), ManualError> {
    let mut output = Vec::new();
    let mut reports = Vec::new();
    let documents: Vec<Value> =
        yaml::documents(text).map_err(|source| ManualError::InvalidYaml { source })?;
    for (i, value) in documents.into_iter().enumerate() {
        let index = i + 1;
        let mut doc = Document {
            index,
            cfg,
            reports: &mut reports,
        };
        let value = doc.process(value)?;
        let yaml = yaml::to_string(&value).map_err(|source| ManualError::Write {
            index,
            object: describe(&value),
            source,
        })?;
        output.push(yaml);
    }
    Ok((output.join("---\n"), reports))
}

/// One input document being processed.
struct Document<'a> {
    index: usize,
    cfg: &'a InjectConfig,
    reports: &'a mut Vec<Report>,
}

impl Document<'_> {
    fn process(&mut self, value: Value) -> Result<Value, ManualError> {
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        match (api_version, kind) {
            ("v1", "Pod") => self.typed(value, |pod: &mut Pod, cfg| inject_pod(pod, cfg)),
            ("v1", "List") => self.list(value),
            ("apps/v1", "Deployment") => self.typed(value, |d: &mut Deployment, cfg| {
                inject_template(&mut d.spec.template, cfg)
            }),
            ("apps/v1", "StatefulSet") => self.typed(value, |s: &mut StatefulSet, cfg| {
                inject_template(&mut s.spec.template, cfg)
            }),
            ("apps/v1", "DaemonSet") => self.typed(value, |d: &mut DaemonSet, cfg| {
                inject_template(&mut d.spec.template, cfg)
            }),
            ("apps/v1", "ReplicaSet") => self.typed(value, |r: &mut ReplicaSet, cfg| {
                // A ReplicaSet's template is optional; without one there is no pod to inject.
                inject_template(
                    r.spec.template.get_or_insert_with(PodTemplateSpec::default),
                    cfg,
                )
            }),
            ("batch/v1", "Job") => self.typed(value, |job: &mut Job, cfg| {
                inject_template(
                    &mut job.spec.get_or_insert_with(Default::default).template,
                    cfg,
                )
            }),
            ("batch/v1", "CronJob") => self.typed(value, |cron: &mut CronJob, cfg| {
                let job = cron
                    .spec
                    .job_template
                    .spec
                    .get_or_insert_with(Default::default);
                inject_template(&mut job.template, cfg)
            }),
            _ => Ok(value),
        }
    }

    /// Decodes `value` as `T`, lets `edit` inject it, and encodes it again only if it was
    /// injected, so skipped workloads come out exactly as they went in.
    fn typed<T: DeserializeOwned + Serialize>(
        &mut self,
        value: Value,
        edit: impl FnOnce(&mut T, &InjectConfig) -> Result<Outcome, InjectError>,
    ) -> Result<Value, ManualError> {
        let index = self.index;
        let object = describe(&value);
        let mut typed: T =
            serde_json::from_value(value.clone()).map_err(|source| ManualError::InvalidObject {
                index,
                object: object.clone(),
                kind: value
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("object")
                    .to_owned(),
                source,
            })?;
        let outcome = edit(&mut typed, self.cfg).map_err(|source| ManualError::Inject {
            index,
            object: object.clone(),
            source,
        })?;
        self.reports.push(Report {
            index,
            object: object.clone(),
            outcome,
        });
        match outcome {
            Outcome::Skipped(_) => Ok(value),
            Outcome::Injected => {
                serde_json::to_value(&typed).map_err(|source| ManualError::Encode {
                    index,
                    object,
                    source,
                })
            }
        }
    }

    fn list(&mut self, mut value: Value) -> Result<Value, ManualError> {
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for item in items.iter_mut() {
                *item = self.process(std::mem::take(item))?;
            }
        }
        Ok(value)
    }
}

/// Manual injection is an explicit request: decide as if the namespace had the injection label
/// and nothing were excluded, which leaves the pod's opt-out, hostNetwork and already-injected.
fn manual_decision(pod: &Pod, cfg: &InjectConfig) -> Decision {
    let injection = InjectionSpec {
        excluded_namespaces: Vec::new(),
        ..cfg.mesh.injection.clone()
    };
    let label = &injection.namespace_label;
    let labels = BTreeMap::from([(label.key.clone(), label.value.clone())]);
    decide(pod, "", &labels, &injection)
}

fn inject_pod(pod: &mut Pod, cfg: &InjectConfig) -> Result<Outcome, InjectError> {
    match manual_decision(pod, cfg) {
        Decision::Skip(reason) => Ok(Outcome::Skipped(reason)),
        Decision::Inject(_) => {
            *pod = patch::inject(pod, cfg)?;
            Ok(Outcome::Injected)
        }
    }
}

/// Injects a workload's pod template by wrapping it in a Pod, so templates and pods share one
/// code path.
fn inject_template(
    template: &mut PodTemplateSpec,
    cfg: &InjectConfig,
) -> Result<Outcome, InjectError> {
    let mut pod = Pod {
        metadata: template.metadata.take().unwrap_or_default(),
        spec: template.spec.take(),
        status: None,
    };
    let outcome = inject_pod(&mut pod, cfg)?;
    template.metadata = Some(pod.metadata);
    template.spec = pod.spec;
    Ok(outcome)
}

/// `Kind namespace/name` (or as much of it as the document has).
fn describe(value: &Value) -> String {
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(value, |v, key| v.get(key))
            .and_then(Value::as_str)
    };
    let kind = field(&["kind"]).unwrap_or("object");
    match (
        field(&["metadata", "namespace"]),
        field(&["metadata", "name"]),
    ) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_owned(),
    }
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn load_meshconfig(path: &Path) -> anyhow::Result<MeshConfigSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let meshconfig: MeshConfig =
        yaml::from_str(&text).with_context(|| format!("{} is not a MeshConfig", path.display()))?;
    Ok(meshconfig.spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names;

    fn cfg() -> InjectConfig {
        config(MeshConfigSpec::default(), "cp:9090", false)
    }

    fn docs(output: &str) -> Vec<Value> {
        yaml::documents(output).unwrap()
    }

    /// The full error chain, as `skein inject` prints it.
    fn chain(err: ManualError) -> String {
        format!("{:#}", anyhow::Error::from(err))
    }

    fn container_names(containers: &serde_json::Value) -> Vec<&str> {
        containers
            .as_array()
            .map(|a| a.iter().map(|c| c["name"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }

    const DEPLOYMENT_AND_SERVICE: &str = r#"
# the web tier
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: web}
  template:
    metadata:
      labels: {app.kubernetes.io/name: web}
    spec:
      containers:
      - name: app
        image: web:1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  zzz-unknown-field: kept
  selector: {app.kubernetes.io/name: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

    #[test]
    fn deployment_is_injected_and_service_passes_through() {
        let (output, reports) =
            inject_documents_with_reports(DEPLOYMENT_AND_SERVICE, &cfg()).unwrap();
        assert_eq!(output.matches("\n---\n").count(), 1, "{output}");
        let docs = docs(&output);
        assert_eq!(docs.len(), 2);

        let template = &docs[0]["spec"]["template"];
        assert_eq!(
            container_names(&template["spec"]["initContainers"]),
            [names::INIT_CONTAINER, names::PROXY_CONTAINER]
        );
        assert_eq!(container_names(&template["spec"]["containers"]), ["app"]);
        assert!(template["metadata"]["annotations"][patch::STATUS_ANNOTATION].is_string());
        assert_eq!(
            docs[0]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            "web"
        );

        let service: Value =
            yaml::from_str(DEPLOYMENT_AND_SERVICE.split("---").nth(1).unwrap()).unwrap();
        assert_eq!(docs[1], service);
        assert!(output.contains("zzz-unknown-field: kept"));

        assert_eq!(
            reports,
            [Report {
                index: 1,
                object: "Deployment shop/web".to_owned(),
                outcome: Outcome::Injected
            }]
        );
    }

    #[test]
    fn manual_injection_is_idempotent() {
        let once = inject_documents(DEPLOYMENT_AND_SERVICE, &cfg()).unwrap();
        let (twice, reports) = inject_documents_with_reports(&once, &cfg()).unwrap();
        assert_eq!(twice, once);
        assert_eq!(
            reports[0].outcome,
            Outcome::Skipped(SkipReason::AlreadyInjected)
        );
    }

    #[test]
    fn cronjob_template_is_injected() {
        let input = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: report:1}]
"#;
        let docs = docs(&inject_documents(input, &cfg()).unwrap());
        let pod_spec = &docs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(
            container_names(&pod_spec["initContainers"]),
            [names::INIT_CONTAINER, names::PROXY_CONTAINER]
        );
        assert_eq!(pod_spec["initContainers"][1]["restartPolicy"], "Always");
        assert_eq!(pod_spec["restartPolicy"], "OnFailure");
        assert_eq!(docs[0]["spec"]["schedule"], "0 * * * *");
    }

    #[test]
    fn classic_sidecar_with_no_native_sidecar() {
        let mut mesh = MeshConfigSpec::default();
        mesh.proxy.native_sidecar = NativeSidecar::Enabled;
        let cfg = config(mesh, "cp:9090", true);
        let input = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: once}\nspec:\n  template:\n    spec:\n      containers: [{name: task}]\n";
        let docs = docs(&inject_documents(input, &cfg).unwrap());
        let pod_spec = &docs[0]["spec"]["template"]["spec"];
        assert_eq!(
            container_names(&pod_spec["initContainers"]),
            [names::INIT_CONTAINER]
        );
        assert_eq!(
            container_names(&pod_spec["containers"]),
            [names::PROXY_CONTAINER, "task"]
        );
    }

    #[test]
    fn opted_out_and_host_network_pods_are_left_alone() {
        let input = r#"
apiVersion: v1
kind: Pod
metadata:
  name: db
  labels: {skein.dev/inject: "false"}
spec:
  containers: [{name: db, image: postgres}]
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec:
  hostNetwork: true
  containers: [{name: agent}]
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: kube-system}
spec:
  containers: [{name: tool}]
"#;
        let (output, reports) = inject_documents_with_reports(input, &cfg()).unwrap();
        let docs = docs(&output);
        assert!(docs[0]["spec"].get("initContainers").is_none());
        assert!(docs[1]["spec"].get("initContainers").is_none());
        // An explicit `skein inject` ignores the MeshConfig's excluded namespaces.
        assert!(docs[2]["spec"]["initContainers"].is_array());
        let outcomes: Vec<Outcome> = reports.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Skipped(SkipReason::OptedOut),
                Outcome::Skipped(SkipReason::HostNetwork),
                Outcome::Injected
            ]
        );
        assert_eq!(reports[1].object, "Pod kube-system/agent");
    }

    #[test]
    fn lists_have_each_item_injected() {
        let input = r#"
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {name: db}
  spec:
    selector: {matchLabels: {app: db}}
    serviceName: db
    template:
      metadata: {labels: {app: db}}
      spec: {containers: [{name: db}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings}
  data: {a: b}
"#;
        let docs = docs(&inject_documents(input, &cfg()).unwrap());
        let items = &docs[0]["items"];
        assert!(items[0]["spec"]["template"]["spec"]["initContainers"].is_array());
        assert_eq!(items[1]["data"]["a"], "b");
    }

    #[test]
    fn empty_documents_are_dropped() {
        let input = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n";
        let output = inject_documents(input, &cfg()).unwrap();
        assert_eq!(
            output,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"
        );
        assert_eq!(inject_documents("", &cfg()).unwrap(), "");
    }

    #[test]
    fn invalid_yaml_names_the_line() {
        let input = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n";
        let err = chain(inject_documents(input, &cfg()).unwrap_err());
        assert!(err.starts_with("invalid YAML: "), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    /// Modes are octal as `kubectl` reads them, and come out as the number the apiserver stores.
    #[test]
    fn octal_modes_mean_what_they_mean_to_kubectl() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: app}]\n  volumes: [{name: s, secret: {secretName: s, defaultMode: 0644}}]\n";
        let docs = docs(&inject_documents(input, &cfg()).unwrap());
        assert_eq!(docs[0]["spec"]["volumes"][0]["secret"]["defaultMode"], 420);
    }

    #[test]
    fn an_ill_typed_workload_names_the_document_and_object() {
        let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: many}\n";
        let err = chain(inject_documents(input, &cfg()).unwrap_err());
        assert!(
            err.starts_with("document 1 (Deployment web): not a valid Deployment: "),
            "{err}"
        );
    }

    #[test]
    fn injection_errors_name_the_document_and_the_annotation() {
        let input = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: ops}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata:
      labels: {app: agent}
      annotations: {traffic.skein.dev/exclude-inbound-ports: http}
    spec: {containers: [{name: agent}]}
"#;
        let err = chain(inject_documents(input, &cfg()).unwrap_err());
        assert_eq!(
            err,
            r#"document 2 (DaemonSet ops/agent): cannot inject the proxy: annotation traffic.skein.dev/exclude-inbound-ports: "http" is not a port (1-65535)"#
        );
        let no_containers =
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: rs}\nspec: {selector: {}}\n";
        let err = chain(inject_documents(no_containers, &cfg()).unwrap_err());
        assert_eq!(
            err,
            "document 1 (ReplicaSet rs): cannot inject the proxy: the pod has no containers"
        );
    }

    #[test]
    fn the_sample_meshconfig_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/meshconfig.yaml");
        assert_eq!(load_meshconfig(&path).unwrap(), MeshConfigSpec::default());
        let cfg = config(MeshConfigSpec::default(), "cp:9090", true);
        assert_eq!(cfg.mesh.proxy.native_sidecar, NativeSidecar::Disabled);
        assert!(!cfg.native_sidecars_supported);
    }
}
