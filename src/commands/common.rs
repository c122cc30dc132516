//! What the engine subcommands share: exit codes, error output, reading manifests and opening
//! `-`-aware inputs and outputs.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize;

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

/// Why a command failed: its exit code and what `kekeeper: error:` says.
pub(super) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Bad input ([`EXIT_BAD_INPUT`]).
    pub(super) fn bad_input(message: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_BAD_INPUT,
            message: message.to_string(),
        }
    }

    /// A KMS or crypto failure ([`EXIT_FAILED`]).
    pub(super) fn failed(message: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: message.to_string(),
        }
    }
}

/// The exit code of a command's result; a failure is printed first.
pub(super) fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => fail(failure.code, failure.message),
    }
}

fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    }
}

/// The largest manifest or Secret file read (1 MiB): a RecordingKeyConfig, a `kind: List` of
/// a few hundred of them or a key pair Secret is far smaller.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// The deepest flow nesting (`[`/`{`) accepted. The YAML parser's time grows steeply with
/// nesting (400 KB of `[` took 93 s), so the bytes are scanned before it sees them.
pub const MAX_NESTING: usize = 64;

/// Reads a whole (YAML or PEM) input, refusing more than [`MAX_INPUT_BYTES`] and nesting
/// deeper than [`MAX_NESTING`].
pub(super) fn read_to_string(path: &Path) -> Result<String, String> {
    let source = display(path);
    let reader: Box<dyn Read> = if path == Path::new("-") {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| format!("cannot read {source}: {e}"))?)
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {source}: {e}"))?;
    input_text(bytes, &source)
}

/// The checks every manifest or Secret input passes once read (size, nesting, UTF-8), apart
/// from the reading, so the fuzz targets (fuzz/) reach them.
pub fn input_text(bytes: Vec<u8>, source: &str) -> Result<String, String> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "{source} is larger than 1 MiB, the limit for manifests and key pair Secrets; \
             pass one RecordingKeyConfig or Secret per file"
        ));
    }
    check_nesting(&bytes).map_err(|depth| {
        format!(
            "{source} nests [ or {{ {depth} levels deep; at most {MAX_NESTING} are accepted \
             (a RecordingKeyConfig or Secret needs 3)"
        )
    })?;
    String::from_utf8(bytes).map_err(|e| format!("{source} is not UTF-8 text: {e}"))
}

/// `Err(depth)` once `[`/`{` nest deeper than [`MAX_NESTING`]. Every bracket counts, also
/// inside quotes and comments: an over-estimate that no quoting trick can lower, and no
/// RecordingKeyConfig or Secret holds 65 unbalanced brackets.
pub fn check_nesting(bytes: &[u8]) -> Result<(), usize> {
    let mut depth = 0usize;
    for &byte in bytes {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
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
pub struct Manifest {
    pub name: String,
    pub namespace: Option<String>,
    pub spec: RecordingKeyConfigSpec,
}

/// The one RecordingKeyConfig of a manifest file (`keypair generate`).
pub(super) fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let mut manifests = read_manifests(path)?;
    if manifests.len() > 1 {
        return Err(format!(
            "{} holds {} RecordingKeyConfigs; pass a file with one",
            display(path),
            manifests.len()
        ));
    }
    Ok(manifests.remove(0))
}

/// Skipped documents named one by one; the rest are counted (a file of a hundred thousand tiny
/// documents would otherwise spend most of its time printing notes).
const MAX_SKIP_NOTES: usize = 10;

/// Every RecordingKeyConfig of a manifest file: one document, several (`---`), or `kind: List`
/// (`kubectl get rkc -o yaml`). In a file of several documents other kinds are skipped with a
/// note; a file without any RecordingKeyConfig is an error.
pub(super) fn read_manifests(path: &Path) -> Result<Vec<Manifest>, String> {
    parse_manifests(&read_to_string(path)?, &display(path))
}

/// [`read_manifests`] on text already read; `source` names it in messages.
pub fn parse_manifests(text: &str, source: &str) -> Result<Vec<Manifest>, String> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("{source} is not valid YAML: {e}"))?;
        match value.get("kind").and_then(serde_yaml::Value::as_str) {
            Some("List") => match value.get("items").and_then(serde_yaml::Value::as_sequence) {
                Some(items) => documents.extend(items.iter().cloned()),
                None => return Err(format!("{source}: a List without items")),
            },
            _ if value.is_null() => {}
            _ => documents.push(value),
        }
    }
    if documents.len() == 1 {
        return Ok(vec![manifest(&documents[0], source)?]);
    }
    let mut manifests = Vec::new();
    let mut skipped = 0;
    for (index, value) in documents.iter().enumerate() {
        let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
        if kind == Some("RecordingKeyConfig") {
            manifests.push(manifest(
                value,
                &format!("{source} (document {})", index + 1),
            )?);
            continue;
        }
        skipped += 1;
        if skipped <= MAX_SKIP_NOTES {
            eprintln!(
                "kekeeper: note: {source}: skipped document {} (kind {}, not RecordingKeyConfig)",
                index + 1,
                kind.unwrap_or("missing")
            );
        }
    }
    if skipped > MAX_SKIP_NOTES {
        eprintln!(
            "kekeeper: note: {source}: skipped {} more documents that are not RecordingKeyConfigs",
            skipped - MAX_SKIP_NOTES
        );
    }
    if manifests.is_empty() {
        return Err(format!("{source} holds no RecordingKeyConfig"));
    }
    Ok(manifests)
}

fn manifest(value: &serde_yaml::Value, source: &str) -> Result<Manifest, String> {
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

impl Manifest {
    /// `namespace/name`, or the name alone when the manifest names no namespace.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The manifest validated against the operator's region, as the controller would.
pub(super) fn validate(manifest: &Manifest, kms: &SdkKms) -> Result<ValidatedConfig, String> {
    config::validate(&manifest.spec, kms.operator_region()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_on_the_bytes_and_quotes_do_not_hide_it() {
        assert_eq!(
            check_nesting(b"spec: {rotation: {period: Monthly}, ids: [a]}"),
            Ok(())
        );
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        assert_eq!(check_nesting(&deep(MAX_NESTING)), Ok(()));
        assert_eq!(check_nesting(&deep(MAX_NESTING + 1)), Err(MAX_NESTING + 1));
        // Siblings do not add up; stray closing brackets do not buy depth.
        assert_eq!(check_nesting(&deep(40).repeat(100)), Ok(()));
        let stray = format!("{}{}", "]".repeat(100), "[".repeat(65));
        assert_eq!(check_nesting(stray.as_bytes()), Err(65));
        let quoted = format!("a: \"{}\"", "[".repeat(65));
        assert_eq!(check_nesting(quoted.as_bytes()), Err(65));
    }

    #[test]
    fn inputs_over_a_mebibyte_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at_limit = dir.path().join("at-limit.yaml");
        std::fs::write(&at_limit, vec![b'#'; MAX_INPUT_BYTES]).unwrap();
        assert_eq!(read_to_string(&at_limit).unwrap().len(), MAX_INPUT_BYTES);
        let over = dir.path().join("over.yaml");
        std::fs::write(&over, vec![b'#'; MAX_INPUT_BYTES + 1]).unwrap();
        let err = read_to_string(&over).unwrap_err();
        assert!(err.contains("is larger than 1 MiB"), "{err}");
    }
}
