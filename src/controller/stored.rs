//! The key store's view of one config (docs/design.md, "The key store"): what the store holds
//! against the key pair Secrets, read once per reconcile that needs it. Pure: the listing is
//! made by the observation, the writes by execute.

use std::collections::BTreeSet;

use crate::keypair::{KeyPairSecret, KeyPairState};
use crate::keyring::{KeyRing, Tokens};
use crate::keystore::{Listing, StoreError};

/// What the store said in this reconcile.
#[derive(Clone, Debug)]
pub struct StoreCheck {
    /// `s3://BUCKET/PREFIX`, for messages.
    pub url: String,
    pub result: Result<StoreSync, StoreError>,
}

/// The store against the Secrets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreSync {
    /// Pairs whose Secret is gone and whose object passed every check: recreated as they were.
    pub restore: Vec<KeyPairSecret>,
    /// The rotate-now tokens the restored pairs were made for (their Secrets' annotation).
    pub restore_tokens: Tokens,
    /// Objects not restored: (object key, why).
    pub refused: Vec<(String, String)>,
    /// Secret names of retained pairs that have no object yet (written again).
    pub unstored: Vec<String>,
    /// Secret names of retained pairs whose Secret holds the wrap status records as proven
    /// and whose store entry lacks it (a store configured after the rewrap): written there.
    pub unstored_wraps: Vec<String>,
    /// Secret names of retired pairs whose object has no retirement marker yet.
    pub unmarked: Vec<String>,
    /// Secret names of pairs whose object holds another key pair than the Secret.
    pub differing: Vec<String>,
    /// Retained pairs (Secrets) whose object agrees with them.
    pub stored: usize,
}

/// Compares `listing` with the listed Secrets `secrets`; status (through `ring`) is the trust
/// anchor: an object whose fingerprint differs from the one status recorded for its Secret name
/// is refused. Objects marked pruned are not restored (they were deleted on purpose).
pub fn compare(listing: &Listing, secrets: &[KeyPairSecret], ring: &KeyRing) -> StoreSync {
    let mut sync = StoreSync::default();
    let mut seen = BTreeSet::new();
    for entry in &listing.entries {
        let pair = match &entry.pair {
            Ok(pair) => pair,
            Err(why) => {
                sync.refused.push((entry.key.clone(), why.clone()));
                continue;
            }
        };
        seen.insert(pair.secret_name.as_str());
        match secrets.iter().find(|s| s.secret_name == pair.secret_name) {
            Some(secret) if secret.fingerprint() != pair.fingerprint() => {
                sync.differing.push(secret.secret_name.clone());
            }
            Some(secret) => {
                sync.stored += 1;
                if proven_wrap_unstored(ring, secret, Some(pair)) {
                    sync.unstored_wraps.push(secret.secret_name.clone());
                }
                if secret.state == KeyPairState::Retired && pair.state != KeyPairState::Retired {
                    sync.unmarked.push(secret.secret_name.clone());
                }
            }
            None if entry.pruned => {}
            // Failed its proof before, with this public key: reported from status, never
            // restored (docs/design.md, "Proof before publication").
            None if ring.is_quarantined(&pair.record) => {}
            None => match ring.recorded_fingerprint(&pair.secret_name) {
                Some(recorded) if recorded != pair.fingerprint() => sync.refused.push((
                    entry.key.clone(),
                    format!(
                        "its fingerprint {} is not the {recorded} status recorded for {}",
                        pair.fingerprint(),
                        pair.secret_name
                    ),
                )),
                _ => {
                    if let Some(token) = &entry.rotate_now_token {
                        sync.restore_tokens
                            .insert(pair.secret_name.clone(), token.clone());
                    }
                    sync.restore.push(pair.clone());
                }
            },
        }
    }
    for secret in secrets
        .iter()
        .filter(|s| !seen.contains(s.secret_name.as_str()))
    {
        sync.unstored.push(secret.secret_name.clone());
        if proven_wrap_unstored(ring, secret, None) {
            sync.unstored_wraps.push(secret.secret_name.clone());
        }
        if secret.state == KeyPairState::Retired {
            sync.unmarked.push(secret.secret_name.clone());
        }
    }
    sync
}

/// Whether `secret` holds the wrap status records as proven for its pair and the store's entry
/// (`None`: no object yet) has none under that key.
fn proven_wrap_unstored(
    ring: &KeyRing,
    secret: &KeyPairSecret,
    stored: Option<&KeyPairSecret>,
) -> bool {
    let Some(proven) = ring.proven_wrap(&secret.record) else {
        return false;
    };
    secret.wrap_under(&proven.kms_key_arn).is_some()
        && stored.is_none_or(|s| s.wrap_under(&proven.kms_key_arn).is_none())
}

