//! The off-cluster key store (docs/design.md, "The key store"): every key pair written once to
//! S3 before it becomes active, so a cluster rebuilt from Git gets the same key pairs back.
//!
//! One object per key pair, named from what a manifest alone gives (namespace, config,
//! organisation, sequence), written with `If-None-Match: *` and never overwritten. It holds what
//! the Secret holds — the public key, the KMS ciphertext of the private key and the metadata —
//! and nothing plaintext: without the organisation's KMS key it is useless. Retirement and
//! pruning are recorded as marker objects beside it, also written once, and so is each wrap (a
//! further blob of the private key made by KMS `ReEncrypt` onto another KMS key).
//!
//! `kekeeper backup` writes the same objects into a file (docs/disaster-recovery.md).

#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::keypair::{self, KeyPairRecord, KeyPairSecret, KeyPairState, Wrap};
use crate::kms::{EncryptionContext, KeyPairSpec};

/// The `format` of a key pair object.
pub const OBJECT_FORMAT: &str = "kekeeper.io/key-pair/v1";
/// The `format` of a retirement or prune marker.
pub const MARKER_FORMAT: &str = "kekeeper.io/key-pair-marker/v1";
/// The `format` of a wrap object: a further blob of a pair's private key, made by KMS
/// `ReEncrypt` onto another KMS key (docs/design.md, "The key store", wrap objects).
pub const WRAP_FORMAT: &str = "kekeeper.io/key-pair-wrap/v1";
/// The command-line flag, named in every error about its value.
pub const FLAG: &str = "--key-store";

/// How many objects are read at once when a config's pairs are listed.
const READ_CONCURRENCY: usize = 8;
/// The largest key pair object that is read (docs/design.md, "The key store": an RSA-4096
/// pair's object is about 6 KiB). A larger one is refused from its listed size, unread.
pub const MAX_OBJECT_BYTES: usize = 64 * 1024;
/// The largest marker or writer claim that is read (they are about 300 bytes).
pub const MAX_SMALL_OBJECT_BYTES: usize = 4 * 1024;
/// The most objects one config's listing may hold: 10,000 key pairs, each with its two
/// markers and three wraps (docs/design.md, "The key store"). A larger listing is refused,
/// none of it read.
pub const MAX_CONFIG_OBJECTS: usize = 60_000;
/// The largest sequence a canonical object name holds (`SEQUENCE` is exactly ten digits).
pub const MAX_SEQUENCE: u64 = 9_999_999_999;

/// `s3://BUCKET[/PREFIX]`: the bucket and the prefix (empty, or ending in `/`) under which this
/// cluster's key pairs live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStoreUrl {
    pub bucket: String,
    pub prefix: String,
}

/// A `--key-store` value that is not a usable `s3://` URL: the message names the flag and the
/// fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{FLAG} {value:?}: {problem}; expected s3://BUCKET or s3://BUCKET/PREFIX, e.g. s3://acme-kekeeper/prod-eu"
)]
pub struct KeyStoreUrlError {
    pub value: String,
    pub problem: String,
}

impl std::str::FromStr for KeyStoreUrl {
    type Err = KeyStoreUrlError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |problem: &str| KeyStoreUrlError {
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        let rest = value
            .strip_prefix("s3://")
            .ok_or_else(|| fail("only s3:// key stores are supported"))?;
        if rest.contains(['?', '#', '\\']) || rest.chars().any(char::is_whitespace) {
            return Err(fail("no query, fragment, backslash or spaces"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|p| fail(&p))?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(fail("the prefix has an empty, '.' or '..' segment"));
        }
        if prefix.len() > 512 {
            return Err(fail("the prefix is longer than 512 characters"));
        }
        Ok(KeyStoreUrl {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }
}

/// S3's bucket naming rules (general purpose buckets).
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is missing".to_owned());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 63 characters long"
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !bucket.chars().all(allowed)
        || !edge(bucket.chars().next())
        || !edge(bucket.chars().last())
        || bucket.contains("..")
    {
        return Err(format!(
            "bucket name {bucket:?} may hold only lowercase letters, digits, '-' and '.', and must begin and end with a letter or digit"
        ));
    }
    Ok(())
}

impl fmt::Display for KeyStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.trim_end_matches('/') {
            "" => write!(f, "s3://{}", self.bucket),
            prefix => write!(f, "s3://{}/{prefix}", self.bucket),
        }
    }
}

impl KeyStoreUrl {
    /// The prefix of every object of one config.
    pub fn config_prefix(&self, namespace: &str, config: &str) -> String {
        format!(
            "{}key-pairs/{}/{}/",
            self.prefix,
            escape(namespace),
            escape(config)
        )
    }

    /// The object of one key pair: `PREFIX/key-pairs/NAMESPACE/CONFIG/ORGANISATION/SEQUENCE.json`.
    pub fn object_key(
        &self,
        namespace: &str,
        config: &str,
        organization_id: &str,
        sequence: u64,
    ) -> String {
        format!(
            "{}{}/{sequence:010}.json",
            self.config_prefix(namespace, config),
            escape(organization_id)
        )
    }

    /// The marker recording that the pair of `object_key` was retired or pruned.
    pub fn marker_key(object_key: &str, mark: MarkKind) -> String {
        let stem = object_key.strip_suffix(".json").unwrap_or(object_key);
        format!("{stem}.{}.json", mark.as_str())
    }

    /// The wrap of the pair of `object_key` under the KMS key `key_id` (a key id, as
    /// [`kms_key_id`] gives it): `…/SEQUENCE.wrap-KEY-ID.json`. One per pair and KMS key.
    pub fn wrap_key(object_key: &str, key_id: &str) -> String {
        let stem = object_key.strip_suffix(".json").unwrap_or(object_key);
        format!("{stem}.wrap-{key_id}.json")
    }
}

/// The key id of a KMS key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/KEY-ID`), if the ARN has
/// that form and the id is one KMS gives: a lowercase UUID, or `mrk-` and 32 lowercase hex
/// digits for a multi-Region key. An alias ARN has none.
pub fn kms_key_id(key_arn: &str) -> Option<&str> {
    let (head, id) = key_arn.split_once(":key/")?;
    let mut parts = head.split(':');
    let well_formed = parts.next() == Some("arn")
        && parts.next().is_some_and(|p| !p.is_empty())
        && parts.next() == Some("kms")
        && parts.next().is_some_and(|r| !r.is_empty())
        && parts
            .next()
            .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none();
    (well_formed && is_key_id(id)).then_some(id)
}

/// Whether `id` is a KMS key id: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` or `mrk-` and 32 hex
/// digits, lowercase (as KMS writes them, so that one key has one wrap name).
pub fn is_key_id(id: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if let Some(mrk) = id.strip_prefix("mrk-") {
        return mrk.len() == 32 && hex(mrk);
    }
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && hex(g))
}

/// Percent-encodes everything but `A-Z a-z 0-9 - _ .` so an organisation id or name is one path
/// segment that reads back the same.
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    // "." and ".." are not segments anyone can list back reliably.
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

/// A failed call to the store, named as S3 names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key store {url}: {operation} {key}: {code}: {message}")]
pub struct StoreError {
    pub url: String,
    pub operation: &'static str,
    pub key: String,
    pub code: String,
    pub message: String,
}

/// What a conditional put found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    /// An object of that name exists already (it is not overwritten).
    Exists,
}

/// What [`KeyStore::put_wrap`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrapPut {
    /// Written now.
    Created,
    /// This very wrap (same KMS key, same ciphertext) was stored already: a retry.
    Exists,
    /// Another wrap of this pair under the same KMS key is stored (the `ReEncrypt` of an
    /// earlier attempt that crashed before its Secret was written): it is not overwritten. The
    /// caller proves it and adopts it, or refuses it; it passed the checks a listing makes
    /// (format, the pair it names, its fingerprint, its key).
    Other(Wrap),
}

/// What a compare-and-swap write of the writer claim requires of the object there now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No object of that name exists (`If-None-Match: *`).
    Absent,
    /// The object is the one read with this ETag (`If-Match`).
    Unchanged(String),
}

/// What a compare-and-swap write found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// Written; the new object's ETag.
    Written(Option<String>),
    /// The condition did not hold: another writer came first (412; 409 for a concurrent
    /// conditional write; 404 for `If-Match` on an object that is gone).
    Lost,
}

/// An object read with a size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The body, or `None` when it is larger than the limit (then it is not read whole).
    pub body: Option<Vec<u8>>,
    pub etag: Option<String>,
    /// How long ago the object was written, by the store's clock (its `Date` less the
    /// object's `Last-Modified`); `None` when the store did not say.
    pub age: Option<jiff::SignedDuration>,
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
}

/// A listing, stopped at a count limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub objects: Vec<ListedObject>,
    /// More objects than the limit are there; they were not listed.
    pub more: bool,
}

/// A store of objects: S3, or memory in tests. Errors carry the operation, the code and the
/// message; [`KeyStore`] adds the URL.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Writes `body` under `key` unless an object of that name exists (`If-None-Match: *`).
    fn put_new<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, ObjectError>>;
    /// Writes `body` under `key` if `condition` holds (only the writer claim).
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Swap, ObjectError>>;
    /// The object, or `None` when there is none; a body over `max_bytes` is not read whole.
    fn get<'a>(
        &'a self,
        key: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<Fetched>, ObjectError>>;
    /// The objects under `prefix`, at most `max_objects` of them.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        max_objects: usize,
    ) -> BoxFuture<'a, Result<Listed, ObjectError>>;
}

/// An [`ObjectStore`] failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub operation: &'static str,
    pub code: String,
    pub message: String,
}

/// A key pair object: what the Secret holds, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKeyPair {
    pub format: String,
    pub namespace: String,
    pub config: String,
    pub secret_name: String,
    pub organization_id: String,
    pub key_pair_id: String,
    pub sequence: u64,
    pub created_at: Timestamp,
    pub kms_key_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_alias_arn: Option<String>,
    pub key_pair_spec: KeyPairSpec,
    /// As KMS takes it: `{<context key>: <organisation id>}`.
    pub encryption_context: BTreeMap<String, String>,
    pub reason: String,
    pub public_key_fingerprint: String,
    pub public_key_pem: String,
    /// Base64 of the KMS ciphertext blob of the private key.
    pub private_key_kms: String,
    /// The rotate-now token the pair was made for, as its Secret's annotation: a pair restored
    /// after a crash still honours the token, and is not made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_token: Option<String>,
}

/// A retirement or prune marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Retired,
    Pruned,
}

impl MarkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkKind::Retired => "retired",
            MarkKind::Pruned => "pruned",
        }
    }
}

/// A retirement or prune marker: `SEQUENCE.retired.json` or `SEQUENCE.pruned.json` beside the
/// pair's object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub format: String,
    pub secret_name: String,
    pub key_pair_id: String,
    pub at: Timestamp,
    /// The fingerprint of the pair it marks. Markers written before it existed have none and
    /// are accepted by their names alone (docs/design.md, "The key store").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_fingerprint: Option<String>,
}

