//! The proof of a candidate key pair (docs/design.md, "Proof before publication"): a pair the
//! operator did not make in this reconcile and that status has not recorded (a Secret someone
//! created or restored, an object from the key store) becomes trusted only once KMS `Decrypt`
//! of its blob (its newest wrap under the alias's key, else the blob it was made with), under
//! the key the alias resolves to and with the config's encryption context
//! for its organisation, gives a private key whose public half is the pair's, and its name is
//! the one its config, organisation and sequence give. The plaintext private key lives only in
//! a zeroising buffer for the comparison.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::context::Context;
use super::custody;
use crate::arn::AliasArn;
use crate::config::ValidatedConfig;
use crate::keypair::{KeyPairRecord, KeyPairSecret, KeyPairState, Wrap};
use crate::keyring::Quarantined;
use crate::kms::{EncryptionContext, Kms, KmsError, KmsErrorKind};

/// The outcome of the proofs of one reconcile.
#[derive(Clone, Debug, Default)]
pub struct ProofCheck {
    /// Secret names of the pairs proven.
    pub proven: Vec<String>,
    /// Pairs whose proof failed: a verdict of KMS or of the comparison.
    pub quarantined: Vec<Quarantined>,
    /// The wraps each pair keeps, by Secret name, for every pair whose wraps were looked at:
    /// the one that proved it (at most one), none when the pair was proven with its original
    /// blob. A wrap not proven here is not restored or published.
    pub wraps: BTreeMap<String, Vec<Wrap>>,
    /// Wraps whose proof failed (a verdict): dropped, and reported. They quarantine nothing
    /// (docs/design.md, "The key store", wrap objects).
    pub dropped_wraps: Vec<DroppedWrap>,
    /// A KMS failure that is no verdict on any pair (throttling, network, access denied): the
    /// pairs not yet proven stay candidates.
    pub error: Option<KmsError>,
}

/// A wrap that failed its proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedWrap {
    pub secret_name: String,
    pub organization_id: String,
    pub sequence: u64,
    /// The KMS key the wrap says it is under.
    pub kms_key_arn: String,
    pub problem: String,
}

/// Proves the pairs named in `names` (blobs from `listed`), at the symmetric pace. A pair with
/// wraps under `alias_key_arn`, the key the alias resolves to now, is proven with the newest of
/// them (one KMS Decrypt under that key); a wrap that fails is dropped and the next one, then
/// the original blob, is tried. The original blob of an active candidate is decrypted under
/// `alias_key_arn`; of a retired one (a pair the key store lacks, to be written there) under
/// its own KMS key, which must be in the alias's account and Region. The pairs in `wraps_only`
/// are trusted already (status recorded them): only their wraps are proven. Stops at the first
/// KMS failure that is no verdict.
pub async fn prove<K: Kms>(
    ctx: &Context<K>,
    config: &ValidatedConfig,
    config_name: &str,
    alias_key_arn: &str,
    listed: &[KeyPairSecret],
    names: &[String],
    wraps_only: &[String],
) -> ProofCheck {
    let mut check = ProofCheck::default();
    let find = |name: &String| listed.iter().find(|p| &p.secret_name == name);
    for pair in wraps_only.iter().filter_map(find) {
        let Ok(context) = names_and_context(pair, config, config_name) else {
            check.wraps.insert(pair.secret_name.clone(), Vec::new());
            continue;
        };
        match prove_wraps(
            ctx,
            pair,
            alias_key_arn,
            &context,
            &config.replica_regions,
            &mut check,
        )
        .await
        {
            Ok(wrap) => {
                check
                    .wraps
                    .insert(pair.secret_name.clone(), wrap.into_iter().collect());
            }
            Err(err) => {
                check.error = Some(err);
                return check;
            }
        }
    }
    for pair in names.iter().filter_map(find) {
        let mut verdict = match names_and_context(pair, config, config_name) {
            Err(problem) => Some(Err(problem)),
            Ok(context) => {
                match prove_wraps(
                    ctx,
                    pair,
                    alias_key_arn,
                    &context,
                    &config.replica_regions,
                    &mut check,
                )
                .await
                {
                    Err(err) => {
                        check.error = Some(err);
                        return check;
                    }
                    Ok(Some(wrap)) => {
                        check.wraps.insert(pair.secret_name.clone(), vec![wrap]);
                        Some(Ok(()))
                    }
                    Ok(None) => None,
                }
            }
        };
        if verdict.is_none() {
            check.wraps.insert(pair.secret_name.clone(), Vec::new());
            verdict = Some(match precheck(pair, config, config_name, alias_key_arn) {
                Err(problem) => Err(problem),
                Ok((key_arn, context)) => {
                    match decrypt(
                        ctx,
                        pair,
                        key_arn,
                        &pair.private_key_ciphertext,
                        &context,
                        &config.replica_regions,
                    )
                    .await
                    {
                        Ok(verdict) => verdict,
                        Err(err) => {
                            check.error = Some(err);
                            return check;
                        }
                    }
                }
            });
        }
        match verdict {
            Some(Ok(())) => {
                info!(secret = %pair.secret_name, "candidate key pair proven through KMS");
                check.proven.push(pair.secret_name.clone());
            }
            Some(Err(problem)) => {
                warn!(secret = %pair.secret_name, problem = %problem, "candidate key pair quarantined");
                check.quarantined.push(quarantined(&pair.record, &problem));
            }
            None => {}
        }
    }
    check
}

