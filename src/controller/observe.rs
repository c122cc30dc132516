//! Observe: gather what a decision needs, each piece once — the resource, its key pair Secrets
//! (from the cache, or listed fresh when work is due) and, only when the plan asks for it, what
//! KMS says about the alias's key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::context::{Context, Error, Result};
use super::custody::{self, CustodyCheck};
use super::proof::{self, ProofCheck};
use super::stored::{self, StoreCheck, StoreSync};
use crate::config::{self, ValidatedConfig};
use crate::crd::RecordingKeyConfig;
use crate::keypair::{
    self, ANNOTATION_ROTATE_NOW_TOKEN, KeyPairRecord, KeyPairSecret, LABEL_CONFIG,
};
pub use crate::keyring::Tokens;
use crate::keyring::{KeyRing, Pruning, Reading};
use crate::keystore::KeyStoreUrl;
use crate::kms::{KeyDescription, Kms, KmsError, KmsErrorKind};
use crate::{policy, selftest};

/// Everything one reconcile decides on.
#[derive(Clone, Debug)]
pub struct Observation {
    pub rkc: Arc<RecordingKeyConfig>,
    pub namespace: String,
    pub name: String,
    /// The spec, parsed; `Err` names the field and the fix.
    pub config: Result<ValidatedConfig, String>,
    /// The key pairs, read against what status recorded about them.
    pub ring: KeyRing,
    /// The key pair Secrets, with their private key blobs, once listed from the API server in
    /// this reconcile (the cache can lag behind our own writes, and keeps no blobs).
    pub listed: Option<Vec<KeyPairSecret>>,
    /// What KMS said about the key in this reconcile; `None` when it was not asked.
    pub key: Option<KeyCheck>,
    /// The custody check of the active pairs, when it ran in this reconcile.
    pub custody: Option<CustodyCheck>,
    /// The key store against the Secrets, when it was listed in this reconcile; the pairs it
    /// could restore are in `ring` and `listed` already, as candidates (or trusted, when status
    /// recorded them); the plan decides which are restored.
    pub store: Option<StoreCheck>,
    /// The proofs through KMS of candidate pairs, when the plan asked for them.
    pub proofs: Option<ProofCheck>,
    /// The time of this reconcile.
    pub now: Timestamp,
}

/// The outcome of asking KMS about the alias's key (and the retained pairs' keys).
#[derive(Clone, Debug)]
pub enum KeyCheck {
    Usable {
        description: KeyDescription,
        /// Retained pairs' KMS keys that are disabled, pending deletion or gone.
        at_risk: Vec<String>,
        /// When KMS gave this answer (a shared answer may be up to the key-check interval old).
        checked_at: Timestamp,
    },
    /// KMS answered, and the key cannot root key pairs: missing alias, disabled, pending
    /// deletion, wrong type or region. Only a change by someone fixes it.
    Unusable {
        key_arn: Option<String>,
        reason: String,
        message: String,
        /// When KMS gave this answer.
        checked_at: Timestamp,
    },
    /// The DescribeKey call failed.
    Failed(KmsError),
}

impl KeyCheck {
    /// When KMS gave this answer; `None` for a failed call.
    pub fn checked_at(&self) -> Option<Timestamp> {
        match self {
            KeyCheck::Usable { checked_at, .. } | KeyCheck::Unusable { checked_at, .. } => {
                Some(*checked_at)
            }
            KeyCheck::Failed(_) => None,
        }
    }
}

