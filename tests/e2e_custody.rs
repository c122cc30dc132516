//! End to end: key custody (issue 9). The real `kekeeper run` against kube-sim and the KMS
//! emulator; each hand edit is made with kubectl on a Ready resource, as a user with Secret
//! edit rights would, and the documented reaction is asserted.

mod common;

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::Engine;
use common::cluster::{Cluster, Operator, condition, count_states, eventually, rkc_manifest};
use common::{create_key, kms_endpoint};
use kekeeper::keypair;
use serde_json::{Value, json};

const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const WAIT: Duration = Duration::from_secs(60);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn rkc(cluster: &Cluster, name: &str) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), name)
        .await
}

/// The key pair Secrets of `config` (its label value may be a hash of a long name).
async fn secrets(cluster: &Cluster, config: &str) -> Vec<Value> {
    let label = keypair::config_label(config);
    cluster
        .objects("", "secrets", Some(&cluster.ns()))
        .await
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["kekeeper.io/config"] == label.as_str())
        .collect()
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap().to_owned()
}

fn condition_field(rkc: &Value, type_: &str, field: &str) -> Option<String> {
    rkc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c[field].as_str())
        .map(str::to_owned)
}

/// Waits until the resource satisfies `ready`.
async fn wait_for(
    cluster: &Cluster,
    name: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    eventually(&format!("{name}: {what}"), WAIT, || async {
        rkc(cluster, name).await.filter(|o| ready(o))
    })
    .await
}