/// The newest of `pair`'s wraps under `alias_key_arn` that KMS proves, trying them newest
/// first; each that fails (a verdict) is recorded in `check` as dropped. `Err`: a KMS failure
/// that is no verdict.
async fn prove_wraps<K: Kms>(
    ctx: &Context<K>,
    pair: &KeyPairSecret,
    alias_key_arn: &str,
    context: &EncryptionContext,
    replicas: &[String],
    check: &mut ProofCheck,
) -> Result<Option<Wrap>, KmsError> {
    for wrap in pair
        .wraps
        .iter()
        .rev()
        .filter(|w| w.kms_key_arn == alias_key_arn)
    {
        match decrypt(
            ctx,
            pair,
            alias_key_arn,
            &wrap.ciphertext,
            context,
            replicas,
        )
        .await?
        {
            Ok(()) => {
                info!(secret = %pair.secret_name, key = %alias_key_arn, "wrap of a candidate key pair proven through KMS");
                return Ok(Some(wrap.clone()));
            }
            Err(problem) => {
                warn!(secret = %pair.secret_name, key = %alias_key_arn, problem = %problem, "wrap dropped: it failed its proof");
                check.dropped_wraps.push(DroppedWrap {
                    secret_name: pair.secret_name.clone(),
                    organization_id: pair.organization_id.clone(),
                    sequence: pair.sequence,
                    kms_key_arn: wrap.kms_key_arn.clone(),
                    problem: format!("the wrap failed its proof and is not restored: {problem}"),
                });
            }
        }
    }
    Ok(None)
}

/// One KMS Decrypt of `ciphertext` (a blob of `pair`'s private key) under `key_arn`, compared
/// with the pair's fingerprint: the verdict, or `Err` for a KMS failure that is no verdict.
async fn decrypt<K: Kms>(
    ctx: &Context<K>,
    pair: &KeyPairSecret,
    key_arn: &str,
    ciphertext: &[u8],
    context: &EncryptionContext,
    replicas: &[String],
) -> Result<Result<(), String>, KmsError> {
    // A Decrypt: the symmetric budget (docs/design.md, "Rate limits").
    let _decrypt = ctx.kms_pace.symmetric().acquire().await;
    match ctx
        .kms
        .decrypt_private_key_in(key_arn, ciphertext, context, replicas)
        .await
    {
        Ok(decrypted) => {
            if let Some(read) = decrypted.replica_read(key_arn) {
                info!(secret = %pair.secret_name, %read, "proof read through a replica");
            }
            Ok(custody::compare(&decrypted.plaintext, &pair.fingerprint()))
        }
        Err(err)
            if matches!(
                err.kind,
                KmsErrorKind::InvalidCiphertext | KmsErrorKind::IncorrectKey
            ) =>
        {
            Ok(Err(format!(
                "KMS will not decrypt its private key blob under {key_arn} with the encryption \
                 context {{{}: {}}}: {}",
                context.key, context.organization_id, err.code
            )))
        }
        Err(err) => {
            warn!(secret = %pair.secret_name, code = %err.code, "proof interrupted by a KMS failure");
            Err(err)
        }
    }
}

