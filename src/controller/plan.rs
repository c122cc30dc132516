//! Plan: a pure function of the observation and the clock that says what to do next. No I/O,
//! so every decision is tested with plain values.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use super::context::Settings;
use super::observe::{KeyCheck, Observation};
use super::rewrap;
use super::status::KEY_STORE_SYNCED;
use crate::crd::RecordingKeyConfig;
use crate::keyring::{KEY_PAIR_MISSING, KeyRing};
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
    /// Work is due, or a key pair seems to be missing, but the key pairs came from the cache:
    /// list them fresh, then plan again.
    ListRecords,
    /// KMS must be asked about the key first, then plan again.
    CheckKey,
    /// The active pairs' private key blobs are due for the custody check, then plan again.
    VerifyCustody,
    /// The key store must be compared with the Secrets first (work is due, pairs are missing,
    /// or it is not known to hold every pair), then plan again.
    ListStore,
    /// Candidate pairs (`Plan::prove`) must be proven through KMS before anything relies on
    /// them, then plan again (docs/design.md, "Proof before publication").
    Prove,
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
    /// Retired pairs (Secret names) past `recordingRetention` and the rotation-period floor.
    pub prune: Vec<String>,
    /// The rotate-now token (the annotation's) honoured once every rotation is done.
    pub token: Option<String>,
    /// Candidate pairs (Secret names) to prove through KMS: Secrets and store objects status
    /// has not recorded that would become active, and retired Secrets the store lacks.
    pub prove: Vec<String>,
    /// Pairs (Secret names) the key store holds and the cluster lost, trusted, whose Secrets
    /// execute creates before anything new is made.
    pub restore: Vec<String>,
    /// Retained pairs (Secret names) to rewrap onto the alias's current KMS key in this
    /// reconcile, at most [`rewrap::BATCH`] (docs/design.md, "Rewrap").
    pub rewrap: Vec<String>,
}