impl Observation {
    /// The resource and its key pairs as the caches hold them; no request.
    pub fn from_cache<K>(
        ctx: &Context<K>,
        rkc: Arc<RecordingKeyConfig>,
        now: Timestamp,
    ) -> Result<Self> {
        let namespace = rkc.namespace().ok_or(Error::NoNamespace)?;
        let name = rkc.name_any();
        let config = config::validate(&rkc.spec, ctx.settings.operator_region.as_deref())
            .map_err(|err| err.to_string());
        let cached = ctx
            .key_pairs
            .group(&namespace, &keypair::config_label(&name), |_, pair| {
                let token = pair.rotate_now_token().map(str::to_owned);
                (pair.record(&name, &namespace), token)
            });
        let mut tokens = Tokens::new();
        let records = cached
            .into_iter()
            .map(|(record, token)| {
                if let Some(token) = token {
                    tokens.insert(record.name(), token);
                }
                record
            })
            .collect();
        let ring = ring_of(&rkc, records, tokens, now);
        Ok(Observation {
            rkc,
            namespace,
            name,
            config,
            ring,
            listed: None,
            key: None,
            custody: None,
            store: None,
            proofs: None,
            now,
        })
    }

    pub fn records(&self) -> &[KeyPairRecord] {
        self.ring.records()
    }

