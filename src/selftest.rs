//! The self-test (the Test button): generate a key pair, encrypt test data with its public key,
//! KMS-decrypt the private key with the same context, decrypt, compare.
//!
//! It runs the recording envelope's own code path, so a pass means recordings encrypted with
//! this public key can be decrypted through KMS (docs/design.md#decisions).

use std::fmt;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::config::ValidatedConfig;
use crate::envelope;
use crate::kms::{
    EncryptionContext, GeneratedKeyPair, KeyDescription, Kms, KmsError, is_multi_region_key,
    region_of, replica_arn,
};

/// Test data spans several envelope segments (64 KiB each) and ends in a partial one.
pub const TEST_DATA_LEN: usize = 150 * 1024;

/// The key pair id written into the test envelope's header; the pair has no id of its own yet.
const SELF_TEST_KEY_PAIR_ID: &str = "kekeeper-self-test";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SelfTestStep {
    /// KMS `GenerateDataKeyPairWithoutPlaintext`.
    GenerateKeyPair,
    /// Envelope-encrypt random test data with the public key.
    EncryptTestData,
    /// KMS `Decrypt` of the private key blob with the same encryption context.
    DecryptPrivateKey,
    /// Envelope-decrypt the test data with the private key.
    DecryptTestData,
    /// The decrypted data equals the original.
    Compare,
}

impl SelfTestStep {
    pub const ALL: [SelfTestStep; 5] = [
        SelfTestStep::GenerateKeyPair,
        SelfTestStep::EncryptTestData,
        SelfTestStep::DecryptPrivateKey,
        SelfTestStep::DecryptTestData,
        SelfTestStep::Compare,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SelfTestStep::GenerateKeyPair => "GenerateKeyPair",
            SelfTestStep::EncryptTestData => "EncryptTestData",
            SelfTestStep::DecryptPrivateKey => "DecryptPrivateKey",
            SelfTestStep::DecryptTestData => "DecryptTestData",
            SelfTestStep::Compare => "Compare",
        }
    }

    /// What the step does, for people.
    pub fn description(self) -> &'static str {
        match self {
            SelfTestStep::GenerateKeyPair => {
                "generate key pair (KMS GenerateDataKeyPairWithoutPlaintext)"
            }
            SelfTestStep::EncryptTestData => "encrypt test data with the public key",
            SelfTestStep::DecryptPrivateKey => "decrypt the private key (KMS Decrypt)",
            SelfTestStep::DecryptTestData => "decrypt the test data with the private key",
            SelfTestStep::Compare => "compare with the original",
        }
    }
}

impl fmt::Display for SelfTestStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepTiming {
    pub step: SelfTestStep,
    pub duration: Duration,
}

/// What ran and how long each step took; on failure, the steps that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfTestReport {
    pub organization_id: String,
    /// The KMS key the alias resolved to (known once the key pair was generated).
    pub kms_key_arn: Option<String>,
    pub steps: Vec<StepTiming>,
}

impl SelfTestReport {
    fn new(organization_id: &str) -> Self {
        SelfTestReport {
            organization_id: organization_id.to_owned(),
            kms_key_arn: None,
            steps: Vec::new(),
        }
    }

    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    pub fn duration_of(&self, step: SelfTestStep) -> Option<Duration> {
        self.steps
            .iter()
            .find(|s| s.step == step)
            .map(|s| s.duration)
    }
}

/// A passed self-test: the key pair (safe to store and make active) and the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfTestPassed {
    pub key_pair: GeneratedKeyPair,
    pub report: SelfTestReport,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelfTestCause {
    #[error("{0}")]
    Kms(KmsError),
    /// An envelope or comparison failure; never carries key material.
    #[error("{0}")]
    Crypto(String),
}

/// The step that failed, why, and the timings of the steps before it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("self-test failed at {step}: {cause}")]
pub struct SelfTestFailure {
    pub step: SelfTestStep,
    pub cause: SelfTestCause,
    pub report: SelfTestReport,
}

impl SelfTestFailure {
    pub fn kms_error(&self) -> Option<&KmsError> {
        match &self.cause {
            SelfTestCause::Kms(err) => Some(err),
            SelfTestCause::Crypto(_) => None,
        }
    }
}

