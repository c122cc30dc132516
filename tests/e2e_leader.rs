//! Leader election end to end: two real `kekeeper run --leader-elect` processes against
//! kube-sim, each with its own ServiceAccount so the request log tells them apart.
//! - SIGTERM to the leader: it releases the Lease and the standby holds it within 3 s;
//! - a leader that cannot renew stops (exit 1) before the standby may take over;
//! - in both, the two never lead at once: the successful Lease writes of one replica all come
//!   before those of the other, and the first's "released"/"lost leadership" log line comes
//!   before the second's "acquired leadership".
//!
//! - with the KMS emulator and a RecordingKeyConfig: only the leader calls KMS, and after the
//!   handover the new leader carries on (a rotation) without a duplicate key pair.
//!
//! The first two apply no RecordingKeyConfig, so they need no KMS ("acting" is visible as the
//! controller's requests for RecordingKeyConfigs, which a standby never makes).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Faults, Operator, count_states, eventually, rkc_manifest};
use common::{create_key, kms_endpoint};
use jiff::Timestamp;
use kube_sim::RequestRecord;

const LEASE: &str = "kekeeper-leader";
/// Nothing listens here; no KMS call is expected.
const NO_KMS: &str = "http://127.0.0.1:9";

struct Replica {
    operator: Operator,
    user: String,
    identity: String,
    /// Faults in this replica's requests (kube-sim's, or a fault proxy's on the real server).
    faults: Faults,
}

struct Pair {
    // Dropped first (their logs are printed from the cluster's tempdir on failure).
    a: Replica,
    b: Replica,
    cluster: Cluster,
}

