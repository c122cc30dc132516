//! The key pair Secret parser, on a Secret as `--key-pair-secret FILE` reads it (YAML within
//! the input limits) and as the API server hands it over (JSON); a parsed pair must survive
//! everything the controller does with it.

#![no_main]

use k8s_openapi::api::core::v1::Secret;
use kekeeper::commands::input_text;
use kekeeper::keypair::KeyPairSecret;
use libfuzzer_sys::fuzz_target;

fn exercise(secret: &Secret) {
    let Ok(pair) = KeyPairSecret::from_secret(secret) else {
        return;
    };
    let _ = pair.fingerprint();
    let _ = pair.public_key_pem();
    let _ = pair.to_active_key_pair();
    let _ = pair.to_history_entry();
    let _ = pair.key_pair();
    // What the controller writes back must parse again, to the same pair.
    let again = KeyPairSecret::from_secret(&pair.to_secret().expect("a parsed pair serialises"));
    let again = again.expect("a parsed pair's own Secret parses");
    assert_eq!(again.key_pair_id, pair.key_pair_id);
    assert_eq!(again.public_key_der, pair.public_key_der);
    assert_eq!(again.private_key_ciphertext, pair.private_key_ciphertext);
    assert_eq!(again.state, pair.state);
    assert_eq!(again.retired_at, pair.retired_at);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(secret) = serde_json::from_slice::<Secret>(data) {
        exercise(&secret);
    }
    let Ok(text) = input_text(data.to_vec(), "fuzz") else {
        return;
    };
    if let Ok(secret) = serde_yaml::from_str::<Secret>(&text) {
        exercise(&secret);
    }
});
