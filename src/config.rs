//! A `RecordingKeyConfigSpec` checked once into domain types (parse, don't validate): what the
//! CLI and the controller work from.

use std::collections::HashSet;

use crate::arn::AliasArn;
use crate::crd::{DEFAULT_ENCRYPTION_CONTEXT_KEY, RecordingKeyConfigSpec};
use crate::kms::{EncryptionContext, KeyPairSpec};

/// KMS and the product both cap a configuration at this many organisations.
pub const MAX_ORGANIZATIONS: usize = 100;
/// The CRD schema's limit on one organisation id (checked here too for the CLI, which reads
/// manifests without an API server).
pub const MAX_ORGANIZATION_ID_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedConfig {
    pub alias: AliasArn,
    pub organization_ids: Vec<String>,
    pub key_pair_spec: KeyPairSpec,
    pub home_region: String,
    pub encryption_context_key: String,
    /// `spec.kmsReplicaRegions`: where reads turn when the home Region fails
    /// (docs/design.md, "Multi-Region reads").
    pub replica_regions: Vec<String>,
}

impl ValidatedConfig {
    pub fn context_for(&self, organization_id: &str) -> EncryptionContext {
        EncryptionContext {
            key: self.encryption_context_key.clone(),
            organization_id: organization_id.to_owned(),
        }
    }
}

/// A spec field that is wrong, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field path, e.g. `spec.kmsKeyAliasArn`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<crate::arn::ArnError> for ConfigError {
    fn from(err: crate::arn::ArnError) -> Self {
        let crate::arn::ArnError::Invalid(message) = err;
        ConfigError::new("spec.kmsKeyAliasArn", message)
    }
}

/// Checks a spec; `operator_region` is the region the operator runs in (the default homeRegion).
///
/// The home region is `spec.homeRegion`, else the operator's region, else the alias ARN's
/// region; whichever it is, it must equal the ARN's region, since the organisation's key must
/// live in its home region (docs/design.md#product-contract).
pub fn validate(
    spec: &RecordingKeyConfigSpec,
    operator_region: Option<&str>,
) -> Result<ValidatedConfig, ConfigError> {
    let alias = AliasArn::parse(&spec.kms_key_alias_arn)?;
    check_organization_ids(&spec.organization_ids, &spec.encryption_context_key)?;
    let home_region = home_region(spec.home_region.as_deref(), operator_region, &alias)?;
    check_encryption_context_key(&spec.encryption_context_key)?;
    if let Some(retention) = &spec.recording_retention {
        check_retention(retention)?;
    }
    check_replica_regions(&spec.kms_replica_regions, &alias, &home_region)?;
    Ok(ValidatedConfig {
        alias,
        organization_ids: spec.organization_ids.clone(),
        key_pair_spec: spec.key_pair_spec,
        home_region,
        encryption_context_key: spec.encryption_context_key.clone(),
        replica_regions: spec.kms_replica_regions.clone(),
    })
}

/// `spec.kmsReplicaRegions`: Region names of the alias's partition, none twice, not the home
/// Region.
fn check_replica_regions(
    regions: &[String],
    alias: &AliasArn,
    home_region: &str,
) -> Result<(), ConfigError> {
    let field = "spec.kmsReplicaRegions";
    let mut seen = HashSet::new();
    for (index, region) in regions.iter().enumerate() {
        let at = |message: String| ConfigError::new(&format!("{field}[{index}]"), message);
        if !crate::arn::is_region(region) {
            return Err(at(format!(
                "{region:?} is not a Region name like eu-west-1"
            )));
        }
        let partition = match region.split('-').next() {
            Some("cn") => "aws-cn",
            _ if region.starts_with("us-gov-") => "aws-us-gov",
            _ => "aws",
        };
        if partition != alias.partition() {
            return Err(at(format!(
                "{region:?} is in partition {partition}, but the key's alias is in {}; a multi-Region key's replicas stay in its partition",
                alias.partition()
            )));
        }
        if region == home_region {
            return Err(at(format!(
                "{region:?} is the home Region; list only the Regions of the key's replicas"
            )));
        }
        if !seen.insert(region.as_str()) {
            return Err(at(format!(
                "{region:?} is listed more than once; list each Region once"
            )));
        }
    }
    Ok(())
}

