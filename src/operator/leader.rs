//! Leader election for `skein operator` through a `coordination.k8s.io/v1` Lease, so that of
//! several replicas exactly one reconciles at a time.
//!
//! # Why it is safe
//!
//! - **Optimistic concurrency.** Every write is a full `replace` carrying the
//!   `metadata.resourceVersion` we read (or a `create`, which fails if the Lease exists). Two
//!   candidates that read the same version and both try to take the Lease race at the apiserver,
//!   which accepts exactly one write; the other gets 409 Conflict and re-reads. A patch would
//!   carry no such precondition, so both could believe they won.
//! - **When a Lease is free.** It has no `holderIdentity`, or its holder let it expire:
//!   `renewTime + leaseDurationSeconds` is in the past on the candidate's clock. `renewTime` is
//!   written with the *holder's* wall clock, though, so a candidate whose clock runs ahead would
//!   take over early. A candidate therefore also requires that it has itself watched the Lease
//!   stay unchanged for a full `leaseDurationSeconds` on its local monotonic clock (the rule
//!   client-go uses), which makes takeover independent of clock skew between nodes and of the
//!   apiserver's clock. The price: a freshly started candidate waits one lease duration even
//!   when the holder died long ago.
//! - **The holder gives up first.** It renews every `lease_duration / 3` and declares leadership
//!   lost once no renewal has succeeded within `2/3 · lease_duration` of the *start* of the last
//!   successful one. Candidates wait a full lease duration after they saw that renewal, which
//!   happened after its start, so the old leader stops at least `lease_duration / 3` before
//!   anyone can take over; that margin covers the caller's reaction to [`Leadership::lost`] and
//!   clocks ticking at slightly different rates.
//! - **Polling.** A candidate re-reads the Lease every `min(lease_duration / 3, 2s)` plus up to
//!   10% jitter (so replicas do not poll in lock-step and collide). Bounding it by 2s means a
//!   gracefully released Lease (no holder) is taken over within about 2s even for long leases,
//!   at a load of one GET per 2s per waiting replica.
//! - **Bookkeeping.** A takeover sets `acquireTime` and increments `leaseTransitions` (also after
//!   a release, like client-go); every write sets `renewTime` and `leaseDurationSeconds` (the
//!   configured duration rounded *up* to whole seconds, so others never wait less than we
//!   assume). A holder that restarts with the same identity (a container restart in the same pod
//!   with `POD_NAME` as identity) simply resumes the Lease.
//!
//! Identities must be unique among candidates. Deleting the Lease by hand breaks the guarantee
//! for up to one renewal interval (a candidate can create it anew before the holder notices), so
//! do not.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which Lease to campaign for, as whom, and for how long a leader's claim lasts.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique among the candidates; see [`default_identity`].
    pub identity: String,
    /// How long a claim lasts without renewal: the failover time after a crash.
    pub lease_duration: Duration,
}

impl LeaseSettings {
    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {lease}: invalid settings: {reason}")]
    InvalidSettings { lease: String, reason: String },
    #[error("lease {lease}: {action}: {source}")]
    Api {
        lease: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("lease {lease}: {action}: no answer from the apiserver within {after:?}")]
    Timeout {
        lease: String,
        action: &'static str,
        after: Duration,
    },
}

impl LeaderError {
    fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// 409: someone else wrote first (Conflict on replace, AlreadyExists on create).
    fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }

    fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// Whether waiting can help. Refusals that only a human can fix (missing RBAC, a request the
    /// apiserver rejects as malformed) end the campaign, so the operator exits with the reason
    /// instead of logging warnings forever; everything else (network, 5xx, 429, timeouts) is
    /// retried.
    fn is_retryable(&self) -> bool {
        match self {
            Self::InvalidSettings { .. } => false,
            Self::Timeout { .. } => true,
            Self::Api { .. } => !matches!(self.status_code(), Some(400 | 403 | 422)),
        }
    }
}

