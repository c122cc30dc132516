//! The controller (docs/design.md#reconcile). One reconcile is four steps:
//! [`observe`] (the resource, its key pair Secrets, and what KMS says about the key — each
//! once), [`plan`] (pure: observation + clock → what to do), [`execute`] (KMS and API work
//! only) and [`report`] (the one place that writes status, events and the ConfigMap).
//!
//! A steady-state reconcile reads only the caches and makes no KMS call and no API write. Only
//! when something is due does it re-list the Secrets from the API server (the cache may lag
//! behind our own writes) and talk to KMS.
//!
//! What the controller asks of the API server (the Helm chart's RBAC):
//!
//! | resource | verbs |
//! |---|---|
//! | `kekeeper.io` `recordingkeyconfigs` | list, watch |
//! | `kekeeper.io` `recordingkeyconfigs/status` | patch (server-side apply), get (after a 409 on it) |
//! | core `secrets` | list, watch (cache, label `kekeeper.io/config`), get (adopt), create, patch (retire), delete (only with `recordingRetention`) |
//! | core `configmaps` | list, watch, create, patch (server-side apply of `<name>-public-keys`) |
//! | `events.k8s.io` `events` | create, patch |
//! | `coordination.k8s.io` `leases` | get, create, update (with `--leader-elect`) |
//!
//! `kekeeper rotate` (a user, not the controller) needs patch on `recordingkeyconfigs`.

pub mod cache;
pub mod context;
pub mod custody;
pub mod execute;
pub mod leader;
pub mod observe;
pub mod plan;
pub mod proof;
pub mod ratelimit;
pub mod report;
pub mod rewrap;
pub mod status;
pub mod stored;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, instrument, warn};

use crate::crd::{RecordingKeyConfig, RecordingKeyConfigStatus};
use crate::keyring::KeyRing;
use crate::kms::Kms;
use crate::metrics::{ConfigLabels, KeyPairLabels, KmsKeyLabels};
use crate::policy;
use cache::CachedConfig;
pub use context::{
    Clock, Context, DEFAULT_KEY_VERIFY_INTERVAL, DEFAULT_KMS_KEY_CHECK_INTERVAL, Error,
    FIELD_MANAGER, Result, SerializeError, Settings, system_clock, to_json_value, to_json_vec,
};
use observe::{KeyCheck, Observation};
use plan::Step;
use report::StatusWriter;
pub use report::{public_keys_config_map, public_keys_config_map_name};

/// How often one reconcile plans again on a resource that changed under it before it gives
/// up and retries with backoff.
const MAX_REPLANS: usize = 3;

/// How soon the next batch of a rewrap starts.
const REWRAP_NEXT_BATCH: Duration = Duration::from_millis(100);

/// [`reconcile`] of a resource from the controller's cache.
pub async fn reconcile_cached<K: Kms>(
    cached: Arc<CachedConfig>,
    ctx: Arc<Context<K>>,
) -> Result<Action> {
    reconcile(Arc::new(cached.to_config()), ctx).await
}

