//! One pod on the node, from sandbox to teardown: init containers in order, native sidecars
//! started before the app and kept up, app containers under the pod's restart policy with
//! back-off, probes, status written back, graceful termination.
//!
//! Each pod has one worker task; each long-running container has a supervisor task. They share
//! the pod's [`PodRecord`], and a status writer turns every change of it into a status patch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::sync::{Notify, watch};

use super::command::{self, ResolvedCommand};
use super::context::NodeContext;
use super::env::{self, EnvSources};
use super::hooks;
use super::probe::{self, ProbeTarget, ProbeTiming, Verdict};
use super::process::{self, ProcessSpec};
use super::sandbox::{self, Sandbox};
use super::status::{self, ContainerRecord, ContainerRole, PodRecord, RunState};
use super::volumes::{self, Mount, TokenKey, VolumeContent, VolumeSources};

/// The user and group the project image runs as (`USER 65532:65532` in the Dockerfile) when the
/// pod does not say.
const IMAGE_USER: u32 = 65532;
/// A container that ran this long resets its crash back-off, as in the kubelet.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often projected volumes (tokens, ConfigMaps, Secrets) are refreshed.
const VOLUME_REFRESH: Duration = Duration::from_secs(120);
/// Grace for containers when the node itself stops.
const NODE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a pod's containers are being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The pod is being deleted: stop, then remove the sandbox and release the pod.
    Delete { grace: Duration },
    /// The node is stopping: stop, keep the sandbox record (and IP) for the next run.
    NodeShutdown,
}

impl Stop {
    fn grace(self) -> Duration {
        match self {
            Self::Delete { grace } => grace,
            Self::NodeShutdown => NODE_SHUTDOWN_GRACE,
        }
    }
}

/// What a pod's tasks share.
struct Shared {
    ctx: Arc<NodeContext>,
    sandbox: Sandbox,
    pod: watch::Receiver<Arc<Pod>>,
    record: Mutex<PodRecord>,
    changed: Notify,
    stop: watch::Receiver<Option<Stop>>,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, PodRecord> {
        // A poisoned lock only means a panic elsewhere; the record itself is still whole.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, container: &str, change: impl FnOnce(&mut ContainerRecord)) {
        if let Some(c) = self.record().container_mut(container) {
            change(c);
        }
        self.changed.notify_one();
    }

    fn pod(&self) -> Arc<Pod> {
        self.pod.borrow().clone()
    }

    fn stop_requested(&self) -> Option<Stop> {
        *self.stop.borrow()
    }

    /// Resolves when a stop is requested.
    async fn stopped(&self) -> Stop {
        let mut stop = self.stop.clone();
        loop {
            if let Some(s) = *stop.borrow_and_update() {
                return s;
            }
            if stop.changed().await.is_err() {
                return Stop::NodeShutdown;
            }
        }
    }

    fn pod_label(&self) -> String {
        format!(
            "{}/{}",
            self.sandbox.record.namespace, self.sandbox.record.name
        )
    }
}

/// Runs the pod until it is deleted (`stop` says Delete) or the node stops; `pod` carries the
/// latest object from the apiserver.
pub async fn run(
    ctx: Arc<NodeContext>,
    pod: watch::Receiver<Arc<Pod>>,
    stop: watch::Receiver<Option<Stop>>,
) {
    let first = pod.borrow().clone();
    let label = format!(
        "{}/{}",
        first.namespace().unwrap_or_default(),
        first.name_any()
    );
    let Some(sandbox) = ensure_sandbox(&ctx, &first, &label, stop.clone()).await else {
        return;
    };
    let killed = sandbox.kill_leftovers();
    if killed > 0 {
        tracing::info!(pod = %label, killed, "stopped container processes a previous node run left");
    }
    let record = initial_record(&first, &ctx, &sandbox);
    let shared = Arc::new(Shared {
        ctx,
        sandbox,
        pod,
        record: Mutex::new(record),
        changed: Notify::new(),
        stop,
    });
    let writer = tokio::spawn(write_status(shared.clone()));
    let refresher = tokio::spawn(refresh_volumes(shared.clone()));

    let how = tokio::select! {
        () = lifecycle(shared.clone()) => shared.stopped().await,
        how = shared.stopped() => how,
    };
    // Every supervisor reacts to the stop itself; wait until they are all down.
    wait_all_stopped(&shared).await;
    refresher.abort();
    shared.changed.notify_one();
    // Let the writer publish the final states before the pod goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.abort();

    match how {
        Stop::NodeShutdown => {
            if let Err(err) = shared.sandbox.suspend() {
                tracing::warn!(pod = %shared.pod_label(), error = %err, "suspending the sandbox");
            }
        }
        Stop::Delete { .. } => {
            let sandbox = shared.sandbox.clone();
            let ip = sandbox.record.ip;
            match tokio::task::spawn_blocking(move || sandbox.destroy()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(pod = %shared.pod_label(), error = %err, "removing the sandbox")
                }
                Err(err) => tracing::warn!(error = %err, "sandbox teardown task failed"),
            }
            if let Some(ip) = ip {
                shared.ctx.release_ip(ip);
            }
            release_pod(&shared).await;
            tracing::info!(pod = %shared.pod_label(), "pod removed");
        }
    }
}

