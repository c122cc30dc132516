//! The real `SdkKms` against the KMS emulator (LocalStack), started by `scripts/test.sh`.

mod common;

use common::{REGION, admin, create_key, kms_endpoint, sdk_config};
use kekeeper::arn::AliasArn;
use kekeeper::config::ValidatedConfig;
use kekeeper::kms::sdk::SdkKms;
use kekeeper::kms::{EncryptionContext, KeyPairSpec, Kms, KmsErrorKind};
use kekeeper::selftest::{self, KeyProblem, SelfTestStep};

fn config(alias: &AliasArn, spec: KeyPairSpec) -> ValidatedConfig {
    ValidatedConfig {
        alias: alias.clone(),
        organization_ids: vec!["org-a".into()],
        key_pair_spec: spec,
        home_region: alias.region().to_owned(),
        encryption_context_key: "genesys-cloud-organization-id".into(),
        replica_regions: Vec::new(),
    }
}

fn context(org: &str) -> EncryptionContext {
    EncryptionContext {
        key: "genesys-cloud-organization-id".into(),
        organization_id: org.into(),
    }
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn the_self_test_passes_for_every_key_pair_spec() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let kms = SdkKms::new(sdk_config(&endpoint).await);

    let description = kms.describe_key(&key.alias).await.unwrap();
    assert_eq!(description.key_arn, key.key_arn);
    assert_eq!(description.key_state, "Enabled");
    assert_eq!(description.key_spec, "SYMMETRIC_DEFAULT");
    assert_eq!(description.key_usage, "ENCRYPT_DECRYPT");
    assert_eq!(description.key_manager, "CUSTOMER");
    assert_eq!(description.region, REGION);
    assert_eq!(description.multi_region, None);

    for spec in [
        KeyPairSpec::Rsa2048,
        KeyPairSpec::Rsa3072,
        KeyPairSpec::Rsa4096,
    ] {
        let config = config(&key.alias, spec);
        selftest::validate_key(&description, &config).unwrap();
        let passed = selftest::run(&kms, &config, "org-a")
            .await
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(passed.key_pair.kms_key_arn, key.key_arn);
        assert_eq!(passed.key_pair.spec, spec);
        let public =
            aws_lc_rs::rsa::PublicEncryptingKey::from_der(&passed.key_pair.public_key_der).unwrap();
        assert_eq!(public.key_size_bits(), spec.bits());
        let steps: Vec<_> = passed.report.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, SelfTestStep::ALL);
    }
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn a_different_encryption_context_or_key_does_not_decrypt_the_private_key() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let other = create_key(&endpoint, REGION, false).await;
    let kms = SdkKms::new(sdk_config(&endpoint).await);
    let pair = kms
        .generate_key_pair(&key.alias, KeyPairSpec::Rsa2048, &context("org-a"))
        .await
        .unwrap();

    let plaintext = kms
        .decrypt_private_key(
            &pair.kms_key_arn,
            &pair.private_key_ciphertext,
            &context("org-a"),
        )
        .await
        .unwrap();
    assert!(aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&plaintext).is_ok());

    let err = kms
        .decrypt_private_key(
            &pair.kms_key_arn,
            &pair.private_key_ciphertext,
            &context("org-b"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::InvalidCiphertext, "{err}");
    assert_eq!(err.code, "InvalidCiphertextException");
    assert!(err.request_id.is_some(), "{err:?}");

    let err = selftest::verify(&kms, &pair, &context("org-b"))
        .await
        .unwrap_err();
    assert_eq!(err.step, SelfTestStep::DecryptPrivateKey);

    let err = kms
        .decrypt_private_key(
            &other.key_arn,
            &pair.private_key_ciphertext,
            &context("org-a"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::IncorrectKey, "{err}");
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn a_disabled_key_is_classified_as_disabled() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let kms = SdkKms::new(sdk_config(&endpoint).await);
    let pair = kms
        .generate_key_pair(&key.alias, KeyPairSpec::Rsa2048, &context("org-a"))
        .await
        .unwrap();
    admin(&endpoint, REGION)
        .await
        .disable_key()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();

    let failure = selftest::run(&kms, &config(&key.alias, KeyPairSpec::Rsa2048), "org-a")
        .await
        .unwrap_err();
    assert_eq!(failure.step, SelfTestStep::GenerateKeyPair);
    let err = failure.kms_error().unwrap();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (KmsErrorKind::Disabled, "DisabledException")
    );
    assert_eq!(
        err.operation.as_str(),
        "GenerateDataKeyPairWithoutPlaintext"
    );

    let err = kms
        .decrypt_private_key(
            &pair.kms_key_arn,
            &pair.private_key_ciphertext,
            &context("org-a"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Disabled);

    let description = kms.describe_key(&key.alias).await.unwrap();
    assert_eq!(description.key_state, "Disabled");
    // A historical key pair's key, described by its ARN.
    assert_eq!(
        kms.describe_key_arn(&pair.kms_key_arn).await.unwrap(),
        description
    );
    let problem = selftest::validate_key(&description, &config(&key.alias, KeyPairSpec::Rsa2048))
        .unwrap_err();
    assert!(
        matches!(problem, KeyProblem::NotEnabled { .. }),
        "{problem}"
    );
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn a_key_pending_deletion_is_classified_as_invalid_state() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let kms = SdkKms::new(sdk_config(&endpoint).await);
    admin(&endpoint, REGION)
        .await
        .schedule_key_deletion()
        .key_id(&key.key_id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let err = kms
        .generate_key_pair(&key.alias, KeyPairSpec::Rsa2048, &context("org-a"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (KmsErrorKind::InvalidState, "KMSInvalidStateException")
    );
    assert_eq!(
        kms.describe_key(&key.alias).await.unwrap().key_state,
        "PendingDeletion"
    );
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn an_unknown_alias_is_classified_as_not_found() {
    let endpoint = kms_endpoint();
    let kms = SdkKms::new(sdk_config(&endpoint).await);
    let alias = AliasArn::parse(&format!(
        "arn:aws:kms:{REGION}:{}:alias/{}",
        common::ACCOUNT,
        common::unique("missing")
    ))
    .unwrap();
    let err = kms.describe_key(&alias).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (KmsErrorKind::NotFound, "NotFoundException")
    );
    let err = kms
        .generate_key_pair(&alias, KeyPairSpec::Rsa2048, &context("org-a"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::NotFound);
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn a_multi_region_key_needs_its_primary_or_a_replica_in_the_home_region() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, true).await;
    admin(&endpoint, REGION)
        .await
        .replicate_key()
        .key_id(&key.key_id)
        .replica_region("us-west-2")
        .send()
        .await
        .unwrap();
    let kms = SdkKms::new(sdk_config(&endpoint).await);
    let description = kms.describe_key(&key.alias).await.unwrap();
    let mrk = description
        .multi_region
        .clone()
        .expect("multi-region configuration");
    assert_eq!(mrk.primary_region, REGION);
    assert_eq!(mrk.replica_regions, ["us-west-2"]);

    let mut home = config(&key.alias, KeyPairSpec::Rsa2048);
    selftest::validate_key(&description, &home).unwrap();
    home.home_region = "us-west-2".into();
    selftest::validate_key(&description, &home).unwrap();
    home.home_region = "eu-west-1".into();
    let problem = selftest::validate_key(&description, &home).unwrap_err();
    assert!(
        matches!(problem, KeyProblem::NoReplicaInHomeRegion { .. }),
        "{problem}"
    );

    // A single-region key outside the home region is rejected too.
    let single = create_key(&endpoint, REGION, false).await;
    let description = kms.describe_key(&single.alias).await.unwrap();
    let mut elsewhere = config(&single.alias, KeyPairSpec::Rsa2048);
    elsewhere.home_region = "eu-west-1".into();
    let problem = selftest::validate_key(&description, &elsewhere).unwrap_err();
    assert!(
        matches!(problem, KeyProblem::WrongRegion { .. }),
        "{problem}"
    );

    // The replica works through its own region's client: an alias there, and a self-test.
    let west = admin(&endpoint, "us-west-2").await;
    let alias_name = format!("alias/{}", common::unique("kekeeper-replica"));
    west.create_alias()
        .alias_name(&alias_name)
        .target_key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    let west_alias = AliasArn::parse(&format!(
        "arn:aws:kms:us-west-2:{}:{alias_name}",
        common::ACCOUNT
    ))
    .unwrap();
    let passed = selftest::run(&kms, &config(&west_alias, KeyPairSpec::Rsa2048), "org-a")
        .await
        .unwrap();
    assert!(
        passed.key_pair.kms_key_arn.contains(":us-west-2:"),
        "{}",
        passed.key_pair.kms_key_arn
    );
}

/// `SdkKms::from_env` honours the standard `AWS_ENDPOINT_URL_KMS` (scripts/test.sh exports it).
#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn from_env_honours_the_standard_endpoint_variable() {
    let endpoint = kms_endpoint();
    if std::env::var("AWS_ENDPOINT_URL_KMS").ok().as_deref() != Some(endpoint.as_str()) {
        eprintln!("SKIPPED: AWS_ENDPOINT_URL_KMS is not the emulator's endpoint");
        return;
    }
    let key = create_key(&endpoint, REGION, false).await;
    let kms = SdkKms::from_env().await;
    assert_eq!(kms.operator_region(), Some(REGION));
    assert_eq!(
        kms.describe_key(&key.alias).await.unwrap().key_arn,
        key.key_arn
    );
}
