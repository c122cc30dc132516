//! The key ring of one RecordingKeyConfig: its key pairs (from their Secrets) read against what
//! status recorded about them. It is the one place that decides which pair is active for an
//! organisation, which sequence number comes next, which retired pairs may be pruned, and which
//! pairs are missing or disagree with the fingerprint recorded in status.
//!
//! Status is written only through the status subresource, so people who may edit Secrets cannot
//! change what it recorded: its fingerprints and highest sequence numbers are the trust anchor.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};

use crate::crd::{KeyPairHistoryEntry, RecordingKeyConfigStatus, RotationPeriod};
use crate::keypair::{KeyPairRecord, KeyPairSecret, KeyPairState};
use crate::policy;

/// The reasons of `status.keyPairProblems`.
pub const KEY_PAIR_MISSING: &str = "KeyPairMissing";
pub const PUBLIC_KEY_MISMATCH: &str = "PublicKeyMismatch";
pub const CUSTODY_CHECK_FAILED: &str = "CustodyCheckFailed";
/// A key pair that failed its proof through KMS: never active, published or stored
/// (docs/design.md, "Proof before publication").
pub const KEY_PAIR_QUARANTINED: &str = "KeyPairQuarantined";

/// Key pair Secret name -> the rotate-now token it was generated under.
pub type Tokens = BTreeMap<String, String>;

/// When retired pairs may be deleted: never, unless `recordingRetention` is set; then not before
/// the retention and one full rotation period after retirement have both passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pruning {
    pub retention: Option<SignedDuration>,
    pub period: RotationPeriod,
}

impl Pruning {
    /// When a pair retired at `retired_at` may be pruned; `None`: never.
    pub fn due(&self, retired_at: Timestamp) -> Option<Timestamp> {
        policy::prune_due(retired_at, self.retention?, self.period)
    }
}

/// A pair recorded in status whose Secret is gone.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingPair {
    pub organization_id: String,
    pub key_pair_id: String,
    pub secret_name: String,
    /// Its history entry, when status still had one.
    pub entry: Option<KeyPairHistoryEntry>,
}

/// A Secret whose public key is not the one status recorded for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub secret_name: String,
    pub organization_id: String,
    pub key_pair_id: String,
    /// What status recorded (the trusted fingerprint).
    pub recorded: String,
    /// What the Secret holds now.
    pub found: String,
}

/// A key pair that failed its proof through KMS (docs/design.md, "Proof before publication").
/// It stays quarantined while its Secret or object holds the same public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub secret_name: String,
    pub organization_id: String,
    pub key_pair_id: String,
    /// The fingerprint of the public key that failed.
    pub fingerprint: String,
    /// Why, naming the Secret or store object.
    pub message: String,
}

/// What the ring reads status with.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Key pair ids whose problems a person acknowledged
    /// ([`crate::crd::ANNOTATION_ACKNOWLEDGE`]).
    pub acknowledged: BTreeSet<String>,
    pub pruning: Option<Pruning>,
    pub now: Timestamp,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyRing {
    records: Vec<KeyPairRecord>,
    tokens: Tokens,
    /// Secret name -> the fingerprint status recorded.
    anchors: BTreeMap<String, String>,
    /// Secret name -> the alias ARN status recorded the pair was made under.
    aliases: BTreeMap<String, String>,
    /// `status.kmsKeyAliasArn`: taken as the alias of pairs that record none (made before
    /// kekeeper recorded it on each pair).
    legacy_alias: Option<String>,
    /// Organisation -> the highest sequence ever used (status ∪ Secrets).
    highest: BTreeMap<String, u64>,
    missing: Vec<MissingPair>,
    /// Secret names whose pair failed the custody check (status, or this reconcile).
    custody_failed: BTreeSet<String>,
    pruning: Option<Pruning>,
    /// Secret name -> the KMS key ARN status recorded for the pair.
    anchored_keys: BTreeMap<String, String>,
    /// Secret names of pairs proven through KMS in this reconcile (a proof or the self-test of
    /// a pair made here).
    proven: BTreeSet<String>,
    /// Secret names of retired pairs restored from the key store: never published, so trusted
    /// as history without a proof (docs/design.md, "Proof before publication").
    restored_retired: BTreeSet<String>,
    /// Pairs that failed their proof (status, or this reconcile), by Secret name.
    quarantined: BTreeMap<String, Quarantined>,
    /// Secret name -> the newest proven wrap of the pair: status recorded it, or it was
    /// proven in this reconcile (docs/design.md, "Rewrap").
    wraps: BTreeMap<String, ProvenWrap>,
}

/// The KMS key of a pair's newest proven wrap, and when the wrap was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenWrap {
    pub kms_key_arn: String,
    pub created_at: Timestamp,
}