/// This replica holds the Lease. Dropping it stops renewing (the Lease then expires); prefer
/// [`Leadership::release`] on shutdown.
pub struct Leadership {
    api: Api<Lease>,
    settings: LeaseSettings,
    timings: Timings,
    state: watch::Receiver<State>,
    renewer: JoinHandle<()>,
}

impl Leadership {
    /// Waits until this identity holds the lease (creating the Lease if absent), then keeps
    /// renewing it in a background task every lease_duration/3. Retries apiserver errors with
    /// back-off; never panics. Fails at once on invalid settings, and on refusals retrying
    /// cannot fix (403 Forbidden, 400/422 Invalid). Cancel-safe, except that a claim written just
    /// before the future is dropped stays until it expires.
    pub async fn acquire(
        client: kube::Client,
        settings: LeaseSettings,
    ) -> Result<Leadership, LeaderError> {
        let timings = Timings::new(settings.lease_duration).map_err(|reason| {
            LeaderError::InvalidSettings {
                lease: settings.lease_ref(),
                reason,
            }
        })?;
        if settings.identity.is_empty() || settings.name.is_empty() {
            return Err(LeaderError::InvalidSettings {
                lease: settings.lease_ref(),
                reason: "identity and lease name must not be empty".to_owned(),
            });
        }
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        tracing::info!(lease = %settings.lease_ref(), identity = %settings.identity,
            lease_duration = ?settings.lease_duration, "campaigning for leadership");

        let mut campaign = Campaign {
            api: &api,
            settings: &settings,
            timings,
            observed: None,
            last_holder: None,
        };
        let mut backoff = Backoff::new(timings.poll_interval / 4, timings.poll_interval * 8);
        let (lease, renewed_at) = loop {
            match campaign.attempt().await {
                Ok(Attempt::Acquired { lease, written_at }) => break (*lease, written_at),
                Ok(Attempt::Wait) => {
                    backoff.reset();
                    let poll = timings.poll_interval;
                    tokio::time::sleep(poll + jitter(&settings.identity, poll / 10)).await;
                }
                // Someone else wrote between our read and our write: re-read at once.
                Ok(Attempt::Reread) => backoff.reset(),
                Err(err) if !err.is_retryable() => {
                    tracing::error!(error = %err, "giving up the leadership campaign");
                    return Err(err);
                }
                Err(err) => {
                    let pause = backoff.next(&settings.identity);
                    tracing::warn!(error = %err, retry_in = ?pause, "leadership campaign");
                    tokio::time::sleep(pause).await;
                }
            }
        };

        let leading_until = renewed_at + timings.renew_deadline;
        tracing::info!(lease = %settings.lease_ref(), identity = %settings.identity,
            transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions),
            "acquired leadership");
        let (state_tx, state) = watch::channel(State::Leading {
            until: leading_until,
        });
        let renewer = Renewer {
            api: api.clone(),
            settings: settings.clone(),
            timings,
            lease,
            state: state_tx,
        };
        Ok(Leadership {
            api,
            settings,
            timings,
            state,
            renewer: tokio::spawn(renewer.run(renewed_at)),
        })
    }

    /// Whether this replica may still act as the leader. Once false, it stays false.
    pub fn is_leader(&self) -> bool {
        is_leading(*self.state.borrow(), Instant::now())
    }

    /// Resolves once leadership is lost: a renewal could not be written before the lease would
    /// expire, or another identity holds the lease. The caller then stops acting (the operator
    /// exits so a restart re-campaigns).
    pub async fn lost(&self) {
        wait_lost(self.state.clone()).await;
    }

    /// Graceful hand-over: stops renewing and clears holderIdentity (with
    /// leaseDurationSeconds=1) so a waiting candidate takes over at once instead of waiting for
    /// expiry. Call it after this replica has stopped acting. Failures are logged: the Lease then
    /// just expires.
    pub async fn release(mut self) {
        self.renewer.abort();
        // Wait for the renewer to be gone, so no renewal can land after the release.
        let _ = (&mut self.renewer).await;
        let lease_ref = self.settings.lease_ref();
        let name = self.settings.name.as_str();
        let me = self.settings.identity.as_str();
        let limit = self.timings.request_timeout;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(self.timings.poll_interval / 4).await;
            }
            let current = match call(
                &lease_ref,
                "reading before release",
                limit,
                self.api.get_opt(name),
            )
            .await
            {
                Ok(Some(current)) => current,
                Ok(None) => {
                    tracing::warn!(lease = %lease_ref, "the Lease vanished before release");
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "releasing leadership");
                    continue;
                }
            };
            let holder = current.spec.as_ref().and_then(holder);
            if holder != Some(me) {
                tracing::info!(lease = %lease_ref, ?holder, "the lease is no longer ours; nothing to release");
                return;
            }
            let mut released = current.clone();
            released.spec = current
                .spec
                .as_ref()
                .map(|spec| released_spec(spec, Timestamp::now()));
            let params = PostParams::default();
            let write = self.api.replace(name, &params, &released);
            match call(&lease_ref, "releasing", limit, write).await {
                Ok(_) => {
                    tracing::info!(lease = %lease_ref, identity = %me, "released leadership");
                    return;
                }
                // Someone wrote meanwhile (e.g. a renewal cut off by the abort that still landed):
                // re-read and check it is still ours.
                Err(err) if err.is_conflict() => {
                    tracing::debug!(lease = %lease_ref, "conflict while releasing; re-reading");
                }
                Err(err) => tracing::warn!(error = %err, "releasing leadership"),
            }
        }
        tracing::warn!(lease = %lease_ref, "could not release leadership; the lease will expire on its own");
    }

    /// Simulates a crash (for tests): stops renewing without releasing, so the Lease stays
    /// claimed until it expires. Dropping a `Leadership` does the same.
    #[doc(hidden)]
    pub fn abandon(self) {
        tracing::warn!(lease = %self.settings.lease_ref(), "abandoning leadership without release");
        self.renewer.abort();
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Nobody can observe `lost()` any more, so nobody may be acting on this leadership.
        self.renewer.abort();
    }
}

