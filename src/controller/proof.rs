//! The proof of a candidate key pair (docs/design.md, "Proof before publication"): a pair the
//! operator did not make in this reconcile and that status has not recorded (a Secret someone
//! created or restored, an object from the key store) becomes trusted only once KMS `Decrypt`
//! of its blob, under the key the alias resolves to and with the config's encryption context
//! for its organisation, gives a private key whose public half is the pair's, and its name is
//! the one its config, organisation and sequence give. The plaintext private key lives only in
//! a zeroising buffer for the comparison.

use tracing::{info, warn};

use super::context::Context;
use super::custody;
use crate::arn::AliasArn;
use crate::config::ValidatedConfig;
use crate::keypair::{KeyPairRecord, KeyPairSecret, KeyPairState};
use crate::keyring::Quarantined;
use crate::kms::{EncryptionContext, Kms, KmsError, KmsErrorKind};

/// The outcome of the proofs of one reconcile.
#[derive(Clone, Debug, Default)]
pub struct ProofCheck {
    /// Secret names of the pairs proven.
    pub proven: Vec<String>,
    /// Pairs whose proof failed: a verdict of KMS or of the comparison.
    pub quarantined: Vec<Quarantined>,
    /// A KMS failure that is no verdict on any pair (throttling, network, access denied): the
    /// pairs not yet proven stay candidates.
    pub error: Option<KmsError>,
}

/// Proves the pairs named in `names` (blobs from `listed`), one KMS Decrypt each, at the
/// symmetric pace. An active
/// candidate is decrypted under `alias_key_arn`, the key the alias resolves to now; a retired
/// one (a pair the key store lacks, to be written there) under its own KMS key, which must be
/// in the alias's account and Region. Stops at the first KMS failure that is no verdict.
pub async fn prove<K: Kms>(
    ctx: &Context<K>,
    config: &ValidatedConfig,
    config_name: &str,
    alias_key_arn: &str,
    listed: &[KeyPairSecret],
    names: &[String],
) -> ProofCheck {
    let mut check = ProofCheck::default();
    for pair in names
        .iter()
        .filter_map(|name| listed.iter().find(|p| &p.secret_name == name))
    {
        let verdict = match precheck(pair, config, config_name, alias_key_arn) {
            Err(problem) => Err(problem),
            Ok((key_arn, context)) => {
                // A Decrypt: the symmetric budget (docs/design.md, "Rate limits").
                let _decrypt = ctx.kms_pace.symmetric().acquire().await;
                match ctx
                    .kms
                    .decrypt_private_key_in(
                        key_arn,
                        &pair.private_key_ciphertext,
                        &context,
                        &config.replica_regions,
                    )
                    .await
                {
                    Ok(decrypted) => {
                        if let Some(read) = decrypted.replica_read(key_arn) {
                            info!(secret = %pair.secret_name, %read, "proof read through a replica");
                        }
                        custody::compare(&decrypted.plaintext, &pair.fingerprint())
                    }
                    Err(err)
                        if matches!(
                            err.kind,
                            KmsErrorKind::InvalidCiphertext | KmsErrorKind::IncorrectKey
                        ) =>
                    {
                        Err(format!(
                            "KMS will not decrypt its private key blob under {key_arn} with \
                             the encryption context {{{}: {}}}: {}",
                            context.key, context.organization_id, err.code
                        ))
                    }
                    Err(err) => {
                        warn!(secret = %pair.secret_name, code = %err.code, "proof interrupted by a KMS failure");
                        check.error = Some(err);
                        return check;
                    }
                }
            }
        };
        match verdict {
            Ok(()) => {
                info!(secret = %pair.secret_name, "candidate key pair proven through KMS");
                check.proven.push(pair.secret_name.clone());
            }
            Err(problem) => {
                warn!(secret = %pair.secret_name, problem = %problem, "candidate key pair quarantined");
                check.quarantined.push(quarantined(&pair.record, &problem));
            }
        }
    }
    check
}

/// The checks that need no KMS; the key and encryption context to decrypt with.
fn precheck<'a>(
    pair: &'a KeyPairSecret,
    config: &ValidatedConfig,
    config_name: &str,
    alias_key_arn: &'a str,
) -> Result<(&'a str, EncryptionContext), String> {
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
