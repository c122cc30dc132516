//! End to end: the real `kekeeper run` against the suite's API server (the real control plane, or kube-sim) and the KMS emulator,
//! driven with kubectl as a user would (scripts/demo.sh is the model).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::PrivateDecryptingKey;
use base64::Engine;
use common::cluster::{Cluster, condition, count_states, eventually, rkc_manifest, settle};
use common::{create_key, kms_endpoint};
use serde_json::Value;

const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "9b2e6c1a-7d4f-4e8a-a1c3-5f0d2b8e9c47";
const NAME: &str = "recordings";
const WAIT: Duration = Duration::from_secs(40);

fn b64(data: &Value, key: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(data[key].as_str().unwrap_or_else(|| panic!("data.{key}")))
        .expect("base64")
}

/// Waits for `total` key pair Secrets of which exactly 2 are active, and a status history of
/// `total` entries.
async fn wait_key_pairs(cluster: &Cluster, total: usize) -> Value {
    eventually(
        &format!("{total} key pair Secrets (2 active) and history {total}"),
        WAIT,
        || async {
            let secrets = cluster.key_pair_secrets(NAME).await;
            let (active, retired) = count_states(&secrets);
            let rkc = cluster
                .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), NAME)
                .await?;
            let history = rkc["status"]["keyPairHistory"].as_array()?.len();
            let actives = rkc["status"]["activeKeyPairs"].as_array()?.len();
            (secrets.len() == total
                && active == 2
                && retired == total - 2
                && history == total
                && actives == 2)
                .then_some(rkc)
        },
    )
    .await
}

