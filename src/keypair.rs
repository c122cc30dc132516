//! A key pair record and its Secret layout (docs/design.md#key-ring): type
//! `kekeeper.io/key-pair`, `publicKey.pem`, `privateKey.kms`, `metadata.json`, labels. Never
//! holds a plaintext private key.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::crd::{ActiveKeyPair, KeyPairHistoryEntry};
use crate::kms::{EncryptionContext, GeneratedKeyPair, KeyPairSpec};

pub const SECRET_TYPE: &str = "kekeeper.io/key-pair";
pub const LABEL_CONFIG: &str = "kekeeper.io/config";
pub const LABEL_ORGANIZATION: &str = "kekeeper.io/organization-id";
pub const LABEL_STATE: &str = "kekeeper.io/state";
/// The key pair id, so `kekeeper decrypt` finds the Secret a recording's header names.
pub const LABEL_KEY_PAIR_ID: &str = "kekeeper.io/key-pair-id";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The full organisation id (the label may only carry a hash of it).
pub const ANNOTATION_ORGANIZATION: &str = "kekeeper.io/organization-id";
/// The RecordingKeyConfig's name, exactly: the `kekeeper.io/config` label carries only a hash
/// of a name over 63 characters (docs/design.md, "Which config a Secret wakes").
pub const ANNOTATION_CONFIG: &str = "kekeeper.io/config-name";
pub const ANNOTATION_RETIRED_AT: &str = "kekeeper.io/retired-at";
pub const ANNOTATION_FINGERPRINT: &str = "kekeeper.io/public-key-fingerprint";
/// The `kekeeper.io/rotate-now` token a key pair Secret was generated under, so a retry after
/// a crash before the status write does not rotate a second time for the same token.
pub const ANNOTATION_ROTATE_NOW_TOKEN: &str = "kekeeper.io/rotate-now-token";

pub const DATA_PUBLIC_KEY: &str = "publicKey.pem";
pub const DATA_PRIVATE_KEY: &str = "privateKey.kms";
pub const DATA_METADATA: &str = "metadata.json";
/// The data keys of a wrap (docs/design.md, "Rewrap"): `privateKey.<KEY-ID>.kms`, the blob
/// under the KMS key whose id is KEY-ID, and `privateKey.<KEY-ID>.json`, which names that key's
/// ARN and when the wrap was made. One wrap per KMS key and Secret, added once, never changed.
const WRAP_PREFIX: &str = "privateKey.";
const WRAP_BLOB_SUFFIX: &str = ".kms";
const WRAP_ENTRY_SUFFIX: &str = ".json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPairState {
    Active,
    Retired,
}

impl KeyPairState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPairState::Active => "active",
            KeyPairState::Retired => "retired",
        }
    }
}

/// What kekeeper knows about one key pair, without its private key blob: what the caches,
/// the key ring, the plan and status read. A pair with its blob is a [`KeyPairSecret`], a
/// different type, so nothing that needs the blob (the custody check) can be handed a record
/// from the cache, which keeps none (docs/design.md, "Blobs by type").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPairRecord {
    /// The RecordingKeyConfig this pair belongs to.
    pub config_name: String,
    pub namespace: String,
    pub organization_id: String,
    /// 1, 2, 3, ... per (config, organisation); part of the deterministic Secret name.
    pub sequence: u64,
    /// The Secret's `metadata.name`: as read, never recomputed from labels (a long config name
    /// is only a hash in the label).
    pub secret_name: String,
    pub key_pair_id: String,
    pub kms_key_arn: String,
    /// The alias ARN (`spec.kmsKeyAliasArn`) the pair was made under; `None` for a pair made
    /// before kekeeper recorded it (docs/design.md, "The alias a pair was made under").
    pub kms_key_alias_arn: Option<String>,
    pub key_pair_spec: KeyPairSpec,
    pub encryption_context: EncryptionContext,
    pub created_at: Timestamp,
    /// Why the pair was made (`Created`, `PeriodElapsed`, `RotateNowRequested`, ...).
    pub reason: String,
    pub state: KeyPairState,
    pub retired_at: Option<Timestamp>,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
}

/// A key pair as its Secret holds it: the record and the KMS ciphertext blob of the private
/// key, which is never empty (a Secret without one does not parse).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPairSecret {
    pub record: KeyPairRecord,
    /// The KMS ciphertext blob of the private key, under `record.kms_key_arn`: the blob KMS
    /// made the pair with, never changed.
    pub private_key_ciphertext: Vec<u8>,
    /// Further blobs of the same private key, each made by KMS `ReEncrypt` onto another KMS
    /// key, oldest first (docs/design.md, "Rewrap"). Empty for a pair never rewrapped.
    pub wraps: Vec<Wrap>,
}

/// The private key of a pair, re-encrypted by KMS `ReEncrypt` onto another KMS key with the
/// same encryption context: the plaintext never left KMS (docs/design.md, "Rewrap"). Nothing
/// relies on a wrap until KMS has proven it (Decrypt under `kms_key_arn` gives the pair's
/// private key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrap {
    /// The ARN of the KMS key this blob is under (a key ARN, never an alias).
    pub kms_key_arn: String,
    /// The KMS ciphertext blob.
    pub ciphertext: Vec<u8>,
    pub created_at: Timestamp,
}

impl std::ops::Deref for KeyPairSecret {
    type Target = KeyPairRecord;

    fn deref(&self) -> &KeyPairRecord {
        &self.record
    }
}

