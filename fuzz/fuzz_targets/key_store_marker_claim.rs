//! The key store's retirement and prune markers and its writer claim (`PREFIX/writer.json`):
//! untrusted JSON a bucket writer controls. A marker is believed only for the pair it names
//! (and whose fingerprint it carries, when it carries one); a claim that is not this cluster's
//! is never taken over while it is younger than the TTL.

#![no_main]

use jiff::SignedDuration;
use kekeeper::keystore::{ClaimStep, MARKER_FORMAT, Marker, WriterClaim, claim_step};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "recordings-6c1d0b8a2e-0003";
const ID: &str = "0b7e5c1a-9d2f-4e8b-a6c3-5f1d2e3c4b5a";
const FINGERPRINT: &str = "SHA256:jFk7b69YeJrle6b9AMvzyOdYw5ZKkU/t7WwUyD8nDPM";

fn check_marker(data: &[u8], name: &str, id: &str, fingerprint: &str) {
    let Ok(marker) = Marker::read(data, name, id, fingerprint) else {
        return;
    };
    assert_eq!(marker.format, MARKER_FORMAT);
    assert_eq!((marker.secret_name.as_str(), marker.key_pair_id.as_str()), (name, id));
    assert!(
        marker
            .public_key_fingerprint
            .as_deref()
            .is_none_or(|f| f == fingerprint)
    );
    // What the operator would write back reads the same, and marks no other key.
    let again = serde_json::to_vec(&marker).expect("a marker serialises");
    assert_eq!(Marker::read(&again, name, id, fingerprint).as_ref(), Ok(&marker));
    if marker.public_key_fingerprint.is_some() {
        assert!(Marker::read(&again, name, id, "SHA256:another").is_err());
    }
    assert!(Marker::read(&again, "another-name", id, fingerprint).is_err());
}

fuzz_target!(|data: &[u8]| {
    check_marker(data, NAME, ID, FINGERPRINT);
    // With the names the input gives, so that inputs pass the checks often.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        if let (Some(name), Some(id)) = (field("secretName"), field("keyPairId")) {
            let fingerprint = field("publicKeyFingerprint").unwrap_or_else(|| FINGERPRINT.into());
            check_marker(data, &name, &id, &fingerprint);
        }
    }

    let ttl = SignedDuration::from_secs(900);
    let ages = [
        None,
        Some(SignedDuration::MIN),
        Some(SignedDuration::ZERO),
        Some(ttl - SignedDuration::from_secs(1)),
        Some(ttl),
        Some(SignedDuration::MAX),
    ];
    let current = WriterClaim::parse(data);
    if let Ok(claim) = &current {
        assert!(!claim.cluster_id.is_empty());
        let again = serde_json::to_vec(claim).expect("a claim serialises");
        assert_eq!(WriterClaim::parse(&again).as_ref(), Ok(claim));
        for age in ages {
            assert_eq!(claim_step(Some(&current), age, &claim.cluster_id, ttl), ClaimStep::Renew);
        }
    }
    for age in ages {
        let other = claim_step(Some(&current), age, "this-cluster-\u{0}", ttl);
        let stale = age.is_some_and(|age| age >= ttl);
        match other {
            ClaimStep::TakeOver => assert!(stale),
            ClaimStep::Refuse => assert!(!stale),
            ClaimStep::Renew => assert_eq!(
                current.as_ref().map(|c| c.cluster_id.as_str()),
                Ok("this-cluster-\u{0}")
            ),
            ClaimStep::Take => panic!("a claim that is there is never taken as absent"),
        }
    }
});
