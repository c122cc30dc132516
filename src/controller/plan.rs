//! Plan: a pure function of the observation and the clock that says what to do next. No I/O,
//! so every decision is tested with plain values.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::observe::{KeyCheck, Observation, Tokens};
use crate::crd::{ANNOTATION_ROTATE_NOW, RecordingKeyConfig};
use crate::keypair::{KeyPairRecord, KeyPairState};
use crate::policy::{self, ActivePair, RotationInput, RotationReason};

/// What the reconcile does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `spec.suspend`: report, nothing else.
    Suspended,
    /// The spec is invalid (field and fix): report; wait for a change.
    ConfigInvalid(String),
    /// A recent failure's backoff runs until then: no KMS call, no write.
    WaitBackoff(Timestamp),
    /// Work is due, but the key pairs came from the cache: list them fresh, then plan again.
    ListRecords,
    /// KMS must be asked about the key first, then plan again.
    CheckKey,
    /// KMS failed or the key cannot be used: report only; the active pairs stay.
    Blocked,
    /// Generate, retire and prune as listed (nothing at all in steady state).
    Execute,
}

/// One organisation's new key pair, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub organization_id: String,
    pub reason: RotationReason,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    pub rotations: Vec<Rotation>,
    /// Active pairs (Secret names) to retire: organisations removed from the spec, and pairs
    /// shadowed by a newer active pair of the same organisation.
    pub retire: Vec<String>,
    /// Retired pairs (Secret names) past `recordingRetention`.
    pub prune: Vec<String>,
    /// The rotate-now token (the annotation's) honoured once every rotation is done.
    pub token: Option<String>,
}

/// Decides on `obs` at `now`; `check_interval` is how often KMS is asked about the key when
/// nothing else is due.
pub fn plan(obs: &Observation, now: Timestamp, check_interval: SignedDuration) -> Plan {
    let rkc = obs.rkc.as_ref();
    let status = rkc.status.clone().unwrap_or_default();
    let mut plan = Plan {
        step: Step::Execute,
        rotations: Vec::new(),
        retire: Vec::new(),
        prune: Vec::new(),
        token: rotate_now_token(rkc).map(str::to_owned),
    };
    if let Ok(config) = &obs.config {
        plan.rotations = rotations(obs, &config.organization_ids, now);
        plan.retire = retire(&config.organization_ids, &obs.records);
        plan.prune = prunable(retention(rkc), &obs.records, now);
    }
    if rkc.spec.suspend {
        plan.step = Step::Suspended;
        return plan;
    }
    if let Err(message) = &obs.config {
        plan.step = Step::ConfigInvalid(message.clone());
        return plan;
    }

    let new_generation = status.observed_generation != rkc.metadata.generation;
    let backoff = policy::backoff_until(
        status.failed_attempts.unwrap_or(0),
        status.last_failure_time,
    );
    let work_due = !plan.rotations.is_empty() || !plan.retire.is_empty() || !plan.prune.is_empty();
    let key_due = obs.key.is_none()
        && (new_generation
            || !plan.rotations.is_empty()
            || status.failed_attempts.unwrap_or(0) > 0
            || policy::kms_key_check_due(status.last_kms_key_check_time, check_interval, now));
    plan.step = match backoff {
        Some(until) if now < until && !new_generation && obs.key.is_none() => {
            Step::WaitBackoff(until)
        }
        _ if (work_due || key_due) && !obs.records_listed => Step::ListRecords,
        _ if key_due => Step::CheckKey,
        _ => match &obs.key {
            Some(KeyCheck::Unusable { .. } | KeyCheck::Failed(_)) => Step::Blocked,
            _ => Step::Execute,
        },
    };
    plan
}

/// Which organisations need a new key pair and why (the rotation policy chain).
fn rotations(obs: &Observation, organizations: &[String], now: Timestamp) -> Vec<Rotation> {
    let rkc = obs.rkc.as_ref();
    let status = rkc.status.as_ref();
    let active = active_by_org(&obs.records);
    let requested = rotate_now_token(rkc);
    let Ok(config) = &obs.config else {
        return Vec::new();
    };
    organizations
        .iter()
        .filter_map(|org| {
            let pair = active.get(org.as_str());
            let input = RotationInput {
                now,
                active: pair.map(|r| ActivePair {
                    created_at: r.created_at,
                    kms_key_arn: &r.kms_key_arn,
                    key_pair_spec: r.key_pair_spec,
                    encryption_context_key: &r.encryption_context.key,
                }),
                alias_arn: config.alias.as_str(),
                active_alias_arn: status.and_then(|s| s.kms_key_alias_arn.as_deref()),
                alias_key_arn: obs.alias_key_arn(),
                key_pair_spec: config.key_pair_spec,
                encryption_context_key: &config.encryption_context_key,
                period: rkc.spec.rotation.period,
                on_kms_key_change: rkc.spec.rotation.on_kms_key_change,
                rotate_now_token: requested,
                honoured_token: honoured(pair.copied(), &obs.tokens, requested, status),
            };
            policy::rotation_needed(&input).map(|(reason, message)| Rotation {
                organization_id: org.clone(),
                reason,
                message,
            })
        })
        .collect()
}

