//! `kekeeper policy`: the key policy statements that let the operator use the organisation's
//! KMS key, printed as a JSON array to add to the key policy's `Statement` list, and with
//! `--identity-policy` / `--key-store` the IAM identity policy of the operator's role as a
//! second JSON document (docs/design.md, "Least privilege in KMS").
//!
//! The operator gets only what it calls (src/kms/sdk.rs): `GenerateDataKeyPairWithoutPlaintext`,
//! `Decrypt` and `ReEncryptFrom`/`ReEncryptTo` (the rewrap), bound to the organisations'
//! encryption context, and `DescribeKey`. Never `Encrypt` or `GenerateDataKey*`: with those a principal can make a ciphertext blob of a
//! private key it chose, under the organisation's context, which is all a forged "genuine" key
//! pair needs. Principals that encrypt with the key themselves (Genesys Cloud's account) get
//! them in a statement of their own (`--seed-principal`).
//!
//! `DescribeKey` is a statement without the context condition: its requests carry no
//! encryption context, so under a `kms:EncryptionContext:<key>` condition it would never match
//! and KMS would deny it. It returns metadata only, no key material.
//!
//! With `--key-store`, the identity policy also holds the key store's statements
//! (docs/disaster-recovery.md): read and write objects under the prefix, list only under it. No
//! s3:DeleteObject: the operator never deletes an object.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::common::{EXIT_BAD_INPUT, EXIT_OK, fail, read_manifests};
use crate::arn::AliasArn;
use crate::cli::PolicyArgs;
use crate::config;
use crate::crd::DEFAULT_ENCRYPTION_CONTEXT_KEY;
use crate::keystore::KeyStoreUrl;
use crate::kms::{is_multi_region_key, replica_arn};

/// What the operator calls on the organisation's key (src/kms/sdk.rs), besides DescribeKey.
/// ReEncryptFrom on an old key and ReEncryptTo on the current one move a retained pair's blob
/// onto a new key (docs/design.md, "Rewrap"), under the same context condition; neither makes
/// a blob of a plaintext the caller chose.
pub const OPERATOR_ACTIONS: [&str; 4] = [
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
];
/// What a principal that encrypts with the key itself needs; never the operator's.
pub const SEED_ACTIONS: [&str; 3] = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"];

/// Genesys Cloud's AWS account, which encrypts with the organisation's key (docs/installation.md,
/// "The Genesys Cloud case").
const GENESYS_CLOUD_ACCOUNT: &str = "765628985471";

/// One principal as a string, as AWS prints it; several as a list.
fn principal_value(principals: &[String]) -> Value {
    match principals {
        [one] => json!(one),
        many => json!(many),
    }
}

/// The key policy statements: the operator's (`operators`) context-bound key-pair operations,
/// the seed principals' context-bound Encrypt/Decrypt/GenerateDataKey* (only when there are
/// any), and DescribeKey for all of them. Requests are allowed only when their encryption
/// context names one of `organization_ids` under `context_key`; the operator's also only when
/// that is their only context key.
pub fn statements(
    operators: &[String],
    seeds: &[String],
    organization_ids: &[String],
    context_key: &str,
) -> Value {
    let context = format!("kms:EncryptionContext:{context_key}");
    let mut statements = Vec::new();
    if !operators.is_empty() {
        statements.push(json!({
            "Sid": "KekeeperOperatorKeyPairs",
            "Effect": "Allow",
            "Principal": { "AWS": principal_value(operators) },
            "Action": OPERATOR_ACTIONS,
            "Resource": "*",
            "Condition": {
                "StringEquals": { context.clone(): organization_ids },
                "ForAllValues:StringEquals": { "kms:EncryptionContextKeys": [context_key] }
            }
        }));
    }
    if !seeds.is_empty() {
        statements.push(json!({
            "Sid": "KekeeperSeedEncryption",
            "Effect": "Allow",
            "Principal": { "AWS": principal_value(seeds) },
            "Action": SEED_ACTIONS,
            "Resource": "*",
            "Condition": { "StringEquals": { context: organization_ids } }
        }));
    }
    let everyone: Vec<String> = operators.iter().chain(seeds).cloned().collect();
    statements.push(json!({
        "Sid": "KekeeperDescribeKey",
        "Effect": "Allow",
        "Principal": { "AWS": principal_value(&everyone) },
        "Action": "kms:DescribeKey",
        "Resource": "*"
    }));
    Value::Array(statements)
}

