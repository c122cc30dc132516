//! `kekeeper keypair generate`: one self-tested key pair, written as the Secret manifest the
//! controller would store (sequence 1, state active).

use std::process::ExitCode;

use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Output, fail, read_manifest, validate};
use super::selftest::print_report;
use crate::cli::KeypairGenerateArgs;
use crate::keypair::KeyPairSecret;
use crate::kms::sdk::SdkKms;
use crate::selftest;

pub async fn execute(args: KeypairGenerateArgs) -> ExitCode {
    let manifest = match read_manifest(&args.file) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let kms = SdkKms::from_env().await;
    let config = match validate(&manifest, &kms) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    if !config.organization_ids.contains(&args.org) {
        return fail(
            EXIT_BAD_INPUT,
            format!(
                "--org {:?} is not one of the manifest's organizationIds ({})",
                args.org,
                config.organization_ids.join(", ")
            ),
        );
    }
    // Create the output first, so a bad path fails before any KMS call.
    let mut output = match Output::create(&args.output) {
        Ok(o) => o,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };

    let passed = match selftest::run(&kms, &config, &args.org).await {
        Ok(passed) => passed,
        Err(failure) => {
            let _ = print_report(&mut std::io::stderr(), &failure.report, Some(&failure));
            return fail(EXIT_FAILED, failure);
        }
    };
    let _ = print_report(&mut std::io::stderr(), &passed.report, None);

    let record = KeyPairSecret::new_active(
        &manifest.name,
        manifest.namespace.as_deref().unwrap_or_default(),
        1,
        passed.key_pair,
        config.alias.as_str(),
        config.context_for(&args.org),
        jiff::Timestamp::now(),
        "Created",
    );
    let yaml = match serde_yaml::to_string(&record.to_secret()) {
        Ok(y) => y,
        Err(e) => return fail(EXIT_FAILED, format!("cannot serialise the Secret: {e}")),
    };
    if let Err(e) = output
        .writer()
        .write_all(yaml.as_bytes())
        .map_err(|e| format!("cannot write the Secret: {e}"))
        .and_then(|()| output.finish())
    {
        return fail(EXIT_FAILED, e);
    }
    eprintln!(
        "Secret {} written: key pair {} ({}, {}), public key {}",
        record.name(),
        record.key_pair_id,
        record.key_pair_spec,
        record.kms_key_arn,
        record.fingerprint()
    );
    ExitCode::from(EXIT_OK)
}
