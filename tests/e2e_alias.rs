//! End to end: an alias change cut short makes exactly one new key pair per organisation
//! (docs/design.md, "The alias a pair was made under"). The real `kekeeper run` against the
//! suite's API server (kube-sim, or the real control plane) and the KMS emulator; 20
//! organisations move from one alias to another while the operator is killed with SIGKILL
//! part-way, or while KMS refuses organisation 10.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::cluster::{Cluster, Operator, condition, count_states, eventually, rkc_manifest};
use common::proxy::FaultProxy;
use common::{create_key, kms_endpoint};
use serde_json::Value;

const ORGANISATIONS: usize = 20;
const WAIT: Duration = Duration::from_secs(180);

/// 20 organisation ids (UUIDs), in spec order.
fn organisations() -> Vec<String> {
    (1..=ORGANISATIONS)
        .map(|n| format!("{n:08x}-0000-4000-8000-{n:012x}"))
        .collect()
}

/// A key pair Secret as (organisation, alias it records, state).
fn pair_of(secret: &Value) -> (String, String, String) {
    let metadata: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(
                secret["data"]["metadata.json"]
                    .as_str()
                    .expect("metadata.json"),
            )
            .expect("base64"),
    )
    .expect("metadata.json is JSON");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&metadata["organizationId"]),
        text(&metadata["kmsKeyAliasArn"]),
        text(&secret["metadata"]["labels"]["kekeeper.io/state"]),
    )
}

/// How many key pair Secrets of `name` record `alias`.
async fn pairs_under(cluster: &Cluster, name: &str, alias: &str) -> usize {
    cluster
        .key_pair_secrets(name)
        .await
        .iter()
        .filter(|s| pair_of(s).1 == alias)
        .count()
}

async fn rkc(cluster: &Cluster, name: &str) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), name)
        .await
}

/// Waits until `name` is Ready for its current generation with every organisation's active
/// pair under `alias`, in status and in the Secrets.
async fn wait_all_under(cluster: &Cluster, name: &str, alias: &str) -> Value {
    eventually(
        &format!("{name}: Ready, {ORGANISATIONS} active pairs under {alias}"),
        WAIT,
        || async {
            let object = rkc(cluster, name).await?;
            let status = &object["status"];
            let active = status["activeKeyPairs"].as_array()?;
            let current = status["observedGeneration"] == object["metadata"]["generation"];
            let ready = condition(&object, "Ready").as_deref() == Some("True");
            let secrets = cluster.key_pair_secrets(name).await;
            let active_under = secrets
                .iter()
                .map(pair_of)
                .filter(|(_, a, state)| a == alias && state == "active")
                .count();
            (current
                && ready
                && active.len() == ORGANISATIONS
                && active.iter().all(|p| p["kmsKeyAliasArn"] == alias)
                && active_under == ORGANISATIONS
                && count_states(&secrets).0 == ORGANISATIONS)
                .then_some(object)
        },
    )
    .await
}

/// Every organisation was rotated exactly once: 40 Secrets, per organisation one retired pair
/// under the old alias and one active pair under the new one.
async fn assert_rotated_once(cluster: &Cluster, name: &str, old: &str, new: &str, done: &Value) {
    let secrets = cluster.key_pair_secrets(name).await;
    assert_eq!(
        secrets.len(),
        2 * ORGANISATIONS,
        "{} key pairs, expected {}",
        secrets.len(),
        2 * ORGANISATIONS
    );
    let mut per_org: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (org, alias, state) in secrets.iter().map(pair_of) {
        per_org.entry(org).or_default().push((alias, state));
    }
    assert_eq!(per_org.len(), ORGANISATIONS);
    for org in organisations() {
        let mut pairs = per_org.remove(&org).unwrap_or_default();
        pairs.sort();
        let mut expected = vec![
            (old.to_owned(), "retired".to_owned()),
            (new.to_owned(), "active".to_owned()),
        ];
        expected.sort();
        assert_eq!(pairs, expected, "organisation {org}");
    }
    assert_eq!(done["status"]["kmsKeyAliasArn"], new);
    let history = done["status"]["keyPairHistory"].as_array().unwrap();
    assert!(
        history
            .iter()
            .filter(|e| e["retiredAt"].is_null())
            .all(|e| e["kmsKeyAliasArn"] == new && e["reason"] == "SpecChanged"),
        "{history:#?}"
    );
}

struct Run {
    cluster: Cluster,
    kubeconfig: std::path::PathBuf,
    old: String,
    new: String,
    name: &'static str,
    started: Instant,
}

