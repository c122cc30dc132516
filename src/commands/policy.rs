//! `kekeeper policy`: the key policy statements that let the operator use the organisation's
//! KMS key, printed as a JSON array to add to the key policy's `Statement` list.
//!
//! Two statements, not one: `DescribeKey` requests carry no encryption context, so under a
//! `kms:EncryptionContext:<key>` condition it would never match and KMS would deny it. The
//! context-bound operations get the condition; `DescribeKey` (metadata only, no key material)
//! is allowed without it.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::common::{EXIT_BAD_INPUT, EXIT_OK, fail, read_manifests};
use crate::cli::PolicyArgs;
use crate::config;
use crate::crd::DEFAULT_ENCRYPTION_CONTEXT_KEY;

/// The statements for `principals`, allowing only requests whose encryption context names
/// one of `organization_ids` under `context_key`.
pub fn statements(principals: &[String], organization_ids: &[String], context_key: &str) -> Value {
    // One principal as a string, as AWS prints it; several as a list.
    let principal = match principals {
        [one] => json!(one),
        many => json!(many),
    };
    json!([
        {
            "Sid": "KekeeperRecordingKeyPairs",
            "Effect": "Allow",
            "Principal": { "AWS": principal },
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    format!("kms:EncryptionContext:{context_key}"): organization_ids
                }
            }
        },
        {
            "Sid": "KekeeperDescribeKey",
            "Effect": "Allow",
            "Principal": { "AWS": principal },
            "Action": "kms:DescribeKey",
            "Resource": "*"
        }
    ])
}

fn check_principal(principal: &str) -> Result<(), String> {
    let is_account = principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit());
    let is_iam_arn = principal.starts_with("arn:")
        && principal.split(':').nth(2) == Some("iam")
        && principal.split(':').count() == 6;
    if is_account || is_iam_arn {
        Ok(())
    } else {
        Err(format!(
            "--principal {principal:?} is not an IAM principal ARN (e.g. arn:aws:iam::111122223333:role/kekeeper) or account id"
        ))
    }
}

fn check_context_key(key: &str, source: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err(format!("{source} must not be empty"));
    }
    if key.starts_with("aws:") {
        return Err(format!(
            "{source} {key:?} starts with \"aws:\", which KMS reserves; the RecordingKeyConfig CRD refuses it too"
        ));
    }
    Ok(())
}

/// The organisation ids (deduplicated, in order) and the context key to print.
fn gather(args: &PolicyArgs) -> Result<(Vec<String>, String), String> {
    for principal in &args.principal {
        check_principal(principal)?;
    }
    let mut ids: Vec<String> = Vec::new();
    let mut add = |id: &String| {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    };
    let mut manifest_key: Option<String> = None;
    if let Some(path) = &args.file {
        for manifest in read_manifests(path)? {
            let config = config::validate(&manifest.spec, None)
                .map_err(|e| format!("{}: {e}", manifest.qualified_name()))?;
            match &manifest_key {
                Some(key) if *key != config.encryption_context_key => {
                    return Err(format!(
                        "the manifests use different encryptionContextKeys ({key:?} and {:?}); print a policy for each",
                        config.encryption_context_key
                    ));
                }
                _ => manifest_key = Some(config.encryption_context_key.clone()),
            }
            config.organization_ids.iter().for_each(&mut add);
        }
    }
    for id in &args.org_ids {
        if id.trim().is_empty() {
            return Err("--org-id must not be empty".to_owned());
        }
        add(id);
    }
    let key = match (&args.context_key, manifest_key) {
        (Some(flag), Some(manifest)) if *flag != manifest => {
            return Err(format!(
                "--context-key {flag:?} differs from the manifests' encryptionContextKey {manifest:?}"
            ));
        }
        (Some(flag), _) => flag.clone(),
        (None, Some(manifest)) => manifest,
        (None, None) => DEFAULT_ENCRYPTION_CONTEXT_KEY.to_owned(),
    };
    check_context_key(&key, "--context-key")?;
    Ok((ids, key))
}

pub async fn execute(args: PolicyArgs) -> ExitCode {
    let (ids, key) = match gather(&args) {
        Ok(gathered) => gathered,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let policy = statements(&args.principal, &ids, &key);
    match serde_json::to_string_pretty(&policy) {
        Ok(text) => {
            println!("{text}");
            eprintln!(
                "Add these two statements to the Statement list of the KMS key's policy \
                 (keep the existing statements, in particular the account root's)."
            );
            ExitCode::from(EXIT_OK)
        }
        Err(e) => fail(1, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::111122223333:role/kekeeper";

    #[test]
    fn the_condition_binds_the_context_and_describe_key_is_unconditioned() {
        let ids = vec!["org-1".to_owned(), "org-2".to_owned()];
        let policy = statements(&[ROLE.to_owned()], &ids, "genesys-cloud-organization-id");
        let statements = policy.as_array().unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0]["Principal"]["AWS"], ROLE);
        assert_eq!(
            statements[0]["Condition"]["StringEquals"]["kms:EncryptionContext:genesys-cloud-organization-id"],
            json!(["org-1", "org-2"])
        );
        assert_eq!(
            statements[0]["Action"],
            json!(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"])
        );
        assert_eq!(statements[1]["Action"], "kms:DescribeKey");
        assert!(statements[1].get("Condition").is_none());
    }

    #[test]
    fn several_principals_are_a_list() {
        let principals = [ROLE.to_owned(), "arn:aws:iam::765628985471:root".to_owned()];
        let policy = statements(&principals, &["o".to_owned()], "k");
        for statement in policy.as_array().unwrap() {
            assert_eq!(statement["Principal"]["AWS"], json!(principals));
        }
    }

    fn args(principals: &[&str], ids: &[&str], key: Option<&str>) -> PolicyArgs {
        PolicyArgs {
            principal: principals.iter().map(|s| s.to_string()).collect(),
            org_ids: ids.iter().map(|s| s.to_string()).collect(),
            file: None,
            context_key: key.map(str::to_owned),
        }
    }

    #[test]
    fn principals_ids_and_context_keys_are_checked() {
        let (ids, key) = gather(&args(&[ROLE], &["a", "a", "b"], None)).unwrap();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(key, DEFAULT_ENCRYPTION_CONTEXT_KEY);
        assert!(gather(&args(&["111122223333", ROLE], &["a"], Some("k"))).is_ok());
        assert!(gather(&args(&[ROLE, "kekeeper"], &["a"], None)).is_err());
        assert!(gather(&args(&[ROLE], &[""], None)).is_err());
        let err = gather(&args(&[ROLE], &["a"], Some("aws:tenant"))).unwrap_err();
        assert!(err.contains("KMS reserves"), "{err}");
    }
}
