//! The controller (SPEC §2–§4): gather (the resource, its key pair Secrets from the cache),
//! decide (the policy chains with an injected clock), act (KMS, Secrets, status, ConfigMap).
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

pub mod leader;
pub mod ratelimit;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::config::{self, ValidatedConfig};
use crate::crd::{ANNOTATION_ROTATE_NOW, LastTest, RecordingKeyConfig, RecordingKeyConfigStatus};
use crate::keypair::{
    self, ANNOTATION_RETIRED_AT, KeyPairRecord, KeyPairState, LABEL_CONFIG, LABEL_MANAGED_BY,
    LABEL_STATE,
};
use crate::kms::{KeyDescription, Kms, KmsError, KmsErrorKind};
use crate::metrics::{ConfigLabels, KeyPairLabels, Metrics};
use crate::policy::{self, ActivePair, RotationInput};
use crate::selftest;
use ratelimit::TokenBucket;
use status::{KmsObservation, StatusInput};

/// The field manager of every server-side apply kekeeper makes.
pub const FIELD_MANAGER: &str = "kekeeper";
/// The default interval of the DescribeKey check of the alias and the retained pairs' keys.
pub const DEFAULT_KMS_KEY_CHECK_INTERVAL: SignedDuration = SignedDuration::from_hours(1);

/// The time, injected so schedules are tested without sleeping.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("KMS: {0}")]
    Kms(KmsError),
    #[error("{0}")]
    SelfTest(#[from] selftest::SelfTestFailure),
    #[error("key pair Secret {name} exists but cannot be read: {message}")]
    AdoptFailed { name: String, message: String },
    #[error("resource has no namespace")]
    NoNamespace,
}

impl Error {
    /// The `reason` label of `kekeeper_reconcile_errors`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(_) => "KubeApi".to_owned(),
            Error::Kms(err) => err.code.clone(),
            Error::SelfTest(failure) => match failure.kms_error() {
                Some(err) => err.code.clone(),
                None => "SelfTestFailed".to_owned(),
            },
            Error::AdoptFailed { .. } => "AdoptFailed".to_owned(),
            Error::NoNamespace => "NoNamespace".to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub kms_key_check_interval: SignedDuration,
    /// The operator's AWS region (the default homeRegion).
    pub operator_region: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kms_key_check_interval: DEFAULT_KMS_KEY_CHECK_INTERVAL,
            operator_region: None,
        }
    }
}

/// What every reconcile shares.
pub struct Context<K> {
    pub client: Client,
    pub kms: K,
    pub clock: Clock,
    pub recorder: Recorder,
    /// Key pair Secrets (label `kekeeper.io/config`), from a reflector.
    pub secrets: Store<Secret>,
    /// `<config>-public-keys` ConfigMaps, from a reflector.
    pub config_maps: Store<ConfigMap>,
    /// One bucket for key pair generation across all resources.
    pub key_pair_rate: Arc<TokenBucket>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Consecutive failures per resource, for the backoff of `error_policy`.
    failures: Mutex<HashMap<ObjectRef<RecordingKeyConfig>, Backoff>>,
}

/// A resource in backoff after a failed reconcile, and what it looked like then.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Timestamp>,
    generation: Option<i64>,
    rotate_now: Option<String>,
}