    /// Replaces the cached key pairs with a fresh list from the API server.
    pub async fn list_records<K>(&mut self, ctx: &Context<K>) -> Result<()> {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &self.namespace);
        let listed = api
            .list(&ListParams::default().labels(&keypair::config_selector(&self.name)))
            .await?;
        let (pairs, tokens) = records_of(listed.items.iter(), &self.name);
        let records = pairs.iter().map(|pair| pair.record.clone()).collect();
        self.ring = ring_of(&self.rkc, records, tokens, self.now);
        self.listed = Some(pairs);
        Ok(())
    }

    /// Whether the key pairs were listed from the API server in this reconcile.
    pub fn records_listed(&self) -> bool {
        self.listed.is_some()
    }

    /// Asks KMS about the alias's key; when it is usable, also about the retained pairs' keys.
    pub async fn check_key<K: Kms>(&mut self, ctx: &Context<K>) {
        let Ok(config) = &self.config else { return };
        let now = self.now;
        let check = match ctx.kms.describe_key(&config.alias).await {
            Err(err) if err.kind == KmsErrorKind::NotFound => KeyCheck::Unusable {
                checked_at: now,
                key_arn: None,
                reason: "AliasNotFound".to_owned(),
                message: format!(
                    "KMS has no alias {}: create it, or fix spec.kmsKeyAliasArn ({})",
                    config.alias.as_str(),
                    err.message
                ),
            },
            Err(err) => KeyCheck::Failed(err),
            Ok(description) => match selftest::validate_key(&description, config) {
                Err(problem) => KeyCheck::Unusable {
                    checked_at: answered_at(now, &description),
                    key_arn: Some(description.key_arn.clone()),
                    reason: problem.reason().to_owned(),
                    message: problem.to_string(),
                },
                Ok(()) => {
                    let at_risk = keys_at_risk(ctx, &self.ring, &description).await;
                    KeyCheck::Usable {
                        checked_at: answered_at(now, &description),
                        description,
                        at_risk,
                    }
                }
            },
        };
        self.key = Some(check);
    }

    /// Decrypts each active pair's private key through KMS and compares it with the recorded
    /// fingerprint; failed pairs are marked in the ring (they rotate).
    /// Only listed Secrets carry their blobs, and the check takes nothing else (docs/design.md,
    /// "Blobs by type"); the plan lists before it asks for the check, so listing here is a
    /// fallback, not the usual path.
    pub async fn verify_custody<K: Kms>(&mut self, ctx: &Context<K>) -> Result<()> {
        if self.listed.is_none() {
            self.list_records(ctx).await?;
        }
        let (Ok(config), Some(listed)) = (&self.config, &self.listed) else {
            return Ok(());
        };
        let check = custody::check(
            ctx,
            &self.ring,
            listed,
            &config.organization_ids,
            &config.replica_regions,
        )
        .await;
        for failure in &check.failures {
            self.ring.fail_custody(&failure.secret_name);
        }
        self.custody = Some(check);
        Ok(())
    }

    /// Proves the named candidate pairs through KMS under the key the alias resolves to in this
    /// reconcile's key check (the plan asks only after a usable one); the ring learns which are
    /// proven and which quarantined (docs/design.md, "Proof before publication").
    pub async fn prove<K: Kms>(&mut self, ctx: &Context<K>, names: &[String]) -> Result<()> {
        let (Ok(config), Some(listed), Some(KeyCheck::Usable { description, .. })) =
            (&self.config, &self.listed, &self.key)
        else {
            let check = ProofCheck::default();
            self.keep_proven_wraps(ctx, &check);
            self.proofs = Some(check);
            return Ok(());
        };
        // The resource's cache may not have our own newest status yet (a reconcile woken by
        // the Secret our last reconcile made): the status on the API server is the trust
        // anchor, and a pair it records, or has quarantined, needs no KMS call; nor does one
        // this process proved moments ago, whose status write may not be in yet
        // (docs/design.md, "Proof before publication").
        let api: Api<RecordingKeyConfig> = Api::namespaced(ctx.client.clone(), &self.namespace);
        let fresh = api.get_status(&self.name).await?;
        let anchors = ring_of(&fresh, Vec::new(), Tokens::new(), self.now);
        let mut unproven = Vec::new();
        // Trusted pairs the store restores with wraps (retired ones, never published, and
        // those status recorded): only their wraps are proven.
        let restoring = self.restoring();
        let mut wraps_only = Vec::new();
        for name in names {
            let Some(pair) = listed.iter().find(|p| &p.secret_name == name) else {
                continue;
            };
            let fingerprint = pair.fingerprint();
            let wrapped = !pair.wraps.is_empty() && restoring.contains(name);
            if anchors.recorded_fingerprint(name) == Some(fingerprint.as_str())
                || ctx.proven_here(&self.namespace, name, &fingerprint)
            {
                self.ring.prove(name);
                if wrapped {
                    wraps_only.push(name.clone());
                }
            } else if wrapped && self.ring.is_trusted(&pair.record) {
                wraps_only.push(name.clone());
            } else if let Some(q) = anchors
                .quarantined()
                .find(|q| &q.secret_name == name && q.fingerprint == pair.fingerprint())
            {
                self.ring.quarantine(q.clone());
            } else {
                unproven.push(name.clone());
            }
        }
        let check = proof::prove(
            ctx,
            config,
            &self.name,
            &description.key_arn,
            listed,
            &unproven,
            &wraps_only,
        )
        .await;
        for name in &check.proven {
            self.ring.prove(name);
            if let Some(pair) = listed.iter().find(|p| &p.secret_name == name) {
                ctx.remember_proven(&self.namespace, name, pair.fingerprint());
            }
        }
        for quarantined in &check.quarantined {
            self.ring.quarantine(quarantined.clone());
        }
        self.keep_proven_wraps(ctx, &check);
        // A restored pair's proven wrap is one of its proven blobs: custody, decrypt and
        // HistoricalKeysAtRisk follow it at once (docs/design.md, "Rewrap").
        let mut proven_wraps = false;
        for (name, wraps) in &check.wraps {
            if let Some(wrap) = wraps.last().filter(|_| restoring.contains(name)) {
                self.ring
                    .prove_wrap(name, &wrap.kms_key_arn, wrap.created_at);
                proven_wraps = true;
            }
        }
        if let (
            true,
            Some(KeyCheck::Usable {
                description,
                at_risk,
                ..
            }),
        ) = (proven_wraps, &mut self.key)
        {
            *at_risk = keys_at_risk(ctx, &self.ring, description).await;
        }
        self.proofs = Some(check);
        Ok(())
    }

    /// Secret names of the pairs the store restores in this reconcile (trusted or not).
    fn restoring(&self) -> Vec<String> {
        self.store_sync()
            .map(|sync| sync.restore.iter().map(|p| p.secret_name.clone()).collect())
            .unwrap_or_default()
    }

    /// The pairs the store restores keep only the wraps their proofs proved: a restored Secret
    /// carries no wrap KMS did not prove (docs/design.md, "The key store", wrap objects). The
    /// wraps that failed are reported with the store's refused objects (status, events).
    fn keep_proven_wraps<K>(&mut self, ctx: &Context<K>, check: &ProofCheck) {
        let restoring = self.restoring();
        let keep = |pair: &mut KeyPairSecret| {
            if restoring.contains(&pair.secret_name) && !pair.wraps.is_empty() {
                pair.wraps = check
                    .wraps
                    .get(&pair.secret_name)
                    .cloned()
                    .unwrap_or_default();
            }
        };
        self.listed.iter_mut().flatten().for_each(keep);
        let (
            Some(store),
            Some(StoreCheck {
                result: Ok(sync), ..
            }),
        ) = (&ctx.key_store, &mut self.store)
        else {
            return;
        };
        sync.restore.iter_mut().for_each(keep);
        for dropped in &check.dropped_wraps {
            let object = store.url().object_key(
                &self.namespace,
                &self.name,
                &dropped.organization_id,
                dropped.sequence,
            );
            let key = match crate::keystore::kms_key_id(&dropped.kms_key_arn) {
                Some(key_id) => KeyStoreUrl::wrap_key(&object, key_id),
                None => format!("{object} (wrap under {})", dropped.kms_key_arn),
            };
            if sync
                .restore
                .iter()
                .any(|p| p.secret_name == dropped.secret_name)
            {
                sync.refused.push((key, dropped.problem.clone()));
            }
        }
    }

    /// Lists the config's pairs in the key store and compares them with the Secrets (listed
    /// first if they were not). Pairs whose Secrets are gone and whose objects pass their checks
    /// join the ring and the listed Secrets as they were: execute creates their Secrets, and the
    /// plan sees them before it decides on new pairs. Every sequence the store holds is taken.
    pub async fn check_store<K: Kms>(&mut self, ctx: &Context<K>) -> Result<()> {
        let Some(store) = &ctx.key_store else {
            return Ok(());
        };
        if self.listed.is_none() {
            self.list_records(ctx).await?;
        }
        let result = match store.list(&self.namespace, &self.name).await {
            Ok(listing) => {
                for (org, sequence) in stored::taken_sequences(&listing) {
                    self.ring.note_sequence(org, sequence);
                }
                let listed = self.listed.get_or_insert_default();
                let sync = stored::compare(&listing, listed, &self.ring);
                listed.extend(sync.restore.iter().cloned());
                let records = sync.restore.iter().map(|p| p.record.clone()).collect();
                self.ring.restore(records, &sync.restore_tokens);
                // The key check of this reconcile ran before the store was read: the restored
                // pairs' KMS keys are checked now, so HistoricalKeysAtRisk covers them at once.
                if let (
                    false,
                    Some(KeyCheck::Usable {
                        description,
                        at_risk,
                        ..
                    }),
                ) = (sync.restore.is_empty(), &mut self.key)
                {
                    *at_risk = keys_at_risk(ctx, &self.ring, description).await;
                }
                Ok(sync)
            }
            Err(err) => {
                warn!(error = %err, "cannot list the key store");
                Err(err)
            }
        };
        self.store = Some(StoreCheck {
            url: store.url().to_string(),
            result,
        });
        Ok(())
    }

    /// The store's comparison with the Secrets, when it was listed in this reconcile.
    pub fn store_sync(&self) -> Option<&StoreSync> {
        self.store.as_ref().and_then(|s| s.result.as_ref().ok())
    }

    /// The key the alias resolves to: from this reconcile's check, else as status last saw it.
    pub fn alias_key_arn(&self) -> Option<&str> {
        match &self.key {
            Some(KeyCheck::Usable { description, .. }) => Some(&description.key_arn),
            _ => self
                .rkc
                .status
                .as_ref()
                .and_then(|s| s.kms_key_arn.as_deref()),
        }
    }
}

