//! Multi-Region reads end to end (docs/design.md, "Multi-Region reads"): the operator runs
//! against LocalStack through the fault proxy, which makes the home Region us-east-1 fail by
//! the Region in each request's SigV4 signature, while the key's replica in eu-west-1 answers.
//! The custody check and `kekeeper decrypt` read through the replica and say so; an
//! AccessDenied of the home Region is a verdict and is not retried elsewhere; a key pair is
//! never generated outside the home Region. Runs on kube-sim and the real control plane.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::cli::Run;
use common::cluster::{Cluster, condition, eventually, rkc_manifest};
use common::proxy::{FaultProxy, RegionFault};
use common::{REGION, create_multi_region_key, kms_endpoint};
use serde_json::Value;

const REPLICA: &str = "eu-west-1";
const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const WAIT: Duration = Duration::from_secs(90);

async fn rkc(cluster: &Cluster, name: &str) -> Value {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), name)
        .await
        .expect("the RecordingKeyConfig")
}

fn condition_field(rkc: &Value, type_: &str, field: &str) -> String {
    rkc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .and_then(|c| c[field].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn annotate(cluster: &Cluster, name: &str, annotation: &str) {
    cluster
        .kubectl_ok(&[
            "annotate",
            "--overwrite",
            &format!("rkc/{name}"),
            annotation,
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn custody_and_decrypt_read_through_the_replica_while_the_home_region_is_down() {
    let endpoint = kms_endpoint();
    let key = create_multi_region_key(&endpoint, REGION, REPLICA).await;
    let alias = key.alias.to_string();
    let proxy = FaultProxy::start(&endpoint).await;
    let (cluster, operator_kubeconfig, _) = Cluster::with_operator_identity().await;
    // One attempt per call: the home Region's failure is seen at once, not after the SDK's
    // retries (which it makes in production, before turning to the replica).
    let env = [("AWS_MAX_ATTEMPTS".to_owned(), "1".to_owned())];
    // The key check every 2 s: once the home Region is down it fails (DescribeKey is the home
    // Region's), which must not stop the custody check's reads through the replica.
    let args = ["--kms-key-check-interval=2s".to_owned()];
    let mut operator = cluster.start_operator(
        "operator",
        &operator_kubeconfig,
        &proxy.endpoint(),
        &args,
        &env,
    );
    operator.wait_ready().await;
    cluster
        .apply_ok(&rkc_manifest("regions", &alias, &[ORG]))
        .await;
    cluster.wait_ready("regions").await;
    let ready = rkc(&cluster, "regions").await;
    let active = ready["status"]["activeKeyPairs"][0].clone();
    assert_eq!(active["kmsKeyArn"], key.key_arn.as_str());
    assert!(ready["status"]["lastKeyVerifyReplicaRead"].is_null());
    // The new pair's self-test decrypted it through the replica too.
    let last_test = ready["status"]["lastTest"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last_test.ends_with("; replicas: eu-west-1 ok"),
        "{last_test}"
    );
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), 1);

    // The home Region unreachable: the key check fails (KmsAvailable False, Ready stays: no
    // work waits), and the custody check asked for now reads through the replica.
    proxy.fail_region(REGION, RegionFault::Reset);
    let down = eventually("the key check failing in the home Region", WAIT, || async {
        let object = rkc(&cluster, "regions").await;
        (condition(&object, "KmsAvailable").as_deref() == Some("False")).then_some(object)
    })
    .await;
    assert_eq!(
        (
            condition_field(&down, "KmsAvailable", "reason").as_str(),
            down["status"]["lastKmsError"]["operation"].as_str()
        ),
        ("NetworkError", Some("DescribeKey")),
        "{:#}",
        down["status"]
    );
    assert_eq!(condition(&down, "Ready").as_deref(), Some("True"));
    annotate(
        &cluster,
        "regions",
        "kekeeper.io/verify-now=through-replica",
    )
    .await;
    let checked = eventually("the custody check through the replica", WAIT, || async {
        let object = rkc(&cluster, "regions").await;
        (object["status"]["verifyNowToken"] == "through-replica").then_some(object)
    })
    .await;
    eprintln!(
        "status after the check through the replica:\n{:#}",
        checked["status"]
    );
    let read = &checked["status"]["lastKeyVerifyReplicaRead"];
    assert_eq!(
        (&read["region"], &read["homeRegion"], &read["homeError"]),
        (
            &Value::from(REPLICA),
            &Value::from(REGION),
            &Value::from("NetworkError")
        ),
        "{:#}",
        checked["status"]
    );
    assert_eq!(
        condition(&checked, "KeyPairIntegrity").as_deref(),
        Some("True")
    );
    let message = condition_field(&checked, "KeyPairIntegrity", "message");
    assert!(
        message.ends_with(
            ", through replica in eu-west-1: the home Region us-east-1 failed with NetworkError"
        ),
        "{message}"
    );
    assert_eq!(condition(&checked, "Ready").as_deref(), Some("True"));
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), 2);
    assert_eq!(proxy.seen_in(REPLICA, "DescribeKey"), 0);
    // `kekeeper status` names it on the custody line.
    let ns = cluster.ns();
    let run = kekeeper(
        Some(&cluster.kubeconfig),
        &proxy.endpoint(),
        &["status", "regions", "-n", &ns],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let custody = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Custody check:"))
        .unwrap_or_default();
    assert!(
        custody.contains(
            ", through replica in eu-west-1: the home Region us-east-1 failed with NetworkError; KeyPairIntegrity True Verified"
        ),
        "{}",
        run.stdout
    );
    let metrics = operator.get("/metrics").await;
    assert!(
        metrics.contains(r#"kekeeper_kms_replica_reads_total{region="eu-west-1"} 1"#),
        "{metrics}"
    );

    // `kekeeper decrypt` from the cluster, through the replica, says which Region answered.
    let secret = cluster
        .object(
            "",
            "secrets",
            &cluster.ns(),
            active["secretName"].as_str().unwrap(),
        )
        .await
        .unwrap();
    std::fs::write(cluster.path("secret.json"), secret.to_string()).unwrap();
    let recording: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(cluster.path("rec"), &recording).unwrap();
    let path = |name: &str| cluster.path(name).to_str().unwrap().to_owned();
    let run = kekeeper(
        None,
        &proxy.endpoint(),
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
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = kekeeper(
        Some(&cluster.kubeconfig),
        &proxy.endpoint(),
        &[
            "decrypt",
            "-n",
            &ns,
            "-i",
            &path("rec.enc"),
            "-o",
            &path("rec.out"),
            "--replica-region",
            REPLICA,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "KMS answered through replica in eu-west-1: the home Region us-east-1 failed with NetworkError"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(path("rec.out")).unwrap(), recording);

    // Generation stays in the home Region: a rotation asked for now fails honestly, and the
    // active pair stays.
    annotate(
        &cluster,
        "regions",
        "kekeeper.io/rotate-now=while-home-is-down",
    )
    .await;
    let blocked = eventually(
        "the rotation refused while the home Region is down",
        WAIT,
        || async {
            let object = rkc(&cluster, "regions").await;
            (object["status"]["failedRotateNowToken"] == "while-home-is-down").then_some(object)
        },
    )
    .await;
    assert_eq!(
        condition(&blocked, "KmsAvailable").as_deref(),
        Some("False")
    );
    assert_eq!(
        condition_field(&blocked, "KmsAvailable", "reason"),
        "NetworkError",
        "{:#}",
        blocked["status"]
    );
    assert_eq!(condition(&blocked, "Ready").as_deref(), Some("False"));
    assert_eq!(
        blocked["status"]["activeKeyPairs"][0]["keyPairId"],
        active["keyPairId"]
    );
    assert_eq!(
        proxy.seen_in(REPLICA, "GenerateDataKeyPairWithoutPlaintext"),
        0
    );
    assert_eq!(proxy.seen_in(REPLICA, "DescribeKey"), 0);

    // The home Region back: the rotation is done there.
    proxy.clear();
    let rotated = eventually("the rotation in the home Region", WAIT, || async {
        let object = rkc(&cluster, "regions").await;
        (object["status"]["rotateNowToken"] == "while-home-is-down"
            && condition(&object, "Ready").as_deref() == Some("True"))
        .then_some(object)
    })
    .await;
    assert_ne!(
        rotated["status"]["activeKeyPairs"][0]["keyPairId"],
        active["keyPairId"]
    );
    assert_eq!(
        proxy.seen_in(REPLICA, "GenerateDataKeyPairWithoutPlaintext"),
        0
    );

    // AccessDenied from the home Region is a verdict: the custody check stops there, and
    // the replica is not asked.
    let replica_reads = proxy.seen_in(REPLICA, "Decrypt");
    proxy.fail_region_with(
        REGION,
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::000000000000:role/kekeeper is not authorized to perform: kms:Decrypt",
    );
    annotate(&cluster, "regions", "kekeeper.io/verify-now=denied").await;
    let denied = eventually(
        "the custody check refused by the home Region",
        WAIT,
        || async {
            let object = rkc(&cluster, "regions").await;
            (object["status"]["lastKmsError"]["code"] == "AccessDeniedException"
                && object["status"]["lastKmsError"]["operation"] == "Decrypt")
                .then_some(object)
        },
    )
    .await;
    assert_eq!(condition(&denied, "KmsAvailable").as_deref(), Some("False"));
    assert_ne!(denied["status"]["verifyNowToken"], "denied");
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), replica_reads);
    proxy.clear();
    operator.terminate();
}

/// The CLI with the emulator's credentials, one attempt per KMS call, and the kubeconfig if
/// given.
async fn kekeeper(kubeconfig: Option<&Path>, kms: &str, args: &[&str]) -> Run {
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
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_ENDPOINT_URL_KMS", kms)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = kubeconfig {
        command.env("KUBECONFIG", path);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("kekeeper {args:?} timed out"))
        .expect("kekeeper");
    Run::of(args, &output)
}
