//! `kekeeper backup NAME | --all [-A] [-n NS] -o FILE`: the key pair Secrets of
//! RecordingKeyConfigs, written to a file in the key store's object format
//! (crate::backup, docs/disaster-recovery.md). Nothing in it is plaintext.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::cluster::connect;
use super::common::{Failure, exit};
use crate::backup::BackupFile;
use crate::cli::BackupArgs;
use crate::crd::RecordingKeyConfig;
use crate::keypair::{self, ANNOTATION_ROTATE_NOW_TOKEN, KeyPairSecret, LABEL_CONFIG, SECRET_TYPE};

pub async fn execute(args: BackupArgs) -> ExitCode {
    exit(run(args).await)
}

async fn run(args: BackupArgs) -> Result<(), Failure> {
    let cluster = connect(&args.kube).await.map_err(Failure::bad_input)?;
    let namespace = cluster.namespace.as_str();
    let scope = if args.all_namespaces {
        "any namespace".to_owned()
    } else {
        format!("namespace {namespace:?}")
    };
    let (secrets, configs): (Api<Secret>, Api<RecordingKeyConfig>) = if args.all_namespaces {
        (Api::all(cluster.client.clone()), Api::all(cluster.client))
    } else {
        (
            Api::namespaced(cluster.client.clone(), namespace),
            Api::namespaced(cluster.client, namespace),
        )
    };
    let selector = match &args.name {
        Some(name) => keypair::config_selector(name),
        None => LABEL_CONFIG.to_owned(),
    };
    let found = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| {
            Failure::failed(format!(
                "cannot list the key pair Secrets ({selector}) in {scope}: {e}"
            ))
        })?
        .items;

    // The label holds a hash of a name too long for a label: the names come from the
    // RecordingKeyConfigs (or the command line).
    let names = match &args.name {
        Some(name) => BTreeMap::from([(
            (namespace.to_owned(), keypair::config_label(name)),
            name.clone(),
        )]),
        None => config_names(&configs).await?,
    };

    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for secret in found
        .iter()
        .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
    {
        match key_pair(secret, &names) {
            Ok(pair) => pairs.push(pair),
            Err(problem) => problems.push(problem),
        }
    }
    if pairs.is_empty() && problems.is_empty() {
        return Err(Failure::bad_input(format!(
            "no key pair Secrets ({selector}, type {SECRET_TYPE}) in {scope}{}",
            match &args.name {
                Some(_) => "; check the name and -n",
                None if args.all_namespaces => "",
                None => "; check -n, or use -A for every namespace",
            }
        )));
    }

    let file = BackupFile::of(&pairs, jiff::Timestamp::now());
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| Failure::failed(format!("cannot serialise the backup: {e}")))?;
    write_private(&args.output, &json).map_err(Failure::bad_input)?;
    let configs: BTreeSet<(&str, &str)> = file
        .key_pairs
        .iter()
        .map(|e| (e.pair.namespace.as_str(), e.pair.config.as_str()))
        .collect();
    eprintln!(
        "Backed up {} key pairs of {} RecordingKeyConfigs ({scope}) to {}. It holds no plaintext \
         private key (only KMS ciphertext); restore with: kekeeper restore -f {}",
        file.key_pairs.len(),
        configs.len(),
        display(&args.output),
        display(&args.output),
    );
    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        eprintln!("kekeeper: error: {problem}");
    }
    Err(Failure::failed(format!(
        "the backup is incomplete: {} key pair Secrets could not be backed up (above); {} holds the others",
        problems.len(),
        display(&args.output)
    )))
}

/// (namespace, `kekeeper.io/config` label) → RecordingKeyConfig name, for every config that
/// exists. None when the CRD is not installed.
async fn config_names(
    configs: &Api<RecordingKeyConfig>,
) -> Result<BTreeMap<(String, String), String>, Failure> {
    let list = match configs.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => {
            return Err(Failure::failed(format!(
                "cannot list RecordingKeyConfigs: {e}"
            )));
        }
    };
    Ok(list
        .iter()
        .map(|rkc| {
            let name = rkc.name_any();
            (
                (
                    rkc.namespace().unwrap_or_default(),
                    keypair::config_label(&name),
                ),
                name,
            )
        })
        .collect())
}

/// The key pair of `secret`, under its config's name, with the rotate-now token it was made
/// for; checked as restore will check it, so every entry written can be restored.
fn key_pair(
    secret: &Secret,
    names: &BTreeMap<(String, String), String>,
) -> Result<(KeyPairSecret, Option<String>), String> {
    let place = format!(
        "Secret {}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    let mut pair = KeyPairSecret::from_secret(secret).map_err(|e| format!("{place}: {e}"))?;
    let label = pair.config_name.clone();
    if let Some(name) = names.get(&(pair.namespace.clone(), label)) {
        pair.config_name = name.clone();
    }
    let token = secret
        .annotations()
        .get(ANNOTATION_ROTATE_NOW_TOKEN)
        .cloned();
    crate::backup::BackupEntry::of(&pair, token.as_deref())
        .verify()
        .map_err(|e| {
            format!(
                "{place}: {e}; if its RecordingKeyConfig was deleted and had a long name, back it \
                 up by name: kekeeper backup NAME -n {}",
                pair.namespace
            )
        })?;
    Ok((pair, token))
}

fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "stdout".to_owned()
    } else {
        path.display().to_string()
    }
}

/// Writes `bytes` to `path` with mode 0600: into a new file beside it first, renamed over
/// `path` once complete, so a failure never leaves a half-written backup in its place.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write the backup to stdout: {e}"));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("-o {}: not a file name", path.display()))?;
    let temporary = path.with_file_name(format!(
        ".{}.kekeeper-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        // The umask cannot widen 0600, but say it explicitly.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("-o {}: cannot write the backup: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_private(&dir.path().join("missing/backup.json"), b"{}").unwrap_err();
        assert!(err.starts_with("-o "), "{err}");
    }
}
