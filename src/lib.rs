//! kekeeper: key-encryption-key pairs for call recordings, rooted in the organisation's own
//! AWS KMS key, managed as a Kubernetes resource.

pub mod arn;
pub mod backup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controller;
pub mod crd;
pub mod envelope;
pub mod keypair;
pub mod keyring;
pub mod keystore;
pub mod kms;
pub mod metrics;
pub mod policy;
pub mod selftest;
pub mod telemetry;
pub mod user_agent;

/// The one error type of the library; each concern keeps its own detailed error and is wrapped
/// here so callers can match on the concern.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Arn(#[from] arn::ArnError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    #[error(transparent)]
    Kms(#[from] kms::KmsError),
    #[error(transparent)]
    KeyPair(#[from] keypair::KeyPairError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Calls that serialise (serde's, and kekeeper's own that return a serialisation error).
    const SERIALISERS: &[&str] = &[
        "serde_json::to_vec",
        "serde_json::to_vec_pretty",
        "serde_json::to_string",
        "serde_json::to_string_pretty",
        "serde_json::to_value",
        "serde_json::to_writer",
        "serde_json::to_writer_pretty",
        "serde_yaml::to_string",
        "serde_yaml::to_writer",
        "serde_yaml::to_value",
        "to_json_vec",
        "to_json_value",
        ".to_secret",
        "secret_of",
    ];

    /// What turns a failed serialisation into a made-up value.
    const DEFAULTS: &[&str] = &[".unwrap_or_default(", ".unwrap_or(", ".unwrap_or_else("];

    /// The calls in `source` (comments left out) whose serialisation error a method chain turns
    /// into a default: each serialiser's call, its parentheses matched, then the `.method(...)`
    /// and `?` that follow it, searched for [`DEFAULTS`].
    fn defaulted_serialisations(source: &str) -> Vec<String> {
        let code: String = without_strings(source)
            .lines()
            .map(|line| line.find("//").map_or(line, |at| &line[..at]))
            .collect::<Vec<_>>()
            .join("\n");
        let bytes = code.as_bytes();
        let mut found = Vec::new();
        for serialiser in SERIALISERS {
            for (start, _) in code.match_indices(serialiser) {
                let after = start + serialiser.len();
                let ident = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
                // A whole name: `secret_of` is not `public_secret_of`.
                if serialiser.as_bytes()[0].is_ascii_alphabetic()
                    && start > 0
                    && ident(&bytes[start - 1])
                {
                    continue;
                }
                // A whole name: `to_vec` is not `to_vec_pretty`.
                if bytes.get(after).is_some_and(ident) {
                    continue;
                }
                // The call's arguments.
                let Some(mut at) = balanced(bytes, after) else {
                    continue;
                };
                // The method chain after it.
                loop {
                    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
                        at += 1;
                    }
                    match bytes.get(at) {
                        Some(b'?') => at += 1,
                        Some(b'.') => {
                            at += 1;
                            while bytes.get(at).is_some_and(ident) {
                                at += 1;
                            }
                            if let Some(end) = balanced(bytes, at) {
                                at = end;
                            }
                        }
                        _ => break,
                    }
                }
                let chain = &code[start..at];
                if DEFAULTS.iter().any(|d| chain.contains(d)) {
                    found.push(chain.to_owned());
                }
            }
        }
        found
    }

    /// `source` with the contents of its string literals left out (`"..."` stays as `""`), so
    /// that text in a string is not taken for code.
    fn without_strings(source: &str) -> String {
        let mut out = String::with_capacity(source.len());
        let mut chars = source.chars().peekable();
        let mut previous = ' ';
        while let Some(c) = chars.next() {
            out.push(c);
            // `'"'` is a character, not a string.
            if c != '"' || previous == '\'' {
                previous = c;
                continue;
            }
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            out.push('"');
            previous = '"';
        }
        out
    }

    /// The end (one past `)`) of the parenthesised group opening at `at`, whitespace first.
    fn balanced(bytes: &[u8], mut at: usize) -> Option<usize> {
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        if bytes.get(at) != Some(&b'(') {
            return None;
        }
        let mut depth = 0usize;
        for (i, b) in bytes.iter().enumerate().skip(at) {
            match b {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    /// No serialisation failure anywhere in `src/` becomes an empty or made-up value
    /// (docs/design.md, "Serialisation failures are errors").
    #[test]
    fn no_serialisation_failure_becomes_a_default() {
        let mut files = Vec::new();
        rust_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 40, "{files:?}");
        let offenders: Vec<String> = files
            .iter()
            .flat_map(|path| {
                let source = std::fs::read_to_string(path).unwrap();
                defaulted_serialisations(&source)
                    .into_iter()
                    .map(move |chain| format!("{}: {chain}", path.display()))
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "a serialisation error turned into a default; return it instead:\n{}",
            offenders.join("\n")
        );
    }

    /// The check finds what it is for, across lines and after other methods, and nothing else.
    #[test]
    fn the_serialisation_check_finds_defaults_and_only_them() {
        let caught = [
            "let body = serde_json::to_vec_pretty(&metadata).unwrap_or_default();",
            "let v = serde_json::to_value(&x)\n    .ok()\n    .unwrap_or_default();",
            "let s = serde_yaml::to_string(&secret).unwrap_or(String::new());",
            "let s = pair.to_secret().unwrap_or_else(|_| Secret::default());",
            "let b = serde_json::to_vec(&f(a, (b, c))).map(Body::from).unwrap_or_default();",
        ];
        for source in caught {
            assert_eq!(defaulted_serialisations(source).len(), 1, "{source}");
        }
        let fine = [
            "let body = serde_json::to_vec(&x)?;",
            "let name = secret.metadata.name.clone().unwrap_or_default();",
            "// serde_json::to_vec(&x).unwrap_or_default() was the old way",
            "let v = serde_json::to_value(&x).map_err(|e| e.to_string())?;\nlet n = y.unwrap_or_default();",
            "let url = \"https://example.com\"; let s = serde_json::to_string(&x)?;",
            "let s = \"serde_json::to_vec(&x).unwrap_or_default()\";",
        ];
        for source in fine {
            assert!(defaulted_serialisations(source).is_empty(), "{source}");
        }
    }
}
