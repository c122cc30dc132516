//! Writes the recording envelope's test vectors (docs/envelope.md#test-vectors):
//!
//! ```text
//! cargo run --example envelope_vectors -- tests/vectors/envelope
//! ```
//!
//! The envelopes are made by kekeeper's own `envelope::encrypt`. It draws the data key and the
//! nonce prefix from the system random generator and takes no injected randomness, so a new
//! envelope differs on every run: the valid envelopes (and the key pair,
//! `vector-private-key.pem`) already in the folder are kept, and only missing ones are made.
//! Delete the folder's files to make a new set when the format changes.
//!
//! The must-reject cases are byte edits of the valid envelopes, made here so that each one is
//! exactly the damage its name says; so a second run writes them byte for byte again. The few
//! that need a fresh RSA-OAEP wrap (random padding) are kept when they exist, as the valid
//! ones are.

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
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
        let plaintext_file = format!("valid/{name}.plain");
        let envelope_file = format!("valid/{name}.kekrec");
        let sealed = keep_or_make(&dir, &envelope_file, || {
            let mut sealed = Vec::new();
            envelope::encrypt(&public_der, KEY_PAIR_ID, &plain[..], &mut sealed).expect("encrypt");
            sealed
        });
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
        sealed_by_name.push((name, sealed, data_key));
    }
    let base = |name: &str| -> Vec<u8> {
        sealed_by_name
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, s, _)| s.clone())
            .expect("base envelope")
    };
    let several_key = sealed_by_name
        .iter()
        .find(|(n, _, _)| *n == "several-segments")
        .map(|(_, _, k)| k.clone())
        .expect("several-segments data key");

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

    // Rules added with the resolution of the page's ambiguities (issue 27): one vector each.
    let wrapped_len_at = id_at + KEY_PAIR_ID.len();
    let wrapped_at = wrapped_len_at + 2;
    let one_wrapped_len = one_header - 11 - wrapped_at;
    add(
        "short-magic",
        "-",
        "not_an_envelope",
        "the three bytes KEK: the input ends inside the magic",
        b"KEK".to_vec(),
    );
    add(
        "magic-only",
        "one-byte",
        "truncated",
        "the six bytes KEKREC: the input ends before the version",
        one[..6].to_vec(),
    );
    add(
        "key-pair-id-length-1025",
        "one-byte",
        "malformed_header",
        "key pair id length set to 1025 (above 1024)",
        edit(&one, |e| e[7..9].copy_from_slice(&1025u16.to_be_bytes())),
    );
    add(
        "key-pair-id-not-utf8",
        "one-byte",
        "malformed_header",
        "last byte of the key pair id set to 0xff, which UTF-8 never uses",
        edit(&one, |e| e[id_at + KEY_PAIR_ID.len() - 1] = 0xff),
    );
    add(
        "key-pair-id-overlong-utf8",
        "one-byte",
        "malformed_header",
        "last two bytes of the key pair id set to c0 af, an overlong encoding of '/' (not UTF-8)",
        edit(&one, |e| {
            let end = id_at + KEY_PAIR_ID.len();
            e[end - 2..end].copy_from_slice(&[0xc0, 0xaf])
        }),
    );
    add(
        "key-pair-id-surrogate",
        "one-byte",
        "malformed_header",
        "last three bytes of the key pair id set to ed a0 80, the surrogate U+D800 (not UTF-8)",
        edit(&one, |e| {
            let end = id_at + KEY_PAIR_ID.len();
            e[end - 3..end].copy_from_slice(&[0xed, 0xa0, 0x80])
        }),
    );
    add(
        "wrapped-key-length-255",
        "one-byte",
        "malformed_header",
        "wrapped key length set to 255 and the wrapped key cut to 255 bytes: below 256, an RSA key under 2048 bits",
        {
            let mut e = one[..wrapped_len_at].to_vec();
            e.extend_from_slice(&255u16.to_be_bytes());
            e.extend_from_slice(&one[wrapped_at..wrapped_at + 255]);
            e.extend_from_slice(&one[wrapped_at + one_wrapped_len..]);
            e
        },
    );
    add(
        "wrapped-key-length-1025",
        "one-byte",
        "malformed_header",
        "wrapped key length set to 1025 (above 1024)",
        edit(&one, |e| {
            e[wrapped_len_at..wrapped_at].copy_from_slice(&1025u16.to_be_bytes())
        }),
    );
    add(
        "wrapped-key-one-byte-short",
        "one-byte",
        "wrong_key",
        "the wrapped key's first byte removed and its length set to 383: not the modulus length (384) of the key",
        {
            let mut e = one[..wrapped_len_at].to_vec();
            e.extend_from_slice(&((one_wrapped_len - 1) as u16).to_be_bytes());
            e.extend_from_slice(&one[wrapped_at + 1..]);
            e
        },
    );
    add(
        "wrapped-key-leading-zero",
        "one-byte",
        "wrong_key",
        "a zero byte put before the wrapped key and its length set to 385: not the modulus length (384) of the key",
        {
            let mut e = one[..wrapped_len_at].to_vec();
            e.extend_from_slice(&((one_wrapped_len + 1) as u16).to_be_bytes());
            e.push(0);
            e.extend_from_slice(&one[wrapped_at..]);
            e
        },
    );
    add(
        "data-key-16-bytes",
        "one-byte",
        "malformed_header",
        "the wrapped key replaced by a valid RSA-OAEP wrap of a 16-byte key: it unwraps, but not to 32 bytes",
        keep_or_make(&dir, "reject/data-key-16-bytes.kekrec", || {
            let public = PublicEncryptingKey::from_der(&public_der).expect("public key");
            let public = OaepPublicEncryptingKey::new(public).expect("OAEP public key");
            let mut wrapped = vec![0u8; public.ciphertext_size()];
            let wrapped = public
                .encrypt(&OAEP_SHA256_MGF1SHA256, &[0x5a; 16], &mut wrapped, None)
                .expect("wrap 16 bytes")
                .to_vec();
            assert_eq!(wrapped.len(), one_wrapped_len);
            let mut e = one.clone();
            e[wrapped_at..wrapped_at + one_wrapped_len].copy_from_slice(&wrapped);
            e
        }),
    );
    add(
        "bad-segment-size-and-corrupted-wrapped-key",
        "one-byte",
        "malformed_header",
        "segment size set to 65535 and a bit of the wrapped key flipped: every header field is checked before the key is unwrapped",
        edit(&one, |e| {
            e[wrapped_at + 10] ^= 0x01;
            e[one_header - 4..one_header].copy_from_slice(&65_535u32.to_be_bytes())
        }),
    );
    add(
        "header-only-with-corrupted-wrapped-key",
        "one-byte",
        "wrong_key",
        "the header alone, with a bit of the wrapped key flipped: the key is unwrapped before the first segment is read",
        edit(&one[..one_header], |e| e[wrapped_at + 10] ^= 0x01),
    );
    add(
        "truncated-in-prefix-with-bad-fields",
        "several-segments",
        "truncated",
        "the header, segment 0, and 5 bytes of segment 1's prefix with its index set to 7 and its flags to 0x02: the prefix is read whole before any field of it is checked",
        {
            let second = several_header + FULL_FRAME;
            let mut e = several[..second + 5].to_vec();
            e[second..second + 4].copy_from_slice(&7u32.to_be_bytes());
            e[second + 4] = 0x02;
            e
        },
    );
    add(
        "non-final-short-length",
        "several-segments",
        "tampered",
        "length of segment 0 (not final) set to 1000: a non-final segment holds exactly 65536 bytes",
        edit(&several, |e| {
            e[several_header + 5..several_header + 9].copy_from_slice(&1000u32.to_be_bytes())
        }),
    );
    add(
        "full-segment-then-empty-final",
        "several-segments",
        "tampered",
        "segment 0 (full, not final) followed by an authentic empty final segment 1: a writer ends a plaintext of 65536 bytes with a full final segment, so this layout is refused before its tag is checked",
        {
            let header = parse_header(&several);
            let mut e = several[..several_header + FULL_FRAME].to_vec();
            let mut prefix = [0u8; PREFIX];
            prefix[..4].copy_from_slice(&1u32.to_be_bytes());
            prefix[4] = 0x01;
            let mut nonce = [0u8; 12];
            nonce[..7].copy_from_slice(header.nonce_prefix);
            nonce[7..11].copy_from_slice(&1u32.to_be_bytes());
            nonce[11] = 0x01;
            let mut aad = digest(&SHA256, &several[..several_header])
                .as_ref()
                .to_vec();
            aad.extend_from_slice(&prefix);
            let key =
                LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &several_key).expect("AES-256 key"));
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut [],
                )
                .expect("seal the empty segment");
            e.extend_from_slice(&prefix);
            e.extend_from_slice(tag.as_ref());
            e
        },
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

/// The file's bytes when it exists, else `make()`'s (written by the caller).
fn keep_or_make(dir: &Path, relative: &str, make: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    fs::read(dir.join(relative)).unwrap_or_else(|_| make())
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
