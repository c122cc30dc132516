//! The recording envelope (SPEC §6): AES-256-GCM in fixed-size segments under a fresh data key,
//! the data key wrapped with RSA-OAEP-SHA256 under the organisation's public key.

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
