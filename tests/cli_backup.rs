//! `kekeeper backup` and `kekeeper restore` against kube-sim (and the real control plane, see
//! scripts/test.sh): key pair Secrets made as the controller makes them (with real RSA public
//! keys), backed up, deleted and restored with the same fingerprints and states; a restore
//! twice is a no-op, a pair's wraps travel with it; a tampered file is refused whole; an older active pair is restored
//! retired where a newer one exists. No KMS: neither command calls it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use common::cli::Run;
use common::cluster::{Cluster, rkc_manifest};
use k8s_openapi::api::core::v1::Secret;
use kekeeper::keypair::{KeyPairSecret, Wrap};
use kekeeper::kms::{EncryptionContext, GeneratedKeyPair, KeyPairSpec};
use serde_json::{Value, json};

const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "9b2e6c1a-7d4f-4e8a-a1c3-5f0d2b8e9c47";
const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
const KEY_B: &str = "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";

/// `kekeeper ARGS` with the cluster's kubeconfig and nothing of the caller's environment.
async fn kekeeper(cluster: &Cluster, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .unwrap_or_else(|_| panic!("kekeeper {args:?} timed out"))
        .expect("kekeeper");
    Run::of(args, &output)
}

/// A key pair as the controller makes it: a real RSA-2048 public key, a made-up KMS blob.
fn key_pair(namespace: &str, config: &str, org: &str, sequence: u64) -> KeyPairSecret {
    let public_key_der =
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap()
            .public_key()
            .as_der()
            .unwrap()
            .as_ref()
            .to_vec();
    KeyPairSecret::new_active(
        config,
        namespace,
        sequence,
        GeneratedKeyPair {
            kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/k1".into(),
            spec: KeyPairSpec::Rsa2048,
            public_key_der,
            private_key_ciphertext: vec![sequence as u8; 32],
        },
        ALIAS,
        EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: org.into(),
        },
        jiff::Timestamp::from_second(1_767_225_600 + sequence as i64 * 86_400).unwrap(),
        "NoActiveKeyPair",
    )
}

fn retired(mut pair: KeyPairSecret, at: &str) -> KeyPairSecret {
    pair.retire(at.parse().unwrap());
    pair
}

async fn create(cluster: &Cluster, pair: &KeyPairSecret) {
    create_for(cluster, pair, None).await;
}

/// The Secret of `pair` as the controller stores it, made for the rotate-now token `token`.
async fn create_for(cluster: &Cluster, pair: &KeyPairSecret, token: Option<&str>) {
    let secret = serde_json::to_string(&kekeeper::backup::secret_of(pair, token).unwrap()).unwrap();
    let output = cluster
        .kubectl_in(&["create", "-f", "-"], Some(&secret))
        .await;
    assert!(
        output.success,
        "kubectl create {}: {}",
        pair.secret_name, output.stderr
    );
}

