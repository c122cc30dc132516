//! What every reconcile shares and what it may fail with: the [`Context`], its [`Settings`],
//! the [`Clock`], the [`Error`] type. Its own module, so the controller's steps import it
//! downwards and nothing under `controller/` imports `controller.rs` (docs/design.md,
//! "Reconcile").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use super::cache::{KeyPairCache, PublicKeysCache};
use super::ratelimit::KmsPace;
use crate::crd::RecordingKeyConfig;
use crate::keystore::{KeyStore, KeyStoreUrl};
use crate::metrics::Metrics;
use crate::policy;

/// The field manager of every server-side apply kekeeper makes.
pub const FIELD_MANAGER: &str = "kekeeper";
/// The default interval of the DescribeKey check of the alias and the retained pairs' keys.
pub const DEFAULT_KMS_KEY_CHECK_INTERVAL: SignedDuration = SignedDuration::from_hours(1);
/// The default interval of the custody check (one KMS Decrypt per active key pair).
pub const DEFAULT_KEY_VERIFY_INTERVAL: SignedDuration = SignedDuration::from_hours(24);

/// The time, injected so schedules are tested without sleeping.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// What fails a reconcile without a status report (KMS failures are reported in status and
/// retried with the backoff kept there).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("key pair Secret {name} exists but cannot be read: {message}")]
    AdoptFailed { name: String, message: String },
    #[error("resource has no namespace")]
    NoNamespace,
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    /// A status write met a newer resource whose spec or annotations differ from those the
    /// plan was made on: nothing was written; the reconcile plans again on this one.
    #[error("the resource changed while it was reconciled (generation {:?})", .0.metadata.generation)]
    Superseded(Box<RecordingKeyConfig>),
}

/// A value that could not be serialised to JSON. Never replaced by an empty default: an empty
/// ConfigMap body under a forced apply would wipe the published keys (docs/design.md,
/// "Serialisation failures are errors").
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise {what}: {source}")]
pub struct SerializeError {
    pub(super) what: &'static str,
    #[source]
    pub(super) source: serde_json::Error,
}

/// The JSON bytes of `value`, or an error naming `what`.
pub fn to_json_vec<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, SerializeError> {
    serde_json::to_vec(value).map_err(|source| SerializeError { what, source })
}

/// The JSON value of `value`, or an error naming `what`.
pub fn to_json_value<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<serde_json::Value, SerializeError> {
    serde_json::to_value(value).map_err(|source| SerializeError { what, source })
}

impl Error {
    /// The `reason` label of `kekeeper_reconcile_errors_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(_) => "KubeApi".to_owned(),
            Error::AdoptFailed { .. } => "AdoptFailed".to_owned(),
            Error::NoNamespace => "NoNamespace".to_owned(),
            Error::Serialize(_) => "Serialize".to_owned(),
            Error::Superseded(_) => "Superseded".to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub kms_key_check_interval: SignedDuration,
    /// How often each active pair's private key blob is decrypted through KMS and compared
    /// with the recorded fingerprint.
    pub key_verify_interval: SignedDuration,
    /// The operator's AWS region (the default homeRegion).
    pub operator_region: Option<String>,
    /// Where key pairs are written before they become active (`--key-store`); `None`: they live
    /// only in this cluster.
    pub key_store: Option<KeyStoreUrl>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kms_key_check_interval: DEFAULT_KMS_KEY_CHECK_INTERVAL,
            key_verify_interval: DEFAULT_KEY_VERIFY_INTERVAL,
            operator_region: None,
            key_store: None,
        }
    }
}

/// Where events go: repeatable ones through kube's [`Recorder`], which merges a repeat into
/// the first event's series and so keeps every event it sent for a while; one-off events
/// (each about a new key pair) straight to the API server, keeping nothing.
pub struct Events {
    pub(super) recorder: Recorder,
    pub(super) client: kube::Client,
    pub(super) reporter: Reporter,
}

impl Events {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Events {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }
    }
}

