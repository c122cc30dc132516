//! A key pair record and its Secret layout (SPEC §3): type `kekeeper.io/key-pair`,
//! `publicKey.pem`, `privateKey.kms`, `metadata.json`, labels. Never holds a plaintext private key.

use jiff::Timestamp;

use crate::kms::{EncryptionContext, KeyPairSpec};

pub const SECRET_TYPE: &str = "kekeeper.io/key-pair";
pub const LABEL_CONFIG: &str = "kekeeper.io/config";
pub const LABEL_ORGANIZATION: &str = "kekeeper.io/organization-id";
pub const LABEL_STATE: &str = "kekeeper.io/state";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPairState {
    Active,
    Retired,
}

/// Everything kekeeper knows about one key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPairRecord {
    /// The RecordingKeyConfig this pair belongs to.
    pub config_name: String,
    pub namespace: String,
    pub organization_id: String,
    /// 1, 2, 3, ... per (config, organisation); part of the deterministic Secret name.
    pub sequence: u64,
    pub key_pair_id: String,
    pub kms_key_arn: String,
    pub key_pair_spec: KeyPairSpec,
    pub encryption_context: EncryptionContext,
    pub created_at: Timestamp,
    /// Why the pair was made (`Created`, `PeriodElapsed`, `RotateNowRequested`, ...).
    pub reason: String,
    pub state: KeyPairState,
    pub retired_at: Option<Timestamp>,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    /// The KMS ciphertext blob of the private key.
    pub private_key_ciphertext: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyPairError {
    #[error("key pair Secret {name}: {message}")]
    InvalidSecret { name: String, message: String },
}
