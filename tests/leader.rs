//! Leader election against a real kube-apiserver: one leader of two candidates, failover after
//! a crash once the Lease expires, fast hand-over on release, and a leader noticing that its
//! Lease was taken by force.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use skein::operator::leader::{LeaderError, Leadership, LeaseSettings};
use support::TestContext;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const LEASE_NAME: &str = "skein-operator";
/// Short, so failover tests finish quickly.
const LEASE: Duration = Duration::from_secs(2);

fn settings(ctx: &TestContext, identity: &str, lease_duration: Duration) -> LeaseSettings {
    LeaseSettings {
        namespace: ctx.namespace.clone(),
        name: LEASE_NAME.to_owned(),
        identity: identity.to_owned(),
        lease_duration,
    }
}

/// A candidate campaigning in the background, with a client of its own like a separate replica.
async fn candidate(
    ctx: &TestContext,
    identity: &str,
    lease_duration: Duration,
) -> JoinHandle<Result<Leadership, LeaderError>> {
    let client = skein::dev::cluster::client(support::kubeconfig())
        .await
        .expect("building a candidate's client");
    tokio::spawn(Leadership::acquire(
        client,
        settings(ctx, identity, lease_duration),
    ))
}

/// Awaits a candidate's campaign, failing the test if it takes longer than `limit`.
async fn acquired(
    candidate: &mut JoinHandle<Result<Leadership, LeaderError>>,
    limit: Duration,
    who: &str,
) -> Leadership {
    timeout(limit, candidate)
        .await
        .unwrap_or_else(|_| panic!("{who} did not acquire within {limit:?}"))
        .expect("the campaign task panicked")
        .expect("the campaign failed")
}

async fn lease(ctx: &TestContext) -> Lease {
    Api::<Lease>::namespaced(ctx.client.clone(), &ctx.namespace)
        .get(LEASE_NAME)
        .await
        .expect("reading the Lease")
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

#[tokio::test]
async fn exactly_one_of_two_candidates_leads() {
    let ctx = TestContext::new().await;
    let mut a = candidate(&ctx, "candidate-a", LEASE).await;
    let mut b = candidate(&ctx, "candidate-b", LEASE).await;

    let (winner, loser, winner_name) = timeout(LEASE * 2, async {
        tokio::select! {
            won = &mut a => (won, b, "candidate-a"),
            won = &mut b => (won, a, "candidate-b"),
        }
    })
    .await
    .expect("neither candidate acquired the Lease");
    let winner = winner.unwrap().expect("the winner's campaign failed");
    assert!(winner.is_leader());

    // Several lease periods later the winner still holds it (it renews), the other still waits.
    tokio::time::sleep(LEASE * 3).await;
    assert!(!loser.is_finished(), "both candidates acquired the Lease");
    assert!(
        winner.is_leader(),
        "the winner lost its lease while renewing"
    );
    let lease = lease(&ctx).await;
    assert_eq!(holder(&lease), Some(winner_name));
    assert_eq!(transitions(&lease), 0, "created once, never changed hands");
    let renewed = lease.spec.as_ref().and_then(|s| s.renew_time.clone());
    let renewed_ago = Timestamp::now().duration_since(renewed.expect("renewTime is set").0);
    assert!(
        renewed_ago < SignedDuration::try_from(LEASE).unwrap(),
        "renewTime is {renewed_ago:?} old: not being renewed"
    );

    loser.abort();
    winner.release().await;
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_once_its_lease_expires() {
    let ctx = TestContext::new().await;
    let mut a = candidate(&ctx, "candidate-a", LEASE).await;
    let leader = acquired(&mut a, LEASE * 2, "the first candidate").await;
    let mut b = candidate(&ctx, "candidate-b", LEASE).await;
    tokio::time::sleep(LEASE + LEASE / 2).await;
    assert!(!b.is_finished(), "the second candidate took a live Lease");

    leader.abandon();
    let crashed_at = Instant::now();
    let before = lease(&ctx).await;
    assert_eq!(holder(&before), Some("candidate-a"));
    let last_renewal = before
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.clone())
        .expect("renewTime is set")
        .0;

    let successor = acquired(&mut b, LEASE * 2 + LEASE / 4, "the second candidate").await;
    let took = crashed_at.elapsed();
    assert!(successor.is_leader());

    let after = lease(&ctx).await;
    assert_eq!(holder(&after), Some("candidate-b"));
    assert_eq!(transitions(&after), transitions(&before) + 1);
    let acquired_at = after
        .spec
        .as_ref()
        .and_then(|s| s.acquire_time.clone())
        .expect("acquireTime is set on takeover")
        .0;
    // Never before the crashed leader's claim ran out.
    let earliest = last_renewal
        .checked_add(SignedDuration::try_from(LEASE).unwrap())
        .unwrap();
    assert!(
        acquired_at >= earliest,
        "taken over at {acquired_at}, before the old claim expired at {earliest}"
    );
    eprintln!("failover took {took:?}");
    successor.release().await;
}

#[tokio::test]
async fn a_released_lease_is_taken_over_at_once() {
    // A long lease, so that taking over well within it can only be the release's doing.
    let lease_duration = Duration::from_secs(6);
    let ctx = TestContext::new().await;
    let mut a = candidate(&ctx, "candidate-a", lease_duration).await;
    let leader = acquired(&mut a, LEASE * 2, "the first candidate").await;
    let mut b = candidate(&ctx, "candidate-b", lease_duration).await;
    tokio::time::sleep(LEASE).await;
    assert!(!b.is_finished(), "the second candidate took a live Lease");
    let before = lease(&ctx).await;

    let released_at = Instant::now();
    leader.release().await;
    let successor = acquired(&mut b, lease_duration / 2, "the waiting candidate").await;
    let took = released_at.elapsed();
    assert!(
        took < lease_duration / 2,
        "hand-over took {took:?} of a {lease_duration:?} lease"
    );
    assert!(successor.is_leader());
    let after = lease(&ctx).await;
    assert_eq!(holder(&after), Some("candidate-b"));
    assert_eq!(transitions(&after), transitions(&before) + 1);
    eprintln!("hand-over took {took:?}");
    successor.release().await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_by_force_notices() {
    let ctx = TestContext::new().await;
    let mut a = candidate(&ctx, "candidate-a", LEASE).await;
    let leader = acquired(&mut a, LEASE * 2, "the candidate").await;

    let api = Api::<Lease>::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut forced = lease(&ctx).await;
    let spec = forced.spec.as_mut().expect("the Lease has a spec");
    spec.holder_identity = Some("intruder".to_owned());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.acquire_time = Some(MicroTime(Timestamp::now()));
    // A leader renewing at that very moment makes this conflict: re-read and try again.
    let mut attempts = 0;
    loop {
        match api
            .replace(LEASE_NAME, &PostParams::default(), &forced)
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => {
                attempts += 1;
                let spec = forced.spec.take();
                forced = lease(&ctx).await;
                forced.spec = spec;
            }
            Err(err) => panic!("overwriting the Lease: {err}"),
        }
    }

    timeout(LEASE, leader.lost())
        .await
        .expect("the leader did not notice the takeover within one lease duration");
    assert!(!leader.is_leader());
    // It stopped without writing over the intruder.
    tokio::time::sleep(LEASE / 2).await;
    assert_eq!(holder(&lease(&ctx).await), Some("intruder"));
}
