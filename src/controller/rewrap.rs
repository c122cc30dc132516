//! Rewrap (docs/design.md, "Rewrap"): when the alias resolves to another KMS key, each retained
//! key pair's private key is re-encrypted by KMS `ReEncrypt` onto the current key with the same
//! encryption context (the plaintext never leaves KMS), proven (Decrypt under the current key
//! gives a private key whose public half is the pair's), and only then stored: in the key
//! store first, then as data keys added to the pair's Secret. The original blob and
//! `metadata.json` are never changed. At most [`BATCH`] pairs per reconcile, so status shows
//! progress and a crash loses at most one batch's unrecorded work; a pair whose Secret already
//! holds a wrap under the current key is proven and adopted, never re-encrypted again.
//!
//! The pure part (what is pending, the counts) is read by the plan and the status; the KMS and
//! API part runs inside execute.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use super::context::{Context, FIELD_MANAGER, Result, SerializeError};
use super::custody;
use crate::crd::{RecordingKeyConfig, RewrapPolicy};
use crate::keypair::{self, KeyPairRecord, KeyPairSecret, Wrap};
use crate::keyring::KeyRing;
use crate::keystore::{StoreError, WrapPut};
use crate::kms::{Kms, KmsError, KmsErrorKind};

/// Pairs rewrapped per reconcile at most; the reconcile then requeues at once.
pub const BATCH: usize = 50;

/// The reason of `status.keyPairProblems` for a wrap that failed its proof: the pair keeps its
/// working blob and is not quarantined.
pub const WRAP_PROOF_FAILED: &str = "WrapProofFailed";

/// What the rewrap of one reconcile did.
#[derive(Clone, Debug, Default)]
pub struct RewrapOutcome {
    /// The KMS key the pairs were rewrapped onto (the alias's, per this reconcile's key check).
    pub target: Option<String>,
    /// New wraps made by ReEncrypt, proven and stored.
    pub made: usize,
    /// Wraps found under the target (a Secret written before a crash, or the key store) and
    /// proven: adopted, not made again.
    pub adopted: usize,
    /// A KMS or store failure that stopped the batch (no verdict on any pair).
    pub error: Option<RewrapError>,
    /// Wraps that failed their proof: never used, reported on their pair.
    pub problems: Vec<WrapProblem>,
}

#[derive(Clone, Debug)]
pub enum RewrapError {
    Kms(KmsError),
    Store(StoreError),
}

impl std::fmt::Display for RewrapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RewrapError::Kms(err) => write!(f, "{err}"),
            RewrapError::Store(err) => write!(f, "{err}"),
        }
    }
}

/// A wrap of a pair that failed its proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrapProblem {
    pub secret_name: String,
    pub organization_id: String,
    pub key_pair_id: String,
    pub message: String,
}

/// Whether the resource asks for a rewrap now: `spec.rewrap: OnKmsKeyChange`, or a
/// `kekeeper.io/rewrap-now` token status has not recorded as honoured.
pub fn wanted(rkc: &RecordingKeyConfig) -> bool {
    rkc.spec.rewrap == RewrapPolicy::OnKmsKeyChange || unhonoured_token(rkc).is_some()
}

/// The rewrap-now token, while status has not recorded it as honoured.
pub fn unhonoured_token(rkc: &RecordingKeyConfig) -> Option<&str> {
    let token = rkc.rewrap_now_token()?;
    let honoured = rkc
        .status
        .as_ref()
        .and_then(|s| s.rewrap_now_token.as_deref());
    (honoured != Some(token)).then_some(token)
}

/// The retained pairs: trusted (status recorded them, or proven here), not quarantined, and
/// holding the public key status recorded.
pub fn retained(ring: &KeyRing) -> impl Iterator<Item = &KeyPairRecord> {
    ring.records()
        .iter()
        .filter(|r| ring.is_trusted(r) && ring.is_verified(r))
}

