//! Prometheus metrics (text format on `/metrics`), and a KMS wrapper that counts every call by
//! operation and outcome.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use zeroize::Zeroizing;

use crate::arn::AliasArn;
use crate::crd::RecordingKeyConfigStatus;
use crate::kms::{
    Decrypted, EncryptionContext, GeneratedKeyPair, KeyDescription, KeyPairSpec, Kms, KmsError,
    KmsOperation,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsCallLabels {
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyPairLabels {
    pub namespace: String,
    pub config: String,
    pub organization_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsKeyLabels {
    pub namespace: String,
    pub config: String,
    pub kms_key_arn: String,
}

/// What happened to key store objects: `written`, `write_failed`, `restored`, `refused` (failed
/// their checks or disagree with a Secret), `list_failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyStoreLabels {
    pub outcome: String,
}

/// A key pair spec (`RSA_3072`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyPairSpecLabels {
    pub spec: String,
}

/// An AWS Region (`eu-west-1`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub namespace: String,
    pub config: String,
}

/// The controller's metrics; cheap to clone (the families are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub kms_calls: Family<KmsCallLabels, Counter>,
    /// Creation time (Unix seconds) of each organisation's active key pair; age is `time() - x`.
    pub key_pair_created: Family<KeyPairLabels, Gauge>,
    /// Key store objects by outcome (docs/disaster-recovery.md).
    pub key_store: Family<KeyStoreLabels, Counter>,
    /// Key pairs the running reconciles still have to generate, per key pair spec (all
    /// accounts and Regions): the queue at the KMS pace (docs/design.md, "Rate limits").
    pub kms_key_pairs_queued: Family<KeyPairSpecLabels, Gauge>,
    /// Decrypts a multi-Region key's replica answered because the home Region failed, by the
    /// replica's Region (docs/design.md, "Multi-Region reads").
    pub kms_replica_reads: Family<RegionLabels, Counter>,
    /// Retained key pairs per KMS key of their newest proven private key blob
    /// (`status.kmsKeys`, docs/design.md, "Rewrap"): an old key without a series may go.
    pub key_pairs_by_kms_key: Family<KmsKeyLabels, Gauge>,
    /// The gauges with one series per resource.
    resources: Arc<ResourceGauges>,
    /// Uids of recently deleted resources, whose series are not recorded again.
    forgotten: Arc<std::sync::Mutex<Forgotten>>,
}

/// How many deleted resources' uids are kept. The set only has to outlast the reconciles that
/// were running when their resource was deleted (at most the controller's concurrency run at
/// once), so the newest few thousand are plenty; the oldest go first. docs/design.md,
/// "Bounded per-resource memory".
pub const FORGOTTEN_UIDS_KEPT: usize = 4096;

/// The uids of the most recently deleted resources, oldest first out.
#[derive(Debug, Default)]
struct Forgotten {
    uids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Forgotten {
    fn insert(&mut self, uid: &str) {
        if !self.uids.insert(uid.to_owned()) {
            return;
        }
        self.order.push_back(uid.to_owned());
        while self.order.len() > FORGOTTEN_UIDS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.uids.remove(&oldest);
            }
        }
    }

    fn contains(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }
}

