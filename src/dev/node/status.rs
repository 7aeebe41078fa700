//! What the node knows about a pod's containers, and the pure translation of it into the Pod
//! status a kubelet writes: phase, IPs, conditions, container and init container statuses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Where a container sits in the pod's start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRole {
    /// Runs to completion before anything after it starts.
    Init,
    /// An init container with `restartPolicy: Always`: starts in init order, then runs for the
    /// pod's life.
    Sidecar,
    App,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

impl RunState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running { .. })
    }

    fn to_api(&self) -> ContainerState {
        match self {
            Self::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            Self::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..ContainerState::default()
            },
            Self::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: Some(Time(*started_at)),
                    finished_at: Some(Time(*finished_at)),
                    container_id: None,
                }),
                ..ContainerState::default()
            },
        }
    }
}

/// One container as the node runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub role: ContainerRole,
    pub state: RunState,
    pub last_state: Option<RunState>,
    pub restart_count: i32,
    pub ready: bool,
    /// Startup probe passed (or none), for a running container.
    pub started: bool,
    /// Terminated and will not run again (completed init container, or the restart policy
    /// says no).
    pub finished: bool,
    pub pid: Option<u32>,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str, role: ContainerRole) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            role,
            state: RunState::waiting("PodInitializing", None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            finished: false,
            pid: None,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, RunState::Terminated { exit_code: 0, .. })
    }

    fn to_api(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: format!("skein-dev-node://{}", self.image),
            container_id: self.pid.map(|pid| format!("skein-dev-node://{pid}")),
            ready: self.ready,
            restart_count: self.restart_count,
            started: Some(self.started && self.state.is_running()),
            state: Some(self.state.to_api()),
            last_state: self.last_state.as_ref().map(RunState::to_api),
            ..ContainerStatus::default()
        }
    }
}

/// A pod as the node runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    pub sandbox_ready: bool,
    /// Init containers done and sidecars started: app containers may run.
    pub initialized: bool,
    /// An init container failed and the restart policy says never again.
    pub init_failed: bool,
    /// Init containers (regular and sidecars) in spec order, then app containers.
    pub containers: Vec<ContainerRecord>,
}

impl PodRecord {
    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    fn apps(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.containers
            .iter()
            .filter(|c| c.role == ContainerRole::App)
    }

    pub fn phase(&self) -> &'static str {
        if self.init_failed {
            return "Failed";
        }
        if !self.initialized {
            return "Pending";
        }
        if self.apps().all(|c| c.finished) {
            return if self.apps().all(ContainerRecord::succeeded) {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        let ever_ran = |c: &&ContainerRecord| {
            c.state.is_running() || c.last_state.is_some() || c.restart_count > 0 || c.finished
        };
        if self.apps().any(|c| ever_ran(&c)) {
            "Running"
        } else {
            "Pending"
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }
}

/// The status to write for `pod`, keeping conditions the node does not own (PodScheduled from
/// the scheduler, readiness gates) and transition times of conditions that did not change.
pub fn pod_status(pod: &Pod, record: &PodRecord, now: Timestamp) -> PodStatus {
    let previous = pod.status.clone().unwrap_or_default();
    let previous_conditions: BTreeMap<String, PodCondition> = previous
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.clone()))
        .collect();
    let phase = record.phase();
    let terminal = record.is_terminal();

    let not_initialized: Vec<&str> = record
        .containers
        .iter()
        .filter(|c| match c.role {
            ContainerRole::Init => !c.succeeded(),
            ContainerRole::Sidecar => !c.started,
            ContainerRole::App => false,
        })
        .map(|c| c.name.as_str())
        .collect();
    // Sidecars count toward readiness, as in Kubernetes 1.29+.
    let unready: Vec<&str> = record
        .containers
        .iter()
        .filter(|c| c.role != ContainerRole::Init && !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let gates_ok = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .all(|gate| {
            previous_conditions
                .get(&gate.condition_type)
                .is_some_and(|c| c.status == "True")
        });

    let mut ours = vec![
        condition("PodReadyToStartContainers", record.sandbox_ready, None),
        condition(
            "Initialized",
            record.initialized || (not_initialized.is_empty() && !record.init_failed),
            (!not_initialized.is_empty()).then(|| {
                (
                    "ContainersNotInitialized",
                    format!(
                        "containers with incomplete status: [{}]",
                        not_initialized.join(" ")
                    ),
                )
            }),
        ),
    ];
    let ready_reason = if terminal {
        Some(("PodCompleted", String::new()))
    } else {
        (!unready.is_empty()).then(|| {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        })
    };
    let containers_ready = !terminal && unready.is_empty();
    ours.push(condition(
        "ContainersReady",
        containers_ready,
        ready_reason.clone(),
    ));
    ours.push(condition(
        "Ready",
        containers_ready && gates_ok,
        ready_reason.or_else(|| {
            (!gates_ok).then(|| {
                (
                    "ReadinessGatesNotReady",
                    "readiness gates not met".to_owned(),
                )
            })
        }),
    ));

    let mut conditions: Vec<PodCondition> = previous_conditions
        .values()
        .filter(|c| !ours.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    if !conditions.iter().any(|c| c.type_ == "PodScheduled") {
        conditions.push(condition("PodScheduled", true, None));
    }
    for mut cond in ours {
        cond.last_transition_time = Some(Time(
            previous_conditions
                .get(&cond.type_)
                .filter(|p| p.status == cond.status)
                .and_then(|p| p.last_transition_time.as_ref().map(|t| t.0))
                .unwrap_or(now),
        ));
        conditions.push(cond);
    }
    for cond in &mut conditions {
        if cond.last_transition_time.is_none() {
            cond.last_transition_time = Some(Time(now));
        }
    }
    conditions.sort_by_key(|c| condition_order(&c.type_));

    let statuses = |init: bool| -> Option<Vec<ContainerStatus>> {
        let list: Vec<ContainerStatus> = record
            .containers
            .iter()
            .filter(|c| (c.role != ContainerRole::App) == init)
            .map(ContainerRecord::to_api)
            .collect();
        (!list.is_empty()).then_some(list)
    };
    let pod_ip = record.pod_ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(record.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: record.host_ip.to_string(),
        }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(record.start_time)),
        init_container_statuses: statuses(true),
        container_statuses: statuses(false),
        qos_class: previous.qos_class,
        ..PodStatus::default()
    }
}