/// When KMS gave `description`: `now` less the age of a shared answer, in whole seconds (as
/// every status time). See docs/design.md, "When KMS was asked".
fn answered_at(now: Timestamp, description: &KeyDescription) -> Timestamp {
    let age = jiff::SignedDuration::try_from(description.age).unwrap_or_default();
    let at = now.checked_sub(age).unwrap_or(now);
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// The ring of `records` read against the resource's status at `now`.
pub fn ring_of(
    rkc: &RecordingKeyConfig,
    records: Vec<KeyPairRecord>,
    tokens: Tokens,
    now: Timestamp,
) -> KeyRing {
    let reading = Reading {
        acknowledged: rkc.acknowledged_key_pairs(),
        pruning: Some(Pruning {
            retention: retention(rkc),
            period: rkc.spec.rotation.period,
        }),
        now,
    };
    KeyRing::new(records, tokens, rkc.status.as_ref(), &reading)
}

/// `spec.recordingRetention`, parsed; `None`: pairs are kept for ever (an invalid value is
/// reported by the config check, and prunes nothing).
fn retention(rkc: &RecordingKeyConfig) -> Option<SignedDuration> {
    rkc.spec
        .recording_retention
        .as_deref()
        .and_then(|r| policy::parse_retention(r).ok())
}

/// The KMS keys (other than the alias's current one, which `validate_key` checks) that are
/// disabled, pending deletion or gone and that some retained key pair depends on: none of its
/// proven blobs (the original, or its newest proven wrap) is under a usable key, so recordings
/// made with it cannot be decrypted (docs/design.md, "Rewrap"). One DescribeKey per distinct key.
async fn keys_at_risk<K: Kms>(
    ctx: &Context<K>,
    ring: &KeyRing,
    current: &KeyDescription,
) -> Vec<String> {
    let keys: BTreeSet<&str> = ring
        .records()
        .iter()
        .flat_map(|r| ring.proven_key_arns(r))
        .filter(|k| *k != current.key_arn)
        .collect();
    let mut unusable: BTreeMap<&str, String> = BTreeMap::new();
    for key_arn in keys {
        match ctx.kms.describe_key_arn(key_arn).await {
            Ok(description) if description.key_state != "Enabled" => {
                unusable.insert(key_arn, description.key_state);
            }
            Ok(_) => {}
            Err(err) if err.kind == KmsErrorKind::NotFound => {
                unusable.insert(key_arn, err.code);
            }
            Err(err) => {
                warn!(key = %key_arn, code = %err.code, "could not check a retained key pair's KMS key");
            }
        }
    }
    let mut at_risk: BTreeSet<String> = BTreeSet::new();
    for record in ring.records() {
        let keys = ring.proven_key_arns(record);
        if keys.iter().all(|k| unusable.contains_key(k)) {
            at_risk.extend(keys.iter().map(|k| format!("{k}: {}", unusable[k])));
        }
    }
    at_risk.into_iter().collect()
}

/// The resource's key pair Secrets, with their blobs (unreadable ones are logged and skipped),
/// and the rotate-now tokens they carry.
pub fn records_of<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    config: &str,
) -> (Vec<KeyPairSecret>, Tokens) {
    let mut tokens = Tokens::new();
    let pairs = secrets
        .into_iter()
        .filter_map(|secret| match KeyPairSecret::from_secret(secret) {
            Ok(mut pair) if pair.config_name == config || secret_matches(secret, config) => {
                // The label may only carry a hash of a long name.
                pair.config_name = config.to_owned();
                if let Some(token) = secret.annotations().get(ANNOTATION_ROTATE_NOW_TOKEN) {
                    tokens.insert(pair.name(), token.clone());
                }
                Some(pair)
            }
            Ok(_) => None,
            Err(err) => {
                warn!(secret = %secret.name_any(), error = %err, "skipping unreadable key pair Secret");
                None
            }
        })
        .collect();
    (pairs, tokens)
}

fn secret_matches(secret: &Secret, config: &str) -> bool {
    secret.labels().get(LABEL_CONFIG) == Some(&keypair::config_label(config))
}
