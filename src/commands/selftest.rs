//! `kekeeper test`: the Test button. Validates a RecordingKeyConfig (from manifests, or read
//! from the cluster), checks the KMS key behind the alias, and self-tests every organisation;
//! stores nothing. Read from the cluster with `list` only, which the operator's own RBAC
//! grants: the chart's `helm test` Pod runs it as the operator's ServiceAccount, so the
//! operator's AWS identity is the one that proves the key (docs/installation.md).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::ListParams;

use super::cluster::connect;
use super::common::{
    EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Manifest, fail, read_manifests, validate,
};
use crate::cli::{KubeArgs, TestArgs};
use crate::config::ValidatedConfig;
use crate::crd::RecordingKeyConfig;
use crate::kms::sdk::SdkKms;
use crate::kms::{Kms, KmsError};
use crate::selftest::{
    self, ReplicaCheck, SelfTestCause, SelfTestFailure, SelfTestReport, SelfTestStep,
};

fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// One organisation's steps: `ok` with timings, the failed step with the KMS code and message,
/// and the steps that did not run.
pub(super) fn print_report(
    out: &mut impl Write,
    report: &SelfTestReport,
    failure: Option<&SelfTestFailure>,
) -> io::Result<()> {
    match print_steps(out, report, failure)? {
        None => writeln!(out, "  PASSED in {}", millis(report.total())),
        Some(step) => writeln!(out, "  FAILED at {step}"),
    }
}

/// The steps of [`print_report`] without its verdict line; the step that failed, if one did.
/// A KMS error as the test prints it: `OPERATION: CODE: MESSAGE`, then its request id.
fn write_kms_error(out: &mut impl Write, indent: &str, err: &KmsError) -> io::Result<()> {
    writeln!(
        out,
        "{indent}{}: {}: {}",
        err.operation, err.code, err.message
    )?;
    if let Some(id) = &err.request_id {
        writeln!(out, "{indent}request id {id}")?;
    }
    Ok(())
}

fn print_steps(
    out: &mut impl Write,
    report: &SelfTestReport,
    failure: Option<&SelfTestFailure>,
) -> io::Result<Option<SelfTestStep>> {
    writeln!(out, "organisation {}", report.organization_id)?;
    if let Some(key_arn) = &report.kms_key_arn {
        writeln!(out, "  KMS key {key_arn}")?;
    }
    let mut failed_at = None;
    for step in SelfTestStep::ALL {
        if let Some(duration) = report.duration_of(step) {
            writeln!(
                out,
                "  ok    {:<62} {:>9}",
                step.description(),
                millis(duration)
            )?;
        } else if let Some(failure) = failure.filter(|f| f.step == step) {
            failed_at = Some(step);
            writeln!(out, "  FAIL  {}", step.description())?;
            match &failure.cause {
                SelfTestCause::Kms(err) => write_kms_error(out, "        ", err)?,
                SelfTestCause::Crypto(message) => writeln!(out, "        {message}")?,
            }
        } else {
            writeln!(out, "  -     {} (not run)", step.description())?;
        }
    }
    Ok(failed_at)
}

/// Each replica's round trip of the organisation's test blob, one line per Region; the first
/// Region that failed, if one did (docs/design.md, "Multi-Region reads").
fn print_replica_checks(
    out: &mut impl Write,
    checks: &[ReplicaCheck],
) -> io::Result<Option<String>> {
    let mut failed = None;
    for check in checks {
        match &check.result {
            Ok(report) => writeln!(
                out,
                "  ok    {:<62} {:>9}",
                format!("replica {}: decrypt through it (KMS Decrypt)", check.region),
                millis(
                    report
                        .duration_of(SelfTestStep::DecryptPrivateKey)
                        .unwrap_or_default()
                )
            )?,
            Err(failure) => {
                failed.get_or_insert_with(|| check.region.clone());
                writeln!(
                    out,
                    "  FAIL  replica {}: {}",
                    check.region,
                    failure.step.description()
                )?;
                match &failure.cause {
                    SelfTestCause::Kms(err) => {
                        write_kms_error(out, "        ", err)?;
                        writeln!(
                            out,
                            "        reads turn to this replica when the home Region fails: its key policy and the role's identity policy must allow kms:Decrypt (docs/installation.md)"
                        )?;
                    }
                    SelfTestCause::Crypto(message) => writeln!(out, "        {message}")?,
                }
            }
        }
    }
    Ok(failed)
}

