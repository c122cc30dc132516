//! The key pair backup file of `kekeeper backup` and `kekeeper restore`
//! (docs/disaster-recovery.md): the key store's object format ([`StoredKeyPair`]), one entry
//! per key pair, with the retirement time a retirement marker would record and the pair's
//! wraps as wrap objects ([`StoredWrap`]). Like the store it
//! holds nothing plaintext: the private key is the KMS ciphertext blob.
//!
//! Restoring is planned here, without I/O: which Secrets are created, active or retired, and
//! which are left alone because they exist.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::keypair::{ANNOTATION_ROTATE_NOW_TOKEN, KeyPairRecord, KeyPairSecret, KeyPairState};
use crate::keystore::{StoredKeyPair, StoredWrap, kms_key_id};

/// The `format` of a backup file.
pub const BACKUP_FORMAT: &str = "kekeeper.io/key-pair-backup/v1";

/// A backup file: `{"format", "createdAt", "keyPairs": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupFile {
    pub format: String,
    pub created_at: Timestamp,
    pub key_pairs: Vec<BackupEntry>,
}

/// One key pair: the key store's object, flattened, when it was retired (absent while
/// active), and its wraps as the key store's wrap objects (absent when it has none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupEntry {
    #[serde(flatten)]
    pub pair: StoredKeyPair,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wraps: Vec<StoredWrap>,
}

impl BackupEntry {
    /// The entry of `pair`, made for `rotate_now_token` (its Secret's annotation). A retired
    /// pair without a recorded retirement time is given its creation time, as the key store
    /// reads a marker without one.
    pub fn of(pair: &KeyPairSecret, rotate_now_token: Option<&str>) -> Self {
        BackupEntry {
            pair: StoredKeyPair::of(pair, rotate_now_token),
            retired_at: match pair.state {
                KeyPairState::Active => None,
                KeyPairState::Retired => Some(pair.retired_at.unwrap_or(pair.created_at)),
            },
            wraps: pair
                .wraps
                .iter()
                .map(|wrap| StoredWrap::of(pair, wrap))
                .collect(),
        }
    }

    /// The key pair after the key store's checks ([`StoredKeyPair::verify`]), retired when the
    /// entry says so, with its wraps after theirs ([`StoredWrap::verify`]: each names this
    /// pair and its fingerprint; at most one per KMS key), oldest first. Like the store's, the
    /// wraps are proven by the operator before anything relies on them.
    pub fn verify(&self) -> Result<KeyPairSecret, String> {
        let mut pair = self.pair.verify(&self.pair.namespace, &self.pair.config)?;
        if let Some(at) = self.retired_at {
            pair.state = KeyPairState::Retired;
            pair.retired_at = Some(at);
        }
        for (index, object) in self.wraps.iter().enumerate() {
            let wrap = object
                .verify(&pair, None)
                .map_err(|why| format!("wraps[{index}]: {why}"))?;
            // One per KMS key id, as the store names them and the Secret keys them.
            let key_id = kms_key_id(&wrap.kms_key_arn);
            if pair
                .wraps
                .iter()
                .any(|w| kms_key_id(&w.kms_key_arn) == key_id)
            {
                return Err(format!(
                    "wraps[{index}]: a second wrap under KMS key {} (one per KMS key)",
                    key_id.unwrap_or_default()
                ));
            }
            pair.wraps.push(wrap);
        }
        pair.wraps
            .sort_by(|a, b| (a.created_at, &a.kms_key_arn).cmp(&(b.created_at, &b.kms_key_arn)));
        Ok(pair)
    }

    /// `keyPairs[3] (telephony/recordings-1a2b3c4d5e-0002)`: how messages name an entry.
    fn describe(&self, index: usize) -> String {
        format!(
            "keyPairs[{index}] ({}/{}, organisation {:?}, sequence {})",
            self.pair.namespace,
            self.pair.secret_name,
            self.pair.organization_id,
            self.pair.sequence
        )
    }
}