impl Metrics {
    /// Counts `n` key store objects with `outcome`.
    pub fn count_store(&self, outcome: &str, n: usize) {
        if n > 0 {
            self.key_store
                .get_or_create(&KeyStoreLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(n as u64);
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kekeeper");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let kms_calls = Family::<KmsCallLabels, Counter>::default();
        let key_pair_created = Family::<KeyPairLabels, Gauge>::default();
        let key_store = Family::<KeyStoreLabels, Counter>::default();
        let kms_key_pairs_queued = Family::<KeyPairSpecLabels, Gauge>::default();
        let kms_replica_reads = Family::<RegionLabels, Counter>::default();
        let key_pairs_by_kms_key = Family::<KmsKeyLabels, Gauge>::default();
        let resources = Arc::new(ResourceGauges::default());
        registry.register_collector(Box::new(resources.clone()));
        registry.register(
            "reconciles",
            "Reconciles run (counted when they end)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "kms_calls",
            "KMS calls by operation and outcome (ok or the AWS error code)",
            kms_calls.clone(),
        );
        registry.register(
            "active_key_pair_created_timestamp_seconds",
            "Creation time of each organisation's active key pair (key pair age = time() - this)",
            key_pair_created.clone(),
        );
        registry.register(
            "key_store_objects",
            "Key store objects by outcome: written, write_failed, restored, refused, list_failed",
            key_store.clone(),
        );
        registry.register(
            "kms_key_pairs_queued",
            "Key pairs the running reconciles still have to generate, by key pair spec",
            kms_key_pairs_queued.clone(),
        );
        registry.register(
            "kms_replica_reads",
            "KMS Decrypts of a multi-Region key that a replica answered because the home Region failed, by the replica's Region",
            kms_replica_reads.clone(),
        );
        registry.register(
            "key_pairs_by_kms_key",
            "Retained key pairs whose newest proven private key blob is under this KMS key",
            key_pairs_by_kms_key.clone(),
        );
        Metrics {
            resources,
            forgotten: Arc::default(),
            registry: Arc::new(registry),
            reconciles,
            reconcile_errors,
            kms_calls,
            key_pair_created,
            key_store,
            kms_key_pairs_queued,
            kms_replica_reads,
            key_pairs_by_kms_key,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Whether the resource with this uid was deleted (its series are dropped for good; a new
    /// resource of the same name has another uid).
    pub fn is_forgotten(&self, uid: Option<&str>) -> bool {
        uid.is_some_and(|uid| {
            self.forgotten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(uid)
        })
    }

    /// One more failed reconcile, by reason (`kekeeper_reconcile_errors_total`).
    pub fn count_error(&self, reason: String) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { reason })
            .inc();
    }

    /// The per-resource gauges, from the status just written.
    /// Sets the per-resource gauges from its status; `acknowledged` are the key pair ids whose
    /// problems a person acknowledged (`kekeeper.io/acknowledge-key-pairs`).
    pub fn record_status(
        &self,
        config: &ConfigLabels,
        status: &RecordingKeyConfigStatus,
        acknowledged: &std::collections::BTreeSet<String>,
    ) {
        self.resources
            .set(config, ResourceValues::of(status, acknowledged));
    }

    /// Drops every series of a deleted RecordingKeyConfig (its organisations from its last
    /// status).
    pub fn forget(
        &self,
        config: &ConfigLabels,
        uid: Option<&str>,
        status: Option<&RecordingKeyConfigStatus>,
    ) {
        if let Some(uid) = uid {
            self.forgotten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid);
        }
        self.resources.forget(config);
        for key in status.map_or(&[][..], |s| &s.kms_keys[..]) {
            self.key_pairs_by_kms_key.remove(&KmsKeyLabels {
                namespace: config.namespace.clone(),
                config: config.config.clone(),
                kms_key_arn: key.kms_key_arn.clone(),
            });
        }
        for pair in status.map_or(&[][..], |s| &s.active_key_pairs[..]) {
            self.key_pair_created.remove(&KeyPairLabels {
                namespace: config.namespace.clone(),
                config: config.config.clone(),
                organization_id: pair.organization_id.clone(),
            });
        }
    }

    fn count_kms<T>(&self, operation: KmsOperation, result: &Result<T, KmsError>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(err) => err.code.clone(),
        };
        self.kms_calls
            .get_or_create(&KmsCallLabels {
                operation: operation.as_str().to_owned(),
                outcome,
            })
            .inc();
    }
}

/// A [`Kms`] that counts every call in [`Metrics::kms_calls`].
#[derive(Clone, Debug)]
pub struct MeteredKms<K> {
    pub inner: K,
    pub metrics: Metrics,
}

impl<K: Kms> Kms for MeteredKms<K> {
    async fn describe_key(&self, alias: &AliasArn) -> Result<KeyDescription, KmsError> {
        let result = self.inner.describe_key(alias).await;
        self.metrics.count_kms(KmsOperation::DescribeKey, &result);
        result
    }