async fn ensure_sandbox(
    ctx: &Arc<NodeContext>,
    pod: &Arc<Pod>,
    label: &str,
    stop: watch::Receiver<Option<Stop>>,
) -> Option<Sandbox> {
    let mut delay = Duration::from_secs(1);
    loop {
        let ctx2 = ctx.clone();
        let pod2 = pod.clone();
        let result = tokio::task::spawn_blocking(move || {
            sandbox::ensure(&ctx2.state_dir, &pod2, &ctx2.network, &ctx2.dns, || {
                ctx2.allocate_ip()
            })
        })
        .await;
        match result {
            Ok(Ok(sandbox)) => return Some(sandbox),
            Ok(Err(err)) => {
                tracing::warn!(pod = %label, error = %err, "creating the pod sandbox; retrying")
            }
            Err(err) => tracing::warn!(pod = %label, error = %err, "sandbox task failed; retrying"),
        }
        if stop.borrow().is_some() {
            return None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The record for a pod starting on this node; restart counts carry over from the status an
/// earlier node run wrote, so a node restart shows as container restarts, not new containers.
fn initial_record(pod: &Pod, ctx: &NodeContext, sandbox: &Sandbox) -> PodRecord {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let previous: BTreeMap<String, i32> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|s| {
            let ran = s
                .state
                .as_ref()
                .is_some_and(|st| st.running.is_some() || st.terminated.is_some());
            (s.name.clone(), s.restart_count + i32::from(ran))
        })
        .collect();
    let mut containers = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let role = if c.restart_policy.as_deref() == Some("Always") {
            ContainerRole::Sidecar
        } else {
            ContainerRole::Init
        };
        containers.push(ContainerRecord::new(&c.name, image_of(c), role));
    }
    for c in &spec.containers {
        containers.push(ContainerRecord::new(
            &c.name,
            image_of(c),
            ContainerRole::App,
        ));
    }
    for c in &mut containers {
        c.restart_count = previous.get(&c.name).copied().unwrap_or(0);
        if c.role == ContainerRole::App {
            c.state = RunState::waiting("ContainerCreating", None);
        }
    }
    PodRecord {
        pod_ip: sandbox.record.ip.or(Some(ctx.network.node_ip())),
        host_ip: ctx.network.node_ip(),
        start_time: status
            .start_time
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        sandbox_ready: true,
        initialized: false,
        init_failed: false,
        containers,
    }
}

fn image_of(container: &Container) -> &str {
    container.image.as_deref().unwrap_or_default()
}

/// Init containers in order (sidecars started and left running), then the app containers.
async fn lifecycle(shared: Arc<Shared>) {
    while let Err(err) = materialize_volumes(&shared).await {
        let message = err.to_string();
        tracing::warn!(pod = %shared.pod_label(), error = %message, "preparing volumes; retrying");
        let names: Vec<String> = shared
            .record()
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for name in names {
            shared.update(&name, |c| {
                c.state = RunState::waiting("CreateContainerConfigError", Some(message.clone()))
            });
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shared.stopped() => return,
        }
    }

    let spec = shared.pod().spec.clone().unwrap_or_default();
    for container in spec.init_containers.iter().flatten() {
        if container.restart_policy.as_deref() == Some("Always") {
            let (started_tx, mut started_rx) = watch::channel(false);
            tokio::spawn(supervise(
                shared.clone(),
                container.clone(),
                ContainerRole::Sidecar,
                Some(started_tx),
            ));
            // The next container starts once this sidecar has started (its startup probe passed).
            loop {
                if *started_rx.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    changed = started_rx.changed() => if changed.is_err() { return },
                    _ = shared.stopped() => return,
                }
            }
        } else {
            let outcome =
                supervise(shared.clone(), container.clone(), ContainerRole::Init, None).await;
            if outcome != Outcome::Succeeded {
                if outcome == Outcome::Failed {
                    shared.record().init_failed = true;
                    shared.changed.notify_one();
                    stop_sidecars_when_done(&shared).await;
                }
                return;
            }
        }
    }
    shared.record().initialized = true;
    shared.changed.notify_one();

    let apps: Vec<_> = spec
        .containers
        .iter()
        .map(|c| {
            tokio::spawn(supervise(
                shared.clone(),
                c.clone(),
                ContainerRole::App,
                None,
            ))
        })
        .collect();
    for app in apps {
        let _ = app.await;
    }
    stop_sidecars_when_done(&shared).await;
}

