//! `kekeeper encrypt`: streams a recording through the envelope under a key pair's public key.
//! Needs no KMS access: only the public key and the key pair id.

use std::process::ExitCode;

use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Output, fail, open_input};
use crate::cli::EncryptArgs;
use crate::envelope;
use crate::keypair::{KeyPairState, parse_public_key_pem};

/// (public key DER, key pair id) from the Secret or from `--public-key` + `--key-pair-id`.
fn key(args: &EncryptArgs) -> Result<(Vec<u8>, String), String> {
    if let Some(path) = &args.key_pair_secret {
        let record = super::decrypt::read_key_pair_secret(path)?;
        if record.state == KeyPairState::Retired {
            eprintln!(
                "kekeeper: warning: key pair {} was retired{}; new recordings should use the active key pair",
                record.key_pair_id,
                record
                    .retired_at
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default()
            );
        }
        let record = record.into_record();
        return Ok((record.public_key_der, record.key_pair_id));
    }
    match (&args.public_key, &args.key_pair_id) {
        (Some(path), Some(id)) => {
            let pem = super::common::read_to_string(path)?;
            let der = parse_public_key_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
            if id.trim().is_empty() {
                return Err("--key-pair-id must not be empty".to_owned());
            }
            Ok((der, id.clone()))
        }
        _ => {
            Err("give --key-pair-secret FILE, or --public-key PEM with --key-pair-id ID".to_owned())
        }
    }
}

pub async fn execute(args: EncryptArgs) -> ExitCode {
    let (public_key_der, key_pair_id) = match key(&args) {
        Ok(k) => k,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let input = match open_input(&args.input) {
        Ok(i) => i,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let mut output = match Output::create(&args.output) {
        Ok(o) => o,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let outcome = envelope::encrypt(&public_key_der, &key_pair_id, input, output.writer());
    match outcome {
        Ok(bytes) => match output.finish() {
            Ok(()) => {
                eprintln!("encrypted {bytes} bytes with key pair {key_pair_id}");
                ExitCode::from(EXIT_OK)
            }
            Err(e) => fail(EXIT_FAILED, e),
        },
        Err(e) => fail(EXIT_FAILED, format!("encryption failed: {e}")),
    }
}