/// Generates a key pair for the organisation and proves it round-trips through KMS. Only a
/// pair that passed may become active.
pub async fn run<K: Kms>(
    kms: &K,
    config: &ValidatedConfig,
    organization_id: &str,
) -> Result<SelfTestPassed, SelfTestFailure> {
    let context = config.context_for(organization_id);
    let mut report = SelfTestReport::new(organization_id);

    let started = Instant::now();
    let generated = kms
        .generate_key_pair(&config.alias, config.key_pair_spec, &context)
        .await
        .map_err(SelfTestCause::Kms);
    let generated = match report.timed(SelfTestStep::GenerateKeyPair, started, generated) {
        Ok(pair) => pair,
        Err(failed) => return Err(failed.with(report)),
    };
    report.kms_key_arn = Some(generated.kms_key_arn.clone());

    let report = verify_into(kms, &generated, &context, report).await?;
    Ok(SelfTestPassed {
        key_pair: generated,
        report,
    })
}

/// The self-test minus generation, for a key pair that already exists (e.g. one read back from
/// its Secret): encrypt, KMS-decrypt the private key, decrypt, compare.
pub async fn verify<K: Kms>(
    kms: &K,
    key_pair: &GeneratedKeyPair,
    context: &EncryptionContext,
) -> Result<SelfTestReport, SelfTestFailure> {
    let mut report = SelfTestReport::new(&context.organization_id);
    report.kms_key_arn = Some(key_pair.kms_key_arn.clone());
    verify_into(kms, key_pair, context, report).await
}

/// The round trip of a key pair's blob through one replica of a multi-Region key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaCheck {
    pub region: String,
    /// The steps after generation (encrypt, Decrypt through the replica, decrypt, compare).
    pub result: Result<SelfTestReport, SelfTestFailure>,
}

/// The Regions of a multi-Region key's other copies that the Test button checks: the spec's
/// `kmsReplicaRegions`, then the primary's and replicas' Regions DescribeKey named, never the
/// key's own Region, none twice (docs/design.md, "Multi-Region reads"). None for a
/// single-Region key.
pub fn replica_regions(config: &ValidatedConfig, description: &KeyDescription) -> Vec<String> {
    if description.multi_region.is_none() && !is_multi_region_key(&description.key_arn) {
        return Vec::new();
    }
    let described = description
        .multi_region
        .iter()
        .flat_map(|m| std::iter::once(&m.primary_region).chain(m.replica_regions.iter()));
    let home = region_of(&description.key_arn);
    let mut regions: Vec<String> = Vec::new();
    for region in config.replica_regions.iter().chain(described) {
        if !region.is_empty() && region != home && !regions.contains(region) {
            regions.push(region.clone());
        }
    }
    regions
}

/// Decrypts the pair's blob through each replica in `regions` (the same key ARN with the
/// Region changed) and round-trips test data with it, so a replica that would not answer when
/// the home Region fails is found now, not then.
pub async fn check_replicas<K: Kms>(
    kms: &K,
    key_pair: &GeneratedKeyPair,
    context: &EncryptionContext,
    regions: &[String],
) -> Vec<ReplicaCheck> {
    let mut checks = Vec::with_capacity(regions.len());
    for region in regions {
        let replica = GeneratedKeyPair {
            kms_key_arn: replica_arn(&key_pair.kms_key_arn, region),
            ..key_pair.clone()
        };
        checks.push(ReplicaCheck {
            region: region.clone(),
            result: verify(kms, &replica, context).await,
        });
    }
    checks
}

/// A step that failed, before the report of the steps that passed is attached.
struct Failed {
    step: SelfTestStep,
    cause: SelfTestCause,
}

impl Failed {
    fn with(self, report: SelfTestReport) -> SelfTestFailure {
        SelfTestFailure {
            step: self.step,
            cause: self.cause,
            report,
        }
    }
}

impl SelfTestReport {
    /// The result of `step`, begun at `started`: its time is recorded if it passed.
    fn timed<T>(
        &mut self,
        step: SelfTestStep,
        started: Instant,
        result: Result<T, SelfTestCause>,
    ) -> Result<T, Failed> {
        let value = result.map_err(|cause| Failed { step, cause })?;
        self.steps.push(StepTiming {
            step,
            duration: started.elapsed(),
        });
        Ok(value)
    }
}

async fn verify_into<K: Kms>(
    kms: &K,
    key_pair: &GeneratedKeyPair,
    context: &EncryptionContext,
    mut report: SelfTestReport,
) -> Result<SelfTestReport, SelfTestFailure> {
    match verify_steps(kms, key_pair, context, &mut report).await {
        Ok(()) => Ok(report),
        Err(failed) => Err(failed.with(report)),
    }
}