/// The Secret of a restored `pair`, as the controller makes it: [`KeyPairSecret::to_secret`],
/// and the rotate-now token the pair was made for, if any.
pub fn secret_of(
    pair: &KeyPairSecret,
    rotate_now_token: Option<&str>,
) -> Result<Secret, serde_json::Error> {
    let mut secret = pair.to_secret()?;
    if let Some(token) = rotate_now_token {
        secret
            .annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW_TOKEN.to_owned(), token.to_owned());
    }
    Ok(secret)
}

impl BackupFile {
    /// A backup of `pairs` (each with the rotate-now token it was made for), in a stable order
    /// (namespace, config, organisation, sequence).
    pub fn of(pairs: &[(KeyPairSecret, Option<String>)], created_at: Timestamp) -> Self {
        let mut key_pairs: Vec<BackupEntry> = pairs
            .iter()
            .map(|(pair, token)| BackupEntry::of(pair, token.as_deref()))
            .collect();
        key_pairs.sort_by(|a, b| {
            let key = |e: &BackupEntry| {
                (
                    e.pair.namespace.clone(),
                    e.pair.config.clone(),
                    e.pair.organization_id.clone(),
                    e.pair.sequence,
                )
            };
            key(a).cmp(&key(b))
        });
        BackupFile {
            format: BACKUP_FORMAT.to_owned(),
            created_at,
            key_pairs,
        }
    }

    /// Reads a backup file and checks every entry; one entry that fails its checks refuses the
    /// whole file, with every problem named (entry, Secret, what is wrong).
    pub fn parse(bytes: &[u8], source: &str) -> Result<(BackupFile, Vec<KeyPairSecret>), String> {
        let file: BackupFile = serde_json::from_slice(bytes).map_err(|e| {
            format!("{source} is not a kekeeper backup file ({BACKUP_FORMAT}): {e}")
        })?;
        if file.format != BACKUP_FORMAT {
            return Err(format!(
                "{source}: format is {:?}, expected {BACKUP_FORMAT:?} (a file written by kekeeper backup)",
                file.format
            ));
        }
        let mut problems = Vec::new();
        let mut pairs = Vec::with_capacity(file.key_pairs.len());
        let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (index, entry) in file.key_pairs.iter().enumerate() {
            let name = (
                entry.pair.namespace.as_str(),
                entry.pair.secret_name.as_str(),
            );
            if let Some(first) = seen.insert(name, index) {
                problems.push(format!(
                    "{}: the file holds this key pair's Secret name twice (also keyPairs[{first}])",
                    entry.describe(index)
                ));
                continue;
            }
            match entry.verify() {
                Ok(pair) => pairs.push(pair),
                Err(problem) => problems.push(format!("{}: {problem}", entry.describe(index))),
            }
        }
        if !problems.is_empty() {
            return Err(format!(
                "{source} is refused, nothing was restored: {} of its {} key pairs fail their checks \
                 (was the file edited?):\n  {}",
                problems.len(),
                file.key_pairs.len(),
                problems.join("\n  ")
            ));
        }
        Ok((file, pairs))
    }
}

/// What the cluster holds that a restore must respect.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// Existing Secrets by (namespace, name): the key pair each holds (its `config_name` the
    /// RecordingKeyConfig's name), or why it does not read as one.
    pub secrets: BTreeMap<(String, String), Result<KeyPairRecord, String>>,
    /// `status.highestSequences` (organisation → sequence) of each existing RecordingKeyConfig
    /// by (namespace, name).
    pub highest_sequences: BTreeMap<(String, String), BTreeMap<String, u64>>,
}

/// What restoring one key pair of the file does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreAction {
    /// Create the Secret of `pair`, in the state it has here. `newer` is the sequence that
    /// kept a pair the file says is active from becoming active again.
    Create {
        pair: Box<KeyPairSecret>,
        newer: Option<u64>,
    },
    /// A Secret of that name holds this very key pair: left alone.
    Kept { namespace: String, name: String },
    /// A Secret of that name holds something else: left alone, and reported.
    Differs {
        namespace: String,
        name: String,
        /// The existing Secret's fingerprint, or why it does not read as a key pair.
        found: String,
        expected: String,
    },
}