async fn decrypt_private_key(endpoint: &str, secret: &Value) -> Vec<u8> {
    let data = &secret["data"];
    let metadata: Value = serde_json::from_slice(&b64(data, "metadata.json")).expect("metadata");
    let context = metadata["encryptionContext"]
        .as_object()
        .expect("encryptionContext")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let kms = common::admin(endpoint, common::REGION).await;
    let out = kms
        .decrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(b64(
            data,
            "privateKey.kms",
        )))
        .set_encryption_context(Some(context))
        .send()
        .await
        .expect("KMS Decrypt of privateKey.kms with the metadata's encryption context");
    out.plaintext().expect("plaintext").as_ref().to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn operator_end_to_end() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let cluster = Cluster::start(false).await;
    // The operator gets its own identity so the request log tells it apart from kubectl.
    let (operator_kubeconfig, operator_user) = cluster
        .service_account_kubeconfig("kekeeper-system", "kekeeper")
        .await;

    // 1. CRD, operator, a RecordingKeyConfig with two organisations; Ready.
    cluster.install_crd().await;
    let mut operator =
        cluster.start_operator("operator", &operator_kubeconfig, &endpoint, &[], &[]);
    operator.wait_ready().await;
    cluster
        .apply_ok(&rkc_manifest(NAME, &alias, &[ORG_A, ORG_B]))
        .await;
    cluster.wait_ready(NAME).await;

    // 2. Status: one active pair per organisation, history 2, conditions True; the table.
    let rkc = wait_key_pairs(&cluster, 2).await;
    let rkc_kubectl = cluster.get_json(&["get", "rkc", NAME]).await;
    assert_eq!(rkc_kubectl["status"], rkc["status"]);
    let status = &rkc["status"];
    let active = status["activeKeyPairs"].as_array().unwrap();
    let orgs: BTreeSet<&str> = active
        .iter()
        .map(|p| p["organizationId"].as_str().unwrap())
        .collect();
    assert_eq!(orgs, BTreeSet::from([ORG_A, ORG_B]), "{status:#}");
    for pair in active {
        assert!(
            pair["secretName"].as_str().is_some_and(|s| !s.is_empty()),
            "{pair}"
        );
    }
    assert_eq!(status["keyPairHistory"].as_array().unwrap().len(), 2);
    for type_ in ["Ready", "KmsAvailable", "ConfigValid"] {
        assert_eq!(
            condition(&rkc, type_).as_deref(),
            Some("True"),
            "{type_}: {status:#}"
        );
    }
    let table = cluster.kubectl_ok(&["get", "rkc"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for column in ["NAME", "ALIAS", "PERIOD", "ORGS", "READY", "NEXT", "AGE"] {
        assert!(header.contains(&column), "{column} missing:\n{table}");
    }
    let row: Vec<&str> = lines
        .find(|l| l.starts_with(NAME))
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], [NAME, &alias, "Monthly", "2", "True"], "{table}");

    // 3. No plaintext private key in the Secrets; the blob is the real key, KMS-encrypted.
    let secrets = cluster
        .get_json(&[
            "get",
            "secrets",
            "-l",
            &format!("kekeeper.io/config={NAME}"),
        ])
        .await;
    let secrets = secrets["items"].as_array().unwrap().clone();
    assert_eq!(secrets.len(), 2);
    for secret in &secrets {
        let name = secret["metadata"]["name"].as_str().unwrap();
        assert_eq!(secret["type"], "kekeeper.io/key-pair", "{name}");
        let blob = b64(&secret["data"], "privateKey.kms");
        assert!(
            PrivateDecryptingKey::from_pkcs8(&blob).is_err(),
            "{name}: privateKey.kms parses as a plaintext PKCS#8 key"
        );
        for (key, value) in secret["data"].as_object().unwrap() {
            let decoded = b64(&secret["data"], key);
            assert!(
                !String::from_utf8_lossy(&decoded).contains("PRIVATE KEY"),
                "{name}: data.{key} holds a PEM private key ({value})"
            );
        }
        for (key, value) in secret["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert!(
                !value.to_string().contains("PRIVATE KEY"),
                "{name}: annotation {key}"
            );
        }
        let pkcs8 = decrypt_private_key(&endpoint, secret).await;
        let private = PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .unwrap_or_else(|e| panic!("{name}: KMS plaintext is not PKCS#8: {e:?}"));
        assert_eq!(private.key_size_bits(), 2048, "{name}");
        let public_der = private
            .public_key()
            .as_der()
            .expect("SPKI")
            .as_ref()
            .to_vec();
        let pem = String::from_utf8(b64(&secret["data"], "publicKey.pem")).expect("PEM");
        assert_eq!(
            public_der,
            pem_der(&pem),
            "{name}: publicKey.pem is not the public half of the KMS-encrypted private key"
        );
    }
    let config_map = cluster
        .get_json(&["get", "configmap", &format!("{NAME}-public-keys")])
        .await;
    let published = serde_json::to_string(&config_map["data"]).unwrap();
    for secret in &secrets {
        let pem = String::from_utf8(b64(&secret["data"], "publicKey.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            published.contains(&body[..64]),
            "public key of {} not in the ConfigMap: {published}",
            secret["metadata"]["name"]
        );
    }

    // 4. Invalid manifests are rejected at apply time, naming the field; nothing is created.
    let valid = rkc_manifest("invalid", &alias, &[ORG_A]);
    let key_arn = key.key_arn.clone();
    let cases = [
        (valid.replace(&alias, &key_arn), "spec.kmsKeyAliasArn"),
        (
            valid.replace("keyPairSpec:", "homeRegion: eu-west-1\n  keyPairSpec:"),
            "homeRegion",
        ),
        (
            valid.replace("period: Monthly", "period: Fortnightly"),
            "spec.rotation.period",
        ),
    ];
    for (manifest, field) in &cases {
        let out = cluster.apply(manifest).await;
        assert!(!out.success, "accepted:\n{manifest}\n{}", out.stdout);
        assert!(
            out.stderr.contains(field),
            "rejection does not name {field}:\n{}",
            out.stderr
        );
    }
    assert!(
        cluster
            .object(
                "kekeeper.io",
                "recordingkeyconfigs",
                &cluster.ns(),
                "invalid"
            )
            .await
            .is_none()
    );
    // In the test's namespace: on the shared real server other tests' resources (and those of
    // namespaces still being deleted) are listed cluster-wide.
    assert_eq!(
        cluster
            .objects("kekeeper.io", "recordingkeyconfigs", Some(&cluster.ns()))
            .await
            .len(),
        1
    );

    // 5. Change key now through the annotation: one new pair per organisation.
    cluster
        .kubectl_ok(&[
            "annotate",
            &format!("rkc/{NAME}"),
            "kekeeper.io/rotate-now=token-1",
        ])
        .await;
    let rkc = wait_key_pairs(&cluster, 4).await;
    let history = rkc["status"]["keyPairHistory"].as_array().unwrap();
    for entry in &history[..2] {
        assert_eq!(entry["reason"], "RotateNowRequested", "{history:#?}");
    }
    let newest: BTreeSet<&str> = history[..2]
        .iter()
        .map(|e| e["organizationId"].as_str().unwrap())
        .collect();
    assert_eq!(newest, BTreeSet::from([ORG_A, ORG_B]));

    // 6. Crash (SIGKILL) and restart: nothing duplicated, then a quiet steady state.
    settle(&cluster, &operator_user, Duration::from_secs(2), WAIT).await;
    operator.kill();
    cluster.clear_request_log();
    let mut operator = cluster.start_operator(
        "operator-restarted",
        &operator_kubeconfig,
        &endpoint,
        &[],
        &[],
    );
    operator.wait_ready().await;
    settle(&cluster, &operator_user, Duration::from_secs(2), WAIT).await;
    let secrets = cluster.key_pair_secrets(NAME).await;
    assert_eq!(count_states(&secrets), (2, 2), "after the restart");
    let log = cluster.request_log();
    let reads = log
        .iter()
        .filter(|r| r.user == operator_user && (r.verb == "list" || r.verb == "watch"))
        .count();
    assert!(reads > 0, "the restarted operator made no list/watch");
    let creates: Vec<_> = log
        .iter()
        .filter(|r| r.user == operator_user && r.verb == "create" && r.resource == "secrets")
        .collect();
    assert!(creates.is_empty(), "restart created Secrets: {creates:#?}");
    cluster.clear_request_log();
    // A reconcile with nothing to do (woken by an annotation the operator does not read),
    // waited for until done, writes nothing.
    let done = common::fleet::metric(&operator, "kekeeper_reconciles_total").await as u64;
    cluster
        .kubectl_ok(&["annotate", &format!("rkc/{NAME}"), "example.com/touched=1"])
        .await;
    common::fleet::wait_reconciles(&operator, done + 1).await;
    let writes: Vec<_> = cluster
        .request_log()
        .into_iter()
        .filter(|r| r.user == operator_user && r.is_write())
        .collect();
    assert!(writes.is_empty(), "steady state writes: {writes:#?}");

    // 7. `kekeeper rotate` (the CLI, admin kubeconfig): another rotation.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
        .args(["rotate", NAME, "-n", &cluster.ns()])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .expect("kekeeper rotate");
    assert!(
        out.status.success(),
        "kekeeper rotate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rkc = wait_key_pairs(&cluster, 6).await;
    assert_eq!(
        rkc["status"]["keyPairHistory"][0]["reason"],
        "RotateNowRequested"
    );

    // 8. /metrics (Prometheus text): reconciles, KMS calls by operation and outcome, key-pair
    // age and next rotation per resource; /healthz answers.
    let metrics = operator.get("/metrics").await;
    for family in [
        "kekeeper_reconciles_total",
        r#"kekeeper_kms_calls_total{operation="GenerateDataKeyPairWithoutPlaintext",outcome="ok"}"#,
        r#"kekeeper_kms_calls_total{operation="Decrypt",outcome="ok"}"#,
        "kekeeper_active_key_pair_created_timestamp_seconds{",
        "kekeeper_next_rotation_timestamp_seconds{",
    ] {
        assert!(
            metrics.contains(family),
            "/metrics lacks {family}:\n{metrics}"
        );
    }
    assert_eq!(operator.get("/healthz").await, "ok");
    drop(operator);
}
