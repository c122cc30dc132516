//! The key store's object and the backup file (`kekeeper restore -f FILE`, and every object
//! the operator lists from S3): untrusted JSON. A pair that passes the checks must survive
//! being stored again: its own object verifies to the same pair, and its Secret parses, with
//! the wraps a backup entry gave it.

#![no_main]

use kekeeper::backup::BackupFile;
use kekeeper::keypair::KeyPairSecret;
use kekeeper::keystore::StoredKeyPair;
use libfuzzer_sys::fuzz_target;

fn round_trip(pair: &KeyPairSecret, token: Option<&str>) {
    let object = StoredKeyPair::of(pair, token);
    let again = object
        .verify(&pair.namespace, &pair.config_name)
        .expect("a verified pair's own object verifies");
    assert_eq!(again.public_key_der, pair.public_key_der);
    assert_eq!(again.private_key_ciphertext, pair.private_key_ciphertext);
    assert_eq!(again.secret_name, pair.secret_name);
    assert_eq!(object.public_key_fingerprint, pair.fingerprint());
    let secret = KeyPairSecret::from_secret(&pair.to_secret().expect("a verified pair serialises"))
        .expect("its Secret parses");
    assert_eq!(secret.fingerprint(), pair.fingerprint());
    assert_eq!(secret.wraps, pair.wraps, "a backup's wraps survive in the Secret");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = serde_json::from_slice::<StoredKeyPair>(data) {
        if let Ok(pair) = object.verify(&object.namespace, &object.config) {
            assert_eq!(pair.fingerprint(), object.public_key_fingerprint);
            round_trip(&pair, object.rotate_now_token.as_deref());
        }
    }
    if let Ok((file, pairs)) = BackupFile::parse(data, "fuzz") {
        assert_eq!(file.key_pairs.len(), pairs.len());
        for (entry, pair) in file.key_pairs.iter().zip(&pairs) {
            round_trip(pair, entry.pair.rotate_now_token.as_deref());
        }
    }
});
