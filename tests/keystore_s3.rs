//! The key store on real S3 protocol: LocalStack's S3 beside its KMS (`SERVICES=kms,s3`), started
//! by `scripts/test.sh`; the fault proxy takes it down.

mod common;

use std::sync::Arc;

use common::proxy::FaultProxy;
use common::{create_bucket, kms_endpoint, s3_config, unique};
use kekeeper::keypair::{KeyPairSecret, KeyPairState, Wrap};
use kekeeper::keystore::s3::S3Objects;
use std::time::{Duration, Instant};

use kekeeper::keystore::{
    CLAIM_LAPSED, CLAIMED, Claimed, Condition, KeyStore, MarkKind, ObjectStore, Put, Swap, WrapPut,
};
use kekeeper::kms::{EncryptionContext, GeneratedKeyPair, KeyPairSpec};

fn pair(org: &str, sequence: u64) -> KeyPairSecret {
    use aws_lc_rs::encoding::AsDer;
    let key = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("RSA key");
    let public_key_der = key.public_key().as_der().expect("SPKI").as_ref().to_vec();
    KeyPairSecret::new_active(
        "recordings",
        "telephony",
        sequence,
        GeneratedKeyPair {
            kms_key_arn: "arn:aws:kms:us-east-1:000000000000:key/k1".into(),
            spec: KeyPairSpec::Rsa2048,
            public_key_der,
            private_key_ciphertext: vec![7; 32],
        },
        "arn:aws:kms:us-east-1:000000000000:alias/recordings",
        EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: org.into(),
        },
        "2026-01-01T00:00:00Z".parse().unwrap(),
        "NoActiveKeyPair",
    )
}

async fn s3_store(endpoint: &str, bucket: &str) -> (KeyStore, S3Objects) {
    let objects = S3Objects::from_conf(s3_config(endpoint).await, bucket);
    let url = format!("s3://{bucket}/cluster-a").parse().unwrap();
    (KeyStore::new(url, Arc::new(objects.clone())), objects)
}

/// `If-None-Match: *` is honoured: the first put creates, the second finds the object and
/// leaves it; reads and listings give back what was written.
#[tokio::test]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn objects_are_written_once_and_read_back() {
    let endpoint = kms_endpoint();
    let bucket = create_bucket(&endpoint).await;
    let (_, objects) = s3_store(&endpoint, &bucket).await;
    assert_eq!(
        objects.put_new("a/1.json", b"one".to_vec()).await.unwrap(),
        Put::Created
    );
    assert_eq!(
        objects.put_new("a/1.json", b"two".to_vec()).await.unwrap(),
        Put::Exists
    );
    assert_eq!(
        objects
            .get("a/1.json", 1024)
            .await
            .unwrap()
            .and_then(|f| f.body)
            .as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(objects.get("a/2.json", 1024).await.unwrap(), None);
    objects.put_new("a/2.json", b"x".to_vec()).await.unwrap();
    objects.put_new("b/1.json", b"x".to_vec()).await.unwrap();
    let listed = objects.list("a/", 10).await.unwrap();
    let keys: Vec<(&str, u64)> = listed
        .objects
        .iter()
        .map(|o| (o.key.as_str(), o.size))
        .collect();
    assert_eq!(keys, vec![("a/1.json", 3), ("a/2.json", 1)]);
    assert!(!listed.more);
    let first = objects.list("a/", 1).await.unwrap();
    assert_eq!((first.objects.len(), first.more), (1, true));
    // A body over the limit is not returned.
    objects
        .put_new("a/big.json", vec![b'x'; 100_000])
        .await
        .unwrap();
    let big = objects.get("a/big.json", 65_536).await.unwrap().unwrap();
    assert_eq!(big.body, None);
}

