//! The cluster commands of the `kekeeper` binary (`status`, `rotate`, `decrypt` without
//! `--key-pair-secret`) against kube-sim, connected as kubectl connects (`--kubeconfig`,
//! `KUBECONFIG`, `--context`, `-n`); the `--wait` and `decrypt` tests also run the operator
//! against the KMS emulator.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::cli::Run;
use common::cluster::{Cluster, condition, eventually, rkc_manifest, rkc_manifest_in};
use common::{create_key, kms_endpoint};
use serde_json::{Value, json};

const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "9b2e6c1a-7d4f-4e8a-a1c3-5f0d2b8e9c47";
const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";

/// `kekeeper ARGS` with `KUBECONFIG` (when given) and the KMS endpoint (when given) in its
/// environment and nothing of the caller's.
async fn kekeeper(kubeconfig: Option<&Path>, kms: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"));
    command
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("HOME", "/nonexistent")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", common::REGION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_KMS", kms.unwrap_or("http://127.0.0.1:9"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = kubeconfig {
        command.env("KUBECONFIG", path);
    }
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("kekeeper {args:?} timed out"))
        .expect("kekeeper");
    Run::of(args, &output)
}

async fn rkc(cluster: &Cluster, namespace: &str, name: &str) -> Value {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", namespace, name)
        .await
        .unwrap_or_else(|| panic!("{namespace}/{name} is stored"))
}

async fn rotate_now(cluster: &Cluster, namespace: &str, name: &str) -> Option<String> {
    rkc(cluster, namespace, name).await["metadata"]["annotations"]["kekeeper.io/rotate-now"]
        .as_str()
        .map(str::to_owned)
}

