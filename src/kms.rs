//! KMS behind a small trait, so the controller's logic runs against a fake in unit tests and the
//! real SDK client runs against the emulator in integration tests.

pub mod coalesce;
/// The in-memory KMS of the tests; not built into the release (docs/design.md, "Test doubles
/// stay out of the release").
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod sdk;

use std::fmt;
use std::future::Future;

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
