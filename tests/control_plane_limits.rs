//! The control plane under slow, greedy or abusive clients, against a real apiserver: the
//! webhook server's timeouts and limits (the apiserver's reviews keep being answered), the
//! injector refusing to decide without its caches (the webhook's `failurePolicy` decides), and
//! the configuration stream's limits (real proxies stay synced); and a control plane told not
//! to collect stats (`--stats-interval 0s`) saying so to `skein stat`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;
use skein::api::meshconfig::FailurePolicy;
use skein::api::names;
use skein::controlplane::push::ProxyIdentity;
use skein::proxy::client::{self, ClientSettings};
use skein::proxy::config::{Compiled, ConfigStore};
use skein::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use skein::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use support::TestContext;
use support::control_plane::{ControlPlane, label_namespace, register_webhook};
use support::identity::pod_token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on each wait for the cluster below.
const WAIT: Duration = Duration::from_secs(30);

fn app_pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("example.com/shop/app:1.0".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn injected(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == names::PROXY_CONTAINER))
}

async fn create(ctx: &TestContext, namespace: &str, pod: &Pod) -> Result<Pod, kube::Error> {
    Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .create(&PostParams::default(), pod)
        .await
}

/// A second namespace of the test, labelled for injection.
async fn meshed_namespace(ctx: &TestContext, suffix: &str) -> String {
    let name = ctx.unique_name(suffix);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(ctx.owner_labels()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(ctx.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    label_namespace(ctx, &name, "injection", "enabled").await;
    name
}

// ---------------------------------------------------------------------------------------------
// Item 8: the injector does not decide without its caches.

/// Lets `user` read what `rules` name, cluster-wide (deleted with the test's objects).
async fn grant(ctx: &TestContext, user: &str, rules: Vec<PolicyRule>) {
    let name = ctx.unique_name(user);
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        labels: Some(ctx.owner_labels()),
        ..Default::default()
    };
    let role = ClusterRole {
        metadata: metadata.clone(),
        rules: Some(rules),
        ..Default::default()
    };
    Api::<ClusterRole>::all(ctx.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = ClusterRoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "User".to_owned(),
            name: user.to_owned(),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(ctx.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

fn read_rule(group: &str, resource: &str) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: ["get", "list", "watch"].map(str::to_owned).to_vec(),
        ..Default::default()
    }
}

/// A pod in a namespace labelled for injection, served by `control_plane` whose caches cannot
/// sync: refused under `Fail` (saying why), admitted un-meshed under `Ignore`.
async fn failure_policy_decides(ctx: &TestContext, control_plane: &ControlPlane, case: &str) {
    let closed = meshed_namespace(ctx, &format!("{case}-fail")).await;
    let open = meshed_namespace(ctx, &format!("{case}-ignore")).await;
    let (url, ca) = (control_plane.webhook_url(), &control_plane.ca.cert_pem);
    register_webhook(
        ctx,
        &format!("{case}-f"),
        &url,
        ca,
        FailurePolicy::Fail,
        &[&closed],
    )
    .await;
    register_webhook(
        ctx,
        &format!("{case}-i"),
        &url,
        ca,
        FailurePolicy::Ignore,
        &[&open],
    )
    .await;

    let refused = create(ctx, &closed, &app_pod("web"))
        .await
        .expect_err("under Fail, a pod the injector cannot decide on is refused");
    assert!(
        refused.to_string().contains("failed calling webhook"),
        "{case}: refused because the webhook answered with an error: {refused}"
    );
    let admitted = create(ctx, &open, &app_pod("web"))
        .await
        .expect("under Ignore, the pod is admitted");
    assert!(
        !injected(&admitted),
        "{case}: under Ignore, admitted unchanged"
    );
}

#[tokio::test]
async fn the_injector_does_not_decide_without_its_caches_the_failure_policy_does() {
    let ctx = TestContext::new().await;
    // May read nothing: neither cache syncs, and looking the pod's namespace up fails.
    let nobody = ctx.unique_name("nobody");
    let blind = ControlPlane::start_as(&nobody, &[]).await;
    failure_policy_decides(&ctx, &blind, "nothing").await;

    // May read namespaces but not MeshConfigs: it would inject with the default MeshConfig,
    // whatever the mesh's own says.
    let no_meshconfig = ctx.unique_name("no-meshconfig");
    grant(&ctx, &no_meshconfig, vec![read_rule("", "namespaces")]).await;
    let partial = ControlPlane::start_as(&no_meshconfig, &[]).await;
    failure_policy_decides(&ctx, &partial, "meshconfig").await;
}

// ---------------------------------------------------------------------------------------------
// Item 7: slow clients are cut, the apiserver's reviews keep being answered.

const READ_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

fn tls_connector(ca_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls(
    control_plane: &ControlPlane,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", control_plane.port))
        .await
        .expect("connecting to the webhook");
    tls_connector(&control_plane.ca.cert_pem, alpn)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake with the webhook")
}

/// Reads until the server closes the connection (or fails it); returns what it sent.
async fn until_closed(mut stream: impl AsyncReadExt + Unpin) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// How a slow client ended: after how long, with what the server sent.
struct Cut {
    kind: &'static str,
    after: Duration,
    sent: String,
}

/// A client that keeps writing one byte every 200 ms until the server closes the connection.
async fn trickle(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    start: &[u8],
    kind: &'static str,
) -> Cut {
    let started = Instant::now();
    let (reader, mut writer) = tokio::io::split(stream);
    let _ = writer.write_all(start).await;
    let writing = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"a").await.is_err() || writer.flush().await.is_err() {
                // The server is gone; keep the reader's side waiting for its end.
                std::future::pending::<()>().await;
            }
        }
    };
    let sent = tokio::select! {
        sent = until_closed(reader) => sent,
        () = writing => unreachable!(),
    };
    Cut {
        kind,
        after: started.elapsed(),
        sent,
    }
}