/// What every reconcile shares.
pub struct Context<K> {
    pub client: Client,
    pub kms: K,
    pub clock: Clock,
    pub events: Events,
    /// Key pair Secrets (label `kekeeper.io/config`) as records, by resource.
    pub key_pairs: KeyPairCache,
    /// `<config>-public-keys` ConfigMaps, as digests.
    pub public_keys: PublicKeysCache,
    /// The KMS pace shared by all resources: a bucket per key pair quota and one for Decrypt.
    pub kms_pace: Arc<KmsPace>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// The key store of `settings.key_store` (docs/design.md, "The key store").
    pub key_store: Option<KeyStore>,
    /// Consecutive failed reconciles per resource that could not write status (API errors),
    /// and when the last one was counted; KMS failures are counted in status instead. Bounded:
    /// see [`Context::record_failure`] and [`Context::forget_deleted`].
    failures: Mutex<HashMap<ObjectRef<RecordingKeyConfig>, FailureCount>>,
    /// Key pairs this process proved through KMS lately (a self-test or a proof), by namespace
    /// and Secret name, with the fingerprint proven and when; see [`Context::remember_proven`].
    proven: Mutex<HashMap<(String, String), (String, tokio::time::Instant)>>,
}

/// How long this process remembers a pair it proved: until its status write is surely in the
/// resources' cache (docs/design.md, "Proof before publication").
const PROVEN_KEPT: Duration = Duration::from_secs(600);

/// Consecutive failures of one resource, and when the last was counted.
#[derive(Clone, Copy, Debug)]
struct FailureCount {
    count: u32,
    at: tokio::time::Instant,
}

/// A failure count untouched this long is dropped: twice the longest backoff, by when a
/// resource that still fails has counted again (its retry comes after at most the longest
/// backoff), so only deleted resources' entries (and those whose reconcile hangs) go.
/// docs/design.md, "Bounded per-resource memory".
const FAILURE_COUNT_KEPT: Duration = Duration::from_secs(2 * 300);

