//! The key store on real S3 protocol: LocalStack's S3 beside its KMS (`SERVICES=kms,s3`), started
//! by `scripts/test.sh`; the fault proxy takes it down.

mod common;

use std::sync::Arc;

use common::proxy::FaultProxy;
use common::{create_bucket, kms_endpoint, s3_config};
use kekeeper::keypair::{KeyPairSecret, KeyPairState};
use kekeeper::keystore::s3::S3Objects;
use kekeeper::keystore::{KeyStore, MarkKind, ObjectStore, Put};
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
        objects.get("a/1.json").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(objects.get("a/2.json").await.unwrap(), None);
    objects.put_new("a/2.json", b"x".to_vec()).await.unwrap();
    objects.put_new("b/1.json", b"x".to_vec()).await.unwrap();
    assert_eq!(
        objects.list("a/").await.unwrap(),
        vec!["a/1.json", "a/2.json"]
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