impl Marker {
    /// The marker in `body`, if it marks the pair named `secret_name` and `key_pair_id` whose
    /// public key has `fingerprint`; else why it is ignored.
    pub fn read(
        body: &[u8],
        secret_name: &str,
        key_pair_id: &str,
        fingerprint: &str,
    ) -> Result<Marker, String> {
        let marker: Marker =
            serde_json::from_slice(body).map_err(|e| format!("not a marker: {e}"))?;
        if marker.format != MARKER_FORMAT {
            return Err(format!(
                "format is {:?}, expected {MARKER_FORMAT:?}",
                marker.format
            ));
        }
        if marker.secret_name != secret_name || marker.key_pair_id != key_pair_id {
            return Err(format!(
                "it names key pair {} ({}), not the object's {secret_name} ({key_pair_id})",
                marker.secret_name, marker.key_pair_id
            ));
        }
        match &marker.public_key_fingerprint {
            Some(found) if found != fingerprint => Err(format!(
                "it marks the key pair with fingerprint {found}, but the object holds {fingerprint}"
            )),
            _ => Ok(marker),
        }
    }
}

/// A stored `privateKeyKms`: base64 of a non-empty KMS blob.
fn decode_blob(text: &str) -> Result<Vec<u8>, String> {
    let blob = STANDARD
        .decode(text)
        .map_err(|e| format!("privateKeyKms is not base64: {e}"))?;
    if blob.is_empty() {
        return Err("privateKeyKms is empty".to_owned());
    }
    Ok(blob)
}

/// A wrap object: `SEQUENCE.wrap-KEY-ID.json` beside the pair's object, written once. It names
/// its pair (by every field a marker does, and more) so that it wraps that pair only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredWrap {
    pub format: String,
    pub namespace: String,
    pub config: String,
    pub secret_name: String,
    pub organization_id: String,
    pub key_pair_id: String,
    pub sequence: u64,
    pub public_key_fingerprint: String,
    /// The key ARN of the KMS key the blob is under; its key id is the one in the name.
    pub kms_key_arn: String,
    /// Base64 of the KMS ciphertext blob of the private key.
    pub private_key_kms: String,
    pub created_at: Timestamp,
}

impl StoredWrap {
    /// The object of `wrap`, a wrap of `pair`.
    pub fn of(pair: &KeyPairSecret, wrap: &Wrap) -> Self {
        StoredWrap {
            format: WRAP_FORMAT.to_owned(),
            namespace: pair.namespace.clone(),
            config: pair.config_name.clone(),
            secret_name: pair.secret_name.clone(),
            organization_id: pair.organization_id.clone(),
            key_pair_id: pair.key_pair_id.clone(),
            sequence: pair.sequence,
            public_key_fingerprint: pair.fingerprint(),
            kms_key_arn: wrap.kms_key_arn.clone(),
            private_key_kms: STANDARD.encode(&wrap.ciphertext),
            created_at: wrap.created_at,
        }
    }

    /// The wrap in `body`, if it is a wrap of `pair` under the key `key_id` (the one its name
    /// gives; `None`: any); else why it is refused.
    pub fn read(body: &[u8], pair: &KeyPairRecord, key_id: Option<&str>) -> Result<Wrap, String> {
        let object: StoredWrap =
            serde_json::from_slice(body).map_err(|e| format!("not a wrap object: {e}"))?;
        object.verify(pair, key_id)
    }

    /// The wrap this object holds, after every check: the format, the pair it names (namespace,
    /// config, Secret name, organisation, sequence, key pair id and fingerprint all the
    /// pair's), a key ARN whose key id is `key_id` and is not the key of the pair's original
    /// blob, and a blob.
    pub fn verify(&self, pair: &KeyPairRecord, key_id: Option<&str>) -> Result<Wrap, String> {
        if self.format != WRAP_FORMAT {
            return Err(format!(
                "format is {:?}, expected {WRAP_FORMAT:?}",
                self.format
            ));
        }
        let names = (
            self.namespace.as_str(),
            self.config.as_str(),
            self.secret_name.as_str(),
            self.organization_id.as_str(),
            self.sequence,
            self.key_pair_id.as_str(),
        );
        let pairs = (
            pair.namespace.as_str(),
            pair.config_name.as_str(),
            pair.secret_name.as_str(),
            pair.organization_id.as_str(),
            pair.sequence,
            pair.key_pair_id.as_str(),
        );
        if names != pairs {
            return Err(format!(
                "it names key pair {}/{} ({}, organisation {:?}, sequence {}), not {}/{} ({}, organisation {:?}, sequence {})",
                names.0,
                names.2,
                names.5,
                names.3,
                names.4,
                pairs.0,
                pairs.2,
                pairs.5,
                pairs.3,
                pairs.4
            ));
        }
        let fingerprint = pair.fingerprint();
        if self.public_key_fingerprint != fingerprint {
            return Err(format!(
                "it wraps the key pair with fingerprint {}, but the pair's is {fingerprint}",
                self.public_key_fingerprint
            ));
        }
        let Some(found) = kms_key_id(&self.kms_key_arn) else {
            return Err(format!(
                "kmsKeyArn {:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID)",
                self.kms_key_arn
            ));
        };
        if let Some(key_id) = key_id.filter(|id| *id != found) {
            return Err(format!(
                "its name says KMS key {key_id}, but it holds a blob under {}",
                self.kms_key_arn
            ));
        }
        if self.kms_key_arn == pair.kms_key_arn {
            return Err(format!(
                "it is under {}, the key of the pair's own blob: a wrap is under another key",
                self.kms_key_arn
            ));
        }
        let ciphertext = decode_blob(&self.private_key_kms)?;
        Ok(Wrap {
            kms_key_arn: self.kms_key_arn.clone(),
            ciphertext,
            created_at: self.created_at,
        })
    }
}

impl StoredKeyPair {
    /// The object of `pair`, made for `rotate_now_token` (its state is not part of it:
    /// retirement is a marker).
    pub fn of(pair: &KeyPairSecret, rotate_now_token: Option<&str>) -> Self {
        StoredKeyPair {
            format: OBJECT_FORMAT.to_owned(),
            namespace: pair.namespace.clone(),
            config: pair.config_name.clone(),
            secret_name: pair.secret_name.clone(),
            organization_id: pair.organization_id.clone(),
            key_pair_id: pair.key_pair_id.clone(),
            sequence: pair.sequence,
            created_at: pair.created_at,
            kms_key_arn: pair.kms_key_arn.clone(),
            kms_key_alias_arn: pair.kms_key_alias_arn.clone(),
            key_pair_spec: pair.key_pair_spec,
            encryption_context: BTreeMap::from([(
                pair.encryption_context.key.clone(),
                pair.encryption_context.organization_id.clone(),
            )]),
            reason: pair.reason.clone(),
            public_key_fingerprint: pair.fingerprint(),
            public_key_pem: pair.public_key_pem(),
            private_key_kms: STANDARD.encode(&pair.private_key_ciphertext),
            rotate_now_token: rotate_now_token.map(str::to_owned),
        }
    }

    /// The key pair this object holds, active, after every check an object must pass before it
    /// is restored: the format, where it belongs (`namespace`, `config`), the Secret name its
    /// organisation and sequence give, one encryption-context entry naming its organisation,
    /// a readable public key whose fingerprint is the recorded one, and a private-key blob.
    pub fn verify(&self, namespace: &str, config: &str) -> Result<KeyPairSecret, String> {
        if self.format != OBJECT_FORMAT {
            return Err(format!(
                "format is {:?}, expected {OBJECT_FORMAT:?}",
                self.format
            ));
        }
        if self.namespace != namespace || self.config != config {
            return Err(format!(
                "it belongs to {}/{}, not {namespace}/{config}",
                self.namespace, self.config
            ));
        }
        let expected = KeyPairRecord::secret_name(config, &self.organization_id, self.sequence);
        if self.secret_name != expected {
            return Err(format!(
                "secretName is {:?}, but organisation {:?} and sequence {} give {expected:?}",
                self.secret_name, self.organization_id, self.sequence
            ));
        }
        let mut context = self.encryption_context.iter();
        let encryption_context = match (context.next(), context.next()) {
            (Some((key, org)), None) if *org == self.organization_id => EncryptionContext {
                key: key.clone(),
                organization_id: org.clone(),
            },
            _ => {
                return Err(format!(
                    "encryptionContext must have exactly one entry naming organisation {:?}",
                    self.organization_id
                ));
            }
        };
        let public_key_der = keypair::parse_public_key_pem(&self.public_key_pem)
            .map_err(|e| format!("publicKeyPem: {e}"))?;
        let found = keypair::fingerprint(&public_key_der);
        if found != self.public_key_fingerprint {
            return Err(format!(
                "the public key's fingerprint is {found}, but the object records {}",
                self.public_key_fingerprint
            ));
        }
        let private_key_ciphertext = decode_blob(&self.private_key_kms)?;
        Ok(KeyPairSecret {
            record: KeyPairRecord {
                config_name: config.to_owned(),
                namespace: namespace.to_owned(),
                organization_id: self.organization_id.clone(),
                sequence: self.sequence,
                secret_name: self.secret_name.clone(),
                key_pair_id: self.key_pair_id.clone(),
                kms_key_arn: self.kms_key_arn.clone(),
                kms_key_alias_arn: self.kms_key_alias_arn.clone(),
                key_pair_spec: self.key_pair_spec,
                encryption_context,
                created_at: self.created_at,
                reason: self.reason.clone(),
                state: KeyPairState::Active,
                retired_at: None,
                public_key_der,
            },
            private_key_ciphertext,
            wraps: Vec::new(),
        })
    }
}

/// One key pair found in the store, with its markers and wraps; or an object refused.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    pub key: String,
    pub organization_id: Option<String>,
    pub sequence: Option<u64>,
    /// The pair as a Secret would hold it (retired if a retirement marker exists, with the
    /// wraps that passed their checks), or why the object was refused.
    pub pair: Result<KeyPairSecret, String>,
    pub pruned: bool,
    pub rotate_now_token: Option<String>,
}

/// Every pair of one config in the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    pub entries: Vec<StoredEntry>,
}

impl Listing {
    /// The pair stored under `secret_name` (refused or not).
    pub fn get(&self, secret_name: &str) -> Option<&StoredEntry> {
        self.entries.iter().find(|e| match &e.pair {
            Ok(pair) => pair.secret_name == secret_name,
            Err(_) => false,
        })
    }
}

/// The key store of the operator: a URL and the objects behind it.
#[derive(Clone, Debug)]
pub struct KeyStore {
    url: KeyStoreUrl,
    objects: Arc<dyn ObjectStore>,
    /// Whether this process may write under the prefix now (docs/design.md, "The key store",
    /// one writer per prefix).
    claim: Arc<Mutex<ClaimState>>,
}

