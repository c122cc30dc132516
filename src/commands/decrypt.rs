//! `kekeeper decrypt`: reads the recording's header, checks it names the key pair of the given
//! Secret (or fetches that Secret from the cluster by its `kekeeper.io/key-pair-id` label), asks KMS to decrypt the private key (with the Secret's encryption context) and
//! streams the plaintext out.

use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

use super::cluster::connect;
use super::common::{Failure, Output, exit, open_input};
use crate::arn::is_region;
use crate::cli::DecryptArgs;
use crate::controller::custody::compare;
use crate::crd::RecordingKeyConfig;
use crate::envelope;
use crate::keypair::{
    KeyPairSecret, LABEL_KEY_PAIR_ID, LABEL_MANAGED_BY, SECRET_TYPE, key_pair_id_label,
};
use crate::kms::sdk::SdkKms;
use crate::kms::{Kms, ReplicaRead, is_multi_region_key, replica_may_answer};

/// A key pair Secret manifest (`kekeeper keypair generate` output or `kubectl get secret -o yaml`).
pub(super) fn read_key_pair_secret(path: &Path) -> Result<KeyPairSecret, String> {
    let text = super::common::read_to_string(path)?;
    let secret: Secret = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not a Secret manifest: {e}", path.display()))?;
    KeyPairSecret::from_secret(&secret).map_err(|e| format!("{}: {e}", path.display()))
}

/// The key pair Secret the header names, from the cluster: found by its
/// `kekeeper.io/key-pair-id` label (read-only; a list, so `get` on Secrets is not needed).
async fn fetch_key_pair_secret(
    kube: &crate::cli::KubeArgs,
    key_pair_id: &str,
) -> Result<KeyPairSecret, String> {
    let cluster = connect(kube).await.map_err(|e| {
        format!("{e}; without --key-pair-secret the key pair Secret is read from the cluster")
    })?;
    let namespace = cluster.namespace;
    let api: Api<Secret> = Api::namespaced(cluster.client, &namespace);
    let selector = format!("{LABEL_KEY_PAIR_ID}={}", key_pair_id_label(key_pair_id));
    let list = async |selector: &str| {
        api.list(&ListParams::default().labels(selector))
            .await
            .map(|list| list.items)
            .map_err(|e| format!("cannot list Secrets in namespace {namespace:?}: {e}"))
    };
    let by_label = list(&selector).await?;
    let found = by_label
        .iter()
        .find(|s| s.type_.as_deref() == Some(SECRET_TYPE))
        .map(KeyPairSecret::from_secret);
    // Secrets stored before the label existed: look through the operator's Secrets.
    let found = match found {
        Some(found) => Some(found),
        None => list(&format!("{LABEL_MANAGED_BY}=kekeeper"))
            .await?
            .iter()
            .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
            .filter_map(|s| KeyPairSecret::from_secret(s).ok())
            .find(|r| r.key_pair_id == key_pair_id)
            .map(Ok),
    };
    match found {
        Some(record) => record.map_err(|e| format!("the key-pair Secret with {selector}: {e}")),
        None => Err(format!(
            "no key-pair Secret with {selector} in namespace {namespace:?}; restore it from \
             backup, or pass it with --key-pair-secret"
        )),
    }
}

pub async fn execute(args: DecryptArgs) -> ExitCode {
    exit(decrypt(&args).await)
}