/// Once every app container has finished for good (restart policy Never/OnFailure), the pod is
/// complete and its sidecars are stopped, as Kubernetes does.
async fn stop_sidecars_when_done(shared: &Arc<Shared>) {
    let sidecars: Vec<u32> = shared
        .record()
        .containers
        .iter()
        .filter(|c| c.role == ContainerRole::Sidecar)
        .filter_map(|c| c.pid)
        .collect();
    for pid in sidecars {
        process::signal_group(pid, libc::SIGTERM);
    }
    // Sidecar supervisors see the pod is terminal and do not restart.
    shared.changed.notify_one();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Stopped,
}

/// Runs one container until it finishes for good or the pod stops, restarting it as its role
/// and the pod's restart policy say. `started` is told once the container has started.
async fn supervise(
    shared: Arc<Shared>,
    container: Container,
    role: ContainerRole,
    started: Option<watch::Sender<bool>>,
) -> Outcome {
    let name = container.name.clone();
    let mut crashes: u32 = 0;
    loop {
        if shared.stop_requested().is_some() {
            return Outcome::Stopped;
        }
        let spec = match prepare(&shared, &container).await {
            Ok(spec) => spec,
            Err(Waiting {
                reason,
                message,
                permanent,
            }) => {
                tracing::warn!(pod = %shared.pod_label(), container = %name, %reason, %message, "cannot start container");
                shared.update(&name, |c| {
                    c.state = RunState::waiting(reason, Some(message))
                });
                if permanent {
                    shared.stopped().await;
                    return Outcome::Stopped;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff(shared.ctx.backoff_base, crashes.max(1))) => continue,
                    _ = shared.stopped() => return Outcome::Stopped,
                }
            }
        };
        let mut child = match process::spawn(&spec) {
            Ok(child) => child,
            Err(err) => {
                let message = format!("starting {}: {err}", spec.program.display());
                shared.update(&name, |c| {
                    c.state = RunState::waiting("RunContainerError", Some(message))
                });
                crashes += 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff(shared.ctx.backoff_base, crashes)) => continue,
                    _ = shared.stopped() => return Outcome::Stopped,
                }
            }
        };
        let started_at = Timestamp::now();
        let began = Instant::now();
        shared.sandbox.record_pid(&name, child.pid);
        let has_startup_probe = container.startup_probe.is_some();
        shared.update(&name, |c| {
            c.state = RunState::Running { started_at };
            c.pid = Some(child.pid);
            c.started = !has_startup_probe;
            c.ready = false;
        });
        tracing::info!(pod = %shared.pod_label(), container = %name, pid = child.pid, "container started");

        let (kill_tx, mut kill_rx) = watch::channel(None::<String>);
        let probes = tokio::spawn(run_probes(
            shared.clone(),
            container.clone(),
            child.pid,
            kill_tx,
            started.clone(),
        ));

        let mut stopped_by = None;
        let exit = tokio::select! {
            exit = child.child.wait() => exit,
            reason = kill_requested(&mut kill_rx) => {
                tracing::info!(pod = %shared.pod_label(), container = %name, %reason, "killing container");
                terminate(&mut child, shared.pod_grace()).await
            }
            how = shared.stopped() => {
                stopped_by = Some(how);
                let mut grace = if role == ContainerRole::Sidecar { wait_apps_down(&shared, how.grace()).await } else { how.grace() };
                // A deleted pod's containers run their preStop hook first (probes go on, so the
                // pod stays Ready while its endpoints are marked terminating); the node's own
                // restarts and forced deletions (no grace) skip it.
                let pod_ip = shared.record().pod_ip;
                if matches!(how, Stop::Delete { .. })
                    && !grace.is_zero()
                    && let Some(handler) = hooks::pre_stop(&container)
                    && let Some(pod_ip) = pod_ip
                {
                    let target = ProbeTarget {
                        node_netns: shared.ctx.network.netns.clone(),
                        pod_ip,
                        container: container.clone(),
                        pid: Some(child.pid),
                    };
                    grace = hooks::run_pre_stop(handler, &target, grace, &shared.pod_label()).await;
                }
                terminate(&mut child, grace).await
            }
        };
        probes.abort();
        shared.sandbox.forget_pid(&name);
        let finished_at = Timestamp::now();
        let (exit_code, signal) = exit_details(&exit);
        let terminated = RunState::Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: exit.as_ref().err().map(|e| e.to_string()),
            started_at,
            finished_at,
        };
        tracing::info!(pod = %shared.pod_label(), container = %name, exit_code, "container exited");
        if stopped_by.is_some() {
            shared.update(&name, |c| {
                c.state = terminated;
                c.ready = false;
                c.pid = None;
                c.finished = true;
            });
            return Outcome::Stopped;
        }
        let succeeded = exit_code == 0;
        let restart = match role {
            ContainerRole::Sidecar => !shared.record().is_terminal() && !all_apps_finished(&shared),
            ContainerRole::Init => !succeeded && restart_policy(&shared) != "Never",
            ContainerRole::App => match restart_policy(&shared).as_str() {
                "Never" => false,
                "OnFailure" => !succeeded,
                _ => true,
            },
        };
        if !restart {
            shared.update(&name, |c| {
                c.state = terminated;
                c.ready = false;
                c.pid = None;
                c.finished = true;
            });
            return if succeeded {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
        }
        crashes = if began.elapsed() >= BACKOFF_RESET_AFTER {
            1
        } else {
            crashes + 1
        };
        let delay = backoff(shared.ctx.backoff_base, crashes);
        let pod_label = shared.pod_label();
        shared.update(&name, |c| {
            c.last_state = Some(terminated);
            c.restart_count += 1;
            c.ready = false;
            c.started = false;
            c.pid = None;
            c.state = RunState::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={name} pod={pod_label}",
                    delay.as_secs()
                )),
            );
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shared.stopped() => return Outcome::Stopped,
        }
    }
}

