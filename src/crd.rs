//! The `RecordingKeyConfig` resource (docs/design.md#product-contract). The CRD YAML under
//! `crds/` is generated from these types.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kms::{KeyPairSpec, KmsError};

pub const DEFAULT_ENCRYPTION_CONTEXT_KEY: &str = "genesys-cloud-organization-id";
pub const DEFAULT_HISTORY_LIMIT: u32 = 10;

/// Annotation whose value, when it changes, rotates every organisation's key pair once
/// ("Change key now"); `kekeeper rotate NAME` sets it.
pub const ANNOTATION_ROTATE_NOW: &str = "kekeeper.io/rotate-now";

/// Annotation whose value, when it changes, asks for a custody check now, instead of at the
/// next `--key-verify-interval`.
pub const ANNOTATION_VERIFY_NOW: &str = "kekeeper.io/verify-now";

/// Annotation whose value, when it changes, asks for a rewrap of every retained key pair onto
/// the key the alias resolves to now, even with `spec.rewrap: Never`; `kekeeper rewrap NAME`
/// sets it (docs/design.md, "Rewrap").
pub const ANNOTATION_REWRAP_NOW: &str = "kekeeper.io/rewrap-now";

/// Annotation: key pair ids (comma-separated) whose reported problem (missing Secret, failed
/// custody check) a person has seen and accepted; they leave `status.keyPairProblems` and the
/// history.
pub const ANNOTATION_ACKNOWLEDGE: &str = "kekeeper.io/acknowledge-key-pairs";

