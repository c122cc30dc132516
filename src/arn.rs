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

impl AliasArn {
    pub fn parse(_arn: &str) -> Result<Self, ArnError> {
        todo!("engine")
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

impl fmt::Display for AliasArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}
