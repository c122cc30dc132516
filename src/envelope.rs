//! The recording envelope: AES-256-GCM in fixed-size segments under a fresh data key, the data
//! key wrapped with RSA-OAEP-SHA256 under the organisation's public key. docs/envelope.md is the
//! format's contract for other implementations, with test vectors; the summary below agrees
//! with it.
//!
//! # Format, version 1
//!
//! All integers are unsigned big-endian. An envelope is a header followed by a body of one or
//! more segments; nothing may follow the final segment.
//!
//! ## Header
//!
//! | bytes | field |
//! |---|---|
//! | 6 | magic `KEKREC` (`4b 45 4b 52 45 43`) |
//! | 1 | format version, `1` |
//! | 2 | `id_len`, length of the key pair id, 1..=1024 |
//! | `id_len` | key pair id, UTF-8 |
//! | 2 | `wrapped_len`, length of the wrapped data key, 256..=1024 (RSA 2048 to 8192 bits) |
//! | `wrapped_len` | wrapped data key: RSA-OAEP ciphertext (SHA-256 hash, MGF1-SHA-256, no label) of a fresh, random 32-byte AES-256 key |
//! | 7 | nonce prefix, random per envelope |
//! | 4 | segment size in plaintext bytes; `65536` ([`SEGMENT_SIZE`]) in version 1 |
//!
//! The data key is generated for this envelope only and never reused, so every
//! (key, nonce) pair below is used once.
//!
//! ## Body
//!
//! Segment `i` (counting from 0) is
//!
//! | bytes | field |
//! |---|---|
//! | 4 | segment index `i`, in clear |
//! | 1 | flags: `0x00` = more segments follow, `0x01` = final segment; any other value is invalid |
//! | 4 | `len`, plaintext length of this segment: exactly `segment size` for a non-final segment, `0..=segment size` for the final one, 0 only when it is segment 0 |
//! | `len` | AES-256-GCM ciphertext |
//! | 16 | AES-256-GCM tag |
//!
//! - **Nonce** (12 bytes): nonce prefix (7) ‖ segment index (4, big-endian) ‖ final flag (1:
//!   `0x00` or `0x01`).
//! - **AAD** (41 bytes): SHA-256 of the complete header bytes (32) ‖ the 9-byte segment prefix
//!   above (index, flags, length).
//!
//! Every envelope ends with exactly one final segment, so even an empty recording produces one
//! (empty) final segment, and a plaintext whose length is a multiple of the segment size ends
//! with a full final segment (the writer reads one byte ahead to know).
//!
//! ## What the reader detects
//!
//! - wrong magic → [`EnvelopeError::NotAnEnvelope`]; other version → [`EnvelopeError::UnknownVersion`];
//! - the private key does not unwrap the data key → [`EnvelopeError::WrongKey`];
//! - any changed header byte (e.g. another key pair id): the header digest in every segment's
//!   AAD no longer matches → [`EnvelopeError::Tampered`] at segment 0;
//! - a segment whose stored index is not the next expected one → [`EnvelopeError::Reordered`];
//! - a segment that fails authentication → [`EnvelopeError::Tampered`];
//! - end of input before the final segment, at a segment boundary or inside one →
//!   [`EnvelopeError::Truncated`] (a non-final segment cannot be relabelled as final: the flag
//!   is part of the nonce and the AAD);
//! - bytes after the final segment → [`EnvelopeError::TrailingData`].
//!
//! Plaintext of a segment is written out only after that segment authenticated, but a
//! truncated, reordered or tampered envelope is only known to be so when the reader reaches the
//! damage: a caller must treat the output as invalid unless `decrypt` returned `Ok`.
//!
//! Reading and writing go one segment at a time through one reused buffer, so memory use does
//! not depend on the recording's size.