/// The restore of `pairs` (checked, as [`BackupFile::parse`] returns them) into a cluster that
/// holds `view`. Only missing Secrets are created. Per (namespace, config, organisation) only
/// the highest sequence among the file's active pairs, the existing Secrets and the config's
/// `status.highestSequences` may be active; every other pair is created retired (at its
/// recorded time, else `now`), so an older pair never becomes active over a newer one.
pub fn plan_restore(
    pairs: &[KeyPairSecret],
    view: &ClusterView,
    now: Timestamp,
) -> Vec<RestoreAction> {
    type Org = (String, String, String);
    let mut highest: BTreeMap<Org, u64> = BTreeMap::new();
    let mut raise = |org: Org, sequence: u64| {
        let entry = highest.entry(org).or_insert(sequence);
        *entry = (*entry).max(sequence);
    };
    for pair in pairs.iter().filter(|p| p.state == KeyPairState::Active) {
        raise(org_of(pair), pair.sequence);
    }
    let configs: BTreeSet<(String, String)> = pairs
        .iter()
        .map(|p| (p.namespace.clone(), p.config_name.clone()))
        .collect();
    for record in view.secrets.values().flatten() {
        if configs.contains(&(record.namespace.clone(), record.config_name.clone())) {
            raise(org_of(record), record.sequence);
        }
    }
    for ((namespace, config), sequences) in &view.highest_sequences {
        for (organization_id, sequence) in sequences {
            raise(
                (namespace.clone(), config.clone(), organization_id.clone()),
                *sequence,
            );
        }
    }

    pairs
        .iter()
        .map(|pair| {
            let key = (pair.namespace.clone(), pair.secret_name.clone());
            match view.secrets.get(&key) {
                Some(Ok(found)) if found.fingerprint() == pair.fingerprint() => {
                    RestoreAction::Kept {
                        namespace: key.0,
                        name: key.1,
                    }
                }
                Some(found) => RestoreAction::Differs {
                    namespace: key.0,
                    name: key.1,
                    found: match found {
                        Ok(record) => record.fingerprint(),
                        Err(problem) => format!("not a readable key pair ({problem})"),
                    },
                    expected: pair.fingerprint(),
                },
                None => {
                    let top = highest.get(&org_of(pair)).copied().unwrap_or(pair.sequence);
                    let mut pair = Box::new(pair.clone());
                    let mut newer = None;
                    if pair.state == KeyPairState::Active && pair.sequence < top {
                        pair.state = KeyPairState::Retired;
                        pair.retired_at = Some(now);
                        newer = Some(top);
                    }
                    RestoreAction::Create { pair, newer }
                }
            }
        })
        .collect()
}

