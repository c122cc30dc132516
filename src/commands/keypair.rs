//! `kekeeper keypair generate`: one self-tested key pair, written as the Secret manifest the
//! controller would store (sequence 1, state active).

use std::process::ExitCode;

use super::common::{Failure, Output, exit, read_manifest, validate};
use super::selftest::print_report;
use crate::cli::KeypairGenerateArgs;
use crate::keypair::KeyPairSecret;
use crate::kms::sdk::SdkKms;
use crate::selftest;

pub async fn execute(args: KeypairGenerateArgs) -> ExitCode {
    exit(generate(&args).await)
}

async fn generate(args: &KeypairGenerateArgs) -> Result<(), Failure> {
    let manifest = read_manifest(&args.file).map_err(Failure::bad_input)?;
    let kms = SdkKms::from_env().await;
    let config = validate(&manifest, &kms).map_err(Failure::bad_input)?;
    if !config.organization_ids.contains(&args.org) {
        return Err(Failure::bad_input(format!(
            "--org {:?} is not one of the manifest's organizationIds ({})",
            args.org,
            config.organization_ids.join(", ")
        )));
    }
    // Create the output first, so a bad path fails before any KMS call.
    let mut output = Output::create(&args.output).map_err(Failure::bad_input)?;

    let passed = selftest::run(&kms, &config, &args.org)
        .await
        .map_err(|failure| {
            let _ = print_report(&mut std::io::stderr(), &failure.report, Some(&failure));
            Failure::failed(failure)
        })?;
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
    let secret = record.to_secret().map_err(|e| {
        Failure::failed(format!("cannot serialise the Secret's metadata.json: {e}"))
    })?;
    let yaml = serde_yaml::to_string(&secret)
        .map_err(|e| Failure::failed(format!("cannot serialise the Secret: {e}")))?;
    output
        .writer()
        .write_all(yaml.as_bytes())
        .map_err(|e| format!("cannot write the Secret: {e}"))
        .and_then(|()| output.finish())
        .map_err(Failure::failed)?;
    eprintln!(
        "Secret {} written: key pair {} ({}, {}), public key {}",
        record.name(),
        record.key_pair_id,
        record.key_pair_spec,
        record.kms_key_arn,
        record.fingerprint()
    );
    Ok(())
}
