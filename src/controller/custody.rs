//! The custody check: each active key pair's private key blob is decrypted through KMS (with
//! its encryption context), the public key is derived from it and compared with the fingerprint
//! recorded in status. It proves that recordings encrypted with the published key can still be
//! decrypted. The plaintext private key lives only in a zeroising buffer for the comparison.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::PrivateDecryptingKey;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::context::Context;
use crate::keypair::{self, KeyPairRecord, KeyPairSecret};
use crate::keyring::KeyRing;
use crate::kms::{Kms, KmsError, KmsErrorKind, ReplicaRead};

/// The outcome of decrypting each active pair's private key blob through KMS and comparing the
/// public key derived from it with the recorded fingerprint.
#[derive(Clone, Debug, Default)]
pub struct CustodyCheck {
    /// Pairs checked and found good.
    pub verified: usize,
    pub failures: Vec<CustodyFailure>,
    /// A KMS failure that stopped the check (not a verdict on any pair).
    pub error: Option<KmsError>,
    /// Decrypts a replica answered because the home Region failed (docs/design.md,
    /// "Multi-Region reads").
    pub replica_reads: Vec<ReplicaRead>,
}

/// A pair whose private key blob does not decrypt to its recorded public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodyFailure {
    pub secret_name: String,
    pub organization_id: String,
    pub key_pair_id: String,
    pub message: String,
}

/// Checks the active pairs of the organisations in `organizations`, one KMS Decrypt each, at
/// the symmetric pace (docs/design.md, "Rate limits"). Stops at the first KMS failure that is not a
/// verdict on the blob (throttling, network, access denied).
///
/// The blobs come from `listed`, the Secrets as listed from the API server: a
/// [`KeyPairSecret`] always has its blob, and a cached [`KeyPairRecord`] cannot be passed here
/// (docs/design.md, "Blobs by type"). `ring` says which of them are active. A multi-Region
/// key's replicas answer when the home Region fails (`replica_regions`: the spec's).
pub async fn check<K: Kms>(
    ctx: &Context<K>,
    ring: &KeyRing,
    listed: &[KeyPairSecret],
    organizations: &[String],
    replica_regions: &[String],
) -> CustodyCheck {
    let mut check = CustodyCheck::default();
    let active = ring.active_by_org();
    let checked = organizations
        .iter()
        .filter_map(|org| active.get(org.as_str()))
        .filter_map(|active| listed.iter().find(|p| p.secret_name == active.secret_name));
    for record in checked {
        let _decrypt = ctx.kms_pace.symmetric().acquire().await;
        // The newest proven blob under the key status recorded for it, never one a Secret
        // editor wrote into metadata.json or added as a data key (docs/design.md, "Rewrap").
        let (key_arn, blob) = ring.newest_blob(record);
        let decrypted = ctx
            .kms
            .decrypt_private_key_in(key_arn, blob, &record.encryption_context, replica_regions)
            .await;
        let verdict = match decrypted {
            Ok(decrypted) => {
                if let Some(read) = decrypted.replica_read(key_arn) {
                    info!(secret = %record.secret_name, %read, "custody check read through a replica");
                    check.replica_reads.push(read);
                }
                compare(
                    &decrypted.plaintext,
                    &ring.trusted_fingerprint(&record.record),
                )
            }
            Err(err)
                if matches!(
                    err.kind,
                    KmsErrorKind::InvalidCiphertext | KmsErrorKind::IncorrectKey
                ) =>
            {
                Err(format!(
                    "KMS cannot decrypt its private key blob under {key_arn}: {err}"
                ))
            }
            Err(err) => {
                warn!(secret = %record.secret_name, code = %err.code, "custody check interrupted by a KMS failure");
                check.error = Some(err);
                return check;
            }
        };
        match verdict {
            Ok(()) => check.verified += 1,
            Err(problem) => check.failures.push(failure(record, problem)),
        }
    }
    info!(
        verified = check.verified,
        failed = check.failures.len(),
        "custody check done"
    );
    check
}

fn failure(record: &KeyPairRecord, problem: String) -> CustodyFailure {
    CustodyFailure {
        secret_name: record.secret_name.clone(),
        organization_id: record.organization_id.clone(),
        key_pair_id: record.key_pair_id.clone(),
        message: format!(
            "key pair {} of organisation {} (Secret {}): {problem}",
            record.key_pair_id, record.organization_id, record.secret_name
        ),
    }
}

/// Whether the public key of a PKCS#8 private key has the `recorded` fingerprint. The error
/// never carries key material.
pub fn compare(private_key_pkcs8: &Zeroizing<Vec<u8>>, recorded: &str) -> Result<(), String> {
    let derived = public_key_of(private_key_pkcs8)?;
    let fingerprint = keypair::fingerprint(&derived);
    if fingerprint == recorded {
        Ok(())
    } else {
        Err(format!(
            "the private key decrypts, but its public key has fingerprint {fingerprint}, not the recorded {recorded}"
        ))
    }
}

/// The SubjectPublicKeyInfo DER of a PKCS#8 RSA private key.
fn public_key_of(private_key_pkcs8: &Zeroizing<Vec<u8>>) -> Result<Vec<u8>, String> {
    let key = PrivateDecryptingKey::from_pkcs8(private_key_pkcs8)
        .map_err(|_| "the decrypted private key is not an RSA PKCS#8 key".to_owned())?;
    let der = key
        .public_key()
        .as_der()
        .map_err(|_| "the public key cannot be encoded".to_owned())?;
    Ok(der.as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rsa::KeySize;

    use super::*;

    #[test]
    fn the_derived_public_key_is_compared_with_the_recorded_fingerprint() {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let public_der = private.public_key().as_der().unwrap().as_ref().to_vec();
        let pkcs8 = Zeroizing::new(private.as_der().unwrap().as_ref().to_vec());
        assert_eq!(compare(&pkcs8, &keypair::fingerprint(&public_der)), Ok(()));
        let err = compare(&pkcs8, "SHA256:other").unwrap_err();
        assert!(err.contains("not the recorded SHA256:other"), "{err}");
        let garbage = Zeroizing::new(vec![1u8; 64]);
        assert!(
            compare(&garbage, "SHA256:x")
                .unwrap_err()
                .contains("PKCS#8")
        );
    }
}
