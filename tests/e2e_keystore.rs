//! End to end: the key store (issue 19, docs/disaster-recovery.md). The real `kekeeper run`
//! against the suite's API server, KMS and S3 from LocalStack (`SERVICES=kms,s3`), and the fault
//! proxies in front of S3 and of the API server.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::cli::kekeeper_in;
use common::cluster::{Cluster, Operator, condition, count_states, eventually, rkc_manifest};
use common::fleet;
use common::proxy::FaultProxy;
use common::{create_bucket, create_key, kms_endpoint, s3_config};
use kekeeper::keypair::{KeyPairSecret, Wrap};
use kekeeper::keystore::s3::S3Objects;
use kekeeper::keystore::{KeyStore, WrapPut};
use kube_sim::ErrorFault;
use serde_json::Value;

const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "9b2e6c1a-7d4f-4e8a-a1c3-5f0d2b8e9c47";
const ORG_C: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const NAME: &str = "recordings";
const WAIT: Duration = Duration::from_secs(60);

/// `kekeeper run --key-store=URL`, S3 at `s3_endpoint`.
fn start(
    cluster: &Cluster,
    log: &str,
    kubeconfig: &Path,
    url: &str,
    s3_endpoint: &str,
) -> Operator {
    start_with(cluster, log, kubeconfig, url, s3_endpoint, &[])
}

/// As [`start`], with more arguments.
fn start_with(
    cluster: &Cluster,
    log: &str,
    kubeconfig: &Path,
    url: &str,
    s3_endpoint: &str,
    more: &[&str],
) -> Operator {
    let mut args = vec![format!("--key-store={url}")];
    args.extend(more.iter().map(|a| a.to_string()));
    cluster.start_operator(
        log,
        kubeconfig,
        &kms_endpoint(),
        &args,
        &[("AWS_ENDPOINT_URL_S3".to_owned(), s3_endpoint.to_owned())],
    )
}

async fn rkc(cluster: &Cluster) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), NAME)
        .await
}

fn condition_of<'a>(rkc: &'a Value, type_: &str) -> &'a Value {
    rkc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Waits for `secrets` key pair Secrets of which `active` are active, Ready, and KeyStoreSynced
/// True with `secrets/secrets` stored.
async fn wait_synced(cluster: &Cluster, secrets: usize, active: usize) -> Value {
    let stored = format!("{secrets}/{secrets} key pairs stored in s3://");
    eventually(
        &format!("{secrets} Secrets ({active} active), Ready, {stored}"),
        WAIT,
        || async {
            let pairs = cluster.key_pair_secrets(NAME).await;
            let rkc = rkc(cluster).await?;
            let synced = condition_of(&rkc, "KeyStoreSynced");
            (pairs.len() == secrets
                && count_states(&pairs).0 == active
                && condition(&rkc, "Ready").as_deref() == Some("True")
                && synced["status"] == "True"
                && synced["message"].as_str()?.starts_with(&stored))
            .then_some(rkc)
        },
    )
    .await
}