/// Resolves with the reason once a probe asks for the container to be killed.
async fn kill_requested(kill: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = kill.borrow_and_update().clone() {
            return reason;
        }
        if kill.changed().await.is_err() {
            // The probe task ended without asking: never resolve.
            std::future::pending::<()>().await;
        }
    }
}

impl Shared {
    /// The pod's grace period for a container killed by a failing liveness probe.
    fn pod_grace(&self) -> Duration {
        grace_seconds(&self.pod())
    }
}

/// The grace period to stop the pod with: the deletion's, else the spec's, else 30 s.
pub fn grace_seconds(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Sidecars stop after the app containers (Kubernetes 1.29+ order); returns the grace left.
async fn wait_apps_down(shared: &Arc<Shared>, grace: Duration) -> Duration {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        let apps_running = shared
            .record()
            .containers
            .iter()
            .any(|c| c.role == ContainerRole::App && c.pid.is_some());
        if !apps_running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(2))
}

async fn wait_all_stopped(shared: &Arc<Shared>) {
    loop {
        let running = shared.record().containers.iter().any(|c| c.pid.is_some());
        if !running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_apps_finished(shared: &Shared) -> bool {
    let record = shared.record();
    record.initialized
        && record
            .containers
            .iter()
            .filter(|c| c.role == ContainerRole::App)
            .all(|c| c.finished)
}

fn restart_policy(shared: &Shared) -> String {
    shared
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned())
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
async fn terminate(
    child: &mut process::ContainerProcess,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    child.signal(libc::SIGTERM);
    match tokio::time::timeout(grace, child.child.wait()).await {
        Ok(exit) => {
            // Anything the container left in its group goes too.
            child.signal(libc::SIGKILL);
            exit
        }
        Err(_) => {
            child.signal(libc::SIGKILL);
            child.child.wait().await
        }
    }
}

fn exit_details(exit: &std::io::Result<std::process::ExitStatus>) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            (None, None) => (255, None),
        },
        Err(_) => (255, None),
    }
}

