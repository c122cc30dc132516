//! An in-memory KMS for unit tests: real RSA key pairs, private keys "encrypted" under a fake
//! master key bound to the encryption context, and injectable failures.
//!
//! ```
//! # use kekeeper::{arn::AliasArn, kms::{Kms, KmsOperation, KmsErrorKind, fake::FakeKms}};
//! let alias = AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap();
//! let kms = FakeKms::new();
//! let key_arn = kms.create_key_for(&alias);
//! kms.fail_next(KmsOperation::Decrypt, KmsErrorKind::Throttling);
//! assert_eq!(kms.calls(KmsOperation::Decrypt), 0);
//! # let _ = key_arn;
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use zeroize::Zeroizing;

use super::{
    EncryptionContext, GeneratedKeyPair, KeyDescription, KeyPairSpec, Kms, KmsError, KmsErrorKind,
    KmsOperation, MultiRegionKey,
};
use crate::arn::AliasArn;

const BLOB_MAGIC: &[u8; 4] = b"FKMS";

/// A cloneable handle on one in-memory KMS; clones share keys, aliases, failures and counters.
#[derive(Clone, Default)]
pub struct FakeKms {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKms").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// alias ARN -> key ARN
    aliases: HashMap<String, String>,
    keys: HashMap<String, FakeKey>,
    fail_next: HashMap<KmsOperation, VecDeque<KmsErrorKind>>,
    fail_always: HashMap<KmsOperation, KmsErrorKind>,
    calls: HashMap<KmsOperation, usize>,
    /// Reuse one RSA key pair per spec instead of generating (fast, but every pair is the same).
    reuse_key_pairs: bool,
    next_id: u64,
}

struct FakeKey {
    description: KeyDescription,
    master_key: Zeroizing<[u8; 32]>,
}

