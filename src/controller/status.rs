//! The status kekeeper would write, computed from the key pair records and what KMS said in
//! this reconcile; compared with the current status so an unchanged one is never patched.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::active_by_org;
use crate::crd::{LastKmsError, LastTest, RecordingKeyConfig, RecordingKeyConfigStatus};
use crate::keypair::KeyPairRecord;
use crate::kms::KeyDescription;
use crate::policy::{self, ReadinessInput};

pub const READY: &str = "Ready";
pub const KMS_AVAILABLE: &str = "KmsAvailable";
pub const CONFIG_VALID: &str = "ConfigValid";
pub const HISTORICAL_KEYS_AT_RISK: &str = "HistoricalKeysAtRisk";

/// What this reconcile learnt from KMS.
#[derive(Clone, Debug)]
pub enum KmsObservation<'a> {
    /// No KMS call was made: keep what status says.
    Unchanged,
    /// DescribeKey (and any generation) succeeded. `complete` is false when a rotation was
    /// left undone (a self-test failed for a reason other than KMS).
    Checked {
        description: &'a KeyDescription,
        at_risk: Vec<String>,
        last_test: Option<LastTest>,
        complete: bool,
    },
    /// KMS answered, but its key cannot root recording keys (`validate_key`).
    KeyProblem {
        description: &'a KeyDescription,
        reason: &'static str,
        message: &'a str,
        at_risk: Vec<String>,
    },
    /// A KMS call failed.
    Failed {
        error: LastKmsError,
        last_test: Option<LastTest>,
    },
}

pub struct StatusInput<'a> {
    pub rkc: &'a RecordingKeyConfig,
    pub records: &'a [KeyPairRecord],
    pub now: Timestamp,
    /// `config::validate`'s error (field and fix), when the spec is invalid.
    pub config_error: Option<&'a str>,
    pub kms: KmsObservation<'a>,
    pub check_interval: SignedDuration,
    pub honoured_token: Option<String>,
}

/// Whether the last KMS interaction failed (then the next reconcile asks KMS again).
pub fn kms_unavailable(status: &RecordingKeyConfigStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == KMS_AVAILABLE && c.status == "False")
}