/// (Secret name, fingerprint) of the active pairs in status.
fn active_pairs(rkc: &Value) -> BTreeSet<(String, String)> {
    rkc["status"]["activeKeyPairs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["secretName"].as_str().unwrap().to_owned(),
                p["publicKeyFingerprint"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Key pairs the operator generated through KMS, from its /metrics.
async fn generated(operator: &Operator) -> u64 {
    fleet::calls(
        &fleet::kms_calls(operator).await,
        "GenerateDataKeyPairWithoutPlaintext",
    )
}

async fn rotate(cluster: &Cluster, token: &str) {
    cluster
        .kubectl_ok(&[
            "annotate",
            "rkc",
            NAME,
            "--overwrite",
            &format!("kekeeper.io/rotate-now={token}"),
        ])
        .await;
}

/// Throws the API server away: kube-sim, a new empty one; the shared real server, the
/// RecordingKeyConfig, its Secrets and ConfigMap deleted, which leaves the namespace as a new
/// cluster's. Returns the new cluster (if one), the operator's kubeconfig and user there.
async fn rebuild(cluster: &Cluster) -> (Option<Cluster>, std::path::PathBuf, String) {
    if !cluster.is_real() {
        let (fresh, kubeconfig, user) = Cluster::with_operator_identity().await;
        return (Some(fresh), kubeconfig, user);
    }
    let selector = format!("kekeeper.io/config={NAME}");
    let config_map = format!("{NAME}-public-keys");
    for args in [
        vec!["delete", "rkc", NAME],
        vec!["delete", "secrets", "-l", &selector],
        vec!["delete", "configmap", "--ignore-not-found", &config_map],
    ] {
        cluster.kubectl_ok(&args).await;
    }
    let (kubeconfig, user) = cluster
        .service_account_kubeconfig("kekeeper-system", "kekeeper")
        .await;
    (None, kubeconfig, user)
}

/// A new key, bucket and cluster whose operator (log `log`) keeps the pairs of `orgs` under
/// `s3://BUCKET/prefix`, every pair made and stored.
struct Synced {
    endpoint: String,
    key: common::TestKey,
    bucket: String,
    url: String,
    cluster: Cluster,
    kubeconfig: std::path::PathBuf,
    operator: Operator,
    status: Value,
}

async fn synced(prefix: &str, log: &str, orgs: &[&str]) -> Synced {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/{prefix}");
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let mut operator = start(&cluster, log, &kubeconfig, &url, &endpoint);
    operator.wait_ready().await;
    cluster
        .apply_ok(&rkc_manifest(NAME, &key.alias.to_string(), orgs))
        .await;
    let status = wait_synced(&cluster, orgs.len(), orgs.len()).await;
    Synced {
        endpoint,
        key,
        bucket,
        url,
        cluster,
        kubeconfig,
        operator,
        status,
    }
}

/// Object keys under `prefix` in `bucket`.
async fn objects(bucket: &str, prefix: &str) -> Vec<String> {
    let client = aws_sdk_s3::Client::from_conf(s3_config(&kms_endpoint()).await);
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("ListObjectsV2");
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// The rebuild: a config with three organisations, rotated once, its pairs in the store. The
/// API server is thrown away (kube-sim: a new, empty one; the shared real server: the
/// RecordingKeyConfig, its Secrets and ConfigMap deleted, which leaves the namespace as a new
/// cluster's) and the same manifest applied again under a new operator with the same store:
/// the same fingerprints are active, the history is back, no key pair is generated, and a
/// recording encrypted before the rebuild decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_rebuilt_cluster_gets_every_key_pair_back_from_the_store() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/prod-eu");
    let manifest = rkc_manifest(NAME, &key.alias.to_string(), &[ORG_A, ORG_B, ORG_C]);

    let (cluster, operator_kubeconfig, _) = Cluster::with_operator_identity().await;
    // The cluster id a GitOps user keeps in Git (chart value keyStore.clusterId), so the rebuilt
    // cluster takes its predecessor's prefix over at once.
    let id = ["--key-store-cluster-id=prod-eu"];
    let mut operator = start_with(
        &cluster,
        "before",
        &operator_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    cluster.apply_ok(&manifest).await;
    wait_synced(&cluster, 3, 3).await;
    rotate(&cluster, "before-the-rebuild").await;
    let before = wait_synced(&cluster, 6, 3).await;
    let history_before = before["status"]["keyPairHistory"].as_array().unwrap().len();
    assert_eq!(history_before, 6);
    assert_eq!(
        objects(&bucket, "prod-eu/key-pairs/").await.len(),
        6 + 3,
        "6 pairs, 3 retired markers"
    );

    // A recording encrypted with ORG_A's active pair before the rebuild.
    let (secret_name, _) = active_pairs(&before)
        .into_iter()
        .find(|(name, _)| {
            before["status"]["activeKeyPairs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["secretName"] == name.as_str() && p["organizationId"] == ORG_A)
        })
        .unwrap();
    let secret = cluster
        .object("", "secrets", &cluster.ns(), &secret_name)
        .await
        .unwrap();
    let path = |name: &str| cluster.path(name).to_str().unwrap().to_owned();
    std::fs::write(path("secret.json"), secret.to_string()).unwrap();
    let recording: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(path("rec"), &recording).unwrap();
    let run = kekeeper_in(
        &cluster.kubeconfig,
        &[
            "encrypt",
            "--key-pair-secret",
            &path("secret.json"),
            "-i",
            &path("rec"),
            "-o",
            &path("rec.enc"),
        ],
    )
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    operator.kill();

    // The rebuild.
    let (rebuilt, rebuilt_kubeconfig, _) = rebuild(&cluster).await;
    let after_cluster = rebuilt.as_ref().unwrap_or(&cluster);
    assert!(after_cluster.key_pair_secrets(NAME).await.is_empty());
    let mut operator = start_with(
        after_cluster,
        "after",
        &rebuilt_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    after_cluster.apply_ok(&manifest).await;
    let after = wait_synced(after_cluster, 6, 3).await;

    assert_eq!(
        active_pairs(&after),
        active_pairs(&before),
        "{:#}",
        after["status"]
    );
    let history: BTreeSet<String> = after["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["publicKeyFingerprint"].as_str().unwrap().to_owned())
        .collect();
    let history_before: BTreeSet<String> = before["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["publicKeyFingerprint"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history, history_before);
    assert_eq!(
        generated(&operator).await,
        0,
        "a restore generates no key pair"
    );
    let log = operator.log_text();
    assert!(
        log.contains("key pairs restored from the key store"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"));

    // The recording made before the rebuild decrypts in the new cluster (the Secret is found
    // by its key pair id, the private key decrypted by KMS).
    let run = kekeeper_in(
        &after_cluster.kubeconfig,
        &["decrypt", "-i", &path("rec.enc"), "-o", &path("rec.out")],
    )
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(std::fs::read(path("rec.out")).unwrap(), recording);
}

/// While the store is down, a rotation waits: the active pair stays, Ready=False names the
/// store, nothing new becomes active; when it is back, the rotation completes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn while_the_store_is_down_no_new_pair_becomes_active() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/staging");
    let s3 = FaultProxy::start(&endpoint).await;
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let mut operator = start(&cluster, "operator", &kubeconfig, &url, &s3.endpoint());
    operator.wait_ready().await;
    cluster
        .apply_ok(&rkc_manifest(NAME, &key.alias.to_string(), &[ORG_A]))
        .await;
    let before = wait_synced(&cluster, 1, 1).await;

    s3.fail("", 503, "ServiceUnavailable", "the test took S3 down");
    rotate(&cluster, "while-down").await;
    let waiting = eventually("Ready=False KeyStoreUnavailable", WAIT, || async {
        let rkc = rkc(&cluster).await?;
        let ready = condition_of(&rkc, "Ready");
        (ready["status"] == "False" && ready["reason"] == "KeyStoreUnavailable").then_some(rkc)
    })
    .await;
    assert!(
        condition_of(&waiting, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains(&format!("key store {url}")),
        "{:#}",
        waiting["status"]
    );
    assert_eq!(condition(&waiting, "Reconciling").as_deref(), Some("True"));
    assert_eq!(
        condition(&waiting, "KeyStoreSynced").as_deref(),
        Some("False")
    );
    // Give the backoff time for another attempt: still the one pair, still active.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let secrets = cluster.key_pair_secrets(NAME).await;
    assert_eq!(
        count_states(&secrets),
        (1, 0),
        "nothing unstored became active"
    );
    assert_eq!(
        active_pairs(&rkc(&cluster).await.unwrap()),
        active_pairs(&before)
    );
    assert!(s3.seen("") >= 2, "the store was tried");
    let events = cluster.kubectl_ok(&["get", "events", "-o", "json"]).await;
    assert!(
        events.contains("KeyStoreUnavailable"),
        "a Warning event names the store"
    );

    s3.clear();
    let after = wait_synced(&cluster, 2, 1).await;
    assert_ne!(active_pairs(&after), active_pairs(&before));
    assert_eq!(after["status"]["rotateNowToken"], "while-down");
    drop(operator);
}

/// `kill -9` between the store write and the Secret create (the Secret creates fail, so the
/// operator is caught there): the restarted operator adopts the stored object — one active
/// pair per organisation, the sequence and fingerprint the store holds, the rotate-now token
/// honoured, and only the organisation whose pair never reached the store gets one generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_crash_after_the_store_write_adopts_the_stored_pair() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/crash");
    let (cluster, kubeconfig, user) = Cluster::with_operator_identity().await;
    let (kubeconfig, faults) = cluster.with_faults(&kubeconfig).await;
    let mut operator = start(&cluster, "first", &kubeconfig, &url, &endpoint);
    operator.wait_ready().await;
    cluster
        .apply_ok(&rkc_manifest(NAME, &key.alias.to_string(), &[ORG_A, ORG_B]))
        .await;
    let before = wait_synced(&cluster, 2, 2).await;

    faults.inject(ErrorFault {
        user: Some(user.clone()),
        verb: Some("create".into()),
        resource: Some("secrets".into()),
        code: 500,
        message: Some("injected by the test".into()),
        ..Default::default()
    });
    rotate(&cluster, "crash").await;
    let pairs = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter()
            .filter(|k| !k.contains(".retired.") && !k.contains(".pruned."))
            .collect()
    };
    // The first rotation's pair is stored, its Secret refused: the operator is stuck there.
    let stored = eventually("a new object in the store", WAIT, || async {
        let keys = pairs(objects(&bucket, "crash/key-pairs/").await);
        (keys.len() == 3).then_some(keys)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator.kill();
    assert_eq!(count_states(&cluster.key_pair_secrets(NAME).await), (2, 0));
    let new_key = stored
        .iter()
        .find(|k| k.ends_with("0000000002.json"))
        .unwrap();
    let client = aws_sdk_s3::Client::from_conf(s3_config(&endpoint).await);
    let body = client
        .get_object()
        .bucket(&bucket)
        .key(new_key)
        .send()
        .await
        .unwrap();
    let object: Value =
        serde_json::from_slice(&body.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(object["rotateNowToken"], "crash");

    faults.clear();
    let operator = start(&cluster, "second", &kubeconfig, &url, &endpoint);
    let after = wait_synced(&cluster, 4, 2).await;
    assert_eq!(
        after["status"]["rotateNowToken"],
        "crash",
        "{:#}\n{}\n{:#?}",
        after["status"],
        operator.log_text(),
        cluster
            .key_pair_secrets(NAME)
            .await
            .iter()
            .map(|s| s["metadata"]["annotations"].clone())
            .collect::<Vec<_>>()
    );
    let active = active_pairs(&after);
    assert!(active.is_disjoint(&active_pairs(&before)));
    assert!(
        active.iter().all(|(name, _)| name.ends_with("-0002")),
        "{active:?}"
    );
    let adopted = after["status"]["activeKeyPairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["organizationId"] == object["organizationId"])
        .unwrap();
    assert_eq!(
        adopted["publicKeyFingerprint"],
        object["publicKeyFingerprint"]
    );
    assert_eq!(
        generated(&operator).await,
        1,
        "the stored pair is adopted; only the other organisation's is made"
    );
    assert_eq!(
        pairs(objects(&bucket, "crash/key-pairs/").await).len(),
        4,
        "no sequence 3"
    );
}

/// A tampered object is not restored: it is reported (condition, event), its sequence stays
/// taken, and the organisation gets a new pair; the untouched one comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_tampered_object_is_not_restored() {
    let Synced {
        endpoint,
        key,
        bucket,
        url,
        cluster,
        kubeconfig,
        mut operator,
        status: before,
    } = synced("tamper", "first", &[ORG_A, ORG_B]).await;
    operator.kill();

    // Someone with write access to the bucket swaps ORG_A's public key for their own.
    let client = aws_sdk_s3::Client::from_conf(s3_config(&endpoint).await);
    let keys = objects(&bucket, "tamper/key-pairs/").await;
    let a_key = keys
        .iter()
        .find(|k| k.contains(ORG_A))
        .expect("ORG_A's object")
        .clone();
    let body = client
        .get_object()
        .bucket(&bucket)
        .key(&a_key)
        .send()
        .await
        .unwrap();
    let mut object: Value =
        serde_json::from_slice(&body.body.collect().await.unwrap().into_bytes()).unwrap();
    let other = keys.iter().find(|k| k.contains(ORG_B)).unwrap();
    let other_body = client
        .get_object()
        .bucket(&bucket)
        .key(other)
        .send()
        .await
        .unwrap();
    let other: Value =
        serde_json::from_slice(&other_body.body.collect().await.unwrap().into_bytes()).unwrap();
    object["publicKeyPem"] = other["publicKeyPem"].clone();
    client
        .put_object()
        .bucket(&bucket)
        .key(&a_key)
        .body(serde_json::to_vec(&object).unwrap().into())
        .send()
        .await
        .unwrap();

    // Both Secrets and the status are lost (a new cluster would look the same).
    cluster.kubectl_ok(&["delete", "rkc", NAME]).await;
    cluster
        .kubectl_ok(&[
            "delete",
            "secrets",
            "-l",
            &format!("kekeeper.io/config={NAME}"),
        ])
        .await;
    let operator = start(&cluster, "second", &kubeconfig, &url, &endpoint);
    let _operator = operator_ready(operator).await;
    cluster
        .apply_ok(&rkc_manifest(NAME, &key.alias.to_string(), &[ORG_A, ORG_B]))
        .await;
    let after = eventually(
        "ORG_B restored, ORG_A given a new pair, the mismatch reported",
        WAIT,
        || async {
            let rkc = rkc(&cluster).await?;
            let synced = condition_of(&rkc, "KeyStoreSynced");
            (condition(&rkc, "Ready").as_deref() == Some("True")
                && synced["reason"] == "KeyStoreMismatch"
                && rkc["status"]["activeKeyPairs"].as_array()?.len() == 2)
                .then_some(rkc)
        },
    )
    .await;
    let message = condition_of(&after, "KeyStoreSynced")["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains(&a_key) && message.contains("fingerprint"),
        "{message}"
    );
    let before_pairs = active_pairs(&before);
    let after_pairs = active_pairs(&after);
    let kept: Vec<_> = after_pairs.intersection(&before_pairs).collect();
    assert_eq!(kept.len(), 1, "ORG_B's pair restored: {after_pairs:?}");
    let new_a = after_pairs.difference(&before_pairs).next().unwrap();
    assert!(
        new_a.0.ends_with("-0002"),
        "the tampered sequence stays taken: {new_a:?}"
    );
    let events = cluster.kubectl_ok(&["get", "events", "-o", "json"]).await;
    assert!(events.contains("KeyStoreMismatch"));
}

async fn operator_ready(mut operator: Operator) -> Operator {
    operator.wait_ready().await;
    operator
}

/// A bad `--key-store` stops the operator at start with a message that names the flag.
#[tokio::test]
async fn a_bad_key_store_is_refused_at_start() {
    for bad in [
        "s3://",
        "https://bucket/x",
        "s3://Bad_Bucket",
        "s3://bucket/../x",
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
            .args(["run", "--key-store", bad])
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--key-store"), "{bad}: {stderr}");
        assert!(stderr.contains("s3://BUCKET/PREFIX"), "{bad}: {stderr}");
    }
}

/// What a restore costs (issue 19's closing number; `scripts/bench-restore.sh` prints it): a
/// config of 100 organisations, its pairs stored, restored on a rebuilt cluster. Measured:
/// the time from the apply to Ready with every pair stored, the operator's API writes, its S3
/// requests (through a counting proxy) and its KMS calls. Asserted: no key pair generated, the
/// same fingerprints; the time is printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn restoring_100_organisations() {
    const ORGS: usize = 100;
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/fleet");
    let orgs: Vec<String> = (0..ORGS)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let org_refs: Vec<&str> = orgs.iter().map(String::as_str).collect();
    let manifest = rkc_manifest(NAME, &key.alias.to_string(), &org_refs);
    let fast = [
        format!("--key-store={url}"),
        "--kms-keypair-rate=100".to_owned(),
        "--kms-max-in-flight=8".to_owned(),
        "--key-store-cluster-id=fleet".to_owned(),
    ];
    let start_fast = |cluster: &Cluster, log: &str, kubeconfig: &Path, s3: &str| {
        cluster.start_operator(
            log,
            kubeconfig,
            &endpoint,
            &fast,
            &[("AWS_ENDPOINT_URL_S3".to_owned(), s3.to_owned())],
        )
    };

    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let mut operator = start_fast(&cluster, "before", &kubeconfig, &endpoint);
    operator.wait_ready().await;
    cluster.apply_ok(&manifest).await;
    let before = wait_synced_within(&cluster, ORGS, ORGS, Duration::from_secs(300)).await;
    operator.kill();

    let (rebuilt, kubeconfig, user) = rebuild(&cluster).await;
    let after_cluster = rebuilt.as_ref().unwrap_or(&cluster);
    let s3 = FaultProxy::start(&endpoint).await;
    let mut operator = start_fast(after_cluster, "after", &kubeconfig, &s3.endpoint());
    operator.wait_ready().await;
    let log_start = after_cluster.request_log().len();
    let started = std::time::Instant::now();
    after_cluster.apply_ok(&manifest).await;
    let after = wait_synced_within(after_cluster, ORGS, ORGS, Duration::from_secs(300)).await;
    let elapsed = started.elapsed();
    assert_eq!(active_pairs(&after), active_pairs(&before));
    // Restored pairs were proven through KMS before they became active (one Decrypt each),
    // which counts as their custody check (docs/design.md, "Proof before publication").
    assert!(
        !after["status"]["lastKeyVerifyTime"].is_null(),
        "restored pairs are proven before they are active"
    );
    assert_eq!(
        condition(&after, "KeyPairIntegrity").as_deref(),
        Some("True")
    );

    // The request log (kube-sim's, or the real server's audit log) lags the responses.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests: Vec<_> = after_cluster.request_log()[log_start..]
        .iter()
        .filter(|r| r.user == user && r.namespace == after_cluster.ns())
        .cloned()
        .collect();
    let writes = |verb: &str, resource: &str| {
        requests
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    };
    let metrics = operator.get("/metrics").await;
    let kms: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("kekeeper_kms_calls_total{"))
        .collect();
    assert_eq!(generated(&operator).await, 0, "{kms:#?}");
    println!(
        "restore of {ORGS} organisations on {}: {:.1} s from apply to Ready with every pair \
         proven through KMS and stored; \
         API writes: {} Secret creates, {} Secret patches, {} status patches, {} ConfigMap writes, \
         {} events; S3 requests: {}; KMS: {:?}",
        if after_cluster.is_real() {
            "the real server"
        } else {
            "kube-sim"
        },
        elapsed.as_secs_f64(),
        writes("create", "secrets"),
        writes("patch", "secrets"),
        requests
            .iter()
            .filter(|r| r.resource == "recordingkeyconfigs"
                && r.subresource == "status"
                && r.verb != "get")
            .count(),
        requests
            .iter()
            .filter(|r| r.resource == "configmaps"
                && r.verb != "get"
                && r.verb != "list"
                && r.verb != "watch")
            .count(),
        requests
            .iter()
            .filter(|r| r.resource == "events" && (r.verb == "create" || r.verb == "patch"))
            .count(),
        s3.seen(""),
        kms,
    );
    drop(operator);
}

async fn wait_synced_within(
    cluster: &Cluster,
    secrets: usize,
    active: usize,
    within: Duration,
) -> Value {
    let stored = format!("{secrets}/{secrets} key pairs stored in s3://");
    eventually(&format!("{stored}, Ready"), within, || async {
        let rkc = rkc(cluster).await?;
        let synced = condition_of(&rkc, "KeyStoreSynced");
        (condition(&rkc, "Ready").as_deref() == Some("True")
            && synced["status"] == "True"
            && synced["message"].as_str()?.starts_with(&stored)
            && rkc["status"]["activeKeyPairs"].as_array()?.len() == active)
            .then_some(rkc)
    })
    .await
}

/// A lost bucket (every object deleted): the Secrets are still in the cluster, and the next
/// custody check writes every retained pair and its retirement marker again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_lost_bucket_is_written_again_by_the_custody_check() {
    let Synced {
        endpoint,
        bucket,
        cluster,
        operator,
        ..
    } = synced("lost", "operator", &[ORG_A]).await;
    rotate(&cluster, "one").await;
    wait_synced(&cluster, 2, 1).await;
    let before = objects(&bucket, "lost/key-pairs/").await;
    assert_eq!(
        before.len(),
        3,
        "two pairs and a retirement marker: {before:?}"
    );

    let client = aws_sdk_s3::Client::from_conf(s3_config(&endpoint).await);
    for key in &before {
        client
            .delete_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    assert!(objects(&bucket, "lost/key-pairs/").await.is_empty());
    cluster
        .kubectl_ok(&[
            "annotate",
            "rkc",
            NAME,
            "kekeeper.io/verify-now=after-the-loss",
        ])
        .await;
    eventually("every object written again", WAIT, || async {
        let rkc = rkc(&cluster).await?;
        let objects = objects(&bucket, "lost/key-pairs/").await;
        (rkc["status"]["verifyNowToken"] == "after-the-loss" && objects == before).then_some(())
    })
    .await;
    let rkc = rkc(&cluster).await.unwrap();
    assert_eq!(condition(&rkc, "KeyStoreSynced").as_deref(), Some("True"));
    drop(operator);
}

/// Two live clusters on one prefix: the second refuses the store loudly (KeyStoreClaimed, the
/// other cluster named, no key pair made); once the first is gone and its claim is stale, the
/// second takes the prefix over and restores the first's pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn two_live_clusters_never_share_a_prefix() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/shared");
    let manifest = rkc_manifest(NAME, &key.alias.to_string(), &[ORG_A]);
    let ttl = "--key-store-claim-ttl=6s";

    let (blue, blue_kubeconfig, _) = Cluster::with_operator_identity().await;
    let mut first = start_with(
        &blue,
        "blue",
        &blue_kubeconfig,
        &url,
        &endpoint,
        &["--key-store-cluster-id=blue", ttl],
    );
    first.wait_ready().await;
    blue.apply_ok(&manifest).await;
    let blue_status = wait_synced(&blue, 1, 1).await;

    // A second cluster (its own kube-sim beside the suite's server), the same manifest, the
    // same prefix by mistake.
    let (green, green_kubeconfig, _) = Cluster::with_operator_identity_on_sim().await;
    let mut second = start_with(
        &green,
        "green",
        &green_kubeconfig,
        &url,
        &endpoint,
        &["--key-store-cluster-id=green", ttl],
    );
    second.wait_ready().await;
    green.apply_ok(&manifest).await;
    let refused = eventually("green refuses the store", WAIT, || async {
        let rkc = rkc(&green).await?;
        (condition_of(&rkc, "KeyStoreSynced")["reason"] == "KeyStoreClaimed").then_some(rkc)
    })
    .await;
    let message = condition_of(&refused, "KeyStoreSynced")["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("another live cluster") && message.contains("blue"),
        "{message}"
    );
    assert_eq!(condition(&refused, "Ready").as_deref(), Some("False"));
    assert!(
        green.key_pair_secrets(NAME).await.is_empty(),
        "nothing made while refused"
    );
    assert!(
        second
            .log_text()
            .contains("another live cluster writes under this key store prefix")
    );

    // Blue is gone; after its claim goes stale green takes over. Where the two namespaces are
    // the same (both on kube-sim), green gets blue's pair back; where they differ (blue on the
    // shared real server, in a namespace of its own), green makes its own pair.
    first.kill();
    let after = wait_synced(&green, 1, 1).await;
    if blue.ns() == green.ns() {
        assert_eq!(active_pairs(&after), active_pairs(&blue_status));
        assert_eq!(generated(&second).await, 0);
    } else {
        assert_eq!(generated(&second).await, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Trust (issue 25, docs/custody.md "Who can write what"): key pairs the operator did not make
// are candidates until KMS proves them; a failed one is quarantined, never published.

/// The body of the store object `key`.
async fn object_json(bucket: &str, key: &str) -> Value {
    let client = aws_sdk_s3::Client::from_conf(s3_config(&kms_endpoint()).await);
    let body = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("GetObject");
    serde_json::from_slice(&body.body.collect().await.unwrap().into_bytes()).unwrap()
}

async fn put_object(bucket: &str, key: &str, body: &Value) {
    let client = aws_sdk_s3::Client::from_conf(s3_config(&kms_endpoint()).await);
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(serde_json::to_vec(body).unwrap().into())
        .send()
        .await
        .expect("PutObject");
}

/// An RSA public key of the attacker's own: (PEM, fingerprint).
fn attacker_public_key() -> (String, String) {
    use aws_lc_rs::encoding::AsDer;
    let private =
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = private.public_key().as_der().unwrap().as_ref().to_vec();
    (
        kekeeper::keypair::public_key_pem(&der),
        kekeeper::keypair::fingerprint(&der),
    )
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A line of a PEM's base64 body, to find the key in any JSON that quotes it.
fn pem_line(pem: &str) -> String {
    pem.lines().nth(2).unwrap().to_owned()
}

/// The highest sequence status recorded for `org`.
fn highest(rkc: &Value, org: &str) -> u64 {
    rkc["status"]["highestSequences"][org].as_u64().unwrap()
}

/// The active pair of `org` in status: (Secret name, fingerprint).
fn active_of(rkc: &Value, org: &str) -> (String, String) {
    let pair = rkc["status"]["activeKeyPairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["organizationId"] == org)
        .unwrap();
    (
        pair["secretName"].as_str().unwrap().to_owned(),
        pair["publicKeyFingerprint"].as_str().unwrap().to_owned(),
    )
}

/// What the tests check after a planted key pair and a rotate-now: the token is honoured by a
/// pair the operator made (the sequence after the planted one), the planted key is in neither
/// status nor the ConfigMap, and the quarantine is reported naming it.
async fn assert_quarantined(
    cluster: &Cluster,
    token: &str,
    planted_name: &str,
    planted_fingerprint: &str,
    planted_pem: &str,
) -> Value {
    let planted_sequence: u64 = planted_name.rsplit('-').next().unwrap().parse().unwrap();
    let made = format!("-{:04}", planted_sequence + 1);
    let rkc = eventually(
        &format!("rotate-now {token} honoured by a new pair, {planted_name} quarantined"),
        WAIT,
        || async {
            let rkc = rkc(cluster).await?;
            let integrity = condition_of(&rkc, "KeyPairIntegrity");
            (rkc["status"]["rotateNowToken"] == token
                && condition(&rkc, "Ready").as_deref() == Some("True")
                && active_of(&rkc, ORG_A).0.ends_with(&made)
                && integrity["reason"] == "KeyPairQuarantined"
                && integrity["message"].as_str()?.contains(planted_name))
            .then_some(rkc)
        },
    )
    .await;
    let text = rkc["status"].to_string();
    assert!(
        !text.contains(planted_fingerprint.trim_start_matches("SHA256:"))
            || rkc["status"]["keyPairProblems"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["reason"] == "KeyPairQuarantined"
                    || !p.to_string().contains(planted_fingerprint)),
        "the planted key is recorded only as quarantined: {text}"
    );
    for list in ["activeKeyPairs", "keyPairHistory"] {
        assert!(
            !rkc["status"][list].to_string().contains(planted_name),
            "{planted_name} in status.{list}"
        );
    }
    let config_map = cluster
        .object(
            "",
            "configmaps",
            &cluster.ns(),
            &format!("{NAME}-public-keys"),
        )
        .await
        .expect("the public-keys ConfigMap");
    assert!(
        !config_map.to_string().contains(&pem_line(planted_pem)),
        "the planted public key is published"
    );
    rkc
}

/// A bucket writer without KMS rights plants key pair objects for organisation A at the next
/// sequence, each with the rotate-now token the admin is about to set: a junk blob under the
/// attacker's public key, organisation B's genuine blob and key, and a pair KMS really made
/// under another key of the account (named as if under the alias's key). Each is quarantined
/// after its proof, never restored as a Secret, never published, never honours the token, and
/// nothing is written to the store for it; the rotation makes a new pair each time.
#[tokio::test]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn planted_store_objects_are_quarantined_never_published() {
    let Synced {
        endpoint,
        bucket,
        cluster,
        operator,
        mut status,
        ..
    } = synced("plant", "operator", &[ORG_A, ORG_B]).await;
    let other_key = create_key(&endpoint, common::REGION, false).await;
    let keys = objects(&bucket, "plant/key-pairs/").await;
    let a_key = keys.iter().find(|k| k.contains(ORG_A)).unwrap().clone();
    let b_key = keys.iter().find(|k| k.contains(ORG_B)).unwrap().clone();
    let genuine_a = object_json(&bucket, &a_key).await;
    let genuine_b = object_json(&bucket, &b_key).await;

    let kms = common::admin(&endpoint, common::REGION).await;
    let made_elsewhere = kms
        .generate_data_key_pair_without_plaintext()
        .key_id(&other_key.key_arn)
        .key_pair_spec(aws_sdk_kms::types::DataKeyPairSpec::Rsa2048)
        .encryption_context("genesys-cloud-organization-id", ORG_A)
        .send()
        .await
        .expect("GenerateDataKeyPairWithoutPlaintext under another key");
    let elsewhere_der = made_elsewhere.public_key().unwrap().as_ref().to_vec();

    let mut junk = vec![0u8; 400];
    aws_lc_rs::rand::fill(&mut junk).unwrap();
    let (attacker_pem, attacker_fingerprint) = attacker_public_key();
    let variants = [
        (
            "junk blob",
            attacker_pem.clone(),
            attacker_fingerprint.clone(),
            base64(&junk),
        ),
        (
            "organisation B's blob",
            genuine_b["publicKeyPem"].as_str().unwrap().to_owned(),
            genuine_b["publicKeyFingerprint"]
                .as_str()
                .unwrap()
                .to_owned(),
            genuine_b["privateKeyKms"].as_str().unwrap().to_owned(),
        ),
        (
            "another key's blob",
            kekeeper::keypair::public_key_pem(&elsewhere_der),
            kekeeper::keypair::fingerprint(&elsewhere_der),
            base64(
                made_elsewhere
                    .private_key_ciphertext_blob()
                    .unwrap()
                    .as_ref(),
            ),
        ),
    ];
    let generated_before = generated(&operator).await;
    for (round, (what, pem, fingerprint, blob)) in variants.iter().enumerate() {
        let sequence = highest(&status, ORG_A) + 1;
        let token = format!("t{round}");
        let planted_name = genuine_a["secretName"]
            .as_str()
            .unwrap()
            .replace("-0001", &format!("-{sequence:04}"));
        let mut planted = genuine_a.clone();
        planted["sequence"] = sequence.into();
        planted["secretName"] = planted_name.clone().into();
        planted["keyPairId"] = format!("planted-{round}").into();
        planted["publicKeyPem"] = pem.clone().into();
        planted["publicKeyFingerprint"] = fingerprint.clone().into();
        planted["privateKeyKms"] = blob.clone().into();
        planted["rotateNowToken"] = token.clone().into();
        let planted_key = a_key.replace("0000000001.json", &format!("{sequence:010}.json"));
        put_object(&bucket, &planted_key, &planted).await;
        rotate(&cluster, &token).await;
        status = assert_quarantined(&cluster, &token, &planted_name, fingerprint, pem).await;
        println!(
            "{what}: quarantined; {} active",
            active_of(&status, ORG_A).0
        );
        let secrets: Vec<String> = cluster
            .key_pair_secrets(NAME)
            .await
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            !secrets.contains(&planted_name),
            "{what}: the planted object was restored as a Secret"
        );
        let after = objects(&bucket, "plant/key-pairs/").await;
        let prefix = planted_key.trim_end_matches(".json");
        assert_eq!(
            after.iter().filter(|k| k.starts_with(prefix)).count(),
            1,
            "{what}: nothing written beside the planted object: {after:?}"
        );
        assert_eq!(
            object_json(&bucket, &planted_key).await,
            planted,
            "{what}: the planted object is left as it was"
        );
    }
    assert_eq!(
        generated(&operator).await - generated_before,
        3 * 2,
        "one new pair per organisation and rotate-now, none more"
    );
    let metrics = operator.get("/metrics").await;
    let quarantined = metrics
        .lines()
        .find(|l| l.starts_with("kekeeper_key_pairs_quarantined{") && l.contains(NAME))
        .expect("kekeeper_key_pairs_quarantined");
    assert!(quarantined.ends_with(" 3"), "{quarantined}");
    let events = cluster.kubectl_ok(&["get", "events", "-o", "json"]).await;
    assert!(events.contains("KeyPairQuarantined"));
}

/// Anyone who may create Secrets in the namespace (the built-in `edit` role; the chart's
/// admission policy refuses this on a real cluster, tests/chart) copies A's key pair Secret
/// under the next sequence with their own public key, a junk blob and the rotate-now token
/// about to be set: it is quarantined, never published nor recorded, never written to the
/// store, and the token is honoured by a pair the operator makes.
#[tokio::test]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_planted_secret_is_quarantined_never_published_nor_stored() {
    let Synced {
        bucket,
        cluster,
        operator,
        status,
        ..
    } = synced("secret", "operator", &[ORG_A]).await;
    let (genuine_name, _) = active_of(&status, ORG_A);
    let genuine = cluster
        .object("", "secrets", &cluster.ns(), &genuine_name)
        .await
        .unwrap();

    let (pem, fingerprint) = attacker_public_key();
    let planted_name = genuine_name.replace("-0001", "-0002");
    let mut junk = vec![0u8; 400];
    aws_lc_rs::rand::fill(&mut junk).unwrap();
    let mut planted = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": genuine["type"],
        "metadata": {
            "name": planted_name,
            "labels": genuine["metadata"]["labels"],
            "annotations": {"kekeeper.io/rotate-now-token": "t1"},
        },
        "data": genuine["data"],
    });
    let mut metadata: Value = serde_json::from_slice(&base64_decode(
        genuine["data"]["metadata.json"].as_str().unwrap(),
    ))
    .unwrap();
    metadata["keyPairId"] = "planted".into();
    if metadata.get("sequence").is_some() {
        metadata["sequence"] = 2.into();
    }
    planted["data"]["metadata.json"] = base64(&serde_json::to_vec(&metadata).unwrap()).into();
    planted["data"]["publicKey.pem"] = base64(pem.as_bytes()).into();
    planted["data"]["privateKey.kms"] = base64(&junk).into();
    let created = cluster
        .kubectl_in(&["create", "-f", "-"], Some(&planted.to_string()))
        .await;
    assert!(created.success, "{}", created.stderr);
    rotate(&cluster, "t1").await;
    assert_quarantined(&cluster, "t1", &planted_name, &fingerprint, &pem).await;
    let stored = objects(&bucket, "secret/key-pairs/").await;
    assert!(
        stored.iter().all(|k| !k.ends_with("0000000002.json")),
        "the planted Secret reached the store: {stored:?}"
    );
    assert_eq!(
        stored
            .iter()
            .filter(|k| !k.contains(".retired.") && !k.contains(".pruned."))
            .count(),
        2,
        "the genuine pair and the one the operator made: {stored:?}"
    );
    // The quarantine is remembered: later reconciles do not ask KMS about it again.
    let decrypts = async || fleet::calls(&fleet::kms_calls(&operator).await, "Decrypt");
    let before = decrypts().await;
    rotate(&cluster, "t2").await;
    eventually("t2 honoured", WAIT, || async {
        let rkc = rkc(&cluster).await?;
        (rkc["status"]["rotateNowToken"] == "t2").then_some(())
    })
    .await;
    let after = decrypts().await;
    assert_eq!(after - before, 1, "only the new pair's self-test decrypts");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// A recording encrypted with the key pair Secret `secret_name`: (its path, its plaintext).
async fn record_with(cluster: &Cluster, secret_name: &str) -> (String, Vec<u8>) {
    let secret = cluster
        .object("", "secrets", &cluster.ns(), secret_name)
        .await
        .unwrap();
    let path = |name: &str| cluster.path(name).to_str().unwrap().to_owned();
    let secret_file = path(&format!("{secret_name}.json"));
    std::fs::write(&secret_file, secret.to_string()).unwrap();
    let recording: Vec<u8> = secret_name.bytes().cycle().take(20_000).collect();
    std::fs::write(path(&format!("{secret_name}.rec")), &recording).unwrap();
    let encrypted = path(&format!("{secret_name}.rec.enc"));
    let run = kekeeper_in(
        &cluster.kubeconfig,
        &[
            "encrypt",
            "--key-pair-secret",
            &secret_file,
            "-i",
            &path(&format!("{secret_name}.rec")),
            "-o",
            &encrypted,
        ],
    )
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    (encrypted, recording)
}

/// KMS `ReEncrypt` of `pair`'s original blob onto `destination`, as a rewrap makes it (the
/// test's own call, through LocalStack).
async fn re_encrypt(
    kms: &aws_sdk_kms::Client,
    pair: &KeyPairSecret,
    ciphertext: &[u8],
    destination: &str,
) -> Vec<u8> {
    let context = &pair.encryption_context;
    let out = kms
        .re_encrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(ciphertext.to_vec()))
        .source_key_id(&pair.kms_key_arn)
        .source_encryption_context(&context.key, &context.organization_id)
        .destination_key_id(destination)
        .destination_encryption_context(&context.key, &context.organization_id)
        .send()
        .await
        .expect("ReEncrypt");
    out.ciphertext_blob()
        .expect("CiphertextBlob")
        .as_ref()
        .to_vec()
}

/// Issue 28 with the key store: pairs made under key A (two rotations, three organisations),
/// the alias moved to key B and a rotation there, then the test's own KMS `ReEncrypt` of every
/// pair under A onto B, written to the store as wrap objects through the operator's API; two
/// wraps are planted (ORG_C: junk, and its first pair's blob rewrapped as its second's). Key A
/// is disabled and the cluster rebuilt: every pair comes back, each pair under A with its wrap
/// proven through B (one Decrypt each, under B), the planted wraps dropped, named in an event
/// and in no Secret; recordings made under every pair decrypt with A disabled — those under A
/// through the restored wrap's blob (KMS Decrypt under B in the test; see below for `kekeeper
/// decrypt`), those under B with `kekeeper decrypt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_rebuilt_cluster_restores_wraps_and_decrypts_with_the_old_key_disabled() {
    let endpoint = kms_endpoint();
    let key_a = create_key(&endpoint, common::REGION, false).await;
    let kms = common::admin(&endpoint, common::REGION).await;
    let bucket = create_bucket(&endpoint).await;
    let url = format!("s3://{bucket}/rewrapped");
    // `rewrap: Never`: the wraps are the test's own (planted ones among them), not the
    // operator's; the restore proves them all the same.
    let manifest = format!(
        "{}  rewrap: Never\n",
        rkc_manifest(NAME, &key_a.alias.to_string(), &[ORG_A, ORG_B, ORG_C])
    );
    let (cluster, operator_kubeconfig, _) = Cluster::with_operator_identity().await;
    let id = ["--key-store-cluster-id=rewrapped"];
    let mut operator = start_with(
        &cluster,
        "before",
        &operator_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    cluster.apply_ok(&manifest).await;

    // Three generations: two under A, one under B. A recording under each of ORG_A's and
    // ORG_B's pairs.
    let mut recordings = Vec::new();
    let status = wait_synced(&cluster, 3, 3).await;
    for org in [ORG_A, ORG_B] {
        recordings.push(record_with(&cluster, &active_of(&status, org).0).await);
    }
    rotate(&cluster, "under-a").await;
    let status = wait_synced(&cluster, 6, 3).await;
    for org in [ORG_A, ORG_B] {
        recordings.push(record_with(&cluster, &active_of(&status, org).0).await);
    }
    // The alias moves to B while no operator runs (a running one may judge the pairs it makes
    // under B against its cached answer for the alias, A, until that expires, and rotate
    // again), and the next one is asked to rotate: its pairs are under B.
    operator.kill();
    let key_b = create_key(&endpoint, common::REGION, false).await;
    common::move_alias(&key_a, &key_b).await;
    let key_b_arn = key_b.key_arn.clone();
    let mut operator = start_with(
        &cluster,
        "under-b",
        &operator_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    rotate(&cluster, "under-b").await;
    let before = wait_synced(&cluster, 9, 3).await;
    assert!(
        before["status"]["activeKeyPairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["kmsKeyArn"] == key_b_arn.as_str()),
        "{:#}",
        before["status"]
    );
    for org in [ORG_A, ORG_B] {
        recordings.push(record_with(&cluster, &active_of(&before, org).0).await);
    }
    operator.kill();

    // The wraps, as a rewrap writes them: through KeyStore::put_wrap.
    let store = KeyStore::new(
        url.parse().unwrap(),
        std::sync::Arc::new(S3Objects::from_conf(s3_config(&endpoint).await, &bucket)),
    );
    let listing = store.list(&cluster.ns(), NAME).await.unwrap();
    let pairs: Vec<KeyPairSecret> = listing
        .entries
        .iter()
        .map(|e| e.pair.clone().unwrap())
        .collect();
    assert_eq!(pairs.len(), 9);
    assert_eq!(
        pairs.iter().filter(|p| p.kms_key_arn == key_b_arn).count(),
        3,
        "the third generation is under B"
    );
    let under_a: Vec<&KeyPairSecret> = pairs
        .iter()
        .filter(|p| p.kms_key_arn == key_a.key_arn)
        .collect();
    assert_eq!(under_a.len(), 6);
    let by = |org: &str, sequence: u64| {
        under_a
            .iter()
            .find(|p| p.organization_id == org && p.sequence == sequence)
            .copied()
            .unwrap()
    };
    let mut wrapped = BTreeSet::new();
    let mut planted = BTreeSet::new();
    for pair in &under_a {
        let ciphertext = match (pair.organization_id.as_str(), pair.sequence) {
            (ORG_C, 1) => vec![0x5a; 300],
            (ORG_C, 2) => {
                let first = by(ORG_C, 1);
                re_encrypt(&kms, first, &first.private_key_ciphertext, &key_b_arn).await
            }
            _ => re_encrypt(&kms, pair, &pair.private_key_ciphertext, &key_b_arn).await,
        };
        let wrap = Wrap {
            kms_key_arn: key_b_arn.clone(),
            ciphertext,
            created_at: jiff::Timestamp::now(),
        };
        assert_eq!(store.put_wrap(pair, &wrap).await.unwrap(), WrapPut::Created);
        if pair.organization_id == ORG_C {
            planted.insert(pair.secret_name.clone());
        } else {
            wrapped.insert(pair.secret_name.clone());
        }
    }
    kms.disable_key()
        .key_id(&key_a.key_arn)
        .send()
        .await
        .expect("DisableKey");

    // The rebuild.
    let (rebuilt, rebuilt_kubeconfig, _) = rebuild(&cluster).await;
    let after_cluster = rebuilt.as_ref().unwrap_or(&cluster);
    let mut operator = start_with(
        after_cluster,
        "after",
        &rebuilt_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    after_cluster.apply_ok(&manifest).await;
    let after = wait_synced(after_cluster, 9, 3).await;
    assert_eq!(active_pairs(&after), active_pairs(&before));
    assert_eq!(generated(&operator).await, 0, "a restore generates nothing");

    // Each pair under A carries its proven wrap, a planted one none.
    let secrets = after_cluster.key_pair_secrets(NAME).await;
    assert_eq!(secrets.len(), 9);
    for secret in &secrets {
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(secret.clone()).unwrap();
        let pair = KeyPairSecret::from_secret(&secret).unwrap();
        let keys: Vec<&str> = pair.wraps.iter().map(|w| w.kms_key_arn.as_str()).collect();
        if wrapped.contains(&pair.secret_name) {
            assert_eq!(keys, vec![key_b_arn.as_str()], "{}", pair.secret_name);
        } else {
            assert!(keys.is_empty(), "{}: {keys:?}", pair.secret_name);
        }
    }
    let log = operator.log_text();
    assert_eq!(
        log.matches("wrap of a candidate key pair proven through KMS")
            .count(),
        4,
        "{log}"
    );
    assert_eq!(log.matches("wrap dropped").count(), 2, "{log}");
    assert!(!log.contains("PRIVATE KEY"));
    let events = after_cluster
        .kubectl_ok(&["get", "events", "-o", "json"])
        .await;
    assert!(events.contains("KeyStoreMismatch"), "{events}");
    for name in &planted {
        let sequence = name.rsplit_once('-').unwrap().1.parse::<u64>().unwrap();
        let key = format!("{sequence:010}.wrap-");
        assert!(
            events.contains(&key) && events.contains("failed its proof"),
            "{name}: {events}"
        );
    }
    let calls = fleet::kms_calls(&operator).await;
    assert_eq!(
        fleet::calls(&calls, "Decrypt"),
        6 + 3,
        "a Decrypt under B for each wrap, one custody Decrypt per active pair: {calls:?}"
    );

    // Every recording decrypts with A disabled, with `kekeeper decrypt`: those under B through
    // their original blob, those under A through the restored wrap status now records.
    for entry in after["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .chain(after["status"]["activeKeyPairs"].as_array().unwrap())
    {
        let secret_name = entry["secretName"].as_str().unwrap();
        let expected = wrapped.contains(secret_name).then_some(key_b_arn.as_str());
        assert_eq!(
            entry["rewrappedKmsKeyArn"].as_str(),
            expected,
            "{secret_name}: {entry}"
        );
    }
    for (encrypted, recording) in &recordings {
        let out = format!("{encrypted}.out");
        let run = kekeeper_in(
            &after_cluster.kubeconfig,
            &["decrypt", "-i", encrypted, "-o", &out],
        )
        .await;
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{encrypted}: {stderr}");
        assert!(
            stderr.contains(&format!("private key blob under {key_b_arn}")),
            "{stderr}"
        );
        assert_eq!(&std::fs::read(&out).unwrap(), recording);
    }

    // What status says of the old key: ORG_A's and ORG_B's pairs under A have their proven
    // wrap under B; ORG_C's two pairs (planted wraps, dropped) still depend on A, which is
    // disabled: HistoricalKeysAtRisk names A, and kmsKeys counts 2 under A, 7 under B.
    let kms_keys = &after["status"]["kmsKeys"];
    let count = |arn: &str| {
        kms_keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kmsKeyArn"] == arn)
            .map(|k| k["keyPairs"].as_u64().unwrap())
    };
    assert_eq!(count(&key_a.key_arn), Some(2), "{kms_keys}");
    assert_eq!(count(&key_b_arn), Some(7), "{kms_keys}");
    let at_risk = condition_of(&after, "HistoricalKeysAtRisk");
    assert_eq!(at_risk["status"], "True", "{at_risk}");
    assert!(
        at_risk["message"]
            .as_str()
            .unwrap()
            .contains(&key_a.key_arn),
        "{at_risk}"
    );
}

/// Issue 28, the operator's own rewrap with the key store: two organisations, a rotation under
/// key A, the alias moved to key B while no operator runs. The next operator rewraps every pair
/// under A onto B (one ReEncrypt each) and writes each wrap to the store as a wrap object
/// before the Secret. Key A is disabled and the cluster rebuilt: every pair comes back with its
/// wrap, status records it (`rewrappedKmsKeyArn`, `kmsKeys` all under B), nothing is
/// generated or re-encrypted again, `HistoricalKeysAtRisk` is False and every recording made
/// before decrypts with `kekeeper decrypt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn the_operators_rewrap_is_stored_and_a_rebuild_brings_it_back() {
    let endpoint = kms_endpoint();
    let key_a = create_key(&endpoint, common::REGION, false).await;
    let kms = common::admin(&endpoint, common::REGION).await;
    let bucket = create_bucket(&endpoint).await;
    let prefix = "operator-rewrap";
    let url = format!("s3://{bucket}/{prefix}");
    let manifest = rkc_manifest(NAME, &key_a.alias.to_string(), &[ORG_A, ORG_B]);
    let (cluster, operator_kubeconfig, _) = Cluster::with_operator_identity().await;
    let id = ["--key-store-cluster-id=operator-rewrap"];
    let mut operator = start_with(
        &cluster,
        "before",
        &operator_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    cluster.apply_ok(&manifest).await;
    let mut recordings = Vec::new();
    let status = wait_synced(&cluster, 2, 2).await;
    for org in [ORG_A, ORG_B] {
        recordings.push(record_with(&cluster, &active_of(&status, org).0).await);
    }
    rotate(&cluster, "under-a").await;
    let status = wait_synced(&cluster, 4, 2).await;
    for org in [ORG_A, ORG_B] {
        recordings.push(record_with(&cluster, &active_of(&status, org).0).await);
    }
    operator.kill();

    let key_b = create_key(&endpoint, common::REGION, false).await;
    common::move_alias(&key_a, &key_b).await;
    let (key_b_arn, key_b_id) = (key_b.key_arn.clone(), key_b.key_id.clone());
    // The key check at a short interval sees the alias's new key.
    let mut operator = start_with(
        &cluster,
        "rewrap",
        &operator_kubeconfig,
        &url,
        &endpoint,
        &[id[0], "--kms-key-check-interval=1s"],
    );
    operator.wait_ready().await;
    // Rewrapped, every retained pair's newest proven blob under B, the store in sync.
    let only_b = |rkc: &Value| {
        let keys = rkc["status"]["kmsKeys"].as_array()?;
        (keys.len() == 1 && keys[0]["kmsKeyArn"] == key_b_arn.as_str())
            .then(|| keys[0]["keyPairs"].as_u64())
            .flatten()
    };
    let (before, pairs) = eventually("the rewrap onto B, stored", WAIT, || async {
        let rkc = rkc(&cluster).await?;
        let pairs = only_b(&rkc)?;
        let synced = condition_of(&rkc, "KeyStoreSynced");
        (condition(&rkc, "Rewrapped").as_deref() == Some("True")
            && synced["status"] == "True"
            && synced["message"]
                .as_str()?
                .starts_with(&format!("{pairs}/{pairs} key pairs stored")))
        .then_some((rkc, pairs))
    })
    .await;
    let entries: Vec<Value> = before["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .chain(before["status"]["activeKeyPairs"].as_array().unwrap())
        .cloned()
        .collect();
    let rewrapped: BTreeSet<String> = entries
        .iter()
        .filter(|e| e["kmsKeyArn"] == key_a.key_arn.as_str())
        .map(|e| {
            assert_eq!(e["rewrappedKmsKeyArn"], key_b_arn.as_str(), "{e}");
            e["secretName"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        rewrapped.len(),
        4,
        "the four pairs made under A: {entries:#?}"
    );
    let calls = fleet::kms_calls(&operator).await;
    assert_eq!(fleet::calls(&calls, "ReEncrypt"), 4, "{calls:?}");
    // One wrap object per rewrapped pair, beside its pair's object.
    let wraps: Vec<String> = objects(&bucket, prefix)
        .await
        .into_iter()
        .filter(|k| k.contains(".wrap-"))
        .collect();
    assert_eq!(wraps.len(), 4, "{wraps:?}");
    assert!(
        wraps
            .iter()
            .all(|k| k.ends_with(&format!(".wrap-{key_b_id}.json"))),
        "{wraps:?}"
    );
    operator.kill();

    // Key A goes; the cluster is rebuilt from the store.
    kms.disable_key()
        .key_id(&key_a.key_arn)
        .send()
        .await
        .expect("DisableKey");
    let (rebuilt, rebuilt_kubeconfig, _) = rebuild(&cluster).await;
    let after_cluster = rebuilt.as_ref().unwrap_or(&cluster);
    let mut operator = start_with(
        after_cluster,
        "after",
        &rebuilt_kubeconfig,
        &url,
        &endpoint,
        &id,
    );
    operator.wait_ready().await;
    after_cluster.apply_ok(&manifest).await;
    let after = wait_synced(after_cluster, pairs as usize, 2).await;
    let after = match only_b(&after) {
        Some(n) if n == pairs => after,
        _ => {
            eventually("every pair restored with its wrap", WAIT, || async {
                let rkc = rkc(after_cluster).await?;
                (only_b(&rkc) == Some(pairs)).then_some(rkc)
            })
            .await
        }
    };
    assert_eq!(active_pairs(&after), active_pairs(&before));
    for entry in after["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .chain(after["status"]["activeKeyPairs"].as_array().unwrap())
    {
        let name = entry["secretName"].as_str().unwrap();
        let expected = rewrapped.contains(name).then_some(key_b_arn.as_str());
        assert_eq!(entry["rewrappedKmsKeyArn"].as_str(), expected, "{entry}");
    }
    let at_risk = condition_of(&after, "HistoricalKeysAtRisk");
    assert_eq!(at_risk["status"], "False", "{at_risk}");
    let calls = fleet::kms_calls(&operator).await;
    assert_eq!(generated(&operator).await, 0, "a restore generates nothing");
    assert_eq!(fleet::calls(&calls, "ReEncrypt"), 0, "{calls:?}");
    for (encrypted, recording) in &recordings {
        let out = format!("{encrypted}.out");
        let run = kekeeper_in(
            &after_cluster.kubeconfig,
            &["decrypt", "-i", encrypted, "-o", &out],
        )
        .await;
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{encrypted}: {stderr}");
        assert!(
            stderr.contains(&format!("private key blob under {key_b_arn}")),
            "{stderr}"
        );
        assert_eq!(&std::fs::read(&out).unwrap(), recording);
    }
    assert!(!operator.log_text().contains("PRIVATE KEY"));
}

/// Issue 28: a key store configured after the rewrap. Two pairs made under key A and
/// rewrapped onto B by an operator without a store; the next operator, with one, writes both
/// pairs and both proven wraps there (the store's sync), and the store then restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack (KMS and S3): scripts/test.sh starts it and runs ignored tests"]
async fn a_store_configured_after_the_rewrap_gets_the_wraps() {
    let endpoint = kms_endpoint();
    let key_a = create_key(&endpoint, common::REGION, false).await;
    let bucket = create_bucket(&endpoint).await;
    let prefix = "late-store";
    let url = format!("s3://{bucket}/{prefix}");
    let manifest = format!(
        "{}  rotation:\n    period: Monthly\n    onKmsKeyChange: Ignore\n",
        rkc_manifest(NAME, &key_a.alias.to_string(), &[ORG_A])
            .replace("  rotation:\n    period: Monthly\n", "")
    );
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let without_store = |log: &str| {
        cluster.start_operator(
            log,
            &kubeconfig,
            &kms_endpoint(),
            &["--kms-key-check-interval=1s".to_owned()],
            &[],
        )
    };
    let mut operator = without_store("a");
    operator.wait_ready().await;
    cluster.apply_ok(&manifest).await;
    // The first pair before the rotate-now token: a token set earlier is honoured by it.
    eventually("the first pair, Ready", WAIT, || async {
        let rkc = rkc(&cluster).await?;
        (condition(&rkc, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await;
    rotate(&cluster, "second").await;
    eventually("two pairs under A", WAIT, || async {
        (cluster.key_pair_secrets(NAME).await.len() == 2).then_some(())
    })
    .await;
    let key_b = create_key(&endpoint, common::REGION, false).await;
    common::move_alias(&key_a, &key_b).await;
    let (key_b_arn, key_b_id) = (key_b.key_arn.clone(), key_b.key_id.clone());
    let rewrapped = eventually("both pairs rewrapped onto B", WAIT, || async {
        let rkc = rkc(&cluster).await?;
        let keys = rkc["status"]["kmsKeys"].as_array()?;
        (condition(&rkc, "Rewrapped").as_deref() == Some("True")
            && keys.len() == 1
            && keys[0]["kmsKeyArn"] == key_b_arn.as_str()
            && keys[0]["keyPairs"] == 2)
            .then_some(rkc)
    })
    .await;
    operator.kill();

    let mut operator = start(&cluster, "store", &kubeconfig, &url, &endpoint);
    operator.wait_ready().await;
    let synced = wait_synced(&cluster, 2, 1).await;
    assert_eq!(active_pairs(&synced), active_pairs(&rewrapped));
    let wraps: Vec<String> = eventually("both wraps in the store", WAIT, || async {
        let wraps: Vec<String> = objects(&bucket, prefix)
            .await
            .into_iter()
            .filter(|k| k.contains(".wrap-"))
            .collect();
        (wraps.len() == 2).then_some(wraps)
    })
    .await;
    assert!(
        wraps
            .iter()
            .all(|k| k.ends_with(&format!(".wrap-{key_b_id}.json"))),
        "{wraps:?}"
    );
    let store = KeyStore::new(
        url.parse().unwrap(),
        std::sync::Arc::new(S3Objects::from_conf(s3_config(&endpoint).await, &bucket)),
    );
    let listing = store.list(&cluster.ns(), NAME).await.unwrap();
    for entry in &listing.entries {
        let pair = entry.pair.as_ref().unwrap();
        let keys: Vec<&str> = pair.wraps.iter().map(|w| w.kms_key_arn.as_str()).collect();
        assert_eq!(keys, vec![key_b_arn.as_str()], "{}", pair.secret_name);
    }
    let calls = fleet::kms_calls(&operator).await;
    assert_eq!(fleet::calls(&calls, "ReEncrypt"), 0, "{calls:?}");
}