/// Which KMS key roots the key pairs, for which organisations, and how often they rotate.
// The finer checks (well-formed ARN, no key ARN, no AWS managed key, region match) are CEL
// rules whose messages name the field and the fix; they only use functions a plain CEL
// interpreter has (`matches`, `startsWith`, `contains`, `has`, `+`).
// The derive's repeated `printcolumn(...)` trips clippy's duplicated-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kekeeper.io",
    version = "v1alpha1",
    kind = "RecordingKeyConfig",
    namespaced,
    shortname = "rkc",
    category = "kekeeper",
    status = "RecordingKeyConfigStatus",
    doc = "Key-encryption-key pairs for call recordings of the listed organisations, rooted in the organisation's AWS KMS key",
    printcolumn(name = "Alias", type_ = "string", json_path = ".spec.kmsKeyAliasArn"),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.rotation.period"),
    printcolumn(
        name = "Orgs",
        type_ = "integer",
        json_path = ".status.organizationCount",
        description = "Number of organisation ids in spec.organizationIds"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the resource is or is not Ready"
    ),
    printcolumn(
        name = "Next Rotation",
        type_ = "string",
        json_path = ".status.nextRotationTime"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(
        name = "KMS Key",
        type_ = "string",
        json_path = ".status.kmsKeyArn",
        description = "The KMS key the alias resolved to at the last KMS key check",
        priority = 1
    ),
    printcolumn(
        name = "Key Store",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"KeyStoreSynced\")].reason",
        description = "The KeyStoreSynced condition's reason; empty without a key store",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.homeRegion) || self.kmsKeyAliasArn.contains(':kms:' + self.homeRegion + ':')"
).message(
    "spec.homeRegion must equal the region of spec.kmsKeyAliasArn (arn:aws:kms:REGION:...); use an alias in the home region or fix homeRegion"
).field_path(".homeRegion"))]
#[x_kube(validation = Rule::new(
    "!has(self.kmsReplicaRegions) || !self.kmsReplicaRegions.exists(r, self.kmsKeyAliasArn.contains(':kms:' + r + ':'))"
).message(
    "spec.kmsReplicaRegions must not list the home Region (the Region of spec.kmsKeyAliasArn); list only the Regions of the key's replicas"
).field_path(".kmsReplicaRegions"))]
// Genesys Cloud organisation ids are UUIDs; with its context key anything else is a typo that
// would only show as AccessDenied once the key policy is in place.
#[x_kube(validation = Rule::new(
    "(has(self.encryptionContextKey) && self.encryptionContextKey != 'genesys-cloud-organization-id') || self.organizationIds.all(id, id.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))"
).message(
    "spec.organizationIds must be UUIDs (like 3fa85f64-5717-4562-b3fc-2c963f66afa6) when encryptionContextKey is genesys-cloud-organization-id; copy the ids from Genesys Cloud, or set encryptionContextKey for another kind of id"
).field_path(".organizationIds"))]
#[serde(rename_all = "camelCase")]
pub struct RecordingKeyConfigSpec {
    /// The alias ARN of the organisation's customer-managed symmetric KMS key:
    /// `arn:aws:kms:{region}:{account}:alias/{name}`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("!self.matches('^arn:[^:]*:kms:[^:]*:[^:]*:key/')").message(
            "spec.kmsKeyAliasArn is a key ARN (...:key/ID); use the alias ARN arn:aws:kms:REGION:ACCOUNT:alias/NAME so the key behind it can change"
        ),
        validation = Rule::new("!self.matches('^arn:[^:]*:kms:[^:]*:[^:]*:alias/aws(/.*)?$')").message(
            "spec.kmsKeyAliasArn names an AWS managed key (alias/aws/...), whose key policy cannot allow kekeeper; create a customer managed key and an alias for it"
        ),
        validation = Rule::new(
            "self.matches('^arn:[^:]*:kms:[^:]*:[^:]*:key/') || self.matches('^arn:aws(-us-gov|-cn)?:kms:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:alias/[a-zA-Z0-9/_-]+$')"
        ).message(
            "spec.kmsKeyAliasArn must be a KMS alias ARN like arn:aws:kms:us-east-1:111122223333:alias/recordings"
        ),
    )]
    pub kms_key_alias_arn: String,
    /// The organisation ids whose recordings these keys protect (1 to 100, unique); each gets
    /// its own key pair, bound to it by the encryption context. UUIDs when
    /// encryptionContextKey is genesys-cloud-organization-id (the default).
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub organization_ids: Vec<String>,
    /// When key pairs are replaced by new ones (default: monthly, and when the alias points at
    /// another KMS key). Replaced key pairs are kept for the recordings made with them.
    #[serde(default)]
    pub rotation: RotationPolicy,
    /// The RSA key pair KMS generates: RSA_2048, RSA_3072 (default) or RSA_4096. A change
    /// rotates every organisation's key pair.
    #[serde(default)]
    pub key_pair_spec: KeyPairSpec,
    /// The organisation's home region, where its KMS key must be; defaults to the operator's
    /// AWS region and must equal the alias ARN's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    )]
    pub home_region: Option<String>,
    /// The Regions of the KMS key's replicas, for a multi-Region key (`mrk-...`): reads
    /// (Decrypt) turn to them, in this order, when the home Region's KMS is unreachable,
    /// unavailable or throttling. Optional: the Regions DescribeKey names are tried after
    /// these; list them so that reads work even when the home Region fails before the
    /// operator has described the key (after a restart). Key pairs are only ever generated in
    /// the home Region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 64),
            regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
        )
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub kms_replica_regions: Vec<String>,
    /// The encryption context key that carries the organisation id (what the key policy's
    /// `kms:EncryptionContext:<key>` condition names); default genesys-cloud-organization-id.
    /// A change rotates every organisation's key pair.
    #[serde(default = "default_encryption_context_key")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("!self.startsWith('aws:')").message(
        "spec.encryptionContextKey must not start with aws:, which KMS reserves"
    ))]
    pub encryption_context_key: String,
    /// Superseded key pairs are kept at least this long after retirement: whole days (`2555d`)
    /// or hours (`48h`), at least 1d. Absent means forever; only when set are older retired key
    /// pair Secrets deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^[0-9]+(d|h)$"))]
    #[x_kube(validation = Rule::new("!self.matches('^0*(d|1?[0-9]h|2[0-3]h)$')").message(
        "spec.recordingRetention must be at least 1d or 24h: retired key pairs must outlive the recordings made with them"
    ))]
    pub recording_retention: Option<String>,
    /// Entries shown in `status.keyPairHistory` (1 to 100); key material is never trimmed by this.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
    /// No changes at all while true (no key pairs generated, retired or pruned); status is
    /// still written.
    #[serde(default)]
    pub suspend: bool,
    /// When the alias resolves to another KMS key: OnKmsKeyChange (default) re-encrypts every
    /// retained key pair's private key onto the new key with KMS ReEncrypt (the plaintext never
    /// leaves KMS), so the old key can be disabled once status.kmsKeys says no key pair depends
    /// on it; Never leaves them under their old keys (for principals without kms:ReEncrypt*;
    /// `kekeeper rewrap NAME` still asks for one rewrap).
    #[serde(default)]
    pub rewrap: RewrapPolicy,
}