use std::io::{ErrorKind, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use zeroize::Zeroizing;

/// Plaintext bytes per segment.
pub const SEGMENT_SIZE: usize = 64 * 1024;

/// The only format version this code writes and reads.
pub const VERSION: u8 = 1;

const MAGIC: &[u8; 6] = b"KEKREC";
const MAX_KEY_PAIR_ID_LEN: usize = 1024;
/// The wrapped key is an RSA-OAEP ciphertext, exactly the modulus length: 256 bytes for the
/// smallest RSA key the format takes (2048 bits), 1024 for the largest (8192 bits).
const MIN_WRAPPED_KEY_LEN: usize = 256;
const MAX_WRAPPED_KEY_LEN: usize = 1024;
const NONCE_PREFIX_LEN: usize = 7;
const DATA_KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Segment index (4) ‖ flags (1) ‖ plaintext length (4).
const SEGMENT_PREFIX_LEN: usize = 9;
const HEADER_DIGEST_LEN: usize = 32;
const FLAG_MORE: u8 = 0x00;
const FLAG_FINAL: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("I/O error while streaming the recording envelope: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the input is not a kekeeper recording envelope (it does not start with the KEKREC magic)"
    )]
    NotAnEnvelope,
    #[error(
        "the recording envelope has format version {0}, which this kekeeper cannot read (it reads version 1); upgrade kekeeper"
    )]
    UnknownVersion(u8),
    #[error("the recording envelope header is malformed: {0}")]
    MalformedHeader(&'static str),
    #[error(
        "the key pair id must be 1 to 1024 bytes of UTF-8, got {len} bytes; it is stored in the envelope header"
    )]
    InvalidKeyPairId { len: usize },
    #[error(
        "the public key is not a usable RSA SubjectPublicKeyInfo (DER) key of 2048 to 8192 bits"
    )]
    InvalidPublicKey,
    #[error("the private key is not a usable RSA PKCS#8 (DER) key of 2048 to 8192 bits")]
    InvalidPrivateKey,
    #[error(
        "the private key does not unwrap this recording's data key: it is not the private key of the key pair named in the header, or the header was altered"
    )]
    WrongKey,
    #[error(
        "segment {segment} of the recording failed authentication: the recording or its header was altered or corrupted, and its content cannot be trusted"
    )]
    Tampered { segment: u64 },
    #[error(
        "the recording ends before its final segment: the file was truncated (e.g. an interrupted upload or copy), and the plaintext written so far is incomplete"
    )]
    Truncated,
    #[error(
        "segment {found} of the recording appears where segment {expected} belongs: segments were reordered, duplicated or removed"
    )]
    Reordered { expected: u64, found: u64 },
    #[error(
        "unexpected data after the final segment of the recording: the file was altered or two files were concatenated"
    )]
    TrailingData,
    #[error(
        "the recording is too large for one envelope (more than 2^32 segments of 64 KiB, 256 TiB)"
    )]
    TooLarge,
    #[error("the cryptographic library failed to {operation}")]
    Crypto { operation: &'static str },
}

/// The envelope header. The wrapped data key is RSA ciphertext, not key material, but it is kept
/// private: only this module interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub key_pair_id: String,
    wrapped_key: Vec<u8>,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    segment_size: u32,
    /// SHA-256 of the encoded header, bound into every segment's AAD.
    digest: [u8; HEADER_DIGEST_LEN],
}