/// Leadership as the renewer publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Held; valid until `until` unless a renewal moves it on. Checked by readers too, so a
    /// renewer stuck in a request cannot make a replica act past its deadline.
    Leading { until: Instant },
    /// Final.
    Lost,
}

fn is_leading(state: State, now: Instant) -> bool {
    matches!(state, State::Leading { until } if now < until)
}

async fn wait_lost(mut state: watch::Receiver<State>) {
    loop {
        let until = match *state.borrow_and_update() {
            State::Lost => return,
            State::Leading { until } => until,
        };
        if Instant::now() >= until {
            return;
        }
        tokio::select! {
            changed = state.changed() => {
                // The renewer is gone without saying Lost (aborted): nobody renews any more.
                if changed.is_err() {
                    return;
                }
            }
            // Re-checked at the top: a renewal may have landed at the same moment.
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Derived from the lease duration; see the module documentation for why these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timings {
    /// `leaseDurationSeconds` to write: the duration rounded up.
    lease_seconds: i32,
    lease_duration: Duration,
    renew_interval: Duration,
    /// Leadership is lost this long after the start of the last successful renewal.
    renew_deadline: Duration,
    poll_interval: Duration,
    /// Bound on a single request while campaigning or releasing.
    request_timeout: Duration,
}

const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);

impl Timings {
    fn new(lease_duration: Duration) -> Result<Self, String> {
        if lease_duration < Duration::from_secs(1) {
            return Err(format!(
                "lease_duration {lease_duration:?} is below 1s (leaseDurationSeconds is whole seconds)"
            ));
        }
        let whole = lease_duration.as_secs() + u64::from(lease_duration.subsec_nanos() > 0);
        let lease_seconds = i32::try_from(whole)
            .map_err(|_| format!("lease_duration {lease_duration:?} is too long"))?;
        let third = lease_duration / 3;
        Ok(Self {
            lease_seconds,
            lease_duration,
            renew_interval: third,
            renew_deadline: third * 2,
            poll_interval: third.min(MAX_POLL_INTERVAL),
            request_timeout: lease_duration,
        })
    }
}

/// Who holds a Lease, as a candidate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseState {
    /// Nobody holds it, or its holder let it expire: it may be taken.
    Free,
    HeldByMe,
    HeldByOther {
        holder: String,
        expires: Timestamp,
    },
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Decides whether `me` may take the Lease. `now` is the local wall clock; `unchanged_for` is how
/// long this candidate has seen the spec unchanged on its monotonic clock (the skew guard);
/// `fallback` is the lease duration to assume when the Lease states none.
fn classify(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    unchanged_for: Duration,
    fallback: Duration,
) -> LeaseState {
    let Some(spec) = spec else {
        return LeaseState::Free;
    };
    let Some(holder) = holder(spec) else {
        return LeaseState::Free;
    };
    if holder == me {
        return LeaseState::HeldByMe;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|&s| s > 0)
        .map_or(fallback, |s| Duration::from_secs(s.unsigned_abs().into()));
    // Without a renewTime (a hand-written Lease), fall back to acquireTime, then to "long ago":
    // the unchanged_for guard still makes us wait a full duration.
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let expires = renewed
        .saturating_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if now < expires || unchanged_for < duration {
        LeaseState::HeldByOther {
            holder: holder.to_owned(),
            expires,
        }
    } else {
        LeaseState::Free
    }
}

/// The spec `me` writes to claim or renew a Lease whose spec is `current` (`None`: creating it).
fn claimed_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    lease_seconds: i32,
) -> LeaseSpec {
    let already_mine = current.and_then(holder) == Some(me);
    let base = current.cloned().unwrap_or_default();
    let (acquire_time, lease_transitions) = match current {
        None => (Some(MicroTime(now)), Some(0)),
        Some(_) if already_mine => (
            base.acquire_time.clone().or(Some(MicroTime(now))),
            base.lease_transitions.or(Some(0)),
        ),
        Some(_) => (
            Some(MicroTime(now)),
            Some(base.lease_transitions.unwrap_or(0).saturating_add(1)),
        ),
    };
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(lease_seconds),
        renew_time: Some(MicroTime(now)),
        acquire_time,
        lease_transitions,
        ..base
    }
}

