//! The `RecordingKeyConfig` resource (SPEC §2). The CRD YAML under `crds/` is generated from
//! these types.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kms::KeyPairSpec;

pub const DEFAULT_ENCRYPTION_CONTEXT_KEY: &str = "genesys-cloud-organization-id";
pub const DEFAULT_HISTORY_LIMIT: u32 = 10;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kekeeper.io",
    version = "v1alpha1",
    kind = "RecordingKeyConfig",
    namespaced,
    shortname = "rkc",
    category = "kekeeper",
    status = "RecordingKeyConfigStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct RecordingKeyConfigSpec {
    /// The alias ARN of the organisation's customer-managed symmetric KMS key:
    /// `arn:aws:kms:{region}:{account}:alias/{name}`.
    pub kms_key_alias_arn: String,
    /// The organisation ids whose recordings these keys protect (1 to 100, unique).
    pub organization_ids: Vec<String>,
    #[serde(default)]
    pub rotation: RotationPolicy,
    #[serde(default)]
    pub key_pair_spec: KeyPairSpec,
    /// Defaults to the operator's AWS region; must equal the alias ARN's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
    #[serde(default = "default_encryption_context_key")]
    pub encryption_context_key: String,
    /// Superseded key pairs are kept at least this long after retirement (e.g. `2555d`);
    /// absent means forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_retention: Option<String>,
    #[serde(default = "default_history_limit")]
    pub history_limit: u32,
    #[serde(default)]
    pub suspend: bool,
}

fn default_encryption_context_key() -> String {
    DEFAULT_ENCRYPTION_CONTEXT_KEY.to_owned()
}

fn default_history_limit() -> u32 {
    DEFAULT_HISTORY_LIMIT
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    #[serde(default)]
    pub period: RotationPeriod,
    #[serde(default)]
    pub on_kms_key_change: KmsKeyChangePolicy,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RotationPeriod {
    Daily,
    Weekly,
    #[default]
    Monthly,
    Yearly,
    Never,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KmsKeyChangePolicy {
    #[default]
    Rotate,
    Ignore,
}

/// Written only through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingKeyConfigStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_key_pairs: Vec<ActiveKeyPair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_pair_history: Vec<KeyPairHistoryEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<LastTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_kms_error: Option<LastKmsError>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveKeyPair {
    pub organization_id: String,
    pub key_pair_id: String,
    pub created_at: Timestamp,
    pub kms_key_arn: String,
    pub key_pair_spec: KeyPairSpec,
    pub public_key_fingerprint: String,
    pub secret_name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairHistoryEntry {
    pub organization_id: String,
    pub key_pair_id: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
    /// Why the pair was made (`Created`, `PeriodElapsed`, `RotateNowRequested`, ...).
    pub reason: String,
    pub kms_key_arn: String,
    pub public_key_fingerprint: String,
    pub secret_name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastTest {
    pub time: Timestamp,
    pub passed: bool,
    pub message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastKmsError {
    pub time: Timestamp,
    pub operation: String,
    pub code: String,
    pub message: String,
}
