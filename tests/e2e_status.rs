//! End to end: the status never lies, as GitOps tools read it. The real `kekeeper run` against
//! kube-sim and the KMS emulator (behind a fault-injecting proxy), with the kstatus verdict
//! (Flux `wait: true`) asserted through each scenario of the reconcile issue.

mod common;

use std::time::{Duration, Instant};

use common::argocd;
use common::cluster::{Cluster, condition, eventually, rkc_manifest};
use common::kstatus::{KStatus, kstatus, reason};
use common::proxy::FaultProxy;
use common::{create_key, kms_endpoint};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Organisation ids as the default context key wants them (UUIDs).
fn orgs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("3fa85f64-5717-4562-b3fc-{i:012x}"))
        .collect()
}

async fn rkc(cluster: &Cluster, name: &str) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), name)
        .await
}

/// Waits until `name`'s kstatus verdict is `want` and `also` holds; then checks that the
/// shipped Argo CD health check agrees with kstatus on that very status.
async fn wait_for(
    cluster: &Cluster,
    name: &str,
    want: KStatus,
    also: impl Fn(&Value) -> bool,
) -> Value {
    let object = eventually(&format!("{name} {want:?}"), WAIT, || async {
        let object = rkc(cluster, name).await?;
        (kstatus(&object) == want && also(&object)).then_some(object)
    })
    .await;
    let (health, message) = argocd::health(&object);
    let suspended = reason(&object, "Ready").as_deref() == Some("Suspended");
    let expected = match want {
        KStatus::Failed => "Degraded",
        KStatus::InProgress => "Progressing",
        KStatus::Current if suspended => "Suspended",
        KStatus::Current => "Healthy",
    };
    assert_eq!(
        health, expected,
        "Argo CD health of {name} ({message}): {object:#}"
    );
    object
}

