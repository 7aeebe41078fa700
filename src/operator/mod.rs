//! `skein operator`: reconciles the MeshConfig named `default` into an installed mesh.
//!
//! - [`desired`]: pure: MeshConfig → the objects that should (and should not) exist.
//! - [`certs`]: the mesh CA and the webhook serving certificate.
//! - [`apply`]: server-side apply, pruning, ordered teardown.
//! - [`status`]: conditions and component readiness.
//! - [`federation`]: remote clusters and the services they export.
//! - [`leader`]: leader election, so only one replica acts.
//!
//! Flow of one reconcile: namespace → CA → webhook certificate → every desired object →
//! readiness → federation → status. Deleting the MeshConfig runs the uninstall first (a
//! finalizer): the webhook configuration goes before anything else, so pod creation never
//! breaks.

pub mod apply;
pub mod certs;
pub mod desired;
pub mod federation;
pub mod leader;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::api::meshconfig::{ComponentStatus, ControlPlaneMode};
use crate::api::not_acting::NotActing;
use crate::api::{MeshConfig, MeshConfigStatus, names};
use crate::cli::OperatorArgs;
use desired::{Inputs, MANAGED_BY};
use federation::Federation;
use status::Observation;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "skein-operator";
/// Finalizer that runs the uninstall before the MeshConfig goes away.
pub const FINALIZER: &str = "skein.dev/uninstall";

/// Requeue intervals: poll quickly while the control plane comes up, slowly once it is ready
/// (certificate renewal is checked on every reconcile).
const REQUEUE_NOT_READY: Duration = Duration::from_secs(3);
const REQUEUE_READY: Duration = Duration::from_secs(600);
const REQUEUE_ERROR: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error("building the desired objects: {0}")]
    Desired(#[from] desired::DesiredError),
    #[error("writing the MeshConfig status: {0}")]
    Status(kube::Error),
    #[error("uninstalling: {0}")]
    Uninstall(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

struct Context {
    client: Client,
    recorder: Recorder,
    federation: Federation,
    metrics: OperatorMetrics,
}

#[derive(Clone)]
struct OperatorMetrics {
    reconciles: Counter,
    errors: Counter,
    duration: Histogram,
}

impl OperatorMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            errors: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
        };
        registry.register(
            "skein_operator_reconciles",
            "MeshConfig reconciles",
            metrics.reconciles.clone(),
        );
        registry.register(
            "skein_operator_reconcile_errors",
            "Failed MeshConfig reconciles",
            metrics.errors.clone(),
        );
        registry.register(
            "skein_operator_reconcile_duration_seconds",
            "Time one MeshConfig reconcile takes",
            metrics.duration.clone(),
        );
        metrics
    }
}

/// The Lease lives in a namespace that must exist before leader election can start. The mesh
/// namespace is the operator's to create (it installs into it anyway); any other is the user's,
/// and a missing one stops the operator with one line instead of a retry loop on `NotFound`.
async fn ensure_lease_namespace(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        // Cannot tell (e.g. no `get` on namespaces): leader election reports what follows.
        Err(err) => {
            tracing::debug!(error = %err, namespace, "could not check the lease namespace");
            return Ok(());
        }
    }
    if namespace != names::MESH_NAMESPACE {
        anyhow::bail!(
            "the lease namespace {namespace} does not exist: create it (`kubectl create namespace {namespace}`) or pass another --lease-namespace"
        );
    }
    // Server-side apply rather than a create: an apply names the object, so the operator's RBAC
    // can allow creating this one namespace only.
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    match namespaces
        .patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(namespace, "created the mesh namespace for the leader lease");
            Ok(())
        }
        Err(err) => Err(anyhow::anyhow!(
            "the mesh namespace {namespace} does not exist and could not be created ({err}): `kubectl create namespace {namespace}`, or install with the Helm chart (charts/skein) or config/"
        )),
    }
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes apiserver (KUBECONFIG or in-cluster config)")?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(leader::default_identity);

    let mut registry = Registry::default();
    let metrics = OperatorMetrics::register(&mut registry);
    let server = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("listening on {}", args.metrics_addr))?;
    tokio::spawn(serve_metrics(server, Arc::new(registry)));

    ensure_lease_namespace(&client, &args.lease_namespace).await?;
    tracing::info!(%identity, lease = %args.lease_name, "waiting to become the leader");
    let leadership = leader::Leadership::acquire(
        client.clone(),
        leader::LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration.as_std(),
        },
    )
    .await
    .context("acquiring the leader lease")?;
    tracing::info!(%identity, "leading");

    let federation = Federation::new(client.clone());
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity),
            },
        ),
        federation: federation.clone(),
        metrics,
    });

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let controller =
        controller(client, federation.clone(), shutdown_rx).run(reconcile, error_policy, context);
    let controller = controller.for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(error = %err, "reconcile");
        }
    });
    tokio::pin!(controller);
    let outcome = tokio::select! {
        _ = &mut controller => Ok(()),
        _ = leadership.lost() => Err(anyhow::anyhow!("lost the leader lease; exiting so a restart campaigns again")),
        _ = crate::signals::shutdown() => {
            tracing::info!("shutting down");
            let _ = shutdown_tx.send(true);
            controller.await;
            Ok(())
        }
    };
    federation.stop_all();
    if outcome.is_ok() {
        leadership.release().await;
    }
    outcome
}

