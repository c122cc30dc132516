//! The fleet properties at CI size (the small version of `scripts/bench-fleet.sh`):
//! 100 RecordingKeyConfigs under one alias created at once, the real `kekeeper run` against
//! kube-sim and LocalStack. Counts, not times: KMS calls within 5 % of the ideal (one
//! generation and one self-test Decrypt per pair, one DescribeKey for the alias), no client
//! timeout, no key pair generated and thrown away; then a quiet steady state and a restart
//! that makes no KMS call and no write.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, settle};
use common::fleet::{self, api_requests, calls, kms_calls, outcomes, total};
use common::{create_key, kms_endpoint};

const N: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn a_cold_start_of_100_makes_the_ideal_kms_calls_and_wastes_nothing() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let (cluster, kubeconfig, user) = Cluster::with_operator_identity().await;
    let client = fleet::client(&cluster).await;
    fleet::create(&client, "fleet", N, key.alias.as_str()).await;
    let args = ["--kms-keypair-rate=100".to_owned()];
    let mut operator = cluster.start_operator("operator", &kubeconfig, &endpoint, &args, &[]);
    operator.wait_ready().await;
    fleet::wait_for(&cluster, N, Duration::from_secs(300), fleet::is_ready)
        .await
        .expect("all Ready");

    let cold = kms_calls(&operator).await;
    let ideal = 2 * N as u64 + 1;
    assert!(
        total(&cold) as f64 <= 1.05 * ideal as f64,
        "{} KMS calls for an ideal of {ideal}: {cold:?}",
        total(&cold)
    );
    assert_eq!(calls(&cold, "DescribeKey"), 1, "{cold:?}");
    assert_eq!(outcomes(&cold, "Timeout"), 0, "{cold:?}");
    let stored = cluster
        .objects("", "secrets", Some(&cluster.ns()))
        .await
        .iter()
        .filter(|s| s["type"] == "kekeeper.io/key-pair")
        .count();
    let generated = cold
        .get(&(
            "GenerateDataKeyPairWithoutPlaintext".to_owned(),
            "ok".to_owned(),
        ))
        .copied()
        .unwrap_or(0);
    assert_eq!(stored, N);
    assert_eq!(generated, N as u64, "key pairs generated and thrown away");

    // Steady state: a reconcile of every resource with nothing to do (woken by an annotation
    // the operator does not read) asks nothing and writes nothing. Waiting for the reconciles
    // to be done, not for time to pass, so a slow machine cannot make this pass.
    settle(
        &cluster,
        &user,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    let (requests, _) = api_requests(&cluster, &user);
    let done = fleet::metric(&operator, "kekeeper_reconciles_total").await as u64;
    fleet::annotate(&client, "fleet", N, "example.com/touched", "1").await;
    fleet::wait_reconciles(&operator, done + N as u64).await;
    assert_eq!(
        api_requests(&cluster, &user).0,
        requests,
        "API requests in steady state"
    );
    assert_eq!(
        kms_calls(&operator).await,
        cold,
        "KMS calls in steady state"
    );

    // Restart: the caches resync; no KMS call, no write.
    operator.kill();
    let (_, writes) = api_requests(&cluster, &user);
    let mut operator = cluster.start_operator("restarted", &kubeconfig, &endpoint, &args, &[]);
    operator.wait_ready().await;
    let resynced = common::cluster::eventually(
        "every resource reconciled",
        Duration::from_secs(60),
        || async {
            (fleet::metric(&operator, "kekeeper_reconciles_total").await >= N as f64).then_some(())
        },
    );
    resynced.await;
    assert_eq!(
        total(&kms_calls(&operator).await),
        0,
        "KMS calls after a restart"
    );
    assert_eq!(
        api_requests(&cluster, &user).1,
        writes,
        "API writes after a restart"
    );
    operator.kill();
}
