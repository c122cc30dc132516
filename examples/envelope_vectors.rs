//! Writes the recording envelope's test vectors (docs/envelope.md#test-vectors):
//!
//! ```text
//! cargo run --example envelope_vectors -- tests/vectors/envelope
//! ```
//!
//! The envelopes are made by kekeeper's own `envelope::encrypt`. It draws the data key and the
//! nonce prefix from the system random generator and takes no injected randomness, so every run
//! writes different (equally valid) envelopes: the vectors were generated once and committed,
//! and this program is run again only when the format changes. The test key pair is kept when
//! `vector-private-key.pem` already exists in the folder, and generated otherwise.
//!
//! The must-reject cases are byte edits of the valid envelopes, made here so that each one is
//! exactly the damage its name says.

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kekeeper::envelope::{self, SEGMENT_SIZE};
use kekeeper::keypair::{fingerprint, public_key_pem};
use serde_json::{Value, json};

const KEY_PAIR_ID: &str = "0b7e5c1a-9d2f-4e8b-a6c3-5f1d2e3c4b5a";
const PRIVATE_KEY_FILE: &str = "vector-private-key.pem";
const PUBLIC_KEY_FILE: &str = "vector-public-key.pem";
/// Segment prefix: index (4) ‖ flags (1) ‖ length (4).
const PREFIX: usize = 9;
const TAG: usize = 16;
const FULL_FRAME: usize = PREFIX + SEGMENT_SIZE + TAG;