fn controller(
    client: Client,
    federation: Federation,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Controller<MeshConfig> {
    let mesh_ns = names::MESH_NAMESPACE;
    // Only what we manage: a cluster may hold many Deployments and Secrets.
    let ours = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let federation_changes = tokio_stream_from_watch(federation.subscribe());
    let mut shutdown = shutdown;
    Controller::new(
        Api::<MeshConfig>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Deployment>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<Service>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<ConfigMap>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<Secret>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<ServiceAccount>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<Role>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<RoleBinding>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    .owns(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), mesh_ns),
        ours.clone(),
    )
    // Cluster-scoped: each by name, the only way the operator's RBAC (resourceNames) lets it
    // list and watch them.
    .owns(
        Api::<ClusterRole>::all(client.clone()),
        named(desired::CONTROL_PLANE),
    )
    .owns(
        Api::<ClusterRoleBinding>::all(client.clone()),
        named(desired::CONTROL_PLANE),
    )
    .owns(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        named(crate::inject::registration::WEBHOOK_CONFIGURATION_NAME),
    )
    .owns(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        named(crate::controlplane::registration::VALIDATING_WEBHOOK_NAME),
    )
    // `status.trust` follows the CA Secret (the user's, not owned) and the control plane's
    // ledger of issuers.
    .watches(
        Api::<Secret>::namespaced(client.clone(), mesh_ns),
        named(desired::CA_SECRET),
        |_| Some(ObjectRef::new(names::ACTIVE_MESHCONFIG)),
    )
    .watches(
        Api::<ConfigMap>::namespaced(client, mesh_ns),
        watcher::Config::default().fields(&format!(
            "metadata.name={}",
            crate::controlplane::identity::trust::LEDGER_CONFIGMAP
        )),
        |_| Some(ObjectRef::new(names::ACTIVE_MESHCONFIG)),
    )
    .reconcile_all_on(federation_changes)
    .graceful_shutdown_on(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
}

/// Watches the one object called `name`.
fn named(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

/// A stream that yields whenever the watch value changes.
fn tokio_stream_from_watch(
    receiver: tokio::sync::watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
}

async fn reconcile(mc: Arc<MeshConfig>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(mc, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(mc: Arc<MeshConfig>, ctx: &Context) -> Result<Action, ReconcileError> {
    let api = Api::<MeshConfig>::all(ctx.client.clone());
    if mc.name_any() != names::ACTIVE_MESHCONFIG {
        write_not_active(&api, &mc).await?;
        return Ok(Action::await_change());
    }
    finalizer(&api, FINALIZER, mc, |event| async {
        match event {
            finalizer::Event::Apply(mc) => install(&mc, ctx).await,
            finalizer::Event::Cleanup(mc) => uninstall(&mc, ctx).await,
        }
    })
    .await
    .map_err(|err| match err {
        finalizer::Error::ApplyFailed(err) | finalizer::Error::CleanupFailed(err) => err,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

fn error_policy(mc: Arc<MeshConfig>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.inc();
    tracing::warn!(meshconfig = %mc.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(REQUEUE_ERROR)
}

async fn install(mc: &MeshConfig, ctx: &Context) -> Result<Action, ReconcileError> {
    let client = &ctx.client;
    let version = mc.spec.effective_version().to_owned();
    let applied = apply_install(mc, client).await;
    let (install_result, ca_pem) = match applied {
        Ok((changes, ca_pem)) => {
            for (verb, kind, what) in changes {
                publish(
                    ctx,
                    mc,
                    EventType::Normal,
                    &format!("{verb}{kind}"),
                    format!("{verb} {what}"),
                )
                .await;
            }
            (Ok(()), Some(ca_pem))
        }
        Err((reason, message)) => {
            publish(ctx, mc, EventType::Warning, &reason, message.clone()).await;
            (Err((reason, message)), None)
        }
    };

    let (control_plane, rolling_out) = match (
        &mc.spec.control_plane.mode,
        &mc.spec.control_plane.external,
        &ca_pem,
    ) {
        (ControlPlaneMode::External, Some(external), Some(ca_pem)) => (
            status::probe_external(&external.webhook_url, ca_pem, &version).await,
            false,
        ),
        (ControlPlaneMode::External, _, _) => (
            not_ready_component(&version, "the mesh is not installed"),
            false,
        ),
        _ => {
            let deployments = Api::<Deployment>::namespaced(client.clone(), names::MESH_NAMESPACE);
            let deployment = deployments
                .get_opt(desired::CONTROL_PLANE)
                .await
                .ok()
                .flatten();
            status::deployment_component(deployment.as_ref(), &version)
        }
    };

    ctx.federation.sync(&mc.spec.federation.clusters);
    let observation = Observation {
        install: install_result.clone(),
        control_plane: control_plane.clone(),
        rolling_out,
        fields_not_acting: mc.spec.fields_not_acting(),
    };
    let (trust, trust_changes_at) = match status::read_trust(client).await {
        Some((trust, at)) => (Some(trust), at),
        None => (None, None),
    };
    let now = Time(Timestamp::now());
    let previous = mc.status.clone().unwrap_or_default();
    let new_status = MeshConfigStatus {
        observed_generation: mc.metadata.generation,
        version: Some(version.clone()),
        trust,
        conditions: status::conditions(
            &previous.conditions,
            mc.metadata.generation,
            &observation,
            &now,
        ),
        components: vec![control_plane.clone()],
        federation: ctx.federation.status(),
    };
    if new_status != previous {
        if control_plane.ready && !previous.components.iter().any(|c| c.ready) {
            publish(
                ctx,
                mc,
                EventType::Normal,
                "Ready",
                format!("the mesh {version} is ready"),
            )
            .await;
        }
        write_status(
            &Api::<MeshConfig>::all(client.clone()),
            &mc.name_any(),
            &new_status,
        )
        .await?;
    }
    // A retained root leaves the bundle at a set time: report it then, not 10 minutes later.
    let ready_requeue = trust_changes_at
        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
        .map_or(REQUEUE_READY, |wait| {
            REQUEUE_READY.min(wait + Duration::from_secs(1))
        });
    Ok(match (install_result, control_plane.ready) {
        (Err(_), _) => Action::requeue(REQUEUE_ERROR),
        (Ok(()), false) => Action::requeue(REQUEUE_NOT_READY),
        (Ok(()), true) => Action::requeue(ready_requeue),
    })
}

/// Applies everything; on failure returns the condition reason and a message a user can act on.
async fn apply_install(
    mc: &MeshConfig,
    client: &Client,
) -> Result<(apply::Changes, String), (String, String)> {
    let failed = |reason: &str, message: String| (reason.to_owned(), message);
    // The namespace first: the CA Secret lives in it.
    let bootstrap = desired::desired(
        mc,
        &Inputs {
            ca_cert_pem: "",
            settings_hash: "",
        },
    )
    .map_err(|e| failed("InvalidSpec", e.to_string()))?;
    let namespace = bootstrap
        .objects
        .iter()
        .filter(|o| o.resource.kind == "Namespace")
        .cloned()
        .collect::<Vec<_>>();
    let mut changes = apply::apply_all(client, &namespace)
        .await
        .map_err(|e| failed("ApplyFailed", e.to_string()))?;

    let ca_and_bundle = certs::load_or_create_ca(client)
        .await
        .map_err(|e| failed(e.reason(), e.to_string()))?;
    certs::ensure_issuer(client, &ca_and_bundle, mc)
        .await
        .map_err(|e| failed(e.reason(), e.to_string()))?;
    let (ca, _) = ca_and_bundle;
    certs::ensure_webhook_cert(client, &ca, mc, &desired::webhook_cert_names(mc))
        .await
        .map_err(|e| failed(e.reason(), e.to_string()))?;
    let settings_hash = settings_hash(mc);
    let install = desired::desired(
        mc,
        &Inputs {
            ca_cert_pem: &ca.pem.cert_pem,
            settings_hash: &settings_hash,
        },
    )
    .map_err(|e| failed("InvalidSpec", e.to_string()))?;
    changes.extend(
        apply::apply_all(client, &install.objects)
            .await
            .map_err(|e| failed("ApplyFailed", e.to_string()))?,
    );
    changes.extend(
        apply::delete_all(client, &install.absent)
            .await
            .map_err(|e| failed("ApplyFailed", e.to_string()))?,
    );
    Ok((changes, ca.pem.cert_pem))
}

/// Uninstall: the webhook configuration first (so pod creation never depends on a control plane
/// that is going away), then everything else the MeshConfig owns. The namespace and the CA
/// Secret stay (see `certs`).
async fn uninstall(mc: &MeshConfig, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.federation.stop_all();
    let install = desired::desired(
        mc,
        &Inputs {
            ca_cert_pem: "",
            settings_hash: "",
        },
    )?;
    let (webhook, rest): (Vec<_>, Vec<_>) = install
        .objects
        .into_iter()
        .filter(|o| o.resource.kind != "Namespace")
        .map(|o| desired::AbsentObject {
            resource: o.resource,
            namespace: o.namespace,
            name: o.name,
        })
        .partition(|o| o.resource.kind.ends_with("WebhookConfiguration"));
    for (step, objects) in [
        ("webhook", webhook),
        ("control plane", rest.into_iter().rev().collect()),
    ] {
        let changes = apply::delete_all(&ctx.client, &objects).await?;
        for (_, kind, what) in changes {
            publish(
                ctx,
                mc,
                EventType::Normal,
                &format!("Uninstalled{kind}"),
                format!("deleted {what} ({step})"),
            )
            .await;
        }
    }
    let our_secrets =
        [desired::WEBHOOK_TLS_SECRET, desired::ISSUER_SECRET].map(|name| desired::AbsentObject {
            resource: kube::api::ApiResource::erase::<Secret>(&()),
            namespace: Some(names::MESH_NAMESPACE.to_owned()),
            name: name.to_owned(),
        });
    apply::delete_all(&ctx.client, &our_secrets).await?;
    Ok(Action::await_change())
}

async fn write_not_active(api: &Api<MeshConfig>, mc: &MeshConfig) -> Result<(), ReconcileError> {
    let previous = mc.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let new_status = MeshConfigStatus {
        observed_generation: mc.metadata.generation,
        conditions: vec![status::not_active(
            &previous.conditions,
            mc.metadata.generation,
            &now,
            names::ACTIVE_MESHCONFIG,
        )],
        ..Default::default()
    };
    if new_status != previous {
        write_status(api, &mc.name_any(), &new_status).await?;
    }
    Ok(())
}

fn not_ready_component(version: &str, message: &str) -> ComponentStatus {
    ComponentStatus {
        name: status::CONTROL_PLANE_COMPONENT.to_owned(),
        ready: false,
        version: Some(version.to_owned()),
        message: Some(message.to_owned()),
    }
}

async fn write_status(
    api: &Api<MeshConfig>,
    name: &str,
    status: &MeshConfigStatus,
) -> Result<(), ReconcileError> {
    // A merge patch of the whole status: lists are replaced, which is what we want here.
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(ReconcileError::Status)?;
    Ok(())
}

async fn publish(ctx: &Context, mc: &MeshConfig, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &mc.object_ref(&())).await {
        tracing::warn!(error = %err, "could not record an event");
    }
}

/// A stable hash (FNV-1a) of the settings the control plane reads: a change restarts its pods.
fn settings_hash(mc: &MeshConfig) -> String {
    let text = serde_json::to_string(&mc.spec).unwrap_or_default();
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

async fn serve_metrics(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { crate::telemetry::metrics_response(&registry) }
            }),
        );
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(error = %err, "the metrics server stopped");
    }
}