async fn decrypt(args: &DecryptArgs) -> Result<(), Failure> {
    if let Some(region) = args.replica_regions.iter().find(|r| !is_region(r)) {
        return Err(Failure::bad_input(format!(
            "--replica-region {region:?} is not a Region name like eu-west-1"
        )));
    }
    // The Secret file is checked before the recording is opened, as before.
    let from_file = (args.key_pair_secret.as_deref())
        .map(read_key_pair_secret)
        .transpose()
        .map_err(Failure::bad_input)?;
    let mut input = open_input(&args.input).map_err(Failure::bad_input)?;
    let header = envelope::Header::read_from(&mut input)
        .map_err(|e| Failure::bad_input(format!("cannot read the recording header: {e}")))?;
    let record = match from_file {
        Some(record) => record,
        None => fetch_key_pair_secret(&args.kube, &header.key_pair_id)
            .await
            .map_err(Failure::bad_input)?,
    };
    if header.key_pair_id != record.key_pair_id {
        return Err(Failure::bad_input(format!(
            "the recording was encrypted with key pair {}, but Secret {} holds key pair {}; \
             use the Secret whose metadata.json names keyPairId {}",
            header.key_pair_id,
            record.name(),
            record.key_pair_id,
            header.key_pair_id
        )));
    }
    // What status recorded about the pair (its key and its newest proven blob), when the
    // Secret came from the cluster and its RecordingKeyConfig can be read.
    let recorded = match from_file_given(args) {
        true => None,
        false => recorded_in_status(&args.kube, &record).await,
    };
    // Only now, with a matching header, create the output and ask KMS.
    let mut output = Output::create(&args.output).map_err(Failure::bad_input)?;
    let kms = SdkKms::from_env().await;
    let (private_key, used, replica_read) =
        private_key(&kms, &record, recorded.as_ref(), &args.replica_regions).await?;
    let outcome = envelope::decrypt(&private_key, &header, input, output.writer());
    drop(private_key);
    let bytes = outcome.map_err(|e| Failure::failed(format!("decryption failed: {e}")))?;
    output.finish().map_err(Failure::failed)?;
    if let Some(read) = replica_read {
        eprintln!("KMS answered {read}");
    }
    eprintln!(
        "decrypted {bytes} bytes with key pair {} (private key blob under {used})",
        record.key_pair_id
    );
    Ok(())
}

fn from_file_given(args: &DecryptArgs) -> bool {
    args.key_pair_secret.is_some()
}

/// What status records about a key pair: the key it was made under, its fingerprint, and the
/// key of its newest proven wrap (docs/design.md, "Rewrap").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Recorded {
    kms_key_arn: String,
    fingerprint: String,
    rewrapped_kms_key_arn: Option<String>,
}

/// The status entry of the pair's Secret in its RecordingKeyConfig, read with `list` by name
/// (a `metadata.name` field selector, as `kekeeper test` reads), so decrypt stays read-only
/// with list verbs; `None` when the resource cannot be read (a user without `list` on it) or
/// does not record the pair: then the blobs are tried as a Secret file's are.
async fn recorded_in_status(kube: &crate::cli::KubeArgs, pair: &KeyPairSecret) -> Option<Recorded> {
    let cluster = connect(kube).await.ok()?;
    let api: Api<RecordingKeyConfig> = Api::namespaced(cluster.client, &cluster.namespace);
    let params = ListParams::default().fields(&format!("metadata.name={}", pair.config_name));
    let list = api.list(&params).await.ok()?;
    recorded_of(list.items.first()?, &pair.secret_name)
}

pub(super) fn recorded_of(rkc: &RecordingKeyConfig, secret_name: &str) -> Option<Recorded> {
    let status = rkc.status.as_ref()?;
    let active = status
        .active_key_pairs
        .iter()
        .find(|a| a.secret_name == secret_name)
        .map(|a| Recorded {
            kms_key_arn: a.kms_key_arn.clone(),
            fingerprint: a.public_key_fingerprint.clone(),
            rewrapped_kms_key_arn: a.rewrapped_kms_key_arn.clone(),
        });
    active.or_else(|| {
        status
            .key_pair_history
            .iter()
            .find(|e| e.secret_name == secret_name)
            .map(|e| Recorded {
                kms_key_arn: e.kms_key_arn.clone(),
                fingerprint: e.public_key_fingerprint.clone(),
                rewrapped_kms_key_arn: e.rewrapped_kms_key_arn.clone(),
            })
    })
}

/// The blobs to try, in order, with the key each is under: the wrap status recorded as the
/// newest proven blob, then the original blob (under the key status recorded), then, only
/// without status (a Secret file), the Secret's other wraps, newest first.
pub(super) fn blobs_to_try<'a>(
    pair: &'a KeyPairSecret,
    recorded: Option<&'a Recorded>,
) -> Vec<(&'a str, &'a [u8])> {
    let mut blobs: Vec<(&str, &[u8])> = Vec::new();
    if let Some(wrap) = recorded
        .and_then(|r| r.rewrapped_kms_key_arn.as_deref())
        .and_then(|arn| pair.wrap_under(arn))
    {
        blobs.push((&wrap.kms_key_arn, &wrap.ciphertext));
    }
    let original_key = recorded.map_or(pair.kms_key_arn.as_str(), |r| r.kms_key_arn.as_str());
    blobs.push((original_key, &pair.private_key_ciphertext));
    if recorded.is_none() {
        for wrap in pair.wraps.iter().rev() {
            blobs.push((&wrap.kms_key_arn, &wrap.ciphertext));
        }
    }
    blobs
}