impl<K> Context<K> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        kms: K,
        clock: Clock,
        recorder: Recorder,
        secrets: Store<Secret>,
        config_maps: Store<ConfigMap>,
        key_pair_rate: Arc<TokenBucket>,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        Context {
            client,
            kms,
            clock,
            recorder,
            secrets,
            config_maps,
            key_pair_rate,
            settings,
            metrics,
            failures: Mutex::default(),
        }
    }

    fn failures(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<RecordingKeyConfig>, Backoff>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more failure of `rkc` and returns the backoff before its retry.
    fn record_failure(&self, rkc: &RecordingKeyConfig) -> (u32, Duration) {
        let mut failures = self.failures();
        let backoff = failures.entry(ObjectRef::from_obj(rkc)).or_default();
        backoff.failures = backoff.failures.saturating_add(1);
        let delay = policy::backoff(backoff.failures);
        backoff.until = SignedDuration::try_from(delay)
            .ok()
            .and_then(|delay| (self.clock)().checked_add(delay).ok());
        backoff.generation = rkc.metadata.generation;
        backoff.rotate_now = rotate_now_token(rkc).map(str::to_owned);
        (backoff.failures, delay)
    }

    fn clear_failures(&self, object: &ObjectRef<RecordingKeyConfig>) {
        self.failures().remove(object);
    }

    /// How much longer `rkc` waits out its backoff: a reconcile that some other event (our own
    /// status write, say) brings before the retry time makes no KMS call. A changed spec or a
    /// new rotate-now token is acted on at once.
    fn backoff_remaining(&self, rkc: &RecordingKeyConfig, now: Timestamp) -> Option<Duration> {
        let failures = self.failures();
        let backoff = failures.get(&ObjectRef::from_obj(rkc))?;
        if backoff.generation != rkc.metadata.generation
            || backoff.rotate_now.as_deref() != rotate_now_token(rkc)
        {
            return None;
        }
        let remaining = backoff.until?.duration_since(now);
        Duration::try_from(remaining)
            .ok()
            .filter(|remaining| !remaining.is_zero())
    }
}

