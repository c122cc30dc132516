//! Report: the one place that turns what a reconcile observed and did into status, events and
//! the public-keys ConfigMap. Every status write is based on the newest view of the resource
//! (our own last write included) and guarded by its resourceVersion, so a reconcile that ran on
//! a stale cache never rolls status back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::cache::content_digest;
pub use super::context::Events;
use super::context::{Context, Error, FIELD_MANAGER, Result, SerializeError, to_json_value};
use super::execute::{Failure, OnProgress, Outcome, Progress};
use super::observe::{KeyCheck, Observation};
use super::plan::{Plan, Step};
use super::ratelimit::PaceEstimate;
use super::status::{self, StatusInput};
use crate::crd::{RecordingKeyConfig, RecordingKeyConfigStatus};
use crate::keypair::{self, LABEL_CONFIG, LABEL_MANAGED_BY};
use crate::keyring::KeyRing;

/// Progress during long work is written at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Conflicting writes (409) retried on a fresh read before giving up for this reconcile.
const CONFLICT_RETRIES: usize = 3;

/// Writes status on top of the newest view of the resource.
pub struct StatusWriter {
    /// The resource as the plan saw it: a newer view that differs from it in what the plan
    /// reads (generation, spec, annotations) supersedes the plan.
    planned: Arc<RecordingKeyConfig>,
    view: Arc<RecordingKeyConfig>,
    last_write: Option<Instant>,
    /// Status as the reconcile found it (what is new in this reconcile is announced).
    initial: Option<RecordingKeyConfigStatus>,
}

impl StatusWriter {
    pub fn new(rkc: Arc<RecordingKeyConfig>) -> Self {
        StatusWriter {
            initial: rkc.status.clone(),
            planned: rkc.clone(),
            view: rkc,
            last_write: None,
        }
    }

    /// Writes what `build` makes of the newest view, unless the view already shows it. A 409
    /// (someone, or our own earlier write, changed the resource since that view) re-reads it:
    /// if only status changed (our own earlier write the cache had not shown), it builds again
    /// on the newer status; if what the plan read changed (a new spec, a rotate-now token),
    /// nothing is written and the reconcile is superseded, to be planned again on the newer
    /// resource (docs/design.md, "A conflict re-plans").
    pub async fn write<K>(
        &mut self,
        ctx: &Context<K>,
        build: impl Fn(&RecordingKeyConfig) -> RecordingKeyConfigStatus,
    ) -> Result<RecordingKeyConfigStatus> {
        let api: Api<RecordingKeyConfig> = Api::namespaced(
            ctx.client.clone(),
            &self.view.namespace().unwrap_or_default(),
        );
        let name = self.view.name_any();
        let mut attempt = 0;
        loop {
            let desired = build(&self.view);
            if self.view.status.as_ref() == Some(&desired) {
                return Ok(desired);
            }
            let patch = json!({
                "apiVersion": RecordingKeyConfig::api_version(&()),
                "kind": RecordingKeyConfig::kind(&()),
                "metadata": {"resourceVersion": self.view.resource_version()},
                "status": desired,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(written) => {
                    self.view = Arc::new(written);
                    self.last_write = Some(Instant::now());
                    return Ok(desired);
                }
                Err(kube::Error::Api(err)) if err.code == 409 && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    let fresh = api.get_status(&name).await?;
                    if plan_inputs_changed(&self.planned, &fresh) {
                        return Err(Error::Superseded(Box::new(fresh)));
                    }
                    self.view = Arc::new(fresh);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// The report of the work `plan` lists while it runs.
    pub fn reporting<'a, K>(
        &'a mut self,
        ctx: &'a Context<K>,
        obs: &'a Observation,
        plan: &'a Plan,
        now: Timestamp,
    ) -> ProgressReport<'a, K> {
        ProgressReport {
            ctx,
            writer: self,
            obs,
            plan,
            now,
        }
    }

    /// Before the first KMS call of new work: status says what is pending (Reconciling, and
    /// Ready=False while rotations wait), so waiters never see a stale Ready=True.
    pub async fn announce<K>(
        &mut self,
        ctx: &Context<K>,
        obs: &Observation,
        plan: &Plan,
        now: Timestamp,
    ) -> Result<()> {
        if plan.rotations.is_empty() && obs.rkc.status.is_some() {
            return Ok(());
        }
        self.progress_now(ctx, obs, plan, None, now).await
    }

    /// During long work: progress, at most every [`PROGRESS_EVERY`].
    pub async fn progress<K>(
        &mut self,
        ctx: &Context<K>,
        obs: &Observation,
        plan: &Plan,
        outcome: &Outcome,
        now: Timestamp,
    ) -> Result<()> {
        if self
            .last_write
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return Ok(());
        }
        self.progress_now(ctx, obs, plan, Some(outcome), now).await
    }

    async fn progress_now<K>(
        &mut self,
        ctx: &Context<K>,
        obs: &Observation,
        plan: &Plan,
        outcome: Option<&Outcome>,
        now: Timestamp,
    ) -> Result<()> {
        // While the work runs: how long its queued pairs will take at the KMS pace.
        let pace = pace_estimate(ctx, obs);
        self.write(ctx, |view| {
            let mut input = input(view, obs, plan, outcome, false, now);
            input.pace = pace.clone();
            status::desired(&input)
        })
        .await?;
        Ok(())
    }
}

/// The report of the work while it runs: its events at once, status at most every
/// [`PROGRESS_EVERY`].
pub struct ProgressReport<'a, K> {
    ctx: &'a Context<K>,
    writer: &'a mut StatusWriter,
    obs: &'a Observation,
    plan: &'a Plan,
    now: Timestamp,
}