/// The pair's private key from the first blob KMS decrypts whose public half is the pair's
/// (status's fingerprint, else the Secret's own), the key it was under, and the replica that
/// answered when the home Region failed (docs/design.md, "Multi-Region reads": the CLI knows a
/// key's replicas only from `--replica-region`).
async fn private_key(
    kms: &SdkKms,
    pair: &KeyPairSecret,
    recorded: Option<&Recorded>,
    replica_regions: &[String],
) -> Result<(zeroize::Zeroizing<Vec<u8>>, String, Option<ReplicaRead>), Failure> {
    let fingerprint = recorded.map_or_else(|| pair.fingerprint(), |r| r.fingerprint.clone());
    let mut failures = Vec::new();
    let mut hint = "";
    for (key_arn, blob) in blobs_to_try(pair, recorded) {
        match kms
            .decrypt_private_key_in(key_arn, blob, &pair.encryption_context, replica_regions)
            .await
        {
            Ok(decrypted) => match compare(&decrypted.plaintext, &fingerprint) {
                Ok(()) => {
                    let read = decrypted.replica_read(key_arn);
                    return Ok((decrypted.plaintext, key_arn.to_owned(), read));
                }
                Err(problem) => failures.push(format!("the blob under {key_arn}: {problem}")),
            },
            Err(err) => {
                let request_id = (err.request_id.as_ref())
                    .map(|id| format!(" (request id {id})"))
                    .unwrap_or_default();
                if is_multi_region_key(key_arn)
                    && replica_may_answer(err.kind)
                    && replica_regions.is_empty()
                {
                    hint = "; the KMS key is multi-Region: name a replica's Region with \
                            --replica-region to read through it";
                }
                failures.push(format!("the blob under {key_arn}: {err}{request_id}"));
            }
        }
    }
    Err(Failure::failed(format!(
        "KMS could not decrypt the private key of key pair {}: {}{hint}",
        pair.key_pair_id,
        failures.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::Wrap;

    const A: &str = "arn:aws:kms:us-east-1:111122223333:key/0a7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    const B: &str = "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    const C: &str = "arn:aws:kms:us-east-1:111122223333:key/0c7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";

    fn pair() -> KeyPairSecret {
        let wrap = |arn: &str, byte: u8, at: &str| Wrap {
            kms_key_arn: arn.into(),
            ciphertext: vec![byte; 4],
            created_at: at.parse().unwrap(),
        };
        let mut pair = KeyPairSecret {
            record: crate::keypair::test_pair(
                "org",
                1,
                crate::kms::KeyPairSpec::Rsa2048,
                vec![1; 8],
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            private_key_ciphertext: vec![1; 4],
            wraps: vec![
                wrap(B, 2, "2026-02-01T00:00:00Z"),
                wrap(C, 3, "2026-03-01T00:00:00Z"),
            ],
        };
        pair.kms_key_arn = A.into();
        pair
    }

    /// With status, the wrap it records first, then the original under the recorded key; a
    /// wrap only the Secret holds is never tried. Without status (a file), the original first,
    /// then the wraps, newest first.
    #[test]
    fn the_recorded_wrap_first_and_planted_ones_never() {
        let pair = pair();
        let recorded = Recorded {
            kms_key_arn: A.into(),
            fingerprint: pair.fingerprint(),
            rewrapped_kms_key_arn: Some(B.into()),
        };
        let keys = |blobs: Vec<(&str, &[u8])>| -> Vec<String> {
            blobs.into_iter().map(|(k, _)| k.to_owned()).collect()
        };
        assert_eq!(keys(blobs_to_try(&pair, Some(&recorded))), [B, A]);
        let unwrapped = Recorded {
            rewrapped_kms_key_arn: None,
            ..recorded.clone()
        };
        assert_eq!(keys(blobs_to_try(&pair, Some(&unwrapped))), [A]);
        assert_eq!(keys(blobs_to_try(&pair, None)), [A, C, B]);
    }
}