/// An HTTP/2 connection opening `streams` reviews whose bodies never finish; returns the
/// server's announced stream limit and each stream's status (or `None`: reset).
async fn h2_stalled_streams(
    control_plane: &ControlPlane,
    streams: usize,
) -> (usize, Duration, Vec<Option<u16>>) {
    let stream = tls(control_plane, b"h2").await;
    let started = Instant::now();
    let (mut client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut responses = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..streams {
        client = client.ready().await.expect("the connection stays up");
        let request = http::Request::post("https://127.0.0.1/inject")
            .header("content-type", "application/json")
            .header("content-length", "100000")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).expect("a stream");
        let _ = body.send_data(bytes::Bytes::from_static(b"{\"kind\":"), false);
        bodies.push(body);
        responses.push(tokio::spawn(response));
    }
    let limit = client.current_max_send_streams();
    let mut statuses = Vec::new();
    for response in responses {
        statuses.push(match response.await {
            Ok(Ok(response)) => Some(response.status().as_u16()),
            _ => None,
        });
    }
    drop(bodies);
    (limit, started.elapsed(), statuses)
}

#[tokio::test]
async fn slow_clients_are_cut_and_the_apiservers_reviews_are_answered_meanwhile() {
    let ctx = TestContext::new().await;
    let control_plane = ControlPlane::start_with(&[
        "--webhook-read-timeout",
        "2s",
        "--webhook-request-timeout",
        "3s",
    ])
    .await;
    label_namespace(&ctx, &ctx.namespace, "injection", "enabled").await;
    register_webhook(
        &ctx,
        "injector",
        &control_plane.webhook_url(),
        &control_plane.ca.cert_pem,
        FailurePolicy::Fail,
        &[&ctx.namespace],
    )
    .await;
    const EACH: usize = 20;
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..EACH {
        // Connects and never starts TLS.
        let port = control_plane.port;
        slow.spawn(async move {
            let started = Instant::now();
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let sent = until_closed(tcp).await;
            Cut {
                kind: "no TLS handshake",
                after: started.elapsed(),
                sent,
            }
        });
        // TLS, then nothing.
        let idle = tls(&control_plane, b"http/1.1").await;
        slow.spawn(async move {
            let started = Instant::now();
            let sent = until_closed(idle).await;
            Cut {
                kind: "no request",
                after: started.elapsed(),
                sent,
            }
        });
        // Headers that never end.
        let headers = tls(&control_plane, b"http/1.1").await;
        slow.spawn(trickle(
            headers,
            b"POST /inject HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ",
            "trickled headers",
        ));
        // A body that never ends.
        let body = tls(&control_plane, b"http/1.1").await;
        slow.spawn(trickle(
            body,
            b"POST /inject HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
            "trickled body",
        ));
    }
    // HTTP/2: more stalled streams than one connection may open, on a few connections.
    let h2 = futures::future::join_all((0..3).map(|_| h2_stalled_streams(&control_plane, 50)));

    // Meanwhile the apiserver's reviews are answered: every pod is created and injected.
    let pods = async {
        for i in 0..10 {
            let stored = create(&ctx, &ctx.namespace, &app_pod(&format!("web-{i}")))
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "pod {i} while slow clients are connected: {err}\n{}",
                        control_plane.log()
                    )
                });
            assert!(injected(&stored), "pod {i} is injected");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let cuts = async {
        let mut cuts = Vec::new();
        while let Some(cut) = slow.join_next().await {
            cuts.push(cut.expect("a slow client"));
        }
        cuts
    };
    let (h2, (), cuts) = tokio::time::timeout(WAIT, async { tokio::join!(h2, pods, cuts) })
        .await
        .expect("every slow client is cut, well within the wait");

    for cut in &cuts {
        let timeout = if cut.kind == "trickled body" {
            REQUEST_TIMEOUT
        } else {
            READ_TIMEOUT
        };
        assert!(
            cut.after <= 3 * timeout,
            "{}: cut after {:?}, more than 3 × {timeout:?}",
            cut.kind,
            cut.after
        );
        if cut.kind == "trickled body" {
            assert!(
                cut.sent.starts_with("HTTP/1.1 408"),
                "a body not sent in time is answered 408: {:?}",
                cut.sent
            );
        }
    }
    assert_eq!(cuts.len(), 4 * EACH);
    for (limit, after, statuses) in h2 {
        let _ = limit;
        assert!(
            after <= 3 * 2 * REQUEST_TIMEOUT,
            "50 stalled streams, 32 at a time, are cut within 2 rounds of the timeout: {after:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == Some(408) || s.is_none()),
            "stalled streams are answered 408 (or reset): {statuses:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 9: the configuration stream's limits.

fn node(namespace: &str, pod: &str) -> Node {
    Node {
        id: String::new(),
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
        ip: String::new(),
    }
}

fn subscription(namespace: &str, pod: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(namespace, pod)),
        type_url: skein::xds::resources::TYPE_URLS[0].to_owned(),
        resource_names_subscribe: vec!["*".to_owned()],
        ..DeltaDiscoveryRequest::default()
    }
}

