//! Who is asking: a proxy's projected service-account token (audience `skein.dev`, in the gRPC
//! metadata `authorization: Bearer TOKEN`) checked with a TokenReview, bound to a live pod.
//!
//! The pod's name and UID come from the token (the apiserver puts the pod a token is bound to
//! in the review's `extra`), never from the request; the pod must still exist with that UID and
//! run as that service account (a terminating pod keeps its identity until it is gone: it is
//! still serving its last requests). Successful reviews are cached for [`REVIEW_CACHE_TTL`],
//! keyed by a SHA-256 of the token, so a reconnect storm (a control-plane restart) is not a
//! TokenReview storm; failures are never cached. So a token stays good for up to the TTL
//! after its pod is deleted: a short window, for a pod whose proxy is on its way out anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::identity::SpiffeId;
use crate::inject::patch::IDENTITY_AUDIENCE;

/// How long a successful review (token and pod check) is reused.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(30);
/// Bound on cached reviews (one per live token; a pod has one at a time, two around rotation).
const REVIEW_CACHE_MAX: usize = 50_000;
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// A proxy whose token the apiserver vouched for, and the pod it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedProxy {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
}

impl AuthenticatedProxy {
    pub fn spiffe_id(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error(
        "no token: send the pod's service-account token (audience {IDENTITY_AUDIENCE}) as `authorization: Bearer TOKEN`"
    )]
    NoToken,
    #[error("the authorization metadata is not `Bearer TOKEN`")]
    NotBearer,
    #[error("the token was refused: {0}")]
    Refused(String),
    #[error("the token is not a pod-bound service-account token: {0}")]
    NotAPod(String),
    #[error("pod {namespace}/{pod} (uid {uid}) the token is bound to {problem}")]
    PodGone {
        namespace: String,
        pod: String,
        uid: String,
        problem: &'static str,
    },
    #[error("asking the apiserver: {0}")]
    Apiserver(#[from] kube::Error),
}

impl AuthnError {
    /// The gRPC status a client gets: what it can fix says so.
    pub fn status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::NoToken | Self::NotBearer | Self::Refused(_) => {
                tonic::Status::unauthenticated(message)
            }
            Self::NotAPod(_) | Self::PodGone { .. } => tonic::Status::permission_denied(message),
            Self::Apiserver(_) => tonic::Status::unavailable(message),
        }
    }
}

/// The bearer token of a request's metadata.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthnError> {
    let value = metadata.get("authorization").ok_or(AuthnError::NoToken)?;
    let text = value.to_str().map_err(|_| AuthnError::NotBearer)?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or(AuthnError::NotBearer)?
        .trim();
    if token.is_empty() {
        return Err(AuthnError::NoToken);
    }
    Ok(token)
}

/// Turns a token into the proxy it belongs to. A trait so the stream's and the certificate
/// service's tests can run without an apiserver.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<AuthenticatedProxy, AuthnError>>;
}

/// Pure: the review's verdict → the proxy, or why not.
pub fn from_review(status: Option<&TokenReviewStatus>) -> Result<AuthenticatedProxy, AuthnError> {
    let status = status.ok_or_else(|| AuthnError::Refused("the review has no status".into()))?;
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".to_owned());
        return Err(AuthnError::Refused(reason));
    }
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == IDENTITY_AUDIENCE)
    {
        return Err(AuthnError::Refused(format!(
            "the token is not for audience {IDENTITY_AUDIENCE} (it is for {audiences:?})"
        )));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| AuthnError::Refused("the review names no user".into()))?;
    let username = user.username.clone().unwrap_or_default();
    let account = SpiffeId::from_service_account_user("", &username)
        .ok_or_else(|| AuthnError::NotAPod(format!("{username:?} is not a service account")))?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .filter(|value| !value.is_empty())
            .cloned()
    };
    let (Some(pod), Some(pod_uid)) = (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) else {
        return Err(AuthnError::NotAPod(format!(
            "the token of {username} is not bound to a pod (request one with \
             `kubectl create token SA --audience {IDENTITY_AUDIENCE} --bound-object-kind Pod \
             --bound-object-name POD`, or use the projected one)"
        )));
    };
    Ok(AuthenticatedProxy {
        namespace: account.namespace,
        service_account: account.service_account,
        pod,
        pod_uid,
    })
}

/// Pure: whether the pod the token is bound to is still that pod, and there.
pub fn check_pod(proxy: &AuthenticatedProxy, pod: Option<&Pod>) -> Result<(), AuthnError> {
    let gone = |problem| AuthnError::PodGone {
        namespace: proxy.namespace.clone(),
        pod: proxy.pod.clone(),
        uid: proxy.pod_uid.clone(),
        problem,
    };
    let pod = pod.ok_or_else(|| gone("does not exist"))?;
    if pod.metadata.uid.as_deref() != Some(proxy.pod_uid.as_str()) {
        return Err(gone("was replaced by another pod of the same name"));
    }
    let account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .unwrap_or("default");
    if account != proxy.service_account {
        return Err(gone("runs as another service account"));
    }
    Ok(())
}

/// The real thing: TokenReview and a pod lookup, cached briefly.
pub struct KubeAuthenticator {
    client: kube::Client,
    cache: ReviewCache,
}

impl KubeAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: ReviewCache::default(),
        }
    }

    async fn review(&self, token: &str) -> Result<AuthenticatedProxy, AuthnError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![IDENTITY_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let proxy = from_review(answer.status.as_ref())?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), &proxy.namespace)
            .get_opt(&proxy.pod)
            .await?;
        check_pod(&proxy, pod.as_ref())?;
        Ok(proxy)
    }
}

/// Successful reviews by token digest.
#[derive(Default)]
struct ReviewCache(Mutex<HashMap<[u8; 32], (AuthenticatedProxy, Instant)>>);

