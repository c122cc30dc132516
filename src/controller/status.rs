//! The status kekeeper should show, computed from what this reconcile observed and did, on top
//! of the current status (for what it did not look at). Pure: tested with plain values.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::custody::CustodyCheck;
use super::observe::KeyCheck;
use super::ratelimit::PaceEstimate;
use super::rewrap::{self, RewrapError, RewrapOutcome, WRAP_PROOF_FAILED};
use super::stored::StoreCheck;
use crate::crd::{
    KeyPairHistoryEntry, KeyPairProblem, KmsKeyUse, LastKmsError, LastTest, RecordingKeyConfig,
    RecordingKeyConfigStatus, ReplicaReadStatus,
};
use crate::keypair::KeyPairRecord;
use crate::keyring::{
    CUSTODY_CHECK_FAILED, KEY_PAIR_MISSING, KEY_PAIR_QUARANTINED, KeyRing, PUBLIC_KEY_MISMATCH,
};
use crate::keystore::StoreError;
use crate::kms::KmsError;
use crate::policy::{self, HealthInput};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const KMS_AVAILABLE: &str = "KmsAvailable";
pub const CONFIG_VALID: &str = "ConfigValid";
pub const HISTORICAL_KEYS_AT_RISK: &str = "HistoricalKeysAtRisk";
pub const KEY_PAIR_INTEGRITY: &str = "KeyPairIntegrity";
/// With a key store: whether every retained key pair has its object there (docs/disaster-recovery.md).
pub const KEY_STORE_SYNCED: &str = "KeyStoreSynced";
/// Whether every retained key pair has a proven private key blob under the KMS key the alias
/// resolves to (docs/design.md, "Rewrap").
pub const REWRAPPED: &str = "Rewrapped";

/// The condition types in the order status lists them.
const ORDER: [&str; 9] = [
    READY,
    RECONCILING,
    STALLED,
    KMS_AVAILABLE,
    CONFIG_VALID,
    HISTORICAL_KEYS_AT_RISK,
    KEY_PAIR_INTEGRITY,
    KEY_STORE_SYNCED,
    REWRAPPED,
];

/// What this reconcile learnt and did.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The resource the decision was made on.
    pub rkc: &'a RecordingKeyConfig,
    /// The newest status read (our own last write included): the base for what this
    /// reconcile did not look at.
    pub current: Option<&'a RecordingKeyConfigStatus>,
    pub now: Timestamp,
    /// The key pairs after this reconcile's work.
    pub ring: &'a KeyRing,
    /// The custody check, when it ran in this reconcile.
    pub custody: Option<&'a CustodyCheck>,
    /// The spec's problem (field and fix).
    pub config_error: Option<&'a str>,
    /// What DescribeKey said in this reconcile, if it was asked.
    pub key: Option<&'a KeyCheck>,
    /// A KMS call of the work that failed.
    pub kms_failure: Option<&'a KmsError>,
    /// A self-test that failed for another reason.
    pub self_test_failure: Option<&'a str>,
    pub last_test: Option<&'a LastTest>,
    /// Rotations still to do.
    pub pending: usize,
    /// The key store, when it was listed in this reconcile.
    pub store: Option<&'a StoreCheck>,
    /// What the work did with the store: objects written, and a failed write of an object or
    /// marker of a retained pair.
    pub store_writes: usize,
    pub store_write_error: Option<&'a StoreError>,
    /// The store did not take a new pair, which therefore did not become active.
    pub store_failure: Option<&'a StoreError>,
    /// The rotate-now token to record as honoured.
    pub honoured_token: Option<String>,
    /// While this resource's pairs wait at the KMS pace: how long they will take.
    pub pace: Option<PaceEstimate>,
    /// The rewrap of this reconcile, once its work ran.
    pub rewrap: Option<&'a RewrapOutcome>,
}

impl StatusInput<'_> {
    /// Whether anything in this reconcile failed (it counts towards the backoff).
    pub fn failed(&self) -> bool {
        self.kms_failure.is_some()
            || self.self_test_failure.is_some()
            || self.store_error().is_some()
            || self.custody.is_some_and(|c| c.error.is_some())
            || self.rewrap_failed()
            || matches!(
                self.key,
                Some(KeyCheck::Failed(_) | KeyCheck::Unusable { .. })
            )
    }

    /// A rewrap that failed (KMS, the store, or a wrap's proof): it counts towards the backoff,
    /// so a missing `kms:ReEncrypt*` grant is not retried at once, but leaves Ready alone.
    fn rewrap_failed(&self) -> bool {
        self.rewrap
            .is_some_and(|r| r.error.is_some() || !r.problems.is_empty())
    }

    /// The store error that stops work: a new pair it did not take, else its listing.
    fn store_error(&self) -> Option<&StoreError> {
        self.store_failure
            .or(self.store.and_then(|s| s.result.as_ref().err()))
    }

    /// The KMS error of this reconcile: of the work, else of DescribeKey, else of the custody
    /// check.
    fn kms_error(&self) -> Option<&KmsError> {
        self.kms_failure
            .or(match self.key {
                Some(KeyCheck::Failed(err)) => Some(err),
                _ => None,
            })
            .or(self.custody.and_then(|c| c.error.as_ref()))
    }
}

pub fn desired(input: &StatusInput) -> RecordingKeyConfigStatus {
    // The wraps the newest status records count even when this reconcile's ring was read from
    // an older one: status never loses a proven wrap.
    let merged;
    let with_current;
    let input = match input.current {
        Some(current) => {
            let mut ring = input.ring.clone();
            ring.merge_recorded_wraps(current);
            merged = ring;
            with_current = StatusInput {
                ring: &merged,
                ..input.clone()
            };
            &with_current
        }
        None => input,
    };
    let current = input.current.cloned().unwrap_or_default();
    let generation = input.rkc.metadata.generation;
    let mut next = RecordingKeyConfigStatus {
        observed_generation: generation,
        organization_count: Some(input.rkc.spec.organization_ids.len() as u32),
        rotate_now_token: input.honoured_token.clone(),
        last_test: input.last_test.cloned().or(current.last_test.clone()),
        ..current.clone()
    };
    kms_bookkeeping(input, &current, &mut next);
    key_pairs(input, &mut next);
    custody(input, &current, &mut next);
    rewrap_bookkeeping(input, &mut next);
    let mut conditions = Conditions {
        current: &current.conditions,
        next: Vec::new(),
        now: input.now,
        generation,
    };
    health_conditions(input, &next, &mut conditions);
    kms_conditions(input, &mut conditions);
    custody_conditions(input, &next, &mut conditions);
    store_condition(input, &mut conditions);
    rewrap_condition(input, &next, &mut conditions);
    next.conditions = conditions.finish();
    quiet_key_check(&current, next)
}