/// The writer claim as this process knows it.
#[derive(Clone, Debug)]
enum ClaimState {
    /// No claim is needed ([`KeyStore::new`]: tests and commands that only read).
    NotNeeded,
    /// Not held: every operation fails with this error.
    Refused(StoreError),
    /// Held since the write of `etag` started at `renewed` (this process's monotonic clock),
    /// trusted until `until`: the TTL less a margin, so it lapses here before another cluster
    /// may judge it stale.
    Held {
        etag: Option<String>,
        renewed: Instant,
        until: Instant,
        ttl: jiff::SignedDuration,
        /// Why the renewals since failed, if they did.
        failing: Option<StoreError>,
    },
}

/// The object that says which cluster writes under a prefix: `PREFIX/writer.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriterClaim {
    pub format: String,
    /// The cluster's id (the `kube-system` namespace's uid, or `--key-store-cluster-id`).
    pub cluster_id: String,
    /// The operator replica that renewed it.
    pub holder: String,
    /// When the holder renewed it, by the holder's clock: for people reading the object, and so
    /// that no two writes have the same body (S3's ETag is its MD5). The claim's age is judged
    /// by the store's clock, never by this.
    pub renewed_at: Timestamp,
}

impl WriterClaim {
    /// The claim in `body`, or why it is not one.
    pub fn parse(body: &[u8]) -> Result<WriterClaim, String> {
        let claim: WriterClaim =
            serde_json::from_slice(body).map_err(|e| format!("not a writer claim: {e}"))?;
        if claim.format != CLAIM_FORMAT {
            return Err(format!(
                "format is {:?}, expected {CLAIM_FORMAT:?}",
                claim.format
            ));
        }
        if claim.cluster_id.is_empty() {
            return Err("clusterId is empty".to_owned());
        }
        Ok(claim)
    }
}

/// What to do about the writer claim found in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// There is none: create it (`If-None-Match: *`).
    Take,
    /// It is this cluster's: renew it (`If-Match` on the ETag read).
    Renew,
    /// Another cluster's (or unreadable) and at least the TTL old by the store's clock: take
    /// it over (`If-Match` on the ETag read).
    TakeOver,
    /// Another cluster's (or unreadable) and younger than the TTL, or of unknown age: refuse
    /// the store.
    Refuse,
}

/// Decides what to do about `current` (the claim read, or why it could not be read; `None`:
/// no claim), whose age by the store's clock is `age`, for cluster `cluster_id`.
pub fn claim_step(
    current: Option<&Result<WriterClaim, String>>,
    age: Option<jiff::SignedDuration>,
    cluster_id: &str,
    ttl: jiff::SignedDuration,
) -> ClaimStep {
    match current {
        None => ClaimStep::Take,
        Some(Ok(claim)) if claim.cluster_id == cluster_id => ClaimStep::Renew,
        Some(_) if age.is_some_and(|age| age >= ttl) => ClaimStep::TakeOver,
        Some(_) => ClaimStep::Refuse,
    }
}

/// How long a claim is trusted after the write that renewed it started: the TTL less a margin
/// of a fifth of it, at least 2 s (S3's `Last-Modified` and `Date` have whole seconds) and at
/// most half of it. docs/design.md, "The key store".
pub fn claim_validity(ttl: Duration) -> Duration {
    let margin = (ttl / 5).max(Duration::from_secs(2)).min(ttl / 2);
    ttl.saturating_sub(margin)
}

/// What [`KeyStore::claim`] achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// This cluster holds the prefix (taken, renewed, or taken over from `previous`, a stale
    /// claim of another cluster).
    Held { previous: Option<String> },
    /// Another cluster's live claim: every operation fails with this error, which names it.
    Refused(StoreError),
}

/// The `format` of the writer claim.
pub const CLAIM_FORMAT: &str = "kekeeper.io/key-store-writer/v1";
/// The `code` of the error every operation gets while another cluster holds the prefix.
pub const CLAIMED: &str = "KeyStoreClaimed";
/// The `code` of the error every operation gets once this cluster's claim lapsed (its
/// renewals failed for longer than the claim is trusted).
pub const CLAIM_LAPSED: &str = "KeyStoreClaimLapsed";
/// How often a claim is read and written again when another writer changes it in between.
const CLAIM_ATTEMPTS: usize = 3;

/// What an object's name is under a config's prefix ([`object_name`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectName {
    Pair {
        organization_id: String,
        sequence: u64,
    },
    Marker,
    /// A wrap object, read with its pair.
    Wrap,
    /// Not a name the operator writes: why.
    Refused(String),
}

impl KeyStore {
    pub fn new(url: KeyStoreUrl, objects: Arc<dyn ObjectStore>) -> Self {
        KeyStore {
            url,
            objects,
            claim: Arc::new(Mutex::new(ClaimState::NotNeeded)),
        }
    }

    /// A store that refuses every operation until [`Self::claim`] succeeds (the operator's).
    pub fn unclaimed(url: KeyStoreUrl, objects: Arc<dyn ObjectStore>) -> Self {
        let store = KeyStore::new(url, objects);
        store.set_claim(ClaimState::Refused(store.claim_error(
            "NotClaimed",
            "the operator has not yet claimed the prefix for this cluster (is the store reachable?)"
                .to_owned(),
        )));
        store
    }