/// The RecordingKeyConfigs to test: the manifests of -f, or those read from the cluster.
async fn configs(args: &TestArgs) -> Result<Vec<Manifest>, (u8, String)> {
    if let Some(path) = &args.file {
        return read_manifests(path).map_err(|e| (EXIT_BAD_INPUT, e));
    }
    if !args.names.is_empty() && args.namespace.len() > 1 {
        return Err((
            EXIT_BAD_INPUT,
            "RecordingKeyConfigs by name are read from one namespace: give at most one -n (or --all with several)".to_owned(),
        ));
    }
    let cluster = connect(&KubeArgs {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: args.namespace.first().cloned(),
    })
    .await
    .map_err(|e| (EXIT_BAD_INPUT, e))?;
    let list = |api: Api<RecordingKeyConfig>, params: ListParams, where_: String| async move {
        api.list(&params).await.map(|list| list.items).map_err(|e| {
            (
                EXIT_FAILED,
                format!("cannot list RecordingKeyConfigs {where_}: {e}"),
            )
        })
    };
    let mut found = Vec::new();
    let searched;
    if args.all_namespaces {
        found = list(
            Api::all(cluster.client),
            ListParams::default(),
            "in all namespaces".into(),
        )
        .await?;
        searched = "in any namespace".to_owned();
    } else {
        let namespaces = if args.namespace.is_empty() {
            vec![cluster.namespace.clone()]
        } else {
            args.namespace.clone()
        };
        for namespace in &namespaces {
            let api: Api<RecordingKeyConfig> = Api::namespaced(cluster.client.clone(), namespace);
            if args.all {
                found.extend(
                    list(
                        api,
                        ListParams::default(),
                        format!("in namespace {namespace:?}"),
                    )
                    .await?,
                );
                continue;
            }
            // By name through `list` with a field selector: the operator's RBAC has no `get`.
            for name in &args.names {
                let params = ListParams::default().fields(&format!("metadata.name={name}"));
                let mut items = list(
                    api.clone(),
                    params,
                    format!("named {name:?} in {namespace:?}"),
                )
                .await?;
                match items.pop() {
                    Some(rkc) => found.push(rkc),
                    None => {
                        return Err((
                            EXIT_BAD_INPUT,
                            super::cluster::not_found("recordingkeyconfig", name, namespace),
                        ));
                    }
                }
            }
        }
        searched = format!("in namespace {}", namespaces.join(", "));
    }
    if found.is_empty() {
        return Err((
            EXIT_BAD_INPUT,
            format!("no RecordingKeyConfig {searched}: nothing to test (create one first)"),
        ));
    }
    Ok(found
        .into_iter()
        .map(|rkc| Manifest {
            name: rkc.metadata.name.unwrap_or_default(),
            namespace: rkc.metadata.namespace,
            spec: rkc.spec,
        })
        .collect())
}

