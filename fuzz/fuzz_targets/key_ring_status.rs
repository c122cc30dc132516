//! The key ring reading a RecordingKeyConfig's status and history against the key pair Secrets
//! that exist, as the controller's observe step does, then asked everything the plan asks and
//! changed as a reconcile changes it.
//!
//! Input: one byte choosing which pairs status recorded still have a Secret (bit `i % 7` for
//! the i-th recorded pair; bit 7 adds a second active pair that shadows the first), then the
//! RecordingKeyConfig as JSON (as tests/fixtures/status holds them). A Secret's public key is
//! its key pair id's bytes, so a corpus whose fingerprints were made that way reaches the
//! matching as well as the mismatching path.

#![no_main]

use jiff::Timestamp;
use kekeeper::crd::RecordingKeyConfig;
use kekeeper::keypair::{KeyPairRecord, KeyPairState};
use kekeeper::keyring::{KeyRing, Pruning, Reading, Tokens};
use kekeeper::kms::{EncryptionContext, KeyPairSpec};
use kekeeper::policy;
use libfuzzer_sys::fuzz_target;

#[allow(clippy::too_many_arguments)]
fn record(
    rkc: &RecordingKeyConfig,
    organization_id: &str,
    key_pair_id: &str,
    secret_name: &str,
    sequence: u64,
    created_at: Timestamp,
    retired_at: Option<Timestamp>,
    spec: KeyPairSpec,
) -> KeyPairRecord {
    KeyPairRecord {
        config_name: rkc.metadata.name.clone().unwrap_or_default(),
        namespace: rkc.metadata.namespace.clone().unwrap_or_default(),
        organization_id: organization_id.to_owned(),
        sequence,
        secret_name: secret_name.to_owned(),
        key_pair_id: key_pair_id.to_owned(),
        kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/fuzz".to_owned(),
        kms_key_alias_arn: Some(rkc.spec.kms_key_alias_arn.clone()),
        key_pair_spec: spec,
        encryption_context: EncryptionContext {
            key: rkc.spec.encryption_context_key.clone(),
            organization_id: organization_id.to_owned(),
        },
        created_at,
        reason: "Created".to_owned(),
        state: if retired_at.is_some() {
            KeyPairState::Retired
        } else {
            KeyPairState::Active
        },
        retired_at,
        public_key_der: key_pair_id.as_bytes().to_vec(),
    }
}

/// The Secrets that exist: a choice of the pairs status recorded.
fn records(rkc: &RecordingKeyConfig, present: u8) -> Vec<KeyPairRecord> {
    let Some(status) = &rkc.status else {
        return Vec::new();
    };
    let mut records = Vec::new();
    let active = status.active_key_pairs.iter().map(|a| {
        (
            &a.organization_id,
            &a.key_pair_id,
            &a.secret_name,
            None,
            a.created_at,
            None,
            a.key_pair_spec,
        )
    });
    let history = status.key_pair_history.iter().map(|h| {
        (
            &h.organization_id,
            &h.key_pair_id,
            &h.secret_name,
            h.sequence,
            h.created_at,
            h.retired_at,
            KeyPairSpec::default(),
        )
    });
    for (i, (org, id, name, sequence, created, retired, spec)) in active.chain(history).enumerate()
    {
        // Secret names are unique in a namespace; status may name one twice.
        if present & (1 << (i % 7)) == 0
            || records
                .iter()
                .any(|r: &KeyPairRecord| &r.secret_name == name)
        {
            continue;
        }
        let sequence = sequence.unwrap_or(i as u64 + 1);
        records.push(record(rkc, org, id, name, sequence, created, retired, spec));
    }
    if present & 0x80 != 0 {
        if let Some(first) = records.iter().find(|r| r.state == KeyPairState::Active) {
            let mut newer = first.clone();
            newer.sequence = newer.sequence.saturating_add(1);
            newer.secret_name.push_str("-newer");
            newer.key_pair_id.push_str("-newer");
            records.push(newer);
        }
    }
    records
}

fuzz_target!(|data: &[u8]| {
    let Some((&present, json)) = data.split_first() else {
        return;
    };
    let Ok(rkc) = serde_json::from_slice::<RecordingKeyConfig>(json) else {
        return;
    };
    let now: Timestamp = "2026-12-01T00:00:00Z".parse().expect("a timestamp");
    // As controller::observe::ring_of reads the resource.
    let reading = Reading {
        acknowledged: rkc.acknowledged_key_pairs(),
        pruning: Some(Pruning {
            retention: rkc
                .spec
                .recording_retention
                .as_deref()
                .and_then(|r| policy::parse_retention(r).ok()),
            period: rkc.spec.rotation.period,
        }),
        now,
    };
    let mut ring = KeyRing::new(
        records(&rkc, present),
        Tokens::new(),
        rkc.status.as_ref(),
        &reading,
    );

    // What the plan asks.
    let organizations = &rkc.spec.organization_ids;
    for (org, active) in ring.active_by_org() {
        assert_eq!(active.state, KeyPairState::Active);
        assert_eq!(active.organization_id, org);
        assert!(
            ring.next_sequence(org) > active.sequence,
            "a sequence reused"
        );
    }
    for record in ring.records() {
        let _ = ring.trusted_fingerprint(record);
        let _ = ring.made_under(record);
        let verified = ring.is_verified(record);
        let mismatched = ring
            .mismatches()
            .iter()
            .any(|m| m.secret_name == record.secret_name);
        assert_eq!(verified, !mismatched, "{}", record.secret_name);
    }
    for missing in ring.missing() {
        assert!(
            !ring
                .records()
                .iter()
                .any(|r| r.secret_name == missing.secret_name),
            "a pair with a Secret reported missing"
        );
    }
    let _ = ring.custody_failed();
    let _ = ring.highest_sequences();
    let prunable = ring.prunable(now);
    for name in &prunable {
        let record = ring.records().iter().find(|r| &r.secret_name == name);
        assert_eq!(
            record.map(|r| r.state),
            Some(KeyPairState::Retired),
            "{name}"
        );
    }

    // What a reconcile changes: retire, prune, add a pair.
    let retire = ring.to_retire(organizations);
    ring.retire(&retire, now);
    assert!(
        ring.shadowed().is_empty(),
        "shadowed pairs left after retiring"
    );
    assert!(ring.to_retire(organizations).is_empty());
    ring.remove(&prunable);
    for name in &prunable {
        assert!(ring.recorded_fingerprint(name).is_none());
    }
    if let Some(org) = organizations.first() {
        let sequence = ring.next_sequence(org);
        let new = record(
            &rkc,
            org,
            "new",
            "new-pair",
            sequence,
            now,
            None,
            KeyPairSpec::Rsa3072,
        );
        ring.add_proven(new);
        assert!(ring.next_sequence(org) > sequence);
        assert_eq!(
            ring.active(org).map(|r| r.secret_name.as_str()),
            Some("new-pair")
        );
    }
});