    async fn describe_key_arn(&self, key_arn: &str) -> Result<KeyDescription, KmsError> {
        let result = self.inner.describe_key_arn(key_arn).await;
        self.metrics.count_kms(KmsOperation::DescribeKey, &result);
        result
    }

    async fn generate_key_pair(
        &self,
        alias: &AliasArn,
        spec: KeyPairSpec,
        context: &EncryptionContext,
    ) -> Result<GeneratedKeyPair, KmsError> {
        let result = self.inner.generate_key_pair(alias, spec, context).await;
        self.metrics
            .count_kms(KmsOperation::GenerateDataKeyPairWithoutPlaintext, &result);
        result
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
        self.metrics.count_kms(KmsOperation::Decrypt, &result);
        result
    }

    /// The home Region's failure and the replica's answer are two calls.
    async fn decrypt_private_key_in(
        &self,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        replica_regions: &[String],
    ) -> Result<Decrypted, KmsError> {
        let result = self
            .inner
            .decrypt_private_key_in(kms_key_arn, ciphertext, context, replica_regions)
            .await;
        if let Ok(Decrypted {
            home_failure: Some(failure),
            region,
            ..
        }) = &result
        {
            self.metrics
                .count_kms::<()>(KmsOperation::Decrypt, &Err(failure.clone()));
            self.metrics
                .kms_replica_reads
                .get_or_create(&RegionLabels {
                    region: region.clone(),
                })
                .inc();
        }
        self.metrics.count_kms(KmsOperation::Decrypt, &result);
        result
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
        self.metrics.count_kms(KmsOperation::ReEncrypt, &result);
        result
    }
}

/// The gauges with one series per resource, kept as one entry per resource (six `Family`s
/// would keep six label sets and six gauges each) and encoded on scrape.
#[derive(Debug, Default)]
struct ResourceGauges {
    values: RwLock<HashMap<ConfigLabels, ResourceValues>>,
}

/// One resource's gauge values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ResourceValues {
    /// `kekeeper_ready`: 1 while the Ready condition is True.
    ready: i64,
    /// `kekeeper_kms_available`: 1 while the KmsAvailable condition is True.
    kms_available: i64,
    /// `kekeeper_historical_keys_at_risk`: retained pairs whose KMS key is disabled, pending
    /// deletion or gone.
    keys_at_risk: i64,
    /// `kekeeper_next_rotation_timestamp_seconds`, when status names one.
    next_rotation: Option<f64>,
    /// `kekeeper_key_pair_integrity_problems`: Secrets whose public key disagrees with the
    /// fingerprint recorded in status, and pairs that failed the KMS custody check
    /// (docs/design.md#key-custody).
    integrity_problems: i64,
    /// `kekeeper_key_pairs_missing`: pairs recorded in status whose Secret is gone.
    missing: i64,
    /// `kekeeper_key_pairs_quarantined`: candidate pairs that failed their proof through KMS
    /// and are not acknowledged (docs/design.md, "Proof before publication").
    quarantined: i64,
    /// `kekeeper_key_store_synced`: 1 while the KeyStoreSynced condition is True, 0 while it is
    /// False; `None` (no series) without a key store.
    key_store_synced: Option<i64>,
    /// `kekeeper_suspended`: 1 while the resource is suspended (Ready=False Suspended), so
    /// that the not-Ready alert can leave it out.
    suspended: i64,
    /// `kekeeper_rewrap_failed`: 1 while the rewrap onto the current KMS key fails
    /// (Rewrapped=False RewrapFailed; docs/design.md, "Rewrap").
    rewrap_failed: i64,
}

