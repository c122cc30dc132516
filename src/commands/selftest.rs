//! `kekeeper test`: the Test button. Validates a RecordingKeyConfig manifest, checks the KMS key
//! behind the alias, and self-tests every organisation; stores nothing.
//!
//! Also the helpers the other engine subcommands share: reading manifests and opening
//! `-`-aware inputs and outputs.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::TestArgs;
use crate::config::{self, ValidatedConfig};
use crate::crd::RecordingKeyConfigSpec;
use crate::kms::Kms;
use crate::kms::sdk::SdkKms;
use crate::selftest::{self, SelfTestCause, SelfTestFailure, SelfTestReport, SelfTestStep};

pub(super) const EXIT_OK: u8 = 0;
/// A KMS or crypto failure.
pub(super) const EXIT_FAILED: u8 = 1;
/// Bad input: unreadable file, invalid manifest, bad ARN, wrong organisation.
pub(super) const EXIT_BAD_INPUT: u8 = 2;

/// Prints `kekeeper: error: ...` and returns the exit code.
pub(super) fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("kekeeper: error: {message}");
    ExitCode::from(code)
}

fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    }
}

pub(super) fn read_to_string(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    let outcome = if path == Path::new("-") {
        io::stdin().read_to_string(&mut text)
    } else {
        File::open(path).and_then(|mut f| f.read_to_string(&mut text))
    };
    outcome.map_err(|e| format!("cannot read {}: {e}", display(path)))?;
    Ok(text)
}

pub(super) fn open_input(path: &Path) -> Result<Box<dyn Read>, String> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(io::stdin())));
    }
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

/// An output file that is removed again unless [`Output::finish`] is called, so a failed
/// command leaves no partial recording behind.
pub(super) struct Output {
    writer: Option<Box<dyn Write>>,
    path: Option<PathBuf>,
}

impl Output {
    pub(super) fn create(path: &Path) -> Result<Output, String> {
        if path == Path::new("-") {
            return Ok(Output {
                writer: Some(Box::new(BufWriter::new(io::stdout()))),
                path: None,
            });
        }
        let file =
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Output {
            writer: Some(Box::new(BufWriter::new(file))),
            path: Some(path.to_owned()),
        })
    }

    pub(super) fn writer(&mut self) -> &mut dyn Write {
        // Present until finish() or drop.
        self.writer.as_mut().map_or_else(
            || unreachable!("Output used after finish"),
            |w| w.as_mut() as &mut dyn Write,
        )
    }

    pub(super) fn finish(mut self) -> Result<(), String> {
        if let Some(mut writer) = self.writer.take() {
            writer
                .flush()
                .map_err(|e| format!("cannot write output: {e}"))?;
        }
        self.path = None;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A RecordingKeyConfig manifest: name, namespace and spec.
pub(super) struct Manifest {
    pub name: String,
    pub namespace: Option<String>,
    pub spec: RecordingKeyConfigSpec,
}

pub(super) fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let text = read_to_string(path)?;
    let source = display(path);
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{source} is not valid YAML: {e}"))?;
    let field = |name: &str| value.get(name).and_then(serde_yaml::Value::as_str);
    match field("kind") {
        Some("RecordingKeyConfig") => {}
        Some(other) => {
            return Err(format!(
                "{source}: kind is {other:?}, expected RecordingKeyConfig"
            ));
        }
        None => {
            return Err(format!(
                "{source}: kind is missing (expected RecordingKeyConfig)"
            ));
        }
    }
    match field("apiVersion") {
        Some("kekeeper.io/v1alpha1") => {}
        other => {
            return Err(format!(
                "{source}: apiVersion is {other:?}, expected kekeeper.io/v1alpha1"
            ));
        }
    }
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml::Value::as_str)
        .ok_or_else(|| format!("{source}: metadata.name is missing"))?
        .to_owned();
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(serde_yaml::Value::as_str)
        .map(str::to_owned);
    let spec = value
        .get("spec")
        .cloned()
        .ok_or_else(|| format!("{source}: spec is missing"))?;
    let spec: RecordingKeyConfigSpec =
        serde_yaml::from_value(spec).map_err(|e| format!("{source}: spec: {e}"))?;
    Ok(Manifest {
        name,
        namespace,
        spec,
    })
}

/// The manifest validated against the operator's region, as the controller would.
pub(super) fn validate(manifest: &Manifest, kms: &SdkKms) -> Result<ValidatedConfig, String> {
    config::validate(&manifest.spec, kms.operator_region()).map_err(|e| e.to_string())
}

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
                SelfTestCause::Kms(err) => {
                    writeln!(
                        out,
                        "        {}: {}: {}",
                        err.operation, err.code, err.message
                    )?;
                    if let Some(id) = &err.request_id {
                        writeln!(out, "        request id {id}")?;
                    }
                }
                SelfTestCause::Crypto(message) => writeln!(out, "        {message}")?,
            }
        } else {
            writeln!(out, "  -     {} (not run)", step.description())?;
        }
    }
    match failed_at {
        None => writeln!(out, "  PASSED in {}", millis(report.total())),
        Some(step) => writeln!(out, "  FAILED at {step}"),
    }
}

pub async fn execute(args: TestArgs) -> ExitCode {
    let manifest = match read_manifest(&args.file) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let kms = SdkKms::from_env().await;
    let config = match validate(&manifest, &kms) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run(&mut out, &manifest.name, &config, &kms).await {
        Ok(true) => ExitCode::from(EXIT_OK),
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(e) => fail(EXIT_FAILED, format!("cannot write the report: {e}")),
    }
}

/// Prints the report; `Ok(true)` when every organisation passed.
async fn run<K: Kms>(
    out: &mut impl Write,
    name: &str,
    config: &ValidatedConfig,
    kms: &K,
) -> io::Result<bool> {
    writeln!(
        out,
        "RecordingKeyConfig {name}: {} ({}, home region {}, encryption context key {})",
        config.alias, config.key_pair_spec, config.home_region, config.encryption_context_key
    )?;
    let mut all_passed = true;

    let started = Instant::now();
    match kms.describe_key(&config.alias).await {
        Ok(description) => {
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

    let mut passed = 0;
    for organization_id in &config.organization_ids {
        match selftest::run(kms, config, organization_id).await {
            Ok(ok) => {
                passed += 1;
                print_report(out, &ok.report, None)?;
            }
            Err(failure) => {
                all_passed = false;
                print_report(out, &failure.report, Some(&failure))?;
            }
        }
        out.flush()?;
    }
    let total = config.organization_ids.len();
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
            organization_ids: vec!["org-a".into(), "org-b".into()],
            key_pair_spec: KeyPairSpec::Rsa2048,
            home_region: "us-east-1".into(),
            encryption_context_key: "genesys-cloud-organization-id".into(),
        }
    }

    #[tokio::test]
    async fn the_report_shows_every_step_and_the_kms_error() {
        let kms = FakeKms::reusing_key_pairs();
        kms.create_key_for(&config().alias);
        let mut out = Vec::new();
        assert!(run(&mut out, "recordings", &config(), &kms).await.unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("PASSED: 2/2 organisations passed"), "{text}");
        assert_eq!(text.matches("  ok    ").count(), 10, "{text}");

        kms.fail_next(KmsOperation::Decrypt, KmsErrorKind::AccessDenied);
        let mut out = Vec::new();
        assert!(!run(&mut out, "recordings", &config(), &kms).await.unwrap());
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
    }
}