/// The compare-and-swap the writer claim rests on, as LocalStack's S3 answers it through the
/// SDK: `If-None-Match: *` creates once, `If-Match` with the current ETag replaces, a stale
/// ETag gets 412 (lost), and a read gives the ETag and the age by the server's clock.
#[tokio::test]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn the_claim_is_compared_and_swapped() {
    let endpoint = kms_endpoint();
    let bucket = create_bucket(&endpoint).await;
    let (_, objects) = s3_store(&endpoint, &bucket).await;
    let key = "p/writer.json";
    let Swap::Written(Some(first)) = objects
        .put_if(key, b"a".to_vec(), Condition::Absent)
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    assert_eq!(
        objects
            .put_if(key, b"b".to_vec(), Condition::Absent)
            .await
            .unwrap(),
        Swap::Lost
    );
    let Swap::Written(Some(second)) = objects
        .put_if(key, b"c".to_vec(), Condition::Unchanged(first.clone()))
        .await
        .unwrap()
    else {
        panic!("not replaced")
    };
    assert_ne!(first, second);
    assert_eq!(
        objects
            .put_if(key, b"d".to_vec(), Condition::Unchanged(first))
            .await
            .unwrap(),
        Swap::Lost,
        "a stale If-Match is refused"
    );
    assert_eq!(
        objects
            .put_if(
                "p/gone.json",
                b"e".to_vec(),
                Condition::Unchanged(second.clone())
            )
            .await
            .unwrap(),
        Swap::Lost,
        "If-Match on no object"
    );
    let read = objects.get(key, 4096).await.unwrap().unwrap();
    assert_eq!(read.body.as_deref(), Some(&b"c"[..]));
    assert_eq!(read.etag.as_deref(), Some(second.as_str()));
    let age = read.age.expect("Date and Last-Modified");
    assert!(
        age >= jiff::SignedDuration::ZERO && age < jiff::SignedDuration::from_secs(5),
        "{age:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = objects.get(key, 4096).await.unwrap().unwrap().age.unwrap();
    assert!(
        later >= age + jiff::SignedDuration::from_secs(1),
        "{age:?} then {later:?}"
    );
}

/// A store of its own S3 client (as another operator's) for cluster `id`'s claim.
async fn claimant(endpoint: &str, bucket: &str, prefix: &str) -> KeyStore {
    let objects = S3Objects::from_conf(s3_config(endpoint).await, bucket);
    let url = format!("s3://{bucket}/{prefix}").parse().unwrap();
    KeyStore::unclaimed(url, Arc::new(objects))
}

/// Whether `store` may write now: `Ok(true)`, or refused with `code`.
async fn writes(store: &KeyStore) -> Result<(), String> {
    store
        .list("telephony", "recordings")
        .await
        .map(|_| ())
        .map_err(|e| e.code)
}

/// A new bucket without versioning. LocalStack 4.8.1 serialises concurrent conditional writes
/// of one key only in such a bucket: with versioning on, both of two `If-None-Match: *` (or
/// `If-Match`) writes started together succeed in about 60% of tries (measured with boto3,
/// 19 and 17 of 30), where S3 lets one succeed and answers the other 412 or 409
/// ConditionalRequestConflict. The claim relies on S3's behaviour.
async fn create_unversioned_bucket(endpoint: &str) -> String {
    let client = aws_sdk_s3::Client::from_conf(s3_config(endpoint).await);
    let bucket = unique("kekeeper-claim").to_ascii_lowercase();
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    bucket
}

/// Two operators of two clusters start their claim loops within the same second on one
/// prefix, 20 times: each time exactly one holds it and writes, the other refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn two_clusters_started_together_never_both_hold_a_prefix() {
    let endpoint = kms_endpoint();
    let bucket = create_unversioned_bucket(&endpoint).await;
    let ttl = jiff::SignedDuration::from_secs(30);
    let mut held = [0, 0];
    for round in 0..20 {
        let prefix = format!("race-{round}");
        let blue = claimant(&endpoint, &bucket, &prefix).await;
        let green = claimant(&endpoint, &bucket, &prefix).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let start = |store: KeyStore, id: &'static str| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let started = Instant::now();
                let (first, task) = store.hold(id.to_owned(), format!("{id}-0"), ttl).await;
                (started, first.expect("the store answers"), task)
            })
        };
        let (b, g) = (start(blue.clone(), "blue"), start(green.clone(), "green"));
        let (b, g) = (b.await.unwrap(), g.await.unwrap());
        let apart = b.0.max(g.0) - b.0.min(g.0);
        assert!(apart < Duration::from_secs(1), "started {apart:?} apart");
        let outcomes = [&b.1, &g.1];
        let holders: Vec<usize> = (0..2)
            .filter(|&i| matches!(outcomes[i], Claimed::Held { .. }))
            .collect();
        assert_eq!(holders.len(), 1, "round {round}: {outcomes:?}");
        let (holder, other) = if holders[0] == 0 {
            (&blue, &green)
        } else {
            (&green, &blue)
        };
        held[holders[0]] += 1;
        writes(holder).await.unwrap();
        holder.put(&pair("org-1", 1), None).await.unwrap();
        assert_eq!(writes(other).await, Err(CLAIMED.to_owned()));
        let err = other.put(&pair("org-1", 2), None).await.unwrap_err();
        assert_eq!(err.code, CLAIMED);
        b.2.abort();
        g.2.abort();
    }
    eprintln!(
        "claim race: 20/20 rounds with exactly one holder (blue {}, green {})",
        held[0], held[1]
    );
}