/// The spec of a released Lease: no holder, and a 1s duration so that candidates still honouring
/// the old duration (none of ours, which treat "no holder" as free) wait only briefly.
fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// Runs `request` with a time limit, adding which lease and what failed to its error.
async fn call<T>(
    lease: &str,
    action: &'static str,
    limit: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaderError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(LeaderError::Api {
            lease: lease.to_owned(),
            action,
            source,
        }),
        Err(_) => Err(LeaderError::Timeout {
            lease: lease.to_owned(),
            action,
            after: limit,
        }),
    }
}

enum Attempt {
    /// Written by us; `written_at` is when the successful write started (the conservative
    /// origin of our claim).
    Acquired {
        lease: Box<Lease>,
        written_at: Instant,
    },
    /// Held by someone else.
    Wait,
    /// Lost a race or the Lease vanished: read again.
    Reread,
}

struct Campaign<'a> {
    api: &'a Api<Lease>,
    settings: &'a LeaseSettings,
    timings: Timings,
    /// The last spec seen and since when (monotonic): the clock-skew guard of [`classify`].
    observed: Option<(LeaseSpec, Instant)>,
    /// For logging each new holder once.
    last_holder: Option<String>,
}

impl Campaign<'_> {
    async fn attempt(&mut self) -> Result<Attempt, LeaderError> {
        let lease_ref = self.settings.lease_ref();
        let name = self.settings.name.as_str();
        let me = self.settings.identity.as_str();
        let limit = self.timings.request_timeout;
        let current = call(&lease_ref, "reading", limit, self.api.get_opt(name)).await?;

        let Some(current) = current else {
            let written_at = Instant::now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(claimed_spec(
                    None,
                    me,
                    Timestamp::now(),
                    self.timings.lease_seconds,
                )),
            };
            return match call(
                &lease_ref,
                "creating",
                limit,
                self.api.create(&PostParams::default(), &lease),
            )
            .await
            {
                Ok(lease) => self.acquired(lease, written_at),
                Err(err) if err.is_conflict() => Ok(Attempt::Reread),
                Err(err) => Err(err),
            };
        };

        let spec = current.spec.clone().unwrap_or_default();
        let unchanged_for = match &self.observed {
            Some((seen, since)) if *seen == spec => since.elapsed(),
            _ => {
                self.observed = Some((spec.clone(), Instant::now()));
                Duration::ZERO
            }
        };
        let state = classify(
            Some(&spec),
            me,
            Timestamp::now(),
            unchanged_for,
            self.timings.lease_duration,
        );
        if let LeaseState::HeldByOther { holder, expires } = state {
            if self.last_holder.as_deref() != Some(holder.as_str()) {
                tracing::info!(lease = %lease_ref, %holder, %expires, "lease is held; waiting");
                self.last_holder = Some(holder);
            } else {
                tracing::debug!(lease = %lease_ref, %holder, %expires, "lease is held");
            }
            return Ok(Attempt::Wait);
        }

        let written_at = Instant::now();
        let mut claim = current;
        claim.spec = Some(claimed_spec(
            Some(&spec),
            me,
            Timestamp::now(),
            self.timings.lease_seconds,
        ));
        match call(
            &lease_ref,
            "taking over",
            limit,
            self.api.replace(name, &PostParams::default(), &claim),
        )
        .await
        {
            Ok(lease) => self.acquired(lease, written_at),
            Err(err) if err.is_conflict() => {
                tracing::debug!(lease = %lease_ref, "another candidate wrote first");
                Ok(Attempt::Reread)
            }
            Err(err) if err.is_not_found() => Ok(Attempt::Reread),
            Err(err) => Err(err),
        }
    }

    fn acquired(&self, lease: Lease, written_at: Instant) -> Result<Attempt, LeaderError> {
        // A write that took so long that our claim is nearly over is no basis for acting:
        // go round again (the Lease now names us, so the next attempt renews it).
        if Instant::now() >= written_at + self.timings.renew_deadline {
            tracing::warn!(lease = %self.settings.lease_ref(), "claim written too slowly; renewing");
            return Ok(Attempt::Reread);
        }
        Ok(Attempt::Acquired {
            lease: Box::new(lease),
            written_at,
        })
    }
}