/// `error_policy`: capped exponential backoff per resource (5 s doubling to 5 min), reset by
/// the next successful reconcile.
pub fn error_policy<K>(
    rkc: Arc<RecordingKeyConfig>,
    error: &Error,
    ctx: Arc<Context<K>>,
) -> Action {
    let (failures, delay) = ctx.record_failure(&rkc);
    warn!(name = %rkc.name_any(), error = %error, failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The name of the ConfigMap with the active public keys.
pub fn public_keys_config_map_name(config: &str) -> String {
    format!("{config}-public-keys")
}

/// The `kekeeper.io/rotate-now` token a key pair Secret was generated under, so a retry after
/// a crash before the status write does not rotate a second time for the same token.
pub const ANNOTATION_ROTATE_NOW_TOKEN: &str = "kekeeper.io/rotate-now-token";

/// Key pair Secret name -> the rotate-now token it was generated under.
type Tokens = BTreeMap<String, String>;

/// Records of the resource's key pair Secrets (unreadable ones are logged and skipped), and
/// the rotate-now tokens they carry.
fn records_of<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    config: &str,
) -> (Vec<KeyPairRecord>, Tokens) {
    let mut tokens = Tokens::new();
    let records = secrets
        .into_iter()
        .filter_map(|secret| match KeyPairRecord::from_secret(secret) {
            Ok(record) if record.config_name == config || secret_matches(secret, config) => {
                if let Some(token) = secret.annotations().get(ANNOTATION_ROTATE_NOW_TOKEN) {
                    tokens.insert(record.name(), token.clone());
                }
                Some(record)
            }
            Ok(_) => None,
            Err(err) => {
                warn!(secret = %secret.name_any(), error = %err, "skipping unreadable key pair Secret");
                None
            }
        })
        .collect();
    (records, tokens)
}

fn secret_matches(secret: &Secret, config: &str) -> bool {
    secret.labels().get(LABEL_CONFIG) == Some(&keypair::config_label(config))
}

fn cached_records<K>(
    ctx: &Context<K>,
    namespace: &str,
    config: &str,
) -> (Vec<KeyPairRecord>, Tokens) {
    let secrets = ctx
        .secrets
        .state_filter(|s| s.namespace().as_deref() == Some(namespace) && secret_matches(s, config));
    records_of(secrets.iter().map(|s| s.as_ref()), config)
}

/// The active record per organisation (the newest, should there ever be two).
pub(crate) fn active_by_org(records: &[KeyPairRecord]) -> BTreeMap<&str, &KeyPairRecord> {
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

/// Which organisations need a new key pair and why.
fn rotations<'a>(
    rkc: &'a RecordingKeyConfig,
    config: &'a ValidatedConfig,
    records: &'a [KeyPairRecord],
    tokens: &'a Tokens,
    alias_key_arn: Option<&'a str>,
    now: Timestamp,
) -> Vec<(String, &'static str, String)> {
    let status = rkc.status.as_ref();
    let active = active_by_org(records);
    config
        .organization_ids
        .iter()
        .filter_map(|org| {
            // Honoured in status, or already by the organisation's active pair (a rotation
            // whose status write was lost).
            let requested = rotate_now_token(rkc);
            let honoured = match active.get(org.as_str()).and_then(|r| tokens.get(&r.name())) {
                Some(token) if Some(token.as_str()) == requested => requested,
                _ => status.and_then(|s| s.rotate_now_token.as_deref()),
            };
            let input = RotationInput {
                now,
                active: active.get(org.as_str()).map(|r| ActivePair {
                    created_at: r.created_at,
                    kms_key_arn: &r.kms_key_arn,
                    key_pair_spec: r.key_pair_spec,
                    encryption_context_key: &r.encryption_context.key,
                }),
                alias_arn: config.alias.as_str(),
                active_alias_arn: status.and_then(|s| s.kms_key_alias_arn.as_deref()),
                alias_key_arn,
                key_pair_spec: config.key_pair_spec,
                encryption_context_key: &config.encryption_context_key,
                period: rkc.spec.rotation.period,
                on_kms_key_change: rkc.spec.rotation.on_kms_key_change,
                rotate_now_token: requested,
                honoured_token: honoured,
            };
            policy::rotation_needed(&input).map(|(reason, message)| (org.clone(), reason, message))
        })
        .collect()
}

fn rotate_now_token(rkc: &RecordingKeyConfig) -> Option<&str> {
    rkc.annotations()
        .get(ANNOTATION_ROTATE_NOW)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

/// Active pairs to retire: those of organisations no longer in the spec, and any active pair
/// shadowed by a newer active one of the same organisation (left by an interrupted rotation).
fn removed<'a>(config: &ValidatedConfig, records: &'a [KeyPairRecord]) -> Vec<&'a KeyPairRecord> {
    let wanted: BTreeSet<&str> = config.organization_ids.iter().map(String::as_str).collect();
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
        .collect()
}

/// Retired pairs past `recordingRetention` (only when the user set it).
fn prunable(
    retention: Option<SignedDuration>,
    records: &[KeyPairRecord],
    now: Timestamp,
) -> Vec<&KeyPairRecord> {
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
        .collect()
}

fn retention(rkc: &RecordingKeyConfig) -> Option<SignedDuration> {
    rkc.spec
        .recording_retention
        .as_deref()
        .and_then(|r| policy::parse_retention(r).ok())
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
    if let Some(remaining) = ctx.backoff_remaining(&rkc, (ctx.clock)()) {
        debug!(?remaining, "in backoff after a failure; retrying then");
        return Ok(Action::requeue(remaining));
    }
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&rkc, &ctx).await;
    let object = ObjectRef::from_obj(rkc.as_ref());
    match &result {
        Ok(_) => {
            ctx.clear_failures(&object);
        }
        Err(err) => {
            ctx.metrics
                .reconcile_errors
                .get_or_create(&crate::metrics::ErrorLabels {
                    reason: err.metric_label(),
                })
                .inc();
        }
    }
    result
}