/// The key pair Secrets of `config` in `namespace` by name, as the API stores them.
async fn secrets(cluster: &Cluster, namespace: &str, config: &str) -> Vec<Value> {
    let mut found: Vec<Value> = cluster
        .objects("", "secrets", Some(namespace))
        .await
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["kekeeper.io/config"] == config)
        .collect();
    found.sort_by_key(|s| {
        s["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    found
}

/// What must come back byte for byte: type, data, labels, annotations.
fn content(secret: &Value) -> Value {
    json!({
        "name": secret["metadata"]["name"],
        "type": secret["type"],
        "data": secret["data"],
        "labels": secret["metadata"]["labels"],
        "annotations": secret["metadata"]["annotations"],
    })
}

fn path(cluster: &Cluster, name: &str) -> String {
    cluster.path(name).display().to_string()
}

/// Two organisations with two sequences each: backed up, deleted, restored as they were (the
/// same Secret content, so the same fingerprints and states); again: nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_delete_restore_gives_the_same_pairs_and_twice_is_a_no_op() {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    let ns = cluster.ns();
    cluster
        .apply_ok(&rkc_manifest("recordings", ALIAS, &[ORG_A, ORG_B]))
        .await;
    for org in [ORG_A, ORG_B] {
        let mut first = retired(key_pair(&ns, "recordings", org, 1), "2026-02-01T00:00:00Z");
        // ORG_A's first pair was rewrapped onto key B: the wrap is backed up and comes back.
        if org == ORG_A {
            first.wraps = vec![Wrap {
                kms_key_arn: KEY_B.into(),
                ciphertext: vec![0xb0; 48],
                created_at: "2026-03-01T00:00:00Z".parse().unwrap(),
            }];
        }
        create(&cluster, &first).await;
        // ORG_A's current pair was made for a rotate-now request; its token comes back too.
        let token = (org == ORG_A).then_some("2026-03-01T10:00:00.123456789Z");
        create_for(&cluster, &key_pair(&ns, "recordings", org, 2), token).await;
    }
    // Another config's pair and another namespace's: not in a backup by name.
    create(&cluster, &key_pair(&ns, "billing", ORG_A, 1)).await;
    let other = cluster.namespace("contact-centre").await;
    create(&cluster, &key_pair(&other, "recordings", ORG_A, 1)).await;
    let before: Vec<Value> = secrets(&cluster, &ns, "recordings")
        .await
        .iter()
        .map(content)
        .collect();
    assert_eq!(before.len(), 4);

    let file = path(&cluster, "recordings.json");
    let run = kekeeper(&cluster, &["backup", "recordings", "-o", &file]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Backed up 4 key pairs of 1 RecordingKeyConfigs"),
        "{}",
        run.stderr
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the backup is private");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "nothing plaintext");
    let backup: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(backup["format"], "kekeeper.io/key-pair-backup/v1");
    let entries = backup["keyPairs"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|e| e["config"] == "recordings"
        && e["namespace"] == ns.as_str()
        && e["format"] == "kekeeper.io/key-pair/v1"));
    let retired_entries: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("retiredAt").is_some())
        .collect();
    assert_eq!(retired_entries.len(), 2);
    assert!(retired_entries.iter().all(|e| e["sequence"] == 1));
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["rotateNowToken"] == "2026-03-01T10:00:00.123456789Z")
            .count(),
        1
    );
    let wrapped: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("wraps").is_some())
        .collect();
    assert_eq!(wrapped.len(), 1, "one pair has a wrap");
    let wrap = &wrapped[0]["wraps"][0];
    assert_eq!(
        (&wrap["format"], &wrap["kmsKeyArn"], &wrap["organizationId"]),
        (
            &json!("kekeeper.io/key-pair-wrap/v1"),
            &json!(KEY_B),
            &json!(ORG_A)
        )
    );
    assert_eq!(
        wrap["publicKeyFingerprint"],
        wrapped[0]["publicKeyFingerprint"]
    );

    // --all: every config of the namespace; -A: every namespace (on kube-sim only: the shared
    // real server holds other tests' Secrets, some deliberately broken).
    let read = |file: &str| -> Vec<Value> {
        let backup: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        backup["keyPairs"].as_array().unwrap().clone()
    };
    let all = path(&cluster, "all.json");
    let run = kekeeper(&cluster, &["backup", "--all", "-o", &all]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let entries = read(&all);
    assert_eq!(entries.len(), 5, "4 of recordings, 1 of billing");
    assert!(entries.iter().any(|e| e["config"] == "billing"));
    if !cluster.is_real() {
        let run = kekeeper(&cluster, &["backup", "--all", "-A", "-o", &all]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let entries = read(&all);
        assert_eq!(entries.len(), 6);
        assert!(entries.iter().any(|e| e["namespace"] == other.as_str()));
    }

    cluster
        .kubectl_ok(&[
            "delete",
            "secret",
            "-l",
            "kekeeper.io/config=recordings",
            "-n",
            &ns,
        ])
        .await;
    assert!(secrets(&cluster, &ns, "recordings").await.is_empty());

    let run = kekeeper(&cluster, &["restore", "-f", &file, "--dry-run"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("would create active").count(), 2);
    assert_eq!(run.stdout.matches("would create retired").count(), 2);
    assert!(
        secrets(&cluster, &ns, "recordings").await.is_empty(),
        "--dry-run creates nothing"
    );

    let run = kekeeper(&cluster, &["restore", "-f", &file]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("created active").count(), 2);
    assert_eq!(run.stdout.matches("created retired").count(), 2);
    let after: Vec<Value> = secrets(&cluster, &ns, "recordings")
        .await
        .iter()
        .map(content)
        .collect();
    assert_eq!(after, before, "restored byte for byte");
    let wrap_keys = after
        .iter()
        .flat_map(|s| s["data"].as_object().unwrap().keys())
        .filter(|k| k.starts_with("privateKey.0b7c2a34"))
        .count();
    assert_eq!(
        wrap_keys, 2,
        "the wrap's blob and entry are back in its Secret"
    );

    let run = kekeeper(&cluster, &["restore", "-f", &file]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("exists, kept").count(),
        4,
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("0 created"), "{}", run.stderr);
}

/// One entry with another fingerprint, or another entry's public key: the whole file is
/// refused (exit 2) naming the entry, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_file_is_refused_whole_and_nothing_is_created() {
    let cluster = Cluster::start(false).await;
    let ns = cluster.ns();
    for sequence in [1, 2] {
        create(&cluster, &key_pair(&ns, "recordings", ORG_A, sequence)).await;
    }
    let file = path(&cluster, "recordings.json");
    let run = kekeeper(&cluster, &["backup", "recordings", "-o", &file]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    cluster
        .kubectl_ok(&["delete", "secret", "-l", "kekeeper.io/config=recordings"])
        .await;
    let backup: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();

    let mut fingerprint = backup.clone();
    fingerprint["keyPairs"][1]["publicKeyFingerprint"] =
        json!("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let mut public_key = backup.clone();
    public_key["keyPairs"][1]["publicKeyPem"] = backup["keyPairs"][0]["publicKeyPem"].clone();
    for (name, tampered) in [("fingerprint", fingerprint), ("public-key", public_key)] {
        let tampered_file = path(&cluster, &format!("{name}.json"));
        std::fs::write(&tampered_file, tampered.to_string()).unwrap();
        let run = kekeeper(&cluster, &["restore", "-f", &tampered_file]).await;
        assert_eq!(run.code, 2, "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains("is refused, nothing was restored")
                && run.stderr.contains("keyPairs[1] (")
                && run.stderr.contains("fingerprint"),
            "{name}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{name}: {}", run.stdout);
        assert!(
            secrets(&cluster, &ns, "recordings").await.is_empty(),
            "{name}: nothing created"
        );
    }
}

/// A backup's active pair where a newer one exists (its Secret, or only status.highestSequences)
/// comes back retired; a Secret of the same name with another key pair is left alone (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_active_pair_is_restored_retired_and_a_different_secret_is_kept() {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    let ns = cluster.ns();
    cluster
        .apply_ok(&rkc_manifest("recordings", ALIAS, &[ORG_A, ORG_B]))
        .await;
    let a1 = key_pair(&ns, "recordings", ORG_A, 1);
    let b2 = key_pair(&ns, "recordings", ORG_B, 2);
    let b1 = retired(
        key_pair(&ns, "recordings", ORG_B, 1),
        "2026-02-01T00:00:00Z",
    );
    for pair in [&a1, &b1, &b2] {
        create(&cluster, pair).await;
    }
    let file = path(&cluster, "recordings.json");
    let run = kekeeper(&cluster, &["backup", "recordings", "-o", &file]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    cluster
        .kubectl_ok(&["delete", "secret", "-l", "kekeeper.io/config=recordings"])
        .await;

    // Since the backup: ORG_A rotated to sequence 2 (its Secret is here), ORG_B to 3 (only
    // status remembers it), and ORG_B's sequence 1 name holds another key pair.
    let a2 = key_pair(&ns, "recordings", ORG_A, 2);
    create(&cluster, &a2).await;
    let impostor = retired(
        key_pair(&ns, "recordings", ORG_B, 1),
        "2026-02-01T00:00:00Z",
    );
    create(&cluster, &impostor).await;
    let status = json!({"status": {"highestSequences": {ORG_A: 2, ORG_B: 3}}}).to_string();
    cluster
        .kubectl_ok(&[
            "patch",
            "rkc",
            "recordings",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])
        .await;

    let run = kekeeper(&cluster, &["restore", "-f", &file]).await;
    assert_eq!(
        run.code, 1,
        "a differing Secret fails the run: {}",
        run.stderr
    );
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.stdout))
            .to_owned()
    };
    assert!(
        line(&a1.secret_name).starts_with("created retired")
            && line(&a1.secret_name).ends_with("(sequence 2 is newer)"),
        "{}",
        run.stdout
    );
    assert!(
        line(&b2.secret_name).starts_with("created retired")
            && line(&b2.secret_name).ends_with("(sequence 3 is newer)"),
        "{}",
        run.stdout
    );
    assert!(
        line(&b1.secret_name).starts_with("DIFFERS, kept"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("not overwritten") || run.stdout.contains("not overwritten"));

    let stored = secrets(&cluster, &ns, "recordings").await;
    let by_name = |name: &str| -> Secret {
        let value = stored
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} stored"));
        serde_json::from_value(value.clone()).unwrap()
    };
    let restored_a1 = KeyPairSecret::from_secret(&by_name(&a1.secret_name)).unwrap();
    assert_eq!(restored_a1.fingerprint(), a1.fingerprint());
    assert_eq!(restored_a1.state.as_str(), "retired");
    assert!(restored_a1.retired_at.is_some());
    assert_eq!(
        KeyPairSecret::from_secret(&by_name(&a2.secret_name))
            .unwrap()
            .state
            .as_str(),
        "active",
        "the newer pair stays the active one"
    );
    let kept = KeyPairSecret::from_secret(&by_name(&b1.secret_name)).unwrap();
    assert_eq!(
        kept.fingerprint(),
        impostor.fingerprint(),
        "never overwritten"
    );
    assert_eq!(
        KeyPairSecret::from_secret(&by_name(&b2.secret_name))
            .unwrap()
            .state
            .as_str(),
        "retired"
    );
}