/// Opens a stream on `channel` with `token`, sending `first` then whatever comes on the
/// returned sender; the first response (or the refusal).
async fn open(
    channel: tonic::transport::Channel,
    token: &str,
    first: DeltaDiscoveryRequest,
) -> (
    Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status>,
    tokio::sync::mpsc::UnboundedSender<DeltaDiscoveryRequest>,
) {
    let (more, rx) = tokio::sync::mpsc::unbounded_channel();
    let requests = futures::StreamExt::chain(
        futures::stream::iter([first]),
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|request| (request, rx))
        }),
    );
    let mut request = tonic::Request::new(requests);
    skein::proxy::identity::authorize(&mut request, token).unwrap();
    let opened = AggregatedDiscoveryServiceClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .delta_aggregated_resources(request)
        .await;
    let responses = match opened {
        Ok(response) => {
            let mut responses = response.into_inner();
            // The refusals after the first request come as the stream's status.
            match responses.message().await {
                Ok(Some(_)) => Ok(responses),
                Ok(None) => Err(tonic::Status::cancelled("no response")),
                Err(status) => Err(status),
            }
        }
        Err(status) => Err(status),
    };
    (responses, more)
}

async fn debug_proxies(control_plane: &ControlPlane) -> Vec<serde_json::Value> {
    let url = format!(
        "http://127.0.0.1:{}/debug/proxies",
        control_plane.debug_port
    );
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn an_abusive_stream_client_is_cut_off_while_real_proxies_stay_synced() {
    let ctx = TestContext::new().await;
    let ns = ctx.namespace.clone();
    let control_plane = ControlPlane::start().await;
    let proxy_token = pod_token(&ctx.client, &ns, "web").await;
    let abuser_token = pod_token(&ctx.client, &ns, "abuser").await;
    let address = format!("http://127.0.0.1:{}", control_plane.xds_port);

    // A real proxy, synced.
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), &proxy_token).unwrap();
    let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
    let (applied, mut applied_rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = tokio::spawn(client::run(
        ClientSettings {
            address: format!("127.0.0.1:{}", control_plane.xds_port),
            identity: ProxyIdentity {
                pod: "web".to_owned(),
                namespace: ns.clone(),
                ip: None,
            },
            token_path: Some(token_file.path().to_owned()),
            trust: Default::default(),
        },
        store,
        move |result| {
            let _ = applied.send(result.is_ok());
        },
    ));
    let first = tokio::time::timeout(WAIT, applied_rx.recv()).await;
    assert_eq!(first.ok().flatten(), Some(true), "the real proxy syncs");

    // One connection, many streams as one pod: a few are served, the rest refused.
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..12 {
        match open(channel.clone(), &abuser_token, subscription(&ns, "abuser")).await {
            (Ok(stream), more) => opened.push((stream, more)),
            (Err(status), _) => refused.push(status),
        }
    }
    assert_eq!(
        opened.len(),
        skein::controlplane::push::MAX_STREAMS_PER_POD,
        "streams beyond the per-pod limit are refused: {refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|s| s.code() == tonic::Code::ResourceExhausted && s.message().contains("at most")),
        "{refused:?}"
    );

    // The server's per-connection stream limit, as a client sees it.
    let tcp = TcpStream::connect(("127.0.0.1", control_plane.xds_port))
        .await
        .unwrap();
    let (h2_client, h2_connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(h2_connection);
    let h2_client = h2_client.ready().await.unwrap();
    // The SETTINGS frame arrives with the first exchange: a request that is refused.
    let mut ready = h2_client.clone();
    let (probe, _) = ready
        .send_request(
            http::Request::post(format!("{address}/skein.Nothing/Nothing"))
                .header("content-type", "application/grpc")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let _ = probe.await;
    assert_eq!(
        h2_client.current_max_send_streams(),
        skein::controlplane::push::MAX_STREAMS_PER_CONNECTION as usize
    );

    // A huge list of held resources: refused, not kept (the refusal comes before the per-pod
    // count). The message is within the size limit.
    let mut huge = subscription(&ns, "abuser");
    huge.initial_resource_versions = (0..20_000)
        .map(|i| (format!("destination-{i}.example"), "0".repeat(8)))
        .collect();
    let (refusal, _) = open(channel.clone(), &abuser_token, huge).await;
    let refusal = refusal.expect_err("a list of 20 000 held resources is refused");
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{refusal}");
    // A message beyond the size limit is refused by the transport.
    let mut oversized = subscription(&ns, "abuser");
    oversized.initial_resource_versions = [("big".to_owned(), "v".repeat(4 * 1024 * 1024))].into();
    let (refusal, _) = open(channel.clone(), &abuser_token, oversized).await;
    let refusal = refusal.expect_err("a 4 MiB request is refused");
    assert_eq!(refusal.code(), tonic::Code::OutOfRange, "{refusal}");

    // A huge NACK, on a stream within the limit: kept and shown truncated.
    let (_stream, more) = opened.pop().expect("an open stream");
    more.send(DeltaDiscoveryRequest {
        type_url: skein::xds::resources::TYPE_URLS[0].to_owned(),
        response_nonce: "unknown".to_owned(),
        error_detail: Some(skein::xds::discovery::Status {
            code: 3,
            message: "x".repeat(1024 * 1024),
        }),
        ..DeltaDiscoveryRequest::default()
    })
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let nack = loop {
        let nacks: Vec<String> = debug_proxies(&control_plane)
            .await
            .iter()
            .filter(|p| p["pod"] == "abuser")
            .filter_map(|p| p["lastNack"].as_str().map(str::to_owned))
            .collect();
        if let Some(nack) = nacks.into_iter().next() {
            break nack;
        }
        assert!(Instant::now() < deadline, "the NACK is recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        nack.len() < 2 * skein::controlplane::push::MAX_NACK_BYTES && nack.contains("truncated"),
        "a 1 MiB NACK is kept truncated and marked: {} bytes, ends {:?}",
        nack.len(),
        &nack[nack.len().saturating_sub(60)..]
    );

    // The real proxy still follows changes.
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "backend"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, applied_rx.recv()).await;
    assert_eq!(
        next.ok().flatten(),
        Some(true),
        "the real proxy gets the change; log:\n{}",
        control_plane.log()
    );
    let web = debug_proxies(&control_plane).await;
    let web = web
        .iter()
        .find(|p| p["pod"] == "web")
        .expect("web is connected");
    assert_eq!(web["ackedVersion"], web["sentVersion"], "{web}");
    proxy.abort();
}

/// A control plane started with `--stats-interval 0s` collects nothing, and `skein stat` says
/// so instead of showing every workload without traffic.
#[tokio::test]
async fn without_collection_stat_says_so() {
    let control_plane = ControlPlane::start_with(&["--stats-interval", "0s"]).await;
    let url = format!("http://127.0.0.1:{}", control_plane.debug_port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["stat", "deploy", "-n", "demo", "--url", &url])
        .env("KUBECONFIG", support::kubeconfig())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running skein");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not collect") && stderr.contains("--stats-interval 0s"),
        "{stderr}"
    );
}