async fn start_replica(cluster: &Cluster, identity: &str, kms: &str, timing: &[&str]) -> Replica {
    let (kubeconfig, user): (PathBuf, String) = cluster
        .service_account_kubeconfig("kekeeper-system", identity)
        .await;
    let (kubeconfig, faults) = cluster.with_faults(&kubeconfig).await;
    let mut args: Vec<String> = [
        "--leader-elect",
        &format!("--lease-namespace={}", cluster.ns()),
        &format!("--identity={identity}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(timing.iter().map(|s| s.to_string()));
    let operator = cluster.start_operator(identity, &kubeconfig, kms, &args, &[]);
    Replica {
        operator,
        user,
        identity: identity.to_owned(),
        faults,
    }
}

async fn holder(cluster: &Cluster) -> Option<String> {
    let lease = cluster
        .object("coordination.k8s.io", "leases", &cluster.ns(), LEASE)
        .await?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// A leads (holds the Lease, its controller watches RecordingKeyConfigs); B stands by and has
/// read the Lease at least twice.
async fn leader_and_standby(kms: &str, timing: &[&str]) -> Pair {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    let mut a = start_replica(&cluster, "replica-a", kms, timing).await;
    a.operator.wait_ready().await;
    eventually(
        "replica-a holds the Lease",
        Duration::from_secs(30),
        || async { (holder(&cluster).await.as_deref() == Some("replica-a")).then_some(()) },
    )
    .await;
    let mut b = start_replica(&cluster, "replica-b", kms, timing).await;
    b.operator.wait_ready().await;
    lease_requests(&cluster, &b.user, "get", 2).await;
    eventually(
        "replica-a's controller watches",
        Duration::from_secs(30),
        || std::future::ready(acts(&requests(&cluster, &a.user)).then_some(())),
    )
    .await;
    assert_eq!(holder(&cluster).await.as_deref(), Some("replica-a"));
    assert!(
        !acts(&requests(&cluster, &b.user)),
        "the standby made controller requests: {:?}",
        requests(&cluster, &b.user)
    );
    Pair { a, b, cluster }
}

/// Waits until `user` has made `n` successful `verb` requests on Leases.
async fn lease_requests(cluster: &Cluster, user: &str, verb: &str, n: usize) {
    eventually(
        &format!("{user}: {n} Lease {verb}s"),
        Duration::from_secs(30),
        || {
            let made = requests(cluster, user)
                .iter()
                .filter(|r| r.resource == "leases" && r.verb == verb && r.code == 200)
                .count();
            std::future::ready((made >= n).then_some(()))
        },
    )
    .await;
}

fn requests(cluster: &Cluster, user: &str) -> Vec<RequestRecord> {
    cluster
        .request_log()
        .into_iter()
        .filter(|r| r.user == user)
        .collect()
}

/// Whether these requests include the controller's (anything about RecordingKeyConfigs).
fn acts(log: &[RequestRecord]) -> bool {
    log.iter().any(|r| r.resource == "recordingkeyconfigs")
}

/// The users of the successful Lease writes, in the order the server answered them, with runs
/// of one user collapsed: `[a, b]` means every write of a came before every write of b.
fn lease_writers(cluster: &Cluster) -> Vec<String> {
    let mut writers: Vec<String> = Vec::new();
    for r in cluster.request_log() {
        let written = r.resource == "leases"
            && r.namespace == cluster.ns()
            && r.name == LEASE
            && r.is_write()
            && (200..300).contains(&r.code);
        if written && writers.last() != Some(&r.user) {
            writers.push(r.user.clone());
        }
    }
    writers
}

/// The single log line of `replica` containing `message`, by its timestamp.
fn logged_once(replica: &Replica, message: &str) -> Timestamp {
    let times = replica.operator.logged_at(message);
    assert_eq!(
        times.len(),
        1,
        "{}: {message:?} logged {} times",
        replica.identity,
        times.len()
    );
    times[0]
}

async fn wait_exit(replica: &mut Replica, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = replica.operator.exited() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} still running after {within:?}",
            replica.identity
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_to_the_standby_within_three_seconds() {
    let Pair { mut a, b, cluster } = leader_and_standby(NO_KMS, &[]).await;
    // The leader has renewed (an update of the Lease) before it is stopped.
    lease_requests(&cluster, &a.user, "update", 1).await;

    a.operator.terminate();
    let sent = Instant::now();
    let sent_at = Timestamp::now();
    let mut takeover = None;
    while sent.elapsed() < Duration::from_secs(20) {
        if holder(&cluster).await.as_deref() == Some("replica-b") {
            takeover = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let takeover = takeover.expect("replica-b never held the Lease");
    eprintln!("takeover after SIGTERM to the leader: {takeover:?}");
    assert!(
        takeover < Duration::from_secs(3),
        "the standby took {takeover:?} to hold the Lease"
    );
    let status = wait_exit(&mut a, Duration::from_secs(10)).await;
    assert!(status.success(), "replica-a exited with {status}");

    eventually(
        "replica-b's controller watches",
        Duration::from_secs(30),
        || std::future::ready(acts(&requests(&cluster, &b.user)).then_some(())),
    )
    .await;
    assert_eq!(lease_writers(&cluster), [a.user.clone(), b.user.clone()]);
    let a_acquired = logged_once(&a, "acquired leadership");
    let a_released = logged_once(&a, "released leadership");
    let b_acquired = logged_once(&b, "acquired leadership");
    eprintln!(
        "replica-a led {a_acquired} .. {a_released} (released {:?} after SIGTERM); replica-b \
         from {b_acquired} ({:?} after the release)",
        a_released.duration_since(sent_at),
        b_acquired.duration_since(a_released)
    );
    assert!(a_acquired < a_released && a_released < b_acquired);
    // The Lease is released only once the controller (and its in-flight reconciles) stopped.
    assert!(logged_once(&a, "controller stopped") <= a_released);
    assert!(a.operator.logged_at("lost leadership").is_empty());
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_before_the_standby_takes_over() {
    let timing = [
        "--lease-duration=4s",
        "--renew-deadline=2s",
        "--retry-period=500ms",
    ];
    let Pair { mut a, b, cluster } = leader_and_standby(NO_KMS, &timing).await;
    // Every renewal of replica-a fails from now on; it can still read the Lease.
    a.faults.inject(kube_sim::ErrorFault {
        user: Some(a.user.clone()),
        verb: Some("update".into()),
        resource: Some("leases".into()),
        code: 500,
        ..Default::default()
    });
    let injected = Instant::now();

    let status = wait_exit(&mut a, Duration::from_secs(10)).await;
    let a_exited = injected.elapsed();
    assert_eq!(status.code(), Some(1), "replica-a exited with {status}");
    assert_ne!(
        holder(&cluster).await.as_deref(),
        Some("replica-b"),
        "the standby took over before the leader had stopped"
    );
    eventually(
        "replica-b holds the Lease",
        Duration::from_secs(15),
        || async { (holder(&cluster).await.as_deref() == Some("replica-b")).then_some(()) },
    )
    .await;
    let b_holds = injected.elapsed();
    eprintln!(
        "renewals failing from 0 s: replica-a exited after {a_exited:?}, replica-b held the \
         Lease after {b_holds:?}"
    );

    assert_eq!(lease_writers(&cluster), [a.user.clone(), b.user.clone()]);
    let a_lost = logged_once(&a, "lost leadership");
    let b_acquired = logged_once(&b, "acquired leadership");
    let margin = b_acquired.duration_since(a_lost);
    eprintln!("replica-a stopped leading {margin:?} before replica-b acquired");
    // Lease duration 4 s − renew deadline 2 s, less the standby's 0.5 s polling granularity.
    assert!(
        margin >= jiff::SignedDuration::from_millis(1_500),
        "replica-a stopped at {a_lost}, replica-b acquired at {b_acquired}"
    );
    assert!(a.operator.logged_at("released leadership").is_empty());
    drop((a, b));
}

/// The sum of `kekeeper_kms_calls_total` on a replica's /metrics.
async fn kms_calls(replica: &Replica) -> f64 {
    common::fleet::metric(&replica.operator, "kekeeper_kms_calls_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn only_the_leader_calls_kms_and_the_new_leader_carries_on() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let Pair { mut a, b, cluster } = leader_and_standby(&endpoint, &[]).await;
    const NAME: &str = "recordings";
    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    cluster
        .apply_ok(&rkc_manifest(NAME, &key.alias.to_string(), &[ORG]))
        .await;
    cluster.wait_ready(NAME).await;
    assert!(kms_calls(&a).await >= 3.0, "DescribeKey, generate, decrypt");
    assert_eq!(kms_calls(&b).await, 0.0, "the standby called KMS");
    assert!(!acts(&requests(&cluster, &b.user)));

    a.operator.terminate();
    let status = wait_exit(&mut a, Duration::from_secs(10)).await;
    assert!(status.success(), "replica-a exited with {status}");
    eventually(
        "replica-b holds the Lease",
        Duration::from_secs(3),
        || async { (holder(&cluster).await.as_deref() == Some("replica-b")).then_some(()) },
    )
    .await;
    cluster
        .kubectl_ok(&[
            "annotate",
            &format!("rkc/{NAME}"),
            "kekeeper.io/rotate-now=t1",
        ])
        .await;
    eventually(
        "the new leader rotates: 1 active and 1 retired key pair",
        Duration::from_secs(40),
        || async { (count_states(&cluster.key_pair_secrets(NAME).await) == (1, 1)).then_some(()) },
    )
    .await;
    assert!(
        kms_calls(&b).await >= 2.0,
        "generate and decrypt by replica-b"
    );
    assert_eq!(
        cluster.key_pair_secrets(NAME).await.len(),
        2,
        "no duplicate pair"
    );
    assert_eq!(lease_writers(&cluster), [a.user.clone(), b.user.clone()]);
    drop((a, b));
}
