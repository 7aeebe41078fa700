//! Container lifecycle hooks the kubelet runs: `preStop` before a deleted pod's container gets
//! SIGTERM. The hook's time counts against the pod's termination grace period; what is left of
//! it (at least the kubelet's two-second minimum) is the container's grace after SIGTERM.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use tokio::time::Instant;

use super::probe::{self, ProbeTarget};

/// The kubelet never gives a container less than this after SIGTERM, even when a hook used up
/// the grace period.
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// The container's `preStop` handler, if it has one.
pub fn pre_stop(container: &Container) -> Option<&LifecycleHandler> {
    container.lifecycle.as_ref()?.pre_stop.as_ref()
}

/// Runs `handler` for at most `grace`; returns the grace left for SIGTERM. A failing hook is
/// logged (as the kubelet's `FailedPreStopHook` event would say) and the container is stopped
/// all the same.
pub async fn run_pre_stop(
    handler: &LifecycleHandler,
    target: &ProbeTarget,
    grace: Duration,
    pod: &str,
) -> Duration {
    let started = Instant::now();
    let outcome = tokio::time::timeout(grace, run(handler, target, grace)).await;
    let container = &target.container.name;
    match outcome {
        Ok(Ok(())) => {
            tracing::info!(%pod, %container, took_ms = started.elapsed().as_millis() as u64, "preStop hook done")
        }
        Ok(Err(reason)) => tracing::warn!(%pod, %container, %reason, "FailedPreStopHook"),
        Err(_) => {
            tracing::warn!(%pod, %container, "preStop hook still running when the grace period ended")
        }
    }
    grace
        .saturating_sub(started.elapsed())
        .max(MIN_GRACE_AFTER_HOOK)
}

async fn run(
    handler: &LifecycleHandler,
    target: &ProbeTarget,
    grace: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        let seconds = u64::try_from(sleep.seconds).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        return Ok(());
    }
    // exec and httpGet run as a probe would, with the grace period as their timeout.
    let as_probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        timeout_seconds: Some(i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX)),
        ..Probe::default()
    };
    probe::check(&as_probe, target).await
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use k8s_openapi::api::core::v1::SleepAction;

    use super::*;
    use crate::dev::node::netns::Netns;

    fn target() -> ProbeTarget {
        ProbeTarget {
            node_netns: Netns::named("skein-hooks-unit-test".to_owned()),
            pod_ip: Ipv4Addr::LOCALHOST,
            container: Container {
                name: "app".to_owned(),
                ..Container::default()
            },
            pid: None,
        }
    }

    fn sleep(seconds: i64) -> LifecycleHandler {
        LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..LifecycleHandler::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_hook_takes_its_time_out_of_the_grace_period() {
        let left = run_pre_stop(&sleep(5), &target(), Duration::from_secs(30), "demo/p").await;
        assert_eq!(left, Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hook_longer_than_the_grace_period_is_cut_and_sigterm_still_gets_two_seconds() {
        let started = tokio::time::Instant::now();
        let left = run_pre_stop(&sleep(60), &target(), Duration::from_secs(10), "demo/p").await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(left, MIN_GRACE_AFTER_HOOK);
    }

    #[tokio::test]
    async fn a_failing_hook_does_not_keep_the_container_from_stopping() {
        let exec = LifecycleHandler {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["/nonexistent".to_owned()]),
            }),
            ..LifecycleHandler::default()
        };
        // No process to run it in: the hook fails at once and the grace is untouched.
        let left = run_pre_stop(&exec, &target(), Duration::from_secs(30), "demo/p").await;
        assert!(left > Duration::from_secs(29), "{left:?}");
    }
}