impl ResourceValues {
    fn of(
        status: &RecordingKeyConfigStatus,
        acknowledged: &std::collections::BTreeSet<String>,
    ) -> Self {
        let is_true = |type_: &str| {
            i64::from(
                status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True"),
            )
        };
        let count = |reason: &str| {
            status
                .key_pair_problems
                .iter()
                .filter(|p| p.reason == reason)
                .count() as i64
        };
        let quarantined = status
            .key_pair_problems
            .iter()
            .filter(|p| p.reason == "KeyPairQuarantined" && !acknowledged.contains(&p.key_pair_id))
            .count() as i64;
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
        ResourceValues {
            ready: is_true("Ready"),
            kms_available: is_true("KmsAvailable"),
            keys_at_risk: status.key_pairs_at_risk.len() as i64,
            next_rotation: status.next_rotation_time.map(|t| t.as_second() as f64),
            // The reasons of keyring.rs (which sits above this module).
            integrity_problems: count("PublicKeyMismatch") + count("CustodyCheckFailed"),
            missing: count("KeyPairMissing"),
            quarantined,
            key_store_synced: condition("KeyStoreSynced").map(|c| i64::from(c.status == "True")),
            suspended: i64::from(condition("Ready").is_some_and(|c| c.reason == "Suspended")),
            rewrap_failed: i64::from(
                condition("Rewrapped").is_some_and(|c| c.reason == "RewrapFailed"),
            ),
        }
    }
}

/// A gauge value, printed as the gauge it stands for would print it.
enum GaugeValue {
    Count(i64),
    Seconds(f64),
}

/// (name, help, value) of each per-resource gauge; `None` leaves the series out.
type GaugeOf = fn(&ResourceValues) -> Option<GaugeValue>;
const RESOURCE_GAUGES: [(&str, &str, GaugeOf); 10] = [
    ("ready", "1 while the RecordingKeyConfig is Ready", |v| {
        Some(GaugeValue::Count(v.ready))
    }),
    (
        "kms_available",
        "1 while the last KMS interaction of the RecordingKeyConfig succeeded",
        |v| Some(GaugeValue::Count(v.kms_available)),
    ),
    (
        "historical_keys_at_risk",
        "Retained key pairs whose KMS key is disabled, pending deletion or gone",
        |v| Some(GaugeValue::Count(v.keys_at_risk)),
    ),
    (
        "next_rotation_timestamp_seconds",
        "When the next rotation of a RecordingKeyConfig is due",
        |v| v.next_rotation.map(GaugeValue::Seconds),
    ),
    (
        "key_pair_integrity_problems",
        "Key pairs whose Secret disagrees with the fingerprint recorded in status or that failed the KMS custody check",
        |v| Some(GaugeValue::Count(v.integrity_problems)),
    ),
    (
        "key_pairs_missing",
        "Key pairs recorded in status whose Secret is gone (not pruned, not acknowledged)",
        |v| Some(GaugeValue::Count(v.missing)),
    ),
    (
        "key_pairs_quarantined",
        "Candidate key pairs (Secrets or key store objects the operator did not make) that failed their proof through KMS and are not acknowledged: never active, never published",
        |v| Some(GaugeValue::Count(v.quarantined)),
    ),
    (
        "key_store_synced",
        "1 while every retained key pair has its object in the key store (KeyStoreSynced); absent without a key store",
        |v| v.key_store_synced.map(GaugeValue::Count),
    ),
    (
        "suspended",
        "1 while the RecordingKeyConfig is suspended (spec.suspend)",
        |v| Some(GaugeValue::Count(v.suspended)),
    ),
    (
        "rewrap_failed",
        "1 while the rewrap of retained key pairs onto the current KMS key fails (Rewrapped=False RewrapFailed)",
        |v| Some(GaugeValue::Count(v.rewrap_failed)),
    ),
];