pub async fn execute(args: TestArgs) -> ExitCode {
    let manifests = match configs(&args).await {
        Ok(m) => m,
        Err((code, e)) => return fail(code, e),
    };
    let kms = SdkKms::from_env().await;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    // The exit code is the worst of all resources: bad input over failure over success.
    let mut worst = EXIT_OK;
    for (index, manifest) in manifests.iter().enumerate() {
        if index > 0 {
            let _ = writeln!(out);
        }
        let code = match validate(manifest, &kms) {
            Ok(config) => match run(
                &mut out,
                &manifest.qualified_name(),
                &config,
                &kms,
                args.max_organizations,
            )
            .await
            {
                Ok(true) => EXIT_OK,
                Ok(false) => EXIT_FAILED,
                Err(e) => return fail(EXIT_FAILED, format!("cannot write the report: {e}")),
            },
            Err(e) if manifests.len() == 1 => return fail(EXIT_BAD_INPUT, e),
            Err(e) => {
                let _ = writeln!(
                    out,
                    "RecordingKeyConfig {}: INVALID: {e}",
                    manifest.qualified_name()
                );
                EXIT_BAD_INPUT
            }
        };
        worst = worst.max(code);
    }
    if manifests.len() > 1 {
        let _ = writeln!(
            out,
            "\n{} RecordingKeyConfigs tested: {}",
            manifests.len(),
            match worst {
                EXIT_OK => "all passed",
                EXIT_FAILED => "some FAILED",
                _ => "some are INVALID",
            }
        );
    }
    ExitCode::from(worst)
}

