//! `kekeeper policy`: the key policy statements that let the operator use the organisation's
//! KMS key, printed as a JSON array to add to the key policy's `Statement` list.
//!
//! Two statements, not one: `DescribeKey` requests carry no encryption context, so under a
//! `kms:EncryptionContext:<key>` condition it would never match and KMS would deny it. The
//! context-bound operations get the condition; `DescribeKey` (metadata only, no key material)
//! is allowed without it.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::common::{EXIT_BAD_INPUT, EXIT_OK, fail};
use crate::cli::PolicyArgs;

/// The statements for `principal`, allowing only requests whose encryption context names one
/// of `organization_ids` under `context_key`.
pub fn statements(principal: &str, organization_ids: &[String], context_key: &str) -> Value {
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

fn check(args: &PolicyArgs) -> Result<Vec<String>, String> {
    let principal = args.principal.as_str();
    let is_account = principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit());
    let is_iam_arn = principal.starts_with("arn:")
        && principal.split(':').nth(2) == Some("iam")
        && principal.split(':').count() == 6;
    if !(is_account || is_iam_arn) {
        return Err(format!(
            "--principal {principal:?} is not an IAM principal ARN (e.g. arn:aws:iam::111122223333:role/kekeeper)"
        ));
    }
    if args.context_key.trim().is_empty() {
        return Err("--context-key must not be empty".to_owned());
    }
    let mut ids: Vec<String> = Vec::new();
    for id in &args.org_ids {
        if id.trim().is_empty() {
            return Err("--org-id must not be empty".to_owned());
        }
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    Ok(ids)
}

pub async fn execute(args: PolicyArgs) -> ExitCode {
    let ids = match check(&args) {
        Ok(ids) => ids,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let policy = statements(&args.principal, &ids, &args.context_key);
    match serde_json::to_string_pretty(&policy) {
        Ok(text) => {
            println!("{text}");
            eprintln!(
                "Add these statements to the Statement list of the KMS key's policy \
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

    #[test]
    fn the_condition_binds_the_context_and_describe_key_is_unconditioned() {
        let ids = vec!["org-1".to_owned(), "org-2".to_owned()];
        let policy = statements(
            "arn:aws:iam::111122223333:role/kekeeper",
            &ids,
            "genesys-cloud-organization-id",
        );
        let statements = policy.as_array().unwrap();
        assert_eq!(statements.len(), 2);
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
    fn principals_and_ids_are_checked() {
        let args = |principal: &str, ids: &[&str]| PolicyArgs {
            principal: principal.into(),
            org_ids: ids.iter().map(|s| s.to_string()).collect(),
            context_key: "k".into(),
        };
        assert_eq!(
            check(&args(
                "arn:aws:iam::111122223333:role/kekeeper",
                &["a", "a", "b"]
            ))
            .unwrap(),
            ["a", "b"]
        );
        assert!(check(&args("111122223333", &["a"])).is_ok());
        assert!(check(&args("kekeeper", &["a"])).is_err());
        assert!(check(&args("arn:aws:iam::111122223333:role/kekeeper", &[""])).is_err());
    }
}