/// `spec.organizationIds`: 1 to [`MAX_ORGANIZATIONS`] ids, each well-formed, none twice.
fn check_organization_ids(ids: &[String], context_key: &str) -> Result<(), ConfigError> {
    let field = "spec.organizationIds";
    if ids.is_empty() {
        return Err(ConfigError::new(
            field,
            "must list at least one organisation id",
        ));
    }
    if ids.len() > MAX_ORGANIZATIONS {
        return Err(ConfigError::new(
            field,
            format!(
                "lists {} organisation ids; at most {MAX_ORGANIZATIONS} are allowed, split them over several RecordingKeyConfigs",
                ids.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (index, id) in ids.iter().enumerate() {
        let at = |message: String| ConfigError::new(&format!("{field}[{index}]"), message);
        check_organization_id(id, context_key).map_err(at)?;
        if !seen.insert(id.as_str()) {
            return Err(at(format!(
                "{id:?} is listed more than once; list each organisation once"
            )));
        }
    }
    Ok(())
}

/// One organisation id: not empty, no surrounding whitespace, at most
/// [`MAX_ORGANIZATION_ID_LEN`] characters, and a UUID under the default context key.
fn check_organization_id(id: &str, context_key: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id != id.trim() {
        return Err(format!(
            "{id:?} has leading or trailing whitespace; remove it"
        ));
    }
    if id.len() > MAX_ORGANIZATION_ID_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_ORGANIZATION_ID_LEN} are allowed",
            id.len()
        ));
    }
    if context_key == DEFAULT_ENCRYPTION_CONTEXT_KEY && !is_uuid(id) {
        return Err(format!(
            "{id:?} is not a UUID; organisation ids must be UUIDs (like \
             3fa85f64-5717-4562-b3fc-2c963f66afa6) when encryptionContextKey is \
             {DEFAULT_ENCRYPTION_CONTEXT_KEY}: copy them from Genesys Cloud, or set \
             encryptionContextKey for another kind of id"
        ));
    }
    Ok(())
}

/// The home region: `spec.homeRegion`, else the operator's region, else the alias ARN's; it
/// must be the ARN's.
fn home_region(
    home: Option<&str>,
    operator: Option<&str>,
    alias: &AliasArn,
) -> Result<String, ConfigError> {
    let region = alias.region();
    let message = match (home, operator) {
        (Some(home), _) if home != region => format!(
            "{home:?} differs from the region of kmsKeyAliasArn ({region:?}); the KMS key must be in the home region, so use an alias in {home} or set homeRegion to {region}"
        ),
        (None, Some(operator)) if operator != region => format!(
            "not set, so it defaults to the operator's region {operator:?}, which differs from the region of kmsKeyAliasArn ({region:?}); set homeRegion: {region} if that is the organisation's home region"
        ),
        (home, operator) => return Ok(home.or(operator).unwrap_or(region).to_owned()),
    };
    Err(ConfigError::new("spec.homeRegion", message))
}

/// `spec.encryptionContextKey`: not empty, and not in the `aws:` namespace KMS reserves.
fn check_encryption_context_key(key: &str) -> Result<(), ConfigError> {
    let field = "spec.encryptionContextKey";
    if key.trim().is_empty() {
        return Err(ConfigError::new(
            field,
            format!("must not be empty (the default is {DEFAULT_ENCRYPTION_CONTEXT_KEY})"),
        ));
    }
    if key.starts_with("aws:") {
        return Err(ConfigError::new(
            field,
            "must not start with \"aws:\", which KMS reserves",
        ));
    }
    Ok(())
}