/// Why a renewer stopped.
#[derive(Debug, thiserror::Error)]
enum Loss {
    #[error("no renewal succeeded before the renewal deadline")]
    Deadline,
    #[error("the lease is now held by {}", .0.as_deref().unwrap_or("nobody"))]
    TakenBy(Option<String>),
    #[error("the Lease was deleted")]
    Deleted,
}

/// The background task that keeps the Lease.
struct Renewer {
    api: Api<Lease>,
    settings: LeaseSettings,
    timings: Timings,
    /// The Lease as we last wrote it: its resourceVersion guards the next renewal.
    lease: Lease,
    state: watch::Sender<State>,
}

impl Renewer {
    async fn run(mut self, mut renewed_at: Instant) {
        loop {
            tokio::time::sleep_until(renewed_at + self.timings.renew_interval).await;
            let deadline = renewed_at + self.timings.renew_deadline;
            match self.renew_before(deadline).await {
                Ok(at) => {
                    renewed_at = at;
                    self.state.send_replace(State::Leading {
                        until: at + self.timings.renew_deadline,
                    });
                }
                Err(loss) => {
                    tracing::warn!(lease = %self.settings.lease_ref(), identity = %self.settings.identity,
                        reason = %loss, "lost leadership");
                    self.state.send_replace(State::Lost);
                    return;
                }
            }
        }
    }