impl KeyRing {
    /// The ring of `records` (the Secrets that exist) read against `status`.
    pub fn new(
        records: Vec<KeyPairRecord>,
        tokens: Tokens,
        status: Option<&RecordingKeyConfigStatus>,
        reading: &Reading,
    ) -> Self {
        let mut ring = KeyRing {
            records,
            tokens,
            pruning: reading.pruning,
            ..KeyRing::default()
        };
        if let Some(status) = status {
            ring.read_status(status, reading);
        }
        // A Secret's name takes its sequence as much as its metadata does (a Secret someone
        // wrote may say another sequence than its name): no new pair ever gets either name.
        let sequences: Vec<(String, u64)> = ring
            .records
            .iter()
            .map(|r| {
                (
                    r.organization_id.clone(),
                    r.sequence.max(sequence_of(&r.secret_name).unwrap_or(0)),
                )
            })
            .collect();
        for (org, sequence) in sequences {
            ring.note_sequence(&org, sequence);
        }
        ring
    }

    fn read_status(&mut self, status: &RecordingKeyConfigStatus, reading: &Reading) {
        let present: BTreeSet<String> = self.records.iter().map(|r| r.name()).collect();
        let mut missing: BTreeMap<String, MissingPair> = BTreeMap::new();
        self.legacy_alias = status.kms_key_alias_arn.clone();
        for entry in recorded_pairs(status) {
            self.anchors
                .entry(entry.secret_name.clone())
                .or_insert(entry.public_key_fingerprint.clone());
            self.anchored_keys
                .entry(entry.secret_name.clone())
                .or_insert(entry.kms_key_arn.clone());
            self.note_recorded_wrap(&entry);
            if let Some(alias) = &entry.kms_key_alias_arn {
                self.aliases
                    .entry(entry.secret_name.clone())
                    .or_insert(alias.clone());
            }
            // Entries written before `sequence` existed: the name ends in it.
            if let Some(sequence) = entry.sequence.or_else(|| sequence_of(&entry.secret_name)) {
                self.note_sequence(&entry.organization_id, sequence);
            }
            // Gone after its prune time: deleted on purpose, by kekeeper or as it would have.
            let pruned = entry
                .retired_at
                .and_then(|at| self.pruning.and_then(|p| p.due(at)))
                .is_some_and(|due| reading.now >= due);
            if present.contains(&entry.secret_name)
                || reading.acknowledged.contains(&entry.key_pair_id)
                || pruned
            {
                continue;
            }
            let slot = missing
                .entry(entry.secret_name.clone())
                .or_insert_with(|| MissingPair {
                    organization_id: entry.organization_id.clone(),
                    key_pair_id: entry.key_pair_id.clone(),
                    secret_name: entry.secret_name.clone(),
                    entry: None,
                });
            // Only a history entry stays in the history (an active pair's has no reason).
            if !entry.reason.is_empty() {
                slot.entry = Some(KeyPairHistoryEntry {
                    missing: true,
                    ..entry
                });
            }
        }
        self.read_problems(status, &present, &reading.acknowledged, &mut missing);
        for (org, sequence) in &status.highest_sequences {
            self.note_sequence(org, *sequence);
        }
        self.missing = missing.into_values().collect();
    }

    /// Problems status reported: missing pairs stay missing past `historyLimit`; failed custody
    /// checks stay until acknowledged.
    fn read_problems(
        &mut self,
        status: &RecordingKeyConfigStatus,
        present: &BTreeSet<String>,
        acknowledged: &BTreeSet<String>,
        missing: &mut BTreeMap<String, MissingPair>,
    ) {
        for problem in &status.key_pair_problems {
            // A quarantine is remembered even when acknowledged (only its report stops): the
            // pair is never trusted, and not proven again while it holds the same key.
            if problem.reason == KEY_PAIR_QUARANTINED {
                self.quarantine(Quarantined {
                    secret_name: problem.secret_name.clone(),
                    organization_id: problem.organization_id.clone(),
                    key_pair_id: problem.key_pair_id.clone(),
                    fingerprint: problem.public_key_fingerprint.clone().unwrap_or_default(),
                    message: problem.message.clone(),
                });
                continue;
            }
            if acknowledged.contains(&problem.key_pair_id) {
                continue;
            }
            match problem.reason.as_str() {
                KEY_PAIR_MISSING if !present.contains(&problem.secret_name) => {
                    missing
                        .entry(problem.secret_name.clone())
                        .or_insert_with(|| MissingPair {
                            organization_id: problem.organization_id.clone(),
                            key_pair_id: problem.key_pair_id.clone(),
                            secret_name: problem.secret_name.clone(),
                            entry: None,
                        });
                }
                CUSTODY_CHECK_FAILED => {
                    self.custody_failed.insert(problem.secret_name.clone());
                }

                _ => {}
            }
        }
    }

    /// Notes that `sequence` is taken for the organisation (a pair seen elsewhere, such as in the
    /// key store): no new pair gets its name.
    pub fn note_sequence(&mut self, organization_id: &str, sequence: u64) {
        let highest = self.highest.entry(organization_id.to_owned()).or_default();
        *highest = (*highest).max(sequence);
    }

    pub fn records(&self) -> &[KeyPairRecord] {
        &self.records
    }

    /// The rotate-now token `record`'s Secret was generated under, if any.
    pub fn token_of(&self, record: &KeyPairRecord) -> Option<&str> {
        self.tokens.get(&record.name()).map(String::as_str)
    }