    fn lock_claim(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        self.claim.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_claim(&self, state: ClaimState) {
        *self.lock_claim() = state;
    }

    /// Whether the store may be used now: not while another cluster holds the prefix, nor once
    /// this cluster's claim lapsed.
    fn check(&self) -> Result<(), StoreError> {
        match &*self.lock_claim() {
            ClaimState::NotNeeded => Ok(()),
            ClaimState::Refused(err) => Err(err.clone()),
            ClaimState::Held { until, .. } if Instant::now() < *until => Ok(()),
            ClaimState::Held {
                renewed,
                ttl,
                failing,
                ..
            } => Err(self.claim_error(
                CLAIM_LAPSED,
                format!(
                    "this cluster's writer claim was last renewed {:.0?} ago and is no longer trusted (it lapses before its {ttl:#} TTL, after which another cluster may take the prefix over); the store is not used until a renewal succeeds{}",
                    renewed.elapsed(),
                    failing
                        .as_ref()
                        .map(|e| format!("; the last renewal failed: {e}"))
                        .unwrap_or_default()
                ),
            )),
        }
    }

    fn claim_key(&self) -> String {
        format!("{}writer.json", self.url.prefix)
    }

    fn claim_error(&self, code: &str, message: String) -> StoreError {
        StoreError {
            url: self.url.to_string(),
            operation: "Claim",
            key: self.claim_key(),
            code: code.to_owned(),
            message,
        }
    }

    /// Claims the prefix for `cluster_id` (docs/design.md, "The key store"): a lease on
    /// `PREFIX/writer.json` by compare-and-swap. Taken with `If-None-Match: *` when there is
    /// none; renewed with `If-Match` on the ETag this process wrote (or read, when the claim
    /// is this cluster's); taken over with `If-Match` on the ETag read when another cluster's
    /// claim is at least `ttl` old by the store's clock (`Date` less `Last-Modified`). A write
    /// that loses the race stops the store at once; then the claim is read again to say whose
    /// it is. A renewal that fails leaves the claim trusted only until its validity
    /// ([`claim_validity`]) after the last write that succeeded.
    pub async fn claim(
        &self,
        cluster_id: &str,
        holder: &str,
        ttl: jiff::SignedDuration,
    ) -> Result<Claimed, StoreError> {
        let key = self.claim_key();
        let ttl_std = Duration::try_from(ttl)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                self.claim_error(
                    "InvalidTtl",
                    format!("--key-store-claim-ttl must be positive; got {ttl:#}"),
                )
            })?;
        let body = self.body(
            &key,
            &WriterClaim {
                format: CLAIM_FORMAT.to_owned(),
                cluster_id: cluster_id.to_owned(),
                holder: holder.to_owned(),
                renewed_at: Timestamp::now(),
            },
        )?;
        // Renewal: If-Match on the ETag of this process's last write.
        let mut next = match &*self.lock_claim() {
            ClaimState::Held {
                etag: Some(etag), ..
            } => Some((Condition::Unchanged(etag.clone()), None)),
            _ => None,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let (condition, previous) = match next.take() {
                Some(next) => next,
                None => match self.read_claim(&key, cluster_id, ttl).await? {
                    Ok(next) => next,
                    Err(refused) => {
                        self.set_claim(ClaimState::Refused(refused.clone()));
                        return Ok(Claimed::Refused(refused));
                    }
                },
            };
            let started = Instant::now();
            match self.objects.put_if(&key, body.clone(), condition).await {
                Ok(Swap::Written(etag)) => {
                    self.set_claim(ClaimState::Held {
                        etag,
                        renewed: started,
                        until: started + claim_validity(ttl_std),
                        ttl,
                        failing: None,
                    });
                    return Ok(Claimed::Held { previous });
                }
                // Another writer came first: no more writes until the claim is read again.
                Ok(Swap::Lost) => self.set_claim(ClaimState::Refused(self.claim_error(
                    CLAIMED,
                    "another writer changed the claim while this cluster wrote it".to_owned(),
                ))),
                Err(err) => return Err(self.claim_failed(&key, err)),
            }
        }
        let refused = self.claim_error(
            CLAIMED,
            format!(
                "another live cluster writes under this prefix: the claim changed under each of {CLAIM_ATTEMPTS} attempts to write it"
            ),
        );
        self.set_claim(ClaimState::Refused(refused.clone()));
        Ok(Claimed::Refused(refused))
    }

    /// Reads the claim: how to write it next (and the claim taken over, described), or the
    /// error that refuses the store.
    async fn read_claim(
        &self,
        key: &str,
        cluster_id: &str,
        ttl: jiff::SignedDuration,
    ) -> Result<Result<(Condition, Option<String>), StoreError>, StoreError> {
        let fetched = self
            .objects
            .get(key, MAX_SMALL_OBJECT_BYTES)
            .await
            .map_err(|err| self.claim_failed(key, err))?;
        let Some(fetched) = fetched else {
            return Ok(Ok((Condition::Absent, None)));
        };
        let current = match &fetched.body {
            Some(body) => WriterClaim::parse(body),
            None => Err(format!("it is larger than {MAX_SMALL_OBJECT_BYTES} bytes")),
        };
        let age = fetched
            .age
            .map_or_else(|| "of unknown age".to_owned(), |age| format!("{age:#} old"));
        let whose = match &current {
            Ok(claim) => format!(
                "cluster {}, replica {}, {age} by the store's clock",
                claim.cluster_id, claim.holder
            ),
            Err(why) => format!("an unreadable claim ({why}), {age} by the store's clock"),
        };
        let unchanged = || match &fetched.etag {
            Some(etag) => Ok(Condition::Unchanged(etag.clone())),
            None => Err(self.claim_error(
                "NoETag",
                "the store gave the claim no ETag, so it cannot be renewed safely".to_owned(),
            )),
        };
        Ok(
            match claim_step(Some(&current), fetched.age, cluster_id, ttl) {
                ClaimStep::Take => Ok((Condition::Absent, None)),
                ClaimStep::Renew => unchanged().map(|c| (c, None)),
                ClaimStep::TakeOver => unchanged().map(|c| (c, Some(whose))),
                ClaimStep::Refuse => Err(self.claim_error(
                    CLAIMED,
                    format!(
                        "another live cluster writes under this prefix ({whose}); two clusters must never share a prefix: give this cluster its own --key-store prefix, or, if that cluster is gone for good, wait until its claim is {ttl:#} old"
                    ),
                )),
            },
        )
    }

    /// A claim that could not be read or written: held, the claim stays trusted until its
    /// validity runs out; not held, the store stays refused, saying why.
    fn claim_failed(&self, key: &str, err: ObjectError) -> StoreError {
        let err = self.error(key, err);
        let mut state = self.lock_claim();
        match &mut *state {
            ClaimState::Held { failing, .. } => *failing = Some(err.clone()),
            ClaimState::Refused(refused) if refused.code != CLAIMED => {
                *refused = self.claim_error(
                    "NotClaimed",
                    format!("the operator cannot claim the prefix for this cluster: {err}"),
                );
            }
            ClaimState::Refused(_) | ClaimState::NotNeeded => {}
        }
        err
    }

    /// Claims the prefix now and renews the claim every third of `ttl` in a task, for as long
    /// as the process runs; each attempt that does not hold it logs an error. Returns the
    /// first attempt's result and the task.
    pub async fn hold(
        &self,
        cluster_id: String,
        holder: String,
        ttl: jiff::SignedDuration,
    ) -> (Result<Claimed, StoreError>, tokio::task::JoinHandle<()>) {
        let every = Duration::try_from(ttl / 3).unwrap_or(Duration::from_secs(300));
        let first = self.attempt(&cluster_id, &holder, ttl).await;
        if matches!(first, Ok(Claimed::Held { .. })) {
            info!(key_store = %self.url, cluster = %cluster_id, "key store prefix claimed for this cluster (renewed every {every:?})");
        }
        let store = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Logged by `attempt`; the claim state says what the store may do.
                let _ = store.attempt(&cluster_id, &holder, ttl).await;
            }
        });
        (first, task)
    }

    async fn attempt(
        &self,
        cluster_id: &str,
        holder: &str,
        ttl: jiff::SignedDuration,
    ) -> Result<Claimed, StoreError> {
        let result = self.claim(cluster_id, holder, ttl).await;
        match &result {
            Ok(Claimed::Held {
                previous: Some(previous),
            }) => {
                warn!(key_store = %self.url, cluster = %cluster_id, previous = %previous, "took the key store prefix over from a stale claim")
            }
            Ok(Claimed::Held { previous: None }) => {}
            Ok(Claimed::Refused(err)) => error!(
                error = %err,
                "another live cluster writes under this key store prefix: refusing to use it; give this cluster its own --key-store prefix"
            ),
            Err(err) => {
                error!(error = %err, "cannot claim or renew the key store prefix; the store is not used once the claim lapses")
            }
        }
        result
    }

    pub fn url(&self) -> &KeyStoreUrl {
        &self.url
    }

    fn error(&self, key: &str, err: ObjectError) -> StoreError {
        StoreError {
            url: self.url.to_string(),
            operation: err.operation,
            key: key.to_owned(),
            code: err.code,
            message: err.message,
        }
    }

    /// The JSON body of the object `key`; a value that cannot be serialised is an error, never
    /// an empty object (docs/design.md, "Serialisation failures are errors").
    fn body<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec_pretty(value).map_err(|e| StoreError {
            url: self.url.to_string(),
            operation: "Serialize",
            key: key.to_owned(),
            code: "InvalidObject".to_owned(),
            message: e.to_string(),
        })
    }

    fn object_key_of(&self, record: &KeyPairRecord) -> String {
        self.url.object_key(
            &record.namespace,
            &record.config_name,
            &record.organization_id,
            record.sequence,
        )
    }

    /// Writes `pair`'s object once (made for `rotate_now_token`). An object already there is
    /// fine only if it is this very pair (a retry after a crash); another pair under the same
    /// name is a conflict, and this pair must not become active.
    pub async fn put(
        &self,
        pair: &KeyPairSecret,
        rotate_now_token: Option<&str>,
    ) -> Result<(), StoreError> {
        self.check()?;
        let key = self.object_key_of(pair);
        if pair.sequence > MAX_SEQUENCE {
            return Err(StoreError {
                url: self.url.to_string(),
                operation: "PutObject",
                key,
                code: "InvalidSequence".to_owned(),
                message: format!(
                    "sequence {} of {} does not fit the ten digits of an object name",
                    pair.sequence, pair.secret_name
                ),
            });
        }
        let object = StoredKeyPair::of(pair, rotate_now_token);
        let body = self.body(&key, &object)?;
        match self.objects.put_new(&key, body).await {
            Ok(Put::Created) => Ok(()),
            Ok(Put::Exists) => {
                let existing = self
                    .read_pair(&key, &pair.namespace, &pair.config_name)
                    .await?;
                match existing {
                    Some(Ok((found, _))) if found.fingerprint() == pair.fingerprint() => Ok(()),
                    _ => Err(StoreError {
                        url: self.url.to_string(),
                        operation: "PutObject",
                        key,
                        code: "ObjectExists".to_owned(),
                        message: format!(
                            "another key pair is stored under the name of {} (sequence {} of organisation {}); it is not overwritten, and this pair does not become active",
                            pair.secret_name, pair.sequence, pair.organization_id
                        ),
                    }),
                }
            }
            Err(err) => Err(self.error(&key, err)),
        }
    }

    /// Writes `wrap`, a wrap of `pair` made by KMS `ReEncrypt`, once, beside the pair's object:
    /// `…/SEQUENCE.wrap-KEY-ID.json` with `If-None-Match: *` (docs/design.md, "The key store",
    /// wrap objects). One wrap per pair and KMS key: an object already there holding this very
    /// wrap is [`WrapPut::Exists`] (a retry after a crash); one holding another wrap of this
    /// pair under that key is returned, never overwritten ([`WrapPut::Other`]); one that is
    /// not a wrap of this pair is an `ObjectExists` error. The caller writes a wrap here only
    /// after KMS proved it, and before the Secret carries it; the pair's own object should be
    /// stored already (a wrap is listed with its pair, and without one it restores nothing).
    /// Refused before any request: a `kms_key_arn` that is not a key ARN ([`kms_key_id`]), the
    /// key of the pair's own blob, an empty blob, a sequence over [`MAX_SEQUENCE`].
    pub async fn put_wrap(&self, pair: &KeyPairSecret, wrap: &Wrap) -> Result<WrapPut, StoreError> {
        self.check()?;
        let object_key = self.object_key_of(pair);
        let refuse = |key: String, code: &str, message: String| StoreError {
            url: self.url.to_string(),
            operation: "PutObject",
            key,
            code: code.to_owned(),
            message,
        };
        let Some(key_id) = kms_key_id(&wrap.kms_key_arn) else {
            return Err(refuse(
                object_key,
                "InvalidWrap",
                format!(
                    "the wrap's kmsKeyArn {:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID, never an alias)",
                    wrap.kms_key_arn
                ),
            ));
        };
        let key = KeyStoreUrl::wrap_key(&object_key, key_id);
        if pair.sequence > MAX_SEQUENCE {
            return Err(refuse(
                key,
                "InvalidSequence",
                format!(
                    "sequence {} of {} does not fit the ten digits of an object name",
                    pair.sequence, pair.secret_name
                ),
            ));
        }
        if wrap.ciphertext.is_empty() || wrap.kms_key_arn == pair.kms_key_arn {
            return Err(refuse(
                key,
                "InvalidWrap",
                format!(
                    "a wrap of {} holds a blob under another KMS key than the pair's own ({})",
                    pair.secret_name, pair.kms_key_arn
                ),
            ));
        }
        let body = self.body(&key, &StoredWrap::of(pair, wrap))?;
        match self.objects.put_new(&key, body).await {
            Ok(Put::Created) => Ok(WrapPut::Created),
            Ok(Put::Exists) => {
                let fetched = self
                    .objects
                    .get(&key, MAX_OBJECT_BYTES)
                    .await
                    .map_err(|err| self.error(&key, err))?;
                let found = match fetched.map(|f| f.body) {
                    None => Err("it disappeared after the write found it".to_owned()),
                    Some(None) => Err(too_large(MAX_OBJECT_BYTES)),
                    Some(Some(body)) => StoredWrap::read(&body, pair, Some(key_id)),
                };
                match found {
                    Ok(found) if found.ciphertext == wrap.ciphertext => Ok(WrapPut::Exists),
                    Ok(found) => Ok(WrapPut::Other(found)),
                    Err(why) => Err(refuse(
                        key,
                        "ObjectExists",
                        format!(
                            "an object that is not a wrap of {} is stored under the name of its wrap ({why}); it is not overwritten: remove it if nobody should have written it",
                            pair.secret_name
                        ),
                    )),
                }
            }
            Err(err) => Err(self.error(&key, err)),
        }
    }

    /// Records that `record` was retired or pruned at `at` (once: a marker that exists stays).
    /// The marker carries the pair's fingerprint, so it marks that pair only.
    pub async fn mark(
        &self,
        record: &KeyPairRecord,
        kind: MarkKind,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.check()?;
        let key = KeyStoreUrl::marker_key(&self.object_key_of(record), kind);
        let marker = Marker {
            format: MARKER_FORMAT.to_owned(),
            secret_name: record.secret_name.clone(),
            key_pair_id: record.key_pair_id.clone(),
            at,
            public_key_fingerprint: Some(record.fingerprint()),
        };
        let body = self.body(&key, &marker)?;
        self.objects
            .put_new(&key, body)
            .await
            .map(|_| ())
            .map_err(|err| self.error(&key, err))
    }

    /// The pair object `key` (`None`: gone), checked, with the token it was made for; or why
    /// it was refused.
    async fn read_pair(
        &self,
        key: &str,
        namespace: &str,
        config: &str,
    ) -> Result<Option<Result<(KeyPairSecret, Option<String>), String>>, StoreError> {
        let Some(fetched) = self
            .objects
            .get(key, MAX_OBJECT_BYTES)
            .await
            .map_err(|err| self.error(key, err))?
        else {
            return Ok(None);
        };
        let Some(body) = fetched.body else {
            return Ok(Some(Err(too_large(MAX_OBJECT_BYTES))));
        };
        Ok(Some(
            serde_json::from_slice::<StoredKeyPair>(&body)
                .map_err(|e| format!("not a key pair object: {e}"))
                .and_then(|object| {
                    let token = object.rotate_now_token.clone();
                    object.verify(namespace, config).map(|pair| (pair, token))
                }),
        ))
    }

    /// The marker `key` of `pair` (`None`: gone), or why it is ignored.
    async fn read_marker(
        &self,
        key: &str,
        size: u64,
        pair: &KeyPairSecret,
    ) -> Result<Option<Result<Marker, String>>, StoreError> {
        if size > MAX_SMALL_OBJECT_BYTES as u64 {
            return Ok(Some(Err(too_large(MAX_SMALL_OBJECT_BYTES))));
        }
        let fetched = self
            .objects
            .get(key, MAX_SMALL_OBJECT_BYTES)
            .await
            .map_err(|err| self.error(key, err))?;
        Ok(fetched.map(|fetched| match fetched.body {
            Some(body) => Marker::read(
                &body,
                &pair.secret_name,
                &pair.key_pair_id,
                &pair.fingerprint(),
            ),
            None => Err(too_large(MAX_SMALL_OBJECT_BYTES)),
        }))
    }

    /// Every pair of `namespace/config` in the store, each checked, with its markers applied
    /// and its wraps in [`KeyPairSecret::wraps`] (oldest first; not yet proven: the restore
    /// proves them). Only canonical names are read (`ORGANISATION/SEQUENCE.json`, `SEQUENCE`
    /// ten digits, the organisation percent-encoded as the operator writes it, and beside it
    /// `SEQUENCE.retired.json`, `SEQUENCE.pruned.json`, `SEQUENCE.wrap-KEY-ID.json`); other
    /// names, objects over the size limit and markers or wraps that do not match their pair are
    /// refused entries, not read. A listing of more than [`MAX_CONFIG_OBJECTS`] objects is
    /// refused whole.
    pub async fn list(&self, namespace: &str, config: &str) -> Result<Listing, StoreError> {
        self.check()?;
        let prefix = self.url.config_prefix(namespace, config);
        let listed = self
            .objects
            .list(&prefix, MAX_CONFIG_OBJECTS)
            .await
            .map_err(|err| self.error(&prefix, err))?;
        if listed.more {
            return Err(StoreError {
                url: self.url.to_string(),
                operation: "ListObjectsV2",
                key: prefix,
                code: "TooManyObjects".to_owned(),
                message: format!(
                    "more than {MAX_CONFIG_OBJECTS} objects under this config's prefix (at most 10,000 key pairs with their markers and wraps); none is read: remove the objects that do not belong there"
                ),
            });
        }
        let sizes: BTreeMap<&str, u64> = listed
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect();
        let mut refused = Vec::new();
        let mut reads = Vec::new();
        for object in &listed.objects {
            match object_name(&object.key, &prefix) {
                ObjectName::Pair {
                    organization_id,
                    sequence,
                } => reads.push(self.read_entry(
                    object,
                    organization_id,
                    sequence,
                    &sizes,
                    namespace,
                    config,
                )),
                // Read with their pair; one without its pair marks or wraps nothing.
                ObjectName::Marker | ObjectName::Wrap => {}
                ObjectName::Refused(why) => refused.push(StoredEntry {
                    key: object.key.clone(),
                    organization_id: None,
                    sequence: None,
                    pair: Err(why),
                    pruned: false,
                    rotate_now_token: None,
                }),
            }
        }
        let read: Vec<Vec<StoredEntry>> = futures::stream::iter(reads)
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut entries: Vec<StoredEntry> = read.into_iter().flatten().collect();
        entries.extend(refused);
        Ok(Listing { entries })
    }

    /// The entry of the pair object `object`, and an entry for each of its markers that is
    /// ignored.
    async fn read_entry(
        &self,
        object: &ListedObject,
        organization_id: String,
        sequence: u64,
        sizes: &BTreeMap<&str, u64>,
        namespace: &str,
        config: &str,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let key = object.key.as_str();
        let read = if object.size > MAX_OBJECT_BYTES as u64 {
            Err(too_large(MAX_OBJECT_BYTES))
        } else {
            self.read_pair(key, namespace, config)
                .await?
                .unwrap_or_else(|| Err("the object disappeared while it was listed".to_owned()))
        };
        let (mut pair, rotate_now_token) = match read {
            Ok((pair, token)) => (Ok(pair), token),
            Err(why) => (Err(why), None),
        };
        if let Ok(found) = &pair {
            if found.organization_id != organization_id || found.sequence != sequence {
                pair = Err(format!(
                    "it holds sequence {} of organisation {:?}, but is stored under the name of sequence {sequence} of organisation {organization_id:?}",
                    found.sequence, found.organization_id
                ));
            }
        }
        let mut entries = Vec::new();
        let mut pruned = false;
        if let Ok(found) = &mut pair {
            for kind in [MarkKind::Retired, MarkKind::Pruned] {
                let marker_key = KeyStoreUrl::marker_key(key, kind);
                let Some(&size) = sizes.get(marker_key.as_str()) else {
                    continue;
                };
                match self.read_marker(&marker_key, size, found).await? {
                    None => {}
                    Some(Ok(marker)) => match kind {
                        MarkKind::Retired => {
                            found.state = KeyPairState::Retired;
                            found.retired_at = Some(marker.at);
                        }
                        MarkKind::Pruned => pruned = true,
                    },
                    Some(Err(why)) => entries.push(StoredEntry {
                        key: marker_key,
                        organization_id: None,
                        sequence: None,
                        pair: Err(format!("{} marker ignored: {why}", kind.as_str())),
                        pruned: false,
                        rotate_now_token: None,
                    }),
                }
            }
        }
        if let Ok(found) = &mut pair {
            entries.extend(self.read_wraps(key, sizes, found).await?);
        }
        entries.insert(
            0,
            StoredEntry {
                key: key.to_owned(),
                organization_id: Some(organization_id),
                sequence: Some(sequence),
                pair,
                pruned,
                rotate_now_token,
            },
        );
        Ok(entries)
    }
}

