//! Shared by the KMS and CLI integration tests: the emulator endpoint, SDK clients for it, key
//! and alias set-up, and a fault-injecting HTTP proxy.
#![allow(dead_code)]

pub mod argocd;
pub mod cli;
pub mod cluster;
pub mod fleet;
pub mod kstatus;
pub mod proxy;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::Credentials;
use kekeeper::arn::AliasArn;

pub const REGION: &str = "us-east-1";
/// LocalStack's account for the access key id `test`.
pub const ACCOUNT: &str = "000000000000";

/// The emulator endpoint `scripts/test.sh` exports. Tests that need it are `#[ignore]`d with
/// that reason (`scripts/test.sh` runs them with `--include-ignored`); run without it, they
/// fail here instead of passing silently.
pub fn kms_endpoint() -> String {
    match std::env::var("KEKEEPER_TEST_KMS_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => panic!(
            "KEKEEPER_TEST_KMS_ENDPOINT is not set: this test needs the KMS emulator; run \
             scripts/test.sh (it starts the emulator and runs the ignored tests)"
        ),
    }
}

/// SDK configuration for the endpoint with the emulator's test credentials and no retries
/// (tests assert the first answer).
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "kekeeper-tests",
        ))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

/// A KMS client for set-up calls (CreateKey, CreateAlias, DisableKey, ...) in `region`.
pub async fn admin(endpoint: &str, region: &str) -> aws_sdk_kms::Client {
    let config = sdk_config(endpoint).await;
    aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&config)
            .region(Region::new(region.to_owned()))
            .build(),
    )
}

/// An S3 client config for the emulator (path style: `BUCKET.127.0.0.1` does not resolve).
pub async fn s3_config(endpoint: &str) -> aws_sdk_s3::Config {
    let config = sdk_config(endpoint).await;
    aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build()
}

/// A new bucket in the emulator, with versioning on (as docs/disaster-recovery.md advises).
pub async fn create_bucket(endpoint: &str) -> String {
    let client = aws_sdk_s3::Client::from_conf(s3_config(endpoint).await);
    let bucket = unique("kekeeper-test").to_ascii_lowercase();
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    client
        .put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("PutBucketVersioning");
    bucket
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &kekeeper::keypair::new_key_pair_id()[..13])
}

pub struct TestKey {
    pub alias: AliasArn,
    pub key_id: String,
    pub key_arn: String,
}

/// A new symmetric customer-managed key with a fresh alias in `region`.
pub async fn create_key(endpoint: &str, region: &str, multi_region: bool) -> TestKey {
    let admin = admin(endpoint, region).await;
    let key = admin
        .create_key()
        .multi_region(multi_region)
        .description("kekeeper integration test")
        .send()
        .await
        .expect("CreateKey");
    let metadata = key.key_metadata().expect("KeyMetadata");
    let alias_name = format!("alias/{}", unique("kekeeper-test"));
    admin
        .create_alias()
        .alias_name(&alias_name)
        .target_key_id(metadata.key_id())
        .send()
        .await
        .expect("CreateAlias");
    TestKey {
        alias: AliasArn::parse(&format!("arn:aws:kms:{region}:{ACCOUNT}:{alias_name}"))
            .expect("alias ARN"),
        key_id: metadata.key_id().to_owned(),
        key_arn: metadata.arn().expect("Arn").to_owned(),
    }
}

/// A new multi-Region key (`mrk-...`) with a fresh alias in `region`, replicated to `replica`
/// (`ReplicateKey`; LocalStack keeps the replica under the same key id in the other Region).
pub async fn create_multi_region_key(endpoint: &str, region: &str, replica: &str) -> TestKey {
    let key = create_key(endpoint, region, true).await;
    assert!(key.key_id.starts_with("mrk-"), "{}", key.key_id);
    admin(endpoint, region)
        .await
        .replicate_key()
        .key_id(&key.key_id)
        .replica_region(replica)
        .send()
        .await
        .expect("ReplicateKey");
    key
}

/// A RecordingKeyConfig manifest for the CLI.
pub fn manifest(alias: &str, organization_ids: &[&str], key_pair_spec: &str) -> String {
    let ids: Vec<String> = organization_ids
        .iter()
        .map(|id| format!("    - {id}\n"))
        .collect();
    format!(
        "apiVersion: kekeeper.io/v1alpha1\nkind: RecordingKeyConfig\nmetadata:\n  name: recordings\n  namespace: telephony\nspec:\n  kmsKeyAliasArn: {alias}\n  organizationIds:\n{}  keyPairSpec: {key_pair_spec}\n",
        ids.concat()
    )
}

/// Points the alias of `from` at the key of `to` (KMS `UpdateAlias`, by key id: LocalStack
/// 4.8.1 takes a key ARN there but then cannot resolve the alias).
pub async fn move_alias(from: &TestKey, to: &TestKey) {
    admin(&kms_endpoint(), REGION)
        .await
        .update_alias()
        .alias_name(format!("alias/{}", from.alias.alias_name()))
        .target_key_id(&to.key_id)
        .send()
        .await
        .expect("UpdateAlias");
}
