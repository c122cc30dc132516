//! The off-cluster key store (docs/design.md, "The key store"): every key pair written once to
//! S3 before it becomes active, so a cluster rebuilt from Git gets the same key pairs back.
//!
//! One object per key pair, named from what a manifest alone gives (namespace, config,
//! organisation, sequence), written with `If-None-Match: *` and never overwritten. It holds what
//! the Secret holds — the public key, the KMS ciphertext of the private key and the metadata —
//! and nothing plaintext: without the organisation's KMS key it is useless. Retirement and
//! pruning are recorded as marker objects beside it, also written once.
//!
//! `kekeeper backup` writes the same objects into a file (docs/disaster-recovery.md).

#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::keypair::{self, KeyPairRecord, KeyPairSecret, KeyPairState};
use crate::kms::{EncryptionContext, KeyPairSpec};

/// The `format` of a key pair object.
pub const OBJECT_FORMAT: &str = "kekeeper.io/key-pair/v1";
/// The `format` of a retirement or prune marker.
pub const MARKER_FORMAT: &str = "kekeeper.io/key-pair-marker/v1";
/// The command-line flag, named in every error about its value.
pub const FLAG: &str = "--key-store";

/// How many objects are read at once when a config's pairs are listed.
const READ_CONCURRENCY: usize = 8;

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

/// A store of objects: S3, or memory in tests. Errors carry the operation, the code and the
/// message; [`KeyStore`] adds the URL.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Writes `body` under `key` unless an object of that name exists (`If-None-Match: *`).
    fn put_new<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, ObjectError>>;
    /// Writes `body` under `key`, over any object of that name (only the writer claim).
    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<(), ObjectError>>;
    /// The object, or `None` when there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, ObjectError>>;
    /// Every key under `prefix`.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>>;
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Marker {
    format: String,
    secret_name: String,
    key_pair_id: String,
    at: Timestamp,
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
        let private_key_ciphertext = STANDARD
            .decode(&self.private_key_kms)
            .map_err(|e| format!("privateKeyKms is not base64: {e}"))?;
        if private_key_ciphertext.is_empty() {
            return Err("privateKeyKms is empty".to_owned());
        }
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
        })
    }
}

/// One key pair found in the store, with its markers.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    pub key: String,
    pub organization_id: Option<String>,
    pub sequence: Option<u64>,
    /// The pair as a Secret would hold it (retired if a retirement marker exists), or why the
    /// object was refused.
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
    /// Why the store may not be used now (another live cluster writes under the prefix, or
    /// the claim has not been made yet); every operation fails with it.
    refused: Arc<Mutex<Option<StoreError>>>,
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
    pub renewed_at: Timestamp,
}

/// The `format` of the writer claim.
pub const CLAIM_FORMAT: &str = "kekeeper.io/key-store-writer/v1";
/// The `code` of the error every operation gets while another cluster holds the prefix.
pub const CLAIMED: &str = "KeyStoreClaimed";

impl KeyStore {
    pub fn new(url: KeyStoreUrl, objects: Arc<dyn ObjectStore>) -> Self {
        KeyStore {
            url,
            objects,
            refused: Arc::default(),
        }
    }

    /// A store that refuses every operation until [`Self::claim`] succeeds (the operator's).
    pub fn unclaimed(url: KeyStoreUrl, objects: Arc<dyn ObjectStore>) -> Self {
        let store = KeyStore::new(url, objects);
        store.refuse(Some(store.claim_error(
            "NotClaimed",
            "the operator has not yet claimed the prefix for this cluster (is the store reachable?)",
        )));
        store
    }