impl std::ops::DerefMut for KeyPairSecret {
    fn deref_mut(&mut self) -> &mut KeyPairRecord {
        &mut self.record
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyPairError {
    #[error("key pair Secret {name}: {message}")]
    InvalidSecret { name: String, message: String },
    #[error("public key PEM: {0}")]
    InvalidPem(String),
}

/// `metadata.json` in the Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretMetadata {
    key_pair_id: String,
    organization_id: String,
    kms_key_arn: String,
    /// Absent in Secrets made before kekeeper recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_key_alias_arn: Option<String>,
    key_pair_spec: KeyPairSpec,
    /// As KMS takes it: `{<context key>: <organisation id>}`.
    encryption_context: BTreeMap<String, String>,
    created_at: Timestamp,
    reason: String,
    sequence: u64,
}

impl KeyPairSecret {
    /// A freshly generated (and self-tested) key pair, active, made under the alias
    /// `kms_key_alias_arn` (which resolved to `key_pair.kms_key_arn`).
    #[allow(clippy::too_many_arguments)]
    pub fn new_active(
        config_name: &str,
        namespace: &str,
        sequence: u64,
        key_pair: GeneratedKeyPair,
        kms_key_alias_arn: &str,
        encryption_context: EncryptionContext,
        created_at: Timestamp,
        reason: &str,
    ) -> Self {
        let record = KeyPairRecord {
            config_name: config_name.to_owned(),
            namespace: namespace.to_owned(),
            organization_id: encryption_context.organization_id.clone(),
            sequence,
            secret_name: KeyPairRecord::secret_name(
                config_name,
                &encryption_context.organization_id,
                sequence,
            ),
            key_pair_id: new_key_pair_id(),
            kms_key_arn: key_pair.kms_key_arn,
            kms_key_alias_arn: Some(kms_key_alias_arn.to_owned()),
            key_pair_spec: key_pair.spec,
            encryption_context,
            created_at,
            reason: reason.to_owned(),
            state: KeyPairState::Active,
            retired_at: None,
            public_key_der: key_pair.public_key_der,
        };
        KeyPairSecret {
            record,
            private_key_ciphertext: key_pair.private_key_ciphertext,
            wraps: Vec::new(),
        }
    }

    /// The record, without the blob.
    pub fn into_record(self) -> KeyPairRecord {
        self.record
    }
}

impl KeyPairRecord {
    /// The deterministic Secret name of (config, organisation, sequence), so a retry after a
    /// crash finds the same object: `{config}-{first 10 hex of sha256(org)}-{sequence:04}`, a
    /// DNS-1123 subdomain of at most 253 characters. A config name too long to fit is cut and
    /// a hash of the whole name keeps it unique.
    pub fn secret_name(config: &str, organization_id: &str, sequence: u64) -> String {
        let suffix = format!(
            "-{}-{sequence:04}",
            &sha256_hex(organization_id.as_bytes())[..10]
        );
        name_with_suffix(&config.to_ascii_lowercase(), &suffix)
    }

    /// This record's Secret name.
    pub fn name(&self) -> String {
        self.secret_name.clone()
    }
}

impl KeyPairSecret {
    /// The Secret the controller stores. No owner reference: deleting the RecordingKeyConfig
    /// must not delete key material (docs/design.md#key-custody). A `metadata.json` that
    /// cannot be serialised is an error, never an empty object (docs/design.md, "Serialisation
    /// failures are errors").
    pub fn to_secret(&self) -> Result<Secret, serde_json::Error> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_CONFIG.to_owned(), config_label(&self.config_name));
        labels.insert(
            LABEL_ORGANIZATION.to_owned(),
            organization_label(&self.organization_id),
        );
        labels.insert(LABEL_STATE.to_owned(), self.state.as_str().to_owned());
        labels.insert(
            LABEL_KEY_PAIR_ID.to_owned(),
            key_pair_id_label(&self.key_pair_id),
        );
        labels.insert(LABEL_MANAGED_BY.to_owned(), "kekeeper".to_owned());

        let mut annotations = BTreeMap::new();
        // Not when all that is known of the name is its hashed label (a pair read from a
        // Secret made before the annotation, whose config was not found).
        if !is_hashed_label(&self.config_name) {
            annotations.insert(ANNOTATION_CONFIG.to_owned(), self.config_name.clone());
        }
        annotations.insert(
            ANNOTATION_ORGANIZATION.to_owned(),
            self.organization_id.clone(),
        );
        annotations.insert(ANNOTATION_FINGERPRINT.to_owned(), self.fingerprint());
        if let Some(retired_at) = self.retired_at {
            annotations.insert(ANNOTATION_RETIRED_AT.to_owned(), retired_at.to_string());
        }

        let metadata = SecretMetadata {
            key_pair_id: self.key_pair_id.clone(),
            organization_id: self.organization_id.clone(),
            kms_key_arn: self.kms_key_arn.clone(),
            kms_key_alias_arn: self.kms_key_alias_arn.clone(),
            key_pair_spec: self.key_pair_spec,
            encryption_context: BTreeMap::from([(
                self.encryption_context.key.clone(),
                self.encryption_context.organization_id.clone(),
            )]),
            created_at: self.created_at,
            reason: self.reason.clone(),
            sequence: self.sequence,
        };
        let metadata_json = serde_json::to_vec_pretty(&metadata)?;