/// The shape Genesys Cloud organisation ids have: 8-4-4-4-12 hex digits.
pub fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_retention(retention: &str) -> Result<(), ConfigError> {
    let field = "spec.recordingRetention";
    let duration = crate::policy::parse_retention(retention)
        .map_err(|message| ConfigError::new(field, message))?;
    if duration < jiff::SignedDuration::from_hours(24) {
        return Err(ConfigError::new(
            field,
            format!(
                "{retention:?} must be at least 1d or 24h: retired key pairs must outlive the \
                 recordings made with them"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arn: &str, orgs: &[&str]) -> RecordingKeyConfigSpec {
        serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": arn,
            "organizationIds": orgs,
        }))
        .unwrap()
    }

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    const ORG_B: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    #[test]
    fn replica_regions_are_region_names_of_the_partition_once_and_not_the_home_region() {
        let with = |regions: serde_json::Value| {
            let spec = serde_json::from_value::<RecordingKeyConfigSpec>(serde_json::json!({
                "kmsKeyAliasArn": ARN,
                "organizationIds": [ORG_A],
                "kmsReplicaRegions": regions,
            }))
            .unwrap();
            validate(&spec, None)
        };
        let config = with(serde_json::json!(["eu-west-1", "ap-southeast-2"])).unwrap();
        assert_eq!(config.replica_regions, ["eu-west-1", "ap-southeast-2"]);
        assert!(
            with(serde_json::json!([]))
                .unwrap()
                .replica_regions
                .is_empty()
        );
        let cases = [
            (
                serde_json::json!(["eu-west"]),
                "spec.kmsReplicaRegions[0]",
                "not a Region name",
            ),
            (
                serde_json::json!(["eu-west-1", "us-east-1"]),
                "spec.kmsReplicaRegions[1]",
                "is the home Region",
            ),
            (
                serde_json::json!(["eu-west-1", "eu-west-1"]),
                "spec.kmsReplicaRegions[1]",
                "more than once",
            ),
            (
                serde_json::json!(["cn-north-1"]),
                "spec.kmsReplicaRegions[0]",
                "partition aws-cn",
            ),
        ];
        for (regions, field, message) in cases {
            let err = with(regions).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(message), "{err}");
        }
    }

    #[test]
    fn a_valid_spec_becomes_a_validated_config_with_defaults() {
        let config = validate(&spec(ARN, &[ORG_A, ORG_B]), None).unwrap();
        assert_eq!(config.alias.as_str(), ARN);
        assert_eq!(config.organization_ids, [ORG_A, ORG_B]);
        assert_eq!(config.key_pair_spec, KeyPairSpec::Rsa3072);
        assert_eq!(config.home_region, "us-east-1");
        assert_eq!(
            config.encryption_context_key,
            "genesys-cloud-organization-id"
        );
        assert_eq!(
            config.context_for(ORG_A),
            EncryptionContext {
                key: "genesys-cloud-organization-id".into(),
                organization_id: ORG_A.into()
            }
        );
        let config = validate(&spec(ARN, &[ORG_A]), Some("us-east-1")).unwrap();
        assert_eq!(config.home_region, "us-east-1");
    }

    #[test]
    fn every_invalid_field_is_named() {
        let many: Vec<String> = (0..101)
            .map(|i| format!("3fa85f64-5717-4562-b3fc-{i:012}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut other_home = spec(ARN, &[ORG_A]);
        other_home.home_region = Some("eu-west-1".into());
        let retention = |value: &str| {
            let mut spec = spec(ARN, &[ORG_A]);
            spec.recording_retention = Some(value.into());
            spec
        };
        let mut empty_context = spec(ARN, &[ORG_A]);
        empty_context.encryption_context_key = String::new();
        let cases = [
            (
                spec("arn:aws:kms:us-east-1:111122223333:key/abc", &[ORG_A]),
                None,
                "spec.kmsKeyAliasArn",
            ),
            (spec(ARN, &[]), None, "spec.organizationIds"),
            (spec(ARN, &many), None, "spec.organizationIds"),
            (spec(ARN, &[ORG_A, ""]), None, "spec.organizationIds[1]"),
            (
                spec(ARN, &[ORG_A, ORG_B, ORG_A]),
                None,
                "spec.organizationIds[2]",
            ),
            (
                spec(ARN, &[ORG_A, &"x".repeat(129)]),
                None,
                "spec.organizationIds[1]",
            ),
            (other_home, None, "spec.homeRegion"),
            (spec(ARN, &[ORG_A]), Some("eu-west-1"), "spec.homeRegion"),
            (empty_context, None, "spec.encryptionContextKey"),
            (
                spec(ARN, &[ORG_A, "org-b"]),
                None,
                "spec.organizationIds[1]",
            ),
            (retention("12h"), None, "spec.recordingRetention"),
            (retention("0d"), None, "spec.recordingRetention"),
            (retention("1w"), None, "spec.recordingRetention"),
        ];
        for (spec, region, field) in cases {
            let err = validate(&spec, region).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn organisation_ids_need_not_be_uuids_under_another_context_key() {
        let mut other_key = spec(ARN, &["org-a", "Org B"]);
        other_key.encryption_context_key = "tenant".into();
        assert!(validate(&other_key, None).is_ok());
        let err = validate(&spec(ARN, &["org-a"]), None).unwrap_err();
        assert!(err.message.contains("not a UUID"), "{err}");
        assert!(is_uuid("3FA85F64-5717-4562-B3FC-2C963F66AFA6"));
        for not in [
            "3fa85f64-5717-4562-b3fc-2c963f66afa",
            "3fa85f64571745 62b3fc2c963f66afa6",
            "",
        ] {
            assert!(!is_uuid(not), "{not}");
        }
    }

    #[test]
    fn a_retention_of_a_day_or_more_is_accepted() {
        for ok in ["1d", "24h", "2555d", "100h"] {
            let mut spec = spec(ARN, &[ORG_A]);
            spec.recording_retention = Some(ok.into());
            assert!(validate(&spec, None).is_ok(), "{ok}");
        }
    }
}