impl FakeKms {
    /// An empty KMS: no keys, no aliases. Every generated key pair is a fresh RSA key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands out one cached RSA key pair per spec (process-wide) instead of generating one per
    /// call: much faster, but rotations then produce the same public key (and fingerprint).
    pub fn reusing_key_pairs() -> Self {
        let kms = Self::default();
        kms.lock().reuse_key_pairs = true;
        kms
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent data behind.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates an enabled customer-managed symmetric key and returns its ARN.
    pub fn create_key(&self, partition: &str, region: &str, account: &str) -> String {
        let mut inner = self.lock();
        inner.next_id += 1;
        let key_id = format!("00000000-0000-4000-8000-{:012x}", inner.next_id);
        let key_arn = format!("arn:{partition}:kms:{region}:{account}:key/{key_id}");
        let mut master_key = Zeroizing::new([0u8; 32]);
        random(master_key.as_mut());
        inner.keys.insert(
            key_arn.clone(),
            FakeKey {
                description: KeyDescription {
                    key_arn: key_arn.clone(),
                    key_id,
                    key_state: "Enabled".into(),
                    key_spec: "SYMMETRIC_DEFAULT".into(),
                    key_usage: "ENCRYPT_DECRYPT".into(),
                    key_manager: "CUSTOMER".into(),
                    region: region.into(),
                    multi_region: None,
                    age: std::time::Duration::ZERO,
                },
                master_key,
            },
        );
        key_arn
    }

    /// Creates a key in the alias's partition, region and account and points the alias at it.
    pub fn create_key_for(&self, alias: &AliasArn) -> String {
        let key_arn = self.create_key(alias.partition(), alias.region(), alias.account());
        self.point_alias(alias, &key_arn);
        key_arn
    }

    /// Creates or repoints an alias (what `UpdateAlias` does: the KMS key behind it changes).
    pub fn point_alias(&self, alias: &AliasArn, key_arn: &str) {
        self.lock()
            .aliases
            .insert(alias.as_str().to_owned(), key_arn.to_owned());
    }

    pub fn delete_alias(&self, alias: &AliasArn) {
        self.lock().aliases.remove(alias.as_str());
    }

    /// The key the alias points at, if any.
    pub fn alias_target(&self, alias: &AliasArn) -> Option<String> {
        self.lock().aliases.get(alias.as_str()).cloned()
    }

    /// Sets `KeyState` (`Enabled`, `Disabled`, `PendingDeletion`, `Unavailable`, ...).
    pub fn set_key_state(&self, key_arn: &str, state: &str) {
        self.update_key(key_arn, |d| d.key_state = state.to_owned());
    }

    pub fn disable_key(&self, key_arn: &str) {
        self.set_key_state(key_arn, "Disabled");
    }

    pub fn enable_key(&self, key_arn: &str) {
        self.set_key_state(key_arn, "Enabled");
    }

    pub fn schedule_key_deletion(&self, key_arn: &str) {
        self.set_key_state(key_arn, "PendingDeletion");
    }

    /// Makes the key a multi-region key with these regions (what `DescribeKey` reports).
    pub fn set_multi_region(&self, key_arn: &str, primary_region: &str, replica_regions: &[&str]) {
        self.update_key(key_arn, |d| {
            d.multi_region = Some(MultiRegionKey {
                primary_region: primary_region.to_owned(),
                replica_regions: replica_regions.iter().map(|r| (*r).to_owned()).collect(),
            })
        });
    }

    /// Changes anything else `DescribeKey` reports (key spec, usage, manager, ...).
    /// Panics if the key does not exist: a test set-up mistake.
    pub fn update_key(&self, key_arn: &str, change: impl FnOnce(&mut KeyDescription)) {
        let mut inner = self.lock();
        let key = inner
            .keys
            .get_mut(key_arn)
            .unwrap_or_else(|| panic!("FakeKms: no key {key_arn}"));
        change(&mut key.description);
    }

    /// The next call of `operation` fails with `kind` (queue several by calling repeatedly).
    pub fn fail_next(&self, operation: KmsOperation, kind: KmsErrorKind) {
        self.lock()
            .fail_next
            .entry(operation)
            .or_default()
            .push_back(kind);
    }

    /// Every call of `operation` fails with `kind` until [`Self::clear_failures`].
    pub fn fail_always(&self, operation: KmsOperation, kind: KmsErrorKind) {
        self.lock().fail_always.insert(operation, kind);
    }

    pub fn clear_failures(&self) {
        let mut inner = self.lock();
        inner.fail_next.clear();
        inner.fail_always.clear();
    }

    /// How many times `operation` was called (failed calls included).
    pub fn calls(&self, operation: KmsOperation) -> usize {
        self.lock().calls.get(&operation).copied().unwrap_or(0)
    }

    /// All calls of all operations.
    pub fn total_calls(&self) -> usize {
        self.lock().calls.values().sum()
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    /// Counts the call and returns the injected failure, if any.
    fn begin(inner: &mut Inner, operation: KmsOperation) -> Result<(), KmsError> {
        *inner.calls.entry(operation).or_default() += 1;
        inner.next_id += 1;
        let request_id = format!("fake-request-{}", inner.next_id);
        let injected = inner
            .fail_next
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
            .or_else(|| inner.fail_always.get(&operation).copied());
        match injected {
            Some(kind) => Err(KmsError {
                request_id: Some(request_id),
                ..KmsError::new(
                    operation,
                    kind,
                    format!("injected by FakeKms ({operation})"),
                )
            }),
            None => Ok(()),
        }
    }

    fn resolve<'a>(
        inner: &'a Inner,
        operation: KmsOperation,
        alias: &AliasArn,
    ) -> Result<&'a FakeKey, KmsError> {
        inner
            .aliases
            .get(alias.as_str())
            .and_then(|key_arn| inner.keys.get(key_arn))
            .ok_or_else(|| {
                KmsError::new(
                    operation,
                    KmsErrorKind::NotFound,
                    format!("Alias {alias} is not found."),
                )
            })
    }

    fn usable(key: &FakeKey, operation: KmsOperation) -> Result<(), KmsError> {
        let arn = &key.description.key_arn;
        match key.description.key_state.as_str() {
            "Enabled" => Ok(()),
            "Disabled" => Err(KmsError::new(
                operation,
                KmsErrorKind::Disabled,
                format!("{arn} is disabled."),
            )),
            "Unavailable" => Err(KmsError::new(
                operation,
                KmsErrorKind::KeyUnavailable,
                format!("{arn} is unavailable."),
            )),
            state => Err(KmsError::new(
                operation,
                KmsErrorKind::InvalidState,
                format!("{arn} is {state}"),
            )),
        }
    }
}

fn random(buf: &mut [u8]) {
    if aws_lc_rs::rand::fill(buf).is_err() {
        panic!("system random number generator failed");
    }
}

fn aad(context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::new();
    aad.extend_from_slice(context.key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context.organization_id.as_bytes());
    aad
}

fn key_size(spec: KeyPairSpec) -> KeySize {
    match spec {
        KeyPairSpec::Rsa2048 => KeySize::Rsa2048,
        KeyPairSpec::Rsa3072 => KeySize::Rsa3072,
        KeyPairSpec::Rsa4096 => KeySize::Rsa4096,
    }
}