async fn reconcile_inner<K: Kms>(rkc: &RecordingKeyConfig, ctx: &Context<K>) -> Result<Action> {
    let namespace = rkc.namespace().ok_or(Error::NoNamespace)?;
    let name = rkc.name_any();
    let now = now_of(ctx);
    let current = rkc.status.clone().unwrap_or_default();

    if rkc.spec.suspend {
        info!("suspended; no changes");
        return Ok(Action::await_change());
    }

    // Decide on what the cache holds.
    let config = match config::validate(&rkc.spec, ctx.settings.operator_region.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            let (records, _) = cached_records(ctx, &namespace, &name);
            let desired = desired_status(
                ctx,
                rkc,
                &records,
                now,
                Some(&err.to_string()),
                KmsObservation::Unchanged,
            );
            if desired != current {
                publish(
                    ctx,
                    rkc,
                    EventType::Warning,
                    "ConfigInvalid",
                    "Validate",
                    &err.to_string(),
                )
                .await;
                patch_status(ctx, rkc, &desired).await?;
            }
            return Ok(Action::await_change());
        }
    };

    let (cached, cached_tokens) = cached_records(ctx, &namespace, &name);
    let check_due = policy::kms_key_check_due(
        current.last_kms_key_check_time,
        ctx.settings.kms_key_check_interval,
        now,
    ) || current.observed_generation != rkc.metadata.generation
        || status::kms_unavailable(&current);
    let due = |records: &[KeyPairRecord], tokens: &Tokens| {
        !rotations(
            rkc,
            &config,
            records,
            tokens,
            current.kms_key_arn.as_deref(),
            now,
        )
        .is_empty()
            || !removed(&config, records).is_empty()
            || !prunable(retention(rkc), records, now).is_empty()
    };

    if !check_due && !due(&cached, &cached_tokens) {
        return steady(ctx, rkc, &cached, now).await;
    }

    // The cache may lag behind our own writes (a reconcile right after a rotation): decide
    // again on a fresh list before asking KMS for anything.
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = secrets_api
        .list(&ListParams::default().labels(&keypair::config_selector(&name)))
        .await?;
    let (mut records, tokens) = records_of(listed.items.iter(), &name);
    if !check_due && !due(&records, &tokens) {
        return steady(ctx, rkc, &records, now).await;
    }

    let description = match ctx.kms.describe_key(&config.alias).await {
        Ok(description) => description,
        Err(err) => return kms_failed(ctx, rkc, &records, now, err, None).await,
    };
    if let Err(problem) = selftest::validate_key(&description, &config) {
        let message = problem.to_string();
        let desired = desired_status(
            ctx,
            rkc,
            &records,
            now,
            None,
            KmsObservation::KeyProblem {
                description: &description,
                reason: problem.reason(),
                message: &message,
                at_risk: Vec::new(),
            },
        );
        if desired != current {
            publish(
                ctx,
                rkc,
                EventType::Warning,
                "ConfigInvalid",
                "DescribeKey",
                &message,
            )
            .await;
            patch_status(ctx, rkc, &desired).await?;
        }
        apply_public_keys(ctx, rkc, &records).await?;
        return Ok(Action::requeue(to_std(ctx.settings.kms_key_check_interval)));
    }
    let at_risk = historical_keys_at_risk(ctx, &records, &description).await;

    // Rotate or create, organisation by organisation.
    let mut last_test: Option<LastTest> = None;
    let due = rotations(
        rkc,
        &config,
        &records,
        &tokens,
        Some(&description.key_arn),
        now,
    );
    for (org, reason, why) in &due {
        info!(organization = %org, reason, why = %why, "generating key pair");
        ctx.key_pair_rate.acquire().await;
        let passed = match selftest::run(&ctx.kms, &config, org).await {
            Ok(passed) => passed,
            Err(failure) => {
                let test = LastTest {
                    time: now,
                    passed: false,
                    message: format!("organisation {org}: {failure}"),
                };
                return match failure.kms_error().cloned() {
                    Some(err) => kms_failed(ctx, rkc, &records, now, err, Some(test)).await,
                    None => {
                        let desired = desired_status(
                            ctx,
                            rkc,
                            &records,
                            now,
                            None,
                            KmsObservation::Checked {
                                description: &description,
                                at_risk: at_risk.clone(),
                                last_test: Some(test),
                                complete: false,
                            },
                        );
                        publish(
                            ctx,
                            rkc,
                            EventType::Warning,
                            "SelfTestFailed",
                            "SelfTest",
                            &failure.to_string(),
                        )
                        .await;
                        patch_status(ctx, rkc, &desired).await?;
                        Err(Error::SelfTest(failure))
                    }
                };
            }
        };
        last_test = Some(LastTest {
            time: now,
            passed: true,
            message: format!(
                "organisation {org}: key pair round-tripped through KMS in {} ms",
                passed.report.total().as_millis()
            ),
        });
        let sequence = keypair::next_sequence(&records, org);
        let record = KeyPairRecord::new_active(
            &name,
            &namespace,
            sequence,
            passed.key_pair,
            config.context_for(org),
            now,
            reason,
        );
        let stored = create_or_adopt(&secrets_api, &record, rotate_now_token(rkc)).await?;
        let previous: Vec<String> = records
            .iter()
            .filter(|r| {
                r.organization_id == *org
                    && r.state == KeyPairState::Active
                    && r.name() != stored.name()
            })
            .map(KeyPairRecord::name)
            .collect();
        for secret in &previous {
            retire(&secrets_api, secret, now).await?;
        }
        for r in records.iter_mut().filter(|r| previous.contains(&r.name())) {
            r.retire(now);
        }
        records.retain(|r| r.name() != stored.name());
        publish_about(
            ctx,
            rkc,
            EventType::Normal,
            "KeyPairGenerated",
            "Rotate",
            &format!(
                "{reason}: key pair {} for organisation {org} in Secret {} ({why})",
                stored.key_pair_id,
                stored.name()
            ),
            Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                name: Some(stored.name()),
                namespace: Some(namespace.clone()),
                ..ObjectReference::default()
            }),
        )
        .await;
        records.push(stored);
    }

    // Organisations removed from the spec: retire, keep.
    let to_retire: Vec<String> = removed(&config, &records)
        .iter()
        .map(|r| r.name())
        .collect();
    for secret in &to_retire {
        retire(&secrets_api, secret, now).await?;
    }
    for r in records.iter_mut().filter(|r| to_retire.contains(&r.name())) {
        r.retire(now);
    }

    // Retention: delete only what the user asked to have pruned.
    let to_prune: Vec<String> = prunable(retention(rkc), &records, now)
        .iter()
        .map(|r| r.name())
        .collect();
    for secret in &to_prune {
        info!(secret = %secret, "pruning key pair retired longer than recordingRetention");
        match secrets_api.delete(secret, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(err) => return Err(err.into()),
        }
    }
    records.retain(|r| !to_prune.contains(&r.name()));

    // Every due rotation is done: the annotation's token (if any) is honoured.
    let honoured = rotate_now_token(rkc)
        .map(str::to_owned)
        .or(current.rotate_now_token.clone());
    let desired = status::desired(&StatusInput {
        rkc,
        records: &records,
        now,
        config_error: None,
        kms: KmsObservation::Checked {
            description: &description,
            at_risk,
            last_test,
            complete: true,
        },
        check_interval: ctx.settings.kms_key_check_interval,
        honoured_token: honoured,
    });
    if desired != current {
        patch_status(ctx, rkc, &desired).await?;
    }
    apply_public_keys(ctx, rkc, &records).await?;
    Ok(finish(ctx, rkc, &records, &desired, now))
}