/// A cluster that is gone (its claim loop stopped) is taken over once its claim is the TTL old
/// by S3's clock, and not before; the old holder's store had stopped before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn a_stale_claim_is_taken_over_after_the_ttl() {
    let endpoint = kms_endpoint();
    let bucket = create_bucket(&endpoint).await;
    let ttl = jiff::SignedDuration::from_secs(6);
    let blue = claimant(&endpoint, &bucket, "gone").await;
    let green = claimant(&endpoint, &bucket, "gone").await;
    let (first, blue_loop) = blue.hold("blue".into(), "blue-0".into(), ttl).await;
    assert_eq!(first.unwrap(), Claimed::Held { previous: None });
    // While blue renews (every 2 s), green is refused, well past the TTL.
    let (first, green_loop) = green.hold("green".into(), "green-0".into(), ttl).await;
    assert!(matches!(first.unwrap(), Claimed::Refused(_)));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(writes(&green).await, Err(CLAIMED.to_owned()));
    writes(&blue).await.unwrap();

    // Blue's operator is gone: its last renewal was at most 2 s ago.
    blue_loop.abort();
    let stopped = Instant::now();
    green_loop.abort();
    let taken = loop {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "never taken over"
        );
        match green.claim("green", "green-0", ttl).await.unwrap() {
            Claimed::Held { previous } => break previous,
            Claimed::Refused(err) => assert_eq!(err.code, CLAIMED),
        }
        // Blue lapsed on its own before anyone could take the prefix over.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let after = stopped.elapsed();
    assert!(taken.is_some_and(|p| p.contains("blue")));
    // The claim was renewed at most 2 s before `stopped`; S3 dates it in whole seconds.
    assert!(
        after >= Duration::from_secs(3),
        "taken over {after:?} after blue stopped"
    );
    assert_eq!(writes(&blue).await, Err(CLAIM_LAPSED.to_owned()));
    writes(&green).await.unwrap();
    // Blue's next renewal loses the race and says to whom.
    let Claimed::Refused(err) = blue.claim("blue", "blue-0", ttl).await.unwrap() else {
        panic!("blue renewed over green")
    };
    assert!(err.message.contains("green"), "{err}");
}

/// Renewals that fail stop the holder's writes before the TTL runs out (by its own monotonic
/// clock); one that succeeds again resumes them. A renewal that loses to another writer stops
/// them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn a_lost_renewal_stops_the_writes() {
    let endpoint = kms_endpoint();
    let bucket = create_bucket(&endpoint).await;
    let ttl = jiff::SignedDuration::from_secs(6);
    let proxy = FaultProxy::start(&endpoint).await;
    let blue = claimant(&proxy.endpoint(), &bucket, "lost").await;
    let renewed = Instant::now();
    assert_eq!(
        blue.claim("blue", "blue-0", ttl).await.unwrap(),
        Claimed::Held { previous: None }
    );
    proxy.fail("", 503, "ServiceUnavailable", "the test took S3 down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // (The proxy's 503 body is not S3's XML: the SDK names it ServiceError.)
    let err = blue.claim("blue", "blue-0", ttl).await.unwrap_err();
    assert_eq!(err.operation, "PutObject", "{err}");
    proxy.clear();
    blue.put(&pair("org-1", 1), None).await.unwrap();
    proxy.fail("", 503, "ServiceUnavailable", "the test took S3 down");
    // Trusted for 4 s (6 s less a 2 s margin) after the last renewal that succeeded.
    tokio::time::sleep(
        Duration::from_secs(4).saturating_sub(renewed.elapsed()) + Duration::from_millis(100),
    )
    .await;
    proxy.clear();
    let err = blue.put(&pair("org-1", 2), None).await.unwrap_err();
    assert_eq!(err.code, CLAIM_LAPSED);
    assert!(err.message.contains("the last renewal failed"), "{err}");
    assert!(renewed.elapsed() < Duration::from_secs(6), "before the TTL");
    assert!(matches!(
        blue.claim("blue", "blue-0", ttl).await.unwrap(),
        Claimed::Held { previous: None }
    ));
    blue.put(&pair("org-1", 2), None).await.unwrap();

    // Someone else writes the claim (an operator of another version, a person): blue's next
    // renewal by its ETag loses, and its writes stop at once.
    let client = aws_sdk_s3::Client::from_conf(s3_config(&endpoint).await);
    client
        .put_object()
        .bucket(&bucket)
        .key("lost/writer.json")
        .body(
            br#"{"format":"kekeeper.io/key-store-writer/v1","clusterId":"green","holder":"g","renewedAt":"2026-01-01T00:00:00Z"}"#
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    assert!(matches!(
        blue.claim("blue", "blue-0", ttl).await.unwrap(),
        Claimed::Refused(_)
    ));
    assert_eq!(
        blue.put(&pair("org-1", 3), None).await.unwrap_err().code,
        CLAIMED
    );
}

/// A key pair goes in once, an impostor under its name is refused, retirement is a marker,
/// and the listing gives the pairs back checked; a store behind a failing endpoint is an error
/// that names the URL and the operation.
#[tokio::test]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn key_pairs_round_trip_through_s3() {
    let endpoint = kms_endpoint();
    let bucket = create_bucket(&endpoint).await;
    let (store, _) = s3_store(&endpoint, &bucket).await;
    let (first, second) = (pair("org-1", 1), pair("org-1", 2));
    store.put(&first, None).await.unwrap();
    store.put(&first, None).await.unwrap();
    let impostor = pair("org-1", 1);
    assert_eq!(
        store.put(&impostor, None).await.unwrap_err().code,
        "ObjectExists"
    );
    store.put(&second, None).await.unwrap();
    let at = "2026-02-01T00:00:00Z".parse().unwrap();
    store.mark(&first, MarkKind::Retired, at).await.unwrap();

    let listing = store.list("telephony", "recordings").await.unwrap();
    assert_eq!(listing.entries.len(), 2);
    let old = listing
        .get(&first.secret_name)
        .unwrap()
        .pair
        .as_ref()
        .unwrap();
    assert_eq!(old.state, KeyPairState::Retired);
    assert_eq!(old.fingerprint(), first.fingerprint());
    assert_eq!(old.private_key_ciphertext, first.private_key_ciphertext);

    let proxy = FaultProxy::start(&endpoint).await;
    proxy.fail("", 503, "ServiceUnavailable", "the test took S3 down");
    let (down, _) = s3_store(&proxy.endpoint(), &bucket).await;
    let err = down.put(&pair("org-2", 1), None).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("key store s3://{bucket}/cluster-a: PutObject")),
        "{err}"
    );
    assert!(down.list("telephony", "recordings").await.is_err());
    proxy.clear();
    assert_eq!(
        down.list("telephony", "recordings")
            .await
            .unwrap()
            .entries
            .len(),
        2
    );
}