/// (name, plaintext length, description)
const VALID: &[(&str, usize, &str)] = &[
    ("empty", 0, "empty recording: one empty final segment"),
    ("one-byte", 1, "one byte: one final segment of length 1"),
    (
        "one-full-segment",
        SEGMENT_SIZE,
        "exactly 65536 bytes: one full final segment (no empty segment after it)",
    ),
    (
        "several-segments",
        2 * SEGMENT_SIZE + 1000,
        "two full segments and a final segment of 1000 bytes",
    ),
];

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/vectors/envelope".to_owned()),
    );
    fs::create_dir_all(dir.join("valid")).expect("create valid/");
    fs::create_dir_all(dir.join("reject")).expect("create reject/");
    let private_der = private_key(&dir);
    let private = PrivateDecryptingKey::from_pkcs8(&private_der).expect("PKCS#8 RSA key");
    let public_der = private
        .public_key()
        .as_der()
        .expect("public key DER")
        .as_ref()
        .to_vec();
    fs::write(dir.join(PUBLIC_KEY_FILE), public_key_pem(&public_der)).expect("write public key");
    let oaep = OaepPrivateDecryptingKey::new(private).expect("OAEP key");

    let mut valid = Vec::new();
    let mut sealed_by_name = Vec::new();
    for &(name, len, description) in VALID {
        let plain = plaintext(len);
        let mut sealed = Vec::new();
        envelope::encrypt(&public_der, KEY_PAIR_ID, &plain[..], &mut sealed).expect("encrypt");
        let plaintext_file = format!("valid/{name}.plain");
        let envelope_file = format!("valid/{name}.kekrec");
        fs::write(dir.join(&plaintext_file), &plain).expect("write plaintext");
        fs::write(dir.join(&envelope_file), &sealed).expect("write envelope");
        let header = parse_header(&sealed);
        let mut data_key = vec![0u8; oaep.min_output_size()];
        let data_key = oaep
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                header.wrapped_key,
                &mut data_key,
                None,
            )
            .expect("unwrap the data key")
            .to_vec();
        valid.push(json!({
            "name": name,
            "description": description,
            "plaintext": plaintext_file,
            "envelope": envelope_file,
            "plaintext_length": len,
            "plaintext_sha256": hex(digest(&SHA256, &plain).as_ref()),
            "segments": len.div_ceil(SEGMENT_SIZE).max(1),
            "header_length": header.len,
            "header_sha256": hex(digest(&SHA256, &sealed[..header.len]).as_ref()),
            "nonce_prefix": hex(header.nonce_prefix),
            "data_key": hex(&data_key),
        }));
        sealed_by_name.push((name, sealed));
    }
    let base = |name: &str| -> Vec<u8> {
        sealed_by_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .expect("base envelope")
    };

    let one = base("one-byte");
    let one_header = parse_header(&one).len;
    let several = base("several-segments");
    let several_header = parse_header(&several).len;
    let id_at = 6 + 1 + 2;

    let mut reject: Vec<(&str, &str, &str, &str, Vec<u8>)> = Vec::new();
    let mut add = |name, base, error, description, bytes| {
        reject.push((name, base, error, description, bytes));
    };
    add(
        "empty-file",
        "-",
        "not_an_envelope",
        "zero bytes",
        Vec::new(),
    );
    add(
        "bad-magic",
        "one-byte",
        "not_an_envelope",
        "first magic byte changed from K to X",
        edit(&one, |e| e[0] = b'X'),
    );
    add(
        "wrong-version",
        "one-byte",
        "unknown_version",
        "version byte changed from 1 to 2",
        edit(&one, |e| e[6] = 2),
    );
    add(
        "truncated-in-header",
        "one-byte",
        "truncated",
        "only the first 20 bytes (inside the key pair id)",
        one[..20].to_vec(),
    );
    add(
        "zero-key-pair-id-length",
        "one-byte",
        "malformed_header",
        "key pair id length set to 0",
        edit(&one, |e| e[7..9].copy_from_slice(&[0, 0])),
    );
    add(
        "bad-segment-size",
        "one-byte",
        "malformed_header",
        "segment size field set to 65535",
        edit(&one, |e| {
            e[one_header - 4..one_header].copy_from_slice(&65_535u32.to_be_bytes())
        }),
    );
    add(
        "corrupted-wrapped-key",
        "one-byte",
        "wrong_key",
        "a bit of the wrapped data key flipped: RSA-OAEP decryption fails",
        edit(&one, |e| e[id_at + KEY_PAIR_ID.len() + 2 + 10] ^= 0x01),
    );
    add(
        "changed-key-pair-id",
        "one-byte",
        "tampered",
        "last character of the key pair id changed: the header digest in the AAD no longer matches",
        edit(&one, |e| e[id_at + KEY_PAIR_ID.len() - 1] ^= 0x01),
    );
    add(
        "changed-nonce-prefix",
        "one-byte",
        "tampered",
        "a bit of the nonce prefix flipped",
        edit(&one, |e| e[one_header - 4 - 7] ^= 0x01),
    );
    add(
        "truncated-header-only",
        "one-byte",
        "truncated",
        "the header and no segment",
        one[..one_header].to_vec(),
    );
    add(
        "truncated-in-segment-prefix",
        "one-byte",
        "truncated",
        "the header and the first 4 bytes of segment 0",
        one[..one_header + 4].to_vec(),
    );
    add(
        "truncated-mid-segment",
        "one-byte",
        "truncated",
        "the last byte (of the final segment's tag) removed",
        one[..one.len() - 1].to_vec(),
    );
    add(
        "flipped-tag-bit",
        "one-byte",
        "tampered",
        "top bit of the final segment's last tag byte flipped",
        edit(&one, |e| {
            let last = e.len() - 1;
            e[last] ^= 0x80
        }),
    );
    add(
        "flipped-ciphertext-bit",
        "one-byte",
        "tampered",
        "lowest bit of the one ciphertext byte flipped",
        edit(&one, |e| e[one_header + PREFIX] ^= 0x01),
    );
    add(
        "unknown-flag",
        "one-byte",
        "tampered",
        "flags byte of segment 0 set to 0x02",
        edit(&one, |e| e[one_header + 4] = 0x02),
    );
    add(
        "final-length-too-large",
        "one-byte",
        "tampered",
        "length of the final segment set to 65537",
        edit(&one, |e| {
            e[one_header + 5..one_header + 9].copy_from_slice(&65_537u32.to_be_bytes())
        }),
    );
    add(
        "trailing-data",
        "one-byte",
        "trailing_data",
        "one zero byte appended after the final segment",
        edit(&one, |e| e.push(0)),
    );
    add(
        "truncated-at-segment-boundary",
        "several-segments",
        "truncated",
        "the header and segment 0 only (a full, non-final segment)",
        several[..several_header + FULL_FRAME].to_vec(),
    );
    add(
        "non-final-relabelled-final",
        "several-segments",
        "tampered",
        "segment 0 only, its flags byte changed to final (0x01): the flag is in the nonce and the AAD",
        edit(&several[..several_header + FULL_FRAME], |e| {
            e[several_header + 4] = 0x01
        }),
    );
    add(
        "reordered-segments",
        "several-segments",
        "reordered",
        "segments 0 and 1 swapped",
        swap_first_two(&several, several_header),
    );
    add(
        "reordered-segments-renumbered",
        "several-segments",
        "tampered",
        "segments 0 and 1 swapped and their clear indexes rewritten to 0 and 1: the index is in the nonce",
        edit(&swap_first_two(&several, several_header), |e| {
            e[several_header..several_header + 4].copy_from_slice(&0u32.to_be_bytes());
            let second = several_header + FULL_FRAME;
            e[second..second + 4].copy_from_slice(&1u32.to_be_bytes());
        }),
    );

    let reject: Vec<Value> = reject
        .into_iter()
        .map(|(name, base, error, description, bytes)| {
            let file = format!("reject/{name}.kekrec");
            fs::write(dir.join(&file), &bytes).expect("write reject case");
            json!({
                "name": name,
                "description": description,
                "derived_from": if base == "-" { Value::Null } else { json!(base) },
                "envelope": file,
                "error": error,
            })
        })
        .collect();

    let index = json!({
        "format": "kekeeper recording envelope",
        "version": 1,
        "documentation": "docs/envelope.md",
        "generated_by": "cargo run --example envelope_vectors -- tests/vectors/envelope",
        "key_pair_id": KEY_PAIR_ID,
        "private_key": PRIVATE_KEY_FILE,
        "public_key": PUBLIC_KEY_FILE,
        "public_key_fingerprint": fingerprint(&public_der),
        "segment_size": SEGMENT_SIZE,
        "plaintext_pattern": "byte i = the top byte of (i * 2654435761) mod 2^32",
        "valid": valid,
        "reject": reject,
    });
    let mut text = serde_json::to_string_pretty(&index).expect("index JSON");
    text.push('\n');
    fs::write(dir.join("index.json"), text).expect("write index.json");
    println!("wrote the envelope test vectors to {}", dir.display());
}

