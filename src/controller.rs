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
pub mod custody;
pub mod execute;
pub mod leader;
pub mod observe;
pub mod plan;
pub mod ratelimit;
pub mod report;
pub mod status;
pub mod stored;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tracing::{info, instrument, warn};

use crate::crd::{RecordingKeyConfig, RecordingKeyConfigStatus};
use crate::keyring::KeyRing;
use crate::keystore::{KeyStore, KeyStoreUrl};
use crate::kms::Kms;
use crate::metrics::{ConfigLabels, KeyPairLabels, Metrics};
use crate::policy;
use cache::{CachedConfig, KeyPairCache, PublicKeysCache};
use observe::{KeyCheck, Observation};
use plan::Step;
use ratelimit::KmsPace;
use report::{Events, StatusWriter};
pub use report::{public_keys_config_map, public_keys_config_map_name};

/// The field manager of every server-side apply kekeeper makes.
pub const FIELD_MANAGER: &str = "kekeeper";
/// The default interval of the DescribeKey check of the alias and the retained pairs' keys.
pub const DEFAULT_KMS_KEY_CHECK_INTERVAL: SignedDuration = SignedDuration::from_hours(1);
/// The default interval of the custody check (one KMS Decrypt per active key pair).
pub const DEFAULT_KEY_VERIFY_INTERVAL: SignedDuration = SignedDuration::from_hours(24);

/// How often one reconcile plans again on a resource that changed under it before it gives
/// up and retries with backoff.
const MAX_REPLANS: usize = 3;

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
    Serialize(#[from] SerializeError),
    /// A status write met a newer resource whose spec or annotations differ from those the
    /// plan was made on: nothing was written; the reconcile plans again on this one.
    #[error("the resource changed while it was reconciled (generation {:?})", .0.metadata.generation)]
    Superseded(Box<RecordingKeyConfig>),
}

/// A value that could not be serialised to JSON. Never replaced by an empty default: an empty
/// ConfigMap body under a forced apply would wipe the published keys (docs/design.md,
/// "Serialisation failures are errors").
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise {what}: {source}")]
pub struct SerializeError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// The JSON bytes of `value`, or an error naming `what`.
pub fn to_json_vec<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, SerializeError> {
    serde_json::to_vec(value).map_err(|source| SerializeError { what, source })
}

/// The JSON value of `value`, or an error naming `what`.
pub fn to_json_value<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<serde_json::Value, SerializeError> {
    serde_json::to_value(value).map_err(|source| SerializeError { what, source })
}

impl Error {
    /// The `reason` label of `kekeeper_reconcile_errors_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(_) => "KubeApi".to_owned(),
            Error::AdoptFailed { .. } => "AdoptFailed".to_owned(),
            Error::NoNamespace => "NoNamespace".to_owned(),
            Error::Serialize(_) => "Serialize".to_owned(),
            Error::Superseded(_) => "Superseded".to_owned(),
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
    /// Where key pairs are written before they become active (`--key-store`); `None`: they live
    /// only in this cluster.
    pub key_store: Option<KeyStoreUrl>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kms_key_check_interval: DEFAULT_KMS_KEY_CHECK_INTERVAL,
            key_verify_interval: DEFAULT_KEY_VERIFY_INTERVAL,
            operator_region: None,
            key_store: None,
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
    /// The KMS pace shared by all resources: a bucket per key pair quota and one for Decrypt.
    pub kms_pace: Arc<KmsPace>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// The key store of `settings.key_store` (docs/design.md, "The key store").
    pub key_store: Option<KeyStore>,
    /// Consecutive failed reconciles per resource that could not write status (API errors),
    /// and when the last one was counted; KMS failures are counted in status instead. Bounded:
    /// see [`Context::record_failure`] and [`Context::forget_deleted`].
    failures: Mutex<HashMap<ObjectRef<RecordingKeyConfig>, FailureCount>>,
}

/// Consecutive failures of one resource, and when the last was counted.
#[derive(Clone, Copy, Debug)]
struct FailureCount {
    count: u32,
    at: tokio::time::Instant,
}

/// A failure count untouched this long is dropped: twice the longest backoff, by when a
/// resource that still fails has counted again (its retry comes after at most the longest
/// backoff), so only deleted resources' entries (and those whose reconcile hangs) go.
/// docs/design.md, "Bounded per-resource memory".
const FAILURE_COUNT_KEPT: Duration = Duration::from_secs(2 * 300);

