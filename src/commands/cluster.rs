//! The cluster connection of `status`, `rotate` and `decrypt`, chosen as kubectl chooses it:
//! `--kubeconfig`, else `$KUBECONFIG` (several paths merged), else `~/.kube/config`, else the
//! in-cluster service account; `--context` picks the context; the namespace is `-n`, else the
//! context's, else `default`.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::KubeArgs;

pub(super) struct Cluster {
    pub client: Client,
    pub namespace: String,
}

pub(super) async fn connect(args: &KubeArgs) -> Result<Cluster, String> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read --kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("--context {context}: {e}"))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration (kubeconfig or in-cluster): {e}"))?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(crate::user_agent::kube_config(config))
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    Ok(Cluster { client, namespace })
}

/// kubectl's not-found wording, with the namespace.
pub(super) fn not_found(kind: &str, name: &str, namespace: &str) -> String {
    format!("{kind} {name:?} not found in namespace {namespace:?}")
}