/// Encrypt, KMS-decrypt the private key, decrypt, compare; each step's time goes to `report`.
async fn verify_steps<K: Kms>(
    kms: &K,
    key_pair: &GeneratedKeyPair,
    context: &EncryptionContext,
    report: &mut SelfTestReport,
) -> Result<(), Failed> {
    use SelfTestStep::{Compare, DecryptPrivateKey, DecryptTestData, EncryptTestData};
    let crypto = SelfTestCause::Crypto;

    let mut test_data = vec![0u8; TEST_DATA_LEN];
    aws_lc_rs::rand::fill(&mut test_data).map_err(|_| Failed {
        step: EncryptTestData,
        cause: crypto("the system random number generator failed".into()),
    })?;

    let started = Instant::now();
    let mut sealed = Vec::with_capacity(TEST_DATA_LEN + 4096);
    let encrypted = envelope::encrypt(
        &key_pair.public_key_der,
        SELF_TEST_KEY_PAIR_ID,
        test_data.as_slice(),
        &mut sealed,
    )
    .map_err(|err| crypto(format!("envelope encryption with the public key: {err}")));
    report.timed(EncryptTestData, started, encrypted)?;

    let started = Instant::now();
    let private_key = kms
        .decrypt_private_key(
            &key_pair.kms_key_arn,
            &key_pair.private_key_ciphertext,
            context,
        )
        .await
        .map_err(SelfTestCause::Kms);
    let private_key: Zeroizing<Vec<u8>> = report.timed(DecryptPrivateKey, started, private_key)?;

    let started = Instant::now();
    let mut reader = sealed.as_slice();
    let mut decrypted = Vec::with_capacity(TEST_DATA_LEN);
    let outcome = envelope::Header::read_from(&mut reader)
        .and_then(|header| envelope::decrypt(&private_key, &header, reader, &mut decrypted))
        .map_err(|err| {
            crypto(format!(
                "envelope decryption with the KMS-decrypted private key: {err}"
            ))
        });
    // The plaintext private key lives no longer than it must.
    drop(private_key);
    report.timed(DecryptTestData, started, outcome)?;

    let started = Instant::now();
    let same = if decrypted == test_data {
        Ok(())
    } else {
        Err(crypto(
            "the decrypted test data differs from the original: the private key KMS returned does not match the public key"
                .into(),
        ))
    };
    report.timed(Compare, started, same)
}

/// Why the KMS key behind the alias cannot root recording keys.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("KMS key {key_arn} is {state}; it must be Enabled")]
    NotEnabled { key_arn: String, state: String },
    #[error(
        "KMS key {key_arn} has key spec {spec}; kekeeper needs a symmetric key (SYMMETRIC_DEFAULT)"
    )]
    NotSymmetric { key_arn: String, spec: String },
    #[error("KMS key {key_arn} has key usage {usage}; kekeeper needs ENCRYPT_DECRYPT")]
    WrongUsage { key_arn: String, usage: String },
    #[error(
        "KMS key {key_arn} is an AWS managed key, whose key policy cannot allow kekeeper; use a customer managed key"
    )]
    NotCustomerManaged { key_arn: String },
    #[error("KMS key {key_arn} is in {key_region}, not in the home region {home_region}")]
    WrongRegion {
        key_arn: String,
        key_region: String,
        home_region: String,
    },
    #[error("multi-region KMS key {key_arn} has its primary in {primary_region} and replicas in [{}], none in the home region {home_region}", replica_regions.join(", "))]
    NoReplicaInHomeRegion {
        key_arn: String,
        primary_region: String,
        replica_regions: Vec<String>,
        home_region: String,
    },
}

impl KeyProblem {
    /// The CamelCase reason for the `ConfigValid` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyProblem::NotEnabled { .. } => "KmsKeyNotEnabled",
            KeyProblem::NotSymmetric { .. } => "KmsKeyNotSymmetric",
            KeyProblem::WrongUsage { .. } => "KmsKeyUsageNotEncryptDecrypt",
            KeyProblem::NotCustomerManaged { .. } => "KmsKeyNotCustomerManaged",
            KeyProblem::WrongRegion { .. } => "KmsKeyNotInHomeRegion",
            KeyProblem::NoReplicaInHomeRegion { .. } => "KmsKeyNotInHomeRegion",
        }
    }
}