/// The checks that need no KMS and no key: the organisation, the name, the encryption
/// context; the context to decrypt with.
fn names_and_context(
    pair: &KeyPairSecret,
    config: &ValidatedConfig,
    config_name: &str,
) -> Result<EncryptionContext, String> {
    let org = &pair.organization_id;
    if !config.organization_ids.contains(org) {
        return Err(format!("organisation {org} is not in the spec"));
    }
    let expected = KeyPairRecord::secret_name(config_name, org, pair.sequence);
    if pair.secret_name != expected {
        return Err(format!(
            "its name is not {expected}, the one config {config_name}, organisation {org} and \
             sequence {} give",
            pair.sequence
        ));
    }
    let context = &pair.encryption_context;
    // An active pair is proven with the config's context; a retired one may have been made
    // under an earlier context key, but never for another organisation.
    let wanted = match pair.state {
        KeyPairState::Active => config.context_for(org),
        KeyPairState::Retired => EncryptionContext {
            key: context.key.clone(),
            organization_id: org.clone(),
        },
    };
    if *context != wanted {
        return Err(format!(
            "its encryption context {{{}: {}}} is not {{{}: {}}}",
            context.key, context.organization_id, wanted.key, wanted.organization_id
        ));
    }
    Ok(wanted)
}

/// The checks that need no KMS; the key and encryption context to decrypt the original blob
/// with.
fn precheck<'a>(
    pair: &'a KeyPairSecret,
    config: &ValidatedConfig,
    config_name: &str,
    alias_key_arn: &'a str,
) -> Result<(&'a str, EncryptionContext), String> {
    let wanted = names_and_context(pair, config, config_name)?;
    match pair.state {
        KeyPairState::Active if pair.kms_key_arn != alias_key_arn => Err(format!(
            "it names KMS key {}, not {alias_key_arn}, the key {} resolves to",
            pair.kms_key_arn,
            config.alias.as_str()
        )),
        KeyPairState::Active => Ok((alias_key_arn, wanted)),
        KeyPairState::Retired if same_account_and_region(&pair.kms_key_arn, &config.alias) => {
            Ok((&pair.kms_key_arn, wanted))
        }
        KeyPairState::Retired => Err(format!(
            "it names KMS key {}, outside the account and Region of {}",
            pair.kms_key_arn,
            config.alias.as_str()
        )),
    }
}

/// Whether `key_arn` is a key ARN of the alias's account and Region.
fn same_account_and_region(key_arn: &str, alias: &AliasArn) -> bool {
    let prefix = format!("arn:aws:kms:{}:{}:key/", alias.region(), alias.account());
    key_arn.starts_with(&prefix) && key_arn.len() > prefix.len()
}