/// What status should say for `records` and a KMS observation, keeping the rotate-now token
/// honoured so far.
fn desired_status<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    records: &[KeyPairRecord],
    now: Timestamp,
    config_error: Option<&str>,
    kms: KmsObservation<'_>,
) -> RecordingKeyConfigStatus {
    status::desired(&StatusInput {
        rkc,
        records,
        now,
        config_error,
        kms,
        check_interval: ctx.settings.kms_key_check_interval,
        honoured_token: rkc.status.as_ref().and_then(|s| s.rotate_now_token.clone()),
    })
}

/// Nothing is due: no KMS call, and writes only if status or the ConfigMap drifted from what
/// the records say.
async fn steady<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    records: &[KeyPairRecord],
    now: Timestamp,
) -> Result<Action> {
    let current = rkc.status.clone().unwrap_or_default();
    let desired = desired_status(ctx, rkc, records, now, None, KmsObservation::Unchanged);
    if desired != current {
        patch_status(ctx, rkc, &desired).await?;
    }
    apply_public_keys(ctx, rkc, records).await?;
    Ok(finish(ctx, rkc, records, &desired, now))
}

/// Metrics, and the requeue at the earliest due instant.
fn finish<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    records: &[KeyPairRecord],
    status: &crate::crd::RecordingKeyConfigStatus,
    now: Timestamp,
) -> Action {
    let namespace = rkc.namespace().unwrap_or_default();
    let name = rkc.name_any();
    let active = active_by_org(records);
    for (org, record) in &active {
        ctx.metrics
            .key_pair_created
            .get_or_create(&KeyPairLabels {
                namespace: namespace.clone(),
                config: name.clone(),
                organization_id: (*org).to_owned(),
            })
            .set(record.created_at.as_second());
    }
    if let Some(next) = status.next_rotation_time {
        ctx.metrics
            .next_rotation
            .get_or_create(&ConfigLabels {
                namespace,
                config: name,
            })
            .set(next.as_second() as f64);
    }
    let retention = retention(rkc);
    let next = policy::next_due(
        active
            .values()
            .map(|r| policy::rotation_due(r.created_at, rkc.spec.rotation.period)),
        status.last_kms_key_check_time,
        ctx.settings.kms_key_check_interval,
        records
            .iter()
            .filter(|r| r.state == KeyPairState::Retired)
            .map(|r| {
                retention.and_then(|ret| r.retired_at.and_then(|at| policy::prune_due(at, ret)))
            }),
        now,
    );
    let wait = next.duration_since(now);
    // At least a second, so a due instant in the past does not spin.
    Action::requeue(to_std(wait).max(Duration::from_secs(1)))
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// A KMS failure: the active pairs stay; status and a Warning event show the error; the
/// reconcile fails so `error_policy` backs off.
async fn kms_failed<K: Kms>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    records: &[KeyPairRecord],
    now: Timestamp,
    err: KmsError,
    last_test: Option<LastTest>,
) -> Result<Action> {
    warn!(operation = %err.operation, code = %err.code, request_id = ?err.request_id, "KMS call failed: {}", err.message);
    let current = rkc.status.clone().unwrap_or_default();
    let desired = desired_status(
        ctx,
        rkc,
        records,
        now,
        None,
        KmsObservation::Failed {
            error: err.to_status(now),
            last_test,
        },
    );
    publish(
        ctx,
        rkc,
        EventType::Warning,
        "KmsError",
        err.operation.as_str(),
        &err.to_string(),
    )
    .await;
    if desired != current {
        patch_status(ctx, rkc, &desired).await?;
    }
    Err(Error::Kms(err))
}