/// Applies a one-organisation resource and waits for Ready with one active Secret.
async fn ready_resource(cluster: &Cluster, name: &str, alias: &str) -> (Value, Value) {
    cluster.apply_ok(&rkc_manifest(name, alias, &[ORG])).await;
    let object = wait_for(cluster, name, "Ready with one active pair", |o| {
        condition(o, "Ready").as_deref() == Some("True")
            && o["status"]["activeKeyPairs"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    let secret = eventually(&format!("{name}: one active Secret"), WAIT, || async {
        let all = secrets(cluster, name).await;
        (count_states(&all) == (1, 0)).then(|| all[0].clone())
    })
    .await;
    (object, secret)
}

/// A Warning event about `name` with `reason` whose note contains `mentions`.
async fn warning_event(cluster: &Cluster, name: &str, reason: &str, mentions: &str) -> Value {
    eventually(&format!("Warning {reason} about {name}"), WAIT, || async {
        cluster
            .objects("", "events", Some(&cluster.ns()))
            .await
            .into_iter()
            .chain(
                cluster
                    .objects("events.k8s.io", "events", Some(&cluster.ns()))
                    .await,
            )
            .find(|e| {
                e["type"] == "Warning"
                    && e["reason"] == reason
                    && (e["regarding"]["name"] == name || e["involvedObject"]["name"] == name)
                    && [&e["note"], &e["message"]]
                        .iter()
                        .any(|n| n.as_str().is_some_and(|n| n.contains(mentions)))
            })
    })
    .await
}

async fn patch_secret_data(cluster: &Cluster, secret: &str, key: &str, value: &[u8]) {
    let patch = json!({ "data": { key: b64(value) } }).to_string();
    cluster
        .kubectl_ok(&["patch", "secret", secret, "--type=merge", "-p", &patch])
        .await;
}

async fn config_map_pem(cluster: &Cluster, name: &str) -> String {
    let config_map = cluster
        .object(
            "",
            "configmaps",
            &cluster.ns(),
            &kekeeper::controller::public_keys_config_map_name(name),
        )
        .await
        .expect("the public-keys ConfigMap");
    config_map["data"][format!("{ORG}.pem")]
        .as_str()
        .expect("the organisation's PEM")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn hand_edits_of_key_material_are_caught() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let args = [
        "--kms-keypair-rate=5".to_owned(),
        "--key-verify-interval=3s".to_owned(),
    ];
    let mut operator = cluster.start_operator("operator", &kubeconfig, &endpoint, &args, &[]);
    operator.wait_ready().await;

    substituted_public_key_is_never_published(&cluster, &operator, &alias).await;
    deleted_retired_secret_is_reported_missing_until_acknowledged(&cluster, &alias).await;
    deleted_active_secret_never_gives_its_name_to_a_new_pair(&cluster, &alias).await;
    corrupted_private_key_fails_the_custody_check_and_rotates(&cluster, &alias).await;
    flipped_state_labels_leave_one_active_pair(&cluster, &alias).await;
    a_200_character_name_works_end_to_end(&cluster, &alias).await;

    let metrics = operator.get("/metrics").await;
    assert!(
        metrics.contains("kekeeper_key_pair_integrity_problems{"),
        "{metrics}"
    );
    assert!(metrics.contains("kekeeper_key_pairs_missing{"), "{metrics}");
    operator.kill();
}

/// Every event on a key pair Secret wakes its resource at once, whatever the length of its name
/// (issue 29; the label of a name over 63 characters is only a hash). Names of 1, 63, 64 and 253
/// characters: a deleted retired Secret is reported, a deleted active Secret is replaced and
/// reported, an edited public key is caught. The operator runs with its default intervals
/// (custody check daily, KMS key check hourly), so only the Secret's own event can bring the
/// reconcile within the bound. The retired Secrets lose their `kekeeper.io/config-name`
/// annotation first, as Secrets made by an older kekeeper lack it. The timings are printed
/// (`--nocapture`). The same run checks the User-Agent of the operator's API and KMS requests
/// and of a CLI command's (`kekeeper/VERSION`, `kekeeper/VERSION (status)`), from kube-sim's
/// request log or the real API server's audit log, and from a proxy in front of the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn secret_events_wake_their_config_whatever_the_name_length() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let kms = common::proxy::FaultProxy::start(&endpoint).await;
    let (cluster, kubeconfig, operator_user) = Cluster::with_operator_identity().await;
    let args = ["--kms-keypair-rate=5".to_owned()];
    let mut operator = cluster.start_operator("operator", &kubeconfig, &kms.endpoint(), &args, &[]);
    operator.wait_ready().await;

    let names = [
        "z".to_owned(),
        format!("len63-{}", "x".repeat(57)),
        format!("len64-{}", "x".repeat(58)),
        format!("len253-{}", "x".repeat(246)),
    ];
    for name in &names {
        cluster.apply_ok(&rkc_manifest(name, &alias, &[ORG])).await;
    }
    for name in &names {
        ready_resource(&cluster, name, &alias).await;
        cluster
            .kubectl_ok(&["annotate", "rkc", name, "kekeeper.io/rotate-now=t1"])
            .await;
    }
    for name in &names {
        wait_for(
            &cluster,
            name,
            "rotated: one active, one retired pair",
            |o| {
                o["status"]["rotateNowToken"] == "t1"
                    && condition(o, "Ready").as_deref() == Some("True")
            },
        )
        .await;
        eventually("one active and one retired Secret", WAIT, || async {
            (count_states(&secrets(&cluster, name).await) == (1, 1)).then_some(())
        })
        .await;
    }

    let mut timings = Vec::new();
    for name in &names {
        timings.push((name.len(), wake_on_secret_events(&cluster, name).await));
    }
    eprintln!(
        "seconds from the Secret event to status ({} server):",
        if cluster.is_real() {
            "real"
        } else {
            "kube-sim"
        }
    );
    for (length, [retired, active, changed]) in &timings {
        eprintln!(
            "  name of {length:3} characters: retired deleted → reported {retired:.1} s; active \
             deleted → replaced and reported {active:.1} s; public key changed → caught {changed:.1} s"
        );
    }
    for (length, seconds) in &timings {
        assert!(
            seconds.iter().all(|s| *s < BOUND.as_secs_f64()),
            "a name of {length} characters took {seconds:?} s (the bound is {BOUND:?}; without \
             the Secret's event the next reconcile is an hour away)"
        );
    }

    requests_carry_the_user_agent(&cluster, &operator_user, &kms, &names[0]).await;
    operator.kill();
}

/// How soon status must show what happened to a Secret.
const BOUND: Duration = Duration::from_secs(30);

/// The three hand edits on `name`'s Secrets; seconds from each to its report.
async fn wake_on_secret_events(cluster: &Cluster, name: &str) -> [f64; 3] {
    let all = secrets(cluster, name).await;
    let of_state = |state: &str| {
        all.iter()
            .find(|s| s["metadata"]["labels"]["kekeeper.io/state"] == state)
            .map(name_of)
            .unwrap()
    };
    let (retired, active) = (of_state("retired"), of_state("active"));
    for secret in [&retired, &active] {
        assert!(secret.len() <= 253, "{secret}");
    }
    let problem = |o: &Value, secret: &str, reason: &str| {
        o["status"]["keyPairProblems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["secretName"] == secret && p["reason"] == reason)
        })
    };

    // As an older kekeeper made it: no name annotation, only the (maybe hashed) label.
    cluster
        .kubectl_ok(&["annotate", "secret", &retired, "kekeeper.io/config-name-"])
        .await;
    // From before the command: an upper bound that includes kubectl's own time.
    let started = std::time::Instant::now();
    cluster.kubectl_ok(&["delete", "secret", &retired]).await;
    wait_for(cluster, name, "the deleted retired pair reported", |o| {
        problem(o, &retired, "KeyPairMissing")
            && condition(o, "HistoricalKeysAtRisk").as_deref() == Some("True")
            && condition_field(o, "HistoricalKeysAtRisk", "reason").as_deref()
                == Some("KeyPairMissing")
    })
    .await;
    let retired_seconds = started.elapsed().as_secs_f64();

    let published = config_map_pem(cluster, name).await;
    let started = std::time::Instant::now();
    cluster.kubectl_ok(&["delete", "secret", &active]).await;
    let replaced = wait_for(
        cluster,
        name,
        "the deleted active pair replaced and reported",
        |o| {
            let now_active = o["status"]["activeKeyPairs"][0]["secretName"].as_str();
            now_active.is_some_and(|s| s != active)
                && problem(o, &active, "KeyPairMissing")
                && condition(o, "HistoricalKeysAtRisk").as_deref() == Some("True")
        },
    )
    .await;
    let active_seconds = started.elapsed().as_secs_f64();
    let new_active = replaced["status"]["activeKeyPairs"][0]["secretName"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(new_active.ends_with("-0003"), "{new_active}");
    eventually("the lost key leaves the ConfigMap", WAIT, || async {
        (config_map_pem(cluster, name).await != published).then_some(())
    })
    .await;

    let other = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let other_der = other.public_key().as_der().unwrap().as_ref().to_vec();
    let started = std::time::Instant::now();
    patch_secret_data(
        cluster,
        &new_active,
        "publicKey.pem",
        keypair::public_key_pem(&other_der).as_bytes(),
    )
    .await;
    wait_for(cluster, name, "the changed public key caught", |o| {
        condition(o, "KeyPairIntegrity").as_deref() == Some("False")
            && condition_field(o, "KeyPairIntegrity", "reason").as_deref()
                == Some("PublicKeyMismatch")
            && problem(o, &new_active, "PublicKeyMismatch")
    })
    .await;
    let changed_seconds = started.elapsed().as_secs_f64();
    [retired_seconds, active_seconds, changed_seconds]
}

/// The operator's API requests say `kekeeper/VERSION`, as its KMS requests do before the SDK's
/// own product tokens; a CLI command's say `kekeeper/VERSION (status)`.
async fn requests_carry_the_user_agent(
    cluster: &Cluster,
    operator_user: &str,
    kms: &common::proxy::FaultProxy,
    name: &str,
) {
    let ours = format!("kekeeper/{}", env!("CARGO_PKG_VERSION"));
    let operator: Vec<_> = cluster
        .request_log()
        .into_iter()
        .filter(|r| r.user == operator_user)
        .collect();
    assert!(!operator.is_empty(), "no request by {operator_user}");
    let others: Vec<_> = operator.iter().filter(|r| r.user_agent != ours).collect();
    assert!(others.is_empty(), "not {ours}: {others:#?}");

    let kms_agents = kms.user_agents();
    assert!(!kms_agents.is_empty());
    for agent in &kms_agents {
        assert!(
            agent.starts_with(&format!("{ours} aws-sdk-rust/")),
            "a KMS request's User-Agent: {agent}"
        );
    }

    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
        .args(["status", name])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .await
        .expect("kekeeper status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let cli = format!("{ours} (status)");
    eventually("the CLI's requests in the request log", WAIT, || async {
        cluster
            .request_log()
            .iter()
            .any(|r| r.user == cluster.admin_user() && r.user_agent == cli)
            .then_some(())
    })
    .await;
}

/// Another key in publicKey.pem: the ConfigMap keeps the verified key, status keeps the
/// recorded fingerprint, KeyPairIntegrity=False PublicKeyMismatch naming the Secret, a Warning
/// event; restoring the key clears it.
async fn substituted_public_key_is_never_published(
    cluster: &Cluster,
    operator: &Operator,
    alias: &str,
) {
    let name = "substituted";
    let (before, secret) = ready_resource(cluster, name, alias).await;
    let secret_name = name_of(&secret);
    let published = config_map_pem(cluster, name).await;
    let recorded = before["status"]["activeKeyPairs"][0]["publicKeyFingerprint"].clone();

    let other = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let other_der = other.public_key().as_der().unwrap().as_ref().to_vec();
    let original_pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["publicKey.pem"].as_str().unwrap())
        .unwrap();
    patch_secret_data(
        cluster,
        &secret_name,
        "publicKey.pem",
        keypair::public_key_pem(&other_der).as_bytes(),
    )
    .await;

    let flagged = wait_for(
        cluster,
        name,
        "KeyPairIntegrity=False PublicKeyMismatch",
        |o| condition(o, "KeyPairIntegrity").as_deref() == Some("False"),
    )
    .await;
    assert_eq!(
        condition_field(&flagged, "KeyPairIntegrity", "reason").as_deref(),
        Some("PublicKeyMismatch")
    );
    let message = condition_field(&flagged, "KeyPairIntegrity", "message").unwrap();
    assert!(message.contains(&secret_name), "{message}");
    assert_eq!(
        flagged["status"]["activeKeyPairs"][0]["publicKeyFingerprint"], recorded,
        "status keeps the recorded fingerprint"
    );
    warning_event(cluster, name, "PublicKeyMismatch", &secret_name).await;
    // Recorders never get the substituted key, however many reconciles run: two more, waited
    // for until done (woken by an annotation the operator does not read).
    for touch in ["1", "2"] {
        let done = common::fleet::metric(operator, "kekeeper_reconciles_total").await as u64;
        cluster
            .kubectl_ok(&[
                "annotate",
                "--overwrite",
                &format!("rkc/{name}"),
                &format!("example.com/touched={touch}"),
            ])
            .await;
        common::fleet::wait_reconciles(operator, done + 1).await;
    }
    assert_eq!(config_map_pem(cluster, name).await, published);

    patch_secret_data(cluster, &secret_name, "publicKey.pem", &original_pem).await;
    let restored = wait_for(cluster, name, "KeyPairIntegrity=True again", |o| {
        condition(o, "KeyPairIntegrity").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        condition_field(&restored, "KeyPairIntegrity", "reason").as_deref(),
        Some("Verified")
    );
    assert_eq!(config_map_pem(cluster, name).await, published);
}

/// Rotate, then delete the retired Secret: HistoricalKeysAtRisk=True KeyPairMissing naming the
/// pair and the organisation, the history keeps the entry marked missing, a Warning event;
/// the acknowledge annotation clears it.
async fn deleted_retired_secret_is_reported_missing_until_acknowledged(
    cluster: &Cluster,
    alias: &str,
) {
    let name = "deleted-retired";
    let (_, first) = ready_resource(cluster, name, alias).await;
    let first_name = name_of(&first);
    cluster
        .kubectl_ok(&["annotate", "rkc", name, "kekeeper.io/rotate-now=t1"])
        .await;
    eventually("one active and one retired Secret", WAIT, || async {
        (count_states(&secrets(cluster, name).await) == (1, 1)).then_some(())
    })
    .await;
    let rotated = wait_for(cluster, name, "rotate-now honoured", |o| {
        o["status"]["rotateNowToken"] == "t1" && condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    let retired_id = rotated["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["secretName"] == first_name.as_str())
        .expect("the retired pair in history")["keyPairId"]
        .as_str()
        .unwrap()
        .to_owned();

    cluster.kubectl_ok(&["delete", "secret", &first_name]).await;
    let flagged = wait_for(
        cluster,
        name,
        "HistoricalKeysAtRisk=True KeyPairMissing",
        |o| {
            condition_field(o, "HistoricalKeysAtRisk", "reason").as_deref()
                == Some("KeyPairMissing")
        },
    )
    .await;
    assert_eq!(
        condition(&flagged, "HistoricalKeysAtRisk").as_deref(),
        Some("True")
    );
    let message = condition_field(&flagged, "HistoricalKeysAtRisk", "message").unwrap();
    assert!(
        message.contains(&first_name) && message.contains(ORG) && message.contains(&retired_id),
        "{message}"
    );
    let entry = flagged["status"]["keyPairHistory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["secretName"] == first_name.as_str())
        .expect("the history keeps the missing pair")
        .clone();
    assert_eq!(entry["missing"], true, "{entry}");
    assert_eq!(condition(&flagged, "Ready").as_deref(), Some("True"));
    warning_event(cluster, name, "KeyPairMissing", &first_name).await;

    cluster
        .kubectl_ok(&[
            "annotate",
            "rkc",
            name,
            &format!("kekeeper.io/acknowledge-key-pairs={retired_id}"),
        ])
        .await;
    let acknowledged = wait_for(
        cluster,
        name,
        "the acknowledged pair is no longer reported",
        |o| condition(o, "HistoricalKeysAtRisk").as_deref() == Some("False"),
    )
    .await;
    assert!(
        acknowledged["status"]["keyPairHistory"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["secretName"] != first_name.as_str()),
        "{acknowledged:#}"
    );
}

/// Delete the active Secret: the next pair gets a new name (sequence 2), the deleted one is
/// reported missing; no Secret name ever holds two key pair ids.
async fn deleted_active_secret_never_gives_its_name_to_a_new_pair(cluster: &Cluster, alias: &str) {
    let name = "deleted-active";
    let (before, first) = ready_resource(cluster, name, alias).await;
    let first_name = name_of(&first);
    let first_id = before["status"]["activeKeyPairs"][0]["keyPairId"].clone();
    assert!(first_name.ends_with("-0001"), "{first_name}");

    cluster.kubectl_ok(&["delete", "secret", &first_name]).await;
    let after = wait_for(cluster, name, "a new active pair", |o| {
        let active = &o["status"]["activeKeyPairs"][0];
        active["keyPairId"] != first_id
            && !active["keyPairId"].is_null()
            && condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    let new_name = after["status"]["activeKeyPairs"][0]["secretName"]
        .as_str()
        .unwrap();
    assert_ne!(
        new_name, first_name,
        "a deleted Secret's name is never reused"
    );
    assert!(new_name.ends_with("-0002"), "{new_name}");
    assert_eq!(
        condition_field(&after, "HistoricalKeysAtRisk", "reason").as_deref(),
        Some("KeyPairMissing")
    );
    assert!(
        secrets(cluster, name)
            .await
            .iter()
            .all(|s| name_of(s) != first_name)
    );
}

/// Corrupt privateKey.kms of the active pair: within one custody-check interval,
/// KeyPairIntegrity=False CustodyCheckFailed, a Warning event, and an immediate rotation with
/// reason IntegrityCheckFailed, whose new key is what recorders get.
async fn corrupted_private_key_fails_the_custody_check_and_rotates(cluster: &Cluster, alias: &str) {
    let name = "corrupted";
    let (_, secret) = ready_resource(cluster, name, alias).await;
    let secret_name = name_of(&secret);
    let published = config_map_pem(cluster, name).await;
    let mut blob = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["privateKey.kms"].as_str().unwrap())
        .unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0xff;
    patch_secret_data(cluster, &secret_name, "privateKey.kms", &blob).await;

    let flagged = wait_for(
        cluster,
        name,
        "a rotation after the failed custody check",
        |o| {
            condition(o, "KeyPairIntegrity").as_deref() == Some("False")
                && o["status"]["activeKeyPairs"][0]["secretName"] != secret_name.as_str()
                && condition(o, "Ready").as_deref() == Some("True")
        },
    )
    .await;
    assert_eq!(
        condition_field(&flagged, "KeyPairIntegrity", "reason").as_deref(),
        Some("CustodyCheckFailed")
    );
    let message = condition_field(&flagged, "KeyPairIntegrity", "message").unwrap();
    assert!(message.contains(&secret_name), "{message}");
    let newest = &flagged["status"]["keyPairHistory"][0];
    assert_eq!(newest["reason"], "IntegrityCheckFailed", "{flagged:#}");
    warning_event(cluster, name, "CustodyCheckFailed", &secret_name).await;
    let republished = eventually("recorders get the new key", WAIT, || async {
        let pem = config_map_pem(cluster, name).await;
        (pem != published).then_some(pem)
    })
    .await;
    let der = keypair::parse_public_key_pem(&republished).unwrap();
    assert_eq!(
        keypair::fingerprint(&der),
        newest["publicKeyFingerprint"].as_str().unwrap()
    );
}

/// A 200-character name: pairs are made, rotated and retired (the retire patch finds the Secret
/// although its label carries only a hash of the name), the ConfigMap is published.
async fn a_200_character_name_works_end_to_end(cluster: &Cluster, alias: &str) {
    let name = format!("long-{}", "n".repeat(195));
    assert_eq!(name.len(), 200);
    let (_, first) = ready_resource(cluster, &name, alias).await;
    let first_name = name_of(&first);
    assert!(first_name.len() <= 253, "{first_name}");
    assert!(first_name.starts_with(&name), "{first_name}");
    cluster
        .kubectl_ok(&["annotate", "rkc", &name, "kekeeper.io/rotate-now=long"])
        .await;
    eventually("the first pair retired, a second active", WAIT, || async {
        let all = secrets(cluster, &name).await;
        let retired = all.iter().find(|s| name_of(s) == first_name)?;
        (count_states(&all) == (1, 1)
            && retired["metadata"]["labels"]["kekeeper.io/state"] == "retired")
            .then_some(())
    })
    .await;
    let done = wait_for(cluster, &name, "Ready after the rotation", |o| {
        o["status"]["rotateNowToken"] == "long" && condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        done["status"]["keyPairHistory"].as_array().unwrap().len(),
        2
    );
    assert!(!config_map_pem(cluster, &name).await.is_empty());
}

/// `kekeeper.io/state` flipped by hand: the active pair flipped to retired counts as retired
/// (the organisation gets a new pair under a new name); a retired pair flipped back to active
/// is older than the active one, so it is retired again at once, with a Warning event.
async fn flipped_state_labels_leave_one_active_pair(cluster: &Cluster, alias: &str) {
    let name = "flipped";
    let (_, first) = ready_resource(cluster, name, alias).await;
    let first_name = name_of(&first);
    cluster
        .kubectl_ok(&[
            "label",
            "--overwrite",
            "secret",
            &first_name,
            "kekeeper.io/state=retired",
        ])
        .await;
    let replaced = wait_for(cluster, name, "a new active pair", |o| {
        o["status"]["activeKeyPairs"][0]["secretName"]
            .as_str()
            .is_some_and(|s| s != first_name)
            && condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    let second_name = replaced["status"]["activeKeyPairs"][0]["secretName"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(second_name.ends_with("-0002"), "{second_name}");

    cluster
        .kubectl_ok(&[
            "label",
            "--overwrite",
            "secret",
            &first_name,
            "kekeeper.io/state=active",
        ])
        .await;
    warning_event(cluster, name, "DuplicateActiveKeyPair", &first_name).await;
    eventually("the flipped pair retired again", WAIT, || async {
        let all = secrets(cluster, name).await;
        let flipped = all.iter().find(|s| name_of(s) == first_name)?;
        (count_states(&all) == (1, 1)
            && flipped["metadata"]["labels"]["kekeeper.io/state"] == "retired")
            .then_some(())
    })
    .await;
    let after = rkc(cluster, name).await.unwrap();
    assert_eq!(
        after["status"]["activeKeyPairs"][0]["secretName"],
        second_name.as_str()
    );
    assert_eq!(config_map_pem(cluster, name).await, {
        let secret = secrets(cluster, name)
            .await
            .into_iter()
            .find(|s| name_of(s) == second_name)
            .unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"]["publicKey.pem"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    });
}

/// A small deterministic pseudo-random sequence (no extra dependency), seeded from the clock
/// so each run kills at other points; the seed is printed to replay a failure.
struct Lcg(u64);

impl Lcg {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Every Secret name seen so far with the key pair id it held; a name never holds two.
async fn record_names(
    cluster: &Cluster,
    name: &str,
    seen: &mut std::collections::BTreeMap<String, String>,
) {
    for secret in secrets(cluster, name).await {
        let metadata: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(secret["data"]["metadata.json"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let id = metadata["keyPairId"].as_str().unwrap().to_owned();
        let previous = seen.entry(name_of(&secret)).or_insert(id.clone());
        assert_eq!(
            *previous,
            id,
            "Secret {} held two key pairs",
            name_of(&secret)
        );
    }
}

/// Recorders see one key per organisation, and it is the key of an existing key pair Secret.
async fn assert_published_key_is_stored(cluster: &Cluster, name: &str) {
    let Some(config_map) = cluster
        .object(
            "",
            "configmaps",
            &cluster.ns(),
            &format!("{name}-public-keys"),
        )
        .await
    else {
        return;
    };
    let entries: Vec<Value> =
        serde_json::from_str(config_map["data"]["activeKeyPairs.json"].as_str().unwrap()).unwrap();
    assert!(
        entries.len() <= 1,
        "two keys published for one organisation: {entries:#?}"
    );
    let stored: Vec<String> = secrets(cluster, name)
        .await
        .iter()
        .map(|s| {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(s["data"]["publicKey.pem"].as_str().unwrap())
                .unwrap();
            String::from_utf8(pem).unwrap()
        })
        .collect();
    for entry in entries {
        let pem = entry["publicKeyPem"].as_str().unwrap();
        assert!(
            stored.iter().any(|s| s == pem),
            "published key has no Secret: {entry}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn kill_nine_during_50_rotations_never_shows_two_keys_or_reuses_a_name() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let args = ["--kms-keypair-rate=20".to_owned()];
    let start = |n: usize| {
        cluster.start_operator(&format!("operator-{n}"), &kubeconfig, &endpoint, &args, &[])
    };
    let mut operator = start(0);
    operator.wait_ready().await;
    let name = "crashing";
    ready_resource(&cluster, name, &key.alias.to_string()).await;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 schedule seed: {seed}");
    let mut random = Lcg(seed);
    let mut names = std::collections::BTreeMap::new();
    for round in 1..=50 {
        let token = format!("t{round}");
        cluster
            .kubectl_ok(&[
                "annotate",
                "--overwrite",
                "rkc",
                name,
                &format!("kekeeper.io/rotate-now={token}"),
            ])
            .await;
        if random.next_below(2) == 0 {
            tokio::time::sleep(Duration::from_millis(random.next_below(400))).await;
            operator.kill();
            record_names(&cluster, name, &mut names).await;
            assert_published_key_is_stored(&cluster, name).await;
            operator = start(round);
            operator.wait_ready().await;
        }
        wait_for(&cluster, name, &format!("token {token} honoured"), |o| {
            o["status"]["rotateNowToken"] == token.as_str()
                && condition(o, "Ready").as_deref() == Some("True")
        })
        .await;
        record_names(&cluster, name, &mut names).await;
        assert_published_key_is_stored(&cluster, name).await;
        assert_eq!(
            count_states(&secrets(&cluster, name).await).0,
            1,
            "round {round}: one active pair"
        );
    }
    // One pair per token, none twice: 1 + 50 Secrets, sequences 1..=51.
    let all = secrets(&cluster, name).await;
    assert_eq!(count_states(&all), (1, 50));
    assert_eq!(names.len(), 51);
    for sequence in 1..=51 {
        let suffix = format!("-{sequence:04}");
        assert!(
            names.keys().any(|n| n.ends_with(&suffix)),
            "no Secret {suffix}"
        );
    }
    operator.kill();
}
