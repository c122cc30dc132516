//! Multi-Region reads on LocalStack (docs/design.md, "Multi-Region reads"): a multi-Region key
//! made in us-east-1 and replicated to eu-west-1; the fault proxy makes the home Region fail by
//! the Region in each request's SigV4 signature (LocalStack serves every Region on one
//! endpoint). Decrypt turns to the replica when the home Region is unreachable, unavailable or
//! throttling, never on a verdict; generation stays in the home Region; the Test button and
//! `kekeeper decrypt` read through the replica and say so.

mod common;

use std::process::Stdio;

use common::cli::Run;
use common::proxy::{FaultProxy, RegionFault};
use common::{REGION, TestKey, create_multi_region_key, kms_endpoint, manifest, sdk_config};
use kekeeper::config::ValidatedConfig;
use kekeeper::kms::sdk::SdkKms;
use kekeeper::kms::{EncryptionContext, KeyPairSpec, Kms, KmsErrorKind};
use kekeeper::selftest::{self, SelfTestStep};

const REPLICA: &str = "eu-west-1";
const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

fn config(alias: &kekeeper::arn::AliasArn, replica_regions: &[&str]) -> ValidatedConfig {
    ValidatedConfig {
        alias: alias.clone(),
        organization_ids: vec![ORG.into()],
        key_pair_spec: KeyPairSpec::Rsa2048,
        home_region: REGION.into(),
        encryption_context_key: "genesys-cloud-organization-id".into(),
        replica_regions: replica_regions.iter().map(|r| (*r).to_owned()).collect(),
    }
}

fn context() -> EncryptionContext {
    EncryptionContext {
        key: "genesys-cloud-organization-id".into(),
        organization_id: ORG.into(),
    }
}

/// A multi-Region key with an alias in us-east-1 and its replica in eu-west-1.
async fn multi_region_key(endpoint: &str) -> TestKey {
    create_multi_region_key(endpoint, REGION, REPLICA).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn decrypt_falls_back_to_the_replica_only_when_the_home_region_fails() {
    let endpoint = kms_endpoint();
    let key = multi_region_key(&endpoint).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let kms = SdkKms::new(sdk_config(&proxy.endpoint()).await);

    let description = kms.describe_key(&key.alias).await.unwrap();
    let mrk = description.multi_region.clone().expect("multi-Region");
    assert_eq!(
        (mrk.primary_region.as_str(), mrk.replica_regions.as_slice()),
        (REGION, &[REPLICA.to_owned()][..])
    );
    let pair = kms
        .generate_key_pair(&key.alias, KeyPairSpec::Rsa2048, &context())
        .await
        .unwrap();
    assert_eq!(pair.kms_key_arn, key.key_arn);
    let blob = &pair.private_key_ciphertext;
    let read = |kms: SdkKms, listed: Vec<String>| {
        let arn = key.key_arn.clone();
        async move {
            kms.decrypt_private_key_in(&arn, blob, &context(), &listed)
                .await
        }
    };

    // The home Region answers while it can; the replica is not asked.
    let answer = read(kms.clone(), Vec::new()).await.unwrap();
    assert_eq!(
        (answer.region.as_str(), answer.home_failure.is_none()),
        (REGION, true)
    );
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), 0);

    // Unreachable (connection reset), unavailable (503) or throttling: the replica answers,
    // with the same private key.
    let faults = [
        (RegionFault::Reset, KmsErrorKind::Network, "NetworkError"),
        (
            error(503, "ServiceUnavailableException"),
            KmsErrorKind::KeyUnavailable,
            "ServiceUnavailableException",
        ),
        (
            error(400, "ThrottlingException"),
            KmsErrorKind::Throttling,
            "ThrottlingException",
        ),
    ];
    for (n, (fault, kind, code)) in faults.into_iter().enumerate() {
        proxy.fail_region(REGION, fault);
        let answer = read(kms.clone(), Vec::new()).await.unwrap();
        assert_eq!(answer.region, REPLICA, "{code}");
        let failure = answer.home_failure.as_ref().unwrap();
        assert_eq!((failure.kind, failure.code.as_str()), (kind, code));
        assert_eq!(
            answer.replica_read(&key.key_arn).unwrap().to_string(),
            format!("through replica in {REPLICA}: the home Region {REGION} failed with {code}")
        );
        assert_eq!(*answer.plaintext, *read_home(&endpoint, &key, blob).await);
        assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), n + 1);
    }

    // A verdict of the home Region is final: AccessDenied is not retried elsewhere.
    proxy.fail_region_with(
        REGION,
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::000000000000:role/kekeeper is not authorized to perform: kms:Decrypt",
    );
    let err = read(kms.clone(), Vec::new()).await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::AccessDenied);
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), 3);

    // Generation stays in the home Region: with it down, no key pair is made anywhere.
    proxy.fail_region(REGION, RegionFault::Reset);
    let err = kms
        .generate_key_pair(&key.alias, KeyPairSpec::Rsa2048, &context())
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Network);
    assert_eq!(
        proxy.seen_in(REPLICA, "GenerateDataKeyPairWithoutPlaintext"),
        0
    );

    // A process that never described the key (a restart while the home Region is down) knows
    // the replicas only from the spec.
    let fresh = SdkKms::new(sdk_config(&proxy.endpoint()).await);
    let err = read(fresh.clone(), Vec::new()).await.unwrap_err();
    assert_eq!(err.code, "NetworkError");
    let answer = read(fresh, vec![REPLICA.to_owned()]).await.unwrap();
    assert_eq!(answer.region, REPLICA);
}