/// Writes `status` through the status subresource, as the operator would.
async fn write_status(cluster: &Cluster, namespace: &str, name: &str, status: Value) {
    let patch = json!({ "status": status }).to_string();
    cluster
        .kubectl_ok(&[
            "patch",
            "rkc",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await;
}

/// The kubeconfig with a second context `billing` whose namespace is `namespace`.
fn with_billing_context(cluster: &Cluster, namespace: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let mut config: Value = serde_yaml::from_str(&text).unwrap();
    let mut billing = config["contexts"][0].clone();
    billing["name"] = json!("billing");
    billing["context"]["namespace"] = json!(namespace);
    config["contexts"].as_array_mut().unwrap().push(billing);
    let path = cluster.path("kubeconfig-billing");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_one_screen_and_prints_json_and_yaml() {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    cluster
        .apply_ok(&rkc_manifest("recordings", ALIAS, &[ORG_A]))
        .await;
    let uid = rkc(&cluster, &cluster.ns(), "recordings").await["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Whole seconds: metav1.Time has no fraction.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let created = now - jiff::SignedDuration::from_hours(50);
    let status = json!({
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "KmsUnavailable",
             "message": "KMS GenerateDataKeyPair failed", "observedGeneration": 1,
             "lastTransitionTime": now.to_string()},
            {"type": "Stalled", "status": "False", "reason": "NotStalled", "message": "",
             "observedGeneration": 1, "lastTransitionTime": now.to_string()},
        ],
        "activeKeyPairs": [{
            "organizationId": ORG_A, "keyPairId": "0b7c3d2e-1111-4222-8333-944455556666",
            "createdAt": created.to_string(), "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k",
            "keyPairSpec": "RSA_2048", "publicKeyFingerprint": "SHA256:fp",
            "secretName": "recordings-kp-1"}],
        "keyPairHistory": [{
            "organizationId": ORG_A, "keyPairId": "0b7c3d2e-1111-4222-8333-944455556666",
            "createdAt": created.to_string(), "reason": "NoActiveKeyPair",
            "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k",
            "publicKeyFingerprint": "SHA256:fp", "secretName": "recordings-kp-1"}],
        "nextRotationTime": (now + jiff::SignedDuration::from_hours(24 * 28 + 1)).to_string(),
        "lastKmsError": {"time": now.to_string(), "operation": "GenerateDataKeyPair",
                         "code": "ThrottlingException", "message": "Rate exceeded"},
    });
    write_status(&cluster, &cluster.ns(), "recordings", status.clone()).await;
    let ns = cluster.ns();
    let event = format!(
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata:\n  name: recordings.1\n  namespace: {ns}\neventTime: \"{}\"\nreportingController: kekeeper\nreportingInstance: kekeeper-0\naction: Reconcile\nreason: KmsUnavailable\ntype: Warning\nnote: KMS said no\nregarding:\n  apiVersion: kekeeper.io/v1alpha1\n  kind: RecordingKeyConfig\n  name: recordings\n  namespace: {ns}\n  uid: {uid}\n",
        jiff::Timestamp::from_second(now.as_second())
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    );
    cluster.apply_ok(&event).await;

    // KUBECONFIG from the environment, the namespace from its context.
    let run = kekeeper(Some(&cluster.kubeconfig), None, &["status", "recordings"]).await;
    assert_eq!(run.code, 0);
    for expected in [
        "Namespace:      default",
        "Ready    False   KmsUnavailable",
        "KMS GenerateDataKeyPair failed",
        "Stalled  False   NotStalled",
        "0b7c3d2e-1111-4222-8333-944455556666",
        "2d",
        "(in 28d)",
        "Last KMS error: GenerateDataKeyPair ThrottlingException",
        "History (newest first, historyLimit 10):",
        "NoActiveKeyPair",
        "Warning  KmsUnavailable",
        "KMS said no",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} missing");
    }

    // -o json / yaml: the resource's status, as stored.
    let run = kekeeper(
        Some(&cluster.kubeconfig),
        None,
        &["status", "recordings", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0);
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        printed,
        rkc(&cluster, &cluster.ns(), "recordings").await["status"]
    );
    assert_eq!(printed["lastKmsError"]["code"], "ThrottlingException");
    let run = kekeeper(
        Some(&cluster.kubeconfig),
        None,
        &["status", "recordings", "-o", "yaml"],
    )
    .await;
    assert_eq!(run.code, 0);
    let printed_yaml: Value = serde_yaml::from_str(&run.stdout).unwrap();
    assert_eq!(printed_yaml, printed);

    // --kubeconfig and -n; a missing resource names its namespace.
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let billing = cluster.namespace("billing").await;
    let run = kekeeper(
        None,
        None,
        &[
            "status",
            "recordings",
            "--kubeconfig",
            kubeconfig,
            "-n",
            &billing,
        ],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(&format!(
            "recordingkeyconfig \"recordings\" not found in namespace \"{billing}\""
        )),
        "{}",
        run.stderr
    );
}

/// The `<config>-public-keys` ConfigMap is what docs/recorders.md says, byte for byte: two
/// labels, the RecordingKeyConfig as controller owner, one `<org>.pem` per organisation (the
/// Secret's `publicKey.pem`) and `activeKeyPairs.json`, sorted by organisation, with exactly
/// the four members in the documented order, two-space indented and without a final newline.
async fn recorders_contract(cluster: &Cluster, stored: &Value) {
    let cm = cluster
        .object("", "configmaps", &cluster.ns(), "recordings-public-keys")
        .await
        .expect("the public-keys ConfigMap");
    let meta = &cm["metadata"];
    assert_eq!(
        meta["labels"],
        json!({"app.kubernetes.io/managed-by": "kekeeper", "kekeeper.io/config": "recordings"})
    );
    assert!(meta["annotations"].is_null(), "{meta:#}");
    assert_eq!(
        meta["ownerReferences"],
        json!([{"apiVersion": "kekeeper.io/v1alpha1", "kind": "RecordingKeyConfig",
                "name": "recordings", "uid": stored["metadata"]["uid"], "controller": true}])
    );
    assert!(cm["binaryData"].is_null());
    let data = cm["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            &format!("{ORG_A}.pem"),
            &format!("{ORG_B}.pem"),
            "activeKeyPairs.json"
        ]
    );
    let json = data["activeKeyPairs.json"].as_str().unwrap();
    assert!(
        json.starts_with("[\n  {\n    \"keyPairId\": ") && json.ends_with("\n]"),
        "{json}"
    );
    let entries: Vec<Value> = serde_json::from_str(json).unwrap();
    let mut orgs = Vec::new();
    for entry in &entries {
        let org = entry["organizationId"].as_str().unwrap();
        orgs.push(org);
        let pem = data[&format!("{org}.pem")].as_str().unwrap();
        assert_eq!(entry["publicKeyPem"], pem);
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
                && pem.ends_with("-----END PUBLIC KEY-----\n")
        );
        let active = stored["status"]["activeKeyPairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["organizationId"] == org)
            .unwrap();
        assert_eq!(entry["keyPairId"], active["keyPairId"]);
        assert_eq!(
            entry["publicKeyFingerprint"],
            active["publicKeyFingerprint"]
        );
        // The members, in the documented order, and no others.
        let object = &json[json
            .find(&format!("\"keyPairId\": {}", entry["keyPairId"]))
            .unwrap()..];
        let order: Vec<usize> = [
            "\"keyPairId\"",
            "\"organizationId\"",
            "\"publicKeyFingerprint\"",
            "\"publicKeyPem\"",
        ]
        .iter()
        .map(|m| object.find(m).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert_eq!(entry.as_object().unwrap().len(), 4, "{entry:#}");
    }
    assert_eq!(orgs, [ORG_A, ORG_B], "sorted by organisation id");
}

/// A condition as the operator writes it, for generation 1.
fn condition_at(type_: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": 1, "lastTransitionTime": now})
}

/// The lines of a `kekeeper status` list or `kubectl get` table whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

/// `kubectl get rkc` shows Reason; `-o wide` adds Message, KMS Key and Key Store.
/// `kekeeper status` without a name lists verdicts (namespace, `-n`, `-A`, `-o json`),
/// `--exit-code` exits 3 unless Ready, and the binary answers as the kubectl plugin
/// `kubectl kekeeper`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_verdicts_exits_unless_ready_and_kubectl_shows_the_columns() {
    const KEY_ARN: &str =
        "arn:aws:kms:us-east-1:111122223333:key/0b1c2d3e-aaaa-4bbb-8ccc-9ddd0eee1fff";
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    let ns = cluster.ns();
    let billing = cluster.namespace("billing").await;
    for name in ["ready", "paused", "fresh"] {
        cluster.apply_ok(&rkc_manifest(name, ALIAS, &[ORG_A])).await;
    }
    cluster
        .apply_ok(&rkc_manifest_in(&billing, "archive", ALIAS, &[ORG_B]))
        .await;
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap()
        .to_string();
    let ready = json!({
        "observedGeneration": 1,
        "kmsKeyArn": KEY_ARN,
        "conditions": [
            condition_at("Ready", "True", "KeyPairsActive", "1/1 organisations have an active key pair", &now),
            condition_at("KeyStoreSynced", "True", "KeyPairsStored", "1/1 key pairs stored in s3://acme/prod", &now),
        ],
    });
    write_status(&cluster, &ns, "ready", ready.clone()).await;
    write_status(&cluster, &billing, "archive", ready).await;
    let suspended = json!({
        "observedGeneration": 1,
        "conditions": [condition_at("Ready", "False", "Suspended", "spec.suspend is true", &now)],
    });
    write_status(&cluster, &ns, "paused", suspended).await;

    // kubectl: the server prints the columns.
    let plain = cluster.kubectl_ok(&["get", "rkc", "-n", &ns]).await;
    let header = plain.lines().next().unwrap();
    assert!(
        header.contains("READY") && header.contains("REASON"),
        "{plain}"
    );
    assert!(
        !header.contains("MESSAGE") && !header.contains("KMS KEY"),
        "{plain}"
    );
    assert!(
        row(&plain, "ready").unwrap().contains("KeyPairsActive"),
        "{plain}"
    );
    assert!(
        row(&plain, "paused").unwrap().contains("Suspended"),
        "{plain}"
    );
    let wide = cluster
        .kubectl_ok(&["get", "rkc", "-n", &ns, "-o", "wide"])
        .await;
    let header = wide.lines().next().unwrap();
    for column in ["REASON", "MESSAGE", "KMS KEY", "KEY STORE"] {
        assert!(header.contains(column), "{column} in\n{wide}");
    }
    let line = row(&wide, "ready").unwrap();
    for cell in [
        "KeyPairsActive",
        "1/1 organisations have an active key pair",
        KEY_ARN,
        "KeyPairsStored",
    ] {
        assert!(line.contains(cell), "{cell} in {line}");
    }

    // status without a name: the context's namespace, one line each.
    let kubeconfig = Some(cluster.kubeconfig.as_path());
    let run = kekeeper(kubeconfig, None, &["status"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("NAME "), "{}", run.stdout);
    let verdict = |table: &str, name: &str| -> Vec<String> {
        row(table, name)
            .unwrap_or_else(|| panic!("{name} in\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        verdict(&run.stdout, "ready")[1..5],
        ["Ready", "KeyPairsActive", "1", "KeyPairsStored"]
    );
    assert_eq!(
        verdict(&run.stdout, "paused")[1..5],
        ["Suspended", "Suspended", "1", "none"]
    );
    assert_eq!(
        verdict(&run.stdout, "fresh")[1..3],
        ["InProgress", "NoStatusYet"]
    );
    assert!(row(&run.stdout, "archive").is_none(), "{}", run.stdout);

    // --exit-code: 3 unless every resource shown is Ready.
    let run = kekeeper(kubeconfig, None, &["status", "--exit-code"]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    let run = kekeeper(kubeconfig, None, &["status", "-n", &billing, "--exit-code"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(verdict(&run.stdout, "archive")[1], "Ready");
    let run = kekeeper(kubeconfig, None, &["status", "ready", "--exit-code"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("KMS key:        {KEY_ARN}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Public keys:    ConfigMap ready-public-keys"),
        "{}",
        run.stdout
    );
    let run = kekeeper(kubeconfig, None, &["status", "paused", "--exit-code"]).await;
    assert_eq!(run.code, 3);
    let run = kekeeper(
        kubeconfig,
        None,
        &["status", "paused", "-o", "json", "--exit-code"],
    )
    .await;
    assert_eq!(run.code, 3);

    // -A: every namespace (others' resources too, on the shared real server), with a
    // namespace column; -o json the same as a list.
    let run = kekeeper(kubeconfig, None, &["status", "-A"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("NAMESPACE "), "{}", run.stdout);
    for (namespace, name) in [(&ns, "ready"), (&ns, "paused"), (&billing, "archive")] {
        assert!(
            run.stdout.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&namespace.as_str()) && cells.get(1) == Some(&name)
            }),
            "{namespace}/{name} in\n{}",
            run.stdout
        );
    }
    let run = kekeeper(kubeconfig, None, &["status", "-n", &billing, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        listed,
        json!([{"namespace": billing, "name": "archive", "verdict": "Ready",
                "reason": "KeyPairsActive", "message": "1/1 organisations have an active key pair",
                "organizations": 1, "keyStore": "KeyPairsStored"}])
    );
    // A name and -A do not go together.
    let run = kekeeper(kubeconfig, None, &["status", "ready", "-A"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);

    // The kubectl plugin: kubectl runs kubectl-kekeeper from the PATH.
    let plugins = cluster.path("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_kekeeper"),
        plugins.join("kubectl-kekeeper"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = |args: &[&str]| {
        std::process::Command::new(common::cluster::kubectl_path())
            .args(args)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("PATH", &path)
            .env("HOME", "/nonexistent")
            .output()
            .expect("kubectl")
    };
    let out = plugin(&["kekeeper", "status", "-n", &billing]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(verdict(&stdout, "archive")[1], "Ready");
    let out = plugin(&["kekeeper", "status", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Usage: kubectl kekeeper status"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_by_name_all_selector_and_all_namespaces() {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    let ns = cluster.ns();
    let billing = cluster.namespace("billing").await;
    let labelled = |manifest: String| {
        manifest.replacen(
            "metadata:\n",
            "metadata:\n  labels:\n    team: telephony\n",
            1,
        )
    };
    cluster
        .apply_ok(&labelled(rkc_manifest("a", ALIAS, &[ORG_A])))
        .await;
    cluster
        .apply_ok(
            &rkc_manifest("paused", ALIAS, &[ORG_A])
                .replace("  keyPairSpec:", "  suspend: true\n  keyPairSpec:"),
        )
        .await;
    cluster
        .apply_ok(&rkc_manifest("unlabelled", ALIAS, &[ORG_B]))
        .await;
    cluster
        .apply_ok(&labelled(rkc_manifest_in(&billing, "c", ALIAS, &[ORG_A])))
        .await;
    let kubeconfig = cluster.kubeconfig.as_path();

    // By name; the annotation is written with field manager `kekeeper`.
    let run = kekeeper(Some(kubeconfig), None, &["rotate", "a"]).await;
    assert_eq!(run.code, 0);
    let token = rotate_now(&cluster, &cluster.ns(), "a")
        .await
        .expect("annotated");
    assert_eq!(
        run.stdout.trim(),
        format!("rotate-now requested for {ns}/a (token {token})")
    );
    let managers: Vec<Value> = rkc(&cluster, &cluster.ns(), "a").await["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .clone();
    let kekeeper_manager = managers
        .iter()
        .find(|m| m["manager"] == "kekeeper")
        .unwrap_or_else(|| panic!("no kekeeper field manager: {managers:#?}"));
    assert!(
        kekeeper_manager["fieldsV1"]
            .to_string()
            .contains("kekeeper.io/rotate-now"),
        "{kekeeper_manager}"
    );

    // Not found: the namespace is named; nothing is written.
    let run = kekeeper(Some(kubeconfig), None, &["rotate", "nope", "-n", &billing]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(&format!(
            "recordingkeyconfig \"nope\" not found in namespace \"{billing}\""
        )),
        "{}",
        run.stderr
    );

    // --all: every one in the namespace; the suspended one says so.
    let run = kekeeper(Some(kubeconfig), None, &["rotate", "--all"]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    assert!(
        run.stdout
            .contains(&format!("rotate-now requested for {ns}/paused (token"))
            && run
                .stdout
                .contains("but it is suspended (spec.suspend: true)"),
        "{}",
        run.stdout
    );
    let token_all = rotate_now(&cluster, &cluster.ns(), "unlabelled")
        .await
        .expect("annotated");
    assert_ne!(token_all, token);
    assert_eq!(
        rotate_now(&cluster, &cluster.ns(), "a").await.as_deref(),
        Some(token_all.as_str())
    );
    assert_eq!(rotate_now(&cluster, &billing, "c").await, None);

    // -l with -A: the labelled ones in every namespace, and only those.
    let run = kekeeper(
        Some(kubeconfig),
        None,
        &["rotate", "-l", "team=telephony", "-A"],
    )
    .await;
    assert_eq!(run.code, 0);
    let token_selected = rotate_now(&cluster, &billing, "c")
        .await
        .expect("annotated");
    assert!(
        run.stdout.contains(&format!("{ns}/a")) && run.stdout.contains(&format!("{billing}/c"))
    );
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert_eq!(
        rotate_now(&cluster, &cluster.ns(), "a").await.as_deref(),
        Some(token_selected.as_str())
    );
    assert_eq!(
        rotate_now(&cluster, &cluster.ns(), "unlabelled")
            .await
            .as_deref(),
        Some(token_all.as_str())
    );

    // --context picks the namespace of that context.
    let billing_kubeconfig = with_billing_context(&cluster, &billing);
    let run = kekeeper(
        Some(&billing_kubeconfig),
        None,
        &["rotate", "--all", "--context", "billing"],
    )
    .await;
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains(&format!("{billing}/c")),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);

    // An empty namespace: nothing to do, said so.
    let empty = cluster.namespace("empty").await;
    let run = kekeeper(Some(kubeconfig), None, &["rotate", "--all", "-n", &empty]).await;
    assert_eq!(run.code, 0);
    assert!(run.stderr.contains(&format!(
        "No RecordingKeyConfigs found in namespace \"{empty}\""
    )));
}

/// `--wait` watches: it returns once status honours the token and Ready is True for the
/// current generation (written here by hand in place of the operator), and times out naming
/// what is missing otherwise. Suspended resources are not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_wait_follows_the_status_and_times_out_naming_what_is_missing() {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    cluster
        .apply_ok(&rkc_manifest("recordings", ALIAS, &[ORG_A]))
        .await;
    let kubeconfig = cluster.kubeconfig.clone();

    let run = kekeeper(
        Some(&kubeconfig),
        None,
        &["rotate", "recordings", "--wait", "--timeout", "2s"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "{}/recordings: not honoured before the --timeout: status.rotateNowToken is unset",
            cluster.ns()
        )),
        "{}",
        run.stderr
    );

    // Its own identity, so the request log tells its requests apart from kubectl's.
    let (cli_kubeconfig, cli_user) = cluster.service_account_kubeconfig("default", "cli").await;
    let waiting = tokio::spawn({
        let kubeconfig = cli_kubeconfig.clone();
        async move {
            kekeeper(
                Some(&kubeconfig),
                None,
                &["rotate", "recordings", "--wait", "--timeout", "60s"],
            )
            .await
        }
    });
    let first = rotate_now(&cluster, &cluster.ns(), "recordings")
        .await
        .expect("the first token");
    let token = eventually(
        "a new rotate-now token",
        Duration::from_secs(20),
        || async {
            rotate_now(&cluster, &cluster.ns(), "recordings")
                .await
                .filter(|t| *t != first)
        },
    )
    .await;
    let ready = |status: &str, generation: i64| {
        json!({"observedGeneration": generation, "rotateNowToken": token, "conditions": [
            {"type": "Ready", "status": status, "reason": "KeyPairsActive", "message": "",
             "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    };
    // Honoured but not Ready, then Ready for an older generation: still waiting. The states
    // are written once the CLI watches, so it sees each of them as an event, in order.
    eventually("the CLI's watch", Duration::from_secs(20), || async {
        cluster
            .request_log()
            .iter()
            .any(|r| r.user == cli_user && r.verb == "watch")
            .then_some(())
    })
    .await;
    write_status(&cluster, &cluster.ns(), "recordings", ready("False", 1)).await;
    write_status(&cluster, &cluster.ns(), "recordings", ready("True", 0)).await;
    write_status(&cluster, &cluster.ns(), "recordings", ready("True", 1)).await;
    let run = waiting.await.unwrap();
    assert_eq!(run.code, 0);
    // It reported the older generation's Ready as a reason to wait, so it did not stop there.
    let waited = format!(
        "kekeeper: waiting for {}/recordings: Ready is for generation 0, the resource is at 1",
        cluster.ns()
    );
    assert!(run.stderr.contains(&waited), "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().last(),
        Some(
            format!(
                "{}/recordings rotated and Ready (token {token})",
                cluster.ns()
            )
            .as_str()
        )
    );
    // A watch, not polling: the resource was read once (the get), then listed and watched.
    let verbs: Vec<String> = cluster
        .request_log()
        .iter()
        .filter(|r| r.user == cli_user && r.resource == "recordingkeyconfigs")
        .map(|r| r.verb.clone())
        .collect();
    let count = |verb: &str| verbs.iter().filter(|v| *v == verb).count();
    assert_eq!(count("get"), 1, "{verbs:?}");
    assert_eq!(count("patch"), 1, "{verbs:?}");
    assert!(count("watch") >= 1 && count("list") <= 2, "{verbs:?}");

    // Suspended: requested, not waited for.
    cluster
        .apply_ok(
            &rkc_manifest("recordings", ALIAS, &[ORG_A])
                .replace("  keyPairSpec:", "  suspend: true\n  keyPairSpec:"),
        )
        .await;
    let run = kekeeper(Some(&kubeconfig), None, &["rotate", "recordings", "--wait"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("suspended") && run.stdout.contains("not waiting for it"));
}

fn b64(data: &Value, key: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(data[key].as_str().unwrap())
        .unwrap()
}

/// With the operator and the KMS emulator: `rotate --wait` returns once the operator has
/// rotated, `status` shows it, and `decrypt` without `--key-pair-secret` finds the key pair's
/// Secret in the cluster by its label, and says what to do when it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn with_the_operator_rotate_waits_and_decrypt_finds_the_secret() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let (cluster, operator_kubeconfig, _) = Cluster::with_operator_identity().await;
    let mut operator =
        cluster.start_operator("operator", &operator_kubeconfig, &endpoint, &[], &[]);
    operator.wait_ready().await;
    cluster
        .apply_ok(&rkc_manifest("recordings", &alias, &[ORG_A, ORG_B]))
        .await;
    cluster.wait_ready("recordings").await;
    let kubeconfig = cluster.kubeconfig.clone();

    let run = kekeeper(
        Some(&kubeconfig),
        Some(&endpoint),
        &["rotate", "recordings", "--wait", "--timeout", "2m"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", operator.log_text());
    let token = rotate_now(&cluster, &cluster.ns(), "recordings")
        .await
        .unwrap();
    assert!(run.stdout.contains(&format!(
        "{}/recordings rotated and Ready (token {token})",
        cluster.ns()
    )));
    let stored = rkc(&cluster, &cluster.ns(), "recordings").await;
    assert_eq!(stored["status"]["rotateNowToken"], token.as_str());
    assert_eq!(condition(&stored, "Ready").as_deref(), Some("True"));
    let history = stored["status"]["keyPairHistory"].as_array().unwrap();
    assert_eq!(history[0]["reason"], "RotateNowRequested", "{history:#?}");

    let run = kekeeper(Some(&kubeconfig), None, &["status", "recordings"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("Ready "), "{}", run.stdout);
    assert_eq!(
        run.stdout.matches("RotateNowRequested  active").count(),
        2,
        "{}",
        run.stdout
    );
    let events = run.stdout.split("\nEvents:\n").nth(1).unwrap_or_default();
    assert!(
        !events.trim().is_empty() && !events.contains("  none"),
        "{}",
        run.stdout
    );

    recorders_contract(&cluster, &stored).await;

    // Encrypt with the active key pair of ORG_A (its Secret as a file), decrypt from the cluster.
    let active = stored["status"]["activeKeyPairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["organizationId"] == ORG_A)
        .unwrap()
        .clone();
    let secret_name = active["secretName"].as_str().unwrap();
    let secret = cluster
        .object("", "secrets", &cluster.ns(), secret_name)
        .await
        .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["kekeeper.io/key-pair-id"],
        active["keyPairId"]
    );
    assert!(!b64(&secret["data"], "privateKey.kms").is_empty());
    let secret_file = cluster.path("secret.json");
    std::fs::write(&secret_file, secret.to_string()).unwrap();
    let recording: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(cluster.path("rec"), &recording).unwrap();
    let path = |name: &str| cluster.path(name).to_str().unwrap().to_owned();
    let run = kekeeper(
        None,
        None,
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
    assert_eq!(run.code, 0);
    let before = cluster.request_log().len();
    let run = kekeeper(
        Some(&kubeconfig),
        Some(&endpoint),
        &["decrypt", "-i", &path("rec.enc"), "-o", &path("rec.out")],
    )
    .await;
    assert_eq!(run.code, 0);
    assert_eq!(std::fs::read(path("rec.out")).unwrap(), recording);
    let requests: Vec<(String, String)> = cluster.request_log()[before..]
        .iter()
        // (On the shared real server the admin is every test's: this test's namespace only.)
        .filter(|r| r.user == cluster.admin_user() && r.namespace == cluster.ns())
        .map(|r| (r.verb.clone(), r.resource.clone()))
        .collect();
    assert!(
        requests.iter().all(|(verb, resource)| verb == "list"
            && (resource == "secrets" || resource == "recordingkeyconfigs"))
            && requests.contains(&("list".to_owned(), "secrets".to_owned())),
        "decrypt only lists Secrets (and the RecordingKeyConfig whose status records the \
         pair's newest proven blob): {requests:?}"
    );

    // A Secret stored before the label existed is still found (through the operator's label).
    cluster
        .kubectl_ok(&["label", "secret", secret_name, "kekeeper.io/key-pair-id-"])
        .await;
    let run = kekeeper(
        Some(&kubeconfig),
        Some(&endpoint),
        &["decrypt", "-i", &path("rec.enc"), "-o", &path("rec.out2")],
    )
    .await;
    assert_eq!(run.code, 0);
    assert_eq!(std::fs::read(path("rec.out2")).unwrap(), recording);
    let unlabelled = cluster
        .object("", "secrets", &cluster.ns(), secret_name)
        .await
        .unwrap();
    assert!(unlabelled["metadata"]["labels"]["kekeeper.io/key-pair-id"].is_null());

    // Gone: a clear error naming the label and the namespace, and no output.
    cluster.kubectl_ok(&["delete", "secret", secret_name]).await;
    let run = kekeeper(
        Some(&kubeconfig),
        Some(&endpoint),
        &["decrypt", "-i", &path("rec.enc"), "-o", &path("gone.out")],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(&format!(
            "no key-pair Secret with kekeeper.io/key-pair-id={} in namespace \"{}\"; restore it from backup",
            active["keyPairId"].as_str().unwrap(),
            cluster.ns()
        )),
        "{}",
        run.stderr
    );
    assert!(!cluster.path("gone.out").exists());
}