/// Whether retained key pairs follow the alias onto a new KMS key (docs/design.md, "Rewrap").
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RewrapPolicy {
    #[default]
    OnKmsKeyChange,
    Never,
}

fn default_encryption_context_key() -> String {
    DEFAULT_ENCRYPTION_CONTEXT_KEY.to_owned()
}

fn default_history_limit() -> u32 {
    DEFAULT_HISTORY_LIMIT
}

impl RecordingKeyConfig {
    /// The [`ANNOTATION_ROTATE_NOW`] token, if any.
    pub fn rotate_now_token(&self) -> Option<&str> {
        self.annotation(ANNOTATION_ROTATE_NOW)
    }

    /// The [`ANNOTATION_REWRAP_NOW`] token, if any.
    pub fn rewrap_now_token(&self) -> Option<&str> {
        self.annotation(ANNOTATION_REWRAP_NOW)
    }

    /// The [`ANNOTATION_VERIFY_NOW`] token, if any.
    pub fn verify_now_token(&self) -> Option<&str> {
        self.annotation(ANNOTATION_VERIFY_NOW)
    }

    /// The rotate-now token honoured: `done` (a token whose rotations are all done) while it is
    /// still the one asked for, else the one status recorded. So a rotation whose status write
    /// was lost is not done twice, and a reconcile on a stale view never records an older
    /// token over a newer one.
    pub fn honoured_token<'a>(&'a self, done: Option<&'a str>) -> Option<&'a str> {
        match done {
            Some(token) if self.rotate_now_token() == Some(token) => Some(token),
            _ => self.status.as_ref()?.rotate_now_token.as_deref(),
        }
    }

    /// The key pair ids of the [`ANNOTATION_ACKNOWLEDGE`] annotation.
    pub fn acknowledged_key_pairs(&self) -> BTreeSet<String> {
        self.annotation(ANNOTATION_ACKNOWLEDGE)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// An annotation's value; an empty one counts as absent.
    fn annotation(&self, name: &str) -> Option<&str> {
        let value = self.metadata.annotations.as_ref()?.get(name)?;
        Some(value.as_str()).filter(|v| !v.is_empty())
    }
}

/// When key pairs rotate.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    /// How often every organisation gets a new key pair, counted from its active pair's
    /// creation in UTC calendar units: Daily, Weekly, Monthly (default; the same day of the
    /// next month, or its last day: Jan 31 + 1 month = Feb 28 or 29), Yearly (Feb 29 + 1 year
    /// = Feb 28) or Never.
    #[serde(default)]
    pub period: RotationPeriod,
    /// What happens when the alias is pointed at another KMS key: Rotate (default; new key
    /// pairs under the new key, reason KmsKeyChanged) or Ignore (keep the pairs until the
    /// next rotation).
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
    /// Bookkeeping: the number of organisation ids in the spec (the `Orgs` printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_count: Option<u32>,
    /// Bookkeeping: the alias ARN every active key pair was made under, once they all were.
    /// A summary: each key pair records its own alias (`activeKeyPairs[].kmsKeyAliasArn`), and
    /// that is what is compared with the spec; this is read only for key pairs made before
    /// kekeeper recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_alias_arn: Option<String>,
    /// Bookkeeping: the KMS key ARN the alias resolved to at the last KMS key check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// Bookkeeping: when the alias and the key states were last checked with DescribeKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_kms_key_check_time: Option<Timestamp>,
    /// Bookkeeping: the last `kekeeper.io/rotate-now` token that was honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_token: Option<String>,
    /// Bookkeeping: retained key pairs whose KMS key is disabled or pending deletion
    /// (`keyPairId: state`), as last seen by the KMS key check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_pairs_at_risk: Vec<String>,
    /// Consecutive reconciles that failed on KMS (or on a KMS key that cannot be used); reset
    /// by the next success. With `lastFailureTime` it sets the retry backoff (5 s doubling to
    /// 5 min), which therefore survives restarts and leader changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
    /// When the last of the `failedAttempts` happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Timestamp>,
    /// Bookkeeping: the `kekeeper.io/rotate-now` token the resource carried at the last of the
    /// `failedAttempts`. A newer token is tried at once, once, even while the backoff runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_rotate_now_token: Option<String>,
    /// Bookkeeping: the highest key pair sequence number ever used per organisation id, so a
    /// Secret name is never used for two key pairs, even after a Secret was deleted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub highest_sequences: BTreeMap<String, u64>,
    /// Key pairs with a custody problem: a Secret that is gone (`KeyPairMissing`), whose public
    /// key disagrees with the fingerprint recorded here (`PublicKeyMismatch`), or whose private
    /// key blob failed the KMS custody check (`CustodyCheckFailed`). Missing and failed pairs
    /// stay listed, also past `historyLimit`, until acknowledged with the annotation
    /// `kekeeper.io/acknowledge-key-pairs: <keyPairId>,...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_pair_problems: Vec<KeyPairProblem>,
    /// Bookkeeping: when the active key pairs' private key blobs were last decrypted through
    /// KMS and compared with the recorded fingerprints (`--key-verify-interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key_verify_time: Option<Timestamp>,
    /// When the last custody check was answered by a replica of a multi-Region key because
    /// the home Region's KMS failed: which Region answered and what the home Region said.
    /// Absent when the home Region answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key_verify_replica_read: Option<ReplicaReadStatus>,
    /// Bookkeeping: the last `kekeeper.io/verify-now` token honoured with a custody check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_now_token: Option<String>,
    /// For each KMS key, how many retained key pairs have their newest proven private key blob
    /// under it: a key no longer listed here may be disabled and, later, deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kms_keys: Vec<KmsKeyUse>,
    /// Bookkeeping: the last `kekeeper.io/rewrap-now` token honoured (its rewrap is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrap_now_token: Option<String>,
}

