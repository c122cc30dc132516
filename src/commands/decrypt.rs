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
use crate::envelope;
use crate::keypair::{
    KeyPairSecret, LABEL_KEY_PAIR_ID, LABEL_MANAGED_BY, SECRET_TYPE, key_pair_id_label,
};
use crate::kms::sdk::SdkKms;
use crate::kms::{Kms, is_multi_region_key, replica_may_answer};

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
    // Only now, with a matching header, create the output and ask KMS.
    let mut output = Output::create(&args.output).map_err(Failure::bad_input)?;
    let kms = SdkKms::from_env().await;
    let key_arn = &record.kms_key_arn;
    let decrypted = kms
        .decrypt_private_key_in(
            key_arn,
            &record.private_key_ciphertext,
            &record.encryption_context,
            &args.replica_regions,
        )
        .await
        .map_err(|err| {
            let request_id = (err.request_id.as_ref())
                .map(|id| format!(" (request id {id})"))
                .unwrap_or_default();
            // docs/design.md, "Multi-Region reads": the CLI knows a key's replicas only from
            // the command line.
            let hint = if is_multi_region_key(key_arn)
                && replica_may_answer(err.kind)
                && args.replica_regions.is_empty()
            {
                "; the KMS key is multi-Region: name a replica's Region with --replica-region \
                 to read through it"
            } else {
                ""
            };
            Failure::failed(format!(
                "KMS could not decrypt the private key of key pair {}: {err}{request_id}{hint}",
                record.key_pair_id
            ))
        })?;
    let replica_read = decrypted.replica_read(key_arn);
    let outcome = envelope::decrypt(&decrypted.plaintext, &header, input, output.writer());
    drop(decrypted);
    let bytes = outcome.map_err(|e| Failure::failed(format!("decryption failed: {e}")))?;
    output.finish().map_err(Failure::failed)?;
    if let Some(read) = replica_read {
        eprintln!("KMS answered {read}");
    }
    eprintln!(
        "decrypted {bytes} bytes with key pair {}",
        record.key_pair_id
    );
    Ok(())
}
