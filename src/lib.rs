//! kekeeper: key-encryption-key pairs for call recordings, rooted in the organisation's own
//! AWS KMS key, managed as a Kubernetes resource.

pub mod arn;
pub mod backup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controller;
pub mod crd;
pub mod envelope;
pub mod keypair;
pub mod keyring;
pub mod keystore;
pub mod kms;
pub mod metrics;
pub mod policy;
pub mod selftest;
pub mod telemetry;
pub mod user_agent;

/// The one error type of the library; each concern keeps its own detailed error and is wrapped
/// here so callers can match on the concern.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Arn(#[from] arn::ArnError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    #[error(transparent)]
    Kms(#[from] kms::KmsError),
    #[error(transparent)]
    KeyPair(#[from] keypair::KeyPairError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