/// Retained key pairs whose KMS key (other than the alias's current one, which
/// `validate_key` checks) is disabled, pending deletion or gone: recordings made with them
/// cannot be decrypted. One DescribeKey per distinct key.
async fn historical_keys_at_risk<K: Kms>(
    ctx: &Context<K>,
    records: &[KeyPairRecord],
    current: &KeyDescription,
) -> Vec<String> {
    let keys: BTreeSet<&str> = records
        .iter()
        .map(|r| r.kms_key_arn.as_str())
        .filter(|k| *k != current.key_arn)
        .collect();
    let mut at_risk = Vec::new();
    for key_arn in keys {
        match ctx.kms.describe_key_arn(key_arn).await {
            Ok(description) if description.key_state != "Enabled" => {
                at_risk.push(format!("{key_arn}: {}", description.key_state));
            }
            Ok(_) => {}
            Err(err) if err.kind == KmsErrorKind::NotFound => {
                at_risk.push(format!("{key_arn}: {}", err.code));
            }
            Err(err) => {
                warn!(key = %key_arn, code = %err.code, "could not check a retained key pair's KMS key");
            }
        }
    }
    at_risk
}

/// Creates the key pair Secret; if it already exists (a retry after a crash between the Secret
/// write and the status write), adopts it instead of making a second active pair.
async fn create_or_adopt(
    api: &Api<Secret>,
    record: &KeyPairRecord,
    rotate_now_token: Option<&str>,
) -> Result<KeyPairRecord> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut secret = record.to_secret();
    if let Some(token) = rotate_now_token {
        secret
            .annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW_TOKEN.to_owned(), token.to_owned());
    }
    match api.create(&params, &secret).await {
        Ok(_) => Ok(record.clone()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let name = record.name();
            info!(secret = %name, "key pair Secret exists (retry after a crash?); adopting it");
            let existing = api.get(&name).await?;
            KeyPairRecord::from_secret(&existing).map_err(|e| Error::AdoptFailed {
                name,
                message: e.to_string(),
            })
        }
        Err(err) => Err(err.into()),
    }
}