const KEY_B: &str = "arn:aws:kms:us-east-1:000000000000:key/0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b";

fn wrap(byte: u8) -> Wrap {
    Wrap {
        kms_key_arn: KEY_B.into(),
        ciphertext: vec![byte; 48],
        created_at: "2026-06-01T00:00:00Z".parse().unwrap(),
    }
}

/// A wrap goes in once beside its pair through S3's `If-None-Match: *`: again, it is a retry;
/// another blob under the same key is given back and the object is not overwritten; two
/// writers started together (a crashed rewrap's retry racing a new one) get one object, and
/// the loser is given the winner's wrap. The listing brings the wrap back with its pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LocalStack with S3: scripts/test.sh starts it and runs ignored tests"]
async fn wraps_are_written_once_through_s3() {
    let endpoint = kms_endpoint();
    // Unversioned: see create_unversioned_bucket.
    let bucket = create_unversioned_bucket(&endpoint).await;
    let (store, objects) = s3_store(&endpoint, &bucket).await;
    let first = pair("org-1", 1);
    store.put(&first, None).await.unwrap();
    assert_eq!(
        store.put_wrap(&first, &wrap(1)).await.unwrap(),
        WrapPut::Created
    );
    assert_eq!(
        store.put_wrap(&first, &wrap(1)).await.unwrap(),
        WrapPut::Exists
    );
    assert_eq!(
        store.put_wrap(&first, &wrap(2)).await.unwrap(),
        WrapPut::Other(wrap(1))
    );
    let listing = store.list("telephony", "recordings").await.unwrap();
    assert_eq!(listing.entries.len(), 1, "{listing:?}");
    let listed = listing
        .get(&first.secret_name)
        .unwrap()
        .pair
        .as_ref()
        .unwrap();
    assert_eq!(listed.wraps, vec![wrap(1)]);
    let key = format!(
        "cluster-a/key-pairs/telephony/recordings/org-1/0000000001.wrap-{}.json",
        "0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"
    );
    assert!(objects.get(&key, 65_536).await.unwrap().is_some(), "{key}");

    for sequence in 2..=11 {
        let pair = pair("org-1", sequence);
        store.put(&pair, None).await.unwrap();
        let (other, _) = s3_store(&endpoint, &bucket).await;
        let (three, four) = (wrap(3), wrap(4));
        let (a, b) = tokio::join!(store.put_wrap(&pair, &three), other.put_wrap(&pair, &four));
        let mut outcomes = [a.unwrap(), b.unwrap()];
        outcomes.sort_by_key(|o| matches!(o, WrapPut::Created));
        match &outcomes {
            [WrapPut::Other(found), WrapPut::Created] => {
                assert!(*found == wrap(3) || *found == wrap(4), "{found:?}")
            }
            _ => panic!("sequence {sequence}: both or neither written: {outcomes:?}"),
        }
    }
}
