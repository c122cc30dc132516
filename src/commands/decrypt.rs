//! `kekeeper decrypt`: reads the recording's header, checks it names the key pair of the given
//! Secret (or fetches that Secret from the cluster by its `kekeeper.io/key-pair-id` label), asks KMS to decrypt the private key (with the Secret's encryption context) and
//! streams the plaintext out.

use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

use super::cluster::connect;
use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Output, fail, open_input};
use crate::cli::DecryptArgs;
use crate::envelope;
use crate::keypair::{
    KeyPairSecret, LABEL_KEY_PAIR_ID, LABEL_MANAGED_BY, SECRET_TYPE, key_pair_id_label,
};
use crate::kms::Kms;
use crate::kms::sdk::SdkKms;

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
    // The Secret file is checked before the recording is opened, as before.
    let from_file = match &args.key_pair_secret {
        Some(path) => match read_key_pair_secret(path) {
            Ok(r) => Some(r),
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        },
        None => None,
    };
    let mut input = match open_input(&args.input) {
        Ok(i) => i,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let header = match envelope::Header::read_from(&mut input) {
        Ok(h) => h,
        Err(e) => {
            return fail(
                EXIT_BAD_INPUT,
                format!("cannot read the recording header: {e}"),
            );
        }
    };
    let record = match from_file {
        Some(record) => record,
        None => match fetch_key_pair_secret(&args.kube, &header.key_pair_id).await {
            Ok(record) => record,
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        },
    };
    if header.key_pair_id != record.key_pair_id {
        return fail(
            EXIT_BAD_INPUT,
            format!(
                "the recording was encrypted with key pair {}, but Secret {} holds key pair {}; \
                 use the Secret whose metadata.json names keyPairId {}",
                header.key_pair_id,
                record.name(),
                record.key_pair_id,
                header.key_pair_id
            ),
        );
    }
    // Only now, with a matching header, create the output and ask KMS.
    let mut output = match Output::create(&args.output) {
        Ok(o) => o,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let kms = SdkKms::from_env().await;
    let private_key = match kms
        .decrypt_private_key(
            &record.kms_key_arn,
            &record.private_key_ciphertext,
            &record.encryption_context,
        )
        .await
    {
        Ok(key) => key,
        Err(err) => {
            let request_id = err
                .request_id
                .as_ref()
                .map(|id| format!(" (request id {id})"))
                .unwrap_or_default();
            return fail(
                EXIT_FAILED,
                format!(
                    "KMS could not decrypt the private key of key pair {}: {err}{request_id}",
                    record.key_pair_id
                ),
            );
        }
    };
    let outcome = envelope::decrypt(&private_key, &header, input, output.writer());
    drop(private_key);
    match outcome {
        Ok(bytes) => match output.finish() {
            Ok(()) => {
                eprintln!(
                    "decrypted {bytes} bytes with key pair {}",
                    record.key_pair_id
                );
                ExitCode::from(EXIT_OK)
            }
            Err(e) => fail(EXIT_FAILED, e),
        },
        Err(e) => fail(EXIT_FAILED, format!("decryption failed: {e}")),
    }
}