/// The KMS keys the operator's identity policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// The keys the aliases name now, whichever those are: per account and Region,
    /// `key/*` with `kms:ResourceAliases` naming the aliases. Follows an alias that is moved
    /// to a new key; allows no key without one of these aliases.
    Aliases(Vec<AliasArn>),
    /// Exactly these key ARNs.
    Keys(Vec<String>),
}

/// The operator role's KMS statements for its identity policy: the key-pair operations and
/// DescribeKey on the `scope`'s keys only, so a blob under a key in another account (one an
/// attacker owns, whose key policy lets the role in) cannot be decrypted by the operator.
pub fn kms_identity_statements(scope: &KeyScope) -> Vec<Value> {
    let mut actions: Vec<&str> = OPERATOR_ACTIONS.to_vec();
    actions.push("kms:DescribeKey");
    match scope {
        KeyScope::Keys(arns) => vec![json!({
            "Sid": "KekeeperKmsKeys",
            "Effect": "Allow",
            "Action": actions,
            "Resource": arns
        })],
        KeyScope::Aliases(aliases) => {
            // One statement per account and Region: an alias name means something only there.
            let mut groups: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
            for alias in aliases {
                let names = groups
                    .entry((
                        alias.partition().to_owned(),
                        alias.region().to_owned(),
                        alias.account().to_owned(),
                    ))
                    .or_default();
                let name = format!("alias/{}", alias.alias_name());
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let many = groups.len() > 1;
            groups
                .into_iter()
                .enumerate()
                .map(|(index, ((partition, region, account), names))| {
                    let sid = if many {
                        format!("KekeeperKmsKeys{}", index + 1)
                    } else {
                        "KekeeperKmsKeys".to_owned()
                    };
                    json!({
                        "Sid": sid,
                        "Effect": "Allow",
                        "Action": actions,
                        "Resource": format!("arn:{partition}:kms:{region}:{account}:key/*"),
                        "Condition": {
                            "ForAnyValue:StringEquals": { "kms:ResourceAliases": names }
                        }
                    })
                })
                .collect()
        }
    }
}

/// The operator role's statement for reads through multi-Region replicas (docs/installation.md,
/// "Multi-Region keys: the replicas' policies"): `kms:Decrypt` only, on the replica Regions'
/// multi-Region keys. An alias is Regional, so a replica carries none unless one is created
/// there: per account and replica Region `key/mrk-*` (the key policy's encryption-context
/// condition still binds each Decrypt), or, for `--key-arn` keys, exactly their replicas.
pub fn kms_replica_statement(
    scope: &KeyScope,
    replicas: &[(AliasArn, Vec<String>)],
) -> Option<Value> {
    let mut resources: Vec<String> = Vec::new();
    for (alias, regions) in replicas {
        for region in regions {
            let resource = match scope {
                KeyScope::Aliases(_) => vec![format!(
                    "arn:{}:kms:{region}:{}:key/mrk-*",
                    alias.partition(),
                    alias.account()
                )],
                KeyScope::Keys(arns) => arns
                    .iter()
                    .filter(|arn| is_multi_region_key(arn))
                    .map(|arn| replica_arn(arn, region))
                    .collect(),
            };
            resources.extend(resource);
        }
    }
    resources.sort();
    resources.dedup();
    (!resources.is_empty()).then(|| {
        json!({
            "Sid": "KekeeperKmsReplicaReads",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": resources
        })
    })
}

/// The key store's statements for the operator role's identity policy: `s3:GetObject` and
/// `s3:PutObject` on the objects under its prefix, `s3:ListBucket` on the bucket only for keys
/// under that prefix. `partition` is the principals' (`aws`, `aws-cn`, `aws-us-gov`).
pub fn key_store_statements(url: &KeyStoreUrl, partition: &str) -> Vec<Value> {
    let bucket = format!("arn:{partition}:s3:::{}", url.bucket);
    vec![
        json!({
            "Sid": "KekeeperKeyStoreObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": format!("{bucket}/{}*", url.prefix)
        }),
        json!({
            "Sid": "KekeeperKeyStoreList",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
            "Condition": {
                "StringLike": { "s3:prefix": format!("{}*", url.prefix) }
            }
        }),
    ]
}

/// The IAM identity policy document of the operator's role.
pub fn identity_policy(statements: Vec<Value>) -> Value {
    json!({ "Version": "2012-10-17", "Statement": statements })
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

fn check_principal(principal: &str, flag: &str) -> Result<(), String> {
    let is_account = principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit());
    let is_iam_arn = principal.starts_with("arn:")
        && principal.split(':').nth(2) == Some("iam")
        && principal.split(':').count() == 6;
    if is_account || is_iam_arn {
        Ok(())
    } else {
        Err(format!(
            "{flag} {principal:?} is not an IAM principal ARN (e.g. arn:aws:iam::111122223333:role/kekeeper) or account id"
        ))
    }
}

/// The account id of a principal (an ARN's fifth field, or the id itself).
fn account_of(principal: &str) -> &str {
    if principal.starts_with("arn:") {
        principal.split(':').nth(4).unwrap_or_default()
    } else {
        principal
    }
}

fn check_key_arn(arn: &str) -> Result<(), String> {
    let fields: Vec<&str> = arn.split(':').collect();
    let resource_ok = fields
        .get(5)
        .and_then(|r| r.strip_prefix("key/"))
        .is_some_and(|id| !id.is_empty() && id != "*");
    if fields.len() == 6 && fields[0] == "arn" && fields[2] == "kms" && resource_ok {
        Ok(())
    } else {
        Err(format!(
            "--key-arn {arn:?} is not a KMS key ARN (e.g. arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab; `aws kms describe-key --key-id ALIAS_ARN` prints it)"
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

/// What `kekeeper policy` prints, gathered from the flags and manifests.
#[derive(Debug)]
struct Gathered {
    ids: Vec<String>,
    context_key: String,
    /// The manifests' alias ARNs, deduplicated, in order.
    aliases: Vec<AliasArn>,
    /// Each manifest's alias and its `spec.kmsReplicaRegions`, when it lists any.
    replicas: Vec<(AliasArn, Vec<String>)>,
}

/// The organisation ids (deduplicated, in order), the context key and the aliases to print.
fn gather(args: &PolicyArgs) -> Result<Gathered, String> {
    for principal in &args.principal {
        check_principal(principal, "--principal")?;
        if account_of(principal) == GENESYS_CLOUD_ACCOUNT {
            return Err(format!(
                "--principal {principal:?} is Genesys Cloud's account, which encrypts with the key itself: pass it as --seed-principal (--principal is the operator's role, which gets no kms:Encrypt)"
            ));
        }
        if args.seed_principal.contains(principal) {
            return Err(format!(
                "{principal:?} is both --principal and --seed-principal: the operator's role must not hold kms:Encrypt or kms:GenerateDataKey* (they let it forge a key pair's blob); docs/installation.md"
            ));
        }
    }
    for principal in &args.seed_principal {
        check_principal(principal, "--seed-principal")?;
    }
    for arn in &args.key_arn {
        check_key_arn(arn)?;
    }
    let mut ids: Vec<String> = Vec::new();
    let mut add = |id: &String| {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    };
    let mut aliases: Vec<AliasArn> = Vec::new();
    let mut replicas: Vec<(AliasArn, Vec<String>)> = Vec::new();
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
            if !aliases.contains(&config.alias) {
                aliases.push(config.alias.clone());
            }
            if !config.replica_regions.is_empty() {
                replicas.push((config.alias.clone(), config.replica_regions.clone()));
            }
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
    if args.identity_policy {
        if args.principal.is_empty() {
            return Err(
                "--identity-policy is the operator's role's policy: give the role with --principal"
                    .to_owned(),
            );
        }
        if args.key_arn.is_empty() && aliases.is_empty() {
            return Err(
                "--identity-policy needs the KMS keys: RecordingKeyConfig manifests (-f, their kmsKeyAliasArn) or --key-arn ARN"
                    .to_owned(),
            );
        }
    }
    Ok(Gathered {
        ids,
        context_key: key,
        aliases,
        replicas,
    })
}

/// The operator role's identity policy, when asked for (`--identity-policy`, `--key-store`).
fn role_policy(args: &PolicyArgs, gathered: &Gathered) -> Option<Value> {
    let mut statements = Vec::new();
    if args.identity_policy {
        let scope = if args.key_arn.is_empty() {
            KeyScope::Aliases(gathered.aliases.clone())
        } else {
            KeyScope::Keys(args.key_arn.clone())
        };
        statements.extend(kms_identity_statements(&scope));
        statements.extend(kms_replica_statement(&scope, &gathered.replicas));
    }
    if let Some(url) = &args.key_store {
        let principals: Vec<String> = args
            .principal
            .iter()
            .chain(&args.seed_principal)
            .cloned()
            .collect();
        statements.extend(key_store_statements(url, partition(&principals)));
    }
    (!statements.is_empty()).then(|| identity_policy(statements))
}

pub async fn execute(args: PolicyArgs) -> ExitCode {
    let gathered = match gather(&args) {
        Ok(gathered) => gathered,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let policy = statements(
        &args.principal,
        &args.seed_principal,
        &gathered.ids,
        &gathered.context_key,
    );
    match serde_json::to_string_pretty(&policy) {
        Ok(text) => {
            println!("{text}");
            eprintln!(
                "Add these statements to the Statement list of the KMS key's policy \
                 (keep the existing statements, in particular the account root's)."
            );
        }
        Err(e) => return fail(1, e),
    }
    let Some(role) = role_policy(&args, &gathered) else {
        return ExitCode::from(EXIT_OK);
    };
    // A second JSON document on stdout (`jq -s '.[1]'` picks it); the notes go to stderr.
    match serde_json::to_string_pretty(&role) {
        Ok(text) => {
            let what = match (args.identity_policy, &args.key_store) {
                (true, Some(url)) => format!("KMS keys and key store {url}"),
                (true, None) => "KMS keys".to_owned(),
                (false, Some(url)) => format!("Key store {url}"),
                (false, None) => String::new(),
            };
            eprintln!(
                "\n--- {what}: an IAM identity policy for the operator's role (attach it \
                 to the role, not to the bucket or the KMS key):"
            );
            println!();
            println!("{text}");
            if args.identity_policy && args.key_arn.is_empty() {
                eprintln!(
                    "The KMS statements allow the keys these aliases name (kms:ResourceAliases), \
                     whichever key an alias is moved to; --key-arn pins exact keys instead."
                );
            }
            if args.key_store.is_some() {
                eprintln!(
                    "No s3:DeleteObject: the operator never deletes from the key store. If the \
                     bucket encrypts with SSE-KMS, the role also needs kms:GenerateDataKey and \
                     kms:Decrypt on the bucket's KMS key. The bucket must be in the operator's \
                     Region. Bucket setup: docs/disaster-recovery.md"
                );
            }
            ExitCode::from(EXIT_OK)
        }
        Err(e) => fail(1, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::111122223333:role/kekeeper";
    const GENESYS: &str = "arn:aws:iam::765628985471:root";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    /// The identity policy for the key store alone (what `--key-store` prints by itself).
    fn key_store_policy(url: &KeyStoreUrl, partition: &str) -> Value {
        identity_policy(key_store_statements(url, partition))
    }

    #[test]
    fn the_operator_gets_only_what_it_calls_bound_to_the_context() {
        let ids = vec!["org-1".to_owned(), "org-2".to_owned()];
        let policy = statements(
            &[ROLE.to_owned()],
            &[],
            &ids,
            "genesys-cloud-organization-id",
        );
        let statements = policy.as_array().unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0]["Principal"]["AWS"], ROLE);
        assert_eq!(
            statements[0]["Action"],
            json!([
                "kms:GenerateDataKeyPairWithoutPlaintext",
                "kms:Decrypt",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo"
            ])
        );
        assert_eq!(
            statements[0]["Condition"],
            json!({
                "StringEquals": {
                    "kms:EncryptionContext:genesys-cloud-organization-id": ["org-1", "org-2"]
                },
                "ForAllValues:StringEquals": {
                    "kms:EncryptionContextKeys": ["genesys-cloud-organization-id"]
                }
            })
        );
        assert_eq!(statements[1]["Action"], "kms:DescribeKey");
        assert!(statements[1].get("Condition").is_none());
        // Nothing that can make a ciphertext of a chosen plaintext.
        let text = policy.to_string();
        assert!(
            !text.contains("kms:Encrypt\"") && !text.contains("GenerateDataKey*"),
            "{text}"
        );
    }

    #[test]
    fn seed_principals_get_their_own_statement_and_describe_key() {
        let policy = statements(
            &[ROLE.to_owned()],
            &[GENESYS.to_owned()],
            &["o".to_owned()],
            "k",
        );
        let statements = policy.as_array().unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0]["Principal"]["AWS"], ROLE);
        assert_eq!(statements[1]["Sid"], "KekeeperSeedEncryption");
        assert_eq!(statements[1]["Principal"]["AWS"], GENESYS);
        assert_eq!(
            statements[1]["Action"],
            json!(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"])
        );
        assert_eq!(
            statements[1]["Condition"]["StringEquals"]["kms:EncryptionContext:k"],
            json!(["o"])
        );
        assert_eq!(statements[2]["Principal"]["AWS"], json!([ROLE, GENESYS]));

        // Seed principals alone: no operator statement.
        let policy = statements_only_seed();
        assert_eq!(policy.as_array().unwrap().len(), 2);
    }

    fn statements_only_seed() -> Value {
        statements(&[], &[GENESYS.to_owned()], &["o".to_owned()], "k")
    }

    #[test]
    fn several_principals_are_a_list() {
        let principals = [
            ROLE.to_owned(),
            "arn:aws:iam::444455556666:role/kekeeper".to_owned(),
        ];
        let policy = statements(&principals, &[], &["o".to_owned()], "k");
        for statement in policy.as_array().unwrap() {
            assert_eq!(statement["Principal"]["AWS"], json!(principals));
        }
    }

    fn args(principals: &[&str], ids: &[&str], key: Option<&str>) -> PolicyArgs {
        PolicyArgs {
            principal: principals.iter().map(|s| s.to_string()).collect(),
            seed_principal: Vec::new(),
            org_ids: ids.iter().map(|s| s.to_string()).collect(),
            file: None,
            context_key: key.map(str::to_owned),
            identity_policy: false,
            key_arn: Vec::new(),
            key_store: None,
        }
    }

    #[test]
    fn principals_ids_and_context_keys_are_checked() {
        let gathered = gather(&args(&[ROLE], &["a", "a", "b"], None)).unwrap();
        assert_eq!(gathered.ids, ["a", "b"]);
        assert_eq!(gathered.context_key, DEFAULT_ENCRYPTION_CONTEXT_KEY);
        assert!(gather(&args(&["111122223333", ROLE], &["a"], Some("k"))).is_ok());
        assert!(gather(&args(&[ROLE, "kekeeper"], &["a"], None)).is_err());
        assert!(gather(&args(&[ROLE], &[""], None)).is_err());
        let err = gather(&args(&[ROLE], &["a"], Some("aws:tenant"))).unwrap_err();
        assert!(err.contains("KMS reserves"), "{err}");
    }

    #[test]
    fn the_operator_is_never_a_seed_principal() {
        let err = gather(&args(&[GENESYS], &["a"], None)).unwrap_err();
        assert!(err.contains("pass it as --seed-principal"), "{err}");
        let err = gather(&args(&["765628985471"], &["a"], None)).unwrap_err();
        assert!(err.contains("pass it as --seed-principal"), "{err}");
        let mut both = args(&[ROLE], &["a"], None);
        both.seed_principal = vec![ROLE.to_owned()];
        let err = gather(&both).unwrap_err();
        assert!(
            err.contains("both --principal and --seed-principal"),
            "{err}"
        );
        let mut bad_seed = args(&[ROLE], &["a"], None);
        bad_seed.seed_principal = vec!["genesys".to_owned()];
        let err = gather(&bad_seed).unwrap_err();
        assert!(err.contains("--seed-principal \"genesys\""), "{err}");
    }

    #[test]
    fn the_identity_policy_needs_the_role_and_the_keys() {
        let mut no_keys = args(&[ROLE], &["a"], None);
        no_keys.identity_policy = true;
        let err = gather(&no_keys).unwrap_err();
        assert!(err.contains("-f") && err.contains("--key-arn"), "{err}");
        let mut bad_key = no_keys;
        bad_key.key_arn = vec!["arn:aws:kms:us-east-1:111122223333:alias/recordings".to_owned()];
        let err = gather(&bad_key).unwrap_err();
        assert!(err.contains("is not a KMS key ARN"), "{err}");
        let mut wildcard = args(&[ROLE], &["a"], None);
        wildcard.identity_policy = true;
        wildcard.key_arn = vec!["arn:aws:kms:us-east-1:111122223333:key/*".to_owned()];
        assert!(gather(&wildcard).is_err());
        let mut ok = args(&[ROLE], &["a"], None);
        ok.identity_policy = true;
        ok.key_arn = vec![KEY.to_owned()];
        let gathered = gather(&ok).unwrap();
        let role = role_policy(&ok, &gathered).unwrap();
        assert_eq!(
            role["Statement"],
            json!([{
                "Sid": "KekeeperKmsKeys", "Effect": "Allow",
                "Action": ["kms:GenerateDataKeyPairWithoutPlaintext", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:DescribeKey"],
                "Resource": [KEY]
            }])
        );
    }

    #[test]
    fn alias_scoped_keys_are_per_account_and_region() {
        let alias = |arn: &str| AliasArn::parse(arn).unwrap();
        let scope = KeyScope::Aliases(vec![
            alias("arn:aws:kms:us-east-1:111122223333:alias/recordings"),
            alias("arn:aws:kms:us-east-1:111122223333:alias/recordings-b"),
            alias("arn:aws:kms:eu-west-1:444455556666:alias/recordings"),
        ]);
        let statements = kms_identity_statements(&scope);
        assert_eq!(
            json!(statements),
            json!([
                {"Sid": "KekeeperKmsKeys1", "Effect": "Allow",
                 "Action": ["kms:GenerateDataKeyPairWithoutPlaintext", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:DescribeKey"],
                 "Resource": "arn:aws:kms:eu-west-1:444455556666:key/*",
                 "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": ["alias/recordings"]}}},
                {"Sid": "KekeeperKmsKeys2", "Effect": "Allow",
                 "Action": ["kms:GenerateDataKeyPairWithoutPlaintext", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:DescribeKey"],
                 "Resource": "arn:aws:kms:us-east-1:111122223333:key/*",
                 "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": ["alias/recordings", "alias/recordings-b"]}}}
            ])
        );
    }

    #[test]
    fn replica_reads_get_decrypt_only_in_the_replica_regions() {
        let alias = AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap();
        let replicas = vec![(
            alias.clone(),
            vec!["eu-west-1".to_owned(), "ap-south-1".to_owned()],
        )];
        let by_alias = kms_replica_statement(&KeyScope::Aliases(vec![alias]), &replicas);
        assert_eq!(
            by_alias,
            Some(json!({
                "Sid": "KekeeperKmsReplicaReads", "Effect": "Allow", "Action": "kms:Decrypt",
                "Resource": [
                    "arn:aws:kms:ap-south-1:111122223333:key/mrk-*",
                    "arn:aws:kms:eu-west-1:111122223333:key/mrk-*"
                ]
            }))
        );
        let mrk = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let by_key =
            kms_replica_statement(&KeyScope::Keys(vec![mrk.into(), KEY.into()]), &replicas);
        assert_eq!(
            by_key.unwrap()["Resource"],
            json!([
                "arn:aws:kms:ap-south-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
                "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
            ])
        );
        assert_eq!(
            kms_replica_statement(&KeyScope::Keys(vec![KEY.into()]), &[]),
            None
        );
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

        // With --identity-policy, one document: the KMS statements, then the key store's.
        let mut both = args(&[ROLE], &["a"], None);
        both.identity_policy = true;
        both.key_arn = vec![KEY.to_owned()];
        both.key_store = Some("s3://acme-kekeeper/prod".parse().unwrap());
        let gathered = gather(&both).unwrap();
        let role = role_policy(&both, &gathered).unwrap();
        let sids: Vec<&str> = role["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Sid"].as_str().unwrap())
            .collect();
        assert_eq!(
            sids,
            [
                "KekeeperKmsKeys",
                "KekeeperKeyStoreObjects",
                "KekeeperKeyStoreList"
            ]
        );
        assert!(role_policy(&args(&[ROLE], &["a"], None), &gathered).is_none());
    }
}