    /// The active pair per organisation: the newest trusted sequence labelled active (two
    /// active pairs of one organisation, left by an interrupted rotation, resolve to the newer).
    /// A pair that is not trusted (a candidate not yet proven through KMS, or quarantined) is
    /// never active (docs/design.md, "Proof before publication").
    pub fn active_by_org(&self) -> BTreeMap<&str, &KeyPairRecord> {
        let mut active: BTreeMap<&str, &KeyPairRecord> = BTreeMap::new();
        for record in self.trusted_active() {
            let slot = active
                .entry(record.organization_id.as_str())
                .or_insert(record);
            if record.sequence > slot.sequence {
                *slot = record;
            }
        }
        active
    }

    pub fn active(&self, organization_id: &str) -> Option<&KeyPairRecord> {
        self.active_by_org().get(organization_id).copied()
    }

    /// Active pairs shadowed by a newer active pair of the same organisation.
    pub fn shadowed(&self) -> Vec<String> {
        let newest = self.active_by_org();
        self.trusted_active()
            .filter(|r| {
                newest
                    .get(r.organization_id.as_str())
                    .is_some_and(|n| n.secret_name != r.secret_name)
            })
            .map(KeyPairRecord::name)
            .collect()
    }

    /// Active pairs to retire: those of organisations no longer in the spec, and shadowed ones.
    pub fn to_retire(&self, organizations: &[String]) -> Vec<String> {
        let wanted: BTreeSet<&str> = organizations.iter().map(String::as_str).collect();
        let mut retire: Vec<String> = self
            .trusted_active()
            .filter(|r| !wanted.contains(r.organization_id.as_str()))
            .map(KeyPairRecord::name)
            .collect();
        for name in self.shadowed() {
            if !retire.contains(&name) {
                retire.push(name);
            }
        }
        retire
    }

    /// One past the highest sequence the organisation ever used, by status or by a Secret: a
    /// Secret name is never given to a second key pair, even after its Secret was deleted.
    pub fn next_sequence(&self, organization_id: &str) -> u64 {
        self.highest.get(organization_id).map_or(1, |s| s + 1)
    }

    /// The highest sequence per organisation, for status.
    pub fn highest_sequences(&self) -> &BTreeMap<String, u64> {
        &self.highest
    }

    /// Retired pairs that may be deleted at `now`.
    pub fn prunable(&self, now: Timestamp) -> Vec<String> {
        self.prune_times()
            .filter(|(_, due)| now >= *due)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// When each retired pair becomes prunable (only those that ever do).
    pub fn prune_times(&self) -> impl Iterator<Item = (&str, Timestamp)> + '_ {
        self.records
            .iter()
            .filter(|r| r.state == KeyPairState::Retired)
            .filter_map(|r| {
                let due = self.pruning?.due(r.retired_at?)?;
                Some((r.secret_name.as_str(), due))
            })
    }

    /// The fingerprint status recorded for a Secret, if any.
    pub fn recorded_fingerprint(&self, secret_name: &str) -> Option<&str> {
        self.anchors.get(secret_name).map(String::as_str)
    }

    /// The fingerprint to trust for `record`: the recorded one, or (a pair status has not seen
    /// yet, e.g. created just before a crash) its own.
    pub fn trusted_fingerprint(&self, record: &KeyPairRecord) -> String {
        self.recorded_fingerprint(&record.secret_name)
            .map_or_else(|| record.fingerprint(), str::to_owned)
    }

    /// The alias ARN the pair was made under, as recorded: by status (the trust anchor, as for
    /// fingerprints), else by its Secret (a pair stored just before a crash); `None` for a pair
    /// made before kekeeper recorded it.
    pub fn recorded_alias<'a>(&'a self, record: &'a KeyPairRecord) -> Option<&'a str> {
        self.aliases
            .get(&record.secret_name)
            .map(String::as_str)
            .or(record.kms_key_alias_arn.as_deref())
    }

    /// The alias ARN the pair is taken to be made under, to compare with the spec: the recorded
    /// one, else (a pair made before kekeeper recorded it) `status.kmsKeyAliasArn`, the alias
    /// the older version compared with; `None` when neither is known, and then the alias is
    /// not compared (docs/design.md, "The alias a pair was made under").
    pub fn made_under<'a>(&'a self, record: &'a KeyPairRecord) -> Option<&'a str> {
        self.recorded_alias(record).or(self.legacy_alias.as_deref())
    }

    /// Secrets whose public key disagrees with the fingerprint status recorded.
    pub fn mismatches(&self) -> Vec<Mismatch> {
        self.records
            .iter()
            .filter_map(|r| {
                let recorded = self.recorded_fingerprint(&r.secret_name)?;
                let found = r.fingerprint();
                (recorded != found).then(|| Mismatch {
                    secret_name: r.secret_name.clone(),
                    organization_id: r.organization_id.clone(),
                    key_pair_id: r.key_pair_id.clone(),
                    recorded: recorded.to_owned(),
                    found,
                })
            })
            .collect()
    }

    /// Whether the pair's public key is the one status recorded (or status has not seen it).
    pub fn is_verified(&self, record: &KeyPairRecord) -> bool {
        self.recorded_fingerprint(&record.secret_name)
            .is_none_or(|f| f == record.fingerprint())
    }