impl<K> Context<K> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        kms: K,
        clock: Clock,
        events: Events,
        key_pairs: KeyPairCache,
        public_keys: PublicKeysCache,
        kms_pace: Arc<KmsPace>,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        Context {
            client,
            kms,
            clock,
            events,
            key_pairs,
            public_keys,
            kms_pace,
            settings,
            metrics,
            key_store: None,
            failures: Mutex::default(),
            proven: Mutex::default(),
        }
    }

    /// The context with a key store: every new pair is written there before it becomes active.
    pub fn with_key_store(mut self, store: KeyStore) -> Self {
        self.settings.key_store = Some(store.url().clone());
        self.key_store = Some(store);
        self
    }

    fn failures(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<RecordingKeyConfig>, FailureCount>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more failure of `rkc` and returns the backoff before its retry. Counts not
    /// touched for [`FAILURE_COUNT_KEPT`] go first, so a deleted resource whose delete event
    /// came before its last failure (a reconcile in flight) does not stay for ever.
    pub(super) fn record_failure(&self, object: ObjectRef<RecordingKeyConfig>) -> (u32, Duration) {
        let now = tokio::time::Instant::now();
        let mut failures = self.failures();
        failures.retain(|_, f| now.duration_since(f.at) < FAILURE_COUNT_KEPT);
        let entry = failures
            .entry(object)
            .or_insert(FailureCount { count: 0, at: now });
        entry.count = entry.count.saturating_add(1);
        entry.at = now;
        (entry.count, policy::backoff(entry.count))
    }

    pub(super) fn clear_failures(&self, object: &ObjectRef<RecordingKeyConfig>) {
        self.failures().remove(object);
    }

    /// Remembers that this process proved the pair `secret_name` in `namespace` with
    /// `fingerprint` through KMS: a reconcile that sees it before the status recording it
    /// reaches the cache takes it as proven instead of asking KMS again. Entries older than
    /// [`PROVEN_KEPT`] go whenever one is added.
    pub fn remember_proven(&self, namespace: &str, secret_name: &str, fingerprint: String) {
        let now = tokio::time::Instant::now();
        let mut proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        proven.retain(|_, (_, at)| now.duration_since(*at) < PROVEN_KEPT);
        proven.insert(
            (namespace.to_owned(), secret_name.to_owned()),
            (fingerprint, now),
        );
    }

    /// Whether this process proved the pair with this fingerprint lately.
    pub fn proven_here(&self, namespace: &str, secret_name: &str, fingerprint: &str) -> bool {
        let proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        proven
            .get(&(namespace.to_owned(), secret_name.to_owned()))
            .is_some_and(|(f, at)| f == fingerprint && at.elapsed() < PROVEN_KEPT)
    }

    /// A deleted resource's failure count goes with it (its delete event).
    pub fn forget_deleted(&self, rkc: &RecordingKeyConfig) {
        self.clear_failures(&ObjectRef::from_obj(rkc));
    }

    /// Resources with a failure count.
    #[cfg(test)]
    fn failing(&self) -> usize {
        self.failures().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::fake::FakeKms;

    fn context() -> Context<FakeKms> {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "ns");
        Context::new(
            client.clone(),
            FakeKms::new(),
            system_clock(),
            Events::new(client, kube::runtime::events::Reporter::from("kekeeper")),
            crate::controller::cache::key_pair_cache(),
            crate::controller::cache::public_keys_cache(),
            Arc::new(KmsPace::uniform(1.0, 4)),
            Settings::default(),
            Metrics::default(),
        )
    }

    fn resource(name: &str) -> RecordingKeyConfig {
        let text = include_str!("../../tests/fixtures/status/ready.json");
        let mut rkc: RecordingKeyConfig = serde_json::from_str(text).unwrap();
        rkc.metadata.name = Some(name.into());
        rkc
    }

    fn object_of(rkc: &RecordingKeyConfig) -> ObjectRef<RecordingKeyConfig> {
        ObjectRef::from_obj(rkc)
    }

    /// A deleted resource's failure count goes with its delete event; the count of one whose
    /// delete came first (a reconcile in flight) goes once it is older than twice the longest
    /// backoff, when the next failure of any resource is counted.
    #[tokio::test(start_paused = true)]
    async fn failure_counts_are_cleared_for_deleted_resources_and_bounded() {
        let ctx = context();
        let (a, b, c) = (resource("a"), resource("b"), resource("c"));
        assert_eq!(ctx.record_failure(object_of(&a)).0, 1);
        assert_eq!(ctx.record_failure(object_of(&a)).0, 2);
        ctx.record_failure(object_of(&b));
        assert_eq!(ctx.failing(), 2);
        ctx.forget_deleted(&a);
        assert_eq!(ctx.failing(), 1);
        // b is deleted while its reconcile runs: no delete clears it, and it never fails
        // again; c keeps failing at the longest backoff.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(300)).await;
            ctx.record_failure(object_of(&c));
        }
        assert_eq!(ctx.failing(), 1, "b's stale count is gone, c's stays");
        assert_eq!(ctx.record_failure(object_of(&c)).0, 3);
    }

    /// A value serde_json cannot serialise (a map with non-string keys) is an error that names
    /// what was being serialised, and a reconcile error with its own metric label; never an
    /// empty default.
    #[test]
    fn serialisation_failures_are_errors_naming_what() {
        let unserialisable = std::collections::BTreeMap::from([((1, 2), "x")]);
        let err = to_json_vec("the key pair records", &unserialisable).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot serialise the key pair records:"),
            "{err}"
        );
        let err = to_json_value("the public-keys ConfigMap", &unserialisable).unwrap_err();
        let err = Error::from(err);
        assert_eq!(err.metric_label(), "Serialize");
        assert!(
            err.to_string().contains("the public-keys ConfigMap"),
            "{err}"
        );
        assert_eq!(to_json_vec("ok", &[1, 2]).unwrap(), b"[1,2]");
    }
}
