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
//! | `kekeeper.io` `recordingkeyconfigs` | get, list, watch |
//! | `kekeeper.io` `recordingkeyconfigs/status` | patch (server-side apply) |
//! | core `secrets` | list, watch (cache, label `kekeeper.io/config`), get (adopt), create, patch (retire), delete (only with `recordingRetention`) |
//! | core `configmaps` | list, watch, create, patch (server-side apply of `<name>-public-keys`) |
//! | `events.k8s.io` `events` | create, patch |
//! | `coordination.k8s.io` `leases` | get, create, update (with `--leader-elect`) |
//!
//! `kekeeper rotate` (a user, not the controller) needs patch on `recordingkeyconfigs`.

pub mod cache;
pub mod custody;
pub mod execute;
pub mod leader;
pub mod observe;
pub mod packed;
pub mod plan;
pub mod ratelimit;
pub mod report;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tracing::{instrument, warn};

use crate::crd::{RecordingKeyConfig, RecordingKeyConfigStatus};
use crate::keyring::KeyRing;
use crate::kms::Kms;
use crate::metrics::{ConfigLabels, KeyPairLabels, Metrics};
use crate::policy;
use cache::{KeyPairCache, PublicKeysCache};
pub use observe::ANNOTATION_ROTATE_NOW_TOKEN;
use observe::Observation;
use packed::PackedConfig;
use plan::Step;
use ratelimit::TokenBucket;
use report::{Events, StatusWriter};
pub use report::{public_keys_config_map, public_keys_config_map_name};

/// The field manager of every server-side apply kekeeper makes.
pub const FIELD_MANAGER: &str = "kekeeper";
/// The default interval of the DescribeKey check of the alias and the retained pairs' keys.
pub const DEFAULT_KMS_KEY_CHECK_INTERVAL: SignedDuration = SignedDuration::from_hours(1);
/// The default interval of the custody check (one KMS Decrypt per active key pair).
pub const DEFAULT_KEY_VERIFY_INTERVAL: SignedDuration = SignedDuration::from_hours(24);

/// The time, injected so schedules are tested without sleeping.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// What fails a reconcile without a status report (KMS failures are reported in status and
/// retried with the backoff kept there).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("key pair Secret {name} exists but cannot be read: {message}")]
    AdoptFailed { name: String, message: String },
    #[error("resource has no namespace")]
    NoNamespace,
    #[error(transparent)]
    Unpack(#[from] packed::UnpackError),
}

impl Error {
    /// The `reason` label of `kekeeper_reconcile_errors_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(_) => "KubeApi".to_owned(),
            Error::AdoptFailed { .. } => "AdoptFailed".to_owned(),
            Error::NoNamespace => "NoNamespace".to_owned(),
            Error::Unpack(_) => "Unpack".to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub kms_key_check_interval: SignedDuration,
    /// How often each active pair's private key blob is decrypted through KMS and compared
    /// with the recorded fingerprint.
    pub key_verify_interval: SignedDuration,
    /// The operator's AWS region (the default homeRegion).
    pub operator_region: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kms_key_check_interval: DEFAULT_KMS_KEY_CHECK_INTERVAL,
            key_verify_interval: DEFAULT_KEY_VERIFY_INTERVAL,
            operator_region: None,
        }
    }
}

/// What every reconcile shares.
pub struct Context<K> {
    pub client: Client,
    pub kms: K,
    pub clock: Clock,
    pub events: Events,
    /// Key pair Secrets (label `kekeeper.io/config`) as records, by resource.
    pub key_pairs: KeyPairCache,
    /// `<config>-public-keys` ConfigMaps, as digests.
    pub public_keys: PublicKeysCache,
    /// One bucket for key pair generation across all resources.
    pub key_pair_rate: Arc<TokenBucket>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Consecutive failed reconciles per resource that could not write status (API errors);
    /// KMS failures are counted in status instead.
    failures: Mutex<HashMap<ObjectRef<RecordingKeyConfig>, u32>>,
}

impl<K> Context<K> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        kms: K,
        clock: Clock,
        events: Events,
        key_pairs: KeyPairCache,
        public_keys: PublicKeysCache,
        key_pair_rate: Arc<TokenBucket>,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        Context {
            client,
            kms,
            clock,
            events,
            key_pairs,
            public_keys,
            key_pair_rate,
            settings,
            metrics,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<RecordingKeyConfig>, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more failure of `rkc` and returns the backoff before its retry.
    fn record_failure(&self, object: ObjectRef<RecordingKeyConfig>) -> (u32, Duration) {
        let mut failures = self.failures();
        let count = failures.entry(object).or_default();
        *count = count.saturating_add(1);
        (*count, policy::backoff(*count))
    }

    fn clear_failures(&self, object: &ObjectRef<RecordingKeyConfig>) {
        self.failures().remove(object);
    }
}

/// [`reconcile`] of a resource from the controller's packed cache.
pub async fn reconcile_packed<K: Kms>(
    packed: Arc<PackedConfig>,
    ctx: Arc<Context<K>>,
) -> Result<Action> {
    let rkc = packed.unpack()?;
    reconcile(Arc::new(rkc), ctx).await
}

/// `error_policy`, for failures that could not be reported in status (API errors): capped
/// exponential backoff per resource (5 s doubling to 5 min), reset by the next success.
pub fn error_policy<K>(packed: Arc<PackedConfig>, error: &Error, ctx: Arc<Context<K>>) -> Action {
    let name = packed.name_any();
    let object = ObjectRef::new(&name).within(&packed.namespace().unwrap_or_default());
    let (failures, delay) = ctx.record_failure(object);
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
    ctx.metrics.reconciles.inc();
    let object = ObjectRef::from_obj(rkc.as_ref());
    let result = reconcile_steps(rkc, &ctx).await;
    match &result {
        Ok(_) => ctx.clear_failures(&object),
        Err(err) => ctx.metrics.count_error(err.metric_label()),
    }
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
            Step::ListRecords if !obs.records_listed => obs.list_records(ctx).await?,
            Step::CheckKey if obs.key.is_none() => {
                writer.announce(ctx, &obs, &plan, now).await?;
                obs.check_key(ctx).await;
            }
            Step::VerifyCustody if obs.custody.is_none() => obs.verify_custody(ctx).await,
            _ => break,
        }
        plan = plan::plan(&obs, now, settings);
    }
    let outcome = match plan.step {
        Step::WaitBackoff(until) => return Ok(requeue_at(until, now)),
        Step::Execute => Some(execute::execute(ctx, &obs, &plan, &mut writer, now).await?),
        _ => None,
    };
    let status = report::report(ctx, &mut writer, &obs, &plan, outcome.as_ref(), now).await?;
    if let Some(failure) = outcome.as_ref().and_then(|o| o.failure.as_ref()) {
        ctx.metrics.count_error(failure.metric_label());
    }
    let ring = outcome.as_ref().map_or(&obs.ring, |o| &o.ring);
    record_metrics(ctx, &obs, ring, &status);
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
    let custody = status
        .last_key_verify_time
        .filter(|_| !ring.active_by_org().is_empty())
        .and_then(|t| t.checked_add(ctx.settings.key_verify_interval).ok());
    let next = policy::next_due(
        ring.active_by_org()
            .values()
            .map(|r| policy::rotation_due(r.created_at, rkc.spec.rotation.period)),
        status.last_kms_key_check_time,
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
    let config = ConfigLabels {
        namespace: obs.namespace.clone(),
        config: obs.name.clone(),
    };
    ctx.metrics.record_status(&config, status);
}