pub fn desired(input: &StatusInput) -> RecordingKeyConfigStatus {
    let rkc = input.rkc;
    let current = rkc.status.clone().unwrap_or_default();
    let generation = rkc.metadata.generation;
    let mut next = RecordingKeyConfigStatus {
        observed_generation: generation,
        organization_count: Some(rkc.spec.organization_ids.len() as u32),
        rotate_now_token: input.honoured_token.clone(),
        last_kms_error: current.last_kms_error.clone(),
        last_test: current.last_test.clone(),
        kms_key_arn: current.kms_key_arn.clone(),
        kms_key_alias_arn: current.kms_key_alias_arn.clone(),
        last_kms_key_check_time: current.last_kms_key_check_time,
        key_pairs_at_risk: current.key_pairs_at_risk.clone(),
        ..RecordingKeyConfigStatus::default()
    };
    let mut conditions = Conditions {
        current: &current.conditions,
        next: Vec::new(),
        now: input.now,
        generation,
    };

    // KmsAvailable, ConfigValid, HistoricalKeysAtRisk.
    let mut config_valid: Option<(bool, String, String)> = None;
    match &input.kms {
        KmsObservation::Unchanged => {
            conditions.keep(KMS_AVAILABLE);
            conditions.keep(HISTORICAL_KEYS_AT_RISK);
        }
        KmsObservation::Checked {
            description,
            at_risk,
            last_test,
            complete,
        } => {
            conditions.set(
                KMS_AVAILABLE,
                true,
                "KmsReachable",
                "the last KMS calls succeeded",
            );
            config_valid = Some((
                true,
                "KmsKeyValid".to_owned(),
                format!(
                    "alias resolves to {}: enabled, symmetric, ENCRYPT_DECRYPT, in the home region",
                    description.key_arn
                ),
            ));
            at_risk_condition(&mut conditions, at_risk);
            next.key_pairs_at_risk = at_risk.clone();
            next.kms_key_arn = Some(description.key_arn.clone());
            next.last_kms_key_check_time = Some(input.now);
            if let Some(test) = last_test {
                next.last_test = Some(test.clone());
            }
            if *complete {
                next.kms_key_alias_arn = Some(rkc.spec.kms_key_alias_arn.clone());
            }
        }
        KmsObservation::KeyProblem {
            description,
            reason,
            message,
            at_risk,
        } => {
            conditions.set(
                KMS_AVAILABLE,
                true,
                "KmsReachable",
                "the last KMS calls succeeded",
            );
            config_valid = Some((false, (*reason).to_owned(), (*message).to_owned()));
            at_risk_condition(&mut conditions, at_risk);
            next.key_pairs_at_risk = at_risk.clone();
            next.kms_key_arn = Some(description.key_arn.clone());
            next.last_kms_key_check_time = Some(input.now);
        }
        KmsObservation::Failed { error, last_test } => {
            conditions.set(
                KMS_AVAILABLE,
                false,
                &error.code,
                &format!("{}: {}", error.operation, error.message),
            );
            conditions.keep(HISTORICAL_KEYS_AT_RISK);
            next.last_kms_error = Some(error.clone());
            if let Some(test) = last_test {
                next.last_test = Some(test.clone());
            }
        }
    }
    if let Some(message) = input.config_error {
        config_valid = Some((false, "InvalidSpec".to_owned(), message.to_owned()));
    }
    let config_problem = match &config_valid {
        Some((status, reason, message)) => {
            conditions.set(CONFIG_VALID, *status, reason, message);
            (!status).then(|| format!("{reason}: {message}"))
        }
        None => {
            conditions.keep(CONFIG_VALID);
            current
                .conditions
                .iter()
                .find(|c| c.type_ == CONFIG_VALID && c.status == "False")
                .map(|c| format!("{}: {}", c.reason, c.message))
        }
    };

    // Key pairs.
    let active = active_by_org(input.records);
    let wanted = &rkc.spec.organization_ids;
    next.active_key_pairs = wanted
        .iter()
        .filter_map(|org| active.get(org.as_str()))
        .map(|r| r.to_active_key_pair())
        .collect();
    let mut history: Vec<&KeyPairRecord> = input.records.iter().collect();
    history.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.sequence.cmp(&a.sequence))
            .then(a.organization_id.cmp(&b.organization_id))
    });
    next.key_pair_history = history
        .into_iter()
        .take(rkc.spec.history_limit.clamp(1, 100) as usize)
        .map(KeyPairRecord::to_history_entry)
        .collect();
    let in_spec = active
        .iter()
        .filter(|(org, _)| wanted.iter().any(|w| w == *org))
        .map(|(_, r)| *r);
    next.last_rotation_time = in_spec.clone().map(|r| r.created_at).max();
    next.next_rotation_time = in_spec
        .filter_map(|r| policy::rotation_due(r.created_at, rkc.spec.rotation.period))
        .min();

    // Ready, from the readiness chain.
    let (ready, reason, message) = policy::readiness(&ReadinessInput {
        config_error: config_problem.as_deref(),
        key_problem: None,
        organizations: wanted.len(),
        organizations_with_active_pair: next.active_key_pairs.len(),
        suspended: rkc.spec.suspend,
    });
    conditions.set(READY, ready, reason, &message);

    let _ = input.check_interval;
    next.conditions = conditions.finish();
    next
}

fn at_risk_condition(conditions: &mut Conditions, at_risk: &[String]) {
    if at_risk.is_empty() {
        conditions.set(
            HISTORICAL_KEYS_AT_RISK,
            false,
            "KmsKeysUsable",
            "the KMS keys of all retained key pairs are usable",
        );
    } else {
        conditions.set(
            HISTORICAL_KEYS_AT_RISK,
            true,
            "KmsKeyDisabledOrPendingDeletion",
            &format!(
                "recordings made with key pairs under these KMS keys cannot be decrypted until the key is enabled again: {}",
                at_risk.join(", ")
            ),
        );
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

    /// Carries a condition over unchanged, or `Unknown` if there is none yet.
    fn keep(&mut self, type_: &str) {
        match self.current.iter().find(|c| c.type_ == type_) {
            Some(existing) => self.next.push(existing.clone()),
            None => self.next.push(Condition {
                type_: type_.to_owned(),
                status: "Unknown".to_owned(),
                reason: "NotChecked".to_owned(),
                message: "KMS has not been asked yet".to_owned(),
                last_transition_time: Time(self.now),
                observed_generation: self.generation,
            }),
        }
    }

    /// In a fixed order, so an unchanged status compares equal.
    fn finish(mut self) -> Vec<Condition> {
        let order = [READY, KMS_AVAILABLE, CONFIG_VALID, HISTORICAL_KEYS_AT_RISK];
        self.next.sort_by_key(|c| {
            order
                .iter()
                .position(|t| *t == c.type_)
                .unwrap_or(usize::MAX)
        });
        self.next
    }
}