/// (SPKI DER, PKCS#8 DER) of a new RSA key pair.
pub fn generate_rsa(spec: KeyPairSpec) -> (Vec<u8>, Zeroizing<Vec<u8>>) {
    let key = PrivateDecryptingKey::generate(key_size(spec))
        .unwrap_or_else(|_| panic!("FakeKms: RSA key generation failed"));
    let public = key
        .public_key()
        .as_der()
        .unwrap_or_else(|_| panic!("FakeKms: public key encoding failed"));
    let private = key
        .as_der()
        .unwrap_or_else(|_| panic!("FakeKms: private key encoding failed"));
    (
        public.as_ref().to_vec(),
        Zeroizing::new(private.as_ref().to_vec()),
    )
}

fn cached_rsa(spec: KeyPairSpec) -> (Vec<u8>, Zeroizing<Vec<u8>>) {
    type Cache = Mutex<HashMap<KeyPairSpec, (Vec<u8>, Zeroizing<Vec<u8>>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache
        .entry(spec)
        .or_insert_with(|| generate_rsa(spec))
        .clone()
}

impl Kms for FakeKms {
    async fn describe_key(&self, alias: &AliasArn) -> Result<KeyDescription, KmsError> {
        let mut inner = self.lock();
        Self::begin(&mut inner, KmsOperation::DescribeKey)?;
        Ok(Self::resolve(&inner, KmsOperation::DescribeKey, alias)?
            .description
            .clone())
    }

    async fn describe_key_arn(&self, key_arn: &str) -> Result<KeyDescription, KmsError> {
        let mut inner = self.lock();
        Self::begin(&mut inner, KmsOperation::DescribeKey)?;
        inner
            .keys
            .get(key_arn)
            .map(|key| key.description.clone())
            .ok_or_else(|| {
                KmsError::new(
                    KmsOperation::DescribeKey,
                    KmsErrorKind::NotFound,
                    format!("Key '{key_arn}' does not exist"),
                )
            })
    }

    async fn generate_key_pair(
        &self,
        alias: &AliasArn,
        spec: KeyPairSpec,
        context: &EncryptionContext,
    ) -> Result<GeneratedKeyPair, KmsError> {
        const OP: KmsOperation = KmsOperation::GenerateDataKeyPairWithoutPlaintext;
        let (key_arn, master_key, reuse) = {
            let mut inner = self.lock();
            Self::begin(&mut inner, OP)?;
            let key = Self::resolve(&inner, OP, alias)?;
            Self::usable(key, OP)?;
            (
                key.description.key_arn.clone(),
                key.master_key.clone(),
                inner.reuse_key_pairs,
            )
        };
        // Outside the lock: RSA generation takes a while.
        let (public_key_der, private_key) = if reuse {
            cached_rsa(spec)
        } else {
            generate_rsa(spec)
        };

        let blob = seal(&master_key, &key_arn, context, &private_key);

        Ok(GeneratedKeyPair {
            kms_key_arn: key_arn,
            spec,
            public_key_der,
            private_key_ciphertext: blob,
        })
    }

    async fn decrypt_private_key(
        &self,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        const OP: KmsOperation = KmsOperation::Decrypt;
        let mut inner = self.lock();
        Self::begin(&mut inner, OP)?;
        Self::open(&inner, OP, kms_key_arn, ciphertext, context)
    }

    /// Opens the blob under `source_key_arn` and seals it under `destination_key_arn`, as KMS
    /// does, the plaintext never leaving it; counted as one ReEncrypt.
    async fn re_encrypt(
        &self,
        source_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        destination_key_arn: &str,
    ) -> Result<Vec<u8>, KmsError> {
        const OP: KmsOperation = KmsOperation::ReEncrypt;
        let mut inner = self.lock();
        Self::begin(&mut inner, OP)?;
        let plaintext = Self::open(&inner, OP, source_key_arn, ciphertext, context)?;
        let destination = inner.keys.get(destination_key_arn).ok_or_else(|| {
            KmsError::new(
                OP,
                KmsErrorKind::NotFound,
                format!("Key '{destination_key_arn}' does not exist"),
            )
        })?;
        Self::usable(destination, OP)?;
        Ok(seal(
            &destination.master_key,
            destination_key_arn,
            context,
            &plaintext,
        ))
    }
}

impl FakeKms {
    /// The plaintext of a blob made by [`seal`], if it is under `kms_key_arn`, that key is
    /// usable and the context is the one it was sealed with.
    fn open(
        inner: &Inner,
        operation: KmsOperation,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let invalid = || {
            KmsError::new(
                operation,
                KmsErrorKind::InvalidCiphertext,
                "The ciphertext is invalid or the encryption context does not match.",
            )
        };
        let rest = ciphertext.strip_prefix(BLOB_MAGIC).ok_or_else(invalid)?;
        let (len, rest) = rest.split_at_checked(2).ok_or_else(invalid)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let (blob_key_arn, rest) = rest.split_at_checked(len).ok_or_else(invalid)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or_else(invalid)?;
        let blob_key_arn = std::str::from_utf8(blob_key_arn).map_err(|_| invalid())?;

        if blob_key_arn != kms_key_arn {
            return Err(KmsError::new(
                operation,
                KmsErrorKind::IncorrectKey,
                "The key ID in the request does not identify a KMS key that can perform this operation.",
            ));
        }
        let key = inner.keys.get(blob_key_arn).ok_or_else(|| {
            KmsError::new(
                operation,
                KmsErrorKind::NotFound,
                format!("Key '{blob_key_arn}' does not exist"),
            )
        })?;
        Self::usable(key, operation)?;

        let opening = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key.master_key.as_ref())
                .unwrap_or_else(|_| panic!("FakeKms: AES key")),
        );
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| invalid())?;
        let mut plaintext = Zeroizing::new(sealed.to_vec());
        let len = opening
            .open_in_place(nonce, Aad::from(aad(context)), plaintext.as_mut_slice())
            .map_err(|_| invalid())?
            .len();
        plaintext.truncate(len);
        Ok(plaintext)
    }
}