/// The retained pairs whose newest proven blob is not under `current`, oldest first (the ones
/// most likely to outlive the old key's owner's patience).
pub fn pending<'a>(ring: &'a KeyRing, current: &str) -> Vec<&'a KeyPairRecord> {
    let mut pending: Vec<&KeyPairRecord> = retained(ring)
        .filter(|r| ring.newest_key_arn(r) != current)
        .collect();
    pending.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.secret_name.cmp(&b.secret_name))
    });
    pending
}

/// Key pair Secrets under another key than `current` that cannot be rewrapped because status
/// does not record them (older than `historyLimit`, or candidates not yet proven); not
/// quarantined ones. Their old key is still needed.
pub fn unrecorded<'a>(ring: &'a KeyRing, current: &str) -> Vec<&'a KeyPairRecord> {
    ring.records()
        .iter()
        .filter(|r| !ring.is_quarantined(r))
        .filter(|r| !(ring.is_trusted(r) && ring.is_verified(r)))
        .filter(|r| ring.newest_key_arn(r) != current)
        .collect()
}

/// For each KMS key, how many key pairs have their newest proven blob under it: the retained
/// pairs, and also the Secrets status does not record (under the key their Secret names), so
/// that no key they need looks unused. Quarantined pairs are not counted.
pub fn key_counts(ring: &KeyRing) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for record in ring.records().iter().filter(|r| !ring.is_quarantined(r)) {
        *counts
            .entry(ring.newest_key_arn(record).to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// The batch of this reconcile: the first [`BATCH`] pending pairs (Secret names), when a rewrap
/// is wanted and the key the alias resolves to is known.
pub fn batch(rkc: &RecordingKeyConfig, ring: &KeyRing, current: Option<&str>) -> Vec<String> {
    match current {
        Some(current) if wanted(rkc) => pending(ring, current)
            .into_iter()
            .take(BATCH)
            .map(|r| r.secret_name.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// Rewraps the named pairs (blobs from `listed`) onto `target`, the key the alias resolves to
/// in this reconcile's key check; the ring learns each wrap proven. Stops at the first KMS or
/// store failure that is no verdict on a pair. API errors end the reconcile.
pub async fn run<K: Kms>(
    ctx: &Context<K>,
    secrets: &Api<Secret>,
    ring: &mut KeyRing,
    listed: &[KeyPairSecret],
    names: &[String],
    target: &str,
    now: Timestamp,
) -> Result<RewrapOutcome> {
    let mut outcome = RewrapOutcome {
        target: Some(target.to_owned()),
        ..RewrapOutcome::default()
    };
    for pair in names
        .iter()
        .filter_map(|name| listed.iter().find(|p| &p.secret_name == name))
    {
        // Planned on an older view: a pair already under the target needs nothing.
        if ring.newest_key_arn(&pair.record) == target {
            continue;
        }
        let found = pair.wrap_under(target).cloned();
        let adopted = found.is_some();
        let made = match found {
            Some(wrap) => Ok(wrap),
            None => re_encrypt(ctx, ring, pair, target, now).await,
        };
        // KMS refusing this pair's blob is a verdict on the pair, not a stop for the batch.
        let verdict = match made {
            Ok(wrap) => prove(ctx, ring, pair, &wrap)
                .await
                .map(|v| v.map(|()| wrap)),
            Err(err) if is_verdict(&err) => Ok(Err(format!(
                "KMS will not re-encrypt its private key blob: {}",
                err.code
            ))),
            Err(err) => Err(err),
        };
        let wrap = match verdict {
            Ok(Ok(wrap)) => wrap,
            Ok(Err(problem)) => {
                warn!(secret = %pair.secret_name, problem = %problem, "a wrap failed its proof; the pair keeps its blob");
                outcome.problems.push(WrapProblem {
                    secret_name: pair.secret_name.clone(),
                    organization_id: pair.organization_id.clone(),
                    key_pair_id: pair.key_pair_id.clone(),
                    message: format!(
                        "key pair {} of organisation {} (Secret {}): its private key blob \
                         re-encrypted onto {target} failed its proof and is not used: \
                         {problem}{}",
                        pair.key_pair_id,
                        pair.organization_id,
                        pair.secret_name,
                        if adopted {
                            "; the Secret holds a data key for that KMS key that kekeeper did \
                             not prove: delete it (the pair's other data keys stay) and kekeeper \
                             rewraps the pair"
                        } else {
                            ""
                        }
                    ),
                });
                continue;
            }
            Err(err) => {
                outcome.error = Some(RewrapError::Kms(err));
                break;
            }
        };
        // Write-ahead, as for new pairs: the store first, then the Secret. An adopted wrap
        // (found in the Secret) goes to the store too, which may have been configured after
        // the Secret got it; a copy there already answers Exists (docs/design.md, "Rewrap").
        let wrap = match put_wrap_in_store(ctx, ring, pair, wrap).await {
            Ok(wrap) => wrap,
            Err(err) => {
                warn!(secret = %pair.secret_name, error = %err, "the key store did not take a wrap");
                outcome.error = Some(err);
                break;
            }
        };
        if adopted {
            outcome.adopted += 1;
        } else {
            add_to_secret(secrets, pair, &wrap).await?;
            outcome.made += 1;
        }
        info!(secret = %pair.secret_name, kms_key = %target, adopted, "key pair rewrapped");
        ring.prove_wrap(&pair.secret_name, target, wrap.created_at);
    }
    Ok(outcome)
}

/// KMS `ReEncrypt` of the pair's newest proven blob onto `target`, at the symmetric pace.
async fn re_encrypt<K: Kms>(
    ctx: &Context<K>,
    ring: &KeyRing,
    pair: &KeyPairSecret,
    target: &str,
    now: Timestamp,
) -> std::result::Result<Wrap, KmsError> {
    let (source, blob) = ring.newest_blob(pair);
    let _re_encrypt = ctx.kms_pace.symmetric().acquire().await;
    let ciphertext = ctx
        .kms
        .re_encrypt(source, blob, &pair.encryption_context, target)
        .await?;
    Ok(Wrap {
        kms_key_arn: target.to_owned(),
        ciphertext,
        created_at: now,
    })
}

/// The proof of a wrap: KMS Decrypt under the wrap's key with the pair's encryption context
/// gives a private key whose public half has the fingerprint status recorded. `Ok(Err)` is a
/// verdict against the wrap; `Err` a KMS failure that is none.
async fn prove<K: Kms>(
    ctx: &Context<K>,
    ring: &KeyRing,
    pair: &KeyPairSecret,
    wrap: &Wrap,
) -> std::result::Result<std::result::Result<(), String>, KmsError> {
    let _decrypt = ctx.kms_pace.symmetric().acquire().await;
    let decrypted = ctx
        .kms
        .decrypt_private_key(
            &wrap.kms_key_arn,
            &wrap.ciphertext,
            &pair.encryption_context,
        )
        .await;
    match decrypted {
        Ok(private_key) => Ok(custody::compare(
            &private_key,
            &ring.trusted_fingerprint(&pair.record),
        )),
        Err(err) if is_verdict(&err) => Ok(Err(format!(
            "KMS will not decrypt it under {}: {}",
            wrap.kms_key_arn, err.code
        ))),
        Err(err) => Err(err),
    }
}

/// A KMS answer about the blob itself (it is not a blob of that key and context), not about
/// KMS or the key.
fn is_verdict(err: &KmsError) -> bool {
    matches!(
        err.kind,
        KmsErrorKind::InvalidCiphertext | KmsErrorKind::IncorrectKey
    )
}

/// Writes a proven wrap to the key store, when one is configured, before the Secret carries it;
/// returns the wrap the Secret is to hold: the stored one when an earlier attempt's wrap is
/// there and proves (docs/design.md, "Rewrap", the key store's copy).
async fn put_wrap_in_store<K: Kms>(
    ctx: &Context<K>,
    ring: &KeyRing,
    pair: &KeyPairSecret,
    wrap: Wrap,
) -> std::result::Result<Wrap, RewrapError> {
    let Some(store) = &ctx.key_store else {
        return Ok(wrap);
    };
    match store.put_wrap(pair, &wrap).await {
        Ok(WrapPut::Created | WrapPut::Exists) => Ok(wrap),
        // An earlier attempt's ReEncrypt, stored before a crash: the object is write-once, so
        // the Secret takes that one when it proves, and the store and the Secret agree
        // (docs/design.md, "Rewrap").
        Ok(WrapPut::Other(stored)) => match prove(ctx, ring, pair, &stored).await {
            Ok(Ok(())) => Ok(stored),
            Ok(Err(problem)) => {
                warn!(secret = %pair.secret_name, problem = %problem, "the key store holds a wrap of this pair that fails its proof; the Secret takes the new one, and a restore drops the stored one");
                Ok(wrap)
            }
            Err(err) => Err(RewrapError::Kms(err)),
        },
        Err(err) => Err(RewrapError::Store(err)),
    }
}

/// Adds the wrap to the pair's Secret: a merge patch that only adds `privateKey.<KEY-ID>.kms`
/// and `privateKey.<KEY-ID>.json`; `privateKey.kms` and `metadata.json` are not in it.
async fn add_to_secret(api: &Api<Secret>, pair: &KeyPairSecret, wrap: &Wrap) -> Result<()> {
    let data = keypair::wrap_secret_data(wrap).map_err(|source| SerializeError {
        what: "a wrap's privateKey.<KEY-ID>.json",
        source,
    })?;
    let patch = json!({ "data": data });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(&pair.secret_name, &params, &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use jiff::SignedDuration;

    use super::*;
    use crate::crd::{ANNOTATION_REWRAP_NOW, RecordingKeyConfigStatus};
    use crate::keypair::test_pair;
    use crate::keyring::{Reading, Tokens};
    use crate::kms::KeyPairSpec;

    const K1: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";
    const K2: &str = "arn:aws:kms:us-east-1:111122223333:key/k2";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn resource(rewrap: &str, status: Option<RecordingKeyConfigStatus>) -> RecordingKeyConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": ["org-a"],
            "encryptionContextKey": "tenant",
            "rewrap": rewrap,
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.status = status;
        rkc
    }

    /// `count` pairs of one organisation, sequence 1 oldest, all retired but the newest.
    fn records(count: u64) -> Vec<KeyPairRecord> {
        (1..=count)
            .map(|sequence| {
                let created =
                    ts("2026-01-01T00:00:00Z") + SignedDuration::from_hours(sequence as i64);
                let mut record = test_pair(
                    "org-a",
                    sequence,
                    KeyPairSpec::Rsa2048,
                    vec![sequence as u8; 8],
                    created,
                );
                if sequence < count {
                    record.retire(created + SignedDuration::from_hours(1));
                }
                record
            })
            .collect()
    }

    fn ring(records: Vec<KeyPairRecord>, status: Option<&RecordingKeyConfigStatus>) -> KeyRing {
        let reading = Reading {
            acknowledged: BTreeSet::new(),
            pruning: None,
            now: ts("2026-12-01T00:00:00Z"),
        };
        KeyRing::new(records, Tokens::new(), status, &reading)
    }

    /// Due only when the alias's key differs from a retained pair's newest proven blob;
    /// oldest first, at most a batch per reconcile; the counts per key follow each proven wrap.
    #[test]
    fn a_rewrap_is_due_per_pair_under_another_key_in_batches() {
        let rkc = resource("OnKmsKeyChange", None);
        let mut ring = ring(records(3), None).with_all_proven();
        assert!(
            batch(&rkc, &ring, Some(K1)).is_empty(),
            "all under the current key"
        );
        assert!(
            batch(&rkc, &ring, None).is_empty(),
            "the current key is not known"
        );
        let due = batch(&rkc, &ring, Some(K2));
        let names: Vec<String> = ring
            .records()
            .iter()
            .map(|r| r.secret_name.clone())
            .collect();
        assert_eq!(due, names, "oldest first");
        assert_eq!(key_counts(&ring), BTreeMap::from([(K1.to_owned(), 3)]));

        ring.prove_wrap(&names[0], K2, ts("2026-12-01T00:00:00Z"));
        assert_eq!(batch(&rkc, &ring, Some(K2)), names[1..].to_vec());
        assert_eq!(
            key_counts(&ring),
            BTreeMap::from([(K1.to_owned(), 2), (K2.to_owned(), 1)])
        );

        let many = ring_of_many(BATCH as u64 * 2 + 7);
        assert_eq!(batch(&rkc, &many, Some(K2)).len(), BATCH);
        assert_eq!(pending(&many, K2).len(), BATCH * 2 + 7);
    }

    fn ring_of_many(count: u64) -> KeyRing {
        ring(records(count), None).with_all_proven()
    }

    /// `spec.rewrap: Never` rewraps nothing, until a rewrap-now token asks; once status records
    /// the token as honoured, nothing again.
    #[test]
    fn never_waits_for_a_rewrap_now_token() {
        let mut rkc = resource("Never", None);
        let ring = ring(records(2), None).with_all_proven();
        assert!(!wanted(&rkc));
        assert!(batch(&rkc, &ring, Some(K2)).is_empty());

        rkc.metadata.annotations =
            Some([(ANNOTATION_REWRAP_NOW.to_owned(), "t1".to_owned())].into());
        assert_eq!(unhonoured_token(&rkc), Some("t1"));
        assert_eq!(batch(&rkc, &ring, Some(K2)).len(), 2);

        rkc.status = Some(RecordingKeyConfigStatus {
            rewrap_now_token: Some("t1".into()),
            ..RecordingKeyConfigStatus::default()
        });
        assert_eq!(unhonoured_token(&rkc), None);
        assert!(batch(&rkc, &ring, Some(K2)).is_empty());
    }

    /// Status is the anchor of a wrap: a wrap it records is the pair's newest blob (custody and
    /// decrypt use it); a wrap only the Secret holds is not, and the pair is still pending;
    /// candidates and quarantined pairs are not rewrapped.
    #[test]
    fn only_a_wrap_status_records_is_used() {
        let records = records(2);
        let anchored = |rewrapped: Option<&str>| {
            let mut entry = records[0].to_history_entry();
            entry.rewrapped_kms_key_arn = rewrapped.map(str::to_owned);
            entry.rewrapped_at = rewrapped.map(|_| ts("2026-12-01T00:00:00Z"));
            RecordingKeyConfigStatus {
                key_pair_history: vec![entry, records[1].to_history_entry()],
                ..RecordingKeyConfigStatus::default()
            }
        };
        let mut pair = KeyPairSecret {
            record: records[0].clone(),
            private_key_ciphertext: vec![1; 8],
            wraps: vec![Wrap {
                kms_key_arn: K2.into(),
                ciphertext: vec![2; 8],
                created_at: ts("2026-12-01T00:00:00Z"),
            }],
        };
        let rkc = resource("OnKmsKeyChange", None);

        let planted = ring(records.clone(), Some(&anchored(None)));
        assert_eq!(planted.newest_blob(&pair), (K1, &[1u8; 8][..]));
        assert_eq!(pending(&planted, K2).len(), 2);

        let recorded = ring(records.clone(), Some(&anchored(Some(K2))));
        assert_eq!(recorded.newest_blob(&pair), (K2, &[2u8; 8][..]));
        assert_eq!(recorded.proven_key_arns(&records[0]), vec![K1, K2]);
        assert_eq!(
            batch(&rkc, &recorded, Some(K2)),
            vec![records[1].secret_name.clone()]
        );
        // Recorded, but the Secret lost the wrap: the original blob, under its own key.
        pair.wraps.clear();
        assert_eq!(recorded.newest_blob(&pair), (K1, &[1u8; 8][..]));

        // Not recorded and not proven: candidates are not rewrapped.
        let unanchored = ring(records, None);
        assert!(batch(&rkc, &unanchored, Some(K2)).is_empty());
    }
}