impl Header {
    /// Reads exactly the header bytes from `input`, leaving it positioned at the first segment
    /// for [`decrypt`].
    pub fn read_from<R: Read>(input: &mut R) -> Result<Header, EnvelopeError> {
        let mut magic = [0u8; MAGIC.len()];
        read_exact_or(input, &mut magic, EnvelopeError::NotAnEnvelope)?;
        if &magic != MAGIC {
            return Err(EnvelopeError::NotAnEnvelope);
        }
        let mut version = [0u8; 1];
        read_exact_or(input, &mut version, EnvelopeError::Truncated)?;
        if version[0] != VERSION {
            return Err(EnvelopeError::UnknownVersion(version[0]));
        }

        let id = read_length_prefixed(
            input,
            1..=MAX_KEY_PAIR_ID_LEN,
            "key pair id length is 0 or above 1024",
        )?;
        // Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
        let key_pair_id = String::from_utf8(id)
            .map_err(|_| EnvelopeError::MalformedHeader("key pair id is not UTF-8"))?;
        let wrapped_key = read_length_prefixed(
            input,
            MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN,
            "wrapped key length is below 256 (an RSA key under 2048 bits) or above 1024",
        )?;

        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        read_exact_or(input, &mut nonce_prefix, EnvelopeError::Truncated)?;
        let mut segment_size = [0u8; 4];
        read_exact_or(input, &mut segment_size, EnvelopeError::Truncated)?;
        let segment_size = u32::from_be_bytes(segment_size);
        if segment_size as usize != SEGMENT_SIZE {
            return Err(EnvelopeError::MalformedHeader(
                "segment size is not 65536, the only size of format version 1",
            ));
        }

        Ok(Header::new(
            key_pair_id,
            wrapped_key,
            nonce_prefix,
            segment_size,
        ))
    }

    fn new(
        key_pair_id: String,
        wrapped_key: Vec<u8>,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        segment_size: u32,
    ) -> Header {
        let mut header = Header {
            version: VERSION,
            key_pair_id,
            wrapped_key,
            nonce_prefix,
            segment_size,
            digest: [0; HEADER_DIGEST_LEN],
        };
        let encoded = header.encode();
        header
            .digest
            .copy_from_slice(digest(&SHA256, &encoded).as_ref());
        header
    }

    /// The header bytes exactly as written. Lengths were bounded when the header was built or
    /// read, so the `as u16` casts cannot truncate.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            MAGIC.len() + 1 + 2 + self.key_pair_id.len() + 2 + self.wrapped_key.len() + 7 + 4,
        );
        out.extend_from_slice(MAGIC);
        out.push(self.version);
        out.extend_from_slice(&(self.key_pair_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.key_pair_id.as_bytes());
        out.extend_from_slice(&(self.wrapped_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(&self.nonce_prefix);
        out.extend_from_slice(&self.segment_size.to_be_bytes());
        out
    }

    /// Nonce and AAD of one segment; `prefix` is the segment's 9-byte clear prefix.
    fn segment_nonce_and_aad(
        &self,
        index: u32,
        is_final: bool,
        prefix: &[u8],
    ) -> (Nonce, [u8; HEADER_DIGEST_LEN + SEGMENT_PREFIX_LEN]) {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..NONCE_LEN - 1].copy_from_slice(&index.to_be_bytes());
        nonce[NONCE_LEN - 1] = if is_final { FLAG_FINAL } else { FLAG_MORE };
        let mut aad = [0u8; HEADER_DIGEST_LEN + SEGMENT_PREFIX_LEN];
        aad[..HEADER_DIGEST_LEN].copy_from_slice(&self.digest);
        aad[HEADER_DIGEST_LEN..].copy_from_slice(prefix);
        (Nonce::assume_unique_for_key(nonce), aad)
    }
}

