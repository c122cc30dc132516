//! Robustness of the real `kekeeper run` against a misbehaving API server (kube-sim's fault
//! injection, or on the real server a fault proxy in front of it): failed writes are retried without ever making a second active key pair, and
//! dropped watches are re-established so later changes are still seen.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, condition, count_states, eventually, rkc_manifest};
use common::{create_key, kms_endpoint};
use kube_sim::ErrorFault;
use serde_json::Value;

const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const NAME: &str = "recordings";
const WAIT: Duration = Duration::from_secs(40);

async fn states(cluster: &Cluster) -> (usize, usize) {
    count_states(&cluster.key_pair_secrets(NAME).await)
}

async fn rkc(cluster: &Cluster) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), NAME)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn operator_recovers_from_api_errors_and_dropped_watches() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let (cluster, kubeconfig, user) = Cluster::with_operator_identity().await;
    let (kubeconfig, faults) = cluster.with_faults(&kubeconfig).await;
    let mut operator = cluster.start_operator("operator", &kubeconfig, &endpoint, &[], &[]);
    operator.wait_ready().await;

    // The first two status writes and the first retirement patch fail with 500.
    for (resource, subresource, verb, times) in [
        ("recordingkeyconfigs", "status", "patch", 2),
        ("secrets", "", "patch", 1),
    ] {
        faults.inject(ErrorFault {
            user: Some(user.clone()),
            verb: Some(verb.into()),
            resource: Some(resource.into()),
            subresource: Some(subresource.into()),
            code: 500,
            message: Some("injected by the test".into()),
            times: Some(times),
            ..Default::default()
        });
    }
    cluster
        .apply_ok(&rkc_manifest(NAME, &key.alias.to_string(), &[ORG]))
        .await;
    eventually("Ready despite failed status writes", WAIT, || async {
        rkc(&cluster)
            .await
            .filter(|r| condition(r, "Ready").as_deref() == Some("True"))
    })
    .await;
    assert_eq!(
        states(&cluster).await,
        (1, 0),
        "exactly one active key pair"
    );
    let failed_status_writes = faults
        .request_log(&cluster)
        .iter()
        .filter(|r| r.user == user && r.subresource == "status" && r.code == 500)
        .count();
    assert_eq!(failed_status_writes, 2, "both injected failures were hit");

    // Rotate once while retiring the old pair fails: the retry must not make a second new pair.
    cluster
        .kubectl_ok(&["annotate", "rkc", NAME, "kekeeper.io/rotate-now=first"])
        .await;
    eventually("one rotation despite a failed retirement", WAIT, || async {
        (states(&cluster).await == (1, 1)).then_some(())
    })
    .await;
    let failed_retirements = faults
        .request_log(&cluster)
        .iter()
        .filter(|r| r.user == user && r.resource == "secrets" && r.verb == "patch" && r.code == 500)
        .count();
    assert_eq!(
        failed_retirements, 1,
        "the injected retirement failure was hit"
    );

    // Every open watch is cut; the operator must re-watch and still see the next request.
    faults.drop_watches();
    cluster
        .kubectl_ok(&[
            "annotate",
            "--overwrite",
            "rkc",
            NAME,
            "kekeeper.io/rotate-now=second",
        ])
        .await;
    eventually(
        "a rotation seen after the watches were dropped",
        WAIT,
        || async { (states(&cluster).await == (1, 2)).then_some(()) },
    )
    .await;
    // Status follows the Secrets: each key pair shows once in history.
    eventually("history shows each key pair once", WAIT, || async {
        let history = rkc(&cluster).await?["status"]["keyPairHistory"]
            .as_array()?
            .len();
        (history == 3).then_some(())
    })
    .await;
    drop(operator);
}
