//! KMS behind a small trait, so the controller's logic runs against a fake in unit tests and the
//! real SDK client runs against the emulator in integration tests.

pub mod coalesce;
/// The in-memory KMS of the tests; not built into the release (docs/design.md, "Test doubles
/// stay out of the release").
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod sdk;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::arn::AliasArn;

/// The RSA key pair specs KMS `GenerateDataKeyPair*` offers that suit key encryption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum KeyPairSpec {
    #[serde(rename = "RSA_2048")]
    Rsa2048,
    #[default]
    #[serde(rename = "RSA_3072")]
    Rsa3072,
    #[serde(rename = "RSA_4096")]
    Rsa4096,
}

impl KeyPairSpec {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPairSpec::Rsa2048 => "RSA_2048",
            KeyPairSpec::Rsa3072 => "RSA_3072",
            KeyPairSpec::Rsa4096 => "RSA_4096",
        }
    }

    pub fn bits(self) -> usize {
        match self {
            KeyPairSpec::Rsa2048 => 2048,
            KeyPairSpec::Rsa3072 => 3072,
            KeyPairSpec::Rsa4096 => 4096,
        }
    }
}

impl fmt::Display for KeyPairSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{<context key>: <organisation id>}`: the key policy only lets requests through whose
/// encryption context names an allowed organisation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EncryptionContext {
    pub key: String,
    pub organization_id: String,
}

/// The KMS operations kekeeper makes; named as AWS names them, since they go into status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmsOperation {
    DescribeKey,
    GenerateDataKeyPair,
    GenerateDataKeyPairWithoutPlaintext,
    Decrypt,
    ReEncrypt,
}

impl KmsOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            KmsOperation::DescribeKey => "DescribeKey",
            KmsOperation::GenerateDataKeyPair => "GenerateDataKeyPair",
            KmsOperation::GenerateDataKeyPairWithoutPlaintext => {
                "GenerateDataKeyPairWithoutPlaintext"
            }
            KmsOperation::Decrypt => "Decrypt",
            KmsOperation::ReEncrypt => "ReEncrypt",
        }
    }
}

impl fmt::Display for KmsOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, in the classes the controller reacts to differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmsErrorKind {
    AccessDenied,
    NotFound,
    Disabled,
    InvalidState,
    KeyUnavailable,
    Throttling,
    InvalidCiphertext,
    IncorrectKey,
    Network,
    Timeout,
    Other,
}

/// A failed KMS call: operation, AWS error code, message and request id, exactly what the
/// controller writes to `status.lastKmsError`. Never carries key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {code}: {message}")]
pub struct KmsError {
    pub operation: KmsOperation,
    pub kind: KmsErrorKind,
    /// The AWS error code (`AccessDeniedException`, `DisabledException`, ...), or a
    /// CamelCase name kekeeper gives a transport failure (`NetworkError`, `Timeout`).
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl KmsErrorKind {
    /// Classifies an AWS KMS error code (`ProvideErrorMetadata::code()`).
    pub fn from_code(code: &str) -> Self {
        match code {
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken" => KmsErrorKind::AccessDenied,
            "NotFoundException" => KmsErrorKind::NotFound,
            "DisabledException" => KmsErrorKind::Disabled,
            "KMSInvalidStateException" => KmsErrorKind::InvalidState,
            "KeyUnavailableException"
            | "DependencyTimeoutException"
            | "KMSInternalException"
            | "InternalFailure"
            | "ServiceUnavailable" => KmsErrorKind::KeyUnavailable,
            "ThrottlingException"
            | "LimitExceededException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded" => KmsErrorKind::Throttling,
            "InvalidCiphertextException" => KmsErrorKind::InvalidCiphertext,
            "IncorrectKeyException" => KmsErrorKind::IncorrectKey,
            _ => KmsErrorKind::Other,
        }
    }

    /// The AWS error code a fake or an injected failure of this kind reports.
    pub fn default_code(self) -> &'static str {
        match self {
            KmsErrorKind::AccessDenied => "AccessDeniedException",
            KmsErrorKind::NotFound => "NotFoundException",
            KmsErrorKind::Disabled => "DisabledException",
            KmsErrorKind::InvalidState => "KMSInvalidStateException",
            KmsErrorKind::KeyUnavailable => "KeyUnavailableException",
            KmsErrorKind::Throttling => "ThrottlingException",
            KmsErrorKind::InvalidCiphertext => "InvalidCiphertextException",
            KmsErrorKind::IncorrectKey => "IncorrectKeyException",
            KmsErrorKind::Network => "NetworkError",
            KmsErrorKind::Timeout => "Timeout",
            KmsErrorKind::Other => "UnknownError",
        }
    }

    /// Worth retrying as is (with backoff): the same request may succeed later without anyone
    /// changing the key or its policy.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            KmsErrorKind::Throttling
                | KmsErrorKind::Network
                | KmsErrorKind::Timeout
                | KmsErrorKind::KeyUnavailable
        )
    }
}

impl KmsError {
    /// An error of `kind` with its default AWS code.
    pub fn new(operation: KmsOperation, kind: KmsErrorKind, message: impl Into<String>) -> Self {
        KmsError {
            operation,
            kind,
            code: kind.default_code().to_owned(),
            message: message.into(),
            request_id: None,
        }
    }
}

/// What `DescribeKey` says about the KMS key an alias points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDescription {
    pub key_arn: String,
    pub key_id: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, `PendingImport`, `Unavailable`, ...
    pub key_state: String,
    /// `SYMMETRIC_DEFAULT`, `RSA_2048`, ...
    pub key_spec: String,
    /// `ENCRYPT_DECRYPT`, `SIGN_VERIFY`, ...
    pub key_usage: String,
    /// `CUSTOMER` or `AWS`.
    pub key_manager: String,
    /// The region of `key_arn`.
    pub region: String,
    pub multi_region: Option<MultiRegionKey>,
    /// How long before it was handed out KMS gave this answer: zero from KMS itself, the age
    /// of a shared answer from [`coalesce::CoalescingKms`]. Status records when KMS was
    /// actually asked (docs/design.md, "When KMS was asked").
    pub age: std::time::Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiRegionKey {
    pub primary_region: String,
    pub replica_regions: Vec<String>,
}

/// A data key pair as KMS hands it out without plaintext: the private key exists only as the
/// KMS ciphertext blob, bound to the encryption context it was generated with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedKeyPair {
    /// The ARN of the KMS key that encrypted the private key (not the alias).
    pub kms_key_arn: String,
    pub spec: KeyPairSpec,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    pub private_key_ciphertext: Vec<u8>,
}

/// A private key decrypted through KMS, and the Region whose KMS answered: the key's own
/// (home) Region, or a replica's when the home Region failed (docs/design.md, "Multi-Region
/// reads"). Its Debug form leaves the plaintext out.
pub struct Decrypted {
    /// PKCS#8 DER, zeroised when dropped.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The Region that answered.
    pub region: String,
    /// What the home Region answered when a replica answered instead.
    pub home_failure: Option<KmsError>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .field("region", &self.region)
            .field("home_failure", &self.home_failure)
            .finish()
    }
}

impl Decrypted {
    /// A replica answered, and the home Region's failure, as people read it: `custody checked
    /// through replica in eu-west-1: the home Region us-east-1 failed with NetworkError`.
    pub fn replica_read(&self, kms_key_arn: &str) -> Option<ReplicaRead> {
        self.home_failure.as_ref().map(|failure| ReplicaRead {
            region: self.region.clone(),
            home_region: region_of(kms_key_arn).to_owned(),
            home_code: failure.code.clone(),
        })
    }
}