        let mut data = BTreeMap::from([
            (
                DATA_PUBLIC_KEY.to_owned(),
                ByteString(self.public_key_pem().into_bytes()),
            ),
            (
                DATA_PRIVATE_KEY.to_owned(),
                ByteString(self.private_key_ciphertext.clone()),
            ),
            (DATA_METADATA.to_owned(), ByteString(metadata_json)),
        ]);
        for wrap in &self.wraps {
            data.extend(wrap_secret_data(wrap)?);
        }

        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(self.name()),
                namespace: (!self.namespace.is_empty()).then(|| self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(data),
            ..Secret::default()
        })
    }

    /// The inverse of [`Self::to_secret`]; also reads `stringData` for hand-written manifests.
    pub fn from_secret(secret: &Secret) -> Result<Self, KeyPairError> {
        let name = secret
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "(unnamed)".to_owned());
        let fail = |message: String| KeyPairError::InvalidSecret {
            name: name.clone(),
            message,
        };
        match secret.type_.as_deref() {
            Some(SECRET_TYPE) => {}
            other => {
                return Err(fail(format!("type is {other:?}, expected {SECRET_TYPE:?}")));
            }
        }
        let field = |key: &str| -> Result<Vec<u8>, KeyPairError> {
            if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
                return Ok(value.0.clone());
            }
            if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
                return Ok(value.clone().into_bytes());
            }
            Err(fail(format!("data.{key} is missing")))
        };

        let metadata: SecretMetadata = serde_json::from_slice(&field(DATA_METADATA)?)
            .map_err(|e| fail(format!("data.{DATA_METADATA} is not valid: {e}")))?;
        let pem = String::from_utf8(field(DATA_PUBLIC_KEY)?)
            .map_err(|_| fail(format!("data.{DATA_PUBLIC_KEY} is not UTF-8 text")))?;
        let public_key_der =
            parse_public_key_pem(&pem).map_err(|e| fail(format!("data.{DATA_PUBLIC_KEY}: {e}")))?;
        let private_key_ciphertext = field(DATA_PRIVATE_KEY)?;
        if private_key_ciphertext.is_empty() {
            return Err(fail(format!("data.{DATA_PRIVATE_KEY} is empty")));
        }

        let mut context = metadata.encryption_context.into_iter();
        let encryption_context = match (context.next(), context.next()) {
            (Some((key, organization_id)), None) => EncryptionContext {
                key,
                organization_id,
            },
            _ => {
                return Err(fail(format!(
                    "data.{DATA_METADATA}: encryptionContext must have exactly one entry"
                )));
            }
        };
        if encryption_context.organization_id != metadata.organization_id {
            return Err(fail(format!(
                "data.{DATA_METADATA}: encryptionContext names organisation {:?} but organizationId is {:?}",
                encryption_context.organization_id, metadata.organization_id
            )));
        }

        let labels = secret.metadata.labels.as_ref();
        if labels.and_then(|l| l.get(LABEL_CONFIG)).is_none() {
            return Err(fail(format!("label {LABEL_CONFIG} is missing")));
        }
        let config_name = match config_of(&secret.metadata) {
            Some(SecretConfig::Named(name)) => name.to_owned(),
            // Made before the annotation: the label, which the reader replaces with the name
            // once it knows it.
            Some(SecretConfig::Hashed(label)) => label.to_owned(),
            None => return Err(fail(format!("label {LABEL_CONFIG} is missing"))),
        };
        let state = match labels.and_then(|l| l.get(LABEL_STATE)).map(String::as_str) {
            Some("active") => KeyPairState::Active,
            Some("retired") => KeyPairState::Retired,
            Some(other) => {
                return Err(fail(format!(
                    "label {LABEL_STATE} is {other:?}, expected active or retired"
                )));
            }
            None => return Err(fail(format!("label {LABEL_STATE} is missing"))),
        };
        let retired_at = match secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_RETIRED_AT))
        {
            Some(value) => Some(value.parse::<Timestamp>().map_err(|e| {
                fail(format!(
                    "annotation {ANNOTATION_RETIRED_AT} {value:?} is not a timestamp: {e}"
                ))
            })?),
            None => None,
        };

        let record = KeyPairRecord {
            config_name,
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            organization_id: metadata.organization_id,
            sequence: metadata.sequence,
            secret_name: name,
            key_pair_id: metadata.key_pair_id,
            kms_key_arn: metadata.kms_key_arn,
            kms_key_alias_arn: metadata.kms_key_alias_arn,
            key_pair_spec: metadata.key_pair_spec,
            encryption_context,
            created_at: metadata.created_at,
            reason: metadata.reason,
            state,
            retired_at,
            public_key_der,
        };
        Ok(KeyPairSecret {
            record,
            private_key_ciphertext,
            wraps: wraps_from_secret(secret),
        })
    }

    /// The wrap of this pair under `kms_key_arn`, if its Secret holds one.
    pub fn wrap_under(&self, kms_key_arn: &str) -> Option<&Wrap> {
        self.wraps.iter().find(|w| w.kms_key_arn == kms_key_arn)
    }

    /// The generated pair this Secret stores, e.g. to re-run [`crate::selftest::verify`] on it.
    pub fn key_pair(&self) -> GeneratedKeyPair {
        GeneratedKeyPair {
            kms_key_arn: self.kms_key_arn.clone(),
            spec: self.key_pair_spec,
            public_key_der: self.public_key_der.clone(),
            private_key_ciphertext: self.private_key_ciphertext.clone(),
        }
    }
}

impl KeyPairRecord {
    /// Marks the pair superseded; its material stays (historical recordings need it).
    pub fn retire(&mut self, at: Timestamp) {
        if self.state == KeyPairState::Active {
            self.state = KeyPairState::Retired;
            self.retired_at = Some(at);
        }
    }