impl<K: Send + Sync> OnProgress for ProgressReport<'_, K> {
    async fn progress(&mut self, progress: Progress<'_>) -> Result<()> {
        let (ctx, obs, plan, now) = (self.ctx, self.obs, self.plan, self.now);
        let writer = &mut *self.writer;
        match progress {
            // Pairs that will wait longer than a progress interval at the KMS pace: status says
            // so at once, not only after the first of them.
            Progress::Starting(outcome)
                if pace_estimate(ctx, obs).is_some_and(|p| p.left > PROGRESS_EVERY) =>
            {
                writer
                    .progress_now(ctx, obs, plan, Some(outcome), now)
                    .await
            }
            Progress::Starting(outcome) => writer.progress(ctx, obs, plan, outcome, now).await,
            Progress::Stored {
                rotation,
                stored,
                outcome,
            } => {
                let note = format!(
                    "{}: key pair {} for organisation {} in Secret {} ({})",
                    rotation.reason,
                    stored.key_pair_id,
                    rotation.organization_id,
                    stored.name(),
                    rotation.message
                );
                let secret = secret_ref(obs, stored.name());
                publish_once(ctx, &obs.rkc, "KeyPairGenerated", "Rotate", &note, secret).await;
                // After the last rotation the report comes next: a progress write then would say
                // Ready=True before the rotate-now token is honoured and the keys published.
                if outcome.done == plan.rotations.len() {
                    return Ok(());
                }
                writer.progress(ctx, obs, plan, outcome, now).await
            }
            Progress::Shadowed(retired) => {
                let note = format!(
                    "two active key pairs for one organisation (an interrupted rotation?); the newest stays active, retired: {}",
                    retired.join(", ")
                );
                let warning = EventType::Warning;
                publish(
                    ctx,
                    &obs.rkc,
                    warning,
                    "DuplicateActiveKeyPair",
                    "Retire",
                    &note,
                    None,
                )
                .await;
                Ok(())
            }
        }
    }
}

/// How long this resource's queued key pairs will take at the KMS pace, while it has any
/// (docs/design.md, "Rate limits").
fn pace_estimate<K>(ctx: &Context<K>, obs: &Observation) -> Option<PaceEstimate> {
    let config = obs.config.as_ref().ok()?;
    let resource = format!("{}/{}", obs.namespace, obs.name);
    ctx.kms_pace
        .estimate(&config.alias, config.key_pair_spec, &resource)
}

/// A reference to one of the resource's key pair Secrets (the related object of an event).
fn secret_ref(obs: &Observation, name: String) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Secret".to_owned()),
        name: Some(name),
        namespace: Some(obs.namespace.clone()),
        ..ObjectReference::default()
    }
}

/// Whether `fresh` differs from `planned` in what a plan reads besides status: the spec (and
/// its generation) and the annotations (rotate-now, verify-now, acknowledged key pairs).
fn plan_inputs_changed(planned: &RecordingKeyConfig, fresh: &RecordingKeyConfig) -> bool {
    planned.metadata.generation != fresh.metadata.generation
        || planned.spec != fresh.spec
        || planned.annotations() != fresh.annotations()
}