fn apply_manifest(name: &str, alias: &str, organizations: &[String], extra: &str) -> String {
    let ids: Vec<&str> = organizations.iter().map(String::as_str).collect();
    format!("{}{extra}", rkc_manifest(name, alias, &ids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn status_tells_the_truth_through_every_scenario() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let proxy = FaultProxy::start(&endpoint).await;
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let args = ["--kms-keypair-rate=5".to_owned()];
    let mut operator =
        cluster.start_operator("operator", &kubeconfig, &proxy.endpoint(), &args, &[]);
    operator.wait_ready().await;

    many_organisations_show_progress_before_and_during_the_work(&cluster, &alias).await;
    typo_alias_is_failed_and_recovers_once_the_alias_exists(&cluster, &endpoint, &key).await;
    spec_change_during_an_outage_is_not_ready(&cluster, &proxy, &alias).await;
    access_denied_is_failed_within_one_backoff_step(&cluster, &proxy, &alias).await;
    disabled_key_is_failed_and_current_again_within_30s_of_enabling(&cluster, &endpoint, &key)
        .await;
    rotate_then_kubectl_wait_waits_for_the_new_pair(&cluster, &alias).await;
    suspend_keeps_observed_generation_current(&cluster).await;
    // The deleted resources' metric series are gone; the live one's are there.
    let deleted = ["many", "typo", "outage", "denied", "disabled", "rotated"];
    let lingering = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                deleted
                    .iter()
                    .any(|name| l.contains(&format!("config=\"{name}\"")))
            })
            .map(str::to_owned)
            .collect()
    };
    let started = Instant::now();
    let metrics = loop {
        let text = operator.get("/metrics").await;
        let left = lingering(&text);
        if left.is_empty() {
            break text;
        }
        assert!(
            started.elapsed() < WAIT,
            "deleted resources' series left: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("kekeeper_ready{"), "{metrics}");
    // The suspended resource says so, for KekeeperNotReady to leave it out (issue 29).
    let paused = format!("{{namespace=\"{}\",config=\"paused\"}}", cluster.ns());
    for line in [
        format!("kekeeper_ready{paused} 0"),
        format!("kekeeper_suspended{paused} 1"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    operator.kill();
}

/// 100 organisations at 5 pairs/s: status (Reconciling, InProgress) within 2 s of the apply,
/// progress while the work runs, then Ready and Current.
async fn many_organisations_show_progress_before_and_during_the_work(
    cluster: &Cluster,
    alias: &str,
) {
    let ids = orgs(100);
    let applied = Instant::now();
    cluster
        .apply_ok(&apply_manifest("many", alias, &ids, ""))
        .await;
    let first = wait_for(cluster, "many", KStatus::InProgress, |o| {
        condition(o, "Reconciling").as_deref() == Some("True")
    })
    .await;
    let first_status_after = applied.elapsed();
    assert!(
        first_status_after < Duration::from_secs(2),
        "first status after {first_status_after:?}: {first:#}"
    );
    assert_eq!(reason(&first, "Ready").as_deref(), Some("Rotating"));
    // Progress shows while the work runs (written at least every 10 s).
    let midway = wait_for(cluster, "many", KStatus::InProgress, |o| {
        let done = o["status"]["activeKeyPairs"].as_array().map_or(0, Vec::len);
        (1..100).contains(&done)
    })
    .await;
    let message = midway["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Reconciling")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("/100 organisations have a key pair under the current spec"),
        "{message}"
    );
    let done = eventually("100 pairs, Ready", Duration::from_secs(120), || async {
        let object = rkc(cluster, "many").await?;
        (kstatus(&object) == KStatus::Current
            && condition(&object, "Ready").as_deref() == Some("True"))
        .then_some(object)
    })
    .await;
    assert_eq!(
        done["status"]["activeKeyPairs"].as_array().unwrap().len(),
        100
    );
    cluster.kubectl_ok(&["delete", "rkc", "many"]).await;
}

/// An alias that does not exist: Failed (Stalled, AliasNotFound), with KmsAvailable and
/// ConfigValid saying so; Current once the alias is created.
async fn typo_alias_is_failed_and_recovers_once_the_alias_exists(
    cluster: &Cluster,
    endpoint: &str,
    key: &common::TestKey,
) {
    let missing = format!("{}-typo", key.alias);
    cluster
        .apply_ok(&apply_manifest("typo", &missing, &orgs(1), ""))
        .await;
    let failed = wait_for(cluster, "typo", KStatus::Failed, |_| true).await;
    assert_eq!(condition(&failed, "Ready").as_deref(), Some("False"));
    assert_eq!(
        reason(&failed, "Stalled").as_deref(),
        Some("KmsKeyUnusable")
    );
    assert_eq!(
        reason(&failed, "KmsAvailable").as_deref(),
        Some("AliasNotFound")
    );
    assert_eq!(
        reason(&failed, "ConfigValid").as_deref(),
        Some("AliasNotFound")
    );
    assert_eq!(failed["status"]["lastKmsError"]["code"], "AliasNotFound");
    // `kubectl wait` does not return Ready for it.
    let waited = cluster
        .kubectl(&["wait", "--for=condition=Ready", "rkc/typo", "--timeout=2s"])
        .await;
    assert!(!waited.success, "kubectl wait returned for a missing alias");

    let admin = common::admin(endpoint, common::REGION).await;
    let name = missing.split(":alias/").nth(1).unwrap();
    admin
        .create_alias()
        .alias_name(format!("alias/{name}"))
        .target_key_id(&key.key_id)
        .send()
        .await
        .expect("CreateAlias");
    let recovered = wait_for(cluster, "typo", KStatus::Current, |o| {
        condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    assert!(
        recovered["status"]["lastKmsError"]["resolvedAt"].is_string(),
        "{recovered:#}"
    );
    cluster.kubectl_ok(&["delete", "rkc", "typo"]).await;
}

/// keyPairSpec changed while GenerateDataKeyPair fails: Ready=False (KmsUnavailable), still
/// InProgress (a transient failure is retried), never Ready with the old pairs; RSA_4096
/// pairs and Ready once KMS answers.
async fn spec_change_during_an_outage_is_not_ready(
    cluster: &Cluster,
    proxy: &FaultProxy,
    alias: &str,
) {
    let ids = orgs(1);
    cluster
        .apply_ok(&apply_manifest("outage", alias, &ids, ""))
        .await;
    cluster.wait_ready("outage").await;
    proxy.fail(
        "GenerateDataKeyPairWithoutPlaintext",
        503,
        "KMSInternalException",
        "injected outage",
    );
    cluster
        .apply_ok(&apply_manifest("outage", alias, &ids, "").replace("RSA_2048", "RSA_4096"))
        .await;
    let during = wait_for(cluster, "outage", KStatus::InProgress, |o| {
        o["status"]["observedGeneration"] == o["metadata"]["generation"]
            && reason(o, "Ready").as_deref() == Some("KmsUnavailable")
    })
    .await;
    assert_eq!(condition(&during, "Stalled").as_deref(), Some("False"));
    assert_eq!(
        during["status"]["activeKeyPairs"][0]["keyPairSpec"],
        "RSA_2048"
    );
    proxy.clear();
    let after = wait_for(cluster, "outage", KStatus::Current, |o| {
        condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        after["status"]["activeKeyPairs"][0]["keyPairSpec"],
        "RSA_4096"
    );
    cluster.kubectl_ok(&["delete", "rkc", "outage"]).await;
}

/// AccessDenied is permanent until the key policy changes: Failed within one backoff step.
async fn access_denied_is_failed_within_one_backoff_step(
    cluster: &Cluster,
    proxy: &FaultProxy,
    alias: &str,
) {
    // The key policy denies everything (DescribeKey may be served from the operator's
    // shared description of this alias, so generation is denied too).
    for operation in ["DescribeKey", "GenerateDataKeyPairWithoutPlaintext"] {
        proxy.fail(
            operation,
            400,
            "AccessDeniedException",
            "injected: not allowed",
        );
    }
    let started = Instant::now();
    cluster
        .apply_ok(&apply_manifest("denied", alias, &orgs(1), ""))
        .await;
    let failed = wait_for(cluster, "denied", KStatus::Failed, |_| true).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        reason(&failed, "Stalled").as_deref(),
        Some("AccessDeniedException")
    );
    assert_eq!(
        reason(&failed, "KmsAvailable").as_deref(),
        Some("AccessDeniedException")
    );
    proxy.clear();
    // Fixed policy: picked up at the next backoff step.
    wait_for(cluster, "denied", KStatus::Current, |o| {
        condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    cluster.kubectl_ok(&["delete", "rkc", "denied"]).await;
}

/// A disabled key seen by DescribeKey (here on a rotate-now): Failed, KmsAvailable=False;
/// Current again within 30 s of enabling it, without waiting for the hourly key check.
async fn disabled_key_is_failed_and_current_again_within_30s_of_enabling(
    cluster: &Cluster,
    endpoint: &str,
    key: &common::TestKey,
) {
    let alias = key.alias.to_string();
    cluster
        .apply_ok(&apply_manifest("disabled", &alias, &orgs(1), ""))
        .await;
    cluster.wait_ready("disabled").await;
    let admin = common::admin(endpoint, common::REGION).await;
    admin
        .disable_key()
        .key_id(&key.key_id)
        .send()
        .await
        .expect("DisableKey");
    cluster
        .kubectl_ok(&[
            "annotate",
            "--overwrite",
            "rkc/disabled",
            "kekeeper.io/rotate-now=after-disable",
        ])
        .await;
    // KMS refuses the generation under the disabled key (DisabledException), and the next
    // look at the key (one backoff step later) shows why.
    let failed = wait_for(cluster, "disabled", KStatus::Failed, |o| {
        reason(o, "KmsAvailable").as_deref() == Some("KmsKeyNotEnabled")
    })
    .await;
    assert_eq!(reason(&failed, "Ready").as_deref(), Some("KmsKeyUnusable"));
    admin
        .enable_key()
        .key_id(&key.key_id)
        .send()
        .await
        .expect("EnableKey");
    let enabled = Instant::now();
    let current = wait_for(cluster, "disabled", KStatus::Current, |o| {
        condition(o, "Ready").as_deref() == Some("True")
    })
    .await;
    assert!(
        enabled.elapsed() < Duration::from_secs(30),
        "{:?}",
        enabled.elapsed()
    );
    assert_eq!(current["status"]["rotateNowToken"], "after-disable");
    assert_eq!(condition(&current, "KmsAvailable").as_deref(), Some("True"));
    cluster.kubectl_ok(&["delete", "rkc", "disabled"]).await;
}

/// `kekeeper rotate NAME && kubectl wait --for=condition=Ready rkc/NAME`, as the README says:
/// when kubectl wait returns, the new pair is there and the token honoured.
async fn rotate_then_kubectl_wait_waits_for_the_new_pair(cluster: &Cluster, alias: &str) {
    cluster
        .apply_ok(&apply_manifest("rotated", alias, &orgs(2), ""))
        .await;
    cluster.wait_ready("rotated").await;
    for round in 0..3 {
        let rotate = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
            .args(["rotate", "rotated", "-n", &cluster.ns()])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
            .await
            .expect("kekeeper rotate");
        assert!(
            rotate.status.success(),
            "{}",
            String::from_utf8_lossy(&rotate.stderr)
        );
        cluster.wait_ready("rotated").await;
        let object = rkc(cluster, "rotated").await.expect("rotated");
        let token = &object["metadata"]["annotations"]["kekeeper.io/rotate-now"];
        assert_eq!(
            &object["status"]["rotateNowToken"], token,
            "round {round}: {object:#}"
        );
        let history = object["status"]["keyPairHistory"].as_array().unwrap();
        assert_eq!(history.len(), 2 * (round + 2), "round {round}: {object:#}");
        assert_eq!(history[0]["reason"], "RotateNowRequested");
    }
    cluster.kubectl_ok(&["delete", "rkc", "rotated"]).await;
}

/// `suspend: true`: observedGeneration follows the generation, Ready=False Suspended,
/// kstatus Current, and no key change.
async fn suspend_keeps_observed_generation_current(cluster: &Cluster) {
    let before = rkc(cluster, "typo").await;
    assert!(before.is_none(), "typo was deleted");
    let key_alias = "arn:aws:kms:us-east-1:000000000000:alias/never-asked";
    cluster
        .apply_ok(&apply_manifest(
            "paused",
            key_alias,
            &orgs(1),
            "  suspend: true\n",
        ))
        .await;
    let paused = wait_for(cluster, "paused", KStatus::Current, |o| {
        o["status"]["observedGeneration"] == o["metadata"]["generation"]
    })
    .await;
    assert_eq!(reason(&paused, "Ready").as_deref(), Some("Suspended"));
    assert!(paused["status"]["activeKeyPairs"].is_null(), "{paused:#}");
    let waited = cluster
        .kubectl(&[
            "wait",
            "--for=jsonpath={.status.observedGeneration}=1",
            "rkc/paused",
            "--timeout=10s",
        ])
        .await;
    assert!(waited.success, "{}", waited.stderr);
}

/// The kstatus checker itself, on the rules of docs/status.md ("Conditions").
#[test]
fn kstatus_checker_follows_the_readme_rules() {
    use serde_json::json;
    let no_status = json!({"metadata": {"generation": 1}});
    assert_eq!(kstatus(&no_status), KStatus::Current);
    let stale = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 1}});
    assert_eq!(kstatus(&stale), KStatus::InProgress);
    let reconciling = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
        "conditions": [{"type": "Reconciling", "status": "True"}]}});
    assert_eq!(kstatus(&reconciling), KStatus::InProgress);
    let stalled = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "Stalled", "status": "True"}]}});
    assert_eq!(kstatus(&stalled), KStatus::Failed);
    let ready = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "Stalled", "status": "False"}]}});
    assert_eq!(kstatus(&ready), KStatus::Current);
}
