//! Container probes as the kubelet runs them: HTTP and TCP checks connect to the pod's IP from
//! the node's network namespace (so they cross the pod's inbound capture, as on a real node);
//! exec checks run inside the container's namespaces.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::netns::Netns;
use super::process;

/// Kubernetes' defaults.
const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;
/// Enough of a response to read its status line.
const MAX_STATUS_LINE: usize = 4096;

/// Timing of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTiming {
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
        };
        let count =
            |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, DEFAULT_PERIOD_SECONDS).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS)
                .max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }
}

/// Consecutive results turned into a verdict with the probe's thresholds.
#[derive(Clone, Debug)]
pub struct Verdict {
    timing: ProbeTiming,
    successes: u32,
    failures: u32,
    pub passing: Option<bool>,
}

impl Verdict {
    pub fn new(timing: ProbeTiming) -> Self {
        Self {
            timing,
            successes: 0,
            failures: 0,
            passing: None,
        }
    }

    /// Records one result; returns the verdict when it changes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.timing.success_threshold {
            Some(true)
        } else if self.failures >= self.timing.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// What a probe talks to.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    pub node_netns: Netns,
    pub pod_ip: Ipv4Addr,
    pub container: Container,
    /// The container's process, for exec probes.
    pub pid: Option<u32>,
}

/// Runs one check; `Err` carries the reason it failed, as `kubectl describe` would show it.
pub async fn check(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    let timeout = ProbeTiming::of(probe).timeout;
    if let Some(http) = &probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by the dev node".to_owned());
        }
        let port = resolve_port(&http.port, &target.container)?;
        let host = match http.host.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => ip,
            Some(Err(_)) => return Err("probe host must be an IP address here".to_owned()),
            None => IpAddr::V4(target.pod_ip),
        };
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let addr = SocketAddr::new(host, port);
        return target
            .node_netns
            .run_async(move || http_get(addr, &path, &headers, timeout))
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, &target.container)?;
        let addr = SocketAddr::new(IpAddr::V4(target.pod_ip), port);
        return target
            .node_netns
            .run_async(move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let pid = target
            .pid
            .ok_or_else(|| "container is not running".to_owned())?;
        return exec_check(pid, &command, timeout).await;
    }
    Err("probe has no handler the dev node supports (httpGet, tcpSocket, exec)".to_owned())
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// A minimal HTTP/1.1 GET: 200-399 passes, like the kubelet.
fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("http://{addr}{path}");
    let fail = |e: std::io::Error| format!("Get {url:?}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/skein-dev-node\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        match stream.read(&mut chunk).map_err(fail)? {
            0 => break,
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec_check(pid: u32, command: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "exec probe has an empty command".to_owned())?;
    let entered = process::enter(pid).map_err(|e| format!("entering the container: {e}"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    entered.configure(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("exec {program:?}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("command {command:?} timed out")),
        Ok(Err(e)) => Err(format!("exec {program:?}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "command {command:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_uses_kubernetes_defaults() {
        let timing = ProbeTiming::of(&Probe::default());
        assert_eq!(timing.period, Duration::from_secs(10));
        assert_eq!(timing.timeout, Duration::from_secs(1));
        assert_eq!(timing.failure_threshold, 3);
        assert_eq!(timing.success_threshold, 1);
    }

    #[test]
    fn verdict_changes_only_at_the_thresholds() {
        let mut verdict = Verdict::new(ProbeTiming {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        });
        assert_eq!(verdict.record(true), Some(true));
        assert_eq!(verdict.record(true), None);
        assert_eq!(verdict.record(false), None);
        assert_eq!(verdict.record(false), None);
        assert_eq!(
            verdict.record(true),
            None,
            "a success resets the failure count"
        );
        assert_eq!(verdict.record(false), None);
        assert_eq!(verdict.record(false), None);
        assert_eq!(verdict.record(false), Some(false));
        assert_eq!(verdict.record(false), None);
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &container),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &container).is_err());
        assert_eq!(resolve_port(&IntOrString::Int(9), &container), Ok(9));
    }
}