/// The status input of this reconcile: what it observed, and what the work did (`outcome`,
/// once it started), on top of `view`'s status. A rotate-now token is honoured only when the
/// work is `finished`: the one planned for, once every rotation is done.
fn input<'a>(
    view: &'a RecordingKeyConfig,
    obs: &'a Observation,
    plan: &'a Plan,
    outcome: Option<&'a Outcome>,
    finished: bool,
    now: Timestamp,
) -> StatusInput<'a> {
    let config_error = match &plan.step {
        Step::ConfigInvalid(message) => Some(message.as_str()),
        _ => None,
    };
    let failure = outcome.and_then(|o| o.failure.as_ref());
    let (kms_failure, self_test_failure, store_failure) = match failure {
        Some(Failure::Kms(err)) => (Some(err), None, None),
        Some(Failure::SelfTest(message)) => (None, Some(message.as_str()), None),
        Some(Failure::Store(err)) => (None, None, Some(err)),
        // A proof that KMS interrupted is reported like a failed KMS call of the work.
        None => (
            obs.proofs.as_ref().and_then(|p| p.error.as_ref()),
            None,
            None,
        ),
    };
    let pending = plan.rotations.len() - outcome.map_or(0, |o| o.done);
    let complete = finished && plan.step == Step::Execute && pending == 0 && failure.is_none();
    StatusInput {
        rkc: &obs.rkc,
        current: view.status.as_ref(),
        now,
        ring: outcome.map_or(&obs.ring, |o| &o.ring),
        custody: obs.custody.as_ref(),
        config_error,
        key: obs.key.as_ref(),
        kms_failure,
        self_test_failure,
        last_test: outcome.and_then(|o| o.last_test.as_ref()),
        pending,
        store: obs.store.as_ref(),
        store_writes: outcome.map_or(0, |o| o.store_writes),
        store_write_error: outcome.and_then(|o| o.store_error.as_ref()),
        store_failure,
        honoured_token: view
            .honoured_token(plan.token.as_deref().filter(|_| complete))
            .map(str::to_owned),
        pace: None,
        rewrap: outcome.map(|o| &o.rewrap),
    }
}

/// Writes the status for what the reconcile observed and did, with its events, and the
/// public-keys ConfigMap.
pub async fn report<K>(
    ctx: &Context<K>,
    writer: &mut StatusWriter,
    obs: &Observation,
    plan: &Plan,
    outcome: Option<&Outcome>,
    now: Timestamp,
) -> Result<RecordingKeyConfigStatus> {
    let before = writer.view.status.clone();
    let desired = writer
        .write(ctx, |view| {
            status::desired(&input(view, obs, plan, outcome, true, now))
        })
        .await?;
    let changed = before.as_ref() != Some(&desired);
    warn_about(ctx, obs, plan, outcome, changed).await;
    warn_about_custody(ctx, obs, writer.initial.as_ref(), &desired).await;
    tell_about_store(ctx, obs, outcome).await;
    if matches!(plan.step, Step::Execute | Step::Blocked) {
        let ring = outcome.map_or(&obs.ring, |o| &o.ring);
        apply_public_keys(ctx, &obs.rkc, ring).await?;
    }
    Ok(desired)
}

/// Warning events: a KMS error or key problem on every occurrence (the reason is its code, so
/// a new cause is a new event, not a longer series of the first); an invalid spec once.
async fn warn_about<K>(
    ctx: &Context<K>,
    obs: &Observation,
    plan: &Plan,
    outcome: Option<&Outcome>,
    changed: bool,
) {
    let failure = outcome.and_then(|o| o.failure.as_ref());
    let (reason, action, note) = match (&plan.step, &obs.key, failure) {
        (Step::ConfigInvalid(message), _, _) if changed => {
            ("ConfigInvalid".to_owned(), "Validate", message.clone())
        }
        (_, _, Some(Failure::Kms(err))) => {
            (err.code.clone(), err.operation.as_str(), err.to_string())
        }
        (_, _, Some(Failure::SelfTest(message))) => {
            ("SelfTestFailed".to_owned(), "SelfTest", message.clone())
        }
        (_, _, Some(Failure::Store(err))) => (
            "KeyStoreUnavailable".to_owned(),
            err.operation,
            format!("{err}; the new key pair does not become active until it is stored"),
        ),
        (_, Some(KeyCheck::Failed(err)), _) => {
            (err.code.clone(), err.operation.as_str(), err.to_string())
        }
        (
            _,
            Some(KeyCheck::Unusable {
                reason, message, ..
            }),
            _,
        ) => (reason.clone(), "DescribeKey", message.clone()),
        _ => return,
    };
    warn!(reason = %reason, action, "{note}");
    publish(
        ctx,
        &obs.rkc,
        EventType::Warning,
        &reason,
        action,
        &note,
        None,
    )
    .await;
}