    /// `SHA256:` + unpadded base64 of SHA-256 over the SubjectPublicKeyInfo DER (the OpenSSH
    /// fingerprint style).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key_der)
    }

    pub fn public_key_pem(&self) -> String {
        public_key_pem(&self.public_key_der)
    }
}

impl KeyPairRecord {
    /// This pair as `status.activeKeyPairs[]`.
    pub fn to_active_key_pair(&self) -> ActiveKeyPair {
        ActiveKeyPair {
            organization_id: self.organization_id.clone(),
            key_pair_id: self.key_pair_id.clone(),
            created_at: self.created_at,
            kms_key_arn: self.kms_key_arn.clone(),
            kms_key_alias_arn: self.kms_key_alias_arn.clone(),
            key_pair_spec: self.key_pair_spec,
            public_key_fingerprint: self.fingerprint(),
            secret_name: self.name(),
        }
    }

    /// This pair as `status.keyPairHistory[]`.
    pub fn to_history_entry(&self) -> KeyPairHistoryEntry {
        KeyPairHistoryEntry {
            organization_id: self.organization_id.clone(),
            key_pair_id: self.key_pair_id.clone(),
            created_at: self.created_at,
            retired_at: self.retired_at,
            reason: self.reason.clone(),
            kms_key_arn: self.kms_key_arn.clone(),
            kms_key_alias_arn: self.kms_key_alias_arn.clone(),
            public_key_fingerprint: self.fingerprint(),
            secret_name: self.name(),
            sequence: Some(self.sequence),
            missing: false,
        }
    }
}

/// The `privateKey.<KEY-ID>.json` entry of a wrap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrapEntry {
    kms_key_arn: String,
    created_at: Timestamp,
}

/// The id of a KMS key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`): a UUID or `mrk-` and 32 hex
/// digits; `None` for anything else (an alias, a malformed ARN).
pub fn kms_key_id(kms_key_arn: &str) -> Option<&str> {
    let (prefix, id) = kms_key_arn.rsplit_once(":key/")?;
    if !prefix.starts_with("arn:") || prefix.split(':').count() != 5 {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let uuid = id.len() == 36
        && id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && id.split('-').all(hex);
    let mrk = id
        .strip_prefix("mrk-")
        .is_some_and(|rest| rest.len() == 32 && hex(rest));
    (uuid || mrk).then_some(id)
}

/// The two data keys of the wrap under `kms_key_arn`: the blob and its entry. An ARN without a
/// key id has none (no wrap is ever made under it).
pub fn wrap_data_keys(kms_key_arn: &str) -> Option<(String, String)> {
    let id = kms_key_id(kms_key_arn)?;
    Some((
        format!("{WRAP_PREFIX}{id}{WRAP_BLOB_SUFFIX}"),
        format!("{WRAP_PREFIX}{id}{WRAP_ENTRY_SUFFIX}"),
    ))
}

/// A wrap as Secret data: `privateKey.<KEY-ID>.kms` and `privateKey.<KEY-ID>.json`. What a
/// rewrap adds to a key pair Secret with a merge patch (docs/design.md, "Rewrap"); an ARN
/// without a key id is an error, as is an entry that cannot be serialised.
pub fn wrap_secret_data(wrap: &Wrap) -> Result<BTreeMap<String, ByteString>, serde_json::Error> {
    use serde::ser::Error as _;
    let (blob, entry) = wrap_data_keys(&wrap.kms_key_arn).ok_or_else(|| {
        serde_json::Error::custom(format!("{} is not a KMS key ARN", wrap.kms_key_arn))
    })?;
    let json = serde_json::to_vec(&WrapEntry {
        kms_key_arn: wrap.kms_key_arn.clone(),
        created_at: wrap.created_at,
    })?;
    Ok(BTreeMap::from([
        (blob, ByteString(wrap.ciphertext.clone())),
        (entry, ByteString(json)),
    ]))
}

/// The wraps a key pair Secret holds, oldest first. An entry that does not parse, names another
/// key than its data key, or lacks its blob is not a wrap and is skipped: a namespace editor
/// can add data keys to a Secret, so a wrap is only a candidate until status records it or a
/// proof through KMS passes (docs/design.md, "Rewrap").
pub fn wraps_from_secret(secret: &Secret) -> Vec<Wrap> {
    let Some(data) = secret.data.as_ref() else {
        return Vec::new();
    };
    let mut wraps: Vec<Wrap> = data
        .iter()
        .filter_map(|(key, value)| {
            let id = key
                .strip_prefix(WRAP_PREFIX)?
                .strip_suffix(WRAP_ENTRY_SUFFIX)?;
            let entry: WrapEntry = serde_json::from_slice(&value.0).ok()?;
            (kms_key_id(&entry.kms_key_arn) == Some(id)).then_some(())?;
            let blob = data.get(&format!("{WRAP_PREFIX}{id}{WRAP_BLOB_SUFFIX}"))?;
            (!blob.0.is_empty()).then(|| Wrap {
                kms_key_arn: entry.kms_key_arn,
                ciphertext: blob.0.clone(),
                created_at: entry.created_at,
            })
        })
        .collect();
    wraps.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.kms_key_arn.cmp(&b.kms_key_arn))
    });
    wraps
}

/// `{name}{suffix}` as a DNS-1123 subdomain of at most 253 characters: a name too long to fit
/// is cut and a hash of the whole name keeps it unique (`{cut}-{8 hex}{suffix}`). The Secret
/// and ConfigMap names derived from a RecordingKeyConfig's name, which may itself be 253
/// characters long.
pub fn name_with_suffix(name: &str, suffix: &str) -> String {
    let room = 253 - suffix.len();
    if name.len() <= room {
        return format!("{name}{suffix}");
    }
    let hash = &sha256_hex(name.as_bytes())[..8];
    let keep = room - hash.len() - 1;
    let cut = name[..keep].trim_end_matches(['-', '.']);
    format!("{cut}-{hash}{suffix}")
}