/// The cluster, the operator (KMS at `kms`), two aliases, and a resource with 20
/// organisations Ready under the first.
async fn ready_under_old_alias(name: &'static str, kms: Option<&str>) -> (Run, Operator) {
    let endpoint = kms_endpoint();
    let old = create_key(&endpoint, common::REGION, false).await.alias;
    let new = create_key(&endpoint, common::REGION, false).await.alias;
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let run = Run {
        cluster,
        kubeconfig,
        old: old.to_string(),
        new: new.to_string(),
        name,
        started: Instant::now(),
    };
    let mut operator = start(&run, "operator-0", kms.unwrap_or(&endpoint));
    operator.wait_ready().await;
    run.cluster.apply_ok(&manifest(name, &run.old)).await;
    wait_all_under(&run.cluster, name, &run.old).await;
    assert_eq!(
        run.cluster.key_pair_secrets(name).await.len(),
        ORGANISATIONS
    );
    (run, operator)
}

fn manifest(name: &str, alias: &str) -> String {
    let orgs = organisations();
    let ids: Vec<&str> = orgs.iter().map(String::as_str).collect();
    rkc_manifest(name, alias, &ids)
}

fn start(run: &Run, log: &str, kms: &str) -> Operator {
    start_with(&run.cluster, &run.kubeconfig, log, kms)
}

fn start_with(cluster: &Cluster, kubeconfig: &Path, log: &str, kms: &str) -> Operator {
    // Four pairs a second: the change takes seconds, slow enough to stop it part-way.
    let args = ["--kms-keypair-rate=4".to_owned()];
    cluster.start_operator(log, kubeconfig, kms, &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn an_alias_change_killed_part_way_rotates_each_organisation_once() {
    let (run, mut operator) = ready_under_old_alias("killed", None).await;
    let (cluster, name) = (&run.cluster, run.name);
    cluster.apply_ok(&manifest(name, &run.new)).await;

    // About a third rotated: SIGKILL.
    eventually(
        "a third of the organisations under the new alias",
        WAIT,
        || async {
            (pairs_under(cluster, name, &run.new).await >= ORGANISATIONS / 3).then_some(())
        },
    )
    .await;
    operator.kill();
    let at_kill = pairs_under(cluster, name, &run.new).await;
    eprintln!("killed with {at_kill}/{ORGANISATIONS} organisations under the new alias");
    assert!(
        at_kill < ORGANISATIONS,
        "the change was not cut short ({at_kill} done)"
    );
    let object = rkc(cluster, name).await.unwrap();
    assert_eq!(
        object["status"]["kmsKeyAliasArn"], run.old,
        "status still summarises the old alias, as in the issue"
    );

    let mut operator = start(&run, "operator-1", &kms_endpoint());
    operator.wait_ready().await;
    let done = wait_all_under(cluster, name, &run.new).await;
    assert_rotated_once(cluster, name, &run.old, &run.new, &done).await;
    eprintln!(
        "killed run: {} key pairs, {:.1} s",
        cluster.key_pair_secrets(name).await.len(),
        run.started.elapsed().as_secs_f64()
    );
    operator.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn an_alias_change_stopped_by_kms_at_organisation_10_rotates_each_organisation_once() {
    let proxy = FaultProxy::start(&kms_endpoint()).await;
    let (run, mut operator) = ready_under_old_alias("kms-refuses", Some(&proxy.endpoint())).await;
    let (cluster, name) = (&run.cluster, run.name);
    let tenth = &organisations()[9];
    proxy.fail_matching(
        "GenerateDataKeyPairWithoutPlaintext",
        tenth,
        400,
        "AccessDeniedException",
        "the key policy does not allow this organisation",
    );
    cluster.apply_ok(&manifest(name, &run.new)).await;

    // Organisations 1 to 9 rotated, 10 refused, and refused again on the retry after the
    // backoff: the retry made no second pair for 1 to 9.
    eventually("KMS refused organisation 10 twice", WAIT, || async {
        (proxy.faulted() >= 2).then_some(())
    })
    .await;
    let refused = eventually("status shows the refusal", WAIT, || async {
        rkc(cluster, name)
            .await
            .filter(|o| o["status"]["lastKmsError"]["code"] == "AccessDeniedException")
    })
    .await;
    assert_eq!(refused["status"]["kmsKeyAliasArn"], run.old);
    assert_eq!(pairs_under(cluster, name, &run.new).await, 9);

    proxy.clear();
    let done = wait_all_under(cluster, name, &run.new).await;
    assert_rotated_once(cluster, name, &run.old, &run.new, &done).await;
    eprintln!(
        "KMS-refusal run: {} key pairs, {} refusals, {:.1} s",
        cluster.key_pair_secrets(name).await.len(),
        proxy.faulted(),
        run.started.elapsed().as_secs_f64()
    );
    operator.kill();
}
