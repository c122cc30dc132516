//! One DescribeKey per key for the whole operator: a [`Kms`] that shares a usable key's
//! description between every resource that names it, for the key-check interval, and lets
//! concurrent askers wait for the one call in flight (single flight) instead of each making
//! their own. What a reconcile must look at afresh is never served from it: errors and keys
//! that cannot be used (disabled, pending deletion, ...) are not kept, and any error of a
//! later call under a key forgets its description.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{EncryptionContext, GeneratedKeyPair, KeyDescription, KeyPairSpec, Kms, KmsError};
use crate::arn::AliasArn;

/// The last answer for one key: when it arrived, and what it was.
type Answer = (Instant, Result<KeyDescription, KmsError>);

/// Per key (alias ARN or key ARN): a lock that serialises the askers, and the last answer.
type Slot = Arc<tokio::sync::Mutex<Option<Answer>>>;

#[derive(Clone, Debug)]
pub struct CoalescingKms<K> {
    inner: K,
    ttl: Duration,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl<K: Kms> CoalescingKms<K> {
    /// Shares usable descriptions for `ttl` (the key-check interval).
    pub fn new(inner: K, ttl: Duration) -> Self {
        CoalescingKms {
            inner,
            ttl,
            slots: Arc::default(),
        }
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// Forgets what is known of `key` and of every alias that resolved to it.
    fn forget(&self, key: &str) {
        let slots: Vec<(String, Slot)> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, slot) in slots {
            if let Ok(mut answer) = slot.try_lock() {
                let resolved = matches!(&*answer, Some((_, Ok(d))) if d.key_arn == key);
                if name == key || resolved {
                    *answer = None;
                }
            }
        }
    }

    /// The description of `key`: an answer that arrived while this asker waited (whatever it
    /// was), a usable one younger than the TTL, or a new call. A shared description carries
    /// its age, so status says when KMS was asked, not when the answer was handed out.
    async fn describe(
        &self,
        key: &str,
        call: impl Future<Output = Result<KeyDescription, KmsError>>,
    ) -> Result<KeyDescription, KmsError> {
        let asked = Instant::now();
        let slot = self.slot(key);
        let mut answer = slot.lock().await;
        if let Some((at, result)) = answer.as_ref() {
            let in_flight_while_waiting = *at >= asked;
            let fresh_and_usable =
                at.elapsed() < self.ttl && result.as_ref().is_ok_and(|d| d.key_state == "Enabled");
            if in_flight_while_waiting || fresh_and_usable {
                let age = at.elapsed();
                return result
                    .clone()
                    .map(|description| KeyDescription { age, ..description });
            }
        }
        let result = call.await;
        *answer = Some((Instant::now(), result.clone()));
        result
    }

    fn after<T>(&self, key: &str, result: Result<T, KmsError>) -> Result<T, KmsError> {
        if result.is_err() {
            self.forget(key);
        }
        result
    }
}

impl<K: Kms> Kms for CoalescingKms<K> {
    async fn describe_key(&self, alias: &AliasArn) -> Result<KeyDescription, KmsError> {
        self.describe(alias.as_str(), self.inner.describe_key(alias))
            .await
    }

    async fn describe_key_arn(&self, key_arn: &str) -> Result<KeyDescription, KmsError> {
        self.describe(key_arn, self.inner.describe_key_arn(key_arn))
            .await
    }

    async fn generate_key_pair(
        &self,
        alias: &AliasArn,
        spec: KeyPairSpec,
        context: &EncryptionContext,
    ) -> Result<GeneratedKeyPair, KmsError> {
        let result = self.inner.generate_key_pair(alias, spec, context).await;
        self.after(alias.as_str(), result)
    }

    async fn decrypt_private_key(
        &self,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let result = self
            .inner
            .decrypt_private_key(kms_key_arn, ciphertext, context)
            .await;
        self.after(kms_key_arn, result)
    }

    async fn re_encrypt(
        &self,
        source_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        destination_key_arn: &str,
    ) -> Result<Vec<u8>, KmsError> {
        let result = self
            .inner
            .re_encrypt(source_key_arn, ciphertext, context, destination_key_arn)
            .await;
        // The destination is the alias's key: a failure may mean it changed.
        self.after(destination_key_arn, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::fake::FakeKms;
    use crate::kms::{KmsErrorKind, KmsOperation};

    const HOUR: Duration = Duration::from_secs(3600);

    fn alias() -> AliasArn {
        AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap()
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_call_and_later_ones_the_cached_answer() {
        let fake = FakeKms::new();
        fake.create_key_for(&alias());
        let kms = CoalescingKms::new(fake.clone(), HOUR);
        let alias = alias();
        let answers = futures::future::join_all((0..50).map(|_| kms.describe_key(&alias))).await;
        assert!(answers.iter().all(Result::is_ok));
        assert!(kms.describe_key(&alias).await.is_ok());
        assert_eq!(fake.calls(KmsOperation::DescribeKey), 1);
    }

    /// A shared answer says how old it is; a new call's answer is fresh.
    #[tokio::test(start_paused = true)]
    async fn a_shared_description_carries_its_age() {
        let fake = FakeKms::new();
        fake.create_key_for(&alias());
        let kms = CoalescingKms::new(fake.clone(), HOUR);
        assert_eq!(
            kms.describe_key(&alias()).await.unwrap().age,
            Duration::ZERO
        );
        tokio::time::advance(Duration::from_secs(1800)).await;
        let shared = kms.describe_key(&alias()).await.unwrap();
        assert_eq!(shared.age, Duration::from_secs(1800));
        assert_eq!(fake.calls(KmsOperation::DescribeKey), 1);
        tokio::time::advance(Duration::from_secs(1801)).await;
        assert_eq!(
            kms.describe_key(&alias()).await.unwrap().age,
            Duration::ZERO
        );
        assert_eq!(fake.calls(KmsOperation::DescribeKey), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_description_is_asked_again_after_the_ttl() {
        let fake = FakeKms::new();
        fake.create_key_for(&alias());
        let kms = CoalescingKms::new(fake.clone(), Duration::from_secs(60));
        kms.describe_key(&alias()).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        kms.describe_key(&alias()).await.unwrap();
        assert_eq!(fake.calls(KmsOperation::DescribeKey), 2);
    }

    #[tokio::test]
    async fn errors_and_unusable_keys_are_never_served_from_the_cache() {
        let fake = FakeKms::new();
        let key = fake.create_key_for(&alias());
        let kms = CoalescingKms::new(fake.clone(), HOUR);
        fake.fail_next(KmsOperation::DescribeKey, KmsErrorKind::Throttling);
        assert!(kms.describe_key(&alias()).await.is_err());
        assert!(kms.describe_key(&alias()).await.is_ok());
        fake.disable_key(&key);
        // Still the cached, enabled description ...
        assert_eq!(
            kms.describe_key(&alias()).await.unwrap().key_state,
            "Enabled"
        );
        // ... until a call under the key fails: then it is asked afresh, and a disabled key
        // is not kept.
        let context = EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: "org".into(),
        };
        assert!(
            kms.generate_key_pair(&alias(), KeyPairSpec::Rsa2048, &context)
                .await
                .is_err()
        );
        assert_eq!(
            kms.describe_key(&alias()).await.unwrap().key_state,
            "Disabled"
        );
        assert_eq!(
            kms.describe_key(&alias()).await.unwrap().key_state,
            "Disabled"
        );
        assert_eq!(fake.calls(KmsOperation::DescribeKey), 4);
    }
}