/// How many retained key pairs depend on one KMS key.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsKeyUse {
    pub kms_key_arn: String,
    /// Retained key pairs whose newest proven private key blob is under this key.
    pub key_pairs: u32,
}

/// A KMS read a replica answered because the home Region failed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReadStatus {
    /// The replica's Region, which answered.
    pub region: String,
    pub home_region: String,
    /// The home Region's error code (`NetworkError`, `KeyUnavailableException`, ...).
    pub home_error: String,
}

impl ReplicaReadStatus {
    pub fn of(read: &crate::kms::ReplicaRead) -> Self {
        ReplicaReadStatus {
            region: read.region.clone(),
            home_region: read.home_region.clone(),
            home_error: read.home_code.clone(),
        }
    }
}

impl std::fmt::Display for ReplicaReadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "through replica in {}: the home Region {} failed with {}",
            self.region, self.home_region, self.home_error
        )
    }
}

/// One key pair's custody problem.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairProblem {
    pub organization_id: String,
    pub key_pair_id: String,
    pub secret_name: String,
    /// `KeyPairMissing`, `PublicKeyMismatch`, `CustodyCheckFailed` or `KeyPairQuarantined`.
    pub reason: String,
    pub message: String,
    /// When kekeeper first saw the problem.
    pub since: Timestamp,
    /// `KeyPairQuarantined`: the fingerprint of the public key that failed its proof; the pair
    /// stays quarantined while its Secret or store object holds that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_fingerprint: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveKeyPair {
    pub organization_id: String,
    pub key_pair_id: String,
    pub created_at: Timestamp,
    pub kms_key_arn: String,
    /// The alias ARN (spec.kmsKeyAliasArn) the key pair was made under: a key pair whose alias
    /// differs from the spec's is replaced (reason SpecChanged). Absent for key pairs made
    /// before kekeeper recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_alias_arn: Option<String>,
    pub key_pair_spec: KeyPairSpec,
    pub public_key_fingerprint: String,
    pub secret_name: String,
    /// The KMS key of the key pair's newest proven private key blob when it is not kmsKeyArn
    /// (the key it was made under): a blob made by KMS ReEncrypt and proven through KMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped_kms_key_arn: Option<String>,
    /// When that blob was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped_at: Option<Timestamp>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairHistoryEntry {
    pub organization_id: String,
    pub key_pair_id: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
    /// Why the pair was made: `NoActiveKeyPair` (first pair, or an organisation added),
    /// `SpecChanged`, `KmsKeyChanged`, `IntegrityCheckFailed` (the previous pair failed the
    /// custody check), `RotateNowRequested` or `PeriodElapsed`.
    pub reason: String,
    pub kms_key_arn: String,
    /// The alias ARN (spec.kmsKeyAliasArn) the key pair was made under: a key pair whose alias
    /// differs from the spec's is replaced (reason SpecChanged). Absent for key pairs made
    /// before kekeeper recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_alias_arn: Option<String>,
    pub public_key_fingerprint: String,
    pub secret_name: String,
    /// The sequence number in the Secret name (per organisation, never reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// True when the key pair's Secret is gone (see `keyPairProblems`): recordings made with it
    /// cannot be decrypted unless the Secret is restored from a backup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// The KMS key of the key pair's newest proven private key blob when it is not kmsKeyArn
    /// (the key it was made under): a blob made by KMS ReEncrypt and proven through KMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped_kms_key_arn: Option<String>,
    /// When that blob was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped_at: Option<Timestamp>,
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
    /// When a later KMS interaction succeeded; absent while the error is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
}

