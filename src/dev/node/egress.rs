//! The apiserver's way into the node's network, as on a real cluster where the apiserver shares
//! the nodes' network: webhooks behind Services, the kubelet API (`kubectl logs`), pod and
//! Service proxies. The local apiserver runs on the machine's loopback and cannot reach pod or
//! Service addresses, and no route to them is added to the machine. Instead its egress selector
//! (`tests/cluster/up.sh --node-network`) sends its "cluster" traffic as HTTP CONNECT requests to
//! a Unix socket in the cluster's state directory, served here: each tunnel is dialled from
//! inside the node's network namespace. Loopback targets (a webhook URL on this machine) are
//! dialled from the machine's namespace, where the apiserver itself lives.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use super::netns::Netns;

/// Where up.sh's egress selector configuration points the apiserver.
pub const SOCKET_NAME: &str = "egress.sock";

/// A CONNECT request head larger than this is not the apiserver's.
const MAX_HEAD: usize = 8 * 1024;
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    #[error("not a CONNECT request: {0:?}")]
    NotConnect(String),
    #[error("bad CONNECT target {0:?}: want HOST:PORT")]
    BadTarget(String),
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("no Service {0}")]
    UnknownService(String),
}

/// The target of a CONNECT request: an address, or a Service's DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

/// Parses `CONNECT host:port HTTP/1.1` from a complete request head.
pub fn parse_connect(head: &str) -> Result<Target, ConnectError> {
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    let (Some("CONNECT"), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Err(ConnectError::NotConnect(line.to_owned()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ConnectError::NotConnect(line.to_owned()));
    }
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    let bad = || ConnectError::BadTarget(target.to_owned());
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    // NAME.NAMESPACE.svc[.cluster.local]: what a Service reference resolves to.
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    match labels.as_slice() {
        [name, namespace, "svc", ..] => Ok(Target::Service {
            namespace: (*namespace).to_owned(),
            name: (*name).to_owned(),
            port,
        }),
        _ => Err(bad()),
    }
}

/// Serves the CONNECT socket at `cluster_dir/egress.sock` until the task is aborted. Only one
/// node of a cluster can hold it; a second one logs that and carries on without.
pub fn start(
    cluster_dir: &Path,
    netns: Netns,
    services: Store<Service>,
) -> Option<tokio::task::JoinHandle<()>> {
    let path = cluster_dir.join(SOCKET_NAME);
    // A socket file that accepts nothing was left by a node that is gone; one that accepts is
    // another node's, and binding below fails.
    if std::os::unix::net::UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "not serving the apiserver's egress into this node");
            return None;
        }
    };
    Some(tokio::spawn(serve(listener, path, netns, services)))
}

async fn serve(listener: UnixListener, path: PathBuf, netns: Netns, services: Store<Service>) {
    tracing::info!(path = %path.display(), "serving the apiserver's egress into the node");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let netns = netns.clone();
        let services = services.clone();
        tokio::spawn(async move {
            if let Err(err) = tunnel(stream, &netns, &services).await {
                tracing::debug!(error = %err, "egress tunnel ended");
            }
        });
    }
}

async fn tunnel(
    mut client: UnixStream,
    netns: &Netns,
    services: &Store<Service>,
) -> anyhow::Result<()> {
    let head = match read_head(&mut client).await? {
        Ok(head) => head,
        Err(err) => {
            client
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await?;
            return Err(err.into());
        }
    };
    let target = parse_connect(&head).and_then(|t| resolve(t, services));
    let upstream = match target {
        Ok(addr) => dial(addr, netns).await,
        Err(err) => Err(anyhow::Error::new(err)),
    };
    let mut upstream = match upstream {
        Ok(stream) => stream,
        Err(err) => {
            let reply = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nX-Skein-Error: {}\r\n\r\n",
                err.to_string().replace(['\r', '\n'], " ")
            );
            client.write_all(reply.as_bytes()).await?;
            return Err(err);
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Reads up to the blank line that ends the request head. The apiserver sends nothing more
/// before the 200, so nothing past the head is lost.
async fn read_head(stream: &mut UnixStream) -> std::io::Result<Result<String, ConnectError>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Ok(Err(ConnectError::TooLarge));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(Ok(String::from_utf8_lossy(&head).into_owned()))
}

fn resolve(target: Target, services: &Store<Service>) -> Result<SocketAddr, ConnectError> {
    match target {
        Target::Addr(addr) => Ok(addr),
        Target::Service {
            namespace,
            name,
            port,
        } => {
            let service = services
                .get(&ObjectRef::new(&name).within(&namespace))
                .ok_or_else(|| ConnectError::UnknownService(format!("{namespace}/{name}")))?;
            let ip = service
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .ok_or_else(|| ConnectError::UnknownService(format!("{namespace}/{name}")))?;
            Ok(SocketAddr::new(ip, port))
        }
    }
}

/// Dials `addr` from the node's namespace, or from the machine's for a loopback address.
async fn dial(addr: SocketAddr, netns: &Netns) -> anyhow::Result<TcpStream> {
    if addr.ip().is_loopback() {
        return Ok(tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await??);
    }
    let stream = netns
        .run_async(move || {
            let stream = std::net::TcpStream::connect_timeout(&addr, DIAL_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(stream)
        })
        .await??;
    Ok(TcpStream::from_std(stream)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_are_addresses_or_service_names() {
        assert_eq!(
            parse_connect("CONNECT 198.18.0.1:10250 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Target::Addr("198.18.0.1:10250".parse().unwrap()))
        );
        assert_eq!(
            parse_connect("CONNECT skein-control-plane.skein-system.svc:443 HTTP/1.1\r\n\r\n"),
            Ok(Target::Service {
                namespace: "skein-system".into(),
                name: "skein-control-plane".into(),
                port: 443
            })
        );
        assert!(matches!(
            parse_connect("CONNECT web.demo.svc.cluster.local:80 HTTP/1.0\r\n\r\n"),
            Ok(Target::Service { port: 80, .. })
        ));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert_eq!(
            parse_connect("GET / HTTP/1.1\r\n\r\n"),
            Err(ConnectError::NotConnect("GET / HTTP/1.1".into()))
        );
        assert_eq!(
            parse_connect("CONNECT example.com:443 HTTP/1.1\r\n\r\n"),
            Err(ConnectError::BadTarget("example.com:443".into()))
        );
        assert_eq!(
            parse_connect("CONNECT 10.0.0.1 HTTP/1.1\r\n\r\n"),
            Err(ConnectError::BadTarget("10.0.0.1".into()))
        );
        assert!(parse_connect("").is_err());
    }
}