fn error(status: u16, code: &str) -> RegionFault {
    RegionFault::Error(common::proxy::Fault {
        status,
        code: code.to_owned(),
        message: format!("injected by the fault proxy for {REGION}"),
        body_contains: None,
    })
}

/// The private key as the home Region decrypts it, straight from the emulator.
async fn read_home(endpoint: &str, key: &TestKey, blob: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    SdkKms::new(sdk_config(endpoint).await)
        .decrypt_private_key(&key.key_arn, blob, &context())
        .await
        .unwrap()
}

/// The Test button round-trips the test blob through each replica; a replica whose KMS
/// refuses fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn the_test_button_checks_each_replica() {
    let endpoint = kms_endpoint();
    let key = multi_region_key(&endpoint).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let kms = SdkKms::new(sdk_config(&proxy.endpoint()).await);
    let config = config(&key.alias, &[]);
    let description = kms.describe_key(&key.alias).await.unwrap();
    let regions = selftest::replica_regions(&config, &description);
    assert_eq!(regions, [REPLICA]);
    let passed = selftest::run(&kms, &config, ORG).await.unwrap();
    let checks = selftest::check_replicas(&kms, &passed.key_pair, &context(), &regions).await;
    let report = checks[0].result.as_ref().unwrap();
    assert_eq!(
        report.kms_key_arn.as_deref(),
        Some(key.key_arn.replace(REGION, REPLICA).as_str())
    );
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), 1);

    proxy.fail_region_with(REPLICA, 400, "AccessDeniedException", "not authorized");
    let checks = selftest::check_replicas(&kms, &passed.key_pair, &context(), &regions).await;
    let failure = checks[0].result.as_ref().unwrap_err();
    assert_eq!(failure.step, SelfTestStep::DecryptPrivateKey);
    assert_eq!(failure.kms_error().unwrap().code, "AccessDeniedException");

    // The command: one line per replica, and the whole test fails with it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, manifest(key.alias.as_str(), &[ORG], "RSA_2048")).unwrap();
    let file = file.to_str().unwrap();
    proxy.clear();
    let run = kekeeper(&proxy.endpoint(), &["test", "-f", file]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("multi-region (primary us-east-1, replicas [eu-west-1])"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("  ok    replica eu-west-1: decrypt through it (KMS Decrypt)"),
        "{}",
        run.stdout
    );
    proxy.fail_region_with(REPLICA, 400, "AccessDeniedException", "not authorized");
    let run = kekeeper(&proxy.endpoint(), &["test", "-f", file]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "  FAIL  replica eu-west-1: decrypt the private key (KMS Decrypt)\n        Decrypt: AccessDeniedException: not authorized"
        ),
        "{}",
        run.stdout
    );
}

/// `kekeeper decrypt` with the home Region unreachable: through `--replica-region`, and it
/// says which Region answered; without it, the error says how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn kekeeper_decrypt_reads_through_the_replica_and_says_so() {
    let endpoint = kms_endpoint();
    let key = multi_region_key(&endpoint).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(
        path("c.yaml"),
        manifest(key.alias.as_str(), &[ORG], "RSA_2048"),
    )
    .unwrap();
    let run = kekeeper(
        &endpoint,
        &[
            "keypair",
            "generate",
            "-f",
            &path("c.yaml"),
            "--org",
            ORG,
            "-o",
            &path("pair.yaml"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let recording: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(path("rec"), &recording).unwrap();
    let run = kekeeper(
        &endpoint,
        &[
            "encrypt",
            "--key-pair-secret",
            &path("pair.yaml"),
            "-i",
            &path("rec"),
            "-o",
            &path("rec.enc"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    proxy.fail_region(REGION, RegionFault::Reset);
    let decrypt = |extra: &'static [&'static str]| {
        let mut args = vec![
            "decrypt".to_owned(),
            "--key-pair-secret".to_owned(),
            path("pair.yaml"),
            "-i".to_owned(),
            path("rec.enc"),
            "-o".to_owned(),
            path("rec.out"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let endpoint = proxy.endpoint();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kekeeper(&endpoint, &args).await
        }
    };
    let run = decrypt(&[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("NetworkError"), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "the KMS key is multi-Region: name a replica's Region with --replica-region to read through it"
        ),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("rec.out").exists());

    let run = decrypt(&["--replica-region", REPLICA]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "KMS answered through replica in eu-west-1: the home Region us-east-1 failed with NetworkError"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(path("rec.out")).unwrap(), recording);

    // AccessDenied in the home Region is a verdict: no replica is asked.
    let seen = proxy.seen_in(REPLICA, "Decrypt");
    proxy.fail_region_with(REGION, 400, "AccessDeniedException", "not authorized");
    let run = decrypt(&["--replica-region", REPLICA]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("AccessDeniedException"),
        "{}",
        run.stderr
    );
    assert_eq!(proxy.seen_in(REPLICA, "Decrypt"), seen);

    let run = decrypt(&["--replica-region", "eu-west"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--replica-region \"eu-west\" is not a Region name like eu-west-1"),
        "{}",
        run.stderr
    );
}

/// The CLI against `endpoint`, with the emulator's credentials and the SDK's retries off, so
/// a failed Region's answer is the one asserted.
async fn kekeeper(endpoint: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("AWS_ENDPOINT_URL_KMS", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("kekeeper output");
    Run::of(args, &output)
}