fn org_of(record: &KeyPairRecord) -> (String, String, String) {
    (
        record.namespace.clone(),
        record.config_name.clone(),
        record.organization_id.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::test_pair;
    use crate::kms::KeyPairSpec;

    fn public_key_der() -> Vec<u8> {
        crate::kms::fake::generate_rsa(KeyPairSpec::Rsa2048).0
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pair(org: &str, sequence: u64, retired_at: Option<&str>) -> KeyPairSecret {
        let mut pair = KeyPairSecret {
            record: test_pair(
                org,
                sequence,
                KeyPairSpec::Rsa2048,
                public_key_der(),
                ts("2026-01-01T00:00:00Z"),
            ),
            private_key_ciphertext: vec![7; 16],
            wraps: Vec::new(),
        };
        if let Some(at) = retired_at {
            pair.retire(ts(at));
        }
        pair
    }

    #[test]
    fn a_file_round_trips_flat_and_holds_nothing_plaintext() {
        let pairs = [
            pair("org-2", 1, None),
            pair("org-1", 2, None),
            pair("org-1", 1, Some("2026-02-01T00:00:00Z")),
        ];
        let tokens = [None, Some("t1".to_owned()), None];
        let with_tokens: Vec<_> = pairs.iter().cloned().zip(tokens).collect();
        let file = BackupFile::of(&with_tokens, ts("2026-03-01T00:00:00Z"));
        let json = serde_json::to_string_pretty(&file).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["format"], BACKUP_FORMAT);
        let first = &value["keyPairs"][0];
        // Flattened: the store's fields at the top of each entry, retiredAt beside them.
        assert_eq!(first["format"], crate::keystore::OBJECT_FORMAT);
        assert_eq!(
            (&first["organizationId"], &first["sequence"]),
            (&serde_json::json!("org-1"), &serde_json::json!(1))
        );
        assert_eq!(first["retiredAt"], "2026-02-01T00:00:00Z");
        assert!(value["keyPairs"][1].get("retiredAt").is_none());
        assert_eq!(value["keyPairs"][1]["rotateNowToken"], "t1");
        let secret = secret_of(&pairs[1], Some("t1")).unwrap();
        assert_eq!(
            secret.annotations().get(ANNOTATION_ROTATE_NOW_TOKEN),
            Some(&"t1".to_owned())
        );
        assert_eq!(
            secret_of(&pairs[1], None).unwrap(),
            pairs[1].to_secret().unwrap()
        );

        let (back, checked) = BackupFile::parse(json.as_bytes(), "backup.json").unwrap();
        assert_eq!(back, file);
        assert_eq!(checked.len(), 3);
        assert_eq!(checked[0], pairs[2]);
        assert_eq!(checked[1], pairs[1]);
    }

    #[test]
    fn one_tampered_or_repeated_entry_refuses_the_whole_file_naming_it() {
        let file = BackupFile::of(
            &[
                (pair("org-1", 1, None), None),
                (pair("org-1", 2, None), None),
            ],
            Timestamp::UNIX_EPOCH,
        );
        let mut tampered = file.clone();
        tampered.key_pairs[1].pair.public_key_fingerprint = "SHA256:AAAA".into();
        let err = BackupFile::parse(&serde_json::to_vec(&tampered).unwrap(), "b.json").unwrap_err();
        assert!(
            err.contains("b.json is refused, nothing was restored: 1 of its 2")
                && err.contains("keyPairs[1] (telephony/")
                && err.contains("fingerprint"),
            "{err}"
        );
        let mut repeated = file.clone();
        repeated.key_pairs.push(file.key_pairs[0].clone());
        let err = BackupFile::parse(&serde_json::to_vec(&repeated).unwrap(), "b.json").unwrap_err();
        assert!(
            err.contains("keyPairs[2]") && err.contains("twice"),
            "{err}"
        );
        let mut other = file;
        other.format = "kekeeper.io/key-pair-backup/v9".into();
        let err = BackupFile::parse(&serde_json::to_vec(&other).unwrap(), "b.json").unwrap_err();
        assert!(err.contains("format is"), "{err}");
        assert!(BackupFile::parse(b"{}", "b.json").is_err());
    }

    /// A pair's wraps travel as wrap objects in its entry and come back oldest first in the
    /// pair and its Secret; a wrap that names another pair, or a second one under the same
    /// key, refuses the file.
    #[test]
    fn wraps_round_trip_and_a_planted_one_refuses_the_file() {
        let key_b = "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";
        let key_c = "arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef";
        let wrap = |key: &str, at: &str| crate::keypair::Wrap {
            kms_key_arn: key.to_owned(),
            ciphertext: vec![3; 40],
            created_at: ts(at),
        };
        let mut wrapped = pair("org-1", 1, Some("2026-02-01T00:00:00Z"));
        wrapped.wraps = vec![
            wrap(key_c, "2026-05-01T00:00:00Z"),
            wrap(key_b, "2026-06-01T00:00:00Z"),
        ];
        let other = pair("org-1", 2, None);
        let file = BackupFile::of(
            &[(wrapped.clone(), None), (other.clone(), None)],
            ts("2026-07-01T00:00:00Z"),
        );
        let json = serde_json::to_string_pretty(&file).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let wraps = &value["keyPairs"][0]["wraps"];
        assert_eq!(wraps[1]["format"], crate::keystore::WRAP_FORMAT);
        assert_eq!(wraps[1]["kmsKeyArn"], key_b);
        assert_eq!(wraps[1]["publicKeyFingerprint"], wrapped.fingerprint());
        assert!(value["keyPairs"][1].get("wraps").is_none(), "none: absent");
        let (_, checked) = BackupFile::parse(json.as_bytes(), "backup.json").unwrap();
        assert_eq!(checked[0], wrapped);
        let secret = secret_of(&checked[0], None).unwrap();
        assert_eq!(
            KeyPairSecret::from_secret(&secret).unwrap().wraps,
            wrapped.wraps
        );

        let mut planted = file.clone();
        planted.key_pairs[1].wraps = vec![StoredWrap::of(&wrapped, &wrapped.wraps[1])];
        let err = BackupFile::parse(&serde_json::to_vec(&planted).unwrap(), "b.json").unwrap_err();
        assert!(
            err.contains("keyPairs[1]") && err.contains("wraps[0]"),
            "{err}"
        );
        let mut twice = file;
        let again = twice.key_pairs[0].wraps[1].clone();
        twice.key_pairs[0].wraps.push(again);
        let err = BackupFile::parse(&serde_json::to_vec(&twice).unwrap(), "b.json").unwrap_err();
        assert!(err.contains("one per KMS key"), "{err}");
    }

    fn created(actions: &[RestoreAction]) -> Vec<(u64, KeyPairState, Option<u64>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                RestoreAction::Create { pair, newer } => Some((pair.sequence, pair.state, *newer)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_highest_sequence_becomes_active_and_existing_secrets_are_kept() {
        let now = ts("2026-05-01T00:00:00Z");
        let old = pair("org-1", 1, Some("2026-02-01T00:00:00Z"));
        let current = pair("org-1", 2, None);
        let pairs = [old.clone(), current.clone()];

        // An empty cluster: as in the file.
        let actions = plan_restore(&pairs, &ClusterView::default(), now);
        assert_eq!(
            created(&actions),
            [
                (1, KeyPairState::Retired, None),
                (2, KeyPairState::Active, None)
            ]
        );
        let RestoreAction::Create { pair: first, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(first.retired_at, Some(ts("2026-02-01T00:00:00Z")));

        // Sequence 3 exists: 2 is restored retired, now.
        let mut view = ClusterView::default();
        let newer = pair("org-1", 3, None).into_record();
        view.secrets
            .insert(("telephony".into(), newer.secret_name.clone()), Ok(newer));
        let actions = plan_restore(&pairs, &view, now);
        assert_eq!(
            created(&actions),
            [
                (1, KeyPairState::Retired, None),
                (2, KeyPairState::Retired, Some(3))
            ]
        );
        let RestoreAction::Create { pair: second, .. } = &actions[1] else {
            panic!("{actions:?}")
        };
        assert_eq!(second.retired_at, Some(now));

        // status.highestSequences says 4 was made (its Secret is gone): the same.
        let mut view = ClusterView::default();
        view.highest_sequences.insert(
            ("telephony".into(), "recordings".into()),
            BTreeMap::from([("org-1".into(), 4), ("org-2".into(), 9)]),
        );
        assert_eq!(
            created(&plan_restore(&pairs, &view, now))[1],
            (2, KeyPairState::Retired, Some(4))
        );

        // Restored before: both kept; a different pair under a name is reported.
        let mut view = ClusterView::default();
        view.secrets.insert(
            ("telephony".into(), old.secret_name.clone()),
            Ok(old.record.clone()),
        );
        view.secrets.insert(
            ("telephony".into(), current.secret_name.clone()),
            Ok(pair("org-1", 2, None).into_record()),
        );
        let actions = plan_restore(&pairs, &view, now);
        assert!(
            matches!(&actions[0], RestoreAction::Kept { .. }),
            "{actions:?}"
        );
        match &actions[1] {
            RestoreAction::Differs {
                found, expected, ..
            } => assert!(found != expected && *expected == current.fingerprint()),
            other => panic!("{other:?}"),
        }
    }
}