impl<K> Context<K> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        kms: K,
        clock: Clock,
        events: Events,
        key_pairs: KeyPairCache,
        public_keys: PublicKeysCache,
        kms_pace: Arc<KmsPace>,
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
            kms_pace,
            settings,
            metrics,
            key_store: None,
            failures: Mutex::default(),
        }
    }

    /// The context with a key store: every new pair is written there before it becomes active.
    pub fn with_key_store(mut self, store: KeyStore) -> Self {
        self.settings.key_store = Some(store.url().clone());
        self.key_store = Some(store);
        self
    }

    fn failures(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<RecordingKeyConfig>, FailureCount>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more failure of `rkc` and returns the backoff before its retry. Counts not
    /// touched for [`FAILURE_COUNT_KEPT`] go first, so a deleted resource whose delete event
    /// came before its last failure (a reconcile in flight) does not stay for ever.
    fn record_failure(&self, object: ObjectRef<RecordingKeyConfig>) -> (u32, Duration) {
        let now = tokio::time::Instant::now();
        let mut failures = self.failures();
        failures.retain(|_, f| now.duration_since(f.at) < FAILURE_COUNT_KEPT);
        let entry = failures
            .entry(object)
            .or_insert(FailureCount { count: 0, at: now });
        entry.count = entry.count.saturating_add(1);
        entry.at = now;
        (entry.count, policy::backoff(entry.count))
    }

    fn clear_failures(&self, object: &ObjectRef<RecordingKeyConfig>) {
        self.failures().remove(object);
    }

    /// A deleted resource's failure count goes with it (its delete event).
    pub fn forget_deleted(&self, rkc: &RecordingKeyConfig) {
        self.clear_failures(&ObjectRef::from_obj(rkc));
    }

    /// Resources with a failure count.
    #[cfg(test)]
    fn failing(&self) -> usize {
        self.failures().len()
    }
}

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
    let config = ConfigLabels {
        namespace: obs.namespace.clone(),
        config: obs.name.clone(),
    };
    ctx.metrics.record_status(&config, status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::fake::FakeKms;

    fn context() -> Context<FakeKms> {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "ns");
        Context::new(
            client.clone(),
            FakeKms::new(),
            system_clock(),
            Events::new(client, kube::runtime::events::Reporter::from("kekeeper")),
            cache::key_pair_cache(),
            cache::public_keys_cache(),
            Arc::new(KmsPace::uniform(1.0, 4)),
            Settings::default(),
            Metrics::default(),
        )
    }

    fn resource(name: &str) -> RecordingKeyConfig {
        let text = include_str!("../tests/fixtures/status/ready.json");
        let mut rkc: RecordingKeyConfig = serde_json::from_str(text).unwrap();
        rkc.metadata.name = Some(name.into());
        rkc
    }

    fn object_of(rkc: &RecordingKeyConfig) -> ObjectRef<RecordingKeyConfig> {
        ObjectRef::from_obj(rkc)
    }

    /// A deleted resource's failure count goes with its delete event; the count of one whose
    /// delete came first (a reconcile in flight) goes once it is older than twice the longest
    /// backoff, when the next failure of any resource is counted.
    #[tokio::test(start_paused = true)]
    async fn failure_counts_are_cleared_for_deleted_resources_and_bounded() {
        let ctx = context();
        let (a, b, c) = (resource("a"), resource("b"), resource("c"));
        assert_eq!(ctx.record_failure(object_of(&a)).0, 1);
        assert_eq!(ctx.record_failure(object_of(&a)).0, 2);
        ctx.record_failure(object_of(&b));
        assert_eq!(ctx.failing(), 2);
        ctx.forget_deleted(&a);
        assert_eq!(ctx.failing(), 1);
        // b is deleted while its reconcile runs: no delete clears it, and it never fails
        // again; c keeps failing at the longest backoff.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(300)).await;
            ctx.record_failure(object_of(&c));
        }
        assert_eq!(ctx.failing(), 1, "b's stale count is gone, c's stays");
        assert_eq!(ctx.record_failure(object_of(&c)).0, 3);
    }

    /// A value serde_json cannot serialise (a map with non-string keys) is an error that names
    /// what was being serialised, and a reconcile error with its own metric label; never an
    /// empty default.
    #[test]
    fn serialisation_failures_are_errors_naming_what() {
        let unserialisable = std::collections::BTreeMap::from([((1, 2), "x")]);
        let err = to_json_vec("the key pair records", &unserialisable).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot serialise the key pair records:"),
            "{err}"
        );
        let err = to_json_value("the public-keys ConfigMap", &unserialisable).unwrap_err();
        let err = Error::from(err);
        assert_eq!(err.metric_label(), "Serialize");
        assert!(
            err.to_string().contains("the public-keys ConfigMap"),
            "{err}"
        );
        assert_eq!(to_json_vec("ok", &[1, 2]).unwrap(), b"[1,2]");
    }
}
