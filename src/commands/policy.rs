//! `kekeeper policy`: the key policy statements that let the operator use the organisation's
//! KMS key, printed as a JSON array to add to the key policy's `Statement` list.
//!
//! Two statements, not one: `DescribeKey` requests carry no encryption context, so under a
//! `kms:EncryptionContext:<key>` condition it would never match and KMS would deny it. The
//! context-bound operations get the condition; `DescribeKey` (metadata only, no key material)
//! is allowed without it.
//!
//! With `--key-store`, also the IAM identity policy the operator's role needs for the key store
//! (docs/disaster-recovery.md): read and write objects under the prefix, list only under it. No
//! s3:DeleteObject: the operator never deletes an object.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::common::{EXIT_BAD_INPUT, EXIT_OK, fail, read_manifests};
use crate::cli::PolicyArgs;
use crate::config;
use crate::crd::DEFAULT_ENCRYPTION_CONTEXT_KEY;
use crate::keystore::KeyStoreUrl;

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

/// The IAM identity policy (for the operator's role, not the bucket) that lets the operator
/// use the key store `url`: `s3:GetObject` and `s3:PutObject` on the objects under its prefix,
/// `s3:ListBucket` on the bucket only for keys under that prefix. `partition` is the
/// principals' (`aws`, `aws-cn`, `aws-us-gov`).
pub fn key_store_policy(url: &KeyStoreUrl, partition: &str) -> Value {
    let bucket = format!("arn:{partition}:s3:::{}", url.bucket);
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "KekeeperKeyStoreObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": format!("{bucket}/{}*", url.prefix)
            },
            {
                "Sid": "KekeeperKeyStoreList",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {
                    "StringLike": { "s3:prefix": format!("{}*", url.prefix) }
                }
            }
        ]
    })
}

/// The partition of the first principal given as an ARN (`aws` for account ids).
fn partition(principals: &[String]) -> &str {
    principals
        .iter()
        .find_map(|p| {
            p.strip_prefix("arn:")
                .and_then(|rest| rest.split(':').next())
        })
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
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
        }
        Err(e) => return fail(1, e),
    }
    let Some(url) = &args.key_store else {
        return ExitCode::from(EXIT_OK);
    };
    // A second JSON document on stdout (`jq -s '.[1]'` picks it); the notes go to stderr.
    match serde_json::to_string_pretty(&key_store_policy(url, partition(&args.principal))) {
        Ok(text) => {
            eprintln!(
                "\n--- Key store {url}: an IAM identity policy for the operator's role (attach it \
                 to the role, not to the bucket or the KMS key):"
            );
            println!();
            println!("{text}");
            eprintln!(
                "No s3:DeleteObject: the operator never deletes from the key store. If the bucket \
                 encrypts with SSE-KMS, the role also needs kms:GenerateDataKey and kms:Decrypt \
                 on the bucket's KMS key. Bucket setup: docs/disaster-recovery.md"
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
            key_store: None,
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

    #[test]
    fn the_key_store_policy_is_bound_to_the_prefix_without_wildcard_actions() {
        let url: KeyStoreUrl = "s3://acme-kekeeper/prod/eu-1".parse().unwrap();
        let policy = key_store_policy(&url, partition(&[ROLE.to_owned()]));
        assert_eq!(
            policy,
            json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Sid": "KekeeperKeyStoreObjects", "Effect": "Allow",
                     "Action": ["s3:GetObject", "s3:PutObject"],
                     "Resource": "arn:aws:s3:::acme-kekeeper/prod/eu-1/*"},
                    {"Sid": "KekeeperKeyStoreList", "Effect": "Allow",
                     "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::acme-kekeeper",
                     "Condition": {"StringLike": {"s3:prefix": "prod/eu-1/*"}}}
                ]
            })
        );
        let text = policy.to_string();
        assert!(
            !text.contains("s3:*") && !text.contains("Delete") && !text.contains("\"*\""),
            "{text}"
        );

        // No prefix: the whole bucket; another partition follows the principal's.
        let url: KeyStoreUrl = "s3://acme-kekeeper".parse().unwrap();
        let gov = ["arn:aws-us-gov:iam::111122223333:role/kekeeper".to_owned()];
        let policy = key_store_policy(&url, partition(&gov));
        assert_eq!(
            policy["Statement"][0]["Resource"],
            "arn:aws-us-gov:s3:::acme-kekeeper/*"
        );
        assert_eq!(
            policy["Statement"][1]["Condition"]["StringLike"]["s3:prefix"],
            "*"
        );
        assert_eq!(partition(&["111122223333".to_owned()]), "aws");
    }
}