/// Encrypts `input` to `output` under a fresh AES-256-GCM data key wrapped with RSA-OAEP-SHA256
/// under `public_key_der` (SubjectPublicKeyInfo DER). Returns plaintext bytes written.
pub fn encrypt<R: Read, W: Write>(
    public_key_der: &[u8],
    key_pair_id: &str,
    mut input: R,
    mut output: W,
) -> Result<u64, EnvelopeError> {
    if key_pair_id.is_empty() || key_pair_id.len() > MAX_KEY_PAIR_ID_LEN {
        return Err(EnvelopeError::InvalidKeyPairId {
            len: key_pair_id.len(),
        });
    }
    let public_key = PublicEncryptingKey::from_der(public_key_der)
        .map_err(|_| EnvelopeError::InvalidPublicKey)?;
    let public_key =
        OaepPublicEncryptingKey::new(public_key).map_err(|_| EnvelopeError::InvalidPublicKey)?;

    let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    random(data_key.as_mut_slice())?;
    let mut wrapped_key = vec![0u8; public_key.ciphertext_size()];
    let wrapped_len = public_key
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            data_key.as_slice(),
            &mut wrapped_key,
            None,
        )
        .map_err(|_| EnvelopeError::Crypto {
            operation: "wrap the data key with RSA-OAEP",
        })?
        .len();
    wrapped_key.truncate(wrapped_len);
    if !(MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&wrapped_key.len()) {
        // The library takes 2048 to 8192 bits only; checked again because the header's bounds
        // depend on it.
        return Err(EnvelopeError::InvalidPublicKey);
    }
    let key = aead_key(data_key.as_slice())?;
    drop(data_key);

    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    random(&mut nonce_prefix)?;
    let header = Header::new(
        key_pair_id.to_owned(),
        wrapped_key,
        nonce_prefix,
        SEGMENT_SIZE as u32,
    );
    output.write_all(&header.encode())?;

    // One frame buffer, reused: [clear prefix | plaintext → ciphertext | tag]. The byte after
    // the plaintext (the first tag byte) doubles as the one-byte read-ahead that tells a full
    // segment from the final one.
    let data_start = SEGMENT_PREFIX_LEN;
    let data_end = data_start + SEGMENT_SIZE;
    let mut frame = vec![0u8; data_end + TAG_LEN];
    let mut carried = 0usize; // 1 when the read-ahead byte has been moved to the data start
    let mut total: u64 = 0;
    let mut index: u32 = 0;
    loop {
        let filled = carried + read_full(&mut input, &mut frame[data_start + carried..data_end])?;
        let is_final = filled < SEGMENT_SIZE
            || read_full(&mut input, &mut frame[data_end..data_end + 1])? == 0;

        frame[0..4].copy_from_slice(&index.to_be_bytes());
        frame[4] = if is_final { FLAG_FINAL } else { FLAG_MORE };
        frame[5..9].copy_from_slice(&(filled as u32).to_be_bytes());
        let read_ahead = frame[data_end];
        let (nonce, aad) =
            header.segment_nonce_and_aad(index, is_final, &frame[..SEGMENT_PREFIX_LEN]);
        let tag = key
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(aad),
                &mut frame[data_start..data_start + filled],
            )
            .map_err(|_| EnvelopeError::Crypto {
                operation: "encrypt a segment with AES-256-GCM",
            })?;
        let tag_start = data_start + filled;
        frame[tag_start..tag_start + TAG_LEN].copy_from_slice(tag.as_ref());
        output.write_all(&frame[..tag_start + TAG_LEN])?;
        total += filled as u64;

        if is_final {
            break;
        }
        frame[data_start] = read_ahead;
        carried = 1;
        index = index.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
    }
    output.flush()?;
    Ok(total)
}