/// Decides on `obs` at `now`; the settings say how often KMS is asked about the key and about
/// the active pairs' private keys when nothing else is due.
pub fn plan(obs: &Observation, now: Timestamp, settings: &Settings) -> Plan {
    let rkc = obs.rkc.as_ref();
    let status = rkc.status.clone().unwrap_or_default();
    let mut plan = Plan {
        step: Step::Execute,
        rotations: Vec::new(),
        retire: Vec::new(),
        prune: Vec::new(),
        token: rkc.rotate_now_token().map(str::to_owned),
        prove: Vec::new(),
        restore: Vec::new(),
        rewrap: Vec::new(),
    };
    if let Ok(config) = &obs.config {
        plan.rotations = rotations(obs, &config.organization_ids, now);
        plan.retire = obs.ring.to_retire(&config.organization_ids);
        plan.prune = obs.ring.prunable(now);
        plan.prove = to_prove(obs, &config.organization_ids);
        plan.restore = to_restore(obs);
        plan.rewrap = rewrap::batch(rkc, &obs.ring, obs.alias_key_arn());
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
    let work_due = !plan.rotations.is_empty()
        || !plan.retire.is_empty()
        || !plan.prune.is_empty()
        || newly_missing(&obs.ring, &status);
    // A proof needs the blobs (a fresh list) and the key the alias resolves to now.
    let prove_due = obs.proofs.is_none() && !plan.prove.is_empty();
    // So does a rewrap; a rewrap-now token is answered from a fresh key check too.
    let rewrap_due = !plan.rewrap.is_empty();
    let key_due = obs.key.is_none()
        && (new_generation
            || prove_due
            || rewrap_due
            || rewrap::unhonoured_token(rkc).is_some()
            || !plan.rotations.is_empty()
            || status.failed_attempts.unwrap_or(0) > 0
            || policy::kms_key_check_due(
                status.last_kms_key_check_time,
                settings.kms_key_check_interval,
                now,
            ));
    let custody_due =
        obs.custody.is_none() && custody_due(&obs.ring, rkc, settings.key_verify_interval, now);
    // Before anything new is made, the store may hold the pairs (docs/design.md, "The key
    // store"); it is also read until status says it holds every pair.
    let store_due = obs.store.is_none()
        && settings.key_store.as_ref().is_some_and(|url| {
            work_due
                || custody_due
                || !obs.ring.missing().is_empty()
                || !store_synced(&status, &url.to_string())
        });
    // The backoff is for automatic retries: a rotate-now token neither honoured nor tried yet
    // gets one attempt at once; its failure starts the next backoff (docs/design.md, "Backoff
    // lives in status").
    let untried_token = rkc.rotate_now_token().is_some_and(|token| {
        status.rotate_now_token.as_deref() != Some(token)
            && status.failed_rotate_now_token.as_deref() != Some(token)
    });
    plan.step = match backoff {
        Some(until) if now < until && !new_generation && !untried_token && obs.key.is_none() => {
            Step::WaitBackoff(until)
        }
        // The key check reads only what the cache has (the retained pairs' KMS keys): a list
        // only when there is work or the custody check needs the blobs (docs/design.md, "A
        // quiet steady state").
        _ if (work_due || custody_due || store_due || prove_due || rewrap_due)
            && !obs.records_listed() =>
        {
            Step::ListRecords
        }
        // After the key check, whose announcement would otherwise count a store failure once
        // more than the report does.
        _ if key_due => Step::CheckKey,
        _ if store_due => Step::ListStore,
        _ => match &obs.key {
            // A key check the home Region could not answer (unreachable, throttling, ...) is
            // no verdict on the pairs: a multi-Region key's custody check still reads their
            // blobs, under the keys status recorded, through its replicas (docs/design.md,
            // "Multi-Region reads").
            Some(KeyCheck::Failed(err))
                if custody_due
                    && err.kind.is_transient()
                    && status
                        .kms_key_arn
                        .as_deref()
                        .is_some_and(crate::kms::is_multi_region_key) =>
            {
                Step::VerifyCustody
            }
            Some(KeyCheck::Unusable { .. } | KeyCheck::Failed(_)) => Step::Blocked,
            _ if prove_due => Step::Prove,
            // A KMS failure that is no verdict: the candidates stay candidates, and nothing
            // is made or published on a view that may change once they are proven.
            _ if obs.proofs.as_ref().is_some_and(|p| p.error.is_some()) => Step::Blocked,
            _ if custody_due => Step::VerifyCustody,
            _ if obs.custody.as_ref().is_some_and(|c| c.error.is_some()) => Step::Blocked,
            // Nothing new is made while the store cannot say what it holds.
            _ if obs.store.as_ref().is_some_and(|s| s.result.is_err()) => Step::Blocked,
            _ => Step::Execute,
        },
    };
    plan
}

/// The candidates to prove: pairs labelled active that status has not recorded (Secrets, and
/// objects the store could restore), retired Secrets the store lacks (written there only
/// once proven), and the wraps of pairs the store restores. Quarantined pairs are not proven
/// again while they hold the same public key.
fn to_prove(obs: &Observation, organizations: &[String]) -> Vec<String> {
    let ring = &obs.ring;
    let mut names: Vec<String> = ring
        .candidates(organizations)
        .into_iter()
        .map(|r| r.secret_name.clone())
        .collect();
    if let Some(sync) = obs.store_sync() {
        let unproven_retired = ring.records().iter().filter(|r| {
            r.state == crate::keypair::KeyPairState::Retired
                && sync.unstored.contains(&r.secret_name)
                && !ring.is_trusted(r)
                && !ring.is_quarantined(r)
        });
        names.extend(unproven_retired.map(|r| r.secret_name.clone()));
        // Pairs the store restores with wraps: no wrap is published unproven, even with a
        // trusted pair (docs/design.md, "The key store", wrap objects).
        let wrapped = sync.restore.iter().filter(|p| {
            !p.wraps.is_empty() && !ring.is_quarantined(p) && !names.contains(&p.secret_name)
        });
        let wrapped: Vec<String> = wrapped.map(|p| p.secret_name.clone()).collect();
        names.extend(wrapped);
    }
    names
}

/// The pairs the store holds and the cluster lost that are trusted now: recorded in status,
/// proven in this reconcile, or retired (never published).
fn to_restore(obs: &Observation) -> Vec<String> {
    let Some(sync) = obs.store_sync() else {
        return Vec::new();
    };
    sync.restore
        .iter()
        .filter(|pair| obs.ring.is_trusted(&pair.record))
        .map(|pair| pair.secret_name.clone())
        .collect()
}

/// Whether status says the store at `url` holds every retained pair.
fn store_synced(status: &crate::crd::RecordingKeyConfigStatus, url: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == KEY_STORE_SYNCED && c.status == "True" && c.message.ends_with(url))
}

