//! The key store's object names and wrap objects (every key a bucket writer can put under a
//! config's prefix, and the bodies of `SEQUENCE.wrap-KEY-ID.json`): untrusted. A name is taken
//! only if it is exactly what the operator writes for what it parses to; a wrap is believed
//! only for the pair whose names and fingerprint it carries, under the key its name gives.

#![no_main]

use kekeeper::keypair::KeyPairSecret;
use kekeeper::keystore::{
    KeyStoreUrl, MarkKind, ObjectName, StoredWrap, WRAP_FORMAT, is_key_id, kms_key_id, object_name,
};
use kekeeper::kms::{EncryptionContext, GeneratedKeyPair, KeyPairSpec};
use libfuzzer_sys::fuzz_target;

const NAMESPACE: &str = "telephony";
const CONFIG: &str = "recordings";

fn url() -> KeyStoreUrl {
    "s3://acme-keys/prod".parse().expect("a valid URL")
}

/// A pair for the wrap checks (a fixed, valid public key is not needed: the fingerprint is
/// compared as a string).
fn pair(organization_id: &str, sequence: u64) -> KeyPairSecret {
    KeyPairSecret::new_active(
        CONFIG,
        NAMESPACE,
        sequence,
        GeneratedKeyPair {
            kms_key_arn:
                "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5a".into(),
            spec: KeyPairSpec::Rsa2048,
            public_key_der: vec![1, 2, 3],
            private_key_ciphertext: vec![4; 8],
        },
        "arn:aws:kms:us-east-1:111122223333:alias/recordings",
        EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: organization_id.into(),
        },
        "2026-01-01T00:00:00Z".parse().expect("a timestamp"),
        "Created",
    )
}

fn check_name(key: &str) {
    let url = url();
    let prefix = url.config_prefix(NAMESPACE, CONFIG);
    match object_name(key, &prefix) {
        ObjectName::Pair {
            organization_id,
            sequence,
        } => assert_eq!(
            url.object_key(NAMESPACE, CONFIG, &organization_id, sequence),
            key
        ),
        ObjectName::Marker => {
            let (kind, stem) = match key.strip_suffix(".retired.json") {
                Some(stem) => (MarkKind::Retired, stem),
                None => (
                    MarkKind::Pruned,
                    key.strip_suffix(".pruned.json")
                        .expect("a marker name ends in .retired.json or .pruned.json"),
                ),
            };
            let object = format!("{stem}.json");
            assert!(
                matches!(object_name(&object, &prefix), ObjectName::Pair { .. }),
                "{key}: its pair's name {object} is not canonical"
            );
            assert_eq!(KeyStoreUrl::marker_key(&object, kind), key);
        }
        ObjectName::Wrap => {
            let (stem, rest) = key.rsplit_once(".wrap-").expect("a wrap name has .wrap-");
            let key_id = rest
                .strip_suffix(".json")
                .expect("a wrap name ends in .json");
            assert!(is_key_id(key_id), "{key}");
            let object = format!("{stem}.json");
            assert!(
                matches!(object_name(&object, &prefix), ObjectName::Pair { .. }),
                "{key}: its pair's name {object} is not canonical"
            );
            assert_eq!(KeyStoreUrl::wrap_key(&object, key_id), key);
        }
        ObjectName::Refused(why) => assert!(!why.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_name(text);
        let prefix = url().config_prefix(NAMESPACE, CONFIG);
        check_name(&format!("{prefix}{text}"));
        check_name(&format!("{prefix}org-1/{text}"));
        if let Some(id) = kms_key_id(text) {
            assert!(is_key_id(id) && text.ends_with(id));
        }
    }
    // A wrap object, against the pair whose names it carries (so that inputs pass often) and
    // against another pair.
    if let Ok(object) = serde_json::from_slice::<StoredWrap>(data) {
        let mut owner = pair(&object.organization_id, object.sequence);
        owner.secret_name = object.secret_name.clone();
        owner.key_pair_id = object.key_pair_id.clone();
        owner.namespace = object.namespace.clone();
        owner.config_name = object.config.clone();
        let name_id = kms_key_id(&object.kms_key_arn);
        if let Ok(wrap) = object.verify(&owner, name_id) {
            assert_eq!(object.format, WRAP_FORMAT);
            assert_eq!(object.public_key_fingerprint, owner.fingerprint());
            assert_ne!(wrap.kms_key_arn, owner.kms_key_arn);
            assert!(!wrap.ciphertext.is_empty());
            // What the operator would write back reads the same, and wraps no other pair.
            let again = StoredWrap::of(&owner, &wrap);
            assert_eq!(again.verify(&owner, name_id).as_ref(), Ok(&wrap));
            let mut other = owner.clone();
            other.key_pair_id.push('x');
            assert!(again.verify(&other, name_id).is_err());
            let elsewhere = "mrk-00000000000000000000000000000000";
            if name_id != Some(elsewhere) {
                assert!(again.verify(&owner, Some(elsewhere)).is_err());
            }
        }
    }
});