/// `error_policy`, for failures that could not be reported in status (API errors): capped
/// exponential backoff per resource (5 s doubling to 5 min), reset by the next success.
pub fn error_policy<K>(cached: Arc<CachedConfig>, error: &Error, ctx: Arc<Context<K>>) -> Action {
    let name = cached.name_any();
    let (failures, delay) = ctx.record_failure(cached.object_ref());
    warn!(name = %name, error = %error, failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The whole-second time of this reconcile (status timestamps stay tidy and round-trip).
fn now_of<K>(ctx: &Context<K>) -> Timestamp {
    let now = (ctx.clock)();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[instrument(skip_all, fields(namespace = rkc.namespace().unwrap_or_default(), name = %rkc.name_any()))]
pub async fn reconcile<K: Kms>(
    rkc: Arc<RecordingKeyConfig>,
    ctx: Arc<Context<K>>,
) -> Result<Action> {
    // A reconcile decides on the owned objects' caches: never before their first list is in
    // (the resources' watch may deliver first; an empty cache would look like missing pairs
    // and a missing ConfigMap).
    ctx.key_pairs.synced().await;
    ctx.public_keys.synced().await;
    let object = ObjectRef::from_obj(rkc.as_ref());
    let mut rkc = rkc;
    let mut replans = 0;
    let result = loop {
        match reconcile_steps(rkc.clone(), &ctx).await {
            // A plan made on an older resource never writes status: plan again on the newer
            // one (docs/design.md, "A conflict re-plans").
            Err(Error::Superseded(fresh)) if replans < MAX_REPLANS => {
                replans += 1;
                info!(generation = ?fresh.metadata.generation, "resource changed during the reconcile; planning again");
                rkc = Arc::new(*fresh);
            }
            other => break other,
        }
    };
    match &result {
        Ok(_) => ctx.clear_failures(&object),
        Err(err) => ctx.metrics.count_error(err.metric_label()),
    }
    // Counted when done, its writes made: a test waits on it to see a reconcile's whole effect.
    ctx.metrics.reconciles.inc();
    result
}

/// Observe → plan → execute → report. The plan may ask for a fresh list of the key pairs, for
/// KMS's view of the key or for the custody check first; each is done once, then the plan is
/// made again.
async fn reconcile_steps<K: Kms>(rkc: Arc<RecordingKeyConfig>, ctx: &Context<K>) -> Result<Action> {
    let now = now_of(ctx);
    let settings = &ctx.settings;
    let mut obs = Observation::from_cache(ctx, rkc.clone(), now)?;
    let mut writer = StatusWriter::new(rkc);
    let mut plan = plan::plan(&obs, now, settings);
    loop {
        match plan.step {
            Step::ListRecords if !obs.records_listed() => obs.list_records(ctx).await?,
            Step::CheckKey if obs.key.is_none() => {
                writer.announce(ctx, &obs, &plan, now).await?;
                obs.check_key(ctx).await;
            }
            Step::VerifyCustody if obs.custody.is_none() => obs.verify_custody(ctx).await?,
            Step::ListStore if obs.store.is_none() => obs.check_store(ctx).await?,
            Step::Prove if obs.proofs.is_none() => obs.prove(ctx, &plan.prove).await?,
            _ => break,
        }
        plan = plan::plan(&obs, now, settings);
    }
    let outcome = match plan.step {
        Step::WaitBackoff(until) => return Ok(requeue_at(until, now)),
        Step::Execute => {
            let progress = writer.reporting(ctx, &obs, &plan, now);
            Some(execute::execute(ctx, &obs, &plan, now, progress).await?)
        }
        _ => None,
    };
    let status = report::report(ctx, &mut writer, &obs, &plan, outcome.as_ref(), now).await?;
    if let Some(failure) = outcome.as_ref().and_then(|o| o.failure.as_ref()) {
        ctx.metrics.count_error(failure.metric_label());
    }
    let ring = outcome.as_ref().map_or(&obs.ring, |o| &o.ring);
    record_metrics(ctx, &obs, ring, &status);
    record_store_metrics(ctx, &obs, outcome.as_ref());
    Ok(next_action(ctx, &obs, &plan, ring, &status, now))
}

/// When to look again: on a change only, for an invalid or suspended spec; after the backoff
/// for a failure; else at the earliest due instant (rotation, key check, custody check, prune).
fn next_action<K>(
    ctx: &Context<K>,
    obs: &Observation,
    plan: &plan::Plan,
    ring: &KeyRing,
    status: &RecordingKeyConfigStatus,
    now: Timestamp,
) -> Action {
    if matches!(plan.step, Step::Suspended | Step::ConfigInvalid(_)) {
        return Action::await_change();
    }
    if let Some(until) = policy::backoff_until(
        status.failed_attempts.unwrap_or(0),
        status.last_failure_time,
    ) {
        return requeue_at(until, now);
    }
    let rkc = obs.rkc.as_ref();
    // A rewrap goes on in batches at once: status shows its progress between them
    // (docs/design.md, "Rewrap").
    let rewrapping = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::REWRAPPED && c.reason == "RewrapPending");
    if rewrapping && rewrap::wanted(rkc) {
        return Action::requeue(REWRAP_NEXT_BATCH);
    }
    let custody = status
        .last_key_verify_time
        .filter(|_| !ring.active_by_org().is_empty())
        .and_then(|t| t.checked_add(ctx.settings.key_verify_interval).ok());
    // The key check of this reconcile counts even when status kept an older time for it (a
    // check that changed nothing is not written: docs/design.md, "A quiet steady state").
    let last_key_check = status
        .last_kms_key_check_time
        .max(obs.key.as_ref().and_then(KeyCheck::checked_at));
    let next = policy::next_due(
        ring.active_by_org()
            .values()
            .map(|r| policy::rotation_due(r.created_at, rkc.spec.rotation.period)),
        last_key_check,
        ctx.settings.kms_key_check_interval,
        ring.prune_times()
            .map(|(_, due)| Some(due))
            .chain(std::iter::once(custody)),
        now,
    );
    requeue_at(next, now)
}

/// A requeue at `at`, at least a second away, so a due instant in the past does not spin.
fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
    Action::requeue(wait.max(Duration::from_secs(1)))
}

/// What this reconcile did with the key store.
fn record_store_metrics<K>(
    ctx: &Context<K>,
    obs: &Observation,
    outcome: Option<&execute::Outcome>,
) {
    let metrics = &ctx.metrics;
    match obs.store.as_ref().map(|s| &s.result) {
        Some(Ok(sync)) => metrics.count_store("refused", sync.refused.len() + sync.differing.len()),
        Some(Err(_)) => metrics.count_store("list_failed", 1),
        None => {}
    }
    if let Some(outcome) = outcome {
        metrics.count_store("written", outcome.store_writes);
        metrics.count_store("restored", outcome.restored.len());
        let failed = matches!(outcome.failure, Some(execute::Failure::Store(_)))
            || outcome.store_error.is_some();
        metrics.count_store("write_failed", usize::from(failed));
    }
}

/// Per-resource gauges; series of organisations that no longer have an active pair here are
/// dropped.
fn record_metrics<K>(
    ctx: &Context<K>,
    obs: &Observation,
    ring: &KeyRing,
    status: &RecordingKeyConfigStatus,
) {
    // A reconcile that was running when its resource was deleted must not bring the deleted
    // resource's series back.
    if ctx.metrics.is_forgotten(obs.rkc.uid().as_deref()) {
        return;
    }
    let labels = |org: &str| KeyPairLabels {
        namespace: obs.namespace.clone(),
        config: obs.name.clone(),
        organization_id: org.to_owned(),
    };
    let active = ring.active_by_org();
    for (org, record) in &active {
        ctx.metrics
            .key_pair_created
            .get_or_create(&labels(org))
            .set(record.created_at.as_second());
    }
    for record in ring
        .records()
        .iter()
        .filter(|r| !active.contains_key(r.organization_id.as_str()))
    {
        ctx.metrics
            .key_pair_created
            .remove(&labels(&record.organization_id));
    }
    let key_labels = |kms_key_arn: &str| KmsKeyLabels {
        namespace: obs.namespace.clone(),
        config: obs.name.clone(),
        kms_key_arn: kms_key_arn.to_owned(),
    };
    for key in &status.kms_keys {
        ctx.metrics
            .key_pairs_by_kms_key
            .get_or_create(&key_labels(&key.kms_key_arn))
            .set(i64::from(key.key_pairs));
    }
    let before = obs.rkc.status.as_ref().map_or(&[][..], |s| &s.kms_keys[..]);
    for gone in before.iter().filter(|k| {
        !status
            .kms_keys
            .iter()
            .any(|n| n.kms_key_arn == k.kms_key_arn)
    }) {
        ctx.metrics
            .key_pairs_by_kms_key
            .remove(&key_labels(&gone.kms_key_arn));
    }
    let config = ConfigLabels {
        namespace: obs.namespace.clone(),
        config: obs.name.clone(),
    };
    ctx.metrics
        .record_status(&config, status, &obs.rkc.acknowledged_key_pairs());
}