/// Whether the custody check is due: active pairs exist and the interval since the last check
/// (or since status first recorded them) has passed.
fn custody_due(
    ring: &KeyRing,
    rkc: &RecordingKeyConfig,
    interval: SignedDuration,
    now: Timestamp,
) -> bool {
    let last = rkc.status.as_ref().and_then(|s| s.last_key_verify_time);
    // Active pairs in status and never checked: restored from the key store, not self-tested.
    let unchecked = last.is_none()
        && rkc
            .status
            .as_ref()
            .is_some_and(|s| !s.active_key_pairs.is_empty());
    !ring.active_by_org().is_empty()
        && (unchecked
            || (last.is_some() && policy::kms_key_check_due(last, interval, now))
            || rkc.verify_now_token().is_some_and(|token| {
                rkc.status
                    .as_ref()
                    .and_then(|s| s.verify_now_token.as_deref())
                    != Some(token)
            }))
}

/// A pair recorded in status seems to be gone and status does not say so yet: worth a fresh
/// list (the cache may simply not have seen our own newest Secret yet).
fn newly_missing(ring: &KeyRing, status: &crate::crd::RecordingKeyConfigStatus) -> bool {
    let reported: BTreeSet<&str> = status
        .key_pair_problems
        .iter()
        .filter(|p| p.reason == KEY_PAIR_MISSING)
        .map(|p| p.secret_name.as_str())
        .collect();
    ring.missing()
        .iter()
        .any(|m| !reported.contains(m.secret_name.as_str()))
}