/// The `kekeeper.io/config` label value of a RecordingKeyConfig's objects (its name, or a hash
/// of a name too long for a label).
pub fn config_label(config_name: &str) -> String {
    label_value(config_name)
}

/// Which RecordingKeyConfig a key pair Secret belongs to, as its metadata says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretConfig<'a> {
    /// The config's name, exactly.
    Named(&'a str),
    /// Only the label of a Secret made before the name annotation, which is a hash of a name
    /// over 63 characters: the config is the one whose [`config_label`] it is.
    Hashed(&'a str),
}

/// The config a key pair Secret belongs to: the `kekeeper.io/config-name` annotation when it
/// agrees with the `kekeeper.io/config` label (the label is what lists the config's Secrets, so
/// an annotation edited to name another config is not believed); else the label, a name when
/// it is not hash-shaped; `None` without the label (docs/design.md, "Which config a Secret
/// wakes").
pub fn config_of(metadata: &ObjectMeta) -> Option<SecretConfig<'_>> {
    let label = metadata.labels.as_ref()?.get(LABEL_CONFIG)?;
    let named = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CONFIG))
        .filter(|name| config_label(name) == *label);
    Some(match named {
        Some(name) => SecretConfig::Named(name),
        None if is_hashed_label(label) => SecretConfig::Hashed(label),
        None => SecretConfig::Named(label),
    })
}

/// Whether a label value has the shape [`label_value`] gives a hashed value (`sha256-` and 48
/// hex characters). A config may be named like that too: the reader then finds it by its
/// label as well.
pub fn is_hashed_label(value: &str) -> bool {
    value.strip_prefix("sha256-").is_some_and(|hex| {
        hex.len() == 48
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The label selector of every key pair Secret of a RecordingKeyConfig.
pub fn config_selector(config_name: &str) -> String {
    format!("{LABEL_CONFIG}={}", config_label(config_name))
}

/// `SHA256:` + unpadded base64 of SHA-256 over a SubjectPublicKeyInfo DER.
pub fn fingerprint(public_key_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key_der);
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref()))
}

/// A random key pair id in the UUID v4 format.
pub fn new_key_pair_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG failing is not something a caller can recover from.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        panic!("system random number generator failed");
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// PEM `PUBLIC KEY` (SubjectPublicKeyInfo) with 64-character lines.
pub fn public_key_pem(public_key_der: &[u8]) -> String {
    let body = STANDARD.encode(public_key_der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// The DER inside a PEM `PUBLIC KEY` block.
pub fn parse_public_key_pem(pem: &str) -> Result<Vec<u8>, KeyPairError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let start = pem.find(BEGIN).ok_or_else(|| {
        KeyPairError::InvalidPem(format!(
            "no {BEGIN:?} line (expected a SubjectPublicKeyInfo PEM)"
        ))
    })? + BEGIN.len();
    let end = pem[start..]
        .find(END)
        .ok_or_else(|| KeyPairError::InvalidPem(format!("no {END:?} line")))?
        + start;
    let body: String = pem[start..end].split_whitespace().collect();
    let der = STANDARD
        .decode(body)
        .map_err(|e| KeyPairError::InvalidPem(format!("base64: {e}")))?;
    if der.is_empty() {
        return Err(KeyPairError::InvalidPem("empty key".to_owned()));
    }
    Ok(der)
}

fn sha256_hex(input: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Kubernetes label value: at most 63 characters, alphanumerics and `-_.` inside.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric())
}

fn label_value(value: &str) -> String {
    if is_label_value(value) {
        value.to_owned()
    } else {
        format!("sha256-{}", &sha256_hex(value.as_bytes())[..48])
    }
}

/// The `kekeeper.io/key-pair-id` label: the id itself (ids are UUIDs, valid label values), or
/// a hash for an id from elsewhere that is not a label value.
pub fn key_pair_id_label(key_pair_id: &str) -> String {
    label_value(key_pair_id)
}

/// The `kekeeper.io/organization-id` label: the id itself when it is a valid label value,
/// otherwise `sha256-` and 48 hex characters of its hash (the full id is in an annotation).
pub fn organization_label(organization_id: &str) -> String {
    label_value(organization_id)
}

