//! Execute: the KMS and API work a plan lists — generate and self-test key pairs, store them,
//! retire and prune — and nothing else. What happened goes back to the loop, which hands it to
//! the report: as [`Progress`] while the work runs, as an [`Outcome`] at its end. Execute writes
//! no status and no event.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::context::{Context, Error, FIELD_MANAGER, Result, SerializeError};
use super::observe::{KeyCheck, Observation};
use super::plan::{Plan, Rotation};
use super::rewrap::{self, RewrapOutcome};
use super::stored::StoreSync;
use crate::config::ValidatedConfig;
use crate::crd::LastTest;
use crate::keypair::{
    self, ANNOTATION_RETIRED_AT, ANNOTATION_ROTATE_NOW_TOKEN, KeyPairRecord, KeyPairSecret,
    KeyPairState,
};
use crate::keyring::KeyRing;
use crate::keystore::{MarkKind, StoreError, WrapPut};
use crate::kms::{Kms, KmsError};
use crate::selftest;

/// Why the work stopped short.
#[derive(Clone, Debug)]
pub enum Failure {
    Kms(KmsError),
    /// A self-test failed for a reason other than KMS (the message says which step).
    SelfTest(String),
    /// The key store did not take a new pair's object: the pair did not become active.
    Store(StoreError),
}

impl Failure {
    /// The `reason` label of `kekeeper_reconcile_errors_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Failure::Kms(err) => err.code.clone(),
            Failure::SelfTest(_) => "SelfTestFailed".to_owned(),
            Failure::Store(_) => "KeyStoreUnavailable".to_owned(),
        }
    }
}

/// What the work did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The key pairs after the work.
    pub ring: KeyRing,
    /// Rotations done (a prefix of the plan's).
    pub done: usize,
    pub last_test: Option<LastTest>,
    pub failure: Option<Failure>,
    /// Secret names of the pairs restored from the key store.
    pub restored: Vec<String>,
    /// Key pair objects written to the store (new pairs, and retained pairs it lacked).
    pub store_writes: usize,
    /// A store write that failed outside the rotations (an object or marker of a retained
    /// pair): reported, it blocks nothing.
    pub store_error: Option<StoreError>,
    /// The rewrap of this reconcile's batch (docs/design.md, "Rewrap").
    pub rewrap: RewrapOutcome,
}