/// `base`, doubled per consecutive crash, at most five minutes.
fn backoff(base: Duration, crashes: u32) -> Duration {
    let factor = 2u32.saturating_pow(crashes.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Startup, then liveness and readiness probes of one container run. A failed startup or
/// liveness probe asks for the container to be killed through `kill`.
async fn run_probes(
    shared: Arc<Shared>,
    container: Container,
    pid: u32,
    kill: watch::Sender<Option<String>>,
    started_signal: Option<watch::Sender<bool>>,
) {
    let name = container.name.clone();
    let Some(pod_ip) = shared.record().pod_ip else {
        return;
    };
    let target = ProbeTarget {
        node_netns: shared.ctx.network.netns.clone(),
        pod_ip,
        container: container.clone(),
        pid: Some(pid),
    };
    if let Some(startup) = &container.startup_probe {
        match probe_until(&startup.clone(), &target, true).await {
            Ok(()) => {}
            Err(reason) => {
                let _ = kill.send(Some(format!("startup probe failed: {reason}")));
                return;
            }
        }
    }
    shared.update(&name, |c| c.started = true);
    if let Some(tx) = &started_signal {
        let _ = tx.send(true);
    }

    let readiness = async {
        match &container.readiness_probe {
            None => shared.update(&name, |c| c.ready = true),
            Some(p) => {
                let timing = ProbeTiming::of(p);
                tokio::time::sleep(timing.initial_delay).await;
                let mut verdict = Verdict::new(timing);
                loop {
                    let result = probe::check(p, &target).await;
                    if let Err(reason) = &result {
                        tracing::debug!(container = %name, %reason, "readiness probe failed");
                    }
                    if let Some(ready) = verdict.record(result.is_ok()) {
                        tracing::info!(pod = %shared.pod_label(), container = %name, ready, "readiness changed");
                        shared.update(&name, |c| c.ready = ready);
                    }
                    tokio::time::sleep(timing.period).await;
                }
            }
        }
    };
    let liveness = async {
        if let Some(p) = &container.liveness_probe
            && let Err(reason) = probe_until(p, &target, false).await
        {
            let _ = kill.send(Some(format!("liveness probe failed: {reason}")));
        }
    };
    tokio::join!(readiness, liveness);
}

/// With `until_success`: probes until the probe passes (Ok) or fails its threshold (Err). Without:
/// probes until it fails its threshold (Err) — a liveness loop.
async fn probe_until(
    probe: &k8s_openapi::api::core::v1::Probe,
    target: &ProbeTarget,
    until_success: bool,
) -> Result<(), String> {
    let timing = ProbeTiming::of(probe);
    tokio::time::sleep(timing.initial_delay).await;
    let mut verdict = Verdict::new(timing);
    loop {
        let result = probe::check(probe, target).await;
        let reason = result.clone().err();
        match verdict.record(result.is_ok()) {
            Some(true) if until_success => return Ok(()),
            Some(false) => return Err(reason.unwrap_or_default()),
            _ => {}
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// Why a container cannot start (yet).
struct Waiting {
    reason: &'static str,
    message: String,
    /// Retrying cannot help (the image will never run here).
    permanent: bool,
}

/// Everything a container start needs: env, command, mounts, user.
async fn prepare(shared: &Arc<Shared>, container: &Container) -> Result<ProcessSpec, Waiting> {
    let image = image_of(container);
    if !command::image_is_runnable(image) {
        return Err(Waiting {
            reason: "ImageNotRunnable",
            message: format!(
                "image {image:?} cannot run on the Skein dev node: it has no container runtime and runs only the project's own image (repository `skein`, any tag), as the local skein binary"
            ),
            permanent: true,
        });
    }
    let config_error = |message: String| Waiting {
        reason: "CreateContainerConfigError",
        message,
        permanent: false,
    };
    let pod = shared.pod();
    let ctx = &shared.ctx;
    let namespace = pod.namespace().unwrap_or_default();
    let (config_maps, secrets) = namespace_sources(ctx, &namespace)
        .await
        .map_err(config_error)?;
    let services = ctx.services_in(&namespace);
    let masters = ctx.master_services();
    let record = shared.record().clone();
    let pod_ips: Vec<String> = record.pod_ip.iter().map(ToString::to_string).collect();
    let host_ip = record.host_ip.to_string();
    let sources = EnvSources {
        pod: &pod,
        pod_ips: &pod_ips,
        host_ip: &host_ip,
        node_name: &ctx.node_name,
        services: &services,
        master_services: &masters,
        config_maps: &config_maps,
        secrets: &secrets,
        node_allocatable_cpu_millis: ctx.allocatable.cpu_millis,
        node_allocatable_memory_bytes: ctx.allocatable.memory_bytes,
    };
    let env = env::container_env(container, &sources).map_err(|e| config_error(e.to_string()))?;
    let image_binary = ctx.image.current().map_err(|e| Waiting {
        reason: "ErrImagePull",
        message: format!("preparing the skein binary as the image: {e}"),
        permanent: false,
    })?;
    let ResolvedCommand { program, args } =
        command::resolve_command(container, &env, &image_binary, &ctx.host_path).map_err(|e| {
            Waiting {
                reason: "CreateContainerError",
                message: e.to_string(),
                permanent: false,
            }
        })?;
    let mut mounts =
        volumes::container_mounts(&pod, container, |volume| shared.sandbox.volume_dir(volume))
            .map_err(|e| config_error(e.to_string()))?;
    let spec = pod.spec.clone().unwrap_or_default();
    if !spec.host_network.unwrap_or(false)
        || spec.dns_policy.as_deref() == Some("ClusterFirstWithHostNet")
    {
        mounts.push(Mount {
            source: shared.sandbox.resolv_conf(),
            target: "/etc/resolv.conf".into(),
            read_only: true,
        });
    }
    mounts.push(Mount {
        source: shared.sandbox.hosts_file(),
        target: "/etc/hosts".into(),
        read_only: true,
    });
    let created = process::prepare_mount_points(&mounts)
        .map_err(|e| config_error(format!("creating mount points: {e}")))?;
    shared.ctx.note_mount_points(&created);

    let pod_security = spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let to_id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let user = to_id(security.run_as_user.or(pod_security.run_as_user)).unwrap_or(IMAGE_USER);
    let group = to_id(security.run_as_group.or(pod_security.run_as_group))
        .unwrap_or(if user == IMAGE_USER { IMAGE_USER } else { 0 });
    let supplemental_groups = pod_security
        .supplemental_groups
        .iter()
        .flatten()
        .chain(pod_security.fs_group.iter())
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    Ok(ProcessSpec {
        program,
        args,
        env,
        working_dir: Some(
            container
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".to_owned())
                .into(),
        ),
        user: Some(user),
        group: Some(group),
        supplemental_groups,
        netns: shared.sandbox.netns().path(),
        hostname: sandbox::hostname(&pod),
        mounts,
        log: shared.sandbox.log_path(&container.name),
    })
}

async fn namespace_sources(
    ctx: &NodeContext,
    namespace: &str,
) -> Result<(BTreeMap<String, ConfigMap>, BTreeMap<String, Secret>), String> {
    let lp = ListParams::default();
    let config_maps = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(|e| format!("listing ConfigMaps of {namespace}: {e}"))?;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(|e| format!("listing Secrets of {namespace}: {e}"))?;
    Ok((
        config_maps.into_iter().map(|c| (c.name_any(), c)).collect(),
        secrets.into_iter().map(|s| (s.name_any(), s)).collect(),
    ))
}

/// Writes every volume's content into the sandbox (tokens requested for the pod).
async fn materialize_volumes(shared: &Arc<Shared>) -> Result<(), String> {
    let pod = shared.pod();
    let ctx = &shared.ctx;
    let namespace = pod.namespace().unwrap_or_default();
    let (config_maps, secrets) = namespace_sources(ctx, &namespace).await?;
    let mut tokens = BTreeMap::new();
    for key in volumes::token_requests(&pod) {
        let token = request_token(ctx, &pod, &key).await?;
        tokens.insert(key, token);
    }
    let sources = VolumeSources {
        pod: &pod,
        config_maps: &config_maps,
        secrets: &secrets,
        tokens: &tokens,
        node_allocatable_cpu_millis: ctx.allocatable.cpu_millis,
        node_allocatable_memory_bytes: ctx.allocatable.memory_bytes,
    };
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let dir = shared.sandbox.volume_dir(&volume.name);
        let content = volumes::volume_content(&volume, &sources).map_err(|e| e.to_string())?;
        let written = match content {
            VolumeContent::EmptyDir => std::fs::create_dir_all(&dir).and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                // World-writable like the kubelet's emptyDir: any container user may use it.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            }),
            VolumeContent::Files(files) => {
                std::fs::create_dir_all(&dir).and_then(|()| volumes::write_files(&dir, &files))
            }
            VolumeContent::HostPath(_) => Ok(()),
        };
        written.map_err(|e| format!("writing volume {:?}: {e}", volume.name))?;
    }
    Ok(())
}

async fn request_token(ctx: &NodeContext, pod: &Pod, key: &TokenKey) -> Result<String, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: key.audience.clone().map(|a| vec![a]),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let response = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!("requesting a token for service account {namespace}/{account}: {e}")
        })?;
    response
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| format!("the token request for {namespace}/{account} returned no token"))
}