    /// The pairs labelled active that are trusted.
    fn trusted_active(&self) -> impl Iterator<Item = &KeyPairRecord> {
        self.records
            .iter()
            .filter(|r| r.state == KeyPairState::Active && self.is_trusted(r))
    }

    /// Whether `record` may be active, published, stored and recorded in status: status
    /// recorded it (the trust anchor; a differing public key is a mismatch, handled apart), it
    /// was proven through KMS in this reconcile, or it is a retired pair restored from the key
    /// store. Everything else is a candidate (docs/design.md, "Proof before publication").
    pub fn is_trusted(&self, record: &KeyPairRecord) -> bool {
        let name = &record.secret_name;
        !self.is_quarantined(record)
            && (self.anchors.contains_key(name)
                || self.proven.contains(name)
                || (record.state == KeyPairState::Retired && self.restored_retired.contains(name)))
    }

    /// Whether `record` failed its proof with the public key it holds now.
    pub fn is_quarantined(&self, record: &KeyPairRecord) -> bool {
        self.quarantined
            .get(&record.secret_name)
            .is_some_and(|q| q.fingerprint == record.fingerprint())
    }

    /// Pairs labelled active that must be proven through KMS before they may become active:
    /// not trusted, not quarantined, of an organisation in `organizations`, and newer than the
    /// organisation's trusted active pair (an older one is only ever shadowed).
    pub fn candidates(&self, organizations: &[String]) -> Vec<&KeyPairRecord> {
        let active = self.active_by_org();
        self.records
            .iter()
            .filter(|r| r.state == KeyPairState::Active)
            .filter(|r| !self.is_trusted(r) && !self.is_quarantined(r))
            .filter(|r| organizations.contains(&r.organization_id))
            .filter(|r| {
                let sequence = r.sequence.max(sequence_of(&r.secret_name).unwrap_or(0));
                active
                    .get(r.organization_id.as_str())
                    .is_none_or(|a| sequence > a.sequence)
            })
            .collect()
    }

    /// The ring with every pair it holds taken as proven (tests of what follows from trusted
    /// pairs).
    #[cfg(test)]
    pub fn with_all_proven(mut self) -> Self {
        let names: Vec<String> = self.records.iter().map(|r| r.secret_name.clone()).collect();
        self.proven.extend(names);
        self
    }

    /// Notes that the named pair was proven through KMS in this reconcile.
    pub fn prove(&mut self, secret_name: &str) {
        self.proven.insert(secret_name.to_owned());
    }

    /// Notes that a pair failed its proof.
    pub fn quarantine(&mut self, quarantined: Quarantined) {
        self.quarantined
            .insert(quarantined.secret_name.clone(), quarantined);
    }

    /// The quarantined pairs (acknowledged ones too: status remembers them).
    pub fn quarantined(&self) -> impl Iterator<Item = &Quarantined> {
        self.quarantined.values()
    }

    /// The KMS key ARN status recorded for the pair, else its own.
    pub fn recorded_key_arn<'a>(&'a self, record: &'a KeyPairRecord) -> &'a str {
        self.anchored_keys
            .get(&record.secret_name)
            .map_or(record.kms_key_arn.as_str(), String::as_str)
    }

    /// The pair's newest proven wrap, when it has one: recorded in status (the anchor; a
    /// namespace editor can add data keys to a Secret) or proven in this reconcile.
    pub fn proven_wrap(&self, record: &KeyPairRecord) -> Option<&ProvenWrap> {
        self.wraps
            .get(&record.secret_name)
            .filter(|w| w.kms_key_arn != self.recorded_key_arn(record))
    }

    /// The KMS key of the pair's newest proven blob: its proven wrap's, else the key it was
    /// made under (as status recorded it).
    pub fn newest_key_arn<'a>(&'a self, record: &'a KeyPairRecord) -> &'a str {
        self.proven_wrap(record)
            .map_or_else(|| self.recorded_key_arn(record), |w| &w.kms_key_arn)
    }

    /// The KMS keys of every proven blob of the pair: the key it was made under, and its
    /// proven wrap's.
    pub fn proven_key_arns<'a>(&'a self, record: &'a KeyPairRecord) -> Vec<&'a str> {
        let mut keys = vec![self.recorded_key_arn(record)];
        keys.extend(self.proven_wrap(record).map(|w| w.kms_key_arn.as_str()));
        keys
    }

