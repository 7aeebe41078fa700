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
        let https = http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
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
            .run_async(move || http_get(addr, https, &path, &headers, timeout))
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

/// A minimal HTTP/1.1 GET: 200-399 passes, like the kubelet. Over HTTPS the server's certificate
/// is not verified, as the kubelet does not (a probe checks health, not identity).
fn http_get(
    addr: SocketAddr,
    https: bool,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("{}://{addr}{path}", if https { "https" } else { "http" });
    let fail = |e: std::io::Error| format!("Get {url:?}: {e}");
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    if !https {
        return exchange(stream, &url, addr, path, headers);
    }
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connection = any_server_cert::config()
        .and_then(|config| rustls::ClientConnection::new(config, name))
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    exchange(
        rustls::StreamOwned::new(connection, stream),
        &url,
        addr,
        path,
        headers,
    )
}

fn exchange(
    mut stream: impl Read + Write,
    url: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("Get {url:?}: {e}");
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

/// A TLS client that accepts any server certificate (signatures are still checked), for HTTPS
/// probes.
mod any_server_cert {
    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AnyServerCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyServerCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
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

    /// A one-connection HTTPS server with a certificate no one trusts, answering `status`.
    fn https_server(status: u16) -> SocketAddr {
        use std::net::TcpListener;
        use std::sync::Arc;

        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let ca = crate::pki::Ca::generate("untrusted", Duration::from_secs(3600)).unwrap();
        let serving = ca
            .issue_serving(&["127.0.0.1"], Duration::from_secs(3600))
            .unwrap();
        let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            let mut request = [0u8; 1024];
            let _ = tls.read(&mut request);
            let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let _ = tls.write_all(reply.as_bytes());
            let _ = tls.flush();
        });
        addr
    }

    #[test]
    fn https_probes_pass_on_success_without_trusting_the_certificate() {
        let timeout = Duration::from_secs(5);
        assert_eq!(
            http_get(https_server(200), true, "/healthz", &[], timeout),
            Ok(())
        );
        assert_eq!(
            http_get(https_server(503), true, "/healthz", &[], timeout),
            Err("HTTP probe failed with statuscode: 503".to_owned())
        );
    }

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
