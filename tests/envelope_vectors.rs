//! kekeeper's envelope code against the committed test vectors (docs/envelope.md#test-vectors):
//! every valid envelope decrypts to its plaintext, every must-reject case fails with the error
//! the index names. Decryption goes the way `kekeeper decrypt` goes once KMS has returned the
//! private key: `Header::read_from`, then `envelope::decrypt` with the PKCS#8 DER key.

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kekeeper::envelope::{self, EnvelopeError, Header, SEGMENT_SIZE};
use kekeeper::keypair::{fingerprint, parse_public_key_pem};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/envelope")
}

fn index() -> Value {
    let text = fs::read_to_string(vectors_dir().join("index.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn field<'a>(case: &'a Value, name: &str) -> &'a str {
    case[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {case}"))
}

fn read(relative: &str) -> Vec<u8> {
    fs::read(vectors_dir().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The PKCS#8 DER inside the vector key's PEM, as KMS's `Decrypt` would hand it over.
fn private_key(index: &Value) -> Vec<u8> {
    let pem = String::from_utf8(read(field(index, "private_key"))).unwrap();
    let body: String = pem
        .lines()
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body).unwrap()
}

fn public_key(index: &Value) -> Vec<u8> {
    let pem = String::from_utf8(read(field(index, "public_key"))).unwrap();
    parse_public_key_pem(&pem).unwrap()
}

fn open(private_key: &[u8], sealed: &[u8]) -> Result<(Header, Vec<u8>), EnvelopeError> {
    let mut input = sealed;
    let header = Header::read_from(&mut input)?;
    let mut plain = Vec::new();
    let written = envelope::decrypt(private_key, &header, input, &mut plain)?;
    assert_eq!(written, plain.len() as u64);
    Ok((header, plain))
}

/// The name the index gives each kind of rejection.
fn error_name(err: &EnvelopeError) -> &'static str {
    match err {
        EnvelopeError::NotAnEnvelope => "not_an_envelope",
        EnvelopeError::UnknownVersion(_) => "unknown_version",
        EnvelopeError::MalformedHeader(_) => "malformed_header",
        EnvelopeError::WrongKey => "wrong_key",
        EnvelopeError::Tampered { .. } => "tampered",
        EnvelopeError::Truncated => "truncated",
        EnvelopeError::Reordered { .. } => "reordered",
        EnvelopeError::TrailingData => "trailing_data",
        other => panic!("no vector expects {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_vector_key_pair_is_the_one_the_index_names() {
    let index = index();
    assert_eq!(index["version"], 1);
    assert_eq!(index["segment_size"], SEGMENT_SIZE);
    assert_eq!(
        fingerprint(&public_key(&index)),
        field(&index, "public_key_fingerprint")
    );
}

#[test]
fn kekeeper_decrypts_every_valid_vector() {
    let index = index();
    let private_key = private_key(&index);
    let cases = index["valid"].as_array().unwrap();
    assert!(cases.len() >= 4, "expected at least 4 valid vectors");
    for case in cases {
        let name = field(case, "name");
        let sealed = read(field(case, "envelope"));
        let expected = read(field(case, "plaintext"));
        let (header, plain) =
            open(&private_key, &sealed).unwrap_or_else(|e| panic!("vector {name}: {e}"));
        assert!(plain == expected, "vector {name}: plaintext differs");
        assert_eq!(header.version, 1, "vector {name}");
        assert_eq!(
            header.key_pair_id,
            field(&index, "key_pair_id"),
            "vector {name}"
        );
        assert_eq!(
            case["plaintext_length"].as_u64(),
            Some(plain.len() as u64),
            "vector {name}"
        );
        assert_eq!(
            hex(digest(&SHA256, &plain).as_ref()),
            field(case, "plaintext_sha256"),
            "vector {name}"
        );
        let header_len = case["header_length"].as_u64().unwrap() as usize;
        assert_eq!(
            hex(digest(&SHA256, &sealed[..header_len]).as_ref()),
            field(case, "header_sha256"),
            "vector {name}"
        );
    }
}

#[test]
fn kekeeper_rejects_every_must_reject_vector_with_the_named_error() {
    let index = index();
    let private_key = private_key(&index);
    let cases = index["reject"].as_array().unwrap();
    assert!(
        cases.len() >= 10,
        "expected at least 10 must-reject vectors"
    );
    for case in cases {
        let name = field(case, "name");
        let sealed = read(field(case, "envelope"));
        match open(&private_key, &sealed) {
            Ok(_) => panic!("must-reject vector {name} was accepted"),
            Err(err) => assert_eq!(
                error_name(&err),
                field(case, "error"),
                "must-reject vector {name}: {err}"
            ),
        }
    }
}

#[test]
fn an_envelope_made_now_with_the_vector_public_key_opens_with_the_vector_private_key() {
    let index = index();
    let plain: Vec<u8> = (0..SEGMENT_SIZE + 3).map(|i| (i % 251) as u8).collect();
    let mut sealed = Vec::new();
    envelope::encrypt(
        &public_key(&index),
        field(&index, "key_pair_id"),
        &plain[..],
        &mut sealed,
    )
    .unwrap();
    let (_, opened) = open(&private_key(&index), &sealed).unwrap();
    assert!(opened == plain);
}
