//! Resolving the external names EgressRules allow, so traffic allowed for a name goes only to
//! that name's addresses (see [`super::egress::destination`]).
//!
//! The system resolver (`getaddrinfo`: `/etc/hosts`, then the pod's DNS servers and search
//! path, exactly as the app resolves), with a short cache: answers are kept [`CACHE_TTL`] (the
//! resolver does not tell TTLs; a few seconds follows DNS changes closely while sparing the DNS
//! server a query per request), failures [`FAILURE_TTL`]; concurrent lookups of one name share
//! one query; a lookup gives up after [`LOOKUP_TIMEOUT`]; at most [`MAX_ENTRIES`] names are kept
//! (a `*.example.com` rule lets a client ask for any number of names).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// How long an answer is used before the name is resolved again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a failed lookup is remembered (so a flood of requests is not a flood of queries).
pub const FAILURE_TTL: Duration = Duration::from_secs(1);
/// The longest a connection waits for a name to resolve.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Names kept at most.
pub const MAX_ENTRIES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{name} does not resolve: {reason}")]
    Failed { name: String, reason: String },
    #[error("{name} did not resolve within {timeout:?}")]
    Timeout { name: String, timeout: Duration },
    #[error("{name} resolves to no address")]
    Empty { name: String },
}

type Addresses = Result<Arc<[IpAddr]>, ResolveError>;
type Lookup = Shared<BoxFuture<'static, Addresses>>;

enum Entry {
    Resolved {
        addresses: Addresses,
        until: Instant,
    },
    Pending(Lookup),
}

/// The cache of resolved names (one per proxy).
#[derive(Default)]
pub struct Resolver {
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// The addresses of `name` (a DNS name, lowercase, without port or trailing dot).
    pub async fn lookup(&self, name: &str) -> Addresses {
        let now = Instant::now();
        let pending = {
            let mut entries = self.lock();
            match entries.get(name) {
                Some(Entry::Resolved { addresses, until }) if now < *until => {
                    return addresses.clone();
                }
                Some(Entry::Pending(lookup)) => lookup.clone(),
                _ => {
                    if entries.len() >= MAX_ENTRIES {
                        entries.retain(|_, entry| {
                            matches!(entry, Entry::Resolved { until, .. } if now < *until)
                        });
                        if entries.len() >= MAX_ENTRIES {
                            entries.clear();
                        }
                    }
                    let lookup = resolve(name.to_owned()).boxed().shared();
                    entries.insert(name.to_owned(), Entry::Pending(lookup.clone()));
                    lookup
                }
            }
        };
        let addresses = pending.await;
        let ttl = if addresses.is_ok() {
            CACHE_TTL
        } else {
            FAILURE_TTL
        };
        let mut entries = self.lock();
        if matches!(entries.get(name), Some(Entry::Pending(_))) {
            entries.insert(
                name.to_owned(),
                Entry::Resolved {
                    addresses: addresses.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        addresses
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn resolve(name: String) -> Addresses {
    let lookup = tokio::net::lookup_host((name.clone(), 0));
    let found = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => {
            return Err(ResolveError::Failed {
                name,
                reason: err.to_string(),
            });
        }
        Err(_) => {
            return Err(ResolveError::Timeout {
                name,
                timeout: LOOKUP_TIMEOUT,
            });
        }
    };
    let mut addresses: Vec<IpAddr> = found.map(|addr| addr.ip().to_canonical()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(ResolveError::Empty { name });
    }
    Ok(addresses.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolve_with_the_system_resolver_and_failures_are_errors() {
        let resolver = Resolver::default();
        let local = resolver
            .lookup("localhost")
            .await
            .expect("localhost resolves");
        assert!(local.iter().all(IpAddr::is_loopback), "{local:?}");
        // Cached: the same answer again.
        assert_eq!(resolver.lookup("localhost").await.expect("cached"), local);
        // `.invalid` never resolves (RFC 6761).
        let err = resolver
            .lookup("nothing.invalid")
            .await
            .expect_err("does not resolve");
        assert!(err.to_string().contains("nothing.invalid"), "{err}");
    }
}