/// Which organisations need a new key pair and why (the rotation policy chain).
fn rotations(obs: &Observation, organizations: &[String], now: Timestamp) -> Vec<Rotation> {
    let rkc = obs.rkc.as_ref();
    let active = obs.ring.active_by_org();
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
                    // Per pair, never the status summary alone (docs/design.md, "The alias a
                    // pair was made under").
                    kms_key_alias_arn: obs.ring.made_under(r),
                    key_pair_spec: r.key_pair_spec,
                    encryption_context_key: &r.encryption_context.key,
                }),
                alias_arn: config.alias.as_str(),
                alias_key_arn: obs.alias_key_arn(),
                key_pair_spec: config.key_pair_spec,
                encryption_context_key: &config.encryption_context_key,
                period: rkc.spec.rotation.period,
                on_kms_key_change: rkc.spec.rotation.on_kms_key_change,
                rotate_now_token: rkc.rotate_now_token(),
                // Also honoured by the active pair of a rotation whose status write was lost.
                honoured_token: rkc.honoured_token(pair.and_then(|r| obs.ring.token_of(r))),
                integrity_failed: pair
                    .is_some_and(|r| obs.ring.custody_failed().contains(&r.secret_name)),
            };
            policy::rotation_needed(&input).map(|(reason, message)| Rotation {
                organization_id: org.clone(),
                reason,
                message,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::ResourceExt;

    use super::*;
    use crate::config;
    use crate::controller::observe::{Tokens, ring_of};
    use crate::controller::stored::{StoreCheck, StoreSync};
    use crate::crd::{
        ANNOTATION_ROTATE_NOW, ANNOTATION_VERIFY_NOW, LastKmsError, RecordingKeyConfigStatus,
    };
    use crate::keypair::{KeyPairRecord, test_pair};
    use crate::keystore::StoreError;
    use crate::kms::{KeyPairSpec, KmsError};
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
        test_pair(ORG, 1, KeyPairSpec::Rsa2048, vec![1, 2, 3], ts(created))
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

    fn settings() -> Settings {
        Settings {
            kms_key_check_interval: HOUR,
            key_verify_interval: SignedDuration::from_hours(24),
            operator_region: None,
            key_store: None,
        }
    }

    fn observe(rkc: RecordingKeyConfig, records: Vec<KeyPairRecord>) -> Observation {
        // Pairs the operator made (self-tested) or status recorded: trusted.
        let ring = ring_of(&rkc, records, Tokens::new(), ts(NOW)).with_all_proven();
        Observation {
            config: config::validate(&rkc.spec, None).map_err(|e| e.to_string()),
            rkc: Arc::new(rkc),
            namespace: "telephony".into(),
            name: "recordings".into(),
            ring,
            listed: None,
            key: None,
            custody: None,
            store: None,
            proofs: None,
            now: ts(NOW),
        }
    }

    const NOW: &str = "2026-01-15T10:00:00Z";

    #[test]
    fn steady_state_does_nothing_and_asks_nobody() {
        let obs = observe(
            resource(1, Some(steady_status("2026-01-15T09:30:00Z"))),
            vec![record("2026-01-10T00:00:00Z")],
        );
        let plan = plan(&obs, ts(NOW), &settings());
        assert_eq!(plan.step, Step::Execute);
        assert!(plan.rotations.is_empty() && plan.retire.is_empty() && plan.prune.is_empty());
    }

    fn with_store() -> Settings {
        Settings {
            key_store: Some("s3://acme-keys/prod".parse().unwrap()),
            ..settings()
        }
    }

    fn store_listed(result: Result<StoreSync, StoreError>) -> Option<StoreCheck> {
        Some(StoreCheck {
            url: "s3://acme-keys/prod".into(),
            result,
        })
    }

    /// With a key store, a new resource lists its Secrets, checks the key, then lists the store
    /// before anything is generated; a store that cannot be listed blocks the work.
    #[test]
    fn with_a_store_a_new_resource_reads_it_before_anything_is_made() {
        let mut obs = observe(resource(1, None), Vec::new());
        assert_eq!(plan(&obs, ts(NOW), &with_store()).step, Step::ListRecords);
        obs.listed = Some(Vec::new());
        assert_eq!(plan(&obs, ts(NOW), &with_store()).step, Step::CheckKey);
        obs.key = Some(KeyCheck::Usable {
            description: crate::kms::KeyDescription {
                key_arn: KEY.into(),
                key_id: "k1".into(),
                key_state: "Enabled".into(),
                key_spec: "SYMMETRIC_DEFAULT".into(),
                key_usage: "ENCRYPT_DECRYPT".into(),
                key_manager: "CUSTOMER".into(),
                region: "us-east-1".into(),
                multi_region: None,
                age: std::time::Duration::ZERO,
            },
            at_risk: Vec::new(),
            checked_at: ts(NOW),
        });
        assert_eq!(plan(&obs, ts(NOW), &with_store()).step, Step::ListStore);
        obs.store = store_listed(Ok(StoreSync::default()));
        assert_eq!(plan(&obs, ts(NOW), &with_store()).step, Step::Execute);
        obs.store = store_listed(Err(StoreError {
            url: "s3://acme-keys/prod".into(),
            operation: "ListObjectsV2",
            key: "prod/".into(),
            code: "ServiceUnavailable".into(),
            message: "down".into(),
        }));
        assert_eq!(plan(&obs, ts(NOW), &with_store()).step, Step::Blocked);
    }

    /// A retired pair the store restores is trusted without a proof, but its wraps are not: with
    /// a wrap, the plan proves first (the wraps only) and restores after; without, at once.
    #[test]
    fn a_pair_restored_with_wraps_is_proven_before_it_is_restored() {
        let mut obs = observe(resource(1, None), Vec::new());
        obs.listed = Some(Vec::new());
        obs.key = Some(KeyCheck::Usable {
            description: crate::kms::KeyDescription {
                key_arn: KEY.into(),
                key_id: "k1".into(),
                key_state: "Enabled".into(),
                key_spec: "SYMMETRIC_DEFAULT".into(),
                key_usage: "ENCRYPT_DECRYPT".into(),
                key_manager: "CUSTOMER".into(),
                region: "us-east-1".into(),
                multi_region: None,
                age: std::time::Duration::ZERO,
            },
            at_risk: Vec::new(),
            checked_at: ts(NOW),
        });
        let mut retired = crate::keypair::KeyPairSecret {
            record: record("2026-01-01T00:00:00Z"),
            private_key_ciphertext: vec![1; 8],
            wraps: Vec::new(),
        };
        retired.retire(ts("2026-01-02T00:00:00Z"));
        let restore = |pair: &crate::keypair::KeyPairSecret, obs: &mut Observation| {
            obs.ring.restore(vec![pair.record.clone()], &Tokens::new());
            obs.store = store_listed(Ok(StoreSync {
                restore: vec![pair.clone()],
                ..StoreSync::default()
            }));
        };
        let plain = obs.clone();
        let mut wrapped = retired.clone();
        wrapped.wraps = vec![crate::keypair::Wrap {
            kms_key_arn:
                "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b".into(),
            ciphertext: vec![2; 8],
            created_at: ts("2026-01-03T00:00:00Z"),
        }];
        restore(&wrapped, &mut obs);
        let first = plan(&obs, ts(NOW), &with_store());
        assert_eq!(first.step, Step::Prove);
        assert_eq!(first.prove, vec![retired.secret_name.clone()]);
        obs.proofs = Some(Default::default());
        let then = plan(&obs, ts(NOW), &with_store());
        assert_eq!(
            (then.step, then.restore),
            (Step::Execute, vec![retired.secret_name.clone()])
        );

        let mut obs = plain;
        restore(&retired, &mut obs);
        let at_once = plan(&obs, ts(NOW), &with_store());
        assert!(at_once.prove.is_empty());
        assert_eq!(
            (at_once.step, at_once.restore),
            (Step::Execute, vec![retired.secret_name.clone()])
        );
    }

    /// Steady state with a store that status says holds every pair: nothing is listed; a
    /// condition naming another store, or a False one, reads the store.
    #[test]
    fn a_synced_store_is_not_read_in_steady_state() {
        let synced = |status: &str, url: &str| {
            let mut s = steady_status("2026-01-15T09:30:00Z");
            s.conditions
                .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: KEY_STORE_SYNCED.into(),
                    status: status.into(),
                    reason: "KeyPairsStored".into(),
                    message: format!("1/1 key pairs stored in {url}"),
                    last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(
                        NOW,
                    )),
                    observed_generation: Some(1),
                });
            observe(resource(1, Some(s)), vec![record("2026-01-10T00:00:00Z")])
        };
        let steady = synced("True", "s3://acme-keys/prod");
        assert_eq!(plan(&steady, ts(NOW), &with_store()).step, Step::Execute);
        let other = synced("True", "s3://acme-keys/staging");
        assert_eq!(plan(&other, ts(NOW), &with_store()).step, Step::ListRecords);
        let unsynced = synced("False", "s3://acme-keys/prod");
        assert_eq!(
            plan(&unsynced, ts(NOW), &with_store()).step,
            Step::ListRecords
        );
        // Without a store, nothing about it is read.
        assert_eq!(plan(&unsynced, ts(NOW), &settings()).step, Step::Execute);
    }

    #[test]
    fn a_new_resource_lists_then_checks_the_key_then_creates() {
        let mut obs = observe(resource(1, None), Vec::new());
        let first = plan(&obs, ts(NOW), &settings());
        assert_eq!(first.step, Step::ListRecords);
        assert_eq!(first.rotations[0].reason, RotationReason::NoActiveKeyPair);
        obs.listed = Some(Vec::new());
        assert_eq!(plan(&obs, ts(NOW), &settings()).step, Step::CheckKey);
        obs.key = Some(KeyCheck::Failed(KmsError::new(
            KmsOperation::DescribeKey,
            KmsErrorKind::Timeout,
            "slow",
        )));
        assert_eq!(plan(&obs, ts(NOW), &settings()).step, Step::Blocked);
    }

    /// A due key check asks KMS at once, on the cached records: it needs no fresh list.
    #[test]
    fn the_key_check_is_due_after_the_interval_and_after_a_new_generation() {
        let records = vec![record("2026-01-10T00:00:00Z")];
        let stale_check = observe(
            resource(1, Some(steady_status("2026-01-15T08:59:59Z"))),
            records.clone(),
        );
        assert_eq!(
            plan(&stale_check, ts(NOW), &settings()).step,
            Step::CheckKey
        );
        let new_generation = observe(
            resource(2, Some(steady_status("2026-01-15T09:30:00Z"))),
            records,
        );
        assert_eq!(
            plan(&new_generation, ts(NOW), &settings()).step,
            Step::CheckKey
        );
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
            plan(&obs, ts(NOW), &settings()).step,
            Step::WaitBackoff(ts("2026-01-15T10:00:05Z"))
        );
        // Once it is over, the key is checked again at once (not at the next hourly check).
        assert_eq!(
            plan(&obs, ts("2026-01-15T10:00:05Z"), &settings()).step,
            Step::CheckKey
        );
        // A new generation is acted on at once.
        let changed = observe(resource(2, Some(failing.clone())), records.clone());
        assert_eq!(plan(&changed, ts(NOW), &settings()).step, Step::CheckKey);

        // A rotate-now token that arrives during the backoff is tried at once, once: after its
        // attempt failed (status records the token with the failure), the backoff holds again,
        // as it does for a token already honoured.
        let mut asked = resource(1, Some(failing.clone()));
        asked
            .annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW.into(), "t1".into());
        let obs = observe(asked.clone(), records.clone());
        let planned = plan(&obs, ts(NOW), &settings());
        // Work is due: the fresh list first, then the key check and the rotation.
        assert_eq!(planned.step, Step::ListRecords);
        assert_eq!(
            planned.rotations[0].reason,
            RotationReason::RotateNowRequested
        );
        for status in [
            RecordingKeyConfigStatus {
                failed_rotate_now_token: Some("t1".into()),
                ..failing.clone()
            },
            RecordingKeyConfigStatus {
                rotate_now_token: Some("t1".into()),
                ..failing
            },
        ] {
            asked.status = Some(status);
            let obs = observe(asked.clone(), records.clone());
            assert_eq!(
                plan(&obs, ts(NOW), &settings()).step,
                Step::WaitBackoff(ts("2026-01-15T10:00:05Z"))
            );
        }
    }

    #[test]
    fn suspend_and_invalid_config_stop_before_anything_else() {
        let mut suspended = resource(1, None);
        suspended.spec.suspend = true;
        assert_eq!(
            plan(&observe(suspended, Vec::new()), ts(NOW), &settings()).step,
            Step::Suspended
        );
        let mut invalid = resource(1, None);
        invalid.spec.home_region = Some("eu-west-1".into());
        let step = plan(&observe(invalid, Vec::new()), ts(NOW), &settings()).step;
        assert!(matches!(step, Step::ConfigInvalid(m) if m.contains("homeRegion")));
    }

    #[test]
    fn rotate_now_token_is_planned_once() {
        let mut rkc = resource(1, Some(steady_status("2026-01-15T09:30:00Z")));
        rkc.annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW.into(), "t1".into());
        let obs = observe(rkc.clone(), vec![record("2026-01-10T00:00:00Z")]);
        let planned = plan(&obs, ts(NOW), &settings());
        assert_eq!(
            planned.rotations[0].reason,
            RotationReason::RotateNowRequested
        );
        assert_eq!(planned.token.as_deref(), Some("t1"));
        rkc.status.as_mut().unwrap().rotate_now_token = Some("t1".into());
        let honoured = observe(rkc, vec![record("2026-01-10T00:00:00Z")]);
        assert!(plan(&honoured, ts(NOW), &settings()).rotations.is_empty());
    }

    #[test]
    fn the_custody_check_is_due_after_its_interval_and_a_failure_rotates() {
        let records = vec![record("2026-01-10T00:00:00Z")];
        let verified = |at: &str| RecordingKeyConfigStatus {
            last_key_verify_time: Some(ts(at)),
            ..steady_status("2026-01-15T09:30:00Z")
        };
        let fresh = observe(
            resource(1, Some(verified("2026-01-15T00:00:00Z"))),
            records.clone(),
        );
        assert_eq!(plan(&fresh, ts(NOW), &settings()).step, Step::Execute);

        let mut due = observe(
            resource(1, Some(verified("2026-01-14T09:59:59Z"))),
            records.clone(),
        );
        assert_eq!(plan(&due, ts(NOW), &settings()).step, Step::ListRecords);
        due.listed = Some(Vec::new());
        assert_eq!(plan(&due, ts(NOW), &settings()).step, Step::VerifyCustody);

        // The check found the active pair's blob broken: rotate at once.
        due.custody = Some(crate::controller::custody::CustodyCheck::default());
        due.ring.fail_custody(&records[0].name());
        let after = plan(&due, ts(NOW), &settings());
        assert_eq!(
            after.rotations[0].reason,
            RotationReason::IntegrityCheckFailed
        );
        assert_eq!(after.step, Step::CheckKey);
    }

    /// With the home Region down, the key check fails; a multi-Region key's custody check
    /// runs all the same (its reads turn to the replicas), a single-Region key's waits, and a
    /// verdict (AccessDenied) blocks both.
    #[test]
    fn a_failed_key_check_lets_a_multi_region_keys_custody_check_run() {
        use crate::kms::{KmsError, KmsErrorKind, KmsOperation};
        let records = vec![record("2026-01-10T00:00:00Z")];
        let status = |key: &str| RecordingKeyConfigStatus {
            last_key_verify_time: Some(ts("2026-01-14T09:59:59Z")),
            kms_key_arn: Some(key.to_owned()),
            ..steady_status("2026-01-15T09:30:00Z")
        };
        let failed = |kind| {
            Some(KeyCheck::Failed(KmsError::new(
                KmsOperation::DescribeKey,
                kind,
                "injected",
            )))
        };
        let mrk = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd";
        let mut obs = observe(resource(1, Some(status(mrk))), records.clone());
        obs.listed = Some(Vec::new());
        obs.key = failed(KmsErrorKind::Network);
        assert_eq!(plan(&obs, ts(NOW), &settings()).step, Step::VerifyCustody);
        obs.custody = Some(crate::controller::custody::CustodyCheck::default());
        assert_eq!(plan(&obs, ts(NOW), &settings()).step, Step::Blocked);

        obs.custody = None;
        obs.key = failed(KmsErrorKind::AccessDenied);
        assert_eq!(plan(&obs, ts(NOW), &settings()).step, Step::Blocked);

        let single = "arn:aws:kms:us-east-1:111122223333:key/1234abcd";
        let mut obs = observe(resource(1, Some(status(single))), records);
        obs.listed = Some(Vec::new());
        obs.key = failed(KmsErrorKind::Network);
        assert_eq!(plan(&obs, ts(NOW), &settings()).step, Step::Blocked);
    }

    #[test]
    fn a_secret_missing_from_the_cache_is_confirmed_with_a_fresh_list() {
        let pair = record("2026-01-10T00:00:00Z");
        let status = RecordingKeyConfigStatus {
            active_key_pairs: vec![pair.to_active_key_pair()],
            key_pair_history: vec![pair.to_history_entry()],
            ..steady_status("2026-01-15T09:30:00Z")
        };
        let mut obs = observe(resource(1, Some(status)), Vec::new());
        let planned = plan(&obs, ts(NOW), &settings());
        assert_eq!(planned.step, Step::ListRecords);
        obs.listed = Some(Vec::new());
        // Confirmed gone: a new pair, under a new name.
        let planned = plan(&obs, ts(NOW), &settings());
        assert_eq!(planned.rotations[0].reason, RotationReason::NoActiveKeyPair);
        assert_eq!(obs.ring.next_sequence(ORG), 2);
        assert_eq!(obs.ring.missing()[0].secret_name, pair.name());
    }

    const NEW_ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings-2026";
    const ORG_2: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    /// Two organisations whose pairs were made under `aliases` (ORG, ORG_2), the spec naming
    /// `NEW_ALIAS` at generation 2, status (written at generation 1) summarising `summary`.
    fn alias_change(aliases: [Option<&str>; 2], summary: Option<&str>) -> Plan {
        let status = RecordingKeyConfigStatus {
            kms_key_alias_arn: summary.map(str::to_owned),
            ..steady_status("2026-01-15T09:30:00Z")
        };
        let mut rkc = resource(2, Some(status));
        rkc.spec.kms_key_alias_arn = NEW_ALIAS.into();
        rkc.spec.organization_ids.push(ORG_2.into());
        let records = [ORG, ORG_2]
            .into_iter()
            .zip(aliases)
            .map(|(org, alias)| {
                let mut pair = test_pair(
                    org,
                    1,
                    KeyPairSpec::Rsa2048,
                    vec![1, 2, 3],
                    ts("2026-01-10T00:00:00Z"),
                );
                pair.kms_key_alias_arn = alias.map(str::to_owned);
                pair
            })
            .collect();
        let mut obs = observe(rkc, records);
        obs.listed = Some(Vec::new());
        plan(&obs, ts(NOW), &settings())
    }

    fn rotated(plan: &Plan) -> Vec<(&str, RotationReason)> {
        plan.rotations
            .iter()
            .map(|r| (r.organization_id.as_str(), r.reason))
            .collect()
    }

    /// An alias change cut short (a KMS failure at the second organisation, a crash, a lost
    /// status write) left status summarising the old alias: only the pair still made under
    /// the old alias is replaced, the one already under the new alias is not made again.
    #[test]
    fn an_alias_change_replaces_only_pairs_made_under_another_alias() {
        let plan = alias_change([Some(NEW_ALIAS), Some(ALIAS)], Some(ALIAS));
        assert_eq!(rotated(&plan), [(ORG_2, RotationReason::SpecChanged)]);
        assert!(
            plan.rotations[0].message.contains(ALIAS)
                && plan.rotations[0].message.contains(NEW_ALIAS),
            "{}",
            plan.rotations[0].message
        );
        // Every pair under the new alias: nothing to do, whatever the summary says.
        assert!(
            alias_change([Some(NEW_ALIAS); 2], Some(ALIAS))
                .rotations
                .is_empty()
        );
        assert!(
            alias_change([Some(NEW_ALIAS); 2], None)
                .rotations
                .is_empty()
        );
    }

    /// Pairs made before kekeeper recorded the alias on each pair are taken as made under the
    /// alias status summarised: an upgrade rotates nothing, and an alias change still rotates
    /// them; with no summary either, the alias is not compared (as before the upgrade).
    #[test]
    fn pairs_without_a_recorded_alias_are_taken_under_the_status_summary() {
        let both = [
            (ORG, RotationReason::SpecChanged),
            (ORG_2, RotationReason::SpecChanged),
        ];
        assert_eq!(rotated(&alias_change([None, None], Some(ALIAS))), both);
        assert!(
            alias_change([None, None], Some(NEW_ALIAS))
                .rotations
                .is_empty()
        );
        assert!(alias_change([None, None], None).rotations.is_empty());
        // Upgraded half-way through an alias change: the new pair records its alias.
        assert_eq!(
            rotated(&alias_change([Some(NEW_ALIAS), None], Some(ALIAS))),
            [(ORG_2, RotationReason::SpecChanged)]
        );
    }

    #[test]
    fn a_new_verify_now_token_asks_for_the_custody_check_at_once() {
        let records = vec![record("2026-01-10T00:00:00Z")];
        let status = RecordingKeyConfigStatus {
            last_key_verify_time: Some(ts("2026-01-15T09:59:00Z")),
            verify_now_token: Some("v1".into()),
            ..steady_status("2026-01-15T09:30:00Z")
        };
        let mut rkc = resource(1, Some(status));
        rkc.annotations_mut()
            .insert(ANNOTATION_VERIFY_NOW.into(), "v1".into());
        let honoured = observe(rkc.clone(), records.clone());
        assert_eq!(plan(&honoured, ts(NOW), &settings()).step, Step::Execute);
        rkc.annotations_mut()
            .insert(ANNOTATION_VERIFY_NOW.into(), "v2".into());
        let mut asked = observe(rkc, records);
        asked.listed = Some(Vec::new());
        assert_eq!(plan(&asked, ts(NOW), &settings()).step, Step::VerifyCustody);
    }
}