/// Tokens expire and ConfigMaps change: rewrite volumes now and then, as the kubelet does.
async fn refresh_volumes(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(VOLUME_REFRESH).await;
        if let Err(err) = materialize_volumes(&shared).await {
            tracing::warn!(pod = %shared.pod_label(), error = %err, "refreshing volumes");
        }
    }
}

/// Patches the pod's status whenever the record changes (and re-asserts it every few seconds,
/// which also repairs a write that failed).
async fn write_status(shared: Arc<Shared>) {
    let api: Api<Pod> =
        Api::namespaced(shared.ctx.client.clone(), &shared.sandbox.record.namespace);
    let name = shared.sandbox.record.name.clone();
    let mut last: Option<serde_json::Value> = None;
    loop {
        let pod = shared.pod();
        let record = shared.record().clone();
        let status = status::pod_status(&pod, &record, Timestamp::now());
        let value = serde_json::to_value(&status).unwrap_or_default();
        if last.as_ref() != Some(&value) {
            let patch = serde_json::json!({ "status": value });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last = Some(value),
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(err) => {
                    tracing::warn!(pod = %shared.pod_label(), error = %err, "writing pod status")
                }
            }
        }
        tokio::select! {
            () = shared.changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The final delete a kubelet issues once the pod's containers are gone (grace 0, guarded by
/// the UID so a newer pod of the same name is never touched).
async fn release_pod(shared: &Arc<Shared>) {
    let api: Api<Pod> =
        Api::namespaced(shared.ctx.client.clone(), &shared.sandbox.record.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(shared.sandbox.record.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&shared.sandbox.record.name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(err) => tracing::warn!(pod = %shared.pod_label(), error = %err, "releasing the pod"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, 2), Duration::from_secs(20));
        assert_eq!(backoff(base, 3), Duration::from_secs(40));
        assert_eq!(backoff(base, 10), MAX_BACKOFF);
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn grace_comes_from_the_deletion_then_the_spec() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "terminationGracePeriodSeconds": 7}
        }))
        .unwrap();
        assert_eq!(grace_seconds(&pod), Duration::from_secs(7));
        pod.metadata.deletion_grace_period_seconds = Some(2);
        assert_eq!(grace_seconds(&pod), Duration::from_secs(2));
        pod.spec = None;
        pod.metadata.deletion_grace_period_seconds = None;
        assert_eq!(grace_seconds(&pod), Duration::from_secs(30));
    }
}