/// The vector key pair's PKCS#8 DER: read from the folder, or generated (RSA-3072, the default
/// key pair spec) and written there.
fn private_key(dir: &Path) -> Vec<u8> {
    let path = dir.join(PRIVATE_KEY_FILE);
    if let Ok(pem) = fs::read_to_string(&path) {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        return STANDARD
            .decode(body)
            .expect("base64 in the private key PEM");
    }
    let key = PrivateDecryptingKey::generate(KeySize::Rsa3072).expect("generate RSA-3072");
    let der = key.as_der().expect("PKCS#8").as_ref().to_vec();
    let mut pem = String::from(
        "This RSA private key is published for the envelope test vectors only.\n\
         It protects nothing: never use it for recordings.\n\
         -----BEGIN PRIVATE KEY-----\n",
    );
    for line in STANDARD.encode(&der).as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    fs::write(&path, pem).expect("write private key");
    der
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

struct ParsedHeader<'a> {
    len: usize,
    wrapped_key: &'a [u8],
    nonce_prefix: &'a [u8],
}

/// The header laid out as docs/envelope.md#header says (the envelope was just written by
/// kekeeper, so it is well formed).
fn parse_header(sealed: &[u8]) -> ParsedHeader<'_> {
    let u16_at = |at: usize| usize::from(u16::from_be_bytes([sealed[at], sealed[at + 1]]));
    let id_len = u16_at(7);
    let wrapped_at = 9 + id_len;
    let wrapped_len = u16_at(wrapped_at);
    let nonce_at = wrapped_at + 2 + wrapped_len;
    ParsedHeader {
        len: nonce_at + 7 + 4,
        wrapped_key: &sealed[wrapped_at + 2..nonce_at],
        nonce_prefix: &sealed[nonce_at..nonce_at + 7],
    }
}

fn edit(bytes: &[u8], change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    change(&mut bytes);
    bytes
}

/// Segments 0 and 1 of an envelope whose first two segments are full, swapped.
fn swap_first_two(sealed: &[u8], header_len: usize) -> Vec<u8> {
    let mut out = sealed[..header_len].to_vec();
    let first = &sealed[header_len..header_len + FULL_FRAME];
    let second = &sealed[header_len + FULL_FRAME..header_len + 2 * FULL_FRAME];
    out.extend_from_slice(second);
    out.extend_from_slice(first);
    out.extend_from_slice(&sealed[header_len + 2 * FULL_FRAME..]);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