/// How old the recorded `lastKmsKeyCheckTime` may grow before a key check that changed nothing
/// else is written anyway.
pub const KMS_KEY_CHECK_RECORD_PERIOD: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// A key check that changed nothing else in status keeps the recorded `lastKmsKeyCheckTime`,
/// so an unchanged resource writes no status per check, unless the recorded time is a
/// [`KMS_KEY_CHECK_RECORD_PERIOD`] old (docs/design.md, "A quiet steady state").
fn quiet_key_check(
    current: &RecordingKeyConfigStatus,
    next: RecordingKeyConfigStatus,
) -> RecordingKeyConfigStatus {
    let (Some(recorded), Some(checked)) = (
        current.last_kms_key_check_time,
        next.last_kms_key_check_time,
    ) else {
        return next;
    };
    let quiet = RecordingKeyConfigStatus {
        last_kms_key_check_time: Some(recorded),
        ..next.clone()
    };
    let recent = recorded
        .checked_add(KMS_KEY_CHECK_RECORD_PERIOD)
        .is_ok_and(|due| checked < due);
    if quiet == *current && recent {
        quiet
    } else {
        next
    }
}

/// `lastKmsError`, the key check bookkeeping and the failure count for the backoff.
fn kms_bookkeeping(
    input: &StatusInput,
    current: &RecordingKeyConfigStatus,
    next: &mut RecordingKeyConfigStatus,
) {
    let now = input.now;
    if let Some(err) = input.kms_error() {
        next.last_kms_error = Some(LastKmsError::of(err, now));
    }
    match input.key {
        Some(KeyCheck::Usable {
            description,
            at_risk,
            checked_at,
        }) => {
            next.kms_key_arn = Some(description.key_arn.clone());
            next.last_kms_key_check_time = Some(*checked_at);
            next.key_pairs_at_risk = at_risk.clone();
        }
        Some(KeyCheck::Unusable {
            key_arn,
            reason,
            message,
            checked_at,
        }) => {
            next.kms_key_arn = key_arn.clone().or(current.kms_key_arn.clone());
            next.last_kms_key_check_time = Some(*checked_at);
            next.last_kms_error = Some(LastKmsError {
                time: now,
                operation: "DescribeKey".to_owned(),
                code: reason.clone(),
                message: message.clone(),
                resolved_at: None,
            });
        }
        _ => {}
    }
    let kms_succeeded = matches!(input.key, Some(KeyCheck::Usable { .. })) && !input.failed();
    if kms_succeeded {
        if let Some(err) = next.last_kms_error.as_mut() {
            err.resolved_at.get_or_insert(now);
        }
        if input.pending == 0 {
            next.kms_key_alias_arn = Some(input.rkc.spec.kms_key_alias_arn.clone());
        }
    }
    if input.failed() {
        // Counted from the status the reconcile started on, not from the newest view (which
        // may be this reconcile's own progress write): however many writes one reconcile
        // makes, its failure counts once.
        let before = input.rkc.status.as_ref().and_then(|s| s.failed_attempts);
        next.failed_attempts = Some(before.unwrap_or(0).saturating_add(1));
        next.last_failure_time = Some(now);
        // This attempt was the one for this token (docs/design.md, "Backoff lives in status").
        next.failed_rotate_now_token = input.rkc.rotate_now_token().map(str::to_owned);
    } else if kms_succeeded {
        next.failed_attempts = None;
        next.last_failure_time = None;
        next.failed_rotate_now_token = None;
    }
}

/// Active pairs, history and the rotation times, from the key ring. Fingerprints are the ones
/// status recorded (a Secret editor cannot change them); pairs whose Secret is gone stay in the
/// history, marked missing.
fn key_pairs(input: &StatusInput, next: &mut RecordingKeyConfigStatus) {
    let rkc = input.rkc;
    let ring = input.ring;
    let active = ring.active_by_org();
    let wanted = &rkc.spec.organization_ids;
    next.active_key_pairs = wanted
        .iter()
        .filter_map(|org| active.get(org.as_str()))
        .map(|r| crate::crd::ActiveKeyPair {
            public_key_fingerprint: ring.trusted_fingerprint(r),
            kms_key_alias_arn: ring.recorded_alias(r).map(str::to_owned),
            kms_key_arn: ring.recorded_key_arn(r).to_owned(),
            rewrapped_kms_key_arn: ring.proven_wrap(r).map(|w| w.kms_key_arn.clone()),
            rewrapped_at: ring.proven_wrap(r).map(|w| w.created_at),
            ..r.to_active_key_pair()
        })
        .collect();
    // Only trusted pairs are recorded: what status records is the trust anchor (docs/design.md,
    // "Proof before publication").
    let mut present: Vec<&KeyPairRecord> = ring
        .records()
        .iter()
        .filter(|r| ring.is_trusted(r))
        .collect();
    present.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.sequence.cmp(&a.sequence))
            .then(a.organization_id.cmp(&b.organization_id))
    });
    let mut history: Vec<KeyPairHistoryEntry> = present
        .into_iter()
        .take(rkc.spec.history_limit.clamp(1, 100) as usize)
        .map(|r| KeyPairHistoryEntry {
            public_key_fingerprint: ring.trusted_fingerprint(r),
            kms_key_alias_arn: ring.recorded_alias(r).map(str::to_owned),
            kms_key_arn: ring.recorded_key_arn(r).to_owned(),
            rewrapped_kms_key_arn: ring.proven_wrap(r).map(|w| w.kms_key_arn.clone()),
            rewrapped_at: ring.proven_wrap(r).map(|w| w.created_at),
            ..r.to_history_entry()
        })
        .collect();
    history.extend(ring.missing().iter().filter_map(|m| m.entry.clone()));
    history.sort_by_key(|e| std::cmp::Reverse(e.created_at));
    next.key_pair_history = history;
    next.highest_sequences = ring.highest_sequences().clone();
    let in_spec = active
        .iter()
        .filter(|(org, _)| wanted.iter().any(|w| w == *org))
        .map(|(_, r)| *r);
    next.last_rotation_time = in_spec.clone().map(|r| r.created_at).max();
    next.next_rotation_time = in_spec
        .filter_map(|r| policy::rotation_due(r.created_at, rkc.spec.rotation.period))
        .min();
}