/// Decrypts the body after `Header::read_from` using the PKCS#8 DER private key
/// (the caller got it from KMS and zeroises it). Returns plaintext bytes written.
pub fn decrypt<R: Read, W: Write>(
    private_key_pkcs8_der: &[u8],
    header: &Header,
    mut input: R,
    mut output: W,
) -> Result<u64, EnvelopeError> {
    let private_key = PrivateDecryptingKey::from_pkcs8(private_key_pkcs8_der)
        .map_err(|_| EnvelopeError::InvalidPrivateKey)?;
    let private_key =
        OaepPrivateDecryptingKey::new(private_key).map_err(|_| EnvelopeError::InvalidPrivateKey)?;
    // RSA-OAEP ciphertext is exactly the modulus length; anything else is not this key's
    // wrap (docs/envelope.md#key-wrapping).
    if header.wrapped_key.len() != private_key.key_size_bytes() {
        return Err(EnvelopeError::WrongKey);
    }
    let mut unwrapped = Zeroizing::new(vec![0u8; private_key.min_output_size()]);
    let data_key = private_key
        .decrypt(
            &OAEP_SHA256_MGF1SHA256,
            &header.wrapped_key,
            &mut unwrapped,
            None,
        )
        .map_err(|_| EnvelopeError::WrongKey)?;
    if data_key.len() != DATA_KEY_LEN {
        return Err(EnvelopeError::MalformedHeader(
            "the unwrapped data key is not 32 bytes",
        ));
    }
    let key = aead_key(data_key)?;
    drop(unwrapped);
    drop(private_key);

    let segment_size = header.segment_size as usize;
    // Recording plaintext passes through this buffer; wipe it when done.
    let mut frame = Zeroizing::new(vec![0u8; SEGMENT_PREFIX_LEN + segment_size + TAG_LEN]);
    let mut total: u64 = 0;
    let mut index: u32 = 0;
    loop {
        let segment = u64::from(index);
        read_exact_or(
            &mut input,
            &mut frame[..SEGMENT_PREFIX_LEN],
            EnvelopeError::Truncated,
        )?;
        let stored_index = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if stored_index != index {
            return Err(EnvelopeError::Reordered {
                expected: segment,
                found: u64::from(stored_index),
            });
        }
        let is_final = match frame[4] {
            FLAG_MORE => false,
            FLAG_FINAL => true,
            _ => return Err(EnvelopeError::Tampered { segment }),
        };
        let len = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) as usize;
        // One segmentation per plaintext: only an empty recording has an empty final segment
        // (a full segment is final when the input ends with it).
        if len > segment_size
            || (!is_final && len != segment_size)
            || (is_final && len == 0 && index > 0)
        {
            return Err(EnvelopeError::Tampered { segment });
        }
        let body = &mut frame[..SEGMENT_PREFIX_LEN + len + TAG_LEN];
        read_exact_or(
            &mut input,
            &mut body[SEGMENT_PREFIX_LEN..],
            EnvelopeError::Truncated,
        )?;
        let (prefix, sealed) = body.split_at_mut(SEGMENT_PREFIX_LEN);
        let (nonce, aad) = header.segment_nonce_and_aad(index, is_final, prefix);
        let plaintext = key
            .open_in_place(nonce, Aad::from(aad), sealed)
            .map_err(|_| EnvelopeError::Tampered { segment })?;
        output.write_all(plaintext)?;
        total += plaintext.len() as u64;

        if is_final {
            break;
        }
        index = index.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
    }
    let mut probe = [0u8; 1];
    if read_full(&mut input, &mut probe)? != 0 {
        return Err(EnvelopeError::TrailingData);
    }
    output.flush()?;
    Ok(total)
}

fn aead_key(data_key: &[u8]) -> Result<LessSafeKey, EnvelopeError> {
    UnboundKey::new(&AES_256_GCM, data_key)
        .map(LessSafeKey::new)
        .map_err(|_| EnvelopeError::Crypto {
            operation: "set up the AES-256-GCM data key",
        })
}