/// Prints the report; `Ok(true)` when every organisation tested passed. `max_organizations`
/// (0: all) limits the organisations self-tested.
async fn run<K: Kms>(
    out: &mut impl Write,
    name: &str,
    config: &ValidatedConfig,
    kms: &K,
    max_organizations: usize,
) -> io::Result<bool> {
    writeln!(
        out,
        "RecordingKeyConfig {name}: {} ({}, home region {}, encryption context key {})",
        config.alias, config.key_pair_spec, config.home_region, config.encryption_context_key
    )?;
    let mut all_passed = true;

    let started = Instant::now();
    let replicas;
    match kms.describe_key(&config.alias).await {
        Ok(description) => {
            replicas = selftest::replica_regions(config, &description);
            writeln!(
                out,
                "KMS key {}: {}, {}, {}, {} managed{} ({})",
                description.key_arn,
                description.key_state,
                description.key_spec,
                description.key_usage,
                description.key_manager.to_lowercase(),
                description
                    .multi_region
                    .as_ref()
                    .map(|m| format!(
                        ", multi-region (primary {}, replicas [{}])",
                        m.primary_region,
                        m.replica_regions.join(", ")
                    ))
                    .unwrap_or_default(),
                millis(started.elapsed())
            )?;
            if let Err(problem) = selftest::validate_key(&description, config) {
                // Carry on: the self-test shows what KMS itself answers (e.g. DisabledException).
                writeln!(out, "  PROBLEM {}: {problem}", problem.reason())?;
                all_passed = false;
            }
        }
        Err(err) => {
            writeln!(
                out,
                "KMS key: FAIL {}: {}: {}",
                err.operation, err.code, err.message
            )?;
            if let Some(id) = &err.request_id {
                writeln!(out, "  request id {id}")?;
            }
            writeln!(
                out,
                "\nFAILED: the alias could not be described; no organisation was tested"
            )?;
            return Ok(false);
        }
    }
    writeln!(out)?;

    let all = config.organization_ids.len();
    let tested = match max_organizations {
        0 => all,
        max => max.min(all),
    };
    if tested < all {
        writeln!(
            out,
            "Testing the first {tested} of {all} organisations (--max-organizations {max_organizations})\n"
        )?;
    }
    let mut passed = 0;
    for organization_id in &config.organization_ids[..tested] {
        match selftest::run(kms, config, organization_id).await {
            Ok(ok) => {
                print_steps(out, &ok.report, None)?;
                let context = config.context_for(organization_id);
                let checks = selftest::check_replicas(kms, &ok.key_pair, &context, &replicas).await;
                match print_replica_checks(out, &checks)? {
                    None => {
                        passed += 1;
                        writeln!(out, "  PASSED in {}", millis(ok.report.total()))?;
                    }
                    Some(region) => {
                        all_passed = false;
                        writeln!(out, "  FAILED at replica {region}")?;
                    }
                }
            }
            Err(failure) => {
                all_passed = false;
                print_report(out, &failure.report, Some(&failure))?;
            }
        }
        out.flush()?;
    }
    let total = tested;
    writeln!(
        out,
        "\n{}: {passed}/{total} organisations passed",
        if all_passed { "PASSED" } else { "FAILED" }
    )?;
    Ok(all_passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::AliasArn;
    use crate::kms::fake::FakeKms;
    use crate::kms::{KeyPairSpec, KmsErrorKind, KmsOperation};

    fn config() -> ValidatedConfig {
        ValidatedConfig {
            alias: AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap(),
            organization_ids: vec![
                "3fa85f64-5717-4562-b3fc-2c963f66afa6".into(),
                "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            ],
            key_pair_spec: KeyPairSpec::Rsa2048,
            home_region: "us-east-1".into(),
            encryption_context_key: "genesys-cloud-organization-id".into(),
            replica_regions: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_report_shows_every_step_and_the_kms_error() {
        let kms = FakeKms::reusing_key_pairs();
        kms.create_key_for(&config().alias);
        let mut out = Vec::new();
        assert!(
            run(&mut out, "recordings", &config(), &kms, 0)
                .await
                .unwrap()
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("PASSED: 2/2 organisations passed"), "{text}");
        assert_eq!(text.matches("  ok    ").count(), 10, "{text}");

        kms.fail_next(KmsOperation::Decrypt, KmsErrorKind::AccessDenied);
        let mut out = Vec::new();
        assert!(
            !run(&mut out, "recordings", &config(), &kms, 0)
                .await
                .unwrap()
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL  decrypt the private key (KMS Decrypt)"),
            "{text}"
        );
        assert!(
            text.contains("Decrypt: AccessDeniedException: injected"),
            "{text}"
        );
        assert!(text.contains("(not run)"), "{text}");
        assert!(text.contains("FAILED: 1/2 organisations passed"), "{text}");

        // --max-organizations 1: the first organisation only, and the report says so.
        let mut out = Vec::new();
        assert!(
            run(&mut out, "recordings", &config(), &kms, 1)
                .await
                .unwrap()
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Testing the first 1 of 2 organisations"),
            "{text}"
        );
        assert!(text.contains("PASSED: 1/1 organisations passed"), "{text}");
        assert!(!text.contains("7c9e6679"), "{text}");
    }

    /// The Test button checks each replica of a multi-Region key; one that would not answer
    /// fails the test.
    #[tokio::test]
    async fn each_replica_is_checked_and_a_failing_one_fails_the_test() {
        let kms = FakeKms::reusing_key_pairs();
        let key = kms.create_multi_region_key("aws", "us-east-1", "111122223333");
        kms.point_alias(&config().alias, &key);
        kms.replicate_key(&key, "eu-west-1");
        let mut out = Vec::new();
        assert!(
            run(&mut out, "recordings", &config(), &kms, 1)
                .await
                .unwrap()
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("multi-region (primary us-east-1, replicas [eu-west-1])"),
            "{text}"
        );
        assert!(
            text.contains("  ok    replica eu-west-1: decrypt through it (KMS Decrypt)"),
            "{text}"
        );
        assert_eq!(kms.decrypts_in("eu-west-1"), 1);

        kms.fail_region("eu-west-1", KmsErrorKind::AccessDenied);
        let mut out = Vec::new();
        assert!(
            !run(&mut out, "recordings", &config(), &kms, 1)
                .await
                .unwrap()
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL  replica eu-west-1: decrypt the private key (KMS Decrypt)"),
            "{text}"
        );
        assert!(text.contains("Decrypt: AccessDeniedException"), "{text}");
        assert!(text.contains("  FAILED at replica eu-west-1\n"), "{text}");
        assert!(text.contains("FAILED: 0/1 organisations passed"), "{text}");
    }
}