fn quarantined(record: &KeyPairRecord, problem: &str) -> Quarantined {
    Quarantined {
        secret_name: record.secret_name.clone(),
        organization_id: record.organization_id.clone(),
        key_pair_id: record.key_pair_id.clone(),
        fingerprint: record.fingerprint(),
        message: format!(
            "key pair {} of organisation {} ({}, sequence {}, public key {}) failed its proof \
             and is quarantined: {problem}",
            record.key_pair_id,
            record.organization_id,
            record.secret_name,
            record.sequence,
            record.fingerprint()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::test_pair;
    use crate::kms::KeyPairSpec;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";
    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    fn config() -> ValidatedConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": [ORG],
        }))
        .unwrap();
        crate::config::validate(&spec, None).unwrap()
    }

    fn candidate(change: impl FnOnce(&mut KeyPairSecret)) -> KeyPairSecret {
        let mut pair = KeyPairSecret {
            record: test_pair(
                ORG,
                2,
                KeyPairSpec::Rsa2048,
                vec![1; 8],
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            private_key_ciphertext: vec![9; 8],
            wraps: Vec::new(),
        };
        change(&mut pair);
        pair
    }

    /// What a proof checks before it asks KMS: the organisation, the name, the encryption
    /// context, and the key the blob must be under; each refusal says why.
    #[test]
    fn a_candidate_is_checked_before_kms_is_asked() {
        let config = config();
        let check = |pair: &KeyPairSecret| {
            precheck(pair, &config, "recordings", KEY).map(|(key, c)| (key.to_owned(), c))
        };
        let (key, context) = check(&candidate(|_| {})).unwrap();
        assert_eq!((key.as_str(), context), (KEY, config.context_for(ORG)));

        let other_org =
            candidate(|p| p.organization_id = "9b2e6c1a-7d4f-4e8a-a1c3-5f0d2b8e9c47".into());
        assert!(check(&other_org).unwrap_err().contains("not in the spec"));
        let renamed = candidate(|p| p.secret_name = "recordings-x-0002".into());
        assert!(check(&renamed).unwrap_err().contains("its name is not"));
        let context = candidate(|p| p.encryption_context.key = "other".into());
        assert!(check(&context).unwrap_err().contains("encryption context"));
        let elsewhere =
            candidate(|p| p.kms_key_arn = "arn:aws:kms:us-east-1:444455556666:key/attacker".into());
        assert!(check(&elsewhere).unwrap_err().contains("not arn:aws:kms"));

        // A retired pair (one the key store lacks) is proven under its own key, in the alias's
        // account and Region only, with its own context key for its organisation.
        let retired_old_key = candidate(|p| {
            p.retire("2026-01-02T00:00:00Z".parse().unwrap());
            p.kms_key_arn = "arn:aws:kms:us-east-1:111122223333:key/old".into();
            p.encryption_context.key = "old-context-key".into();
        });
        let (key, context) = check(&retired_old_key).unwrap();
        assert_eq!(key, "arn:aws:kms:us-east-1:111122223333:key/old");
        assert_eq!(context.key, "old-context-key");
        let retired_elsewhere = candidate(|p| {
            p.retire("2026-01-02T00:00:00Z".parse().unwrap());
            p.kms_key_arn = "arn:aws:kms:eu-west-1:111122223333:key/old".into();
        });
        assert!(
            check(&retired_elsewhere)
                .unwrap_err()
                .contains("outside the account and Region")
        );
    }
}

#[cfg(test)]
mod wrap_tests {
    use std::sync::Arc;

    use super::*;
    use crate::controller::context::{Events, Settings, system_clock};
    use crate::controller::ratelimit::KmsPace;
    use crate::kms::fake::FakeKms;
    use crate::kms::{KeyPairSpec, KmsOperation};
    use crate::metrics::Metrics;

    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";

