//! A `RecordingKeyConfigSpec` checked once into domain types (parse, don't validate): what the
//! CLI and the controller work from.

use std::collections::HashSet;

use crate::arn::AliasArn;
use crate::crd::RecordingKeyConfigSpec;
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
/// region; whichever it is, it must equal the ARN's region (SPEC §2), since the organisation's
/// key must live in its home region.
pub fn validate(
    spec: &RecordingKeyConfigSpec,
    operator_region: Option<&str>,
) -> Result<ValidatedConfig, ConfigError> {
    let alias = AliasArn::parse(&spec.kms_key_alias_arn)?;

    let ids = &spec.organization_ids;
    if ids.is_empty() {
        return Err(ConfigError::new(
            "spec.organizationIds",
            "must list at least one organisation id",
        ));
    }
    if ids.len() > MAX_ORGANIZATIONS {
        return Err(ConfigError::new(
            "spec.organizationIds",
            format!(
                "lists {} organisation ids; at most {MAX_ORGANIZATIONS} are allowed, split them over several RecordingKeyConfigs",
                ids.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (index, id) in ids.iter().enumerate() {
        if id.trim().is_empty() {
            return Err(ConfigError::new(
                &format!("spec.organizationIds[{index}]"),
                "must not be empty",
            ));
        }
        if id != id.trim() {
            return Err(ConfigError::new(
                &format!("spec.organizationIds[{index}]"),
                format!("{id:?} has leading or trailing whitespace; remove it"),
            ));
        }
        if id.len() > MAX_ORGANIZATION_ID_LEN {
            return Err(ConfigError::new(
                &format!("spec.organizationIds[{index}]"),
                format!(
                    "is {} characters long; at most {MAX_ORGANIZATION_ID_LEN} are allowed",
                    id.len()
                ),
            ));
        }
        if !seen.insert(id.as_str()) {
            return Err(ConfigError::new(
                &format!("spec.organizationIds[{index}]"),
                format!("{id:?} is listed more than once; list each organisation once"),
            ));
        }
    }

    let home_region = match (&spec.home_region, operator_region) {
        (Some(home), _) => {
            if home != alias.region() {
                return Err(ConfigError::new(
                    "spec.homeRegion",
                    format!(
                        "{home:?} differs from the region of kmsKeyAliasArn ({:?}); the KMS key must be in the home region, so use an alias in {home} or set homeRegion to {}",
                        alias.region(),
                        alias.region()
                    ),
                ));
            }
            home.clone()
        }
        (None, Some(operator)) => {
            if operator != alias.region() {
                return Err(ConfigError::new(
                    "spec.homeRegion",
                    format!(
                        "not set, so it defaults to the operator's region {operator:?}, which differs from the region of kmsKeyAliasArn ({:?}); set homeRegion: {} if that is the organisation's home region",
                        alias.region(),
                        alias.region()
                    ),
                ));
            }
            operator.to_owned()
        }
        (None, None) => alias.region().to_owned(),
    };

    if spec.encryption_context_key.trim().is_empty() {
        return Err(ConfigError::new(
            "spec.encryptionContextKey",
            format!(
                "must not be empty (the default is {})",
                crate::crd::DEFAULT_ENCRYPTION_CONTEXT_KEY
            ),
        ));
    }
    if spec.encryption_context_key.starts_with("aws:") {
        return Err(ConfigError::new(
            "spec.encryptionContextKey",
            "must not start with \"aws:\", which KMS reserves",
        ));
    }

    Ok(ValidatedConfig {
        alias,
        organization_ids: ids.clone(),
        key_pair_spec: spec.key_pair_spec,
        home_region,
        encryption_context_key: spec.encryption_context_key.clone(),
    })
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

    #[test]
    fn a_valid_spec_becomes_a_validated_config_with_defaults() {
        let config = validate(&spec(ARN, &["org-a", "org-b"]), None).unwrap();
        assert_eq!(config.alias.as_str(), ARN);
        assert_eq!(config.organization_ids, ["org-a", "org-b"]);
        assert_eq!(config.key_pair_spec, KeyPairSpec::Rsa3072);
        assert_eq!(config.home_region, "us-east-1");
        assert_eq!(
            config.encryption_context_key,
            "genesys-cloud-organization-id"
        );
        assert_eq!(
            config.context_for("org-a"),
            EncryptionContext {
                key: "genesys-cloud-organization-id".into(),
                organization_id: "org-a".into()
            }
        );
        let config = validate(&spec(ARN, &["org-a"]), Some("us-east-1")).unwrap();
        assert_eq!(config.home_region, "us-east-1");
    }

    #[test]
    fn every_invalid_field_is_named() {
        let many: Vec<String> = (0..101).map(|i| format!("org-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut other_home = spec(ARN, &["a"]);
        other_home.home_region = Some("eu-west-1".into());
        let mut empty_context = spec(ARN, &["a"]);
        empty_context.encryption_context_key = String::new();
        let cases = [
            (
                spec("arn:aws:kms:us-east-1:111122223333:key/abc", &["a"]),
                None,
                "spec.kmsKeyAliasArn",
            ),
            (spec(ARN, &[]), None, "spec.organizationIds"),
            (spec(ARN, &many), None, "spec.organizationIds"),
            (spec(ARN, &["a", ""]), None, "spec.organizationIds[1]"),
            (spec(ARN, &["a", "b", "a"]), None, "spec.organizationIds[2]"),
            (
                spec(ARN, &["a", &"x".repeat(129)]),
                None,
                "spec.organizationIds[1]",
            ),
            (other_home, None, "spec.homeRegion"),
            (spec(ARN, &["a"]), Some("eu-west-1"), "spec.homeRegion"),
            (empty_context, None, "spec.encryptionContextKey"),
        ];
        for (spec, region, field) in cases {
            let err = validate(&spec, region).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(!err.message.is_empty());
        }
    }
}
