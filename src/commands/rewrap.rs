//! `kekeeper rewrap NAME [-n NS] [--wait [--timeout 10m]]`: asks the operator to rewrap every
//! retained key pair of a RecordingKeyConfig onto the KMS key its alias resolves to now
//! (docs/design.md, "Rewrap"), also under `spec.rewrap: Never`. Sets the
//! `kekeeper.io/rewrap-now` annotation to a fresh token (field manager `kekeeper`); `--wait`
//! watches the resource until `status.rewrapNowToken` is that token and no key pair depends
//! only on an older key, then prints `status.kmsKeys`.

use std::process::ExitCode;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use super::cluster::{connect, not_found};
use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail};
use super::rotate::{FIELD_MANAGER, rotate_now_token, watch_until};
use crate::cli::RewrapArgs;
use crate::crd::{ANNOTATION_REWRAP_NOW, RecordingKeyConfig};

/// The condition the operator reports the rewrap with.
const REWRAPPED: &str = "Rewrapped";

pub async fn execute(args: RewrapArgs) -> ExitCode {
    let cluster = match connect(&args.kube).await {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let namespace = cluster.namespace;
    let name = &args.name;
    let api: Api<RecordingKeyConfig> = Api::namespaced(cluster.client, &namespace);
    match api.get_opt(name).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return fail(
                EXIT_BAD_INPUT,
                not_found("recordingkeyconfig", name, &namespace),
            );
        }
        Err(e) => return fail(EXIT_FAILED, format!("cannot read {namespace}/{name}: {e}")),
    }
    let token = rotate_now_token(jiff::Timestamp::now());
    let patch = json!({ "metadata": { "annotations": { ANNOTATION_REWRAP_NOW: token } } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    if let Err(e) = api.patch(name, &params, &Patch::Merge(&patch)).await {
        return fail(EXIT_FAILED, format!("{namespace}/{name}: {e}"));
    }
    println!("rewrap requested for {namespace}/{name} (token {token})");
    if !args.wait {
        return ExitCode::from(EXIT_OK);
    }
    let deadline = Instant::now() + args.timeout.unsigned_abs();
    if let Err(e) = watch_until(&api, &namespace, name, deadline, |rkc| pending(rkc, &token)).await
    {
        return fail(
            EXIT_FAILED,
            e.replace("not before the deadline", "not done before the --timeout"),
        );
    }
    match api.get(name).await {
        Ok(rkc) => {
            println!("{namespace}/{name} rewrapped (token {token})");
            print!("{}", key_counts(&rkc));
            ExitCode::from(EXIT_OK)
        }
        Err(e) => fail(EXIT_FAILED, format!("cannot read {namespace}/{name}: {e}")),
    }
}

/// Why `rkc` is not yet done with `token`, or None when it is: the token honoured in status and
/// the Rewrapped condition True.
pub fn pending(rkc: &RecordingKeyConfig, token: &str) -> Option<String> {
    let status = rkc.status.as_ref();
    let rewrapped = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == REWRAPPED));
    let honoured = status.and_then(|s| s.rewrap_now_token.as_deref());
    if honoured != Some(token) {
        return Some(match rewrapped {
            Some(c) => format!("{}: {}", c.reason, c.message),
            None => format!(
                "status.rewrapNowToken is {}",
                honoured.map_or("unset".to_owned(), |t| format!("{t:?}"))
            ),
        });
    }
    match rewrapped {
        // Honoured with nothing retained: nothing to wait for.
        None => None,
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("{}: {}", c.reason, c.message)),
    }
}

/// `status.kmsKeys`, one line per KMS key.
pub fn key_counts(rkc: &RecordingKeyConfig) -> String {
    let keys = rkc.status.as_ref().map_or(&[][..], |s| &s.kms_keys[..]);
    let current = rkc.status.as_ref().and_then(|s| s.kms_key_arn.as_deref());
    keys.iter()
        .map(|k| {
            let note = if Some(k.kms_key_arn.as_str()) == current {
                " (current)"
            } else {
                ""
            };
            format!("  {}: {} key pairs{note}\n", k.kms_key_arn, k.key_pairs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::{KmsKeyUse, RecordingKeyConfigStatus};

    fn rkc(token: Option<&str>, rewrapped: Option<(&str, &str)>) -> RecordingKeyConfig {
        let spec = serde_json::from_value(json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.status = Some(RecordingKeyConfigStatus {
            rewrap_now_token: token.map(str::to_owned),
            kms_key_arn: Some("arn:aws:kms:us-east-1:111122223333:key/b".into()),
            kms_keys: vec![KmsKeyUse {
                kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/b".into(),
                key_pairs: 9,
            }],
            conditions: rewrapped
                .map(|(status, reason)| Condition {
                    type_: REWRAPPED.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message: "3/9 retained key pairs rewrapped".into(),
                    observed_generation: Some(1),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                })
                .into_iter()
                .collect(),
            ..RecordingKeyConfigStatus::default()
        });
        rkc
    }

    #[test]
    fn done_only_when_the_token_is_honoured_and_nothing_is_pending() {
        assert_eq!(
            pending(&rkc(Some("t1"), Some(("True", "Rewrapped"))), "t1"),
            None
        );
        assert_eq!(pending(&rkc(Some("t1"), None), "t1"), None);
        let progress = pending(&rkc(None, Some(("False", "RewrapPending"))), "t1").unwrap();
        assert!(progress.contains("3/9"), "{progress}");
        let old = pending(&rkc(Some("t0"), None), "t1").unwrap();
        assert!(old.contains("\"t0\""), "{old}");
        assert_eq!(
            key_counts(&rkc(None, None)),
            "  arn:aws:kms:us-east-1:111122223333:key/b: 9 key pairs (current)\n"
        );
    }
}