/// An active key pair for unit tests: resource `recordings` in `telephony`, KMS key
/// `arn:aws:kms:us-east-1:111122223333:key/k1` under the alias `alias/recordings`, the
/// default context key, reason
/// `NoActiveKeyPair`, made-up key material (`public_key_der` as given).
#[cfg(test)]
pub(crate) fn test_pair(
    organization_id: &str,
    sequence: u64,
    spec: KeyPairSpec,
    public_key_der: Vec<u8>,
    created_at: Timestamp,
) -> KeyPairRecord {
    KeyPairSecret::new_active(
        "recordings",
        "telephony",
        sequence,
        GeneratedKeyPair {
            kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/k1".into(),
            spec,
            public_key_der,
            private_key_ciphertext: vec![9; 8],
        },
        "arn:aws:kms:us-east-1:111122223333:alias/recordings",
        EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: organization_id.into(),
        },
        created_at,
        "NoActiveKeyPair",
    )
    .into_record()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record() -> KeyPairSecret {
        let record = KeyPairRecord {
            config_name: "recordings".into(),
            namespace: "telephony".into(),
            organization_id: "3fa85f64-5717-4562-b3fc-2c963f66afa6".into(),
            sequence: 3,
            secret_name: KeyPairRecord::secret_name(
                "recordings",
                "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                3,
            ),
            key_pair_id: new_key_pair_id(),
            kms_key_arn:
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            kms_key_alias_arn: Some("arn:aws:kms:us-east-1:111122223333:alias/recordings".into()),
            key_pair_spec: KeyPairSpec::Rsa3072,
            encryption_context: EncryptionContext {
                key: "genesys-cloud-organization-id".into(),
                organization_id: "3fa85f64-5717-4562-b3fc-2c963f66afa6".into(),
            },
            created_at: "2026-11-29T07:00:00Z".parse().unwrap(),
            reason: "Created".into(),
            state: KeyPairState::Active,
            retired_at: None,
            public_key_der: (0u8..=255).cycle().take(422).collect(),
        };
        KeyPairSecret {
            record,
            private_key_ciphertext: vec![7; 1876],
            wraps: Vec::new(),
        }
    }

    fn is_dns_subdomain(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn secret_names_are_deterministic_short_and_valid() {
        let org = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
        let a = KeyPairRecord::secret_name("recordings", org, 1);
        assert_eq!(a, KeyPairRecord::secret_name("recordings", org, 1));
        assert!(a.starts_with("recordings-") && a.ends_with("-0001"), "{a}");
        assert_eq!(a.len(), "recordings".len() + 16);
        assert_ne!(a, KeyPairRecord::secret_name("recordings", "other", 1));
        assert_ne!(a, KeyPairRecord::secret_name("recordings", org, 2));
        assert!(KeyPairRecord::secret_name("r", org, 12345).ends_with("-12345"));

        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let other_long = format!("{}.{}", "a".repeat(200), "c".repeat(52));
        for config in [
            "recordings",
            "my.config",
            long.as_str(),
            other_long.as_str(),
        ] {
            for org in [org, "ORG WITH SPACES/ü", ""] {
                let name = KeyPairRecord::secret_name(config, org, 42);
                assert!(is_dns_subdomain(&name), "{name}");
            }
        }
        assert_ne!(
            KeyPairRecord::secret_name(&long, org, 1),
            KeyPairRecord::secret_name(&other_long, org, 1)
        );
    }

    #[test]
    fn a_record_round_trips_through_its_secret() {
        let mut record = record();
        let secret = record.to_secret().unwrap();
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(record.name().as_str())
        );
        assert!(secret.metadata.owner_references.is_none());
        let labels = secret.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_CONFIG], "recordings");
        assert_eq!(labels[LABEL_ORGANIZATION], record.organization_id);
        assert_eq!(labels[LABEL_STATE], "active");
        assert_eq!(labels[LABEL_KEY_PAIR_ID], record.key_pair_id);
        let data = secret.data.clone().unwrap();
        assert!(
            String::from_utf8(data[DATA_PUBLIC_KEY].0.clone())
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
        assert_eq!(data[DATA_PRIVATE_KEY].0, record.private_key_ciphertext);
        let metadata: serde_json::Value = serde_json::from_slice(&data[DATA_METADATA].0).unwrap();
        assert_eq!(metadata["keyPairSpec"], "RSA_3072");
        assert_eq!(metadata["sequence"], 3);
        assert_eq!(
            metadata["kmsKeyAliasArn"],
            "arn:aws:kms:us-east-1:111122223333:alias/recordings"
        );
        assert_eq!(
            metadata["encryptionContext"]["genesys-cloud-organization-id"],
            record.organization_id
        );
        assert_eq!(KeyPairSecret::from_secret(&secret).unwrap(), record);

        record.retire("2026-12-29T07:00:00Z".parse().unwrap());
        let first_retirement = record.retired_at;
        record.retire("2027-01-29T07:00:00Z".parse().unwrap());
        assert_eq!(
            record.retired_at, first_retirement,
            "retiring twice keeps the first time"
        );
        let secret = record.to_secret().unwrap();
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()[LABEL_STATE],
            "retired"
        );
        assert_eq!(
            secret.metadata.annotations.as_ref().unwrap()[ANNOTATION_RETIRED_AT],
            "2026-12-29T07:00:00Z"
        );
        assert_eq!(KeyPairSecret::from_secret(&secret).unwrap(), record);

        // Through YAML, as `kekeeper keypair generate` writes it and `kubectl` reads it.
        let yaml = serde_yaml::to_string(&secret).unwrap();
        let parsed: Secret = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(KeyPairSecret::from_secret(&parsed).unwrap(), record);
    }

    /// Secrets made before the alias was recorded on each pair still read, without one.
    #[test]
    fn a_secret_without_the_alias_reads_as_a_pair_with_none() {
        let mut secret = record().to_secret().unwrap();
        let data = secret.data.as_mut().unwrap();
        let mut metadata: serde_json::Value =
            serde_json::from_slice(&data[DATA_METADATA].0).unwrap();
        metadata.as_object_mut().unwrap().remove("kmsKeyAliasArn");
        data.insert(
            DATA_METADATA.into(),
            ByteString(serde_json::to_vec(&metadata).unwrap()),
        );
        let read = KeyPairSecret::from_secret(&secret).unwrap();
        assert_eq!(read.kms_key_alias_arn, None);
        assert_eq!(read.to_history_entry().kms_key_alias_arn, None);
        // Written back, it still has none (nothing is made up for it).
        let again = read.to_secret().unwrap();
        let metadata: serde_json::Value =
            serde_json::from_slice(&again.data.unwrap()[DATA_METADATA].0).unwrap();
        assert!(metadata.get("kmsKeyAliasArn").is_none(), "{metadata}");
    }

    /// Every Secret names its config exactly (the label of a name over 63 characters is a
    /// hash); a Secret from before the annotation is read by its label.
    #[test]
    fn a_secret_names_its_config_whatever_the_length() {
        for length in [1, 63, 64, 253] {
            let config = "c".repeat(length);
            let mut record = record();
            record.config_name = config.clone();
            record.secret_name = KeyPairRecord::secret_name(&config, &record.organization_id, 3);
            let secret = record.to_secret().unwrap();
            assert_eq!(
                secret.metadata.annotations.as_ref().unwrap()[ANNOTATION_CONFIG],
                config
            );
            assert_eq!(
                config_of(&secret.metadata),
                Some(SecretConfig::Named(config.as_str()))
            );
            assert_eq!(KeyPairSecret::from_secret(&secret).unwrap(), record);
            assert!(is_dns_subdomain(&record.name()), "{}", record.name());

            let mut older = secret.clone();
            older
                .metadata
                .annotations
                .as_mut()
                .unwrap()
                .remove(ANNOTATION_CONFIG);
            let label = config_label(&config);
            let expected = if length <= 63 {
                SecretConfig::Named(config.as_str())
            } else {
                SecretConfig::Hashed(label.as_str())
            };
            assert_eq!(config_of(&older.metadata), Some(expected));
            assert_eq!(
                KeyPairSecret::from_secret(&older).unwrap().config_name,
                if length <= 63 {
                    config.as_str()
                } else {
                    label.as_str()
                }
            );
        }
    }

    /// An annotation that names a config other than the label's is not believed: the label
    /// lists the config's Secrets.
    #[test]
    fn a_config_annotation_that_disagrees_with_the_label_is_ignored() {
        let mut secret = record().to_secret().unwrap();
        secret
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_CONFIG.into(), "other".into());
        assert_eq!(
            config_of(&secret.metadata),
            Some(SecretConfig::Named("recordings"))
        );
        secret
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(LABEL_CONFIG);
        assert_eq!(config_of(&secret.metadata), None);
        assert!(is_hashed_label(&config_label(&"x".repeat(64))));
        assert!(!is_hashed_label("recordings"));
        assert!(!is_hashed_label(&format!("sha256-{}", "A".repeat(48))));
    }

    #[test]
    fn names_with_a_suffix_fit_in_253_characters() {
        assert_eq!(name_with_suffix("a", "-public-keys"), "a-public-keys");
        let fits = "f".repeat(241);
        assert_eq!(
            name_with_suffix(&fits, "-public-keys"),
            format!("{fits}-public-keys")
        );
        for name in [
            "g".repeat(242),
            "h".repeat(253),
            format!("{}.{}", "a".repeat(200), "b".repeat(52)),
            format!("{}-.{}", "a".repeat(230), "b".repeat(21)),
        ] {
            let long = name_with_suffix(&name, "-public-keys");
            assert!(is_dns_subdomain(&long), "{long}");
            assert!(long.ends_with("-public-keys"), "{long}");
            assert_ne!(long, name_with_suffix(&format!("{name}x"), "-public-keys"));
        }
    }

    #[test]
    fn a_long_config_name_keeps_its_secret_name_when_read_back() {
        let config = "c".repeat(200);
        let mut record = record();
        record.config_name = config.clone();
        record.secret_name = KeyPairRecord::secret_name(&config, &record.organization_id, 3);
        let secret = record.to_secret().unwrap();
        let label = &secret.metadata.labels.as_ref().unwrap()[LABEL_CONFIG];
        assert!(
            label.starts_with("sha256-") && is_label_value(label),
            "{label}"
        );
        let read = KeyPairSecret::from_secret(&secret).unwrap();
        assert_eq!(read.name(), record.name());
        assert!(read.name().starts_with(&config), "{}", read.name());
        assert!(read.name().len() <= 253);
    }

    #[test]
    fn organisation_ids_that_are_not_label_values_are_hashed() {
        let mut record = record();
        record.organization_id = "Org With Spaces".into();
        record.encryption_context.organization_id = "Org With Spaces".into();
        let secret = record.to_secret().unwrap();
        let label = &secret.metadata.labels.as_ref().unwrap()[LABEL_ORGANIZATION];
        assert!(
            label.starts_with("sha256-") && is_label_value(label),
            "{label}"
        );
        assert_eq!(
            secret.metadata.annotations.as_ref().unwrap()[ANNOTATION_ORGANIZATION],
            "Org With Spaces"
        );
        assert_eq!(
            KeyPairSecret::from_secret(&secret).unwrap().organization_id,
            "Org With Spaces"
        );
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn from_secret_names_what_is_missing() {
        let secret = record().to_secret().unwrap();
        let mut no_private = secret.clone();
        no_private.data.as_mut().unwrap().remove(DATA_PRIVATE_KEY);
        let mut no_state = secret.clone();
        no_state
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(LABEL_STATE);
        let mut wrong_type = secret.clone();
        wrong_type.type_ = Some("Opaque".into());
        let mut bad_metadata = secret.clone();
        bad_metadata
            .data
            .as_mut()
            .unwrap()
            .insert(DATA_METADATA.into(), ByteString(b"{}".to_vec()));
        for (secret, expected) in [
            (no_private, "data.privateKey.kms is missing"),
            (no_state, "label kekeeper.io/state is missing"),
            (wrong_type, "\"Opaque\""),
            (bad_metadata, "data.metadata.json is not valid"),
        ] {
            let err = KeyPairSecret::from_secret(&secret).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.contains(&record().name()), "{err}");
        }
    }

    #[test]
    fn fingerprints_are_stable_and_distinguish_keys() {
        let record = record();
        let fingerprint = record.fingerprint();
        assert!(fingerprint.starts_with("SHA256:"));
        assert_eq!(fingerprint.len(), "SHA256:".len() + 43);
        assert_eq!(fingerprint, record.clone().fingerprint());
        // SHA-256 of the empty input, a known answer.
        assert_eq!(
            super::fingerprint(b""),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        let mut other = record.clone();
        other.public_key_der[0] ^= 1;
        assert_ne!(other.fingerprint(), fingerprint);
        assert_eq!(
            parse_public_key_pem(&record.public_key_pem()).unwrap(),
            record.public_key_der
        );
    }

    #[test]
    fn status_entries_carry_the_name_and_fingerprint() {
        let mut record = record();
        let active = record.to_active_key_pair();
        assert_eq!(active.secret_name, record.name());
        assert_eq!(active.public_key_fingerprint, record.fingerprint());
        assert_eq!(active.key_pair_spec, KeyPairSpec::Rsa3072);
        record.retire("2026-12-29T07:00:00Z".parse().unwrap());
        let entry = record.to_history_entry();
        assert_eq!(entry.retired_at, record.retired_at);
        assert_eq!(entry.reason, "Created");
        assert_eq!(
            record.key_pair().private_key_ciphertext,
            record.private_key_ciphertext
        );
        assert_eq!(
            config_selector("recordings"),
            "kekeeper.io/config=recordings"
        );
    }

    const KEY_B: &str =
        "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";

    /// Wraps are added data keys: they parse back oldest first, the original blob and
    /// metadata.json unchanged; a Secret without any reads as before.
    #[test]
    fn wraps_round_trip_through_added_data_keys() {
        let mut pair = record();
        let plain = pair.to_secret().unwrap();
        pair.wraps = vec![
            Wrap {
                kms_key_arn: KEY_B.into(),
                ciphertext: vec![5; 300],
                created_at: "2026-12-01T00:00:00Z".parse().unwrap(),
            },
            Wrap {
                kms_key_arn:
                    "arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef"
                        .into(),
                ciphertext: vec![6; 300],
                created_at: "2026-12-02T00:00:00Z".parse().unwrap(),
            },
        ];
        let secret = pair.to_secret().unwrap();
        let data = secret.data.as_ref().unwrap();
        assert_eq!(
            data["privateKey.0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.kms"].0,
            vec![5; 300]
        );
        let entry: serde_json::Value =
            serde_json::from_slice(&data["privateKey.0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json"].0)
                .unwrap();
        assert_eq!(entry["kmsKeyArn"], KEY_B);
        // Only added: every key of the plain Secret is there, unchanged.
        for (key, value) in plain.data.as_ref().unwrap() {
            assert_eq!(&data[key], value, "{key}");
        }
        assert_eq!(KeyPairSecret::from_secret(&secret).unwrap(), pair);
        assert_eq!(pair.wrap_under(KEY_B).unwrap().ciphertext, vec![5; 300]);
        assert!(pair.wrap_under(&pair.kms_key_arn.clone()).is_none());
    }

    /// Data keys a namespace editor adds that are not a well-formed wrap are not wraps; a
    /// well-formed one is read as a wrap, a candidate only (nothing trusts it until status
    /// records it or a proof passes: tested in the key ring and the controller).
    #[test]
    fn a_planted_or_malformed_wrap_is_not_read() {
        let mut secret = record().to_secret().unwrap();
        let data = secret.data.as_mut().unwrap();
        let entry = |arn: &str| {
            ByteString(
                serde_json::to_vec(
                    &serde_json::json!({"kmsKeyArn": arn, "createdAt": "2026-12-01T00:00:00Z"}),
                )
                .unwrap(),
            )
        };
        // An entry naming another key than its data key.
        data.insert(
            "privateKey.0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json".into(),
            entry("arn:aws:kms:us-east-1:111122223333:key/1b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
        );
        data.insert(
            "privateKey.0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.kms".into(),
            ByteString(vec![1; 10]),
        );
        // No blob.
        data.insert(
            "privateKey.2b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json".into(),
            entry("arn:aws:kms:us-east-1:111122223333:key/2b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
        );
        // Not JSON; not a key id.
        data.insert(
            "privateKey.3b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json".into(),
            ByteString(b"{".to_vec()),
        );
        data.insert(
            "privateKey.x.json".into(),
            entry("arn:aws:kms:us-east-1:111122223333:key/x"),
        );
        data.insert("privateKey.x.kms".into(), ByteString(vec![1; 10]));
        assert_eq!(KeyPairSecret::from_secret(&secret).unwrap().wraps, vec![]);
        assert_eq!(
            kms_key_id(KEY_B),
            Some("0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b")
        );
        for bad in [
            "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "arn:aws:kms:us-east-1:111122223333:key/../../x",
            "arn:aws:kms:us-east-1:111122223333:key/0B7C2A34-5D6E-4F70-8A9B-0C1D2E3F4A5B",
            "key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "arn:aws:kms:us-east-1:111122223333:key/mrk-0123",
        ] {
            assert_eq!(kms_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_pair_ids_are_uuid_shaped_and_random() {
        let id = new_key_pair_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_key_pair_id());
    }
}