/// Checks what `DescribeKey` said about the alias's key: enabled, symmetric, ENCRYPT_DECRYPT,
/// customer managed, and in the home region (for a multi-region key, the primary or a replica
/// there). docs/design.md#kms.
pub fn validate_key(
    description: &KeyDescription,
    config: &ValidatedConfig,
) -> Result<(), KeyProblem> {
    let key_arn = description.key_arn.clone();
    if description.key_manager != "CUSTOMER" {
        return Err(KeyProblem::NotCustomerManaged { key_arn });
    }
    if description.key_spec != "SYMMETRIC_DEFAULT" {
        return Err(KeyProblem::NotSymmetric {
            key_arn,
            spec: description.key_spec.clone(),
        });
    }
    if description.key_usage != "ENCRYPT_DECRYPT" {
        return Err(KeyProblem::WrongUsage {
            key_arn,
            usage: description.key_usage.clone(),
        });
    }
    let home = config.home_region.as_str();
    match &description.multi_region {
        None if description.region != home => {
            return Err(KeyProblem::WrongRegion {
                key_arn,
                key_region: description.region.clone(),
                home_region: home.to_owned(),
            });
        }
        Some(mrk)
            if mrk.primary_region != home && !mrk.replica_regions.iter().any(|r| r == home) =>
        {
            return Err(KeyProblem::NoReplicaInHomeRegion {
                key_arn,
                primary_region: mrk.primary_region.clone(),
                replica_regions: mrk.replica_regions.clone(),
                home_region: home.to_owned(),
            });
        }
        _ => {}
    }
    if description.key_state != "Enabled" {
        return Err(KeyProblem::NotEnabled {
            key_arn,
            state: description.key_state.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::AliasArn;
    use crate::kms::fake::FakeKms;
    use crate::kms::{KeyPairSpec, KmsErrorKind, KmsOperation, MultiRegionKey};

    fn test_config(spec: KeyPairSpec) -> ValidatedConfig {
        ValidatedConfig {
            alias: AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap(),
            organization_ids: vec!["org-a".into()],
            key_pair_spec: spec,
            home_region: "us-east-1".into(),
            encryption_context_key: "genesys-cloud-organization-id".into(),
            replica_regions: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_healthy_key_passes_every_step_and_yields_the_pair() {
        for spec in [
            KeyPairSpec::Rsa2048,
            KeyPairSpec::Rsa3072,
            KeyPairSpec::Rsa4096,
        ] {
            let config = test_config(spec);
            let kms = FakeKms::reusing_key_pairs();
            let key_arn = kms.create_key_for(&config.alias);
            let passed = run(&kms, &config, "org-a").await.unwrap();
            assert_eq!(passed.key_pair.kms_key_arn, key_arn);
            assert_eq!(passed.key_pair.spec, spec);
            assert_eq!(passed.report.organization_id, "org-a");
            assert_eq!(passed.report.kms_key_arn.as_deref(), Some(key_arn.as_str()));
            let steps: Vec<_> = passed.report.steps.iter().map(|s| s.step).collect();
            assert_eq!(steps, SelfTestStep::ALL);
            assert_eq!(
                kms.calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
                1
            );
            assert_eq!(kms.calls(KmsOperation::Decrypt), 1);

            let context = config.context_for("org-a");
            let report = verify(&kms, &passed.key_pair, &context).await.unwrap();
            assert_eq!(report.steps.len(), 4);
        }
    }

    #[tokio::test]
    async fn failures_name_the_step_and_carry_the_kms_error() {
        let config = test_config(KeyPairSpec::Rsa2048);
        let kms = FakeKms::reusing_key_pairs();
        let err = run(&kms, &config, "org-a").await.unwrap_err();
        assert_eq!(err.step, SelfTestStep::GenerateKeyPair);
        assert_eq!(err.kms_error().unwrap().kind, KmsErrorKind::NotFound);
        assert!(err.report.steps.is_empty());

        kms.create_key_for(&config.alias);
        kms.fail_next(KmsOperation::Decrypt, KmsErrorKind::AccessDenied);
        let err = run(&kms, &config, "org-a").await.unwrap_err();
        assert_eq!(err.step, SelfTestStep::DecryptPrivateKey);
        assert_eq!(err.kms_error().unwrap().code, "AccessDeniedException");
        assert_eq!(err.report.steps.len(), 2);
        assert!(
            err.to_string().starts_with(
                "self-test failed at DecryptPrivateKey: Decrypt: AccessDeniedException"
            ),
            "{err}"
        );

        // A private key blob bound to another organisation does not decrypt under this one.
        let passed = run(&kms, &config, "org-a").await.unwrap();
        let err = verify(&kms, &passed.key_pair, &config.context_for("org-b"))
            .await
            .unwrap_err();
        assert_eq!(
            err.kms_error().unwrap().kind,
            KmsErrorKind::InvalidCiphertext
        );

        // A public key that does not belong to the private key fails the decryption step.
        let other = run(&kms, &test_config(KeyPairSpec::Rsa3072), "org-a")
            .await
            .unwrap();
        let mut mismatched = passed.key_pair.clone();
        mismatched.public_key_der = other.key_pair.public_key_der;
        let err = verify(&kms, &mismatched, &config.context_for("org-a"))
            .await
            .unwrap_err();
        assert_eq!(err.step, SelfTestStep::DecryptTestData);
        assert!(matches!(err.cause, SelfTestCause::Crypto(_)));
    }

    #[tokio::test]
    async fn each_replica_of_a_multi_region_key_round_trips_the_test_blob() {
        let config = test_config(KeyPairSpec::Rsa2048);
        let kms = FakeKms::reusing_key_pairs();
        let key = kms.create_multi_region_key("aws", "us-east-1", "111122223333");
        kms.point_alias(&config.alias, &key);
        kms.replicate_key(&key, "eu-west-1");
        kms.replicate_key(&key, "ap-southeast-2");
        let description = kms.describe_key(&config.alias).await.unwrap();
        let mut listed = config.clone();
        listed.replica_regions = vec!["ap-southeast-2".into()];
        let regions = replica_regions(&listed, &description);
        assert_eq!(regions, ["ap-southeast-2", "eu-west-1"]);
        assert!(replica_regions(&config, &super::tests::description()).is_empty());

        let passed = run(&kms, &config, "org-a").await.unwrap();
        kms.fail_region("eu-west-1", KmsErrorKind::AccessDenied);
        let checks = check_replicas(
            &kms,
            &passed.key_pair,
            &config.context_for("org-a"),
            &regions,
        )
        .await;
        assert_eq!(checks.len(), 2);
        let sydney = checks[0].result.as_ref().unwrap();
        assert_eq!(
            sydney.kms_key_arn.as_deref(),
            Some(key.replace("us-east-1", "ap-southeast-2").as_str())
        );
        assert_eq!(sydney.steps.len(), 4);
        let ireland = checks[1].result.as_ref().unwrap_err();
        assert_eq!(ireland.step, SelfTestStep::DecryptPrivateKey);
        assert_eq!(ireland.kms_error().unwrap().code, "AccessDeniedException");
        assert_eq!(kms.decrypts_in("ap-southeast-2"), 1);
    }

    fn description() -> KeyDescription {
        KeyDescription {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            key_id: "k".into(),
            key_state: "Enabled".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_manager: "CUSTOMER".into(),
            region: "us-east-1".into(),
            multi_region: None,
            age: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn validate_key_accepts_only_usable_customer_keys_in_the_home_region() {
        let config = test_config(KeyPairSpec::Rsa3072);
        assert_eq!(validate_key(&description(), &config), Ok(()));
        let mut west = config.clone();
        west.home_region = "us-west-2".into();
        let mrk = |primary: &str, replicas: &[&str]| KeyDescription {
            multi_region: Some(MultiRegionKey {
                primary_region: primary.into(),
                replica_regions: replicas.iter().map(|r| r.to_string()).collect(),
            }),
            ..description()
        };
        assert_eq!(
            validate_key(&mrk("us-east-1", &["us-west-2"]), &west),
            Ok(())
        );
        assert_eq!(validate_key(&mrk("us-west-2", &[]), &west), Ok(()));

        let cases = [
            (
                KeyDescription {
                    key_state: "Disabled".into(),
                    ..description()
                },
                &config,
                "KmsKeyNotEnabled",
            ),
            (
                KeyDescription {
                    key_state: "PendingDeletion".into(),
                    ..description()
                },
                &config,
                "KmsKeyNotEnabled",
            ),
            (
                KeyDescription {
                    key_spec: "RSA_2048".into(),
                    ..description()
                },
                &config,
                "KmsKeyNotSymmetric",
            ),
            (
                KeyDescription {
                    key_usage: "GENERATE_VERIFY_MAC".into(),
                    ..description()
                },
                &config,
                "KmsKeyUsageNotEncryptDecrypt",
            ),
            (
                KeyDescription {
                    key_manager: "AWS".into(),
                    ..description()
                },
                &config,
                "KmsKeyNotCustomerManaged",
            ),
            (description(), &west, "KmsKeyNotInHomeRegion"),
            (
                mrk("us-east-1", &["eu-west-1"]),
                &west,
                "KmsKeyNotInHomeRegion",
            ),
        ];
        for (description, config, reason) in cases {
            let problem = validate_key(&description, config).unwrap_err();
            assert_eq!(problem.reason(), reason, "{problem}");
        }
    }
}
