//! A `RecordingKeyConfigSpec` checked once into domain types (parse, don't validate): what the
//! CLI and the controller work from.

use crate::arn::AliasArn;
use crate::crd::RecordingKeyConfigSpec;
use crate::kms::{EncryptionContext, KeyPairSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedConfig {
    pub alias: AliasArn,
    pub organization_ids: Vec<String>,
    pub key_pair_spec: KeyPairSpec,
    pub home_region: String,
    pub encryption_context_key: String,
}

impl ValidatedConfig {
    pub fn context_for(&self, organization_id: &str) -> EncryptionContext {
        EncryptionContext {
            key: self.encryption_context_key.clone(),
            organization_id: organization_id.to_owned(),
        }
    }
}

/// A spec field that is wrong, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field path, e.g. `spec.kmsKeyAliasArn`.
    pub field: String,
    pub message: String,
}

/// Checks a spec; `operator_region` is the region the operator runs in (the default homeRegion).
pub fn validate(
    _spec: &RecordingKeyConfigSpec,
    _operator_region: Option<&str>,
) -> Result<ValidatedConfig, ConfigError> {
    todo!("engine")
}