impl KeyStore {
    /// Reads the wraps listed beside the pair object `key` into `pair.wraps` (oldest first);
    /// returns an entry for each wrap that is refused (docs/design.md, "The key store": a wrap
    /// is believed only for the pair whose names and fingerprint it carries).
    async fn read_wraps(
        &self,
        key: &str,
        sizes: &BTreeMap<&str, u64>,
        pair: &mut KeyPairSecret,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let stem = key.strip_suffix(".json").unwrap_or(key);
        let start = format!("{stem}.wrap-");
        let listed: Vec<(&str, u64, &str)> = sizes
            .range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&start))
            .filter_map(|(k, size)| {
                let key_id = k[start.len()..].strip_suffix(".json")?;
                is_key_id(key_id).then_some((*k, *size, key_id))
            })
            .collect();
        let mut refused = Vec::new();
        for (wrap_key, size, key_id) in listed {
            let read = if size > MAX_OBJECT_BYTES as u64 {
                Some(Err(too_large(MAX_OBJECT_BYTES)))
            } else {
                self.objects
                    .get(wrap_key, MAX_OBJECT_BYTES)
                    .await
                    .map_err(|err| self.error(wrap_key, err))?
                    .map(|fetched| match fetched.body {
                        Some(body) => StoredWrap::read(&body, pair, Some(key_id)),
                        None => Err(too_large(MAX_OBJECT_BYTES)),
                    })
            };
            match read {
                None => {}
                Some(Ok(wrap)) => pair.wraps.push(wrap),
                Some(Err(why)) => refused.push(StoredEntry {
                    key: wrap_key.to_owned(),
                    organization_id: None,
                    sequence: None,
                    pair: Err(format!("wrap ignored: {why}")),
                    pruned: false,
                    rotate_now_token: None,
                }),
            }
        }
        pair.wraps
            .sort_by(|a, b| (a.created_at, &a.kms_key_arn).cmp(&(b.created_at, &b.kms_key_arn)));
        Ok(refused)
    }
}

fn too_large(limit: usize) -> String {
    format!("it is larger than the {} KiB limit; not read", limit / 1024)
}

/// What `key` is under a config's `prefix`: a pair object, a marker, a wrap, or none of them
/// (why). Only the names the operator writes are taken (docs/design.md, "The key store").
pub fn object_name(key: &str, prefix: &str) -> ObjectName {
    let Some(rest) = key.strip_prefix(prefix) else {
        return ObjectName::Refused("it is outside the config's prefix".to_owned());
    };
    let Some((segment, file)) = rest.split_once('/').filter(|(_, f)| !f.contains('/')) else {
        return ObjectName::Refused(format!(
            "{rest:?} is not ORGANISATION/SEQUENCE.json; not read"
        ));
    };
    let Some(organization_id) =
        unescape(segment).filter(|org| !org.is_empty() && escape(org) == segment)
    else {
        return ObjectName::Refused(format!(
            "the organisation {segment:?} is not percent-encoded as the operator writes it; not read"
        ));
    };
    let not_canonical = || {
        ObjectName::Refused(format!(
            "{file:?} is not a canonical name: the sequence is exactly ten digits, e.g. 0000000001.json, 0000000001.retired.json or 0000000001.wrap-KEY-ID.json; not read"
        ))
    };
    let Some(stem) = file.strip_suffix(".json") else {
        return not_canonical();
    };
    let (digits, kind) = if let Some(digits) = stem.strip_suffix(".retired") {
        (digits, Some(ObjectName::Marker))
    } else if let Some(digits) = stem.strip_suffix(".pruned") {
        (digits, Some(ObjectName::Marker))
    } else if let Some((digits, key_id)) = stem.split_once(".wrap-") {
        if !is_key_id(key_id) {
            return ObjectName::Refused(format!(
                "{file:?} is not a canonical wrap name: the KMS key id {key_id:?} is not a lowercase UUID or mrk- and 32 hex digits; not read"
            ));
        }
        (digits, Some(ObjectName::Wrap))
    } else {
        // The pair's own object.
        (stem, None)
    };
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return not_canonical();
    }
    match (digits.parse::<u64>(), kind) {
        (Ok(sequence), None) => ObjectName::Pair {
            organization_id,
            sequence,
        },
        (Ok(_), Some(kind)) => kind,
        (Err(_), _) => not_canonical(),
    }
}