    /// The newest proven blob of a pair and the key it is under: the proven wrap when the
    /// Secret holds it, else the original blob under the key status recorded. Never a wrap
    /// that only the Secret names (docs/design.md, "Rewrap").
    pub fn newest_blob<'a>(&'a self, pair: &'a KeyPairSecret) -> (&'a str, &'a [u8]) {
        match self
            .proven_wrap(&pair.record)
            .and_then(|w| pair.wrap_under(&w.kms_key_arn))
        {
            Some(wrap) => (&wrap.kms_key_arn, &wrap.ciphertext),
            None => (
                self.recorded_key_arn(&pair.record),
                &pair.private_key_ciphertext,
            ),
        }
    }

    /// A wrap status recorded for a pair, unless one is known already (proven in this
    /// reconcile, or read first).
    fn note_recorded_wrap(&mut self, entry: &KeyPairHistoryEntry) {
        if let (Some(kms_key_arn), Some(created_at)) =
            (&entry.rewrapped_kms_key_arn, entry.rewrapped_at)
        {
            self.wraps
                .entry(entry.secret_name.clone())
                .or_insert(ProvenWrap {
                    kms_key_arn: kms_key_arn.clone(),
                    created_at,
                });
        }
    }

    /// The wraps a newer status records (our own last write, which the resource's cache may
    /// not have delivered yet), for pairs it records with the same fingerprint: so a reconcile
    /// on a stale cache neither proves a wrap again nor writes status without it
    /// (docs/design.md, "Rewrap").
    pub fn merge_recorded_wraps(&mut self, status: &RecordingKeyConfigStatus) {
        for entry in recorded_pairs(status) {
            let same_pair = self.records.iter().any(|r| {
                r.secret_name == entry.secret_name
                    && self.trusted_fingerprint(r) == entry.public_key_fingerprint
                    && self.recorded_key_arn(r) == entry.kms_key_arn
            });
            if same_pair {
                self.note_recorded_wrap(&entry);
            }
        }
    }

    /// Notes that the pair's wrap under `kms_key_arn` was proven through KMS in this reconcile.
    pub fn prove_wrap(&mut self, secret_name: &str, kms_key_arn: &str, created_at: Timestamp) {
        self.wraps.insert(
            secret_name.to_owned(),
            ProvenWrap {
                kms_key_arn: kms_key_arn.to_owned(),
                created_at,
            },
        );
    }

    /// Pairs recorded in status whose Secret is gone (not pruned, not acknowledged).
    pub fn missing(&self) -> &[MissingPair] {
        &self.missing
    }

    /// Secret names of pairs that failed the custody check and are not acknowledged.
    pub fn custody_failed(&self) -> &BTreeSet<String> {
        &self.custody_failed
    }

    /// Notes a failed custody check of a pair.
    pub fn fail_custody(&mut self, secret_name: &str) {
        self.custody_failed.insert(secret_name.to_owned());
    }

    /// A pair made and self-tested in this reconcile: proven; the organisation's sequence moves
    /// past it.
    pub fn add_proven(&mut self, record: KeyPairRecord) {
        self.prove(&record.secret_name);
        // Proven just now: no earlier quarantine of its name stands.
        self.quarantined.remove(&record.secret_name);
        self.add(record);
    }

    /// A pair stored in this reconcile; the organisation's sequence moves past it.
    fn add(&mut self, record: KeyPairRecord) {
        self.note_sequence(&record.organization_id, record.sequence);
        self.records.retain(|r| r.secret_name != record.secret_name);
        self.records.push(record);
    }

    /// Pairs found in the key store whose Secrets are gone, as candidates: present again, no
    /// longer missing; an active one is trusted once proven (or recorded in status), a retired
    /// one at once (never published).
    pub fn restore(&mut self, records: Vec<KeyPairRecord>, tokens: &Tokens) {
        for record in records {
            if record.state == KeyPairState::Retired {
                self.restored_retired.insert(record.secret_name.clone());
            }
            if let Some(token) = tokens.get(&record.secret_name) {
                self.tokens
                    .insert(record.secret_name.clone(), token.clone());
            }
            self.missing.retain(|m| m.secret_name != record.secret_name);
            self.add(record);
        }
    }

    /// Marks the named pairs retired at `at`.
    pub fn retire(&mut self, names: &[String], at: Timestamp) {
        for record in self.records.iter_mut() {
            if names.contains(&record.secret_name) {
                record.retire(at);
            }
        }
    }

    /// Drops the named (pruned) pairs; they are not missing, they were deleted on purpose.
    pub fn remove(&mut self, names: &[String]) {
        self.records.retain(|r| !names.contains(&r.secret_name));
        self.anchors.retain(|name, _| !names.contains(name));
        self.aliases.retain(|name, _| !names.contains(name));
        self.wraps.retain(|name, _| !names.contains(name));
    }
}

/// What status recorded about key pairs: the active ones (as history entries without a reason)
/// first, then the history.
fn recorded_pairs(
    status: &RecordingKeyConfigStatus,
) -> impl Iterator<Item = KeyPairHistoryEntry> + '_ {
    status
        .active_key_pairs
        .iter()
        .map(|a| KeyPairHistoryEntry {
            organization_id: a.organization_id.clone(),
            key_pair_id: a.key_pair_id.clone(),
            created_at: a.created_at,
            retired_at: None,
            reason: String::new(),
            kms_key_arn: a.kms_key_arn.clone(),
            kms_key_alias_arn: a.kms_key_alias_arn.clone(),
            public_key_fingerprint: a.public_key_fingerprint.clone(),
            secret_name: a.secret_name.clone(),
            sequence: None,
            missing: false,
            rewrapped_kms_key_arn: a.rewrapped_kms_key_arn.clone(),
            rewrapped_at: a.rewrapped_at,
        })
        .chain(status.key_pair_history.iter().cloned())
}