    /// Renews, retrying with back-off until `deadline`. Returns when the successful write started.
    async fn renew_before(&mut self, deadline: Instant) -> Result<Instant, Loss> {
        let identity = self.settings.identity.clone();
        let mut backoff = Backoff::new(
            self.timings.renew_interval / 5,
            self.timings.renew_interval / 2,
        );
        loop {
            let start = Instant::now();
            if start >= deadline {
                return Err(Loss::Deadline);
            }
            match tokio::time::timeout_at(deadline, self.renew_once()).await {
                // Succeeding exactly at the deadline is too late: readers may already have seen
                // the deadline pass, and "lost" must be final.
                Ok(Ok(())) if Instant::now() < deadline => return Ok(start),
                Ok(Ok(())) | Err(_) => return Err(Loss::Deadline),
                Ok(Err(RenewError::Lost(loss))) => return Err(loss),
                Ok(Err(RenewError::Failed(err))) => {
                    let pause = backoff.next(&identity).min(deadline - Instant::now());
                    tracing::warn!(error = %err, retry_in = ?pause, "renewing leadership");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn renew_once(&mut self) -> Result<(), RenewError> {
        let lease_ref = self.settings.lease_ref();
        let name = self.settings.name.clone();
        let me = self.settings.identity.as_str();
        // Conflicts from writers that left us the holder (a label edit, or our own earlier
        // renewal that timed out on our side but was applied) are retried with their version.
        let mut attempts = 0;
        loop {
            let mut renewal = self.lease.clone();
            renewal.spec = Some(claimed_spec(
                self.lease.spec.as_ref(),
                me,
                Timestamp::now(),
                self.timings.lease_seconds,
            ));
            let written = self
                .api
                .replace(&name, &PostParams::default(), &renewal)
                .await;
            let err = match written {
                Ok(lease) => {
                    self.lease = lease;
                    tracing::debug!(lease = %lease_ref, "renewed leadership");
                    return Ok(());
                }
                Err(source) => LeaderError::Api {
                    lease: lease_ref.clone(),
                    action: "renewing",
                    source,
                },
            };
            attempts += 1;
            if err.is_not_found() {
                return Err(RenewError::Lost(Loss::Deleted));
            }
            if !err.is_conflict() || attempts == 3 {
                return Err(RenewError::Failed(err));
            }
            let current = self.api.get_opt(&name).await.map_err(|source| {
                RenewError::Failed(LeaderError::Api {
                    lease: lease_ref.clone(),
                    action: "reading after a conflict",
                    source,
                })
            })?;
            let Some(current) = current else {
                return Err(RenewError::Lost(Loss::Deleted));
            };
            let holder = current.spec.as_ref().and_then(holder);
            if holder != Some(me) {
                return Err(RenewError::Lost(Loss::TakenBy(holder.map(str::to_owned))));
            }
            self.lease = current;
        }
    }
}

enum RenewError {
    Lost(Loss),
    Failed(LeaderError),
}

/// Exponential back-off with jitter, for retrying failed requests.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    fn next(&mut self, identity: &str) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base + jitter(identity, base / 5)
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A pseudo-random duration in `[0, max]`, so that replicas retry and poll out of step.
/// `RandomState` is seeded randomly per process; time and identity vary it between calls.
fn jitter(identity: &str, max: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(identity.as_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    // The top 53 bits as a fraction in [0, 1).
    let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(fraction)
}

/// `<hostname>-<pid>`: unique per process on a host. In a pod prefer the pod name (`POD_NAME`);
/// with `hostNetwork` the hostname is the node's, and two containers can both be pid 1.
pub fn default_identity() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let host = from_proc
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn ts(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn held(holder: &str, renewed: i64, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            renew_time: Some(MicroTime(ts(renewed))),
            acquire_time: Some(MicroTime(ts(0))),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(4),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_or_unheld_lease_is_free() {
        assert_eq!(
            classify(None, "me", ts(0), Duration::ZERO, D),
            LeaseState::Free
        );
        let mut spec = held("", 0, 15);
        assert_eq!(
            classify(Some(&spec), "me", ts(1), Duration::ZERO, D),
            LeaseState::Free
        );
        spec.holder_identity = None;
        assert_eq!(
            classify(Some(&spec), "me", ts(1), Duration::ZERO, D),
            LeaseState::Free
        );
    }

    #[test]
    fn my_own_lease_is_mine_even_if_expired() {
        let spec = held("me", 0, 15);
        assert_eq!(
            classify(Some(&spec), "me", ts(5), Duration::ZERO, D),
            LeaseState::HeldByMe
        );
        assert_eq!(
            classify(Some(&spec), "me", ts(500), D, D),
            LeaseState::HeldByMe
        );
    }

    #[test]
    fn another_holder_keeps_it_until_it_expires() {
        let spec = held("other", 100, 15);
        let expected = LeaseState::HeldByOther {
            holder: "other".to_owned(),
            expires: ts(115),
        };
        assert_eq!(classify(Some(&spec), "me", ts(114), D * 2, D), expected);
        assert_eq!(classify(Some(&spec), "me", ts(115), D, D), LeaseState::Free);
    }

    #[test]
    fn expiry_also_needs_a_full_duration_of_local_observation() {
        // renewTime says long expired (the holder's clock may be behind ours), but we have not
        // watched it stay unchanged for 15s ourselves.
        let spec = held("other", 0, 15);
        assert!(matches!(
            classify(Some(&spec), "me", ts(1000), Duration::from_secs(14), D),
            LeaseState::HeldByOther { .. }
        ));
        assert_eq!(
            classify(Some(&spec), "me", ts(1000), Duration::from_secs(15), D),
            LeaseState::Free
        );
    }

    #[test]
    fn the_lease_duration_comes_from_the_lease_else_the_fallback() {
        // The holder promised 60s: our 15s does not shorten its claim.
        let spec = held("other", 0, 60);
        assert!(matches!(
            classify(Some(&spec), "me", ts(30), Duration::from_secs(30), D),
            LeaseState::HeldByOther { .. }
        ));
        let mut spec = held("other", 0, 0);
        spec.lease_duration_seconds = None;
        assert_eq!(
            classify(Some(&spec), "me", ts(16), Duration::from_secs(16), D),
            LeaseState::Free
        );
    }

    #[test]
    fn a_holder_without_times_is_free_after_observing_it_for_a_duration() {
        let spec = LeaseSpec {
            holder_identity: Some("other".to_owned()),
            ..Default::default()
        };
        assert!(matches!(
            classify(Some(&spec), "me", ts(0), Duration::from_secs(1), D),
            LeaseState::HeldByOther { .. }
        ));
        assert_eq!(classify(Some(&spec), "me", ts(0), D, D), LeaseState::Free);
    }

    #[test]
    fn creating_a_lease_starts_at_zero_transitions() {
        let spec = claimed_spec(None, "me", ts(7), 15);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(7))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(7))));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn taking_over_counts_a_transition_and_sets_acquire_time() {
        let spec = claimed_spec(Some(&held("other", 0, 15)), "me", ts(20), 15);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(20))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(20))));
        // After a release the holder is gone, and taking it is still a transition.
        let released = released_spec(&held("other", 0, 15), ts(10));
        assert_eq!(
            claimed_spec(Some(&released), "me", ts(20), 15).lease_transitions,
            Some(5)
        );
    }

    #[test]
    fn renewing_only_moves_renew_time() {
        let spec = claimed_spec(Some(&held("me", 3, 15)), "me", ts(20), 15);
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(20))));
    }

    #[test]
    fn releasing_clears_the_holder_and_keeps_the_history() {
        let spec = released_spec(&held("me", 3, 15), ts(9));
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(9))));
        assert_eq!(
            classify(Some(&spec), "next", ts(9), Duration::ZERO, D),
            LeaseState::Free
        );
    }

    #[test]
    fn timings_follow_the_lease_duration() {
        let t = Timings::new(Duration::from_secs(15)).unwrap();
        assert_eq!(t.lease_seconds, 15);
        assert_eq!(t.renew_interval, Duration::from_secs(5));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.poll_interval, Duration::from_secs(2));
        let t = Timings::new(Duration::from_millis(2500)).unwrap();
        assert_eq!(
            t.lease_seconds, 3,
            "rounded up, so others never wait less than we assume"
        );
        assert_eq!(t.poll_interval, Duration::from_millis(2500) / 3);
        assert!(Timings::new(Duration::from_millis(999)).is_err());
        assert!(Timings::new(Duration::from_secs(u64::MAX / 4)).is_err());
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..1000 {
            assert!(jitter("me", Duration::from_millis(100)) <= Duration::from_millis(100));
        }
        assert_eq!(jitter("me", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(300));
        let first = backoff.next("me");
        assert!(first >= ms(100) && first <= ms(120));
        let second = backoff.next("me");
        assert!(second >= ms(200) && second <= ms(240));
        let third = backoff.next("me");
        assert!(third >= ms(300) && third <= ms(360));
        backoff.reset();
        assert!(backoff.next("me") <= ms(120));
    }

    #[test]
    fn refusals_only_a_human_can_fix_are_not_retried() {
        let api = |code: u16| LeaderError::Api {
            lease: "ns/name".to_owned(),
            action: "reading",
            source: kube::Error::Api(Box::new(
                kube::core::Status::failure("no", "Reason").with_code(code),
            )),
        };
        assert!(!api(403).is_retryable());
        assert!(!api(422).is_retryable());
        assert!(api(500).is_retryable());
        assert!(api(429).is_retryable());
        assert!(api(409).is_conflict());
        assert!(api(404).is_not_found());
        assert!(
            LeaderError::Timeout {
                lease: "ns/name".to_owned(),
                action: "reading",
                after: D,
            }
            .is_retryable()
        );
        assert!(api(403).to_string().starts_with("lease ns/name: reading: "));
    }

    #[test]
    fn default_identity_is_host_dash_pid() {
        let identity = default_identity();
        let suffix = format!("-{}", std::process::id());
        assert!(identity.ends_with(&suffix), "{identity}");
        assert!(identity.len() > suffix.len(), "{identity}");
    }

    #[tokio::test(start_paused = true)]
    async fn lost_resolves_at_the_deadline_unless_renewed() {
        let start = Instant::now();
        let (tx, rx) = watch::channel(State::Leading {
            until: start + Duration::from_secs(10),
        });
        let waiter = tokio::spawn(wait_lost(rx.clone()));
        tokio::time::sleep(Duration::from_secs(8)).await;
        tx.send_replace(State::Leading {
            until: start + Duration::from_secs(20),
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!waiter.is_finished(), "renewed: still leading at 12s");
        assert!(is_leading(*rx.borrow(), Instant::now()));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(waiter.is_finished(), "not renewed: lost at 20s");
        assert!(!is_leading(*rx.borrow(), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_resolves_when_the_renewer_says_so_or_is_gone() {
        let until = Instant::now() + Duration::from_secs(10);
        let (tx, rx) = watch::channel(State::Leading { until });
        let waiter = tokio::spawn(wait_lost(rx.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(State::Lost);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(waiter.is_finished());
        assert!(!is_leading(*rx.borrow(), Instant::now()));

        let (tx, rx) = watch::channel(State::Leading { until });
        let waiter = tokio::spawn(wait_lost(rx));
        drop(tx);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(waiter.is_finished());
    }
}