/// `keyPairProblems`, the custody check time and the verify-now token honoured.
fn custody(
    input: &StatusInput,
    current: &RecordingKeyConfigStatus,
    next: &mut RecordingKeyConfigStatus,
) {
    next.key_pair_problems = problems(input, current);
    let checked = input.custody.is_some_and(|c| c.error.is_none());
    if let Some(check) = input.custody.filter(|_| checked) {
        // Which Region answered the check: absent when the home Region did (docs/design.md,
        // "Multi-Region reads").
        next.last_key_verify_replica_read = check.replica_reads.first().map(ReplicaReadStatus::of);
    }
    if checked || (current.last_key_verify_time.is_none() && !input.ring.active_by_org().is_empty())
    {
        // Active pairs are trusted only once proven through KMS (the self-test of a pair made
        // here, or the proof of a restored one), which counts as their first check
        // (docs/design.md, "Proof before publication").
        next.last_key_verify_time = Some(input.now);
    }
    if checked {
        next.verify_now_token = input.rkc.verify_now_token().map(str::to_owned);
    }
}

/// The key pair problems of the ring; each keeps the time it was first seen.
fn problems(input: &StatusInput, current: &RecordingKeyConfigStatus) -> Vec<KeyPairProblem> {
    let ring = input.ring;
    let problem = |org: &str, key_pair_id: &str, secret: &str, reason: &str, message: String| {
        let since = current
            .key_pair_problems
            .iter()
            .find(|p| p.secret_name == secret && p.reason == reason)
            .map_or(input.now, |p| p.since);
        KeyPairProblem {
            public_key_fingerprint: None,
            organization_id: org.to_owned(),
            key_pair_id: key_pair_id.to_owned(),
            secret_name: secret.to_owned(),
            reason: reason.to_owned(),
            message,
            since,
        }
    };
    let mut problems = Vec::new();
    for m in ring.missing() {
        let message = format!(
            "Secret {} of key pair {} (organisation {}) is gone: recordings made with it cannot \
             be decrypted unless it is restored from a backup",
            m.secret_name, m.key_pair_id, m.organization_id
        );
        let (org, id, secret) = (&m.organization_id, &m.key_pair_id, &m.secret_name);
        problems.push(problem(org, id, secret, KEY_PAIR_MISSING, message));
    }
    for m in ring.mismatches() {
        let message = format!(
            "Secret {} holds a public key with fingerprint {}, but status recorded {}: the \
             recorded key stays published; restore publicKey.pem",
            m.secret_name, m.found, m.recorded
        );
        let (org, id, secret) = (&m.organization_id, &m.key_pair_id, &m.secret_name);
        problems.push(problem(org, id, secret, PUBLIC_KEY_MISMATCH, message));
    }
    for q in ring.quarantined() {
        let (org, id, secret) = (&q.organization_id, &q.key_pair_id, &q.secret_name);
        let mut quarantined = problem(org, id, secret, KEY_PAIR_QUARANTINED, q.message.clone());
        quarantined.public_key_fingerprint = Some(q.fingerprint.clone());
        problems.push(quarantined);
    }
    // A wrap that failed its proof: reported on its pair until the pair has a proven blob
    // under the current key, or the problem is acknowledged.
    let current_key = current_key_arn(input, current);
    let acknowledged = input.rkc.acknowledged_key_pairs();
    let fresh_wraps = input
        .rewrap
        .map(|r| r.problems.as_slice())
        .unwrap_or_default();
    for w in fresh_wraps {
        let (org, id, secret) = (&w.organization_id, &w.key_pair_id, &w.secret_name);
        problems.push(problem(
            org,
            id,
            secret,
            WRAP_PROOF_FAILED,
            w.message.clone(),
        ));
    }
    problems.extend(
        current
            .key_pair_problems
            .iter()
            .filter(|p| p.reason == WRAP_PROOF_FAILED && !acknowledged.contains(&p.key_pair_id))
            .filter(|p| !fresh_wraps.iter().any(|w| w.secret_name == p.secret_name))
            .filter(|p| {
                ring.records().iter().any(|r| {
                    r.secret_name == p.secret_name
                        && Some(ring.newest_key_arn(r)) != current_key.as_deref()
                })
            })
            .cloned(),
    );
    let fresh = input
        .custody
        .map(|c| c.failures.as_slice())
        .unwrap_or_default();
    for secret in ring.custody_failed() {
        match fresh.iter().find(|f| &f.secret_name == secret) {
            Some(f) => problems.push(problem(
                &f.organization_id,
                &f.key_pair_id,
                secret,
                CUSTODY_CHECK_FAILED,
                f.message.clone(),
            )),
            None => problems.extend(
                current
                    .key_pair_problems
                    .iter()
                    .find(|p| &p.secret_name == secret && p.reason == CUSTODY_CHECK_FAILED)
                    .cloned(),
            ),
        }
    }
    problems
}

/// The KMS key the alias resolves to: per this reconcile's key check, else as status last saw it.
fn current_key_arn(input: &StatusInput, current: &RecordingKeyConfigStatus) -> Option<String> {
    match input.key {
        Some(KeyCheck::Usable { description, .. }) => Some(description.key_arn.clone()),
        _ => current.kms_key_arn.clone(),
    }
}

/// `kmsKeys` (how many retained pairs depend on each KMS key), the rewrap-now token once its
/// rewrap is done, and a rewrap's KMS error as `lastKmsError`.
fn rewrap_bookkeeping(input: &StatusInput, next: &mut RecordingKeyConfigStatus) {
    next.kms_keys = rewrap::key_counts(input.ring)
        .into_iter()
        .map(|(kms_key_arn, key_pairs)| KmsKeyUse {
            kms_key_arn,
            key_pairs,
        })
        .collect();
    if let Some(RewrapError::Kms(err)) = input.rewrap.and_then(|r| r.error.as_ref()) {
        next.last_kms_error = Some(LastKmsError::of(err, input.now));
    }
    // Honoured only on a key check of this reconcile, with nothing left to rewrap.
    if let (Some(token), Some(KeyCheck::Usable { description, .. })) =
        (rewrap::unhonoured_token(input.rkc), input.key)
    {
        if rewrap::pending(input.ring, &description.key_arn).is_empty() && !input.rewrap_failed() {
            next.rewrap_now_token = Some(token.to_owned());
        }
    }
}

