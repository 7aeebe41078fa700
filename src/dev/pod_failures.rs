//! Which containers of a pod are failing, in the words `kubectl get pods` uses, so `skein dev up`
//! stops at once with the cause instead of waiting out a timeout.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Waiting reasons that do not clear by themselves: the container crashed (and is backing off),
/// or could not be created or started at all.
const STUCK_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "ImageNotRunnable",
    "InvalidImageName",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
];

/// How long a running container may stay not Ready before its readiness probe counts as failing.
/// Longer than any of the demo's start-ups, short beside `dev up`'s wait.
pub const NOT_READY_GRACE_SECS: i64 = 60;

/// A container that is failing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFailure {
    /// `NAMESPACE/NAME`.
    pub pod: String,
    pub container: String,
    pub init: bool,
    /// What is wrong, e.g. `CrashLoopBackOff after 3 restarts: exit code 1 (Error)`.
    pub reason: String,
}

impl std::fmt::Display for ContainerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.init {
            "init container"
        } else {
            "container"
        };
        write!(
            f,
            "pod {}: {kind} {} is failing: {}",
            self.pod, self.container, self.reason
        )
    }
}

/// The failing containers of `pod` at `now`: stuck waiting (crash loop, cannot be created or
/// started), or running but not Ready for longer than [`NOT_READY_GRACE_SECS`].
pub fn failing_containers(pod: &Pod, now: Timestamp) -> Vec<ContainerFailure> {
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|c| (c, true));
    let app = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| (c, false));
    init.chain(app)
        .filter_map(|(container, init)| {
            Some(ContainerFailure {
                pod: pod_name.clone(),
                container: container.name.clone(),
                init,
                reason: why_failing(container, now)?,
            })
        })
        .collect()
}

fn why_failing(container: &ContainerStatus, now: Timestamp) -> Option<String> {
    let state = container.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if !STUCK_REASONS.contains(&reason) {
            return None;
        }
        let mut why = reason.to_owned();
        if container.restart_count > 0 {
            why.push_str(&format!(" after {} restart(s)", container.restart_count));
        }
        if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            why.push_str(&format!(": {message}"));
        }
        let last_exit = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref());
        if let Some(exited) = last_exit {
            why.push_str(&format!(": last exit code {}", exited.exit_code));
            if let Some(reason) = exited.reason.as_deref() {
                why.push_str(&format!(" ({reason})"));
            }
        }
        return Some(why);
    }
    // Running but never Ready: the readiness (or startup) probe keeps failing.
    let running = state.running.as_ref()?;
    let since = running.started_at.as_ref()?.0;
    let not_ready_for = now.duration_since(since).as_secs();
    (!container.ready && not_ready_for > NOT_READY_GRACE_SECS).then(|| {
        format!("running for {not_ready_for}s but not Ready: its readiness or startup probe fails")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "demo"},
            "status": status,
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-01-01T00:10:00Z".parse().unwrap()
    }

    #[test]
    fn a_crash_looping_init_container_is_named_with_its_exit() {
        let pod = pod(json!({"initContainerStatuses": [{
            "name": "skein-init", "image": "skein", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }]}));
        let failures = failing_containers(&pod, now());
        assert_eq!(
            failures,
            vec![ContainerFailure {
                pod: "demo/web-1".into(),
                container: "skein-init".into(),
                init: true,
                reason: "CrashLoopBackOff after 2 restart(s): last exit code 1 (Error)".into(),
            }]
        );
        assert_eq!(
            failures[0].to_string(),
            "pod demo/web-1: init container skein-init is failing: CrashLoopBackOff after 2 restart(s): last exit code 1 (Error)"
        );
    }

    #[test]
    fn a_container_that_cannot_start_is_failing_with_the_message() {
        let pod = pod(json!({"containerStatuses": [{
            "name": "app", "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "RunContainerError", "message": "exec: \"nope\": not found"}},
        }]}));
        assert_eq!(
            failing_containers(&pod, now())[0].reason,
            "RunContainerError: exec: \"nope\": not found"
        );
    }

    #[test]
    fn starting_and_ready_containers_are_not_failing() {
        let pod = pod(json!({
            "initContainerStatuses": [{
                "name": "skein-init", "image": "skein", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }],
            "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "PodInitializing"}}},
                {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-01-01T00:09:30Z"}}},
                {"name": "c", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            ],
        }));
        assert_eq!(failing_containers(&pod, now()), vec![]);
    }

    #[test]
    fn a_container_never_ready_past_the_grace_is_failing_its_probe() {
        let pod = pod(json!({"containerStatuses": [{
            "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:05:00Z"}},
        }]}));
        assert_eq!(
            failing_containers(&pod, now())[0].reason,
            "running for 300s but not Ready: its readiness or startup probe fails"
        );
    }
}