/// A read that a replica answered because the home Region failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRead {
    /// The replica's Region, which answered.
    pub region: String,
    pub home_region: String,
    /// The home Region's error code (`NetworkError`, `KeyUnavailableException`, ...).
    pub home_code: String,
}

impl fmt::Display for ReplicaRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "through replica in {}: the home Region {} failed with {}",
            self.region, self.home_region, self.home_code
        )
    }
}

/// The Region of a KMS key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`); empty if it names none.
pub fn region_of(key_arn: &str) -> &str {
    key_arn.split(':').nth(3).unwrap_or_default()
}

/// The key id of a KMS key ARN (`mrk-...` for a multi-Region key), or the string itself.
pub fn key_id_of(key_arn: &str) -> &str {
    key_arn.rsplit_once(":key/").map_or(key_arn, |(_, id)| id)
}

/// Whether the key is a multi-Region key: KMS gives their ids the `mrk-` prefix.
pub fn is_multi_region_key(key_arn: &str) -> bool {
    key_id_of(key_arn).starts_with("mrk-")
}

/// The same key in another Region: a multi-Region key's replica has the key's ARN with the
/// Region changed.
pub fn replica_arn(key_arn: &str, region: &str) -> String {
    let mut parts: Vec<&str> = key_arn.splitn(5, ':').collect();
    if parts.len() == 5 {
        parts[3] = region;
    }
    parts.join(":")
}

/// Whether a failure of the home Region lets a replica answer: the Region's KMS is
/// unreachable, slow, unavailable or throttling. Access denied, a wrong ciphertext or key, a
/// disabled or missing key are verdicts, and a replica is not asked (docs/design.md,
/// "Multi-Region reads").
pub fn replica_may_answer(kind: KmsErrorKind) -> bool {
    kind.is_transient()
}

