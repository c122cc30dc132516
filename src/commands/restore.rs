//! `kekeeper restore -f FILE [-n NS] [--dry-run]`: creates the missing key pair Secrets of a
//! `kekeeper backup` file, exactly as the controller would have made them
//! ([`KeyPairSecret::to_secret`]). The file is checked whole first; existing Secrets are never
//! touched; an older pair never becomes active over a newer one (crate::backup::plan_restore).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use super::cluster::connect;
use super::common::{Failure, exit};
use super::rotate::FIELD_MANAGER;
use crate::backup::{BackupFile, ClusterView, RestoreAction, plan_restore, secret_of};
use crate::cli::{KubeArgs, RestoreArgs};
use crate::crd::RecordingKeyConfig;
use crate::keypair::{self, KeyPairRecord, KeyPairSecret, KeyPairState};

/// The largest backup file read: about 10 000 RSA-4096 key pairs.
const MAX_BACKUP_BYTES: u64 = 64 * 1024 * 1024;

pub async fn execute(args: RestoreArgs) -> ExitCode {
    exit(run(args).await)
}

async fn run(args: RestoreArgs) -> Result<(), Failure> {
    let source = args.file.display().to_string();
    let bytes = read(&args.file).map_err(Failure::bad_input)?;
    let (file, mut pairs) = BackupFile::parse(&bytes, &source).map_err(Failure::bad_input)?;
    // The rotate-now token each pair was made for goes back on its Secret, as the controller
    // restores it from the store.
    let tokens: BTreeMap<(String, String), String> = file
        .key_pairs
        .into_iter()
        .filter_map(|e| {
            let token = e.pair.rotate_now_token?;
            Some(((e.pair.namespace, e.pair.secret_name), token))
        })
        .collect();
    if let Some(namespace) = &args.namespace {
        let namespaces: BTreeSet<String> = pairs.iter().map(|p| p.namespace.clone()).collect();
        pairs.retain(|p| p.namespace == *namespace);
        if pairs.is_empty() {
            return Err(Failure::bad_input(format!(
                "-n {namespace}: {source} holds no key pairs of that namespace (it holds {})",
                namespaces.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let cluster = connect(&KubeArgs {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: None,
    })
    .await
    .map_err(Failure::bad_input)?;
    let view = read_cluster(&cluster.client, &pairs).await?;
    let actions = plan_restore(&pairs, &view, jiff::Timestamp::now());

    let mut tally = Tally::default();
    for action in &actions {
        match action {
            RestoreAction::Create { pair, newer } => {
                let why = newer
                    .map(|n| format!(" (sequence {n} is newer)"))
                    .unwrap_or_default();
                let state = pair.state.as_str();
                let created = if args.dry_run {
                    println!("would create {state:<8} {}{why}", describe(pair));
                    Ok(true)
                } else {
                    let token = tokens.get(&(pair.namespace.clone(), pair.secret_name.clone()));
                    create(&cluster.client, pair, token.map(String::as_str)).await
                };
                match created {
                    Ok(true) => {
                        if !args.dry_run {
                            println!("created {state:<8} {}{why}", describe(pair));
                        }
                        match pair.state {
                            KeyPairState::Active => tally.active += 1,
                            KeyPairState::Retired => tally.retired += 1,
                        }
                    }
                    Ok(false) => {
                        println!("exists, kept     {} (created meanwhile)", describe(pair));
                        tally.kept += 1;
                    }
                    Err(e) => {
                        eprintln!("kekeeper: error: {}: {e}", describe(pair));
                        tally.errors += 1;
                    }
                }
            }
            RestoreAction::Kept { namespace, name } => {
                println!("exists, kept     {namespace}/{name}");
                tally.kept += 1;
            }
            RestoreAction::Differs {
                namespace,
                name,
                found,
                expected,
            } => {
                println!(
                    "DIFFERS, kept    {namespace}/{name}: the Secret holds {found}, the file {expected}; \
                     not overwritten"
                );
                tally.differ += 1;
            }
        }
    }
    let verb = if args.dry_run {
        "would be created"
    } else {
        "created"
    };
    eprintln!(
        "{} {verb} ({} active, {} retired), {} kept, {} differ{}",
        tally.active + tally.retired,
        tally.active,
        tally.retired,
        tally.kept,
        tally.differ,
        if tally.errors > 0 {
            format!(", {} failed", tally.errors)
        } else {
            String::new()
        }
    );
    if args.dry_run {
        eprintln!("--dry-run: nothing was created");
    }
    if tally.differ > 0 {
        return Err(Failure::failed(format!(
            "{} Secrets hold another key pair under the name the file gives (DIFFERS above); they \
             were left alone. Compare them with the file before recordings are encrypted to them \
             (kekeeper status NAME; docs/disaster-recovery.md)",
            tally.differ
        )));
    }
    if tally.errors > 0 {
        return Err(Failure::failed(format!(
            "{} key pairs could not be restored (above); run the restore again once fixed: what \
             exists is kept",
            tally.errors
        )));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    active: usize,
    retired: usize,
    kept: usize,
    differ: usize,
    errors: usize,
}

fn describe(pair: &KeyPairSecret) -> String {
    format!(
        "{}/{} (organisation {}, sequence {}, {})",
        pair.namespace,
        pair.secret_name,
        pair.organization_id,
        pair.sequence,
        pair.fingerprint()
    )
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("-f {}: cannot read: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_BACKUP_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("-f {}: cannot read: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_BACKUP_BYTES {
        return Err(format!(
            "-f {}: larger than 64 MiB; split the backup by namespace (kekeeper backup --all -n NS)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The Secrets under the file's names and the configs' labels, and the configs'
/// `status.highestSequences`.
async fn read_cluster(client: &Client, pairs: &[KeyPairSecret]) -> Result<ClusterView, Failure> {
    let mut view = ClusterView::default();
    let configs: BTreeSet<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.namespace.as_str(), p.config_name.as_str()))
        .collect();
    for (namespace, config) in configs {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let selector = keypair::config_selector(config);
        let found = secrets
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| {
                Failure::failed(format!(
                    "cannot list the key pair Secrets ({selector}) in namespace {namespace:?}: {e}"
                ))
            })?;
        for secret in &found.items {
            let name = secret.metadata.name.clone().unwrap_or_default();
            view.secrets
                .insert((namespace.to_owned(), name), read_secret(secret, config));
        }
        let rkcs: Api<RecordingKeyConfig> = Api::namespaced(client.clone(), namespace);
        match rkcs.get_opt(config).await {
            Ok(Some(rkc)) => {
                if let Some(status) = rkc.status {
                    view.highest_sequences.insert(
                        (namespace.to_owned(), config.to_owned()),
                        status.highest_sequences,
                    );
                }
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failure::failed(format!(
                    "cannot read RecordingKeyConfig {namespace}/{config}: {e}"
                )));
            }
        }
    }
    // A Secret under a file's name but without the config's label is still never overwritten.
    for pair in pairs {
        let key = (pair.namespace.clone(), pair.secret_name.clone());
        if view.secrets.contains_key(&key) {
            continue;
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &pair.namespace);
        match secrets.get_opt(&pair.secret_name).await {
            Ok(Some(secret)) => {
                view.secrets
                    .insert(key, read_secret(&secret, &pair.config_name));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failure::failed(format!(
                    "cannot read Secret {}/{}: {e}",
                    pair.namespace, pair.secret_name
                )));
            }
        }
    }
    Ok(view)
}

/// The key pair a Secret holds, its config named `config` when its label says so.
fn read_secret(secret: &Secret, config: &str) -> Result<KeyPairRecord, String> {
    let mut record = KeyPairSecret::from_secret(secret)
        .map_err(|e| e.to_string())?
        .into_record();
    if record.config_name == keypair::config_label(config) {
        record.config_name = config.to_owned();
    }
    Ok(record)
}

/// Creates the Secret; `Ok(false)` when one of that name appeared meanwhile.
async fn create(
    client: &Client,
    pair: &KeyPairSecret,
    rotate_now_token: Option<&str>,
) -> Result<bool, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &pair.namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let secret = secret_of(pair, rotate_now_token).map_err(|e| {
        format!(
            "cannot serialise the metadata.json of Secret {}: {e}",
            pair.secret_name
        )
    })?;
    match secrets.create(&params, &secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(format!(
            "namespace {:?} does not exist; create it first (kubectl create namespace {})",
            pair.namespace, pair.namespace
        )),
        Err(e) => Err(format!("cannot create the Secret: {e}")),
    }
}