fn random(dest: &mut [u8]) -> Result<(), EnvelopeError> {
    aws_lc_rs::rand::fill(dest).map_err(|_| EnvelopeError::Crypto {
        operation: "generate random bytes",
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, EnvelopeError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// Fills `buf` exactly; an input that ends first is reported as `on_eof`.
fn read_exact_or<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    on_eof: EnvelopeError,
) -> Result<(), EnvelopeError> {
    if read_full(input, buf)? == buf.len() {
        Ok(())
    } else {
        Err(on_eof)
    }
}

fn read_length_prefixed<R: Read>(
    input: &mut R,
    allowed: std::ops::RangeInclusive<usize>,
    invalid_length: &'static str,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut len = [0u8; 2];
    read_exact_or(input, &mut len, EnvelopeError::Truncated)?;
    let len = usize::from(u16::from_be_bytes(len));
    if !allowed.contains(&len) {
        return Err(EnvelopeError::MalformedHeader(invalid_length));
    }
    let mut value = vec![0u8; len];
    read_exact_or(input, &mut value, EnvelopeError::Truncated)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::KeySize;
    use std::io::Cursor;
    use std::sync::OnceLock;

    const FULL_FRAME: usize = SEGMENT_PREFIX_LEN + SEGMENT_SIZE + TAG_LEN;
    const KEY_PAIR_ID: &str = "kp-3fa85f64-0001";

    struct TestKeyPair {
        public_der: Vec<u8>,
        private_pkcs8: Vec<u8>,
    }

    fn generate_key_pair() -> TestKeyPair {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let public_der = private.public_key().as_der().unwrap().as_ref().to_vec();
        let private_pkcs8 = private.as_der().unwrap().as_ref().to_vec();
        TestKeyPair {
            public_der,
            private_pkcs8,
        }
    }

    /// RSA key generation is slow; most tests share one pair.
    fn key_pair() -> &'static TestKeyPair {
        static KEY_PAIR: OnceLock<TestKeyPair> = OnceLock::new();
        KEY_PAIR.get_or_init(generate_key_pair)
    }

    /// Deterministic, non-repeating-per-segment test data.
    fn plaintext(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
            .collect()
    }

    fn seal(plain: &[u8]) -> Vec<u8> {
        let mut sealed = Vec::new();
        let written = encrypt(&key_pair().public_der, KEY_PAIR_ID, plain, &mut sealed).unwrap();
        assert_eq!(written, plain.len() as u64);
        sealed
    }

    fn header_len(sealed: &[u8]) -> usize {
        let mut cursor = Cursor::new(sealed);
        Header::read_from(&mut cursor).unwrap();
        cursor.position() as usize
    }

    fn open_with(private_pkcs8: &[u8], sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut input = sealed;
        let header = Header::read_from(&mut input)?;
        let mut plain = Vec::new();
        let written = decrypt(private_pkcs8, &header, input, &mut plain)?;
        assert_eq!(written, plain.len() as u64);
        Ok(plain)
    }

    fn open(sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        open_with(&key_pair().private_pkcs8, sealed)
    }

    fn assert_round_trip(len: usize) {
        let plain = plaintext(len);
        let sealed = seal(&plain);
        // A multiple of the segment size ends with a full final segment; empty input has one.
        let segments = len.div_ceil(SEGMENT_SIZE).max(1);
        let expected_len = header_len(&sealed) + len + segments * (SEGMENT_PREFIX_LEN + TAG_LEN);
        assert_eq!(sealed.len(), expected_len, "envelope size for {len} bytes");
        assert!(open(&sealed).unwrap() == plain, "round trip of {len} bytes");
    }

    #[test]
    fn round_trips_empty_input_as_one_empty_final_segment() {
        assert_round_trip(0);
        let sealed = seal(&[]);
        let body = &sealed[header_len(&sealed)..];
        assert_eq!(body.len(), SEGMENT_PREFIX_LEN + TAG_LEN);
        assert_eq!(
            &body[..SEGMENT_PREFIX_LEN],
            &[0, 0, 0, 0, FLAG_FINAL, 0, 0, 0, 0]
        );
    }

    #[test]
    fn round_trips_around_segment_boundaries() {
        for len in [
            1,
            SEGMENT_SIZE - 1,
            SEGMENT_SIZE,
            SEGMENT_SIZE + 1,
            2 * SEGMENT_SIZE,
        ] {
            assert_round_trip(len);
        }
    }

    #[test]
    fn round_trips_10_mib() {
        assert_round_trip(10 * 1024 * 1024);
    }

    #[test]
    fn round_trips_through_a_reader_that_returns_short_reads() {
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let plain = plaintext(3 * SEGMENT_SIZE + 17);
        let mut sealed = Vec::new();
        encrypt(
            &key_pair().public_der,
            KEY_PAIR_ID,
            Dribble(&plain),
            &mut sealed,
        )
        .unwrap();
        let mut input = Dribble(&sealed);
        let header = Header::read_from(&mut input).unwrap();
        let mut out = Vec::new();
        decrypt(&key_pair().private_pkcs8, &header, input, &mut out).unwrap();
        assert!(out == plain);
    }

    #[test]
    fn header_names_the_key_pair_and_version() {
        let sealed = seal(b"hello");
        let header = Header::read_from(&mut &sealed[..]).unwrap();
        assert_eq!(header.version, 1);
        assert_eq!(header.key_pair_id, KEY_PAIR_ID);
        assert_eq!(&sealed[..7], b"KEKREC\x01");
    }

    #[test]
    fn wrong_private_key_is_wrong_key() {
        let sealed = seal(b"call recording");
        let other = generate_key_pair();
        let err = open_with(&other.private_pkcs8, &sealed).unwrap_err();
        assert!(matches!(err, EnvelopeError::WrongKey), "{err:?}");
    }

    #[test]
    fn flipped_body_byte_is_tampered() {
        let mut sealed = seal(&plaintext(2 * SEGMENT_SIZE + 10));
        let second_segment_data = header_len(&sealed) + FULL_FRAME + SEGMENT_PREFIX_LEN + 100;
        sealed[second_segment_data] ^= 0x01;
        let err = open(&sealed).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 1 }),
            "{err:?}"
        );
    }

    #[test]
    fn flipped_tag_byte_is_tampered() {
        let mut sealed = seal(b"short");
        let last = sealed.len() - 1;
        sealed[last] ^= 0x80;
        let err = open(&sealed).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 0 }),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_at_segment_boundary_is_truncated() {
        let sealed = seal(&plaintext(2 * SEGMENT_SIZE + 10));
        let after_first_segment = header_len(&sealed) + FULL_FRAME;
        let err = open(&sealed[..after_first_segment]).unwrap_err();
        assert!(matches!(err, EnvelopeError::Truncated), "{err:?}");
        let after_second_segment = after_first_segment + FULL_FRAME;
        let err = open(&sealed[..after_second_segment]).unwrap_err();
        assert!(matches!(err, EnvelopeError::Truncated), "{err:?}");
        let header_only = header_len(&sealed);
        let err = open(&sealed[..header_only]).unwrap_err();
        assert!(matches!(err, EnvelopeError::Truncated), "{err:?}");
    }

    #[test]
    fn truncated_mid_segment_is_truncated() {
        let sealed = seal(&plaintext(2 * SEGMENT_SIZE + 10));
        let start = header_len(&sealed);
        for cut in [start + 4, start + FULL_FRAME / 2, sealed.len() - 1] {
            let err = open(&sealed[..cut]).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::Truncated),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_header_is_truncated() {
        let sealed = seal(b"x");
        let err = Header::read_from(&mut &sealed[..20]).unwrap_err();
        assert!(matches!(err, EnvelopeError::Truncated), "{err:?}");
    }

    #[test]
    fn non_final_segment_relabelled_final_is_tampered() {
        let mut sealed = seal(&plaintext(2 * SEGMENT_SIZE + 10));
        let start = header_len(&sealed);
        sealed[start + 4] = FLAG_FINAL;
        sealed.truncate(start + FULL_FRAME);
        let err = open(&sealed).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 0 }),
            "{err:?}"
        );
    }

    #[test]
    fn swapped_segments_are_reordered() {
        let mut sealed = seal(&plaintext(3 * SEGMENT_SIZE + 10));
        let start = header_len(&sealed);
        let (first, rest) = sealed[start..].split_at_mut(FULL_FRAME);
        first.swap_with_slice(&mut rest[..FULL_FRAME]);
        let err = open(&sealed).unwrap_err();
        assert!(
            matches!(
                err,
                EnvelopeError::Reordered {
                    expected: 0,
                    found: 1
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn relabelled_segment_index_is_tampered() {
        // Segments 0 and 1 swapped and their clear indexes rewritten to look in order: the
        // nonce still differs, so authentication fails.
        let mut sealed = seal(&plaintext(3 * SEGMENT_SIZE + 10));
        let start = header_len(&sealed);
        let (first, rest) = sealed[start..].split_at_mut(FULL_FRAME);
        first.swap_with_slice(&mut rest[..FULL_FRAME]);
        sealed[start..start + 4].copy_from_slice(&0u32.to_be_bytes());
        sealed[start + FULL_FRAME..start + FULL_FRAME + 4].copy_from_slice(&1u32.to_be_bytes());
        let err = open(&sealed).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 0 }),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut sealed = seal(b"x");
        sealed[6] = 2;
        let err = open(&sealed).unwrap_err();
        assert!(matches!(err, EnvelopeError::UnknownVersion(2)), "{err:?}");
    }

    #[test]
    fn bad_magic_is_not_an_envelope() {
        let mut sealed = seal(b"x");
        sealed[0] = b'X';
        let err = open(&sealed).unwrap_err();
        assert!(matches!(err, EnvelopeError::NotAnEnvelope), "{err:?}");
        let err = open(b"KEK").unwrap_err();
        assert!(matches!(err, EnvelopeError::NotAnEnvelope), "{err:?}");
        let err = open(b"").unwrap_err();
        assert!(matches!(err, EnvelopeError::NotAnEnvelope), "{err:?}");
    }

    #[test]
    fn trailing_bytes_are_trailing_data() {
        let mut sealed = seal(&plaintext(SEGMENT_SIZE + 1));
        sealed.push(0);
        let err = open(&sealed).unwrap_err();
        assert!(matches!(err, EnvelopeError::TrailingData), "{err:?}");
    }

    #[test]
    fn changed_key_pair_id_is_detected() {
        let sealed = seal(&plaintext(100));
        // Same length: only the id's bytes differ.
        let mut swapped = sealed.clone();
        let id_start = 6 + 1 + 2;
        swapped[id_start + KEY_PAIR_ID.len() - 1] ^= 0x01;
        let err = open(&swapped).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 0 }),
            "{err:?}"
        );

        // A different length: the header is re-encoded around another id.
        let mut input = &sealed[..];
        let header = Header::read_from(&mut input).unwrap();
        let forged = Header::new(
            "kp-someone-else".to_owned(),
            header.wrapped_key.clone(),
            header.nonce_prefix,
            header.segment_size,
        );
        let mut reassembled = forged.encode();
        reassembled.extend_from_slice(input);
        let err = open(&reassembled).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 0 }),
            "{err:?}"
        );
    }

    #[test]
    fn changed_nonce_prefix_is_tampered() {
        let mut sealed = seal(b"x");
        let prefix_at = header_len(&sealed) - 4 - NONCE_PREFIX_LEN;
        sealed[prefix_at] ^= 0x01;
        let err = open(&sealed).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { segment: 0 }),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_keys_and_ids_are_rejected() {
        let err = encrypt(b"not a key", KEY_PAIR_ID, &b""[..], Vec::new()).unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidPublicKey), "{err:?}");
        let err = encrypt(&key_pair().public_der, "", &b""[..], Vec::new()).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::InvalidKeyPairId { len: 0 }),
            "{err:?}"
        );
        let sealed = seal(b"x");
        let err = open_with(b"not a key", &sealed).unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidPrivateKey), "{err:?}");
    }

    #[test]
    fn each_envelope_has_its_own_data_key_and_nonce_prefix() {
        let a = seal(b"same plaintext");
        let b = seal(b"same plaintext");
        assert_ne!(a, b);
    }

    #[test]
    fn error_messages_say_what_happened_without_key_material() {
        let sealed = seal(b"x");
        let other = generate_key_pair();
        let message = open_with(&other.private_pkcs8, &sealed)
            .unwrap_err()
            .to_string();
        assert!(message.contains("private key does not unwrap"), "{message}");
        let header = Header::read_from(&mut &sealed[..]).unwrap();
        let wrapped_hex: String = header.wrapped_key[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!message.to_lowercase().contains(&wrapped_hex));
        let message = EnvelopeError::Reordered {
            expected: 3,
            found: 5,
        }
        .to_string();
        assert!(
            message.contains("segment 5") && message.contains("segment 3"),
            "{message}"
        );
    }
}