/// The sequence number at the end of a key pair Secret name (`...-0007`).
fn sequence_of(secret_name: &str) -> Option<u64> {
    secret_name.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KeyPairProblem;
    use crate::keypair::test_pair;
    use crate::kms::KeyPairSpec;

    const ORG: &str = "org-a";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pair(org: &str, sequence: u64, public_key: u8) -> KeyPairRecord {
        let created = ts("2026-01-01T00:00:00Z") + SignedDuration::from_hours(sequence as i64);
        test_pair(
            org,
            sequence,
            KeyPairSpec::Rsa2048,
            vec![public_key; 8],
            created,
        )
    }

    fn retired(mut record: KeyPairRecord, at: &str) -> KeyPairRecord {
        record.retire(ts(at));
        record
    }

    fn reading(now: &str) -> Reading {
        Reading {
            acknowledged: BTreeSet::new(),
            pruning: None,
            now: ts(now),
        }
    }

    /// Status as kekeeper wrote it for `records`.
    fn status_of(records: &[KeyPairRecord]) -> RecordingKeyConfigStatus {
        let ring = KeyRing::new(
            records.to_vec(),
            Tokens::new(),
            None,
            &reading("2026-01-02T00:00:00Z"),
        )
        .with_all_proven();
        RecordingKeyConfigStatus {
            active_key_pairs: ring
                .active_by_org()
                .values()
                .map(|r| r.to_active_key_pair())
                .collect(),
            key_pair_history: records
                .iter()
                .map(KeyPairRecord::to_history_entry)
                .collect(),
            highest_sequences: ring.highest_sequences().clone(),
            ..RecordingKeyConfigStatus::default()
        }
    }

    #[test]
    fn the_newest_active_pair_wins_and_the_other_is_retired() {
        let ring = KeyRing::new(
            vec![pair(ORG, 1, 1), pair(ORG, 2, 2), pair("org-b", 1, 3)],
            Tokens::new(),
            None,
            &reading("2026-01-02T00:00:00Z"),
        )
        .with_all_proven();
        assert_eq!(ring.active(ORG).unwrap().sequence, 2);
        assert_eq!(ring.shadowed(), vec![pair(ORG, 1, 1).name()]);
        // org-b left the spec: its pair is retired too.
        let retire = ring.to_retire(&[ORG.to_owned()]);
        assert_eq!(retire.len(), 2);
        assert!(retire.contains(&pair("org-b", 1, 3).name()));
    }

    /// The alias a pair was made under: what status recorded (a Secret editor cannot change
    /// it), else what its Secret says, else, for a pair from before either recorded it, the
    /// status summary.
    #[test]
    fn the_alias_of_a_pair_is_status_then_secret_then_the_summary() {
        const OLD: &str = "arn:aws:kms:us-east-1:111122223333:alias/old";
        const NEW: &str = "arn:aws:kms:us-east-1:111122223333:alias/new";
        let mut recorded = pair(ORG, 1, 1);
        recorded.kms_key_alias_arn = Some(OLD.into());
        let mut status = status_of(std::slice::from_ref(&recorded));
        status.kms_key_alias_arn = Some(NEW.into());
        // The Secret was edited to claim the new alias; status says otherwise.
        let mut edited = recorded.clone();
        edited.kms_key_alias_arn = Some(NEW.into());
        // Stored just before a crash: status has not seen it yet.
        let mut unseen = pair("org-b", 1, 2);
        unseen.kms_key_alias_arn = Some(OLD.into());
        // Made by a version that recorded no alias on the pair.
        let mut legacy = pair("org-c", 1, 3);
        legacy.kms_key_alias_arn = None;
        let ring = KeyRing::new(
            vec![edited.clone(), unseen.clone(), legacy.clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert_eq!(ring.recorded_alias(&edited), Some(OLD));
        assert_eq!(ring.made_under(&edited), Some(OLD));
        assert_eq!(ring.recorded_alias(&unseen), Some(OLD));
        assert_eq!(ring.recorded_alias(&legacy), None);
        assert_eq!(ring.made_under(&legacy), Some(NEW));
        status.kms_key_alias_arn = None;
        let ring = KeyRing::new(
            vec![legacy.clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert_eq!(ring.made_under(&legacy), None);
    }

    #[test]
    fn sequences_are_never_reused_after_a_secret_is_deleted() {
        let all = [pair(ORG, 1, 1), pair(ORG, 2, 2)];
        let status = status_of(&all);
        // Sequence 2's Secret is deleted by hand.
        let ring = KeyRing::new(
            vec![all[0].clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert_eq!(ring.next_sequence(ORG), 3);
        assert_eq!(ring.next_sequence("org-new"), 1);
        // Status written before sequences were recorded: the name says it.
        let mut older = status.clone();
        older.highest_sequences.clear();
        for entry in older.key_pair_history.iter_mut() {
            entry.sequence = None;
        }
        let ring = KeyRing::new(
            vec![all[0].clone()],
            Tokens::new(),
            Some(&older),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert_eq!(ring.next_sequence(ORG), 3);
        // Even when status has no history left, the recorded highest sequence holds.
        let only_sequences = RecordingKeyConfigStatus {
            highest_sequences: BTreeMap::from([(ORG.to_owned(), 7)]),
            ..RecordingKeyConfigStatus::default()
        };
        let ring = KeyRing::new(
            vec![],
            Tokens::new(),
            Some(&only_sequences),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert_eq!(ring.next_sequence(ORG), 8);
    }

    #[test]
    fn a_deleted_secret_is_missing_until_acknowledged() {
        let all = [
            retired(pair(ORG, 1, 1), "2026-01-01T02:00:00Z"),
            pair(ORG, 2, 2),
        ];
        let status = status_of(&all);
        let ring = KeyRing::new(
            vec![all[1].clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        let missing = ring.missing();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].secret_name, all[0].name());
        assert_eq!(missing[0].organization_id, ORG);
        let entry = missing[0].entry.clone().unwrap();
        assert!(entry.missing);
        assert_eq!(entry.key_pair_id, all[0].key_pair_id);

        // Reported once in status, it stays reported even after the history forgot it.
        let later = RecordingKeyConfigStatus {
            key_pair_history: vec![all[1].to_history_entry()],
            key_pair_problems: vec![KeyPairProblem {
                public_key_fingerprint: None,
                organization_id: ORG.into(),
                key_pair_id: all[0].key_pair_id.clone(),
                secret_name: all[0].name(),
                reason: KEY_PAIR_MISSING.into(),
                message: "gone".into(),
                since: ts("2026-01-02T00:00:00Z"),
            }],
            ..status.clone()
        };
        let ring = KeyRing::new(
            vec![all[1].clone()],
            Tokens::new(),
            Some(&later),
            &reading("2026-01-03T00:00:00Z"),
        );
        assert_eq!(ring.missing().len(), 1);

        let mut acknowledged = reading("2026-01-03T00:00:00Z");
        acknowledged.acknowledged = acknowledged_ids(&all[0].key_pair_id);
        let ring = KeyRing::new(
            vec![all[1].clone()],
            Tokens::new(),
            Some(&later),
            &acknowledged,
        );
        assert!(ring.missing().is_empty());
        // A restored Secret is not missing either.
        let ring = KeyRing::new(
            all.to_vec(),
            Tokens::new(),
            Some(&later),
            &reading("2026-01-03T00:00:00Z"),
        );
        assert!(ring.missing().is_empty());
    }

    fn acknowledged_ids(id: &str) -> BTreeSet<String> {
        BTreeSet::from(["other-id".to_owned(), id.to_owned()])
    }

    #[test]
    fn a_pair_gone_after_its_prune_time_is_not_missing() {
        let all = [
            retired(pair(ORG, 1, 1), "2026-01-01T02:00:00Z"),
            pair(ORG, 2, 2),
        ];
        let status = status_of(&all);
        let mut read = reading("2026-01-03T02:00:00Z");
        read.pruning = Some(Pruning {
            retention: Some(SignedDuration::from_hours(24)),
            period: RotationPeriod::Daily,
        });
        let ring = KeyRing::new(vec![all[1].clone()], Tokens::new(), Some(&status), &read);
        assert!(ring.missing().is_empty());
        // Before the prune time, a gone Secret is missing.
        read.now = ts("2026-01-01T12:00:00Z");
        let ring = KeyRing::new(vec![all[1].clone()], Tokens::new(), Some(&status), &read);
        assert_eq!(ring.missing().len(), 1);
    }

    #[test]
    fn pruning_waits_for_the_retention_and_one_rotation_period() {
        let old = retired(pair(ORG, 1, 1), "2026-01-01T00:00:00Z");
        let records = vec![old.clone(), pair(ORG, 2, 2)];
        let ring_at = |retention: Option<i64>, period| {
            let mut read = reading("2026-01-01T00:00:00Z");
            read.pruning = Some(Pruning {
                retention: retention.map(SignedDuration::from_hours),
                period,
            });
            KeyRing::new(records.clone(), Tokens::new(), None, &read)
        };
        // No retention: never.
        assert!(
            ring_at(None, RotationPeriod::Daily)
                .prunable(ts("2030-01-01T00:00:00Z"))
                .is_empty()
        );
        // 0h retention with a monthly rotation: not before a month after retirement.
        let monthly = ring_at(Some(0), RotationPeriod::Monthly);
        assert!(monthly.prunable(ts("2026-01-31T23:59:59Z")).is_empty());
        assert_eq!(
            monthly.prunable(ts("2026-02-01T00:00:00Z")),
            vec![old.name()]
        );
        // A retention longer than the period rules.
        let long = ring_at(Some(24 * 40), RotationPeriod::Monthly);
        assert!(long.prunable(ts("2026-02-09T23:59:59Z")).is_empty());
        assert_eq!(long.prunable(ts("2026-02-10T00:00:00Z")), vec![old.name()]);
        // Never rotating: one day.
        let never = ring_at(Some(1), RotationPeriod::Never);
        assert!(never.prunable(ts("2026-01-01T23:59:59Z")).is_empty());
        assert_eq!(never.prunable(ts("2026-01-02T00:00:00Z")), vec![old.name()]);
    }

    #[test]
    fn a_substituted_public_key_is_a_mismatch_and_the_recorded_fingerprint_is_trusted() {
        let original = pair(ORG, 1, 1);
        let status = status_of(std::slice::from_ref(&original));
        let mut substituted = original.clone();
        substituted.public_key_der = vec![66; 8];
        let ring = KeyRing::new(
            vec![substituted.clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        let mismatches = ring.mismatches();
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].secret_name, original.name());
        assert_eq!(mismatches[0].recorded, original.fingerprint());
        assert_eq!(mismatches[0].found, substituted.fingerprint());
        assert!(!ring.is_verified(&substituted));
        assert_eq!(
            ring.trusted_fingerprint(&substituted),
            original.fingerprint()
        );
        // A pair status has not recorded yet (stored just before a crash) is taken as is.
        let newer = pair(ORG, 2, 2);
        let ring = KeyRing::new(
            vec![original, newer.clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert!(ring.mismatches().is_empty());
        assert!(ring.is_verified(&newer));
    }

    #[test]
    fn custody_failures_in_status_persist_until_acknowledged() {
        let active = pair(ORG, 1, 1);
        let status = RecordingKeyConfigStatus {
            key_pair_problems: vec![KeyPairProblem {
                public_key_fingerprint: None,
                organization_id: ORG.into(),
                key_pair_id: active.key_pair_id.clone(),
                secret_name: active.name(),
                reason: CUSTODY_CHECK_FAILED.into(),
                message: "InvalidCiphertextException".into(),
                since: ts("2026-01-02T00:00:00Z"),
            }],
            ..status_of(std::slice::from_ref(&active))
        };
        let ring = KeyRing::new(
            vec![active.clone()],
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert!(ring.custody_failed().contains(&active.name()));
        let mut read = reading("2026-01-02T00:00:00Z");
        read.acknowledged = acknowledged_ids(&active.key_pair_id);
        let ring = KeyRing::new(vec![active], Tokens::new(), Some(&status), &read);
        assert!(ring.custody_failed().is_empty());
    }

    #[test]
    fn adding_a_pair_moves_the_sequence_and_pruned_pairs_leave_without_being_missing() {
        let mut ring = KeyRing::new(
            vec![pair(ORG, 1, 1)],
            Tokens::new(),
            None,
            &reading("2026-01-02T00:00:00Z"),
        );
        let next = pair(ORG, ring.next_sequence(ORG), 2);
        ring.retire(&[pair(ORG, 1, 1).name()], ts("2026-01-02T00:00:00Z"));
        ring.add_proven(next.clone());
        assert_eq!(ring.next_sequence(ORG), 3);
        assert_eq!(ring.active(ORG).unwrap().name(), next.name());
        ring.remove(&[pair(ORG, 1, 1).name()]);
        assert_eq!(ring.records().len(), 1);
        assert!(ring.missing().is_empty());
        assert_eq!(ring.next_sequence(ORG), 3);
    }

    /// A pair status has not recorded is a candidate: never active, never retired by the ring,
    /// until proven; a quarantine read back from status keeps it out while it holds the same
    /// public key, and a Secret rewritten with another key is a candidate again.
    #[test]
    fn unrecorded_pairs_are_candidates_until_proven_and_quarantine_is_remembered() {
        let genuine = pair(ORG, 1, 1);
        let planted = pair(ORG, 2, 2);
        let status = status_of(std::slice::from_ref(&genuine));
        let records = vec![genuine.clone(), planted.clone()];
        let ring = KeyRing::new(
            records.clone(),
            Tokens::new(),
            Some(&status),
            &reading("2026-01-02T00:00:00Z"),
        );
        assert_eq!(ring.active(ORG).unwrap().name(), genuine.name());
        assert_eq!(ring.candidates(&[ORG.to_owned()]), vec![&planted]);
        assert!(ring.shadowed().is_empty(), "a candidate shadows nothing");
        assert_eq!(
            ring.next_sequence(ORG),
            3,
            "its sequence is taken all the same"
        );

        let mut proven = ring.clone();
        proven.prove(&planted.secret_name);
        assert_eq!(proven.active(ORG).unwrap().name(), planted.name());
        assert_eq!(proven.shadowed(), vec![genuine.name()]);

        let quarantined = RecordingKeyConfigStatus {
            key_pair_problems: vec![KeyPairProblem {
                organization_id: ORG.into(),
                key_pair_id: planted.key_pair_id.clone(),
                secret_name: planted.secret_name.clone(),
                reason: KEY_PAIR_QUARANTINED.into(),
                message: "failed its proof".into(),
                since: ts("2026-01-02T00:00:00Z"),
                public_key_fingerprint: Some(planted.fingerprint()),
            }],
            ..status.clone()
        };
        let mut acknowledged = reading("2026-01-02T00:00:00Z");
        acknowledged
            .acknowledged
            .insert(planted.key_pair_id.clone());
        let ring = KeyRing::new(records, Tokens::new(), Some(&quarantined), &acknowledged);
        assert!(ring.candidates(&[ORG.to_owned()]).is_empty());
        assert!(
            !ring.is_trusted(&planted),
            "acknowledged, still quarantined"
        );
        assert_eq!(ring.quarantined().count(), 1);

        let rewritten = pair(ORG, 2, 3);
        let ring = KeyRing::new(
            vec![genuine, rewritten.clone()],
            Tokens::new(),
            Some(&quarantined),
            &acknowledged,
        );
        assert_eq!(ring.candidates(&[ORG.to_owned()]), vec![&rewritten]);
    }
}