    fn config() -> ValidatedConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": ALIAS,
            "organizationIds": [ORG],
        }))
        .unwrap();
        crate::config::validate(&spec, None).unwrap()
    }

    fn context(kms: FakeKms) -> Context<FakeKms> {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(service, "ns");
        Context::new(
            client.clone(),
            kms,
            system_clock(),
            Events::new(client, kube::runtime::events::Reporter::from("kekeeper")),
            crate::controller::cache::key_pair_cache(),
            crate::controller::cache::public_keys_cache(),
            Arc::new(KmsPace::uniform(100.0, 4)),
            Settings::default(),
            Metrics::default(),
        )
    }

    async fn pair(kms: &FakeKms, sequence: u64) -> KeyPairSecret {
        let alias = AliasArn::parse(ALIAS).unwrap();
        let context = config().context_for(ORG);
        let generated = kms
            .generate_key_pair(&alias, KeyPairSpec::Rsa2048, &context)
            .await
            .unwrap();
        KeyPairSecret::new_active(
            "recordings",
            "telephony",
            sequence,
            generated,
            ALIAS,
            context,
            "2026-01-01T00:00:00Z".parse().unwrap(),
            "Created",
        )
    }

    async fn wrap_of(kms: &FakeKms, pair: &KeyPairSecret, onto: &str) -> Wrap {
        Wrap {
            kms_key_arn: onto.to_owned(),
            ciphertext: kms
                .re_encrypt(
                    &pair.kms_key_arn,
                    &pair.private_key_ciphertext,
                    &pair.encryption_context,
                    onto,
                )
                .await
                .unwrap(),
            created_at: "2026-06-01T00:00:00Z".parse().unwrap(),
        }
    }

    /// Pairs made under key A, rewrapped onto key B, the alias moved to B and A disabled: the
    /// wrap proves an active and a retired pair through B alone. A planted wrap (another pair's
    /// blob rewrapped onto B, or junk) is dropped and named, and quarantines nothing: the pair
    /// is proven with its original blob while A can still decrypt it.
    #[tokio::test]
    async fn restored_pairs_are_proven_with_their_newest_wrap_under_the_current_key() {
        let kms = FakeKms::new();
        let alias = AliasArn::parse(ALIAS).unwrap();
        let key_a = kms.create_key_for(&alias);
        let (mut active, mut retired, other) = (
            pair(&kms, 3).await,
            pair(&kms, 2).await,
            pair(&kms, 1).await,
        );
        retired.retire("2026-02-01T00:00:00Z".parse().unwrap());
        let key_b = kms.create_key_for(&alias);
        let key_c = kms.create_key_for(&alias);
        let older = Wrap {
            created_at: "2026-05-01T00:00:00Z".parse().unwrap(),
            ..wrap_of(&kms, &active, &key_b).await
        };
        active.wraps = vec![
            older,
            wrap_of(&kms, &active, &key_b).await,
            wrap_of(&kms, &active, &key_c).await,
        ];
        retired.wraps = vec![wrap_of(&kms, &retired, &key_b).await];
        kms.point_alias(&alias, &key_b);
        kms.disable_key(&key_a);
        let ctx = context(kms.clone());
        let names = vec![active.secret_name.clone(), retired.secret_name.clone()];
        let listed = vec![active.clone(), retired.clone()];
        kms.reset_calls();
        let check = prove(&ctx, &config(), "recordings", &key_b, &listed, &names, &[]).await;
        assert!(check.error.is_none(), "{:?}", check.error);
        assert_eq!(check.proven, names);
        assert!(check.quarantined.is_empty() && check.dropped_wraps.is_empty());
        assert_eq!(
            check.wraps[&active.secret_name],
            vec![active.wraps[1].clone()],
            "newest under B"
        );
        assert_eq!(check.wraps[&retired.secret_name], retired.wraps);
        assert_eq!(
            kms.calls(KmsOperation::Decrypt),
            2,
            "one Decrypt each, under B"
        );

        // Planted: the other pair's blob rewrapped onto B as the active pair's wrap, and junk
        // as the retired pair's. A enabled again: the originals prove the pairs.
        kms.enable_key(&key_a);
        let mut planted = active.clone();
        planted.wraps = vec![wrap_of(&kms, &other, &key_b).await];
        let mut junk = retired.clone();
        junk.wraps[0].ciphertext = vec![7; 64];
        let listed = vec![planted.clone(), junk.clone()];
        kms.reset_calls();
        let check = prove(
            &ctx,
            &config(),
            "recordings",
            &key_b,
            &listed,
            &names[1..],
            &names[..1],
        )
        .await;
        assert!(check.error.is_none(), "{:?}", check.error);
        assert!(check.quarantined.is_empty(), "{:?}", check.quarantined);
        assert_eq!(
            check.proven,
            vec![retired.secret_name.clone()],
            "through its original blob"
        );
        assert_eq!(check.wraps[&active.secret_name], vec![]);
        assert_eq!(check.wraps[&retired.secret_name], vec![]);
        let dropped: Vec<(&str, &str)> = check
            .dropped_wraps
            .iter()
            .map(|d| (d.secret_name.as_str(), d.problem.as_str()))
            .collect();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert!(dropped[0].1.contains("fingerprint"), "{dropped:?}");
        assert!(dropped[1].1.contains("will not decrypt"), "{dropped:?}");
        assert!(dropped.iter().all(|(_, p)| p.contains("not restored")));
        assert_eq!(kms.calls(KmsOperation::Decrypt), 3);

        // With A disabled, a retired pair whose only wrap is planted cannot be proven: KMS's
        // refusal of A is no verdict, so nothing is quarantined and the proofs stop.
        kms.disable_key(&key_a);
        let check = prove(
            &ctx,
            &config(),
            "recordings",
            &key_b,
            &listed[1..],
            &names[1..],
            &[],
        )
        .await;
        assert_eq!(check.error.map(|e| e.kind), Some(KmsErrorKind::Disabled));
        assert!(check.proven.is_empty() && check.quarantined.is_empty());
    }
}