/// Marks a key pair Secret retired (label and annotation); its material stays.
async fn retire(api: &Api<Secret>, name: &str, at: Timestamp) -> Result<()> {
    let patch = json!({
        "metadata": {
            "labels": { LABEL_STATE: KeyPairState::Retired.as_str() },
            "annotations": { ANNOTATION_RETIRED_AT: at.to_string() },
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    info!(secret = %name, "key pair retired (kept)");
    Ok(())
}

async fn patch_status<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    status: &crate::crd::RecordingKeyConfigStatus,
) -> Result<()> {
    let api: Api<RecordingKeyConfig> =
        Api::namespaced(ctx.client.clone(), &rkc.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": RecordingKeyConfig::api_version(&()),
        "kind": RecordingKeyConfig::kind(&()),
        "status": status,
    });
    api.patch_status(
        &rkc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The `<config>-public-keys` ConfigMap: one PEM per organisation (key `<org>.pem`, the org id
/// or its hash as in the Secret label) and `activeKeyPairs.json` (org id, key pair id,
/// fingerprint, PEM) for recorders, which need the key pair id for the recording header.
pub fn public_keys_config_map(rkc: &RecordingKeyConfig, records: &[KeyPairRecord]) -> ConfigMap {
    let active = active_by_org(records);
    let mut data = BTreeMap::new();
    let mut entries = Vec::new();
    for (org, record) in &active {
        let pem = record.public_key_pem();
        data.insert(
            format!("{}.pem", keypair::organization_label(org)),
            pem.clone(),
        );
        entries.push(json!({
            "organizationId": org,
            "keyPairId": record.key_pair_id,
            "publicKeyFingerprint": record.fingerprint(),
            "publicKeyPem": pem,
        }));
    }
    data.insert(
        "activeKeyPairs.json".to_owned(),
        serde_json::to_string_pretty(&entries).unwrap_or_default(),
    );
    let owner = rkc.controller_owner_ref(&());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(public_keys_config_map_name(&rkc.name_any())),
            namespace: rkc.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), "kekeeper".to_owned()),
                (
                    LABEL_CONFIG.to_owned(),
                    keypair::config_label(&rkc.name_any()),
                ),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// Server-side applies the ConfigMap unless the cached one already carries the same data.
async fn apply_public_keys<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    records: &[KeyPairRecord],
) -> Result<()> {
    let desired = public_keys_config_map(rkc, records);
    let name = public_keys_config_map_name(&rkc.name_any());
    let namespace = rkc.namespace().unwrap_or_default();
    let cached = ctx
        .config_maps
        .get(&ObjectRef::new(&name).within(&namespace));
    if cached.is_some_and(|c| c.data == desired.data && c.labels() == desired.labels()) {
        return Ok(());
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut body = serde_json::to_value(&desired).unwrap_or_default();
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("ConfigMap");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

async fn publish<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    publish_about(ctx, rkc, type_, reason, action, note, None).await;
}

/// An event, optionally about a related object (the key pair Secret): the recorder folds
/// events with the same reason and related object into a series, so naming the Secret keeps
/// one event per key pair.
async fn publish_about<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
    secondary: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary,
    };
    // Events are best effort; a failure to record one must not fail the reconcile.
    if let Err(err) = ctx.recorder.publish(&event, &rkc.object_ref(&())).await {
        warn!(error = %err, reason, "could not publish event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::fake::FakeKms;
    use kube::runtime::reflector;

    fn rkc(name: &str) -> Arc<RecordingKeyConfig> {
        let spec = serde_json::from_value(json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": ["org-a"],
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new(name, spec);
        rkc.metadata.namespace = Some("telephony".into());
        Arc::new(rkc)
    }

    #[tokio::test]
    async fn error_policy_backs_off_per_resource_and_resets() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "default");
        let ctx = Arc::new(Context::new(
            client.clone(),
            FakeKms::new(),
            system_clock(),
            Recorder::new(client, "kekeeper".into()),
            reflector::store().0,
            reflector::store().0,
            Arc::new(TokenBucket::new(1.0, 1)),
            Settings::default(),
            Metrics::default(),
        ));
        let a = rkc("a");
        let b = rkc("b");
        let delays: Vec<Action> = (0..3)
            .map(|_| error_policy(a.clone(), &Error::NoNamespace, ctx.clone()))
            .collect();
        assert_eq!(
            delays,
            [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s)))
        );
        assert_eq!(
            error_policy(b, &Error::NoNamespace, ctx.clone()),
            Action::requeue(Duration::from_secs(5))
        );
        ctx.clear_failures(&ObjectRef::from_obj(a.as_ref()));
        assert_eq!(
            error_policy(a, &Error::NoNamespace, ctx),
            Action::requeue(Duration::from_secs(5))
        );
    }

    #[tokio::test]
    async fn a_reconcile_during_backoff_waits_without_kms_or_api_calls() {
        // Any API request would reach this mock and hang the test: there must be none.
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "default");
        let now: Timestamp = "2026-11-29T08:00:00Z".parse().unwrap();
        let kms = FakeKms::new();
        let ctx = Arc::new(Context::new(
            client.clone(),
            kms.clone(),
            Arc::new(move || now),
            Recorder::new(client, "kekeeper".into()),
            reflector::store().0,
            reflector::store().0,
            Arc::new(TokenBucket::new(1.0, 1)),
            Settings::default(),
            Metrics::default(),
        ));
        let failed = rkc("a");
        error_policy(failed.clone(), &Error::NoNamespace, ctx.clone());
        // Our own status write brings the resource back at once: it waits out the 5 s.
        let action = reconcile(failed.clone(), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
        assert_eq!(kms.total_calls(), 0);
        // A new rotate-now token (or spec generation) is not held back.
        let mut annotated = (*failed).clone();
        annotated
            .annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW.into(), "now".into());
        assert_eq!(ctx.backoff_remaining(&annotated, now), None);
        let mut changed = (*failed).clone();
        changed.metadata.generation = Some(2);
        assert_eq!(ctx.backoff_remaining(&changed, now), None);
        // At the retry time the backoff is over.
        let later = now.checked_add(SignedDuration::from_secs(5)).unwrap();
        assert_eq!(ctx.backoff_remaining(&failed, later), None);
    }
}