fn unescape(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::test_pair;

    /// A real RSA public key (SubjectPublicKeyInfo DER).
    fn public_key_der() -> Vec<u8> {
        crate::kms::fake::generate_rsa(KeyPairSpec::Rsa2048).0
    }

    fn url(s: &str) -> Result<KeyStoreUrl, KeyStoreUrlError> {
        s.parse()
    }

    #[test]
    fn urls_are_checked_and_errors_name_the_flag() {
        let plain = url("s3://acme-keys").unwrap();
        assert_eq!(
            (plain.bucket.as_str(), plain.prefix.as_str()),
            ("acme-keys", "")
        );
        assert_eq!(plain.to_string(), "s3://acme-keys");
        let prefixed = url("s3://acme-keys/prod/eu-1/").unwrap();
        assert_eq!(prefixed.prefix, "prod/eu-1/");
        assert_eq!(prefixed.to_string(), "s3://acme-keys/prod/eu-1");
        for bad in [
            "acme-keys",
            "https://acme-keys",
            "s3://",
            "s3://AB",
            "s3://Acme-Keys",
            "s3://acme_keys",
            "s3://-acme",
            "s3://acme-keys//x",
            "s3://acme-keys/a/../b",
            "s3://acme-keys/a?b",
        ] {
            let err = url(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("--key-store ") && err.contains("s3://BUCKET/PREFIX"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn object_names_come_from_the_manifest_and_read_back() {
        let url = url("s3://acme-keys/prod").unwrap();
        let key = url.object_key("telephony", "recordings", "org/1 ä", 7);
        assert_eq!(
            key,
            "prod/key-pairs/telephony/recordings/org%2F1%20%C3%A4/0000000007.json"
        );
        let prefix = url.config_prefix("telephony", "recordings");
        assert_eq!(
            object_name(&key, &prefix),
            ObjectName::Pair {
                organization_id: "org/1 ä".to_owned(),
                sequence: 7
            }
        );
        for kind in [MarkKind::Retired, MarkKind::Pruned] {
            let marker = KeyStoreUrl::marker_key(&key, kind);
            assert_eq!(
                object_name(&marker, &prefix),
                ObjectName::Marker,
                "{marker}"
            );
        }
        for key_id in [KEY_ID_B, "mrk-0123456789abcdef0123456789abcdef"] {
            let wrap = KeyStoreUrl::wrap_key(&key, key_id);
            assert_eq!(
                wrap,
                format!(
                    "prod/key-pairs/telephony/recordings/org%2F1%20%C3%A4/0000000007.wrap-{key_id}.json"
                )
            );
            assert_eq!(object_name(&wrap, &prefix), ObjectName::Wrap, "{wrap}");
        }
        assert_eq!(escape(".."), "%2E%2E");
        let max = url.object_key("telephony", "recordings", "o", MAX_SEQUENCE);
        assert!(matches!(
            object_name(&max, &prefix),
            ObjectName::Pair {
                sequence: MAX_SEQUENCE,
                ..
            }
        ));
    }

    /// Only the names the operator writes are read: ten digits, the organisation encoded as
    /// `escape` encodes it, one segment below it.
    #[test]
    fn names_that_are_not_canonical_are_refused() {
        let prefix = "prod/key-pairs/telephony/recordings/";
        for bad in [
            "org-1/1.json",
            "org-1/01.json",
            "org-1/000000001.json",
            "org-1/00000000001.json",
            "org-1/+000000001.json",
            "org-1/000000000a.json",
            "org-1/0000000001.JSON",
            "org-1/0000000001",
            "org-1/1.retired.json",
            "org-1/0000000001.other.json",
            // Wraps: exactly a lowercase UUID or mrk- and 32 hex digits, after ten digits.
            "org-1/1.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json",
            "org-1/0000000001.wrap-.json",
            "org-1/0000000001.wrap-0B7C2A34-5D6E-4F70-8A9B-0C1D2E3F4A5B.json",
            "org-1/0000000001.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5.json",
            "org-1/0000000001.wrap-0b7c2a345d6e4f708a9b0c1d2e3f4a5b.json",
            "org-1/0000000001.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5g.json",
            "org-1/0000000001.wrap-mrk-0123456789abcdef0123456789abcde.json",
            "org-1/0000000001.wrap-mrk-0123456789ABCDEF0123456789abcdef.json",
            "org-1/0000000001.wrap-alias%2Frecordings.json",
            "org-1/0000000001.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json",
            "org-1/0000000001.retired.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json",
            "org-1/0000000001.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "org-1/0000000001.wrap-0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b.json.json",
            "org-1/x/0000000001.json",
            "org%2D1/0000000001.json",
            "org%2f1/0000000001.json",
            "org%zz/0000000001.json",
            "/0000000001.json",
            "0000000001.json",
            "org-1/",
        ] {
            let key = format!("{prefix}{bad}");
            assert!(
                matches!(object_name(&key, prefix), ObjectName::Refused(ref why) if why.contains("not")),
                "{bad}: {:?}",
                object_name(&key, prefix)
            );
        }
    }

    #[test]
    fn an_object_round_trips_and_a_tampered_one_is_refused() {
        let pair = KeyPairSecret {
            record: test_pair(
                "org-1",
                3,
                KeyPairSpec::Rsa2048,
                public_key_der(),
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            private_key_ciphertext: vec![1, 2, 3],
            wraps: Vec::new(),
        };
        let object = StoredKeyPair::of(&pair, Some("t1"));
        let json = serde_json::to_string(&object).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        let back = object.verify("telephony", "recordings").unwrap();
        assert_eq!(back, pair);

        let mut other_config = object.clone();
        other_config.config = "other".into();
        assert!(other_config.verify("telephony", "recordings").is_err());
        let mut tampered = object.clone();
        tampered.public_key_fingerprint = "SHA256:AAAA".into();
        let err = tampered.verify("telephony", "recordings").unwrap_err();
        assert!(err.contains("fingerprint"), "{err}");
        let mut renamed = object.clone();
        renamed.sequence = 4;
        assert!(renamed.verify("telephony", "recordings").is_err());
        let mut empty = object;
        empty.private_key_kms = String::new();
        assert!(empty.verify("telephony", "recordings").is_err());
    }

    fn pair(org: &str, sequence: u64) -> KeyPairSecret {
        KeyPairSecret {
            record: test_pair(
                org,
                sequence,
                KeyPairSpec::Rsa2048,
                public_key_der(),
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            private_key_ciphertext: vec![7; 16],
            wraps: Vec::new(),
        }
    }

    /// Written once; a retry of the same pair is fine, another pair under its name is refused;
    /// markers retire, tampered objects are listed as refused, down is an error naming the URL.
    #[tokio::test]
    async fn the_store_writes_once_lists_with_markers_and_refuses_tampering() {
        let objects = memory::MemoryObjects::new();
        let store = KeyStore::new(
            url("s3://acme-keys/prod").unwrap(),
            Arc::new(objects.clone()),
        );
        let (first, second) = (pair("org-1", 1), pair("org-1", 2));
        store.put(&first, None).await.unwrap();
        store.put(&first, None).await.unwrap();
        let mut impostor = pair("org-1", 1);
        impostor.key_pair_id = "other".into();
        let err = store.put(&impostor, None).await.unwrap_err();
        assert_eq!(err.code, "ObjectExists");
        store.put(&second, None).await.unwrap();
        let retired_at: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        store
            .mark(&first, MarkKind::Retired, retired_at)
            .await
            .unwrap();
        store
            .mark(&first, MarkKind::Retired, retired_at)
            .await
            .unwrap();

        let listing = store.list("telephony", "recordings").await.unwrap();
        assert_eq!(listing.entries.len(), 2);
        let old = listing
            .get(&first.secret_name)
            .unwrap()
            .pair
            .as_ref()
            .unwrap();
        assert_eq!(
            (old.state, old.retired_at),
            (KeyPairState::Retired, Some(retired_at))
        );
        assert_eq!(old.fingerprint(), first.fingerprint());
        let new = listing
            .get(&second.secret_name)
            .unwrap()
            .pair
            .as_ref()
            .unwrap();
        assert_eq!(new.state, KeyPairState::Active);
        assert!(
            store
                .list("telephony", "recordings-2")
                .await
                .unwrap()
                .entries
                .is_empty()
        );

        let key = store.object_key_of(&second);
        let mut object: StoredKeyPair = serde_json::from_slice(&objects.objects()[&key]).unwrap();
        object.public_key_pem = StoredKeyPair::of(&pair("org-1", 2), None).public_key_pem;
        objects.overwrite(&key, serde_json::to_vec(&object).unwrap());
        let listing = store.list("telephony", "recordings").await.unwrap();
        let refused = listing.entries.iter().find(|e| e.key == key).unwrap();
        assert!(
            refused.pair.as_ref().unwrap_err().contains("fingerprint"),
            "{refused:?}"
        );

        objects.set_down(true);
        let err = store.list("telephony", "recordings").await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("key store s3://acme-keys/prod: ListObjectsV2"),
            "{err}"
        );
    }

    fn store_of(objects: &memory::MemoryObjects) -> KeyStore {
        KeyStore::new(
            url("s3://acme-keys/prod").unwrap(),
            Arc::new(objects.clone()),
        )
    }

    /// Names that are not canonical, objects over the size limit and listings over the count
    /// limit are refused without being read.
    #[tokio::test]
    async fn store_input_is_canonical_and_bounded() {
        let objects = memory::MemoryObjects::new();
        let store = store_of(&objects);
        let good = pair("org-1", 1);
        store.put(&good, None).await.unwrap();
        let key = store.object_key_of(&good);
        let body = objects.objects()[&key].clone();
        let prefix = store.url.config_prefix("telephony", "recordings");
        for alias in ["org-1/1.json", "org-1/01.json", "org%2D1/0000000001.json"] {
            objects.overwrite(&format!("{prefix}{alias}"), body.clone());
        }
        let big = format!("{prefix}org-2/0000000001.json");
        objects.overwrite(&big, vec![b' '; MAX_OBJECT_BYTES + 1]);
        let gets = objects.calls().1;
        let listing = store.list("telephony", "recordings").await.unwrap();
        assert_eq!(
            objects.calls().1 - gets,
            1,
            "only the canonical object is read"
        );
        assert_eq!(listing.entries.len(), 5);
        assert!(listing.get(&good.secret_name).unwrap().pair.is_ok());
        let refused: Vec<(&str, &str)> = listing
            .entries
            .iter()
            .filter_map(|e| Some((e.key.as_str(), e.pair.as_ref().err()?.as_str())))
            .collect();
        assert_eq!(refused.len(), 4, "{refused:?}");
        for (key, why) in &refused {
            if *key == big {
                assert!(why.contains("64 KiB limit; not read"), "{why}");
            } else {
                assert!(why.contains("not"), "{key}: {why}");
            }
        }
        let taken: Vec<_> = listing
            .entries
            .iter()
            .filter_map(|e| Some((e.organization_id.as_deref()?, e.sequence?)))
            .collect();
        assert_eq!(
            taken,
            vec![("org-1", 1), ("org-2", 1)],
            "aliases take nothing"
        );

        // Replaced after the listing with a larger body: the read stops at the limit.
        let gets = objects.get(&key, 16).await.unwrap().unwrap();
        assert_eq!(gets.body, None);

        // Over the count limit: refused whole, nothing read.
        let many = memory::MemoryObjects::new();
        let store = store_of(&many);
        for i in 0..MAX_CONFIG_OBJECTS {
            many.overwrite(&format!("{prefix}org-1/{i:010}.json"), b"{}".to_vec());
        }
        let at_limit = many.list(&prefix, MAX_CONFIG_OBJECTS).await.unwrap();
        assert_eq!(
            (at_limit.objects.len(), at_limit.more),
            (MAX_CONFIG_OBJECTS, false)
        );
        many.overwrite(
            &format!("{prefix}org-1/{MAX_CONFIG_OBJECTS:010}.json"),
            b"{}".to_vec(),
        );
        let gets = many.calls().1;
        let err = store.list("telephony", "recordings").await.unwrap_err();
        assert_eq!(err.code, "TooManyObjects");
        assert!(err.message.contains("none is read"), "{err}");
        assert_eq!(many.calls().1, gets);

        let huge = pair("org-1", MAX_SEQUENCE + 1);
        assert_eq!(
            store_of(&memory::MemoryObjects::new())
                .put(&huge, None)
                .await
                .unwrap_err()
                .code,
            "InvalidSequence"
        );
    }

    /// An RSA-4096 pair's object (with a KMS blob of a real size) is far below the limit.
    #[test]
    fn the_size_limit_is_well_above_a_real_object() {
        let (public_key_der, private_key) = crate::kms::fake::generate_rsa(KeyPairSpec::Rsa4096);
        let mut pair = KeyPairSecret {
            record: test_pair(
                "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                1,
                KeyPairSpec::Rsa4096,
                public_key_der,
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            // KMS's ciphertext is the plaintext and about 300 bytes of header and tag.
            private_key_ciphertext: vec![7; private_key.len() + 300],
            wraps: Vec::new(),
        };
        pair.kms_key_alias_arn = Some(format!(
            "arn:aws:kms:us-east-1:111122223333:alias/{}",
            "a".repeat(200)
        ));
        let body =
            serde_json::to_vec_pretty(&StoredKeyPair::of(&pair, Some(&"t".repeat(63)))).unwrap();
        eprintln!("an RSA-4096 key pair object: {} bytes", body.len());
        assert!(body.len() * 8 < MAX_OBJECT_BYTES, "{} bytes", body.len());
    }

    /// Markers carry their pair's fingerprint; one that names another pair is ignored and
    /// reported, one without a fingerprint (written before it existed) is believed.
    #[tokio::test]
    async fn markers_mark_only_their_pair() {
        let objects = memory::MemoryObjects::new();
        let store = store_of(&objects);
        let (first, second, third) = (pair("org-1", 1), pair("org-1", 2), pair("org-1", 3));
        for p in [&first, &second, &third] {
            store.put(p, None).await.unwrap();
        }
        let at: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        store.mark(&first, MarkKind::Retired, at).await.unwrap();
        let written: Marker = serde_json::from_slice(
            &objects.objects()
                [&KeyStoreUrl::marker_key(&store.object_key_of(&first), MarkKind::Retired)],
        )
        .unwrap();
        assert_eq!(written.public_key_fingerprint, Some(first.fingerprint()));

        // A marker of an older format (no fingerprint) for the second, and one naming another
        // key (the first's fingerprint) for the third: retired and pruned.
        let old = format!(
            r#"{{"format":"{MARKER_FORMAT}","secretName":"{}","keyPairId":"{}","at":"{at}"}}"#,
            second.secret_name, second.key_pair_id
        );
        objects.overwrite(
            &KeyStoreUrl::marker_key(&store.object_key_of(&second), MarkKind::Retired),
            old.into_bytes(),
        );
        let forged = Marker {
            format: MARKER_FORMAT.to_owned(),
            secret_name: third.secret_name.clone(),
            key_pair_id: third.key_pair_id.clone(),
            at,
            public_key_fingerprint: Some(first.fingerprint()),
        };
        let third_key = store.object_key_of(&third);
        for kind in [MarkKind::Retired, MarkKind::Pruned] {
            objects.overwrite(
                &KeyStoreUrl::marker_key(&third_key, kind),
                serde_json::to_vec(&forged).unwrap(),
            );
        }
        let listing = store.list("telephony", "recordings").await.unwrap();
        let state = |p: &KeyPairSecret| {
            let entry = listing.get(&p.secret_name).unwrap();
            (entry.pair.as_ref().unwrap().state, entry.pruned)
        };
        assert_eq!(state(&first), (KeyPairState::Retired, false));
        assert_eq!(
            state(&second),
            (KeyPairState::Retired, false),
            "old marker believed"
        );
        assert_eq!(
            state(&third),
            (KeyPairState::Active, false),
            "forged markers ignored"
        );
        let ignored: Vec<&String> = listing
            .entries
            .iter()
            .filter_map(|e| e.pair.as_ref().err())
            .collect();
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(
            ignored
                .iter()
                .all(|why| why.contains("marker ignored") && why.contains(&first.fingerprint())),
            "{ignored:?}"
        );

        // A marker that is not one, or too large, is ignored the same way.
        objects.overwrite(
            &KeyStoreUrl::marker_key(&third_key, MarkKind::Retired),
            b"junk".to_vec(),
        );
        objects.overwrite(
            &KeyStoreUrl::marker_key(&third_key, MarkKind::Pruned),
            vec![b' '; MAX_SMALL_OBJECT_BYTES + 1],
        );
        let listing = store.list("telephony", "recordings").await.unwrap();
        assert_eq!(state_of(&listing, &third), (KeyPairState::Active, false));
        assert_eq!(
            listing.entries.iter().filter(|e| e.pair.is_err()).count(),
            2
        );
    }

    fn state_of(listing: &Listing, p: &KeyPairSecret) -> (KeyPairState, bool) {
        let entry = listing.get(&p.secret_name).unwrap();
        (entry.pair.as_ref().unwrap().state, entry.pruned)
    }

    const KEY_ID_B: &str = "0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    const KEY_B: &str =
        "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    const KEY_C: &str =
        "arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef";

    fn wrap(key_arn: &str, byte: u8, at: &str) -> Wrap {
        Wrap {
            kms_key_arn: key_arn.to_owned(),
            ciphertext: vec![byte; 32],
            created_at: at.parse().unwrap(),
        }
    }

    #[test]
    fn kms_key_ids_are_taken_from_key_arns_only() {
        assert_eq!(kms_key_id(KEY_B), Some(KEY_ID_B));
        assert_eq!(
            kms_key_id(KEY_C),
            Some("mrk-0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            kms_key_id(
                "arn:aws-cn:kms:cn-north-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"
            ),
            Some(KEY_ID_B)
        );
        for bad in [
            "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "arn:aws:kms:us-east-1:111122223333:key/../0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "arn:aws:kms:us-east-1:111122223333:key/0B7C2A34-5D6E-4F70-8A9B-0C1D2E3F4A5B",
            "arn:aws:s3:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "arn:aws:kms:us-east-1:1111:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "arn:aws:kms::111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "arn:aws:kms:us-east-1:x:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b",
            "arn:aws:kms:us-east-1:111122223333:key/mrk-0123",
            "arn:aws:kms:us-east-1:111122223333:key/k1",
            "",
        ] {
            assert_eq!(kms_key_id(bad), None, "{bad}");
        }
    }

    /// A wrap is written once: the same wrap again is a retry, another wrap of the pair under
    /// that key is returned (not overwritten), an object that is no wrap of the pair is an
    /// error; what cannot be a wrap is refused before any request.
    #[tokio::test]
    async fn a_wrap_is_written_once_and_a_retry_or_another_is_told_apart() {
        let objects = memory::MemoryObjects::new();
        let store = store_of(&objects);
        let first = pair("org-1", 1);
        store.put(&first, None).await.unwrap();
        let b = wrap(KEY_B, 1, "2026-06-01T00:00:00Z");
        assert_eq!(store.put_wrap(&first, &b).await.unwrap(), WrapPut::Created);
        assert_eq!(store.put_wrap(&first, &b).await.unwrap(), WrapPut::Exists);
        let key = KeyStoreUrl::wrap_key(&store.object_key_of(&first), KEY_ID_B);
        let written = objects.objects()[&key].clone();
        let object: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(object["format"], WRAP_FORMAT);
        assert_eq!(object["publicKeyFingerprint"], first.fingerprint());
        assert_eq!(object["keyPairId"], first.key_pair_id);
        assert_eq!(object["kmsKeyArn"], KEY_B);
        assert!(!String::from_utf8_lossy(&written).contains("PRIVATE KEY"));

        // A crash after an earlier ReEncrypt: another blob under the same key is returned.
        let again = wrap(KEY_B, 2, "2026-06-02T00:00:00Z");
        assert_eq!(
            store.put_wrap(&first, &again).await.unwrap(),
            WrapPut::Other(b.clone())
        );
        assert_eq!(objects.objects()[&key], written, "never overwritten");

        // Another pair's wrap under this pair's name: an error, not overwritten.
        let second = pair("org-1", 2);
        let planted = KeyStoreUrl::wrap_key(&store.object_key_of(&second), KEY_ID_B);
        objects.overwrite(&planted, written.clone());
        let err = store.put_wrap(&second, &b).await.unwrap_err();
        assert_eq!(err.code, "ObjectExists");
        assert!(err.message.contains("not a wrap of"), "{err}");
        assert_eq!(objects.objects()[&planted], written);

        let puts = objects.calls().0;
        let mut empty = wrap(KEY_C, 1, "2026-06-01T00:00:00Z");
        empty.ciphertext.clear();
        for bad in [
            wrap(
                "arn:aws:kms:us-east-1:111122223333:alias/recordings",
                1,
                "2026-06-01T00:00:00Z",
            ),
            wrap(&first.kms_key_arn, 1, "2026-06-01T00:00:00Z"),
            empty,
        ] {
            let err = store.put_wrap(&first, &bad).await.unwrap_err();
            assert_eq!(err.code, "InvalidWrap", "{bad:?}");
        }
        let huge = pair("org-1", MAX_SEQUENCE + 1);
        assert_eq!(
            store.put_wrap(&huge, &b).await.unwrap_err().code,
            "InvalidSequence"
        );
        assert_eq!(objects.calls().0, puts, "refused before any request");
    }

    /// The listing brings each pair's wraps back, oldest first; a wrap naming another pair,
    /// another fingerprint, another key than its name, or junk, is refused and reported, and
    /// the pair is listed without it.
    #[tokio::test]
    async fn the_listing_brings_wraps_back_and_refuses_planted_ones() {
        let objects = memory::MemoryObjects::new();
        let store = store_of(&objects);
        let (first, second) = (pair("org-1", 1), pair("org-1", 2));
        store.put(&first, None).await.unwrap();
        store.put(&second, None).await.unwrap();
        let (c, b) = (
            wrap(KEY_C, 3, "2026-07-01T00:00:00Z"),
            wrap(KEY_B, 2, "2026-06-01T00:00:00Z"),
        );
        store.put_wrap(&first, &c).await.unwrap();
        store.put_wrap(&first, &b).await.unwrap();
        store
            .mark(
                &first,
                MarkKind::Retired,
                "2026-05-01T00:00:00Z".parse().unwrap(),
            )
            .await
            .unwrap();

        let listing = store.list("telephony", "recordings").await.unwrap();
        assert_eq!(listing.entries.len(), 2, "{listing:?}");
        let listed = listing.get(&first.secret_name).unwrap();
        let listed = listed.pair.as_ref().unwrap();
        assert_eq!(listed.wraps, vec![b.clone(), c.clone()], "oldest first");
        assert_eq!(listed.state, KeyPairState::Retired);
        let other = listing.get(&second.secret_name).unwrap();
        assert!(other.pair.as_ref().unwrap().wraps.is_empty());

        // Planted beside the second pair: the first pair's wrap object (another key pair id
        // and fingerprint), one whose name says another key, one with another fingerprint,
        // junk, and one over the size limit.
        let second_key = store.object_key_of(&second);
        let first_wrap = objects.objects()
            [&KeyStoreUrl::wrap_key(&store.object_key_of(&first), KEY_ID_B)]
            .clone();
        objects.overwrite(&KeyStoreUrl::wrap_key(&second_key, KEY_ID_B), first_wrap);
        let mut renamed = StoredWrap::of(&second, &b);
        renamed.kms_key_arn = KEY_C.to_owned();
        objects.overwrite(
            &KeyStoreUrl::wrap_key(&second_key, "1b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
            serde_json::to_vec(&renamed).unwrap(),
        );
        let mut fingerprint = StoredWrap::of(&second, &c);
        fingerprint.public_key_fingerprint = first.fingerprint();
        objects.overwrite(
            &KeyStoreUrl::wrap_key(&second_key, "mrk-0123456789abcdef0123456789abcdef"),
            serde_json::to_vec(&fingerprint).unwrap(),
        );
        objects.overwrite(
            &KeyStoreUrl::wrap_key(&second_key, "2b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
            b"junk".to_vec(),
        );
        objects.overwrite(
            &KeyStoreUrl::wrap_key(&second_key, "3b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
            vec![b' '; MAX_OBJECT_BYTES + 1],
        );
        let listing = store.list("telephony", "recordings").await.unwrap();
        let listed = listing.get(&second.secret_name).unwrap();
        assert!(listed.pair.as_ref().unwrap().wraps.is_empty(), "{listed:?}");
        let refused: Vec<(&str, &str)> = listing
            .entries
            .iter()
            .filter_map(|e| Some((e.key.as_str(), e.pair.as_ref().err()?.as_str())))
            .collect();
        assert_eq!(refused.len(), 5, "{refused:?}");
        assert!(
            refused
                .iter()
                .all(|(key, why)| key.contains(".wrap-") && why.starts_with("wrap ignored: ")),
            "{refused:?}"
        );
        let why = |id: &str| {
            refused
                .iter()
                .find(|(key, _)| key.contains(id))
                .map(|(_, why)| *why)
                .unwrap()
        };
        assert!(why(KEY_ID_B).contains("not telephony/"), "{refused:?}");
        assert!(
            why("1b7c2a34").contains("its name says KMS key"),
            "{refused:?}"
        );
        assert!(why("mrk-").contains("fingerprint"), "{refused:?}");
        assert!(why("2b7c2a34").contains("not a wrap object"), "{refused:?}");
        assert!(why("3b7c2a34").contains("limit"), "{refused:?}");
        // Refused wraps take no sequence.
        assert!(
            listing
                .entries
                .iter()
                .filter(|e| e.pair.is_err())
                .all(|e| e.sequence.is_none())
        );
    }

    fn ttl() -> jiff::SignedDuration {
        jiff::SignedDuration::from_mins(15)
    }

    /// One cluster holds a prefix: another's fresh claim refuses every operation, a stale one
    /// (by the store's clock) is taken over, and the holder that lost it stops at once.
    #[tokio::test]
    async fn one_live_cluster_holds_a_prefix() {
        let objects = memory::MemoryObjects::new();
        let url = url("s3://acme-keys/prod").unwrap();
        let a = KeyStore::unclaimed(url.clone(), Arc::new(objects.clone()));
        let b = KeyStore::unclaimed(url, Arc::new(objects.clone()));
        let err = a.list("ns", "c").await.unwrap_err();
        assert_eq!(err.code, "NotClaimed");
        assert_eq!(
            a.claim("uid-a", "pod-a", ttl()).await.unwrap(),
            Claimed::Held { previous: None }
        );
        a.list("ns", "c").await.unwrap();

        objects.advance_clock(jiff::SignedDuration::from_mins(5));
        let Claimed::Refused(err) = b.claim("uid-b", "pod-b", ttl()).await.unwrap() else {
            panic!("b holds it too")
        };
        assert_eq!(err.code, CLAIMED);
        let err = b.put(&pair("org-1", 1), None).await.unwrap_err();
        assert_eq!(err.code, CLAIMED);
        assert!(
            err.message.contains("another live cluster") && err.message.contains("uid-a"),
            "{err}"
        );
        assert!(matches!(
            a.claim("uid-a", "pod-a", ttl()).await.unwrap(),
            Claimed::Held { previous: None }
        ));
        // Another replica of cluster a (a new leader) renews by the ETag it reads.
        let a2 = KeyStore::unclaimed(a.url.clone(), Arc::new(objects.clone()));
        assert!(matches!(
            a2.claim("uid-a", "pod-a2", ttl()).await.unwrap(),
            Claimed::Held { previous: None }
        ));

        // Fresh by the store's clock: a's renewal just now. 14 minutes later, still fresh;
        // at 15, stale: taken over.
        objects.advance_clock(jiff::SignedDuration::from_mins(14));
        assert!(matches!(
            b.claim("uid-b", "pod-b", ttl()).await.unwrap(),
            Claimed::Refused(_)
        ));
        objects.advance_clock(jiff::SignedDuration::from_mins(1));
        let Claimed::Held {
            previous: Some(previous),
        } = b.claim("uid-b", "pod-b", ttl()).await.unwrap()
        else {
            panic!("not taken over")
        };
        assert!(previous.contains("uid-a"), "{previous}");
        b.put(&pair("org-1", 1), None).await.unwrap();

        // a's renewal by its ETag loses: it stops, and says whose the prefix is.
        let Claimed::Refused(err) = a.claim("uid-a", "pod-a", ttl()).await.unwrap() else {
            panic!("a renewed over b")
        };
        assert!(err.message.contains("uid-b"), "{err}");
        assert_eq!(a.list("ns", "c").await.unwrap_err().code, CLAIMED);

        // An unreadable claim counts as another cluster's until it is stale.
        let c = KeyStore::unclaimed(a.url.clone(), Arc::new(objects.clone()));
        objects.overwrite("prod/writer.json", b"junk".to_vec());
        let Claimed::Refused(err) = c.claim("uid-c", "pod-c", ttl()).await.unwrap() else {
            panic!("junk taken over while fresh")
        };
        assert!(err.message.contains("unreadable"), "{err}");
        objects.advance_clock(ttl());
        assert!(matches!(
            c.claim("uid-c", "pod-c", ttl()).await.unwrap(),
            Claimed::Held { previous: Some(_) }
        ));
    }

    /// Claims started together: exactly one holds the prefix, every time. The memory store
    /// yields between a read and its answer and before a write, so both claims read "none"
    /// before either writes, and the second `If-None-Match: *` write loses.
    #[tokio::test]
    async fn claims_started_together_give_one_holder() {
        let objects = memory::MemoryObjects::new();
        let url = url("s3://acme-keys/prod").unwrap();
        let a = KeyStore::unclaimed(url.clone(), Arc::new(objects.clone()));
        let b = KeyStore::unclaimed(url, Arc::new(objects.clone()));
        let (ra, rb) = tokio::join!(
            a.claim("uid-a", "pod-a", ttl()),
            b.claim("uid-b", "pod-b", ttl())
        );
        assert_eq!(ra.unwrap(), Claimed::Held { previous: None });
        let Claimed::Refused(err) = rb.unwrap() else {
            panic!("both hold the prefix")
        };
        assert!(err.message.contains("uid-a"), "{err}");
        assert_eq!(objects.calls().0, 2, "both wrote, one lost");
        a.list("ns", "c").await.unwrap();
        assert_eq!(b.list("ns", "c").await.unwrap_err().code, CLAIMED);

        // Two takers of one stale claim: one wins.
        objects.advance_clock(ttl());
        let c = KeyStore::unclaimed(a.url.clone(), Arc::new(objects.clone()));
        let (rb, rc) = tokio::join!(
            b.claim("uid-b", "pod-b", ttl()),
            c.claim("uid-c", "pod-c", ttl())
        );
        let held = [rb.unwrap(), rc.unwrap()]
            .iter()
            .filter(|r| matches!(r, Claimed::Held { .. }))
            .count();
        assert_eq!(held, 1);
    }

    /// A holder whose renewals fail stops using the store before the TTL runs out, by its own
    /// monotonic clock; a renewal that succeeds again resumes it.
    #[tokio::test(start_paused = true)]
    async fn a_claim_whose_renewals_fail_lapses_before_the_ttl() {
        let objects = memory::MemoryObjects::new();
        let a = KeyStore::unclaimed(
            url("s3://acme-keys/prod").unwrap(),
            Arc::new(objects.clone()),
        );
        let ttl_std = Duration::from_secs(15 * 60);
        assert_eq!(claim_validity(ttl_std), Duration::from_secs(12 * 60));
        assert_eq!(
            claim_validity(Duration::from_secs(6)),
            Duration::from_secs(4)
        );
        assert!(matches!(
            a.claim("uid-a", "pod-a", ttl()).await.unwrap(),
            Claimed::Held { .. }
        ));
        objects.set_down(true);
        tokio::time::advance(Duration::from_secs(5 * 60)).await;
        assert_eq!(
            a.claim("uid-a", "pod-a", ttl()).await.unwrap_err().code,
            "ServiceUnavailable"
        );
        objects.set_down(false);
        a.list("ns", "c").await.unwrap();
        tokio::time::advance(Duration::from_secs(7 * 60 - 1)).await;
        a.list("ns", "c").await.unwrap();
        objects.set_down(true);
        let _ = a.claim("uid-a", "pod-a", ttl()).await;
        objects.set_down(false);
        tokio::time::advance(Duration::from_secs(1)).await;
        let err = a.list("ns", "c").await.unwrap_err();
        assert_eq!(err.code, CLAIM_LAPSED);
        assert!(
            err.message.contains("no longer trusted") && err.message.contains("ServiceUnavailable"),
            "{err}"
        );
        assert!(matches!(
            a.claim("uid-a", "pod-a", ttl()).await.unwrap(),
            Claimed::Held { .. }
        ));
        a.list("ns", "c").await.unwrap();
    }

    #[test]
    fn claim_steps() {
        let ttl = ttl();
        let mine = Ok(WriterClaim {
            format: CLAIM_FORMAT.to_owned(),
            cluster_id: "a".to_owned(),
            holder: "p".to_owned(),
            renewed_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        });
        let junk = WriterClaim::parse(b"{}");
        assert!(junk.is_err());
        let young = Some(jiff::SignedDuration::from_mins(14));
        let old = Some(ttl);
        assert_eq!(claim_step(None, None, "a", ttl), ClaimStep::Take);
        assert_eq!(claim_step(Some(&mine), young, "a", ttl), ClaimStep::Renew);
        assert_eq!(claim_step(Some(&mine), old, "a", ttl), ClaimStep::Renew);
        assert_eq!(claim_step(Some(&mine), young, "b", ttl), ClaimStep::Refuse);
        assert_eq!(claim_step(Some(&mine), None, "b", ttl), ClaimStep::Refuse);
        assert_eq!(claim_step(Some(&mine), old, "b", ttl), ClaimStep::TakeOver);
        assert_eq!(claim_step(Some(&junk), young, "a", ttl), ClaimStep::Refuse);
        assert_eq!(claim_step(Some(&junk), old, "a", ttl), ClaimStep::TakeOver);
    }
}
