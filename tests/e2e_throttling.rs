//! The real `kekeeper run` against a KMS that throttles like AWS: the fault proxy in front of
//! LocalStack answers `ThrottlingException` once a key pair spec's documented quota is spent
//! (RSA_2048 1/s, RSA_3072 0.5/s per account and Region). With the default pace the operator
//! stays within every quota; forced above one, it is throttled, says so in `KmsAvailable`, and
//! still converges without losing a pair KMS made (docs/design.md, "Rate limits").

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, condition, eventually, rkc_manifest};
use common::proxy::FaultProxy;
use common::{create_key, kms_endpoint};
use serde_json::Value;

/// Three resources of four organisations each, per spec: the bucket is shared by resources.
const RESOURCES: usize = 3;
const ORGANISATIONS: usize = 4;

fn manifests(prefix: &str, spec: &str, alias: &str) -> (Vec<String>, String) {
    let names: Vec<String> = (0..RESOURCES).map(|r| format!("{prefix}-{r}")).collect();
    let docs: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(r, name)| {
            let orgs: Vec<String> = (0..ORGANISATIONS)
                .map(|o| format!("3fa85f64-5717-4562-b3fc-{:012x}", r * 100 + o))
                .collect();
            let ids: Vec<&str> = orgs.iter().map(String::as_str).collect();
            rkc_manifest(name, alias, &ids).replace("RSA_2048", spec)
        })
        .collect();
    (names, docs.join("---\n"))
}

async fn rkc(cluster: &Cluster, name: &str) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), name)
        .await
}