/// What DescribeKey said about multi-Region keys' Regions, by key id, so a Decrypt can turn to
/// a replica when the home Region cannot be asked (not even DescribeKey). Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct KnownReplicas {
    regions: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl KnownReplicas {
    /// Remembers the Regions of a multi-Region key's primary and replicas.
    pub fn learn(&self, description: &KeyDescription) {
        let Some(mrk) = &description.multi_region else {
            return;
        };
        let mut regions = vec![mrk.primary_region.clone()];
        regions.extend(mrk.replica_regions.iter().cloned());
        regions.retain(|r| !r.is_empty());
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id_of(&description.key_arn).to_owned(), regions);
    }

    /// The Regions to try after the key's own, in order: `listed` (the spec's), then those
    /// DescribeKey named; none for a single-Region key, never the key's own Region, none twice.
    pub fn fallbacks(&self, key_arn: &str, listed: &[String]) -> Vec<String> {
        if !is_multi_region_key(key_arn) {
            return Vec::new();
        }
        let known = self
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id_of(key_arn))
            .cloned()
            .unwrap_or_default();
        let home = region_of(key_arn);
        let mut regions: Vec<String> = Vec::new();
        for region in listed.iter().chain(known.iter()) {
            if region != home && !regions.contains(region) {
                regions.push(region.clone());
            }
        }
        regions
    }
}

/// Decrypt under `key_arn` in its own Region, then, while the failure is one a replica may
/// answer ([`replica_may_answer`]), under the same key in each of `fallbacks` in turn. A
/// replica's `InvalidCiphertext` or `IncorrectKey` is a verdict on the blob and returned; any
/// other replica failure moves on to the next. When none answers, the home Region's error is
/// returned, its message naming what each replica said.
pub async fn decrypt_through_replicas<F, Fut>(
    key_arn: &str,
    fallbacks: &[String],
    mut decrypt: F,
) -> Result<Decrypted, KmsError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Zeroizing<Vec<u8>>, KmsError>>,
{
    let home_failure = match decrypt(key_arn.to_owned()).await {
        Ok(plaintext) => {
            return Ok(Decrypted {
                plaintext,
                region: region_of(key_arn).to_owned(),
                home_failure: None,
            });
        }
        Err(err) if fallbacks.is_empty() || !replica_may_answer(err.kind) => return Err(err),
        Err(err) => err,
    };
    let mut replica_failures = Vec::new();
    for region in fallbacks {
        match decrypt(replica_arn(key_arn, region)).await {
            Ok(plaintext) => {
                return Ok(Decrypted {
                    plaintext,
                    region: region.clone(),
                    home_failure: Some(home_failure),
                });
            }
            Err(err)
                if matches!(
                    err.kind,
                    KmsErrorKind::InvalidCiphertext | KmsErrorKind::IncorrectKey
                ) =>
            {
                return Err(err);
            }
            Err(err) => replica_failures.push(format!("{region}: {}: {}", err.code, err.message)),
        }
    }
    Err(KmsError {
        message: format!(
            "{} (replicas tried: {})",
            home_failure.message,
            replica_failures.join("; ")
        ),
        ..home_failure
    })
}

/// The KMS operations kekeeper needs. Implemented by the AWS SDK client ([`sdk::SdkKms`]) and by
/// an in-memory fake for tests (`fake::FakeKms`, behind the `test-util` feature).
pub trait Kms: Send + Sync {
    /// `DescribeKey` on the alias: which key it points at and whether that key is usable.
    fn describe_key(
        &self,
        alias: &AliasArn,
    ) -> impl Future<Output = Result<KeyDescription, KmsError>> + Send;

    /// `DescribeKey` on a key ARN, e.g. the key of a historical key pair, to see whether its
    /// recordings are still decryptable (`HistoricalKeysAtRisk`,
    /// docs/design.md#status-model). The default answers NotFound so that test doubles written
    /// before this method existed keep compiling.
    fn describe_key_arn(
        &self,
        key_arn: &str,
    ) -> impl Future<Output = Result<KeyDescription, KmsError>> + Send {
        let err = KmsError::new(
            KmsOperation::DescribeKey,
            KmsErrorKind::NotFound,
            format!("describe_key_arn is not implemented by this Kms ({key_arn})"),
        );
        async move { Err(err) }
    }

