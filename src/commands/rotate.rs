//! `kekeeper rotate NAME... | --all | -l SELECTOR [-A] [--wait [--timeout 5m]]`: "Change key
//! now". Sets the `kekeeper.io/rotate-now` annotation to a fresh token (field manager
//! `kekeeper`); the controller rotates once per distinct token. `--wait` watches each resource
//! until `status.rotateNowToken` is that token and it is Ready for its generation.

use std::process::ExitCode;

use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use super::cluster::{connect, not_found};
use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail};
use crate::cli::RotateArgs;
use crate::crd::{ANNOTATION_ROTATE_NOW, RecordingKeyConfig};

/// The field manager of every write the CLI makes.
pub const FIELD_MANAGER: &str = "kekeeper";

/// A token unique per request: the time to the nanosecond.
pub fn rotate_now_token(now: jiff::Timestamp) -> String {
    now.to_string()
}

pub async fn execute(args: RotateArgs) -> ExitCode {
    let cluster = match connect(&args.kube).await {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let targets = match targets(&args, &cluster.client, &cluster.namespace).await {
        Ok(t) => t,
        Err((code, e)) => return fail(code, e),
    };
    if targets.is_empty() {
        let scope = if args.all_namespaces {
            "any namespace".to_owned()
        } else {
            format!("namespace {:?}", cluster.namespace)
        };
        eprintln!("No RecordingKeyConfigs found in {scope}; nothing to rotate.");
        return ExitCode::from(EXIT_OK);
    }
    let token = rotate_now_token(jiff::Timestamp::now());
    let mut to_wait = Vec::new();
    for rkc in &targets {
        let (namespace, name) = (rkc.namespace().unwrap_or_default(), rkc.name_any());
        let api = Api::<RecordingKeyConfig>::namespaced(cluster.client.clone(), &namespace);
        if let Err(e) = request(&api, &name, &token).await {
            return fail(EXIT_FAILED, format!("{namespace}/{name}: {e}"));
        }
        if rkc.spec.suspend {
            println!(
                "rotate-now requested for {namespace}/{name} (token {token}), but it is \
                 suspended (spec.suspend: true): it rotates once resumed{}",
                if args.wait {
                    "; not waiting for it"
                } else {
                    ""
                }
            );
        } else {
            println!("rotate-now requested for {namespace}/{name} (token {token})");
            to_wait.push((api, namespace, name));
        }
    }
    if !args.wait {
        acknowledged(&to_wait, &token).await;
        return ExitCode::from(EXIT_OK);
    }
    ExitCode::from(wait_all(&to_wait, &token, args.timeout).await)
}

/// How long `rotate` without `--wait` waits for the operator to take the request up.
const ACKNOWLEDGE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Without `--wait`: returns once the operator has taken every request up (status no longer
/// says Ready=True under an older token), so `kekeeper rotate NAME && kubectl wait
/// --for=condition=Ready rkc/NAME` waits for the new pairs. Says so if the operator does not
/// answer in time (not running?), and returns anyway.
async fn acknowledged(resources: &[(Api<RecordingKeyConfig>, String, String)], token: &str) {
    let deadline = Instant::now() + ACKNOWLEDGE_WITHIN;
    let waits = resources.iter().map(|(api, namespace, name)| {
        watch_until(api, namespace, name, deadline, |rkc| {
            unacknowledged(rkc, token)
        })
    });
    for outcome in futures::future::join_all(waits).await {
        if let Err(e) = outcome {
            eprintln!("kekeeper: note: the operator has not taken the request up yet: {e}");
        }
    }
}

/// Why the operator has not yet taken up `token` on `rkc`: status still says Ready=True for a
/// key pair made before the request. None once it is Rotating (or anything but Ready) or the
/// token is honoured.
pub fn unacknowledged(rkc: &RecordingKeyConfig, token: &str) -> Option<String> {
    let status = rkc.status.as_ref()?;
    if status.rotate_now_token.as_deref() == Some(token) {
        return None;
    }
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (ready.status == "True").then(|| "Ready is still True under the previous token".to_owned())
}

/// Waits for every resource at once, under one deadline; prints each outcome.
async fn wait_all(
    resources: &[(Api<RecordingKeyConfig>, String, String)],
    token: &str,
    timeout: jiff::SignedDuration,
) -> u8 {
    let deadline = Instant::now() + timeout.unsigned_abs();
    let waits = resources
        .iter()
        .map(|(api, namespace, name)| wait_honoured(api, namespace, name, token, deadline));
    let mut code = EXIT_OK;
    for outcome in futures::future::join_all(waits).await {
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("kekeeper: error: {e}");
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// The resources named, or matched by --all / -l (in every namespace with -A).
async fn targets(
    args: &RotateArgs,
    client: &Client,
    namespace: &str,
) -> Result<Vec<RecordingKeyConfig>, (u8, String)> {
    let api: Api<RecordingKeyConfig> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    if args.all || args.selector.is_some() {
        let mut params = ListParams::default();
        if let Some(selector) = &args.selector {
            params = params.labels(selector);
        }
        return api
            .list(&params)
            .await
            .map(|list| list.items)
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 400 => (
                    EXIT_BAD_INPUT,
                    format!(
                        "-l {:?}: {}",
                        args.selector.as_deref().unwrap_or_default(),
                        s.message
                    ),
                ),
                e => (EXIT_FAILED, format!("cannot list RecordingKeyConfigs: {e}")),
            });
    }
    let mut found = Vec::new();
    for name in &args.names {
        match api.get_opt(name).await {
            Ok(Some(rkc)) => found.push(rkc),
            Ok(None) => {
                return Err((
                    EXIT_BAD_INPUT,
                    not_found("recordingkeyconfig", name, namespace),
                ));
            }
            Err(e) => return Err((EXIT_FAILED, format!("cannot read {namespace}/{name}: {e}"))),
        }
    }
    Ok(found)
}

async fn request(
    api: &Api<RecordingKeyConfig>,
    name: &str,
    token: &str,
) -> Result<(), kube::Error> {
    let patch = json!({ "metadata": { "annotations": { ANNOTATION_ROTATE_NOW: token } } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Why `rkc` is not yet done with `token`, or None when it is: the token honoured in status
/// and Ready=True for the current generation.
pub fn pending(rkc: &RecordingKeyConfig, token: &str) -> Option<String> {
    let status = rkc.status.as_ref();
    let honoured = status.and_then(|s| s.rotate_now_token.as_deref());
    if honoured != Some(token) {
        return Some(format!(
            "status.rotateNowToken is {}",
            honoured.map_or("unset".to_owned(), |t| format!("{t:?}"))
        ));
    }
    let generation = rkc.metadata.generation;
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        None => Some("no Ready condition yet".to_owned()),
        Some(c) if c.observed_generation != generation => Some(format!(
            "Ready is for generation {}, the resource is at {}",
            c.observed_generation.unwrap_or_default(),
            generation.unwrap_or_default()
        )),
        Some(c) if c.status != "True" => Some(format!(
            "Ready is {} ({}: {})",
            c.status, c.reason, c.message
        )),
        Some(_) => None,
    }
}

/// Watches one resource until [`pending`] says it is done, or the deadline.
async fn wait_honoured(
    api: &Api<RecordingKeyConfig>,
    namespace: &str,
    name: &str,
    token: &str,
    deadline: Instant,
) -> Result<String, String> {
    watch_until(api, namespace, name, deadline, |rkc| pending(rkc, token))
        .await
        .map_err(|e| {
            e.replace(
                "not before the deadline",
                "not honoured before the --timeout",
            )
        })?;
    Ok(format!(
        "{namespace}/{name} rotated and Ready (token {token})"
    ))
}

/// Watches one resource until `why_not` has no objection, or the deadline.
pub(super) async fn watch_until(
    api: &Api<RecordingKeyConfig>,
    namespace: &str,
    name: &str,
    deadline: Instant,
    why_not: impl Fn(&RecordingKeyConfig) -> Option<String>,
) -> Result<(), String> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut objects = std::pin::pin!(watcher(api.clone(), config).applied_objects());
    let mut last = "not seen yet".to_owned();
    loop {
        let next = match tokio::time::timeout_at(deadline, objects.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Err(format!(
                    "{namespace}/{name}: not before the deadline: {last}"
                ));
            }
        };
        match next {
            Some(Ok(rkc)) => match why_not(&rkc) {
                None => return Ok(()),
                // Each new reason once, as `kubectl rollout status` reports progress.
                Some(why) if why != last => {
                    eprintln!("kekeeper: waiting for {namespace}/{name}: {why}");
                    last = why;
                }
                Some(_) => {}
            },
            // The watcher retries by itself; keep the reason for the timeout message.
            Some(Err(e)) => last = format!("watch failed: {e}"),
            None => return Err(format!("{namespace}/{name}: the watch ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RecordingKeyConfigStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn rkc(generation: i64, token: Option<&str>, ready: (&str, i64)) -> RecordingKeyConfig {
        let spec = serde_json::from_value(json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.metadata.generation = Some(generation);
        rkc.status = Some(RecordingKeyConfigStatus {
            rotate_now_token: token.map(str::to_owned),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.0.into(),
                reason: "KeyPairsActive".into(),
                message: String::new(),
                observed_generation: Some(ready.1),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            ..RecordingKeyConfigStatus::default()
        });
        rkc
    }

    #[test]
    fn done_only_when_the_token_is_honoured_and_ready_for_this_generation() {
        assert_eq!(pending(&rkc(2, Some("t1"), ("True", 2)), "t1"), None);
        let cases = [
            (rkc(2, Some("t0"), ("True", 2)), "rotateNowToken is \"t0\""),
            (rkc(2, None, ("True", 2)), "rotateNowToken is unset"),
            (rkc(3, Some("t1"), ("True", 2)), "generation 2"),
            (rkc(2, Some("t1"), ("False", 2)), "Ready is False"),
        ];
        for (rkc, why) in cases {
            let reason = pending(&rkc, "t1").expect(why);
            assert!(reason.contains(why), "{reason}");
        }
    }
}