/// An event, optionally about a related object (the key pair Secret). Events are best
/// effort: a failure to record one must not fail the reconcile.
async fn publish<K>(
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
    if let Err(err) = ctx
        .events
        .recorder
        .publish(&event, &rkc.object_ref(&()))
        .await
    {
        warn!(error = %err, reason, "could not publish event");
    }
}

/// A Normal event that is never repeated (it names `related`, a new object): created
/// directly, with no series and nothing kept in memory. Best effort, like [`publish`].
async fn publish_once<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    reason: &str,
    action: &str,
    note: &str,
    related: ObjectReference,
) {
    let reporter = &ctx.events.reporter;
    let now = (ctx.clock)();
    let regarding = rkc.object_ref(&());
    let namespace = rkc.namespace().unwrap_or_default();
    let event = K8sEvent {
        metadata: ObjectMeta {
            // As kube's Recorder names events: the object's name and the time (cut and hashed
            // to fit for a name near 253 characters).
            name: Some(keypair::name_with_suffix(
                &rkc.name_any(),
                &format!(".{:x}", now.as_nanosecond()),
            )),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Normal".to_owned()),
        reason: Some(reason.to_owned()),
        action: Some(action.to_owned()),
        note: Some(truncate(note, 1000)),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding),
        related: Some(related),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        ..K8sEvent::default()
    };
    let api: Api<K8sEvent> = Api::namespaced(ctx.events.client.clone(), &namespace);
    if let Err(err) = api.create(&PostParams::default(), &event).await {
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

/// The name of the ConfigMap with the active public keys: `<config>-public-keys`, or for a
/// config name over 241 characters, the name cut and a hash of it, so it stays a valid
/// name of at most 253 characters (`keypair::name_with_suffix`).
pub fn public_keys_config_map_name(config: &str) -> String {
    keypair::name_with_suffix(config, "-public-keys")
}

/// The key store's events: pairs restored from it (Normal), a listing that failed and objects
/// refused (Warning).
async fn tell_about_store<K>(ctx: &Context<K>, obs: &Observation, outcome: Option<&Outcome>) {
    let restored = outcome.map_or(&[][..], |o| &o.restored);
    if !restored.is_empty() {
        let note = format!(
            "{} key pairs restored from the key store (same names, fingerprints checked): {}",
            restored.len(),
            restored.join(", ")
        );
        info!("{note}");
        publish(
            ctx,
            &obs.rkc,
            EventType::Normal,
            "KeyPairsRestored",
            "Restore",
            &note,
            None,
        )
        .await;
    }
    let Some(check) = &obs.store else { return };
    let (reason, action, note) = match &check.result {
        Err(err) => ("KeyStoreUnavailable", err.operation, err.to_string()),
        Ok(sync) if !sync.refused.is_empty() || !sync.differing.is_empty() => {
            let named: Vec<String> = sync
                .refused
                .iter()
                .map(|(key, why)| format!("{key}: {why}"))
                .chain(
                    sync.differing
                        .iter()
                        .map(|n| format!("{n}: the stored object holds another key pair")),
                )
                .collect();
            (
                "KeyStoreMismatch",
                "Restore",
                format!("key store objects not restored: {}", named.join("; ")),
            )
        }
        Ok(_) => return,
    };
    warn!(reason, "{note}");
    publish(
        ctx,
        &obs.rkc,
        EventType::Warning,
        reason,
        action,
        &note,
        None,
    )
    .await;
}

/// A Warning event for each key pair problem status did not list before (a new problem is
/// loud once, not on every reconcile).
async fn warn_about_custody<K>(
    ctx: &Context<K>,
    obs: &Observation,
    before: Option<&RecordingKeyConfigStatus>,
    now: &RecordingKeyConfigStatus,
) {
    let known = |p: &crate::crd::KeyPairProblem| {
        before.is_some_and(|b| {
            b.key_pair_problems
                .iter()
                .any(|k| k.secret_name == p.secret_name && k.reason == p.reason)
        })
    };
    for problem in now.key_pair_problems.iter().filter(|p| !known(p)) {
        warn!(reason = %problem.reason, secret = %problem.secret_name, "{}", problem.message);
        let secret = secret_ref(obs, problem.secret_name.clone());
        publish(
            ctx,
            &obs.rkc,
            EventType::Warning,
            &problem.reason,
            "VerifyCustody",
            &problem.message,
            Some(secret),
        )
        .await;
    }
}

/// The `<config>-public-keys` ConfigMap: one PEM per organisation (key `<org>.pem`, the org id
/// or its hash as in the Secret label) and `activeKeyPairs.json` (org id, key pair id,
/// fingerprint, PEM) for recorders, which need the key pair id for the recording header. Owned
/// by the resource: it is derived data, rebuilt from the Secrets.
///
/// Only verified keys are published: an active pair whose Secret disagrees with the fingerprint
/// recorded in status keeps the entry `published` (the ConfigMap as it is) has for it, if that
/// entry carries the recorded fingerprint; otherwise the organisation is left out.
pub fn public_keys_config_map(
    rkc: &RecordingKeyConfig,
    ring: &KeyRing,
    published: Option<&ConfigMap>,
) -> Result<ConfigMap, SerializeError> {
    let mut data = BTreeMap::new();
    let mut entries = Vec::new();
    for (org, record) in ring.active_by_org() {
        let pem_key = format!("{}.pem", keypair::organization_label(org));
        let entry = if ring.is_verified(record) {
            let pem = record.public_key_pem();
            Some((
                pem.clone(),
                json!({
                    "organizationId": org,
                    "keyPairId": record.key_pair_id,
                    "publicKeyFingerprint": record.fingerprint(),
                    "publicKeyPem": pem,
                }),
            ))
        } else {
            published_entry(published, org, &pem_key, &ring.trusted_fingerprint(record))
        };
        if let Some((pem, json)) = entry {
            data.insert(pem_key, pem);
            entries.push(json);
        }
    }
    // An error, not an empty default: applied with force, an empty document would withdraw
    // every published key (docs/design.md, "Serialisation failures are errors").
    let entries = serde_json::to_string_pretty(&entries).map_err(|source| SerializeError {
        what: "activeKeyPairs.json",
        source,
    })?;
    data.insert("activeKeyPairs.json".to_owned(), entries);
    Ok(ConfigMap {
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
            owner_references: rkc.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The organisation's entry in the published ConfigMap, if its PEM has the `trusted`
/// fingerprint.
fn published_entry(
    published: Option<&ConfigMap>,
    org: &str,
    pem_key: &str,
    trusted: &str,
) -> Option<(String, serde_json::Value)> {
    let data = published?.data.as_ref()?;
    let pem = data.get(pem_key)?;
    let der = keypair::parse_public_key_pem(pem).ok()?;
    if keypair::fingerprint(&der) != trusted {
        return None;
    }
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(data.get("activeKeyPairs.json")?).ok()?;
    let entry = entries
        .into_iter()
        .find(|e| e["organizationId"] == org && e["publicKeyFingerprint"] == trusted)?;
    Some((pem.clone(), entry))
}

/// Server-side applies the ConfigMap unless the cached one already carries the same labels
/// and data.
async fn apply_public_keys<K>(
    ctx: &Context<K>,
    rkc: &RecordingKeyConfig,
    ring: &KeyRing,
) -> Result<()> {
    let name = public_keys_config_map_name(&rkc.name_any());
    let namespace = rkc.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    // The cache keeps digests only: the published entries of an unverified pair are read from
    // the API server (a list by name: the controller may list ConfigMaps, not get them).
    let unverified = ring
        .active_by_org()
        .values()
        .any(|record| !ring.is_verified(record));
    let published = if unverified {
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        api.list(&by_name).await?.items.into_iter().next()
    } else {
        None
    };
    let desired = public_keys_config_map(rkc, ring, published.as_ref())?;
    if ctx.public_keys.get(&namespace, &name) == Some(content_digest(&desired)) {
        return Ok(());
    }
    let mut body = to_json_value("the public-keys ConfigMap", &desired)?;
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