impl ResourceGauges {
    fn set(&self, config: &ConfigLabels, values: ResourceValues) {
        let mut map = self.values.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(config) {
            Some(current) => *current = values,
            None => {
                map.insert(config.clone(), values);
            }
        }
    }

    fn forget(&self, config: &ConfigLabels) {
        self.values
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(config);
    }
}

impl Collector for ResourceGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.values.read().unwrap_or_else(|p| p.into_inner());
        for (name, help, value_of) in RESOURCE_GAUGES {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, values) in map.iter() {
                match value_of(values) {
                    Some(GaugeValue::Count(n)) => metric.encode_family(labels)?.encode_gauge(&n)?,
                    Some(GaugeValue::Seconds(s)) => {
                        metric.encode_family(labels)?.encode_gauge(&s)?
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::fake::FakeKms;
    use crate::kms::{KmsErrorKind, KmsOperation};

    #[test]
    fn per_resource_gauges_are_printed_and_forgotten() {
        let metrics = Metrics::default();
        let config = ConfigLabels {
            namespace: "ns".into(),
            config: "recordings".into(),
        };
        let status: RecordingKeyConfigStatus = serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "KeyPairsActive",
                            "message": "", "lastTransitionTime": "2026-11-30T00:00:00Z"}],
            "nextRotationTime": "2026-12-30T00:00:00Z",
            "keyPairsAtRisk": ["arn:aws:kms:us-east-1:111122223333:key/k: Disabled"],
        }))
        .unwrap();
        metrics.record_status(&config, &status, &Default::default());
        let text = metrics.encode();
        let series = r#"{namespace="ns",config="recordings"}"#;
        for line in [
            format!("kekeeper_ready{series} 1"),
            format!("kekeeper_kms_available{series} 0"),
            format!("kekeeper_historical_keys_at_risk{series} 1"),
            format!("kekeeper_next_rotation_timestamp_seconds{series} 1798588800.0"),
            format!("kekeeper_key_pair_integrity_problems{series} 0"),
            format!("kekeeper_key_pairs_missing{series} 0"),
            format!("kekeeper_suspended{series} 0"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains("# TYPE kekeeper_ready gauge"), "{text}");
        assert!(
            !text.contains("kekeeper_key_store_synced{"),
            "no key store, no series:\n{text}"
        );
        metrics.forget(&config, Some("uid"), Some(&status));
        assert!(!metrics.encode().contains("recordings"));
    }

    fn condition(type_: &str, status: &str, reason: &str) -> serde_json::Value {
        serde_json::json!({"type": type_, "status": status, "reason": reason, "message": "",
                           "lastTransitionTime": "2026-11-30T00:00:00Z"})
    }

    /// The key store gauge follows KeyStoreSynced; a suspended resource says so, for the
    /// not-Ready alert to leave it out.
    #[test]
    fn key_store_and_suspended_gauges_follow_their_conditions() {
        let metrics = Metrics::default();
        let config = ConfigLabels {
            namespace: "ns".into(),
            config: "held".into(),
        };
        let series = r#"{namespace="ns",config="held"}"#;
        let status = |conditions: Vec<serde_json::Value>| -> RecordingKeyConfigStatus {
            serde_json::from_value(serde_json::json!({ "conditions": conditions })).unwrap()
        };
        metrics.record_status(
            &config,
            &status(vec![
                condition("Ready", "False", "Suspended"),
                condition("KeyStoreSynced", "False", "KeyStoreUnavailable"),
            ]),
            &Default::default(),
        );
        let text = metrics.encode();
        for line in [
            format!("kekeeper_ready{series} 0"),
            format!("kekeeper_suspended{series} 1"),
            format!("kekeeper_key_store_synced{series} 0"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        metrics.record_status(
            &config,
            &status(vec![
                condition("Ready", "False", "Rotating"),
                condition("KeyStoreSynced", "True", "KeyPairsStored"),
            ]),
            &Default::default(),
        );
        let text = metrics.encode();
        for line in [
            format!("kekeeper_suspended{series} 0"),
            format!("kekeeper_key_store_synced{series} 1"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    /// Every metric on /metrics is listed in docs/operations.md (the chart's alerts and
    /// dashboard may only use the names listed there: tests/chart/conftest.py reads them).
    #[test]
    fn every_metric_is_documented_in_operations_md() {
        let metrics = Metrics::default();
        let config = ConfigLabels {
            namespace: "ns".into(),
            config: "c".into(),
        };
        metrics.record_status(
            &config,
            &serde_json::from_value(serde_json::json!({
                "conditions": [condition("KeyStoreSynced", "True", "KeyPairsStored")],
                "nextRotationTime": "2026-12-30T00:00:00Z",
            }))
            .unwrap(),
            &Default::default(),
        );
        // Families print only once they have a series.
        metrics.count_error("KubeApi".into());
        metrics.count_store("written", 1);
        metrics
            .kms_calls
            .get_or_create(&KmsCallLabels {
                operation: "Decrypt".into(),
                outcome: "ok".into(),
            })
            .inc();
        metrics
            .key_pair_created
            .get_or_create(&KeyPairLabels {
                namespace: "ns".into(),
                config: "c".into(),
                organization_id: "o".into(),
            })
            .set(1);
        let text = metrics.encode();
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
        )
        .unwrap();
        let listed = docs
            .split("## Metrics")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap();
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                // Counters are exposed with the _total suffix.
                let name = if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                names.push(name);
            }
        }
        assert!(names.len() >= 12, "{names:?}");
        for name in names {
            assert!(
                listed.contains(&format!("`{name}")),
                "{name} is exported but not listed under \"## Metrics\" in docs/operations.md"
            );
        }
    }

    /// The deleted resources' uids are bounded: past [`FORGOTTEN_UIDS_KEPT`], the oldest go.
    #[test]
    fn forgotten_uids_are_bounded_oldest_first() {
        let metrics = Metrics::default();
        let config = ConfigLabels {
            namespace: "ns".into(),
            config: "c".into(),
        };
        let uid = |i: usize| format!("uid-{i}");
        for i in 0..FORGOTTEN_UIDS_KEPT + 10 {
            metrics.forget(&config, Some(&uid(i)), None);
        }
        // Forgetting one again does not count twice.
        metrics.forget(&config, Some(&uid(FORGOTTEN_UIDS_KEPT + 9)), None);
        let forgotten = metrics.forgotten.lock().unwrap();
        assert_eq!(forgotten.uids.len(), FORGOTTEN_UIDS_KEPT);
        assert_eq!(forgotten.order.len(), FORGOTTEN_UIDS_KEPT);
        drop(forgotten);
        assert!(!metrics.is_forgotten(Some(&uid(9))));
        assert!(metrics.is_forgotten(Some(&uid(10))));
        assert!(metrics.is_forgotten(Some(&uid(FORGOTTEN_UIDS_KEPT + 9))));
    }

    #[tokio::test]
    async fn counts_kms_calls_by_operation_and_outcome() {
        let metrics = Metrics::default();
        let fake = FakeKms::new();
        let alias = AliasArn::parse("arn:aws:kms:us-east-1:111122223333:alias/recordings").unwrap();
        fake.create_key_for(&alias);
        fake.fail_next(KmsOperation::DescribeKey, KmsErrorKind::Throttling);
        let kms = MeteredKms {
            inner: fake,
            metrics: metrics.clone(),
        };
        assert!(kms.describe_key(&alias).await.is_err());
        assert!(kms.describe_key(&alias).await.is_ok());
        metrics.reconciles.inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"kekeeper_kms_calls_total{operation="DescribeKey",outcome="ThrottlingException"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kekeeper_kms_calls_total{operation="DescribeKey",outcome="ok"} 1"#)
        );
        assert!(text.contains("kekeeper_reconciles_total 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
