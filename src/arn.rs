//! `AliasArn`: a KMS alias ARN, parsed once and never invalid afterwards.

use std::fmt;

/// `arn:{partition}:kms:{region}:{account}:alias/{name}` of a customer-managed key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AliasArn {
    arn: String,
    partition_end: usize,
    region: String,
    account: String,
    alias_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error("kmsKeyAliasArn: {0}")]
    Invalid(String),
}

/// KMS limits an alias name, `alias/` included, to 256 characters.
pub const MAX_ALIAS_NAME_LEN: usize = 256;

const EXPECTED_SHAPE: &str = "arn:aws:kms:REGION:ACCOUNT:alias/NAME";

fn invalid(message: impl Into<String>) -> ArnError {
    ArnError::Invalid(message.into())
}

impl AliasArn {
    pub fn parse(arn: &str) -> Result<Self, ArnError> {
        if arn.trim().is_empty() {
            return Err(invalid(format!(
                "must not be empty; expected {EXPECTED_SHAPE}"
            )));
        }
        if arn != arn.trim() {
            return Err(invalid(format!(
                "{arn:?} has leading or trailing whitespace"
            )));
        }
        // Six parts; a ':' in the resource stays there and fails the alias character check.
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(invalid(format!(
                "{arn:?} is not an ARN; expected {EXPECTED_SHAPE}"
            )));
        }
        let (partition, service, region, account, resource) =
            (parts[1], parts[2], parts[3], parts[4], parts[5]);

        if !matches!(partition, "aws" | "aws-us-gov" | "aws-cn") {
            return Err(invalid(format!(
                "partition {partition:?} is not supported; use aws, aws-us-gov or aws-cn"
            )));
        }
        if service != "kms" {
            return Err(invalid(format!(
                "service {service:?} is not kms; expected {EXPECTED_SHAPE}"
            )));
        }
        if !is_region(region) {
            return Err(invalid(format!(
                "region {region:?} is not a region name like us-east-1"
            )));
        }
        let region_partition = if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else if region.starts_with("cn-") {
            "aws-cn"
        } else {
            "aws"
        };
        if region_partition != partition {
            return Err(invalid(format!(
                "region {region:?} belongs to partition {region_partition:?}, not {partition:?}"
            )));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "account {account:?} is not a 12-digit AWS account id"
            )));
        }

        if resource.starts_with("key/") {
            return Err(invalid(format!(
                "{arn:?} is a key ARN; use the alias ARN instead \
                 (arn:{partition}:kms:{region}:{account}:alias/NAME), so the key behind it can be changed"
            )));
        }
        let Some(alias_name) = resource.strip_prefix("alias/") else {
            return Err(invalid(format!(
                "resource {resource:?} is not an alias; expected alias/NAME as in {EXPECTED_SHAPE}"
            )));
        };
        if alias_name.is_empty() {
            return Err(invalid("alias name after \"alias/\" is empty"));
        }
        if resource.len() > MAX_ALIAS_NAME_LEN {
            return Err(invalid(format!(
                "alias name is {} characters long; KMS allows at most {MAX_ALIAS_NAME_LEN} including \"alias/\"",
                resource.len()
            )));
        }
        if let Some(bad) = alias_name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-')))
        {
            return Err(invalid(format!(
                "alias name {alias_name:?} contains {bad:?}; KMS allows only letters, digits, '/', '_' and '-'"
            )));
        }
        if alias_name == "aws" || alias_name.starts_with("aws/") {
            return Err(invalid(format!(
                "alias/{alias_name} is an AWS managed key, whose key policy cannot be changed to \
                 allow kekeeper; create a customer managed key and an alias for it"
            )));
        }

        Ok(AliasArn {
            arn: arn.to_owned(),
            partition_end: 4 + partition.len(),
            region: region.to_owned(),
            account: account.to_owned(),
            alias_name: alias_name.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.arn
    }

    pub fn partition(&self) -> &str {
        &self.arn[4..self.partition_end]
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The alias name without the `alias/` prefix.
    pub fn alias_name(&self) -> &str {
        &self.alias_name
    }
}

/// `us-east-1`, `us-gov-west-1`, `cn-north-1`, `ap-southeast-2`, `eu-central-1`, `il-central-1`:
/// lowercase words joined by '-', ending in a number.
pub fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    if parts.len() < 3 || parts.len() > 5 {
        return false;
    }
    let (last, words) = parts.split_last().unwrap_or((&"", &[]));
    !last.is_empty()
        && last.len() <= 2
        && last.bytes().all(|b| b.is_ascii_digit())
        && words
            .iter()
            .all(|w| !w.is_empty() && w.len() <= 12 && w.bytes().all(|b| b.is_ascii_lowercase()))
        && words[0].len() == 2
}

