//! What the engine subcommands share: exit codes, error output, reading manifests and opening
//! `-`-aware inputs and outputs.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, ValidatedConfig};
use crate::crd::RecordingKeyConfigSpec;
use crate::kms::sdk::SdkKms;

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
