//! Soak: status never rolls back. 210 rotate-now requests across 3 resources, the operator
//! killed (SIGKILL) and restarted every 20 rounds and a request now and then sent before the
//! previous one was honoured; at the end every `status.rotateNowToken` equals its annotation,
//! every organisation has exactly one active pair, and no Secret name was used twice.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{Cluster, count_states, eventually};
use common::fleet::{self, org};
use common::{create_key, kms_endpoint};

const RESOURCES: usize = 3;
const ROUNDS: usize = 70;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn repeated_rotate_now_with_restarts_never_rolls_status_back() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let client = fleet::client(&cluster).await;
    fleet::create(&client, "soak", RESOURCES, key.alias.as_str()).await;
    let args = ["--kms-keypair-rate=100".to_owned()];
    let mut operator = cluster.start_operator("soak-0", &kubeconfig, &endpoint, &args, &[]);
    fleet::wait_for(
        &cluster,
        RESOURCES,
        Duration::from_secs(60),
        fleet::is_ready,
    )
    .await
    .expect("Ready");

    let mut rotations = 0;
    for round in 1..=ROUNDS {
        let token = format!("round-{round}");
        fleet::rotate_now(&client, "soak", RESOURCES, &token).await;
        rotations += RESOURCES;
        if round % 20 == 0 {
            operator.kill();
            operator = cluster.start_operator(
                &format!("soak-{round}"),
                &kubeconfig,
                &endpoint,
                &args,
                &[],
            );
        }
        // Every seventh round runs straight into the next request.
        if round % 7 != 0 {
            wait_honoured(&cluster, &token).await;
        }
    }
    wait_honoured(&cluster, &format!("round-{ROUNDS}")).await;
    assert!(rotations >= 200);

    for i in 0..RESOURCES {
        let name = format!("soak-{i}");
        let object = cluster
            .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), &name)
            .await
            .expect("resource");
        assert_eq!(
            object["status"]["rotateNowToken"],
            object["metadata"]["annotations"]["kekeeper.io/rotate-now"],
            "{name}"
        );
        let secrets = cluster.key_pair_secrets(&name).await;
        let (active, retired) = count_states(&secrets);
        assert_eq!(active, 1, "{name}: one active pair");
        let names: BTreeSet<&str> = secrets
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names.len(),
            active + retired,
            "{name}: Secret names are unique"
        );
        let ids: BTreeSet<String> = secrets
            .iter()
            .map(|s| {
                s["metadata"]["labels"]["kekeeper.io/key-pair-id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids.len(), secrets.len(), "{name}: one key pair per Secret");
        assert!(object["status"]["activeKeyPairs"][0]["organizationId"] == org(i).as_str());
    }
    operator.kill();
}

/// Waits until every soak resource honoured `token` and is Ready.
async fn wait_honoured(cluster: &Cluster, token: &str) {
    eventually(
        &format!("{token} honoured"),
        Duration::from_secs(60),
        || async {
            let done = fleet::count(cluster, |o| {
                o["status"]["rotateNowToken"] == token && fleet::is_ready(o)
            })
            .await;
            (done == RESOURCES).then_some(())
        },
    )
    .await;
}