/// The token honoured for one organisation: in status, or already by its active pair (a
/// rotation whose status write was lost).
fn honoured<'a>(
    pair: Option<&KeyPairRecord>,
    tokens: &'a Tokens,
    requested: Option<&'a str>,
    status: Option<&'a crate::crd::RecordingKeyConfigStatus>,
) -> Option<&'a str> {
    match pair.and_then(|r| tokens.get(&r.name())) {
        Some(token) if Some(token.as_str()) == requested => requested,
        _ => status.and_then(|s| s.rotate_now_token.as_deref()),
    }
}

pub fn rotate_now_token(rkc: &RecordingKeyConfig) -> Option<&str> {
    rkc.annotations()
        .get(ANNOTATION_ROTATE_NOW)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

/// The active record per organisation (the newest, should there ever be two).
pub fn active_by_org(records: &[KeyPairRecord]) -> BTreeMap<&str, &KeyPairRecord> {
    let mut active: BTreeMap<&str, &KeyPairRecord> = BTreeMap::new();
    for record in records.iter().filter(|r| r.state == KeyPairState::Active) {
        let slot = active
            .entry(record.organization_id.as_str())
            .or_insert(record);
        if record.sequence > slot.sequence {
            *slot = record;
        }
    }
    active
}

/// Active pairs to retire: those of organisations no longer in the spec, and any active pair
/// shadowed by a newer active one of the same organisation (left by an interrupted rotation).
pub fn retire(organizations: &[String], records: &[KeyPairRecord]) -> Vec<String> {
    let wanted: BTreeSet<&str> = organizations.iter().map(String::as_str).collect();
    let newest = active_by_org(records);
    records
        .iter()
        .filter(|r| r.state == KeyPairState::Active)
        .filter(|r| {
            !wanted.contains(r.organization_id.as_str())
                || newest
                    .get(r.organization_id.as_str())
                    .is_some_and(|n| n.sequence != r.sequence)
        })
        .map(KeyPairRecord::name)
        .collect()
}

/// Retired pairs past `recordingRetention` (only when the user set it).
pub fn prunable(
    retention: Option<SignedDuration>,
    records: &[KeyPairRecord],
    now: Timestamp,
) -> Vec<String> {
    let Some(retention) = retention else {
        return Vec::new();
    };
    records
        .iter()
        .filter(|r| r.state == KeyPairState::Retired)
        .filter(|r| {
            r.retired_at
                .and_then(|at| policy::prune_due(at, retention))
                .is_some_and(|due| now >= due)
        })
        .map(KeyPairRecord::name)
        .collect()
}

pub fn retention(rkc: &RecordingKeyConfig) -> Option<SignedDuration> {
    rkc.spec
        .recording_retention
        .as_deref()
        .and_then(|r| policy::parse_retention(r).ok())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config;
    use crate::crd::{LastKmsError, RecordingKeyConfigStatus};
    use crate::kms::{EncryptionContext, GeneratedKeyPair, KeyPairSpec, KmsError};
    use crate::kms::{KmsErrorKind, KmsOperation};

    const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";
    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn resource(generation: i64, status: Option<RecordingKeyConfigStatus>) -> RecordingKeyConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": ALIAS, "organizationIds": [ORG], "keyPairSpec": "RSA_2048",
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.metadata.namespace = Some("telephony".into());
        rkc.metadata.generation = Some(generation);
        rkc.status = status;
        rkc
    }

    fn record(created: &str) -> KeyPairRecord {
        KeyPairRecord::new_active(
            "recordings",
            "telephony",
            1,
            GeneratedKeyPair {
                kms_key_arn: KEY.into(),
                spec: KeyPairSpec::Rsa2048,
                public_key_der: vec![1, 2, 3],
                private_key_ciphertext: vec![4, 5, 6],
            },
            EncryptionContext {
                key: "genesys-cloud-organization-id".into(),
                organization_id: ORG.into(),
            },
            ts(created),
            "NoActiveKeyPair",
        )
    }

    /// A resource whose one pair is active and whose status is current at generation 1.
    fn steady_status(checked: &str) -> RecordingKeyConfigStatus {
        RecordingKeyConfigStatus {
            observed_generation: Some(1),
            kms_key_alias_arn: Some(ALIAS.into()),
            kms_key_arn: Some(KEY.into()),
            last_kms_key_check_time: Some(ts(checked)),
            ..RecordingKeyConfigStatus::default()
        }
    }

    fn observe(rkc: RecordingKeyConfig, records: Vec<KeyPairRecord>) -> Observation {
        Observation {
            config: config::validate(&rkc.spec, None).map_err(|e| e.to_string()),
            rkc: Arc::new(rkc),
            namespace: "telephony".into(),
            name: "recordings".into(),
            records,
            tokens: Tokens::new(),
            records_listed: false,
            key: None,
        }
    }

    const NOW: &str = "2026-01-15T10:00:00Z";

    #[test]
    fn steady_state_does_nothing_and_asks_nobody() {
        let obs = observe(
            resource(1, Some(steady_status("2026-01-15T09:30:00Z"))),
            vec![record("2026-01-10T00:00:00Z")],
        );
        let plan = plan(&obs, ts(NOW), HOUR);
        assert_eq!(plan.step, Step::Execute);
        assert!(plan.rotations.is_empty() && plan.retire.is_empty() && plan.prune.is_empty());
    }

    #[test]
    fn a_new_resource_lists_then_checks_the_key_then_creates() {
        let mut obs = observe(resource(1, None), Vec::new());
        let first = plan(&obs, ts(NOW), HOUR);
        assert_eq!(first.step, Step::ListRecords);
        assert_eq!(first.rotations[0].reason, RotationReason::NoActiveKeyPair);
        obs.records_listed = true;
        assert_eq!(plan(&obs, ts(NOW), HOUR).step, Step::CheckKey);
        obs.key = Some(KeyCheck::Failed(KmsError::new(
            KmsOperation::DescribeKey,
            KmsErrorKind::Timeout,
            "slow",
        )));
        assert_eq!(plan(&obs, ts(NOW), HOUR).step, Step::Blocked);
    }

    #[test]
    fn the_key_check_is_due_after_the_interval_and_after_a_new_generation() {
        let records = vec![record("2026-01-10T00:00:00Z")];
        let stale_check = observe(
            resource(1, Some(steady_status("2026-01-15T08:59:59Z"))),
            records.clone(),
        );
        assert_eq!(plan(&stale_check, ts(NOW), HOUR).step, Step::ListRecords);
        let new_generation = observe(
            resource(2, Some(steady_status("2026-01-15T09:30:00Z"))),
            records,
        );
        assert_eq!(plan(&new_generation, ts(NOW), HOUR).step, Step::ListRecords);
    }

    #[test]
    fn backoff_from_status_holds_kms_back_until_it_ends_or_the_spec_changes() {
        let failing = RecordingKeyConfigStatus {
            failed_attempts: Some(2),
            last_failure_time: Some(ts("2026-01-15T09:59:55Z")),
            last_kms_error: Some(LastKmsError {
                time: ts("2026-01-15T09:59:55Z"),
                operation: "DescribeKey".into(),
                code: "ThrottlingException".into(),
                message: "slow down".into(),
                resolved_at: None,
            }),
            ..steady_status("2026-01-15T09:30:00Z")
        };
        let records = vec![record("2026-01-10T00:00:00Z")];
        let obs = observe(resource(1, Some(failing.clone())), records.clone());
        // 2 failures: 10 s from the last one.
        assert_eq!(
            plan(&obs, ts(NOW), HOUR).step,
            Step::WaitBackoff(ts("2026-01-15T10:00:05Z"))
        );
        // Once it is over, the key is checked again at once (not at the next hourly check).
        assert_eq!(
            plan(&obs, ts("2026-01-15T10:00:05Z"), HOUR).step,
            Step::ListRecords
        );
        // A new generation is acted on at once.
        let changed = observe(resource(2, Some(failing)), records);
        assert_eq!(plan(&changed, ts(NOW), HOUR).step, Step::ListRecords);
    }

    #[test]
    fn suspend_and_invalid_config_stop_before_anything_else() {
        let mut suspended = resource(1, None);
        suspended.spec.suspend = true;
        assert_eq!(
            plan(&observe(suspended, Vec::new()), ts(NOW), HOUR).step,
            Step::Suspended
        );
        let mut invalid = resource(1, None);
        invalid.spec.home_region = Some("eu-west-1".into());
        let step = plan(&observe(invalid, Vec::new()), ts(NOW), HOUR).step;
        assert!(matches!(step, Step::ConfigInvalid(m) if m.contains("homeRegion")));
    }

    #[test]
    fn rotate_now_token_is_planned_once() {
        let mut rkc = resource(1, Some(steady_status("2026-01-15T09:30:00Z")));
        rkc.annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW.into(), "t1".into());
        let obs = observe(rkc.clone(), vec![record("2026-01-10T00:00:00Z")]);
        let planned = plan(&obs, ts(NOW), HOUR);
        assert_eq!(
            planned.rotations[0].reason,
            RotationReason::RotateNowRequested
        );
        assert_eq!(planned.token.as_deref(), Some("t1"));
        rkc.status.as_mut().unwrap().rotate_now_token = Some("t1".into());
        let honoured = observe(rkc, vec![record("2026-01-10T00:00:00Z")]);
        assert!(plan(&honoured, ts(NOW), HOUR).rotations.is_empty());
    }
}
