//! `kekeeper decrypt`: reads the recording's header, checks it names the key pair of the given
//! Secret, asks KMS to decrypt the private key (with the Secret's encryption context) and
//! streams the plaintext out.

use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Secret;

use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Output, fail, open_input};
use crate::cli::DecryptArgs;
use crate::envelope;
use crate::keypair::KeyPairRecord;
use crate::kms::Kms;
use crate::kms::sdk::SdkKms;

/// A key pair Secret manifest (`kekeeper keypair generate` output or `kubectl get secret -o yaml`).
pub(super) fn read_key_pair_secret(path: &Path) -> Result<KeyPairRecord, String> {
    let text = super::common::read_to_string(path)?;
    let secret: Secret = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not a Secret manifest: {e}", path.display()))?;
    KeyPairRecord::from_secret(&secret).map_err(|e| format!("{}: {e}", path.display()))
}

pub async fn execute(args: DecryptArgs) -> ExitCode {
    let record = match read_key_pair_secret(&args.key_pair_secret) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
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