impl LastKmsError {
    /// `status.lastKmsError` for `err`, seen at `time`.
    pub fn of(err: &KmsError, time: Timestamp) -> Self {
        LastKmsError {
            time,
            operation: err.operation.as_str().to_owned(),
            code: err.code.clone(),
            message: err.message.clone(),
            resolved_at: None,
        }
    }
}

/// The CRD as YAML, exactly as committed under `crds/` and printed by `kekeeper crd`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}

/// The RecordingKeyConfig CRD: the derived one, with the integer formats a real API server
/// knows (`int64`) in place of schemars' `uint32`/`uint64`, which it warns about on every
/// apply (docs/design.md, "The CRD on a real API server").
pub fn crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = RecordingKeyConfig::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            known_formats(schema);
        }
    }
    crd
}

fn known_formats(schema: &mut JSONSchemaProps) {
    if matches!(schema.format.as_deref(), Some("uint32" | "uint64")) {
        schema.format = Some("int64".to_owned());
    }
    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        known_formats(property);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        known_formats(values);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => known_formats(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(known_formats),
        None => {}
    }
    for alternatives in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        alternatives.iter_mut().flatten().for_each(known_formats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(annotations: &[(&str, &str)]) -> RecordingKeyConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        rkc
    }

    #[test]
    fn the_annotations_are_read_on_the_resource() {
        let rkc = annotated(&[
            (ANNOTATION_ROTATE_NOW, "t1"),
            (ANNOTATION_VERIFY_NOW, ""),
            (ANNOTATION_ACKNOWLEDGE, " other-id, kp-1 ,"),
        ]);
        assert_eq!(rkc.rotate_now_token(), Some("t1"));
        assert_eq!(
            rkc.verify_now_token(),
            None,
            "an empty token asks for nothing"
        );
        assert_eq!(
            rkc.acknowledged_key_pairs(),
            BTreeSet::from(["other-id".to_owned(), "kp-1".to_owned()])
        );
        assert!(annotated(&[]).acknowledged_key_pairs().is_empty());
    }

    #[test]
    fn a_done_token_is_honoured_only_while_it_is_still_asked_for() {
        let mut rkc = annotated(&[(ANNOTATION_ROTATE_NOW, "t2")]);
        rkc.status = Some(RecordingKeyConfigStatus {
            rotate_now_token: Some("t1".into()),
            ..RecordingKeyConfigStatus::default()
        });
        assert_eq!(rkc.honoured_token(Some("t2")), Some("t2"));
        // Done on a stale view, or not done at all: status keeps what it recorded.
        assert_eq!(rkc.honoured_token(Some("t0")), Some("t1"));
        assert_eq!(rkc.honoured_token(None), Some("t1"));
    }
}
