//! A stand-in with the call shape of `crate::envelope` (being written on branch `envelope`),
//! so the self-test and the CLI work before it lands: RSA-OAEP-SHA256 wraps a fresh AES-256-GCM
//! key; the body is sealed in one piece (not streamed). Replaced by `crate::envelope` on merge.

use std::io::{Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use zeroize::Zeroizing;

const MAGIC: &[u8; 6] = b"KKSHIM";

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Crypto(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub key_pair_id: String,
    wrapped_key: Vec<u8>,
    nonce: [u8; NONCE_LEN],
}

fn read_u16<R: Read>(input: &mut R) -> Result<usize, EnvelopeError> {
    let mut len = [0u8; 2];
    input.read_exact(&mut len)?;
    Ok(u16::from_be_bytes(len) as usize)
}

impl Header {
    pub fn read_from<R: Read>(input: &mut R) -> Result<Header, EnvelopeError> {
        let mut magic = [0u8; 7];
        input.read_exact(&mut magic)?;
        if &magic[..6] != MAGIC {
            return Err(EnvelopeError::Format(
                "not a kekeeper recording envelope".into(),
            ));
        }
        let mut id = vec![0u8; read_u16(input)?];
        input.read_exact(&mut id)?;
        let key_pair_id = String::from_utf8(id)
            .map_err(|_| EnvelopeError::Format("key pair id is not UTF-8".into()))?;
        let mut wrapped_key = vec![0u8; read_u16(input)?];
        input.read_exact(&mut wrapped_key)?;
        let mut nonce = [0u8; NONCE_LEN];
        input.read_exact(&mut nonce)?;
        Ok(Header {
            version: magic[6],
            key_pair_id,
            wrapped_key,
            nonce,
        })
    }
}

pub fn encrypt<R: Read, W: Write>(
    public_key_der: &[u8],
    key_pair_id: &str,
    mut input: R,
    mut output: W,
) -> Result<u64, EnvelopeError> {
    let public = PublicEncryptingKey::from_der(public_key_der)
        .map_err(|_| EnvelopeError::Crypto("the public key is not an RSA SubjectPublicKeyInfo"))?;
    let public =
        OaepPublicEncryptingKey::new(public).map_err(|_| EnvelopeError::Crypto("RSA-OAEP key"))?;
    let mut data_key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(data_key.as_mut()).map_err(|_| EnvelopeError::Crypto("random"))?;
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| EnvelopeError::Crypto("random"))?;
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped = public
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            data_key.as_ref(),
            &mut wrapped,
            None,
        )
        .map_err(|_| EnvelopeError::Crypto("RSA-OAEP wrap of the data key failed"))?
        .to_vec();

    let mut body = Vec::new();
    input.read_to_end(&mut body)?;
    let plaintext_len = body.len() as u64;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, data_key.as_ref())
            .map_err(|_| EnvelopeError::Crypto("AES key"))?,
    );
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(key_pair_id.as_bytes()),
        &mut body,
    )
    .map_err(|_| EnvelopeError::Crypto("AES-GCM seal failed"))?;

    output.write_all(MAGIC)?;
    output.write_all(&[0])?;
    output.write_all(&(key_pair_id.len() as u16).to_be_bytes())?;
    output.write_all(key_pair_id.as_bytes())?;
    output.write_all(&(wrapped.len() as u16).to_be_bytes())?;
    output.write_all(&wrapped)?;
    output.write_all(&nonce)?;
    output.write_all(&body)?;
    output.flush()?;
    Ok(plaintext_len)
}

pub fn decrypt<R: Read, W: Write>(
    private_key_pkcs8_der: &[u8],
    header: &Header,
    mut input: R,
    mut output: W,
) -> Result<u64, EnvelopeError> {
    let private = PrivateDecryptingKey::from_pkcs8(private_key_pkcs8_der)
        .map_err(|_| EnvelopeError::Crypto("the private key is not an RSA PKCS#8 key"))?;
    let private = OaepPrivateDecryptingKey::new(private)
        .map_err(|_| EnvelopeError::Crypto("RSA-OAEP key"))?;
    let mut data_key = Zeroizing::new(vec![0u8; private.min_output_size()]);
    let len = private
        .decrypt(
            &OAEP_SHA256_MGF1SHA256,
            &header.wrapped_key,
            &mut data_key,
            None,
        )
        .map_err(|_| EnvelopeError::Crypto("the data key does not unwrap with this private key"))?
        .len();
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &data_key[..len])
            .map_err(|_| EnvelopeError::Crypto("AES key"))?,
    );
    let mut body = Vec::new();
    input.read_to_end(&mut body)?;
    let plaintext = key
        .open_in_place(
            Nonce::assume_unique_for_key(header.nonce),
            Aad::from(header.key_pair_id.as_bytes()),
            &mut body,
        )
        .map_err(|_| EnvelopeError::Crypto("the recording is corrupt or was altered"))?;
    output.write_all(plaintext)?;
    output.flush()?;
    Ok(plaintext.len() as u64)
}