/// Rewrapped: True when every retained pair has a proven blob under the current key; False
/// with `RewrapPending` (progress), `RewrapFailed` (KMS, the store or a wrap's proof: what to
/// fix) or `RewrapDisabled` (`spec.rewrap: Never`). Absent without retained pairs or before
/// the key is known.
fn rewrap_condition(
    input: &StatusInput,
    next: &RecordingKeyConfigStatus,
    conditions: &mut Conditions,
) {
    let Some(current) = next.kms_key_arn.as_deref() else {
        return;
    };
    let retained = rewrap::retained(input.ring).count();
    if retained == 0 {
        return;
    }
    let pending = rewrap::pending(input.ring, current);
    let done = retained - pending.len();
    let mut old_keys: Vec<&str> = pending
        .iter()
        .map(|r| input.ring.newest_key_arn(r))
        .collect();
    old_keys.sort_unstable();
    old_keys.dedup();
    let progress = format!(
        "{done}/{retained} retained key pairs rewrapped onto {current}; {} still depend only on {}",
        pending.len(),
        old_keys.join(", ")
    );
    let outcome = input.rewrap;
    let unrecorded = rewrap::unrecorded(input.ring, current);
    if let Some(err) = outcome.and_then(|r| r.error.as_ref()) {
        let fix = match err {
            RewrapError::Kms(err) => format!(
                "{} failed: {}: {}; the operator's principal needs kms:ReEncryptFrom on the old \
                 key and kms:ReEncryptTo on {current}, and kms:Decrypt on {current}, with the \
                 encryption context condition (kekeeper policy prints the statements)",
                err.operation, err.code, err.message
            ),
            RewrapError::Store(err) => format!("the key store did not take a wrap: {err}"),
        };
        conditions.set(
            REWRAPPED,
            false,
            "RewrapFailed",
            &format!("{fix}; {progress}"),
        );
    } else if let Some(problem) = outcome.and_then(|r| r.problems.first()) {
        conditions.set(
            REWRAPPED,
            false,
            "RewrapFailed",
            &format!("{}; {progress}", problem.message),
        );
    } else if pending.is_empty() && !unrecorded.is_empty() {
        let mut keys: Vec<&str> = unrecorded
            .iter()
            .map(|r| input.ring.newest_key_arn(r))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        conditions.set(
            REWRAPPED,
            false,
            "KeyPairsNotRecorded",
            &format!(
                "all {retained} retained key pairs have a proven private key blob under \
                 {current}, but {} more key pair Secrets are not recorded in status (older \
                 than spec.historyLimit {}, or not yet proven) and stay under {}: keep those \
                 keys enabled, or raise spec.historyLimit to at least {}",
                unrecorded.len(),
                input.rkc.spec.history_limit,
                keys.join(", "),
                retained + unrecorded.len()
            ),
        );
    } else if pending.is_empty() {
        conditions.set(
            REWRAPPED,
            true,
            "Rewrapped",
            &format!(
                "all {retained} retained key pairs have a proven private key blob under {current}"
            ),
        );
    } else if !rewrap::wanted(input.rkc) {
        conditions.set(
            REWRAPPED,
            false,
            "RewrapDisabled",
            &format!(
                "spec.rewrap is Never: {progress}; keep those keys enabled, or run kekeeper \
                 rewrap {} (or set spec.rewrap: OnKmsKeyChange)",
                input.rkc.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    } else {
        conditions.set(REWRAPPED, false, "RewrapPending", &progress);
    }
}

/// Ready, Reconciling and Stalled from the health chain.
fn health_conditions(
    input: &StatusInput,
    next: &RecordingKeyConfigStatus,
    conditions: &mut Conditions,
) {
    let organizations = input.rkc.spec.organization_ids.len();
    let key_unusable = match input.key {
        Some(KeyCheck::Unusable {
            reason, message, ..
        }) => Some((reason.as_str(), message.as_str())),
        _ => None,
    };
    let kms_error = input
        .kms_error()
        .map(|e| (e.code.as_str(), e.message.as_str(), e.kind.is_transient()));
    let store_message = input.store_error().map(ToString::to_string);
    let health = policy::health(&HealthInput {
        suspended: input.rkc.spec.suspend,
        config_error: input.config_error,
        key_unusable,
        kms_error,
        self_test_failed: input.self_test_failure,
        store_unavailable: store_message.as_deref(),
        organizations,
        up_to_date: organizations
            .saturating_sub(input.pending)
            .min(next.active_key_pairs.len()),
    });
    for (type_, (status, reason, message)) in [
        (READY, health.ready),
        (RECONCILING, with_time_left(input, health.reconciling)),
        (STALLED, health.stalled),
    ] {
        conditions.set(type_, status, reason, &message);
    }
}

/// Reconciling's message, with the time left at the KMS pace while this resource's pairs are
/// queued (docs/design.md, "Rate limits").
fn with_time_left(
    input: &StatusInput,
    (status, reason, message): (bool, &'static str, String),
) -> (bool, &'static str, String) {
    match &input.pace {
        Some(pace) if status => (status, reason, format!("{message}; {}", pace.message())),
        _ => (status, reason, message),
    }
}

/// KmsAvailable and ConfigValid: what KMS said, or as before when it
/// was not asked.
fn kms_conditions(input: &StatusInput, conditions: &mut Conditions) {
    match (input.kms_error(), input.key) {
        (Some(err), _) => conditions.set(
            KMS_AVAILABLE,
            false,
            &err.code,
            &format!("{}: {}", err.operation, err.message),
        ),
        (
            None,
            Some(KeyCheck::Unusable {
                reason, message, ..
            }),
        ) => conditions.set(KMS_AVAILABLE, false, reason, message),
        (None, Some(KeyCheck::Usable { .. })) => conditions.set(
            KMS_AVAILABLE,
            true,
            "KmsReachable",
            "the last KMS calls succeeded",
        ),
        _ => conditions.keep(KMS_AVAILABLE),
    }
    match (input.config_error, input.key) {
        (Some(message), _) => conditions.set(CONFIG_VALID, false, "InvalidSpec", message),
        (
            None,
            Some(KeyCheck::Unusable {
                reason, message, ..
            }),
        ) => conditions.set(CONFIG_VALID, false, reason, message),
        (None, Some(KeyCheck::Usable { description, .. })) => conditions.set(
            CONFIG_VALID,
            true,
            "KmsKeyValid",
            &format!(
                "alias resolves to {}: enabled, symmetric, ENCRYPT_DECRYPT, in the home region",
                description.key_arn
            ),
        ),
        _ => conditions.keep(CONFIG_VALID),
    }
}

/// HistoricalKeysAtRisk (missing Secrets first, then retained pairs' KMS keys) and
/// KeyPairIntegrity.
fn custody_conditions(
    input: &StatusInput,
    next: &RecordingKeyConfigStatus,
    conditions: &mut Conditions,
) {
    let missing = input.ring.missing();
    // Without a KMS key check in this reconcile, the condition stays as it was, unless it
    // reported Secrets that are no longer missing.
    let recompute = matches!(input.key, Some(KeyCheck::Usable { .. }))
        || conditions.current_reason(HISTORICAL_KEYS_AT_RISK) == Some(KEY_PAIR_MISSING);
    if !missing.is_empty() {
        let named: Vec<String> = missing
            .iter()
            .map(|m| {
                format!(
                    "{} (key pair {}, organisation {})",
                    m.secret_name, m.key_pair_id, m.organization_id
                )
            })
            .collect();
        conditions.set(
            HISTORICAL_KEYS_AT_RISK,
            true,
            KEY_PAIR_MISSING,
            &format!(
                "key pair Secrets are gone; recordings made with them cannot be decrypted until they are restored from a backup (or acknowledge with the annotation kekeeper.io/acknowledge-key-pairs): {}",
                named.join(", ")
            ),
        );
    } else if !recompute {
        conditions.keep(HISTORICAL_KEYS_AT_RISK);
    } else if !next.key_pairs_at_risk.is_empty() {
        conditions.set(
            HISTORICAL_KEYS_AT_RISK,
            true,
            "KmsKeyDisabledOrPendingDeletion",
            &format!(
                "recordings made with key pairs under these KMS keys cannot be decrypted until the key is enabled again: {}",
                next.key_pairs_at_risk.join(", ")
            ),
        );
    } else {
        conditions.set(
            HISTORICAL_KEYS_AT_RISK,
            false,
            "KmsKeysUsable",
            "the KMS keys of all retained key pairs are usable",
        );
    }
    integrity_condition(input, next, conditions);
}

/// KeyPairIntegrity: False while a Secret disagrees with its recorded fingerprint or a pair
/// failed the custody check; absent until there is a key pair.
fn integrity_condition(
    input: &StatusInput,
    next: &RecordingKeyConfigStatus,
    conditions: &mut Conditions,
) {
    let problem = |reason: &str| {
        next.key_pair_problems
            .iter()
            .filter(|p| p.reason == reason)
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
    };
    let mismatches = problem(PUBLIC_KEY_MISMATCH);
    let failed = problem(CUSTODY_CHECK_FAILED);
    let wraps = problem(WRAP_PROOF_FAILED);
    // Acknowledged quarantines stay in status (so they are not proven again) but no longer
    // fail the condition.
    let acknowledged = input.rkc.acknowledged_key_pairs();
    let quarantined: Vec<&str> = next
        .key_pair_problems
        .iter()
        .filter(|p| p.reason == KEY_PAIR_QUARANTINED && !acknowledged.contains(&p.key_pair_id))
        .map(|p| p.message.as_str())
        .collect();
    if !quarantined.is_empty() {
        conditions.set(
            KEY_PAIR_INTEGRITY,
            false,
            KEY_PAIR_QUARANTINED,
            &quarantined.join("; "),
        );
    } else if !failed.is_empty() {
        conditions.set(
            KEY_PAIR_INTEGRITY,
            false,
            CUSTODY_CHECK_FAILED,
            &failed.join("; "),
        );
    } else if !wraps.is_empty() {
        conditions.set(
            KEY_PAIR_INTEGRITY,
            false,
            WRAP_PROOF_FAILED,
            &wraps.join("; "),
        );
    } else if !mismatches.is_empty() {
        conditions.set(
            KEY_PAIR_INTEGRITY,
            false,
            PUBLIC_KEY_MISMATCH,
            &mismatches.join("; "),
        );
    } else if !input.ring.records().is_empty() {
        let mut when = next
            .last_key_verify_time
            .map_or_else(|| "not yet".to_owned(), |t| t.to_string());
        if let Some(read) = &next.last_key_verify_replica_read {
            when = format!("{when}, {read}");
        }
        conditions.set(
            KEY_PAIR_INTEGRITY,
            true,
            "Verified",
            &format!(
                "key pair Secrets agree with the fingerprints recorded in status; last custody check through KMS: {when}"
            ),
        );
    }
}

/// KeyStoreSynced, when the store was listed in this reconcile: every retained pair has its
/// object there, or why not. Without a listing it stays as it was; without a store it is absent.
fn store_condition(input: &StatusInput, conditions: &mut Conditions) {
    let Some(check) = input.store else {
        if conditions.current_reason(KEY_STORE_SYNCED).is_some() {
            conditions.keep(KEY_STORE_SYNCED);
        }
        return;
    };
    let url = &check.url;
    let sync = match &check.result {
        Ok(sync) => sync,
        Err(err) => {
            let message = format!(
                "{err}; missing key pairs are not restored and no new pair becomes active until it answers"
            );
            let reason = if err.code == crate::keystore::CLAIMED {
                "KeyStoreClaimed"
            } else {
                "KeyStoreUnavailable"
            };
            conditions.set(KEY_STORE_SYNCED, false, reason, &message);
            return;
        }
    };
    let retained = input.ring.records().len();
    let stored = (sync.stored + sync.restore.len() + input.store_writes).min(retained);
    let count = format!("{stored}/{retained} key pairs stored in {url}");
    let refused: Vec<String> = sync
        .refused
        .iter()
        .map(|(key, why)| format!("{key}: {why}"))
        .chain(sync.differing.iter().map(|name| {
            format!("{name}: the stored object holds another key pair than the Secret")
        }))
        .collect();
    if !refused.is_empty() {
        let message = format!(
            "objects that fail their checks are not restored; check who wrote them: {}; {count}",
            refused.join("; ")
        );
        conditions.set(KEY_STORE_SYNCED, false, "KeyStoreMismatch", &message);
    } else if let Some(err) = input.store_failure.or(input.store_write_error) {
        conditions.set(
            KEY_STORE_SYNCED,
            false,
            "KeyStoreUnavailable",
            &format!("{err}; {count}"),
        );
    } else if stored < retained {
        conditions.set(KEY_STORE_SYNCED, false, "KeyStoreIncomplete", &count);
    } else {
        conditions.set(KEY_STORE_SYNCED, true, "KeyPairsStored", &count);
    }
}

/// Builds the condition list, keeping `lastTransitionTime` when a condition's status stays.
struct Conditions<'a> {
    current: &'a [Condition],
    next: Vec<Condition>,
    now: Timestamp,
    generation: Option<i64>,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let since = self
            .current
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        self.next.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: since,
            observed_generation: self.generation,
        });
    }

    fn current_reason(&self, type_: &str) -> Option<&str> {
        self.current
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.reason.as_str())
    }

    /// Carries a condition over (now for this generation: nothing in it changed), or
    /// `Unknown` if KMS was never asked.
    fn keep(&mut self, type_: &str) {
        let kept = match self.current.iter().find(|c| c.type_ == type_) {
            Some(existing) => Condition {
                observed_generation: self.generation,
                ..existing.clone()
            },
            None => Condition {
                type_: type_.to_owned(),
                status: "Unknown".to_owned(),
                reason: "NotChecked".to_owned(),
                message: "KMS has not been asked yet".to_owned(),
                last_transition_time: Time(self.now),
                observed_generation: self.generation,
            },
        };
        self.next.push(kept);
    }

    /// In a fixed order, so an unchanged status compares equal.
    fn finish(mut self) -> Vec<Condition> {
        self.next.sort_by_key(|c| {
            ORDER
                .iter()
                .position(|t| *t == c.type_)
                .unwrap_or(usize::MAX)
        });
        self.next
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::controller::custody::CustodyFailure;
    use crate::controller::observe::Tokens;
    use crate::keypair::test_pair;
    use crate::keyring::Reading;
    use crate::kms::KeyPairSpec;

    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn resource() -> RecordingKeyConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": [ORG],
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.metadata.generation = Some(1);
        rkc
    }

    fn pair(sequence: u64, public_key: u8) -> KeyPairRecord {
        let created = ts("2026-01-01T00:00:00Z");
        test_pair(
            ORG,
            sequence,
            KeyPairSpec::Rsa3072,
            vec![public_key; 8],
            created,
        )
    }

    fn ring(records: Vec<KeyPairRecord>, status: Option<&RecordingKeyConfigStatus>) -> KeyRing {
        let reading = Reading {
            acknowledged: BTreeSet::new(),
            pruning: None,
            now: ts("2026-01-02T00:00:00Z"),
        };
        KeyRing::new(records, Tokens::new(), status, &reading).with_all_proven()
    }

    fn input<'a>(
        rkc: &'a RecordingKeyConfig,
        current: Option<&'a RecordingKeyConfigStatus>,
        ring: &'a KeyRing,
    ) -> StatusInput<'a> {
        StatusInput {
            rkc,
            current,
            now: ts("2026-01-02T00:00:00Z"),
            ring,
            custody: None,
            config_error: None,
            key: None,
            kms_failure: None,
            self_test_failure: None,
            last_test: None,
            pending: 0,
            store: None,
            store_writes: 0,
            store_write_error: None,
            store_failure: None,
            honoured_token: None,
            pace: None,
            rewrap: None,
        }
    }

    fn condition<'a>(status: &'a RecordingKeyConfigStatus, type_: &str) -> Option<&'a Condition> {
        status.conditions.iter().find(|c| c.type_ == type_)
    }

    /// A reconcile that wrote its progress (the failure in it) and then its report counts the
    /// failure once: from the status it started on, not from its own earlier write.
    #[test]
    fn a_failure_counts_once_however_many_writes_a_reconcile_makes() {
        let mut rkc = resource();
        rkc.status = Some(RecordingKeyConfigStatus {
            failed_attempts: Some(2),
            ..RecordingKeyConfigStatus::default()
        });
        let own_progress_write = RecordingKeyConfigStatus {
            failed_attempts: Some(3),
            ..RecordingKeyConfigStatus::default()
        };
        let one = ring(vec![pair(1, 1)], None);
        let err = KmsError::new(
            crate::kms::KmsOperation::GenerateDataKeyPairWithoutPlaintext,
            crate::kms::KmsErrorKind::Throttling,
            "slow down",
        );
        let mut failed = input(&rkc, Some(&own_progress_write), &one);
        failed.kms_failure = Some(&err);
        assert_eq!(desired(&failed).failed_attempts, Some(3));
    }

    #[test]
    fn integrity_is_absent_without_pairs_and_verified_with_them() {
        let rkc = resource();
        let empty = ring(Vec::new(), None);
        assert!(condition(&desired(&input(&rkc, None, &empty)), KEY_PAIR_INTEGRITY).is_none());
        let one = ring(vec![pair(1, 1)], None);
        let status = desired(&input(&rkc, None, &one));
        let integrity = condition(&status, KEY_PAIR_INTEGRITY).unwrap();
        assert_eq!(
            (integrity.status.as_str(), integrity.reason.as_str()),
            ("True", "Verified")
        );
        assert_eq!(status.highest_sequences[ORG], 1);
        assert_eq!(
            status.last_key_verify_time,
            Some(ts("2026-01-02T00:00:00Z"))
        );
        // Conditions keep their fixed order, KeyPairIntegrity last.
        assert_eq!(status.conditions.last().unwrap().type_, KEY_PAIR_INTEGRITY);
    }

    /// lastKmsKeyCheckTime is when KMS gave the answer (a shared answer is older than the
    /// reconcile), for a usable and an unusable key alike.
    #[test]
    fn the_key_check_time_is_when_kms_answered() {
        let rkc = resource();
        let empty = ring(Vec::new(), None);
        let description = crate::kms::KeyDescription {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/k1".into(),
            key_id: "k1".into(),
            key_state: "Enabled".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_manager: "CUSTOMER".into(),
            region: "us-east-1".into(),
            multi_region: None,
            age: std::time::Duration::from_secs(1800),
        };
        let asked = ts("2026-01-01T23:30:00Z");
        let usable = KeyCheck::Usable {
            description,
            at_risk: Vec::new(),
            checked_at: asked,
        };
        let status = desired(&StatusInput {
            key: Some(&usable),
            ..input(&rkc, None, &empty)
        });
        assert_eq!(status.last_kms_key_check_time, Some(asked));
        let unusable = KeyCheck::Unusable {
            key_arn: None,
            reason: "DisabledException".into(),
            message: "disabled".into(),
            checked_at: asked,
        };
        let status = desired(&StatusInput {
            key: Some(&unusable),
            ..input(&rkc, None, &empty)
        });
        assert_eq!(status.last_kms_key_check_time, Some(asked));
    }

    /// A key check that changed nothing else keeps the recorded time, until that is a
    /// record period old; any other change writes the new time with it.
    #[test]
    fn a_quiet_key_check_is_written_only_with_another_change_or_after_a_day() {
        let recorded = ts("2026-01-01T00:00:00Z");
        let current = RecordingKeyConfigStatus {
            last_kms_key_check_time: Some(recorded),
            ..RecordingKeyConfigStatus::default()
        };
        let checked = |at: &str| RecordingKeyConfigStatus {
            last_kms_key_check_time: Some(ts(at)),
            ..current.clone()
        };
        let quiet = quiet_key_check(&current, checked("2026-01-01T23:00:00Z"));
        assert_eq!(quiet.last_kms_key_check_time, Some(recorded));
        let day = quiet_key_check(&current, checked("2026-01-02T00:00:00Z"));
        assert_eq!(
            day.last_kms_key_check_time,
            Some(ts("2026-01-02T00:00:00Z"))
        );
        let changed = quiet_key_check(
            &current,
            RecordingKeyConfigStatus {
                kms_key_arn: Some("arn:aws:kms:us-east-1:111122223333:key/k2".into()),
                ..checked("2026-01-01T01:00:00Z")
            },
        );
        assert_eq!(
            changed.last_kms_key_check_time,
            Some(ts("2026-01-01T01:00:00Z"))
        );
    }

    /// While pairs wait at the KMS pace, Reconciling says how long is left; without an
    /// estimate it says only the progress.
    #[test]
    fn reconciling_gives_the_time_left_while_pairs_are_queued() {
        let rkc = resource();
        let ring = ring(vec![], None);
        let pace = PaceEstimate::new(KeyPairSpec::Rsa3072, 0.45, 1, [1, 5]);
        let status = desired(&StatusInput {
            pending: 1,
            pace: Some(pace),
            ..input(&rkc, None, &ring)
        });
        let reconciling = condition(&status, RECONCILING).unwrap();
        assert_eq!(reconciling.status, "True");
        assert!(
            reconciling
                .message
                .starts_with("0/1 organisations have a key pair")
                && reconciling.message.ends_with(
                    "; about 4 s left at 0.45 RSA_3072 pairs/s (6 queued by running reconciles)"
                ),
            "{}",
            reconciling.message
        );
        let status = desired(&StatusInput {
            pending: 1,
            ..input(&rkc, None, &ring)
        });
        let reconciling = condition(&status, RECONCILING).unwrap();
        assert!(
            !reconciling.message.contains("left at"),
            "{}",
            reconciling.message
        );
    }

    #[test]
    fn a_custody_failure_outlives_the_rotation_until_acknowledged() {
        let rkc = resource();
        let failed = pair(1, 1);
        let before = desired(&input(&rkc, None, &ring(vec![failed.clone()], None)));
        let mut checked = ring(vec![failed.clone()], Some(&before));
        checked.fail_custody(&failed.name());
        let check = CustodyCheck {
            verified: 0,
            failures: vec![CustodyFailure {
                secret_name: failed.name(),
                organization_id: ORG.into(),
                key_pair_id: failed.key_pair_id.clone(),
                message: "KMS cannot decrypt privateKey.kms".into(),
            }],
            error: None,
            replica_reads: Vec::new(),
        };
        let after = desired(&StatusInput {
            custody: Some(&check),
            ..input(&rkc, Some(&before), &checked)
        });
        let integrity = condition(&after, KEY_PAIR_INTEGRITY).unwrap();
        assert_eq!(
            (integrity.status.as_str(), integrity.reason.as_str()),
            ("False", CUSTODY_CHECK_FAILED)
        );
        // Next reconcile, after the rotation: the failure is carried from status.
        let mut retired = failed.clone();
        retired.retire(ts("2026-01-02T00:00:00Z"));
        let rotated = ring(vec![retired, pair(2, 2)], Some(&after));
        let later = desired(&input(&rkc, Some(&after), &rotated));
        assert_eq!(later.key_pair_problems, after.key_pair_problems);
        assert_eq!(
            condition(&later, KEY_PAIR_INTEGRITY).unwrap().reason,
            CUSTODY_CHECK_FAILED
        );
    }

    /// A custody check a replica answered says so in status until a check the home Region
    /// answers (docs/design.md, "Multi-Region reads").
    #[test]
    fn a_custody_check_through_a_replica_says_which_region_answered() {
        let rkc = resource();
        let active = pair(1, 1);
        let before = desired(&input(&rkc, None, &ring(vec![active.clone()], None)));
        let checked = ring(vec![active], Some(&before));
        let through_replica = CustodyCheck {
            verified: 1,
            replica_reads: vec![crate::kms::ReplicaRead {
                region: "eu-west-1".into(),
                home_region: "us-east-1".into(),
                home_code: "NetworkError".into(),
            }],
            ..CustodyCheck::default()
        };
        let after = desired(&StatusInput {
            custody: Some(&through_replica),
            ..input(&rkc, Some(&before), &checked)
        });
        let read = after.last_key_verify_replica_read.clone().unwrap();
        assert_eq!(
            (
                read.region.as_str(),
                read.home_region.as_str(),
                read.home_error.as_str()
            ),
            ("eu-west-1", "us-east-1", "NetworkError")
        );
        let integrity = condition(&after, KEY_PAIR_INTEGRITY).unwrap();
        assert_eq!(integrity.status, "True");
        assert!(
            integrity.message.ends_with(
                ", through replica in eu-west-1: the home Region us-east-1 failed with NetworkError"
            ),
            "{}",
            integrity.message
        );
        // A reconcile without a check keeps it; a check the home Region answered clears it.
        let later = desired(&input(&rkc, Some(&after), &checked));
        assert_eq!(later.last_key_verify_replica_read, Some(read));
        let home = CustodyCheck {
            verified: 1,
            ..CustodyCheck::default()
        };
        let cleared = desired(&StatusInput {
            custody: Some(&home),
            ..input(&rkc, Some(&later), &checked)
        });
        assert_eq!(cleared.last_key_verify_replica_read, None);
        let integrity = condition(&cleared, KEY_PAIR_INTEGRITY).unwrap();
        assert!(
            !integrity.message.contains("replica"),
            "{}",
            integrity.message
        );
    }

    #[test]
    fn missing_pairs_are_at_risk_and_clear_when_restored() {
        let rkc = resource();
        let first = pair(1, 1);
        let before = desired(&input(&rkc, None, &ring(vec![first.clone()], None)));
        let gone = desired(&input(
            &rkc,
            Some(&before),
            &ring(Vec::new(), Some(&before)),
        ));
        let at_risk = condition(&gone, HISTORICAL_KEYS_AT_RISK).unwrap();
        assert_eq!(
            (at_risk.status.as_str(), at_risk.reason.as_str()),
            ("True", KEY_PAIR_MISSING)
        );
        assert!(at_risk.message.contains(&first.name()) && at_risk.message.contains(ORG));
        assert!(gone.key_pair_history[0].missing);
        let restored = desired(&input(&rkc, Some(&gone), &ring(vec![first], Some(&gone))));
        let at_risk = condition(&restored, HISTORICAL_KEYS_AT_RISK).unwrap();
        assert_eq!(at_risk.status, "False");
        assert!(restored.key_pair_problems.is_empty());
        assert!(!restored.key_pair_history[0].missing);
    }

    /// Rewrapped follows the ring against the current key: pending with progress, disabled
    /// under Never, True once every retained pair has a proven wrap; kmsKeys counts per key.
    #[test]
    fn rewrapped_reports_progress_per_kms_key() {
        const K1: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";
        const K2: &str = "arn:aws:kms:us-east-1:111122223333:key/k2";
        let mut rkc = resource();
        let current = RecordingKeyConfigStatus {
            kms_key_arn: Some(K2.into()),
            ..RecordingKeyConfigStatus::default()
        };
        let mut one = ring(vec![pair(1, 1), pair(2, 2), pair(3, 3)], None);
        let names: Vec<String> = one
            .records()
            .iter()
            .map(|r| r.secret_name.clone())
            .collect();
        one.prove_wrap(&names[0], K2, ts("2026-01-02T00:00:00Z"));
        let status = desired(&input(&rkc, Some(&current), &one));
        let rewrapped = condition(&status, REWRAPPED).unwrap();
        assert_eq!(
            (rewrapped.status.as_str(), rewrapped.reason.as_str()),
            ("False", "RewrapPending")
        );
        assert_eq!(
            rewrapped.message,
            format!("1/3 retained key pairs rewrapped onto {K2}; 2 still depend only on {K1}")
        );
        assert_eq!(
            status.kms_keys,
            vec![
                KmsKeyUse {
                    kms_key_arn: K1.into(),
                    key_pairs: 2
                },
                KmsKeyUse {
                    kms_key_arn: K2.into(),
                    key_pairs: 1
                },
            ]
        );
        let entry = status
            .key_pair_history
            .iter()
            .find(|e| e.secret_name == names[0])
            .unwrap();
        assert_eq!(entry.kms_key_arn, K1, "the original key stays recorded");
        assert_eq!(entry.rewrapped_kms_key_arn.as_deref(), Some(K2));

        rkc.spec.rewrap = crate::crd::RewrapPolicy::Never;
        let status = desired(&input(&rkc, Some(&current), &one));
        assert_eq!(
            condition(&status, REWRAPPED).unwrap().reason,
            "RewrapDisabled"
        );

        for name in &names[1..] {
            one.prove_wrap(name, K2, ts("2026-01-02T00:00:00Z"));
        }
        let status = desired(&input(&rkc, Some(&current), &one));
        let rewrapped = condition(&status, REWRAPPED).unwrap();
        assert_eq!(
            (rewrapped.status.as_str(), rewrapped.reason.as_str()),
            ("True", "Rewrapped")
        );
        assert_eq!(
            status.kms_keys,
            vec![KmsKeyUse {
                kms_key_arn: K2.into(),
                key_pairs: 3
            }]
        );
    }

    /// Key pair Secrets status does not record (past historyLimit) cannot be rewrapped: the
    /// condition says so and kmsKeys keeps their key listed, so it does not look unused.
    #[test]
    fn unrecorded_pairs_keep_their_key_listed() {
        const K1: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";
        const K2: &str = "arn:aws:kms:us-east-1:111122223333:key/k2";
        let rkc = resource();
        let records = vec![pair(1, 1), pair(2, 2)];
        let recorded = RecordingKeyConfigStatus {
            kms_key_arn: Some(K2.into()),
            key_pair_history: vec![records[1].to_history_entry()],
            ..RecordingKeyConfigStatus::default()
        };
        let reading = Reading {
            acknowledged: BTreeSet::new(),
            pruning: None,
            now: ts("2026-01-02T00:00:00Z"),
        };
        let mut one = KeyRing::new(records.clone(), Tokens::new(), Some(&recorded), &reading);
        one.prove_wrap(&records[1].secret_name, K2, ts("2026-01-02T00:00:00Z"));
        let status = desired(&input(&rkc, Some(&recorded), &one));
        let rewrapped = condition(&status, REWRAPPED).unwrap();
        assert_eq!(
            rewrapped.reason, "KeyPairsNotRecorded",
            "{}",
            rewrapped.message
        );
        assert!(rewrapped.message.contains(&format!("1 more key pair Secrets are not recorded in status (older than spec.historyLimit 10, or not yet proven) and stay under {K1}")), "{}", rewrapped.message);
        assert_eq!(
            status.kms_keys,
            vec![
                KmsKeyUse {
                    kms_key_arn: K1.into(),
                    key_pairs: 1
                },
                KmsKeyUse {
                    kms_key_arn: K2.into(),
                    key_pairs: 1
                },
            ]
        );
    }
}