/// The organisations and sequences the store has taken, refused objects included: no new pair
/// gets one of their names.
pub fn taken_sequences(listing: &Listing) -> impl Iterator<Item = (&str, u64)> {
    listing
        .entries
        .iter()
        .filter_map(|e| Some((e.organization_id.as_deref()?, e.sequence?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::test_pair;
    use crate::keyring::Reading;
    use crate::keystore::StoredEntry;
    use crate::kms::KeyPairSpec;

    fn pair(org: &str, sequence: u64, public_key: u8) -> KeyPairSecret {
        KeyPairSecret {
            record: test_pair(
                org,
                sequence,
                KeyPairSpec::Rsa2048,
                vec![public_key; 4],
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ),
            private_key_ciphertext: vec![1; 8],
            wraps: Vec::new(),
        }
    }

    fn entry(pair: &KeyPairSecret) -> StoredEntry {
        StoredEntry {
            key: format!("k/{}", pair.secret_name),
            organization_id: Some(pair.organization_id.clone()),
            sequence: Some(pair.sequence),
            pair: Ok(pair.clone()),
            pruned: false,
            rotate_now_token: None,
        }
    }

    fn ring(secrets: &[KeyPairSecret]) -> KeyRing {
        let reading = Reading {
            acknowledged: BTreeSet::new(),
            pruning: None,
            now: "2026-03-01T00:00:00Z".parse().unwrap(),
        };
        let records = secrets.iter().map(|s| s.record.clone()).collect();
        KeyRing::new(records, Default::default(), None, &reading)
    }

    /// Gone Secrets come back, present ones are counted, a pruned object stays gone, a Secret
    /// without its object is written again, a differing object is reported, and a refused
    /// object still takes its sequence.
    #[test]
    fn the_store_is_compared_with_the_secrets() {
        let (a1, a2, b1, c1) = (
            pair("a", 1, 1),
            pair("a", 2, 2),
            pair("b", 1, 3),
            pair("c", 1, 4),
        );
        let mut retired = a1.clone();
        retired.retire("2026-02-01T00:00:00Z".parse().unwrap());
        let mut pruned = entry(&c1);
        pruned.pruned = true;
        let refused = StoredEntry {
            key: "k/bad".into(),
            organization_id: Some("b".into()),
            sequence: Some(9),
            pair: Err("fingerprint".into()),
            pruned: false,
            rotate_now_token: None,
        };
        let differing = pair("b", 1, 5);
        let listing = Listing {
            entries: vec![entry(&a1), entry(&a2), entry(&differing), pruned, refused],
        };
        let secrets = vec![retired.clone(), b1.clone()];
        let sync = compare(&listing, &secrets, &ring(&secrets));
        assert_eq!(sync.restore, vec![a2.clone()]);
        assert_eq!(sync.stored, 1);
        assert_eq!(sync.unmarked, vec![a1.secret_name.clone()]);
        assert_eq!(sync.differing, vec![b1.secret_name.clone()]);
        assert_eq!(sync.refused.len(), 1);
        assert!(sync.unstored.is_empty());
        let taken: Vec<_> = taken_sequences(&listing).collect();
        assert!(taken.contains(&("b", 9)), "{taken:?}");

        let sync = compare(&Listing::default(), &secrets, &ring(&secrets));
        assert_eq!(
            sync.unstored,
            vec![a1.secret_name.clone(), b1.secret_name.clone()]
        );
        assert_eq!(
            sync.unmarked,
            vec![a1.secret_name.clone()],
            "retired: its marker too"
        );
    }

    /// A proven wrap the Secret holds and the store lacks is written there; one the store
    /// has, or one only the Secret names (no proof, no status), is not.
    #[test]
    fn proven_wraps_the_store_lacks_are_written() {
        const B: &str =
            "arn:aws:kms:us-east-1:111122223333:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";
        let wrap = crate::keypair::Wrap {
            kms_key_arn: B.into(),
            ciphertext: vec![2; 8],
            created_at: "2026-02-01T00:00:00Z".parse().unwrap(),
        };
        let with_wrap = |mut p: KeyPairSecret| {
            p.wraps = vec![wrap.clone()];
            p
        };
        let (a1, b1, c1) = (
            with_wrap(pair("a", 1, 1)),
            with_wrap(pair("b", 1, 2)),
            with_wrap(pair("c", 1, 3)),
        );
        let secrets = vec![a1.clone(), b1.clone(), c1.clone()];
        let mut ring = ring(&secrets);
        for proven in [&a1, &b1] {
            ring.prove_wrap(&proven.secret_name, B, wrap.created_at);
        }
        // a: the store's object lacks the wrap; b: has it; c: the wrap is not proven.
        let listing = Listing {
            entries: vec![entry(&pair("a", 1, 1)), entry(&b1), entry(&pair("c", 1, 3))],
        };
        let sync = compare(&listing, &secrets, &ring);
        assert_eq!(sync.unstored_wraps, vec![a1.secret_name.clone()]);
        // No object at all: the pair and its proven wrap.
        let sync = compare(&Listing::default(), &secrets, &ring);
        assert_eq!(sync.unstored.len(), 3);
        assert_eq!(
            sync.unstored_wraps,
            vec![a1.secret_name.clone(), b1.secret_name.clone()]
        );
    }
}