impl fmt::Display for AliasArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

impl std::str::FromStr for AliasArn {
    type Err = ArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AliasArn::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_alias_arns_parse_into_their_parts() {
        let cases = [
            (
                "arn:aws:kms:us-east-1:111122223333:alias/recordings",
                "aws",
                "us-east-1",
                "recordings",
            ),
            (
                "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/a/b_c-D9",
                "aws-us-gov",
                "us-gov-west-1",
                "a/b_c-D9",
            ),
            (
                "arn:aws-cn:kms:cn-north-1:111122223333:alias/x",
                "aws-cn",
                "cn-north-1",
                "x",
            ),
            (
                "arn:aws:kms:ap-southeast-2:000000000000:alias/awsome",
                "aws",
                "ap-southeast-2",
                "awsome",
            ),
        ];
        for (input, partition, region, name) in cases {
            let arn = AliasArn::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(arn.as_str(), input);
            assert_eq!(arn.partition(), partition);
            assert_eq!(arn.region(), region);
            assert_eq!(arn.alias_name(), name);
            assert_eq!(arn.to_string(), input);
        }
        let arn = AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/r").unwrap();
        assert_eq!(arn.account(), "111122223333");
    }

    #[test]
    fn invalid_alias_arns_are_rejected_naming_the_offending_part() {
        let long_name = format!(
            "arn:aws:kms:us-east-1:111122223333:alias/{}",
            "a".repeat(251)
        );
        let just_fits = format!(
            "arn:aws:kms:us-east-1:111122223333:alias/{}",
            "a".repeat(250)
        );
        assert!(AliasArn::parse(&just_fits).is_ok());
        let cases: Vec<(String, &str)> = vec![
            (
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                    .into(),
                "use the alias ARN",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs".into(),
                "AWS managed key",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/aws".into(),
                "AWS managed key",
            ),
            (
                "arn:aws:kms:US-EAST-1:111122223333:alias/r".into(),
                "region \"US-EAST-1\"",
            ),
            (
                "arn:aws:kms:useast1:111122223333:alias/r".into(),
                "region \"useast1\"",
            ),
            ("arn:aws:kms::111122223333:alias/r".into(), "region \"\""),
            (
                "arn:aws:kms:us-east-1:1111:alias/r".into(),
                "account \"1111\"",
            ),
            (
                "arn:aws:kms:us-east-1:11112222333a:alias/r".into(),
                "account \"11112222333a\"",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/rec.ordings".into(),
                "contains '.'",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/rec ordings".into(),
                "contains ' '",
            ),
            (long_name, "at most 256"),
            ("".into(), "must not be empty"),
            ("   ".into(), "must not be empty"),
            (
                "arn:aws:s3:us-east-1:111122223333:alias/r".into(),
                "service \"s3\"",
            ),
            (
                "arn:aws-foo:kms:us-east-1:111122223333:alias/r".into(),
                "partition \"aws-foo\"",
            ),
            (
                "arn:aws:kms:cn-north-1:111122223333:alias/r".into(),
                "belongs to partition \"aws-cn\"",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/".into(),
                "alias name after",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:recordings".into(),
                "is not an alias",
            ),
            ("alias/recordings".into(), "is not an ARN"),
            (
                " arn:aws:kms:us-east-1:111122223333:alias/r".into(),
                "whitespace",
            ),
        ];
        for (input, expected) in cases {
            let err = AliasArn::parse(&input).expect_err(&input).to_string();
            assert!(err.starts_with("kmsKeyAliasArn: "), "{input}: {err}");
            assert!(
                err.contains(expected),
                "{input}: {err:?} should mention {expected:?}"
            );
        }
    }
}