impl ReviewCache {
    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<AuthenticatedProxy> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| now.duration_since(*at) < REVIEW_CACHE_TTL)
            .map(|(proxy, _)| proxy.clone())
    }

    fn remember(&self, key: [u8; 32], proxy: AuthenticatedProxy, now: Instant) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= REVIEW_CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < REVIEW_CACHE_TTL);
        }
        if cache.len() < REVIEW_CACHE_MAX {
            cache.insert(key, (proxy, now));
        }
    }
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl Authenticate for KubeAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<AuthenticatedProxy, AuthnError>> {
        Box::pin(async move {
            let key = token_key(token);
            if let Some(proxy) = self.cache.cached(&key, Instant::now()) {
                return Ok(proxy);
            }
            let proxy = self.review(token).await?;
            self.cache.remember(key, proxy.clone(), Instant::now());
            Ok(proxy)
        })
    }
}

/// For tests without an apiserver: known tokens, each a pod's; any other is refused as expired.
#[cfg(test)]
pub(crate) struct FixedTokens(pub Vec<(&'static str, AuthenticatedProxy)>);

#[cfg(test)]
impl FixedTokens {
    /// `token` is pod `namespace/pod`, running as service account `web`.
    pub(crate) fn pod(token: &'static str, namespace: &str, pod: &str) -> Self {
        Self(vec![(
            token,
            AuthenticatedProxy {
                namespace: namespace.to_owned(),
                service_account: "web".to_owned(),
                pod: pod.to_owned(),
                pod_uid: format!("uid-{pod}"),
            },
        )])
    }

    /// A token file, as the kubelet projects it.
    pub(crate) fn file(token: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().expect("token file");
        writeln!(file, "{token}").expect("writing the token");
        file
    }
}

#[cfg(test)]
impl Authenticate for FixedTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<AuthenticatedProxy, AuthnError>> {
        let known = self
            .0
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, p)| p.clone());
        Box::pin(
            async move { known.ok_or_else(|| AuthnError::Refused("token has expired".into())) },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn review(username: &str, pod: Option<(&str, &str)>) -> TokenReviewStatus {
        let extra = pod.map(|(name, uid)| {
            BTreeMap::from([
                (POD_NAME_EXTRA.to_owned(), vec![name.to_owned()]),
                (POD_UID_EXTRA.to_owned(), vec![uid.to_owned()]),
            ])
        });
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![IDENTITY_AUDIENCE.to_owned()]),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra,
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    fn web() -> AuthenticatedProxy {
        AuthenticatedProxy {
            namespace: "demo".into(),
            service_account: "web".into(),
            pod: "web-1".into(),
            pod_uid: "u1".into(),
        }
    }

    #[test]
    fn reviews_become_pods_or_clear_refusals() {
        let ok = review("system:serviceaccount:demo:web", Some(("web-1", "u1")));
        assert_eq!(from_review(Some(&ok)).unwrap(), web());
        assert_eq!(
            web().spiffe_id("example.org").to_string(),
            "spiffe://example.org/ns/demo/sa/web"
        );

        let refused = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..TokenReviewStatus::default()
        };
        let err = from_review(Some(&refused)).unwrap_err();
        assert!(matches!(&err, AuthnError::Refused(r) if r == "token has expired"));
        assert_eq!(err.status().code(), tonic::Code::Unauthenticated);
        assert!(err.status().message().contains("token has expired"));
        assert_eq!(
            from_review(None).unwrap_err().status().code(),
            tonic::Code::Unauthenticated
        );

        let wrong_audience = TokenReviewStatus {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            ..ok.clone()
        };
        assert_eq!(
            from_review(Some(&wrong_audience))
                .unwrap_err()
                .status()
                .code(),
            tonic::Code::Unauthenticated
        );

        let person = review("alice", Some(("web-1", "u1")));
        assert_eq!(
            from_review(Some(&person)).unwrap_err().status().code(),
            tonic::Code::PermissionDenied
        );
        let unbound = review("system:serviceaccount:demo:web", None);
        let err = from_review(Some(&unbound)).unwrap_err();
        assert_eq!(err.status().code(), tonic::Code::PermissionDenied);
        assert!(err.to_string().contains("not bound to a pod"), "{err}");
    }

    #[test]
    fn the_pod_must_be_the_one_the_token_is_bound_to() {
        let pod = |uid: &str, account: Option<&str>| Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                service_account_name: account.map(str::to_owned),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert!(check_pod(&web(), Some(&pod("u1", Some("web")))).is_ok());
        let gone = check_pod(&web(), None).unwrap_err();
        assert_eq!(gone.status().code(), tonic::Code::PermissionDenied);
        assert!(gone.to_string().contains("demo/web-1"), "{gone}");
        let replaced = check_pod(&web(), Some(&pod("u2", Some("web")))).unwrap_err();
        assert!(replaced.to_string().contains("replaced"), "{replaced}");
        assert!(
            check_pod(&web(), Some(&pod("u1", None))).is_err(),
            "default SA"
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_the_metadata() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert!(matches!(bearer_token(&metadata), Err(AuthnError::NoToken)));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(
            bearer_token(&metadata),
            Err(AuthnError::NotBearer)
        ));
        metadata.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), "abc.def");
        assert_eq!(
            AuthnError::NoToken.status().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn cached_reviews_expire() {
        let authn = ReviewCache::default();
        let now = Instant::now();
        let key = token_key("t");
        assert_ne!(key, token_key("u"));
        authn.remember(key, web(), now);
        assert_eq!(authn.cached(&key, now), Some(web()));
        assert_eq!(authn.cached(&key, now + REVIEW_CACHE_TTL), None);
    }
}