fn condition(type_: &str, ok: bool, why: Option<(&str, String)>) -> PodCondition {
    let (reason, message) = match why {
        Some((reason, message)) if !ok => (
            Some(reason.to_owned()),
            (!message.is_empty()).then_some(message),
        ),
        _ => (None, None),
    };
    PodCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason,
        message,
        ..PodCondition::default()
    }
}

/// The order `kubectl describe` users are used to.
fn condition_order(type_: &str) -> usize {
    [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .iter()
    .position(|t| *t == type_)
    .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn record(containers: Vec<ContainerRecord>) -> PodRecord {
        PodRecord {
            pod_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
            host_ip: Ipv4Addr::new(198, 18, 0, 1),
            start_time: t(0),
            sandbox_ready: true,
            initialized: false,
            init_failed: false,
            containers,
        }
    }

    fn running(mut c: ContainerRecord, ready: bool) -> ContainerRecord {
        c.state = RunState::Running { started_at: t(1) };
        c.started = true;
        c.ready = ready;
        c
    }

    fn exited(mut c: ContainerRecord, code: i32) -> ContainerRecord {
        c.state = RunState::Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: None,
            started_at: t(1),
            finished_at: t(2),
        };
        c.finished = true;
        c
    }

    fn cond<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn a_pod_in_init_is_pending_and_names_its_incomplete_containers() {
        let rec = record(vec![
            running(
                ContainerRecord::new("skein-init", "skein", ContainerRole::Init),
                false,
            ),
            ContainerRecord::new("skein-proxy", "skein", ContainerRole::Sidecar),
            ContainerRecord::new("app", "skein", ContainerRole::App),
        ]);
        let status = pod_status(&Pod::default(), &rec, t(5));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let init = cond(&status, "Initialized");
        assert_eq!(init.status, "False");
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [skein-init skein-proxy]")
        );
        assert_eq!(status.init_container_statuses.as_ref().unwrap().len(), 2);
        assert_eq!(status.container_statuses.as_ref().unwrap().len(), 1);
        assert_eq!(cond(&status, "PodScheduled").status, "True");
    }

    #[test]
    fn ready_needs_every_app_container_and_sidecar_ready() {
        let mut rec = record(vec![
            exited(
                ContainerRecord::new("skein-init", "skein", ContainerRole::Init),
                0,
            ),
            running(
                ContainerRecord::new("skein-proxy", "skein", ContainerRole::Sidecar),
                false,
            ),
            running(
                ContainerRecord::new("app", "skein", ContainerRole::App),
                true,
            ),
        ]);
        rec.initialized = true;
        let status = pod_status(&Pod::default(), &rec, t(5));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&status, "Initialized").status, "True");
        assert_eq!(cond(&status, "Ready").status, "False");
        assert_eq!(
            cond(&status, "Ready").message.as_deref(),
            Some("containers with unready status: [skein-proxy]")
        );
        rec.containers[1].ready = true;
        let status = pod_status(&Pod::default(), &rec, t(5));
        assert_eq!(cond(&status, "Ready").status, "True");
        assert_eq!(cond(&status, "ContainersReady").status, "True");
        assert_eq!(status.pod_ip.as_deref(), Some("198.18.0.2"));
        assert_eq!(status.host_ip.as_deref(), Some("198.18.0.1"));
    }

    #[test]
    fn transition_times_survive_when_the_status_does_not_change() {
        let mut rec = record(vec![running(
            ContainerRecord::new("app", "skein", ContainerRole::App),
            true,
        )]);
        rec.initialized = true;
        let first = pod_status(&Pod::default(), &rec, t(5));
        let pod = Pod {
            status: Some(first),
            ..Pod::default()
        };
        let second = pod_status(&pod, &rec, t(50));
        assert_eq!(
            cond(&second, "Ready").last_transition_time,
            Some(Time(t(5)))
        );
        rec.containers[0].ready = false;
        let third = pod_status(&pod, &rec, t(60));
        assert_eq!(
            cond(&third, "Ready").last_transition_time,
            Some(Time(t(60)))
        );
    }

    #[test]
    fn phases_follow_the_app_containers() {
        let app = || ContainerRecord::new("app", "skein", ContainerRole::App);
        let mut rec = record(vec![app()]);
        rec.initialized = true;
        assert_eq!(rec.phase(), "Pending");
        rec.containers = vec![exited(app(), 0)];
        assert_eq!(rec.phase(), "Succeeded");
        rec.containers = vec![exited(app(), 1)];
        assert_eq!(rec.phase(), "Failed");
        let mut restarting = app();
        restarting.restart_count = 2;
        restarting.state = RunState::waiting("CrashLoopBackOff", None);
        rec.containers = vec![restarting];
        assert_eq!(rec.phase(), "Running");
        rec.init_failed = true;
        assert_eq!(rec.phase(), "Failed");
        let status = pod_status(&Pod::default(), &rec, t(1));
        assert_eq!(
            cond(&status, "Ready").reason.as_deref(),
            Some("PodCompleted")
        );
    }
}