    /// `GenerateDataKeyPairWithoutPlaintext` under the alias with the encryption context.
    fn generate_key_pair(
        &self,
        alias: &AliasArn,
        spec: KeyPairSpec,
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<GeneratedKeyPair, KmsError>> + Send;

    /// `Decrypt` of a private key blob with the key it was generated under and the same
    /// encryption context. The plaintext (PKCS#8 DER) is zeroised when dropped.
    fn decrypt_private_key(
        &self,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, KmsError>> + Send;

    /// `Decrypt` of a private key blob as [`Self::decrypt_private_key`], turning to the key's
    /// replicas when the home Region fails and the key is multi-Region (docs/design.md,
    /// "Multi-Region reads"): `replica_regions` are the spec's, tried before those DescribeKey
    /// named. Says which Region answered. The default asks the home Region only, so test
    /// doubles written before this method existed keep compiling.
    fn decrypt_private_key_in(
        &self,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        replica_regions: &[String],
    ) -> impl Future<Output = Result<Decrypted, KmsError>> + Send {
        let _ = replica_regions;
        async move {
            let plaintext = self
                .decrypt_private_key(kms_key_arn, ciphertext, context)
                .await?;
            Ok(Decrypted {
                plaintext,
                region: region_of(kms_key_arn).to_owned(),
                home_failure: None,
            })
        }
    }

    /// `ReEncrypt` of a private key blob from the key it is under (`source_key_arn`) onto
    /// `destination_key_arn`, with the same encryption context on both sides: the plaintext
    /// never leaves KMS (docs/design.md, "Rewrap"). Returns the new blob. The default answers
    /// that this Kms cannot, so test doubles written before it existed keep compiling.
    fn re_encrypt(
        &self,
        source_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        destination_key_arn: &str,
    ) -> impl Future<Output = Result<Vec<u8>, KmsError>> + Send {
        let _ = (ciphertext, context);
        let err = KmsError::new(
            KmsOperation::ReEncrypt,
            KmsErrorKind::Other,
            format!(
                "re_encrypt is not implemented by this Kms ({source_key_arn} -> {destination_key_arn})"
            ),
        );
        async move { Err(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd";

    #[test]
    fn a_decrypted_key_never_shows_in_debug_output() {
        let decrypted = Decrypted {
            plaintext: Zeroizing::new(b"PRIVATE-KEY-BYTES".to_vec()),
            region: "eu-west-1".into(),
            home_failure: None,
        };
        let text = format!("{decrypted:?}");
        assert!(!text.contains("80, 82, 73"), "{text}");
        assert!(text.contains("<17 bytes>"), "{text}");
    }

    #[test]
    fn a_replica_is_the_same_key_arn_in_another_region() {
        assert_eq!(
            replica_arn(KEY, "eu-west-1"),
            "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd"
        );
        assert_eq!(region_of(KEY), "us-east-1");
        assert_eq!(key_id_of(KEY), "mrk-1234abcd");
        assert!(is_multi_region_key(KEY));
        assert!(!is_multi_region_key(
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd"
        ));
    }

    /// The spec's Regions first, then DescribeKey's, never the key's own, none twice; a
    /// single-Region key has none.
    #[test]
    fn the_regions_to_try_come_from_the_spec_then_describe_key() {
        let known = KnownReplicas::default();
        let listed = vec!["eu-west-1".to_owned(), "us-east-1".to_owned()];
        assert_eq!(known.fallbacks(KEY, &listed), ["eu-west-1"]);
        known.learn(&KeyDescription {
            key_arn: KEY.into(),
            key_id: "mrk-1234abcd".into(),
            key_state: "Enabled".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_manager: "CUSTOMER".into(),
            region: "us-east-1".into(),
            multi_region: Some(MultiRegionKey {
                primary_region: "us-east-1".into(),
                replica_regions: vec!["ap-southeast-2".into(), "eu-west-1".into()],
            }),
            age: std::time::Duration::ZERO,
        });
        assert_eq!(
            known.fallbacks(KEY, &listed),
            ["eu-west-1", "ap-southeast-2"]
        );
        // From a replica's Region, the primary's is a fallback too.
        let replica = replica_arn(KEY, "eu-west-1");
        assert_eq!(
            known.fallbacks(&replica, &[]),
            ["us-east-1", "ap-southeast-2"]
        );
        let single = "arn:aws:kms:us-east-1:111122223333:key/1234abcd";
        assert!(known.fallbacks(single, &listed).is_empty());
    }

    /// The test doubles are opt-in: no default feature pulls `test-util` into a release build.
    #[test]
    fn test_util_is_not_a_default_feature() {
        let manifest = include_str!("../Cargo.toml");
        let default = manifest
            .lines()
            .find(|line| line.trim_start().starts_with("default ="))
            .expect("a default feature list");
        assert!(!default.contains("test-util"), "{default}");
        assert!(manifest.contains("\ntest-util = []"));
    }
}
