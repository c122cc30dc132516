//! `kekeeper rotate NAME [-n NS]`: "Change key now". Sets the `kekeeper.io/rotate-now`
//! annotation to a fresh token; the controller rotates once per distinct token.

use std::process::ExitCode;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::cli::RotateArgs;
use crate::crd::{ANNOTATION_ROTATE_NOW, RecordingKeyConfig};

pub async fn execute(args: RotateArgs) -> ExitCode {
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: no Kubernetes configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let api: Api<RecordingKeyConfig> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    let token = rotate_now_token(jiff::Timestamp::now());
    let patch = json!({ "metadata": { "annotations": { ANNOTATION_ROTATE_NOW: token } } });
    match api
        .patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            eprintln!("error: RecordingKeyConfig {} not found", args.name);
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A token unique per request: the time to the nanosecond.
pub fn rotate_now_token(now: jiff::Timestamp) -> String {
    now.to_string()
}