/// A blob of `plaintext` under the key `key_arn` (master key `master_key`), bound to
/// `context`: magic, the key ARN, a nonce, AES-256-GCM.
fn seal(
    master_key: &Zeroizing<[u8; 32]>,
    key_arn: &str,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Vec<u8> {
    let sealing = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, master_key.as_ref())
            .unwrap_or_else(|_| panic!("FakeKms: AES key")),
    );
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut nonce);
    let mut sealed = plaintext.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(context)),
            &mut sealed,
        )
        .unwrap_or_else(|_| panic!("FakeKms: seal"));
    let mut blob = Vec::with_capacity(sealed.len() + key_arn.len() + 32);
    blob.extend_from_slice(BLOB_MAGIC);
    blob.extend_from_slice(&(key_arn.len() as u16).to_be_bytes());
    blob.extend_from_slice(key_arn.as_bytes());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias() -> AliasArn {
        AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap()
    }

    fn context(org: &str) -> EncryptionContext {
        EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: org.into(),
        }
    }

    #[tokio::test]
    async fn generated_private_keys_decrypt_only_with_the_same_context_and_key() {
        let kms = FakeKms::new();
        let key_arn = kms.create_key_for(&alias());
        let pair = kms
            .generate_key_pair(&alias(), KeyPairSpec::Rsa2048, &context("a"))
            .await
            .unwrap();
        assert_eq!(pair.kms_key_arn, key_arn);
        let private = kms
            .decrypt_private_key(&key_arn, &pair.private_key_ciphertext, &context("a"))
            .await
            .unwrap();
        let key = PrivateDecryptingKey::from_pkcs8(&private).unwrap();
        assert_eq!(key.key_size_bits(), 2048);
        assert_eq!(
            key.public_key().as_der().unwrap().as_ref(),
            pair.public_key_der
        );

        let err = kms
            .decrypt_private_key(&key_arn, &pair.private_key_ciphertext, &context("b"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::InvalidCiphertext);
        assert_eq!(err.code, "InvalidCiphertextException");

        let other = kms.create_key("aws", "us-east-1", "111122223333");
        let err = kms
            .decrypt_private_key(&other, &pair.private_key_ciphertext, &context("a"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::IncorrectKey);
        assert_eq!(kms.calls(KmsOperation::Decrypt), 3);
        assert_eq!(
            kms.calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
            1
        );
        assert_eq!(kms.total_calls(), 4);
    }

    /// ReEncrypt moves a blob onto another key with the same context: it then decrypts under
    /// the new key only, and the old key may be disabled.
    #[tokio::test]
    async fn re_encrypt_moves_a_blob_onto_another_key() {
        let kms = FakeKms::new();
        let key_a = kms.create_key_for(&alias());
        let pair = kms
            .generate_key_pair(&alias(), KeyPairSpec::Rsa2048, &context("org1"))
            .await
            .unwrap();
        let key_b = kms.create_key_for(&alias());
        let wrong_context = kms
            .re_encrypt(
                &key_a,
                &pair.private_key_ciphertext,
                &context("org2"),
                &key_b,
            )
            .await
            .unwrap_err();
        assert_eq!(wrong_context.kind, KmsErrorKind::InvalidCiphertext);
        let moved = kms
            .re_encrypt(
                &key_a,
                &pair.private_key_ciphertext,
                &context("org1"),
                &key_b,
            )
            .await
            .unwrap();
        assert_eq!(kms.calls(KmsOperation::ReEncrypt), 2);
        kms.disable_key(&key_a);
        let original = kms
            .decrypt_private_key(&key_a, &pair.private_key_ciphertext, &context("org1"))
            .await
            .unwrap_err();
        assert_eq!(original.kind, KmsErrorKind::Disabled);
        let under_b = kms
            .decrypt_private_key(&key_b, &moved, &context("org1"))
            .await
            .unwrap();
        assert!(!under_b.is_empty());
        let under_a = kms
            .decrypt_private_key(&key_a, &moved, &context("org1"))
            .await
            .unwrap_err();
        assert_eq!(under_a.kind, KmsErrorKind::IncorrectKey);
    }

    #[tokio::test]
    async fn fresh_key_pairs_differ_and_reused_ones_do_not() {
        // Fresh RSA generation in a debug build: ~0.15 s (2048) to ~0.6 s (4096) per pair.
        let fresh = FakeKms::new();
        fresh.create_key_for(&alias());
        let spec = KeyPairSpec::Rsa2048;
        let a = fresh
            .generate_key_pair(&alias(), spec, &context("a"))
            .await
            .unwrap();
        let b = fresh
            .generate_key_pair(&alias(), spec, &context("a"))
            .await
            .unwrap();
        assert_ne!(a.public_key_der, b.public_key_der);

        let reusing = FakeKms::reusing_key_pairs();
        reusing.create_key_for(&alias());
        let a = reusing
            .generate_key_pair(&alias(), spec, &context("a"))
            .await
            .unwrap();
        let b = reusing
            .generate_key_pair(&alias(), spec, &context("b"))
            .await
            .unwrap();
        assert_eq!(a.public_key_der, b.public_key_der);
        // Same key pair, but each blob is bound to its own context.
        assert_ne!(a.private_key_ciphertext, b.private_key_ciphertext);
        let err = reusing
            .decrypt_private_key(&a.kms_key_arn, &a.private_key_ciphertext, &context("b"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::InvalidCiphertext);
    }

    #[tokio::test]
    async fn key_states_aliases_and_injected_failures_behave_like_kms() {
        let kms = FakeKms::reusing_key_pairs();
        let handle = kms.clone();
        let err = kms.describe_key(&alias()).await.unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::NotFound);
        let first = kms.create_key_for(&alias());
        assert_eq!(kms.describe_key(&alias()).await.unwrap().key_arn, first);
        let second = kms.create_key_for(&alias());
        assert_eq!(kms.describe_key(&alias()).await.unwrap().key_arn, second);
        assert_ne!(first, second);

        assert_eq!(
            kms.describe_key_arn(&first).await.unwrap().key_state,
            "Enabled"
        );
        handle.disable_key(&second);
        assert_eq!(
            kms.describe_key_arn(&second).await.unwrap().key_state,
            "Disabled"
        );
        let err = kms
            .generate_key_pair(&alias(), KeyPairSpec::Rsa2048, &context("a"))
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (KmsErrorKind::Disabled, "DisabledException")
        );
        handle.schedule_key_deletion(&second);
        let err = kms
            .generate_key_pair(&alias(), KeyPairSpec::Rsa2048, &context("a"))
            .await
            .unwrap_err();
        assert_eq!(err.code, "KMSInvalidStateException");
        handle.enable_key(&second);

        handle.fail_next(KmsOperation::DescribeKey, KmsErrorKind::Throttling);
        let err = kms.describe_key(&alias()).await.unwrap_err();
        assert_eq!(err.code, "ThrottlingException");
        assert!(err.request_id.is_some());
        assert!(kms.describe_key(&alias()).await.is_ok());

        handle.fail_always(KmsOperation::DescribeKey, KmsErrorKind::AccessDenied);
        for _ in 0..3 {
            let err = kms.describe_key(&alias()).await.unwrap_err();
            assert_eq!(err.code, "AccessDeniedException");
        }
        handle.clear_failures();
        assert!(kms.describe_key(&alias()).await.is_ok());
        handle.reset_calls();
        assert_eq!(handle.total_calls(), 0);
    }
}