/// What the work has done so far, handed to the loop as it happens (for status during long
/// work, and for the events).
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// The rotations are about to start: nothing asked of KMS yet.
    Starting(&'a Outcome),
    /// One more rotation is done: `stored` is its new key pair.
    Stored {
        rotation: &'a Rotation,
        stored: &'a KeyPairRecord,
        outcome: &'a Outcome,
    },
    /// Active pairs shadowed by a newer active pair of the same organisation were retired.
    Shadowed(&'a [String]),
}

/// Where the work hands its progress as it happens: the loop passes the report's.
pub trait OnProgress {
    /// An error stops the work.
    fn progress(&mut self, progress: Progress<'_>) -> impl Future<Output = Result<()>> + Send;
}

/// Runs `plan` (its step is `Execute`): rotations in order until one fails, then retirements
/// and prunes, which need no KMS. Each step of progress goes to `on` as it happens.
pub async fn execute<K: Kms>(
    ctx: &Context<K>,
    obs: &Observation,
    plan: &Plan,
    now: Timestamp,
    mut on: impl OnProgress + Send,
) -> Result<Outcome> {
    let mut outcome = Outcome {
        ring: obs.ring.clone(),
        ..Outcome::default()
    };
    let Ok(config) = &obs.config else {
        return Ok(outcome);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &obs.namespace);
    // Pairs the store holds and the cluster lost come back before anything new is made, those
    // the plan trusts only (docs/design.md, "The key store", "Proof before publication"); the
    // ring has them already.
    let restorable = obs.store_sync().map_or(&[][..], |s| &s.restore);
    for pair in restorable
        .iter()
        .filter(|p| plan.restore.contains(&p.secret_name))
    {
        let token = obs.ring.token_of(pair);
        let restored = create_or_adopt(&secrets, pair, token).await?;
        info!(secret = %restored.secret_name, organization = %restored.organization_id, sequence = restored.sequence, "key pair restored from the key store");
        outcome.restored.push(restored.secret_name);
    }
    if !plan.rotations.is_empty() {
        // Waiters see the rotation before its first KMS call (unless announced already).
        on.progress(Progress::Starting(&outcome)).await?;
    }
    // In the operator-wide queue at the KMS pace until done (the gauge, status's estimate).
    let queued = (!plan.rotations.is_empty()).then(|| {
        let resource = format!("{}/{}", obs.namespace, obs.name);
        let spec = config.key_pair_spec;
        ctx.kms_pace
            .queue(&config.alias, spec, resource, plan.rotations.len())
    });
    for rotation in &plan.rotations {
        let generated = generate(ctx, obs, config, rotation, &mut outcome, now).await;
        queued.iter().for_each(|q| q.one_done());
        match generated {
            Ok(record) => {
                // Write-ahead: a pair the store did not take never becomes active.
                if let Some(store) = &ctx.key_store {
                    if let Err(err) = store.put(&record, obs.rkc.rotate_now_token()).await {
                        outcome.failure = Some(Failure::Store(err));
                        break;
                    }
                    outcome.store_writes += 1;
                }
                let stored = store(ctx, obs, &secrets, rotation, record, &mut outcome, now).await?;
                outcome.done += 1;
                on.progress(Progress::Stored {
                    rotation,
                    stored: &stored,
                    outcome: &outcome,
                })
                .await?;
            }
            Err(failure) => {
                outcome.failure = Some(failure);
                break;
            }
        }
    }
    let shadowed = outcome.ring.shadowed();
    let to_retire = outcome.ring.to_retire(&config.organization_ids);
    for name in &to_retire {
        retire(&secrets, name, now).await?;
    }
    outcome.ring.retire(&to_retire, now);
    mark(ctx, &mut outcome, &to_retire, MarkKind::Retired, now).await;
    if !shadowed.is_empty() {
        on.progress(Progress::Shadowed(&shadowed)).await?;
    }
    // Onto the key this reconcile's check saw, never one status remembers.
    if let (false, Some(KeyCheck::Usable { description, .. }), Some(listed)) =
        (plan.rewrap.is_empty(), &obs.key, &obs.listed)
    {
        // The status on the API server: the resource's cache may not have our own last
        // batch's write yet, and a wrap it records needs no second proof.
        let api: Api<crate::crd::RecordingKeyConfig> =
            Api::namespaced(ctx.client.clone(), &obs.namespace);
        if let Some(status) = api.get_status(&obs.name).await?.status {
            outcome.ring.merge_recorded_wraps(&status);
        }
        outcome.rewrap = rewrap::run(
            ctx,
            &secrets,
            &mut outcome.ring,
            listed,
            &plan.rewrap,
            &description.key_arn,
            now,
        )
        .await?;
    }
    if let Some(sync) = obs.store_sync() {
        sync_store(ctx, obs, sync, &mut outcome, now).await;
    }
    // A pair is pruned only once the store has recorded it, so a restore does not bring it back.
    let pruned = mark(ctx, &mut outcome, &plan.prune, MarkKind::Pruned, now).await;
    for name in &pruned {
        prune(&secrets, name).await?;
    }
    outcome.ring.remove(&pruned);
    Ok(outcome)
}

/// Writes to the store what it lacks of the retained pairs: their objects, and the retirement
/// markers of retired ones. Failures are kept for the report; they block nothing.
async fn sync_store<K>(
    ctx: &Context<K>,
    obs: &Observation,
    sync: &StoreSync,
    outcome: &mut Outcome,
    now: Timestamp,
) {
    let Some(store) = &ctx.key_store else { return };
    let listed = obs.listed.as_deref().unwrap_or_default();
    // Only trusted pairs reach the write-once store (docs/design.md, "Proof before publication").
    let unstored: Vec<&KeyPairSecret> = listed
        .iter()
        .filter(|p| sync.unstored.contains(&p.secret_name) && outcome.ring.is_trusted(p))
        .collect();
    for pair in unstored {
        match store.put(pair, obs.ring.token_of(pair)).await {
            Ok(()) => outcome.store_writes += 1,
            Err(err) => {
                warn!(error = %err, "cannot write a retained key pair to the key store");
                outcome.store_error.get_or_insert(err);
            }
        }
    }
    // The proven wraps the store lacks (a store configured after the rewrap), after their
    // pairs' objects (docs/design.md, "Rewrap", the key store's copy).
    let wraps = listed.iter().filter_map(|pair| {
        let proven = outcome.ring.proven_wrap(&pair.record)?;
        (sync.unstored_wraps.contains(&pair.secret_name) && outcome.ring.is_trusted(pair))
            .then(|| {
                pair.wrap_under(&proven.kms_key_arn)
                    .map(|wrap| (pair, wrap))
            })
            .flatten()
    });
    for (pair, wrap) in wraps {
        match store.put_wrap(pair, wrap).await {
            Ok(WrapPut::Created | WrapPut::Exists) => {}
            Ok(WrapPut::Other(_)) => {
                let err = StoreError {
                    url: store.url().to_string(),
                    operation: "PutObject",
                    key: pair.secret_name.clone(),
                    code: "WrapDiffers".to_owned(),
                    message: format!(
                        "the store holds another wrap of {} under {} than the proven one in the Secret; it is not overwritten, and a restore proves it before using it",
                        pair.secret_name, wrap.kms_key_arn
                    ),
                };
                warn!(error = %err, "the key store holds another wrap of a key pair");
                outcome.store_error.get_or_insert(err);
            }
            Err(err) => {
                warn!(error = %err, "cannot write a key pair's wrap to the key store");
                outcome.store_error.get_or_insert(err);
            }
        }
    }
    mark(ctx, outcome, &sync.unmarked, MarkKind::Retired, now).await;
}

/// Records in the store that the named pairs were retired or pruned; returns the names it
/// recorded (all of them without a store).
async fn mark<K>(
    ctx: &Context<K>,
    outcome: &mut Outcome,
    names: &[String],
    kind: MarkKind,
    now: Timestamp,
) -> Vec<String> {
    let Some(store) = &ctx.key_store else {
        return names.to_vec();
    };
    let mut marked = Vec::new();
    for name in names {
        let Some(record) = outcome
            .ring
            .records()
            .iter()
            .find(|r| &r.secret_name == name && outcome.ring.is_trusted(r))
        else {
            continue;
        };
        let at = record.retired_at.unwrap_or(now);
        match store.mark(record, kind, at).await {
            Ok(()) => marked.push(name.clone()),
            Err(err) => {
                warn!(secret = %name, error = %err, "cannot record in the key store that the key pair was {}", kind.as_str());
                outcome.store_error.get_or_insert(err);
            }
        }
    }
    marked
}

/// One key pair, generated at the pace of its key pair spec's quota and self-tested through
/// KMS (docs/design.md, "Rate limits").
async fn generate<K: Kms>(
    ctx: &Context<K>,
    obs: &Observation,
    config: &ValidatedConfig,
    rotation: &Rotation,
    outcome: &mut Outcome,
    now: Timestamp,
) -> Result<KeyPairSecret, Failure> {
    let org = &rotation.organization_id;
    info!(organization = %org, reason = %rotation.reason, why = %rotation.message, "generating key pair");
    let _in_flight = ctx
        .kms_pace
        .key_pairs(&config.alias, config.key_pair_spec)
        .acquire()
        .await;
    // The self-test's Decrypt.
    let _decrypt = ctx.kms_pace.symmetric().acquire().await;
    let passed = selftest::run(&ctx.kms, config, org)
        .await
        .map_err(|failure| {
            outcome.last_test = Some(LastTest {
                time: now,
                passed: false,
                message: format!("organisation {org}: {failure}"),
            });
            match failure.kms_error() {
                Some(err) => Failure::Kms(err.clone()),
                None => Failure::SelfTest(failure.to_string()),
            }
        })?;
    let replicas = replica_checks(ctx, obs, config, &passed.key_pair, org).await;
    outcome.last_test = Some(LastTest {
        time: now,
        passed: true,
        message: format!(
            "organisation {org}: key pair round-tripped through KMS in {} ms{replicas}",
            passed.report.total().as_millis()
        ),
    });
    Ok(KeyPairSecret::new_active(
        &obs.name,
        &obs.namespace,
        outcome.ring.next_sequence(org),
        passed.key_pair,
        config.alias.as_str(),
        config.context_for(org),
        now,
        rotation.reason.as_str(),
    ))
}

/// Stores a self-tested pair and retires the organisation's previous active pair; returns the
/// pair stored (or adopted).
async fn store<K>(
    ctx: &Context<K>,
    obs: &Observation,
    secrets: &Api<Secret>,
    rotation: &Rotation,
    record: KeyPairSecret,
    outcome: &mut Outcome,
    now: Timestamp,
) -> Result<KeyPairRecord> {
    let stored = create_or_adopt(secrets, &record, obs.rkc.rotate_now_token()).await?;
    let org = &rotation.organization_id;
    let previous: Vec<String> = outcome
        .ring
        .records()
        .iter()
        .filter(|r| {
            &r.organization_id == org
                && r.state == KeyPairState::Active
                && r.name() != stored.name()
                && outcome.ring.is_trusted(r)
        })
        .map(KeyPairRecord::name)
        .collect();
    for name in &previous {
        retire(secrets, name, now).await?;
    }
    outcome.ring.retire(&previous, now);
    mark(ctx, outcome, &previous, MarkKind::Retired, now).await;
    // Self-tested through KMS just now: proven (and remembered, for a reconcile that sees the
    // Secret before the status recording it).
    ctx.remember_proven(&obs.namespace, &stored.secret_name, stored.fingerprint());
    outcome.ring.add_proven(stored.clone());
    Ok(stored)
}

/// Creates the key pair Secret; if it already exists with the same public key (a retry after a
/// crash between the Secret write and the status write), adopts it instead of making a second
/// active pair.
async fn create_or_adopt(
    api: &Api<Secret>,
    record: &KeyPairSecret,
    rotate_now_token: Option<&str>,
) -> Result<KeyPairRecord> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut secret = record.to_secret().map_err(|source| SerializeError {
        what: "the key pair Secret's metadata.json",
        source,
    })?;
    if let Some(token) = rotate_now_token {
        secret
            .annotations_mut()
            .insert(ANNOTATION_ROTATE_NOW_TOKEN.to_owned(), token.to_owned());
    }
    match api.create(&params, &secret).await {
        Ok(_) => Ok(record.record.clone()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let name = record.name();
            info!(secret = %name, "key pair Secret exists (retry after a crash?); adopting it");
            let existing = api.get(&name).await?;
            let existing =
                KeyPairSecret::from_secret(&existing).map_err(|e| Error::AdoptFailed {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
            // Only the same pair is adopted: another one under this name is not ours until a
            // proof says so (docs/design.md, "Proof before publication").
            if existing.fingerprint() != record.fingerprint() {
                return Err(Error::AdoptFailed {
                    message: format!(
                        "it holds another public key ({}, not {}); it is not adopted, and is \
                         proven through KMS as a candidate in the next reconcile",
                        existing.fingerprint(),
                        record.fingerprint()
                    ),
                    name,
                });
            }
            Ok(existing.into_record())
        }
        Err(err) => Err(err.into()),
    }
}

/// Marks a key pair Secret retired (label and annotation); its material stays.
async fn retire(api: &Api<Secret>, name: &str, at: Timestamp) -> Result<()> {
    let patch = json!({
        "metadata": {
            "labels": { keypair::LABEL_STATE: KeyPairState::Retired.as_str() },
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

/// Deletes a retired pair the user asked to have pruned (`recordingRetention`).
async fn prune(api: &Api<Secret>, name: &str) -> Result<()> {
    info!(secret = %name, "pruning key pair retired longer than recordingRetention");
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The new pair's blob decrypted through each replica of a multi-Region key, at the symmetric
/// pace, as the Test button does; for the self-test's status message (`; replicas: eu-west-1
/// ok`). A replica that refuses does not stop the pair, which the home Region proved: it is
/// reported (docs/design.md, "Multi-Region reads").
async fn replica_checks<K: Kms>(
    ctx: &Context<K>,
    obs: &Observation,
    config: &ValidatedConfig,
    key_pair: &crate::kms::GeneratedKeyPair,
    org: &str,
) -> String {
    let Some(KeyCheck::Usable { description, .. }) = &obs.key else {
        return String::new();
    };
    let regions = selftest::replica_regions(config, description);
    let mut results = Vec::with_capacity(regions.len());
    for region in &regions {
        let _decrypt = ctx.kms_pace.symmetric().acquire().await;
        let context = config.context_for(org);
        let checks =
            selftest::check_replicas(&ctx.kms, key_pair, &context, std::slice::from_ref(region))
                .await;
        for check in checks {
            match check.result {
                Ok(_) => results.push(format!("{} ok", check.region)),
                Err(failure) => {
                    warn!(organization = %org, region = %check.region, %failure, "a replica of the KMS key would not decrypt the new key pair");
                    results.push(format!("{} FAILED ({failure})", check.region));
                }
            }
        }
    }
    if results.is_empty() {
        String::new()
    } else {
        format!("; replicas: {}", results.join(", "))
    }
}