fn message_of(rkc: &Value, type_: &str) -> Option<(String, String)> {
    rkc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

async fn all_ready(cluster: &Cluster, names: &[String]) -> bool {
    for name in names {
        let Some(object) = rkc(cluster, name).await else {
            return false;
        };
        let current = object["status"]["observedGeneration"] == object["metadata"]["generation"];
        if !current
            || condition(&object, "Ready").as_deref() != Some("True")
            || condition(&object, "KmsAvailable").as_deref() != Some("True")
        {
            return false;
        }
    }
    true
}

/// The operator's `kekeeper_kms_key_pairs_queued{spec="SPEC"}`, if exported.
fn queued_gauge(metrics: &str, spec: &str) -> Option<i64> {
    let series = format!("kekeeper_kms_key_pairs_queued{{spec=\"{spec}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

/// Default flags: 12 RSA_3072 and 12 RSA_2048 pairs, all at once, with 0 throttled calls, at
/// (nearly) the configured pace; while they wait, `Reconciling` says how long is left and the
/// queue gauge counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn the_default_pace_stays_within_aws_quotas() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let proxy = FaultProxy::start(&endpoint).await;
    proxy.throttle_key_pairs_like_aws();
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let mut operator = cluster.start_operator("operator", &kubeconfig, &proxy.endpoint(), &[], &[]);
    operator.wait_ready().await;

    let (rsa3072, docs3072) = manifests("slow", "RSA_3072", &alias);
    let (rsa2048, docs2048) = manifests("fast", "RSA_2048", &alias);
    let started = Instant::now();
    cluster
        .apply_ok(&format!("{docs3072}---\n{docs2048}"))
        .await;

    // While the RSA_3072 pairs wait: the queue in the gauge, and an estimate in Reconciling.
    let queued = eventually(
        "RSA_3072 pairs in the queue gauge",
        Duration::from_secs(30),
        || async { queued_gauge(&operator.get("/metrics").await, "RSA_3072").filter(|n| *n > 0) },
    )
    .await;
    assert!(queued <= 12, "{queued} RSA_3072 pairs queued, of 12");
    let (reason, message) = eventually(
        "an estimate in an RSA_3072 resource's Reconciling message",
        Duration::from_secs(60),
        || async {
            for name in &rsa3072 {
                let (reason, message) = message_of(&rkc(&cluster, name).await?, "Reconciling")?;
                if message.contains("left at 0.45 RSA_3072 pairs/s") {
                    return Some((reason, message));
                }
            }
            None
        },
    )
    .await;
    assert_eq!(reason, "Rotating", "{message}");
    assert!(
        message.contains("organisations have a key pair")
            && message.contains("queued by running reconciles"),
        "{message}"
    );

    let names: Vec<String> = rsa3072.iter().chain(&rsa2048).cloned().collect();
    eventually("every resource Ready", Duration::from_secs(120), || async {
        all_ready(&cluster, &names).await.then_some(())
    })
    .await;
    let took = started.elapsed();
    for spec in ["RSA_3072", "RSA_2048"] {
        assert_eq!(proxy.throttled(spec), 0, "{spec} requests throttled");
        let (accepted, _) = proxy.accepted(spec);
        assert_eq!(
            accepted,
            RESOURCES * ORGANISATIONS,
            "{spec} pairs asked of KMS"
        );
    }
    // At the pace, not much slower: 11 intervals of 1/0.45 s between the first and the last
    // RSA_3072 pair (24.4 s), with room for a busy test machine.
    let (_, span) = proxy.accepted("RSA_3072");
    let paced = 11.0 / 0.45;
    let span = span.as_secs_f64();
    eprintln!(
        "12 RSA_3072 pairs in {span:.1} s (paced: {paced:.1} s, {:.0} % of the pace); everything Ready after {took:?}",
        100.0 * paced / span
    );
    assert!(span >= 11.0 / 0.5, "faster than AWS's quota: {span:.1} s");
    assert!(span <= paced * 1.25, "well below the pace: {span:.1} s");
    let metrics = operator.get("/metrics").await;
    assert_eq!(queued_gauge(&metrics, "RSA_3072"), Some(0), "{metrics}");
    operator.kill();
}

/// `--kms-keypair-rate RSA_3072=2`, four times AWS's quota: KMS throttles, `KmsAvailable`
/// says ThrottlingException while it happens, and the operator still converges (backoff), with
/// exactly one pair asked of KMS per organisation that got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn a_pace_above_the_quota_is_throttled_and_still_converges() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, common::REGION, false).await;
    let alias = key.alias.to_string();
    let proxy = FaultProxy::start(&endpoint).await;
    proxy.throttle_key_pairs_like_aws();
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let args = ["--kms-keypair-rate=RSA_3072=2".to_owned()];
    let mut operator =
        cluster.start_operator("operator", &kubeconfig, &proxy.endpoint(), &args, &[]);
    operator.wait_ready().await;

    let (names, docs) = manifests("forced", "RSA_3072", &alias);
    cluster.apply_ok(&docs).await;
    let message = eventually(
        "KmsAvailable=False with ThrottlingException",
        Duration::from_secs(120),
        || async {
            for name in &names {
                let object = rkc(&cluster, name).await?;
                if let Some((reason, message)) = message_of(&object, "KmsAvailable")
                    && condition(&object, "KmsAvailable").as_deref() == Some("False")
                    && reason == "ThrottlingException"
                {
                    return Some(message);
                }
            }
            None
        },
    )
    .await;
    assert!(message.contains("Rate exceeded"), "{message}");
    eventually(
        "every resource Ready with KmsAvailable=True",
        Duration::from_secs(300),
        || async { all_ready(&cluster, &names).await.then_some(()) },
    )
    .await;
    let throttled = proxy.throttled("RSA_3072");
    let (accepted, _) = proxy.accepted("RSA_3072");
    eprintln!("forced pace: {throttled} RSA_3072 requests throttled, {accepted} let through");
    assert!(
        throttled > 0,
        "KMS never throttled a pace four times its quota"
    );
    assert_eq!(
        accepted,
        RESOURCES * ORGANISATIONS,
        "one pair asked of KMS per organisation: none thrown away"
    );
    operator.kill();
}