    fn refuse(&self, why: Option<StoreError>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn check(&self) -> Result<(), StoreError> {
        match &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn claim_error(&self, code: &str, message: &str) -> StoreError {
        StoreError {
            url: self.url.to_string(),
            operation: "Claim",
            key: format!("{}writer.json", self.url.prefix),
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Claims the prefix for `cluster_id` (docs/disaster-recovery.md, "One prefix per
    /// cluster"): the claim is taken when there is none, renewed when it is this cluster's,
    /// and taken over when another cluster's is older than `ttl` (a rebuilt cluster, its
    /// predecessor gone). Another cluster's fresh claim refuses every operation until it
    /// goes stale: two live clusters never write under one prefix. Returns the other
    /// cluster's claim when refused.
    pub async fn claim(
        &self,
        cluster_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: jiff::SignedDuration,
    ) -> Result<Option<WriterClaim>, StoreError> {
        let key = format!("{}writer.json", self.url.prefix);
        let current = self
            .objects
            .get(&key)
            .await
            .map_err(|err| self.error(&key, err))?
            .and_then(|body| serde_json::from_slice::<WriterClaim>(&body).ok());
        if let Some(other) = current.filter(|c| c.cluster_id != cluster_id) {
            let fresh = other
                .renewed_at
                .checked_add(ttl)
                .is_ok_and(|until| now < until);
            if fresh {
                self.refuse(Some(self.claim_error(
                    CLAIMED,
                    &format!(
                        "another live cluster writes under this prefix (cluster {}, replica {}, renewed {}); two clusters must never share a prefix: give this cluster its own --key-store prefix, or, if that cluster is gone for good, wait until its claim is {} old",
                        other.cluster_id, other.holder, other.renewed_at, ttl
                    ),
                )));
                return Ok(Some(other));
            }
        }
        let claim = WriterClaim {
            format: CLAIM_FORMAT.to_owned(),
            cluster_id: cluster_id.to_owned(),
            holder: holder.to_owned(),
            renewed_at: now,
        };
        let body = self.body(&key, &claim)?;
        self.objects
            .put(&key, body)
            .await
            .map_err(|err| self.error(&key, err))?;
        self.refuse(None);
        Ok(None)
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

    /// Records that `record` was retired or pruned at `at` (once: a marker that exists stays).
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
        };
        let body = self.body(&key, &marker)?;
        self.objects
            .put_new(&key, body)
            .await
            .map(|_| ())
            .map_err(|err| self.error(&key, err))
    }

    async fn read_pair(
        &self,
        key: &str,
        namespace: &str,
        config: &str,
    ) -> Result<Option<Result<(KeyPairSecret, Option<String>), String>>, StoreError> {
        let Some(body) = self
            .objects
            .get(key)
            .await
            .map_err(|err| self.error(key, err))?
        else {
            return Ok(None);
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

    async fn read_marker(&self, key: &str) -> Result<Option<Timestamp>, StoreError> {
        let body = self
            .objects
            .get(key)
            .await
            .map_err(|err| self.error(key, err))?;
        Ok(body
            .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
            .map(|m| m.at))
    }

    /// Every pair of `namespace/config` in the store, each checked, with its markers applied.
    pub async fn list(&self, namespace: &str, config: &str) -> Result<Listing, StoreError> {
        self.check()?;
        let prefix = self.url.config_prefix(namespace, config);
        let keys = self
            .objects
            .list(&prefix)
            .await
            .map_err(|err| self.error(&prefix, err))?;
        let reads: Vec<_> = keys
            .iter()
            .filter(|k| k.ends_with(".json") && !is_marker(k))
            .map(|key| self.read_entry(key, &keys, &prefix, namespace, config))
            .collect();
        let entries: Vec<StoredEntry> = futures::stream::iter(reads)
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(Listing { entries })
    }

    async fn read_entry(
        &self,
        key: &str,
        keys: &[String],
        prefix: &str,
        namespace: &str,
        config: &str,
    ) -> Result<StoredEntry, StoreError> {
        let (organization_id, sequence) = location(key, prefix);
        let read = self
            .read_pair(key, namespace, config)
            .await?
            .unwrap_or_else(|| Err("the object disappeared while it was listed".to_owned()));
        let (mut pair, rotate_now_token) = match read {
            Ok((pair, token)) => (Ok(pair), token),
            Err(why) => (Err(why), None),
        };
        if let Ok(found) = &pair {
            if organization_id.as_deref() != Some(found.organization_id.as_str())
                || sequence != Some(found.sequence)
            {
                pair = Err(format!(
                    "it is stored under the name of another key pair (organisation {:?}, sequence {:?})",
                    organization_id, sequence
                ));
            }
        }
        let retired_key = KeyStoreUrl::marker_key(key, MarkKind::Retired);
        if let Ok(found) = &mut pair {
            if keys.contains(&retired_key) {
                let at = self.read_marker(&retired_key).await?;
                found.state = KeyPairState::Retired;
                found.retired_at = at.or(Some(found.created_at));
            }
        }
        Ok(StoredEntry {
            key: key.to_owned(),
            organization_id,
            sequence,
            pair,
            pruned: keys.contains(&KeyStoreUrl::marker_key(key, MarkKind::Pruned)),
            rotate_now_token,
        })
    }
}

fn is_marker(key: &str) -> bool {
    [MarkKind::Retired, MarkKind::Pruned]
        .iter()
        .any(|m| key.ends_with(&format!(".{}.json", m.as_str())))
}

/// The organisation and sequence an object's name gives.
fn location(key: &str, prefix: &str) -> (Option<String>, Option<u64>) {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    let Some((org, file)) = rest.split_once('/') else {
        return (None, None);
    };
    let sequence = file.strip_suffix(".json").and_then(|s| s.parse().ok());
    (unescape(org), sequence)
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
            location(&key, &prefix),
            (Some("org/1 ä".to_owned()), Some(7))
        );
        let marker = KeyStoreUrl::marker_key(&key, MarkKind::Retired);
        assert!(is_marker(&marker) && !is_marker(&key), "{marker}");
        assert_eq!(escape(".."), "%2E%2E");
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

    /// One cluster holds a prefix: another's fresh claim refuses every operation, a stale one
    /// is taken over, and the holder's renewal keeps it.
    #[tokio::test]
    async fn one_live_cluster_holds_a_prefix() {
        let objects = Arc::new(memory::MemoryObjects::new());
        let url = url("s3://acme-keys/prod").unwrap();
        let a = KeyStore::unclaimed(url.clone(), objects.clone());
        let b = KeyStore::unclaimed(url, objects.clone());
        let ttl = jiff::SignedDuration::from_mins(15);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let err = a.list("ns", "c").await.unwrap_err();
        assert_eq!(err.code, "NotClaimed");
        assert_eq!(a.claim("uid-a", "pod-a", t0, ttl).await.unwrap(), None);
        a.list("ns", "c").await.unwrap();

        let later = t0.checked_add(jiff::SignedDuration::from_mins(5)).unwrap();
        let other = b
            .claim("uid-b", "pod-b", later, ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other.cluster_id, "uid-a");
        let err = b.put(&pair("org-1", 1), None).await.unwrap_err();
        assert_eq!(err.code, CLAIMED);
        assert!(err.message.contains("another live cluster") && err.message.contains("uid-a"));
        assert_eq!(
            a.claim("uid-a", "pod-a2", later, ttl).await.unwrap(),
            None,
            "renewed"
        );

        let stale = later
            .checked_add(jiff::SignedDuration::from_mins(16))
            .unwrap();
        assert_eq!(
            b.claim("uid-b", "pod-b", stale, ttl).await.unwrap(),
            None,
            "taken over"
        );
        b.put(&pair("org-1", 1), None).await.unwrap();
        assert!(
            a.claim("uid-a", "pod-a", stale, ttl)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(a.list("ns", "c").await.unwrap_err().code, CLAIMED);
    }
}
