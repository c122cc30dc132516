//! RecordingKeyConfigs as the controller's cache keeps them (docs/design.md, "Caches"): typed,
//! less what the controller never reads ([`slim_config`]), with the status conditions' texts
//! and the KMS ARNs of the status shared between resources ([`CachedConfig`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::{Deserialize, Deserializer};

use super::Interner;
use crate::crd::{RecordingKeyConfig, RecordingKeyConfigSpec, RecordingKeyConfigStatus};

/// `kubectl apply`'s copy of an object, an annotation the controller never reads.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the controller never reads from a RecordingKeyConfig: its field managers and
/// `kubectl apply`'s copy of the object. Nothing else is touched.
pub fn slim_config(rkc: &mut RecordingKeyConfig) {
    rkc.metadata.managed_fields = None;
    if let Some(annotations) = rkc.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            rkc.metadata.annotations = None;
        }
    }
}

/// One RecordingKeyConfig in the controller's cache: the resource after [`slim_config`], its
/// status kept with the parts that are the same on many resources shared between them, and
/// with its per-organisation sequence numbers in a list rather than a map (docs/design.md,
/// "Caches"). [`CachedConfig::to_config`] gives the resource back as it was slimmed. The same
/// API resource as [`RecordingKeyConfig`], for kube's controller.
#[derive(Clone, Debug)]
pub struct CachedConfig {
    pub metadata: ObjectMeta,
    spec: RecordingKeyConfigSpec,
    /// Boxed: most of a cached resource's size is its status, and a smaller `CachedConfig`
    /// fits a smaller allocation.
    status: Option<Box<CachedStatus>>,
}

/// A resource's status as the cache keeps it.
#[derive(Clone, Debug)]
struct CachedStatus {
    /// The status without its conditions, `highestSequences`, `kmsKeyAliasArn` and
    /// `kmsKeyArn`, which are kept below.
    rest: RecordingKeyConfigStatus,
    conditions: Box<[CachedCondition]>,
    /// `highestSequences` (a map of one organisation costs a whole tree node).
    highest_sequences: Box<[(Box<str>, u64)]>,
    kms_key_alias_arn: Option<Arc<str>>,
    kms_key_arn: Option<Arc<str>>,
}

/// A status condition: its text (type, status, reason, message) shared between resources,
/// and its own time and generation.
#[derive(Clone, Debug)]
struct CachedCondition {
    text: Arc<ConditionText>,
    last_transition_time: Time,
    observed_generation: Option<i64>,
}

/// What a condition says, nearly the same on every resource (seven types, a few reasons,
/// messages that name the same KMS key).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConditionText {
    type_: Box<str>,
    status: Box<str>,
    reason: Box<str>,
    message: Box<str>,
}

/// The parts of cached resources kept once however many resources have them: condition texts
/// and KMS ARNs.
#[derive(Default)]
pub struct SharedParts {
    texts: HashSet<Arc<ConditionText>>,
    strings: Interner,
}

impl SharedParts {
    fn len(&self) -> usize {
        self.texts.len() + self.strings.len()
    }

    /// Drops the parts no cached resource holds any more.
    fn sweep(&mut self) {
        self.texts.retain(|t| Arc::strong_count(t) > 1);
        self.strings.sweep();
    }

    fn condition(&mut self, condition: Condition) -> CachedCondition {
        let text = ConditionText {
            type_: condition.type_.into(),
            status: condition.status.into(),
            reason: condition.reason.into(),
            message: condition.message.into(),
        };
        let text = match self.texts.get(&text) {
            Some(kept) => kept.clone(),
            None => {
                let kept = Arc::new(text);
                self.texts.insert(kept.clone());
                kept
            }
        };
        CachedCondition {
            text,
            last_transition_time: condition.last_transition_time,
            observed_generation: condition.observed_generation,
        }
    }
}

impl CachedCondition {
    fn to_condition(&self) -> Condition {
        Condition {
            type_: self.text.type_.as_ref().into(),
            status: self.text.status.as_ref().into(),
            reason: self.text.reason.as_ref().into(),
            message: self.text.message.as_ref().into(),
            last_transition_time: self.last_transition_time.clone(),
            observed_generation: self.observed_generation,
        }
    }
}

impl CachedConfig {
    pub fn new(mut rkc: RecordingKeyConfig, shared: &mut SharedParts) -> Self {
        slim_config(&mut rkc);
        let status = rkc.status.map(|mut rest| {
            let conditions = std::mem::take(&mut rest.conditions)
                .into_iter()
                .map(|c| shared.condition(c))
                .collect();
            let highest_sequences = std::mem::take(&mut rest.highest_sequences)
                .into_iter()
                .map(|(org, n)| (org.into_boxed_str(), n))
                .collect();
            let kms_key_alias_arn = rest
                .kms_key_alias_arn
                .take()
                .map(|a| shared.strings.get(&a));
            let kms_key_arn = rest.kms_key_arn.take().map(|a| shared.strings.get(&a));
            Box::new(CachedStatus {
                rest,
                conditions,
                highest_sequences,
                kms_key_alias_arn,
                kms_key_arn,
            })
        });
        CachedConfig {
            metadata: rkc.metadata,
            spec: rkc.spec,
            status,
        }
    }

    /// The resource, as it was after [`slim_config`].
    pub fn to_config(&self) -> RecordingKeyConfig {
        let mut rkc = RecordingKeyConfig::new("", self.spec.clone());
        rkc.metadata = self.metadata.clone();
        rkc.status = self.status.as_deref().map(|cached| {
            let mut status = cached.rest.clone();
            status.conditions = cached
                .conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect();
            status.highest_sequences = cached
                .highest_sequences
                .iter()
                .map(|(org, n)| (org.to_string(), *n))
                .collect();
            status.kms_key_alias_arn = cached.kms_key_alias_arn.as_deref().map(str::to_owned);
            status.kms_key_arn = cached.kms_key_arn.as_deref().map(str::to_owned);
            status
        });
        rkc
    }

    /// The resource's key in the failure counts (`ObjectRef` equality is by name and
    /// namespace, so this equals `ObjectRef::from_obj` of the resource).
    pub fn object_ref(&self) -> ObjectRef<RecordingKeyConfig> {
        let mut object = ObjectRef::new(self.metadata.name.as_deref().unwrap_or_default());
        object.namespace = self.metadata.namespace.clone();
        object
    }
}

/// Turns the watch events of RecordingKeyConfigs into those of [`CachedConfig`]s, sharing
/// what they have in common. Parts no cached resource holds any more are dropped whenever the
/// shared set has doubled since the last sweep.
#[derive(Default)]
pub struct ConfigCompactor {
    shared: SharedParts,
    sweep_at: usize,
}

/// The shared set is never swept below this many parts.
const MIN_SWEEP_AT: usize = 1024;

impl ConfigCompactor {
    pub fn event(
        &mut self,
        event: watcher::Event<RecordingKeyConfig>,
    ) -> watcher::Event<CachedConfig> {
        let event = match event {
            watcher::Event::Apply(rkc) => watcher::Event::Apply(self.compact(rkc)),
            watcher::Event::Delete(rkc) => watcher::Event::Delete(self.compact(rkc)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(rkc) => watcher::Event::InitApply(self.compact(rkc)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        };
        if self.shared.len() >= self.sweep_at.max(MIN_SWEEP_AT) {
            self.shared.sweep();
            self.sweep_at = 2 * self.shared.len();
        }
        event
    }

    fn compact(&mut self, rkc: RecordingKeyConfig) -> CachedConfig {
        CachedConfig::new(rkc, &mut self.shared)
    }
}

/// Only for kube's bound on a controller's resource type: the controller is fed by
/// [`ConfigCompactor`], which shares parts between resources; this does not.
impl<'de> Deserialize<'de> for CachedConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rkc = RecordingKeyConfig::deserialize(deserializer)?;
        Ok(CachedConfig::new(rkc, &mut SharedParts::default()))
    }
}

impl Resource for CachedConfig {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const READY: &str = include_str!("../../../tests/fixtures/status/ready.json");

    /// Slimming drops the field managers and the last-applied annotation and nothing else:
    /// other metadata, spec and status stay as they were.
    #[test]
    fn a_slim_config_keeps_all_but_managed_fields_and_last_applied() {
        let mut rkc: RecordingKeyConfig = serde_json::from_str(READY).unwrap();
        rkc.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        rkc.metadata.labels = Some(BTreeMap::from([("team".into(), "voice".into())]));
        rkc.metadata.annotations = Some(BTreeMap::from([
            ("kekeeper.io/rotate-now".into(), "t1".into()),
            (LAST_APPLIED_ANNOTATION.into(), READY.into()),
        ]));
        let expected = {
            let mut rkc = rkc.clone();
            rkc.metadata.annotations = Some(BTreeMap::from([(
                "kekeeper.io/rotate-now".into(),
                "t1".into(),
            )]));
            serde_json::to_value(rkc).unwrap()
        };
        rkc.metadata.managed_fields = Some(vec![Default::default()]);
        slim_config(&mut rkc);
        assert_eq!(rkc.metadata.managed_fields, None);
        assert_eq!(serde_json::to_value(&rkc).unwrap(), expected);
        assert!(rkc.status.is_some());
    }

    /// A resource whose only annotation was the last-applied one has none left; every status
    /// fixture (a resource in each state) is otherwise unchanged.
    #[test]
    fn slimming_each_status_fixture_drops_only_last_applied() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/status");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let original: RecordingKeyConfig = serde_json::from_str(&text).unwrap();
            let mut slim = original.clone();
            slim_config(&mut slim);
            if path.ends_with("stale-generation.json") {
                // Its one annotation is the last-applied one.
                assert_eq!(slim.metadata.annotations, None);
            }
            let mut expected = serde_json::to_value(&original).unwrap();
            let metadata = expected["metadata"].as_object_mut().unwrap();
            metadata.remove("managedFields");
            if let Some(annotations) = metadata
                .get_mut("annotations")
                .and_then(|a| a.as_object_mut())
            {
                annotations.remove(LAST_APPLIED_ANNOTATION);
                if annotations.is_empty() {
                    metadata.remove("annotations");
                }
            }
            assert_eq!(serde_json::to_value(&slim).unwrap(), expected);
            seen += 1;
        }
        assert!(seen >= 10, "{seen} fixtures");
    }

    /// Every status fixture comes back from the cache as it was slimmed.
    #[test]
    fn a_cached_config_gives_the_slim_resource_back() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/status");
        let mut shared = SharedParts::default();
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut rkc: RecordingKeyConfig = serde_json::from_str(&text).unwrap();
            rkc.metadata.managed_fields = Some(vec![Default::default()]);
            let cached = CachedConfig::new(rkc.clone(), &mut shared);
            slim_config(&mut rkc);
            assert_eq!(
                serde_json::to_value(cached.to_config()).unwrap(),
                serde_json::to_value(&rkc).unwrap()
            );
            assert_eq!(cached.object_ref(), ObjectRef::from_obj(&rkc));
            seen += 1;
        }
        assert!(seen >= 10, "{seen} fixtures");
    }

    /// Two resources with the same conditions hold one copy of their texts.
    #[test]
    fn condition_texts_are_shared() {
        let mut compactor = ConfigCompactor::default();
        let rkc: RecordingKeyConfig = serde_json::from_str(READY).unwrap();
        let mut other = rkc.clone();
        other.metadata.name = Some("other".into());
        let message = |event: watcher::Event<CachedConfig>| match event {
            watcher::Event::Apply(cached) => cached.status.unwrap().conditions[0].text.clone(),
            _ => unreachable!(),
        };
        let a = message(compactor.event(watcher::Event::Apply(rkc)));
        let b = message(compactor.event(watcher::Event::Apply(other)));
        assert!(Arc::ptr_eq(&a, &b));
    }

    /// Texts no cached resource holds any more go once the set has doubled.
    #[test]
    fn unused_texts_are_swept() {
        let mut compactor = ConfigCompactor::default();
        let rkc: RecordingKeyConfig = serde_json::from_str(READY).unwrap();
        let kept = compactor.event(watcher::Event::Apply(rkc.clone()));
        for i in 0..5 * MIN_SWEEP_AT {
            let mut changed = rkc.clone();
            let status = changed.status.as_mut().unwrap();
            status.conditions[0].message = format!("message {i}");
            drop(compactor.event(watcher::Event::Apply(changed)));
        }
        assert!(
            compactor.shared.len() <= 2 * MIN_SWEEP_AT,
            "{} shared parts",
            compactor.shared.len()
        );
        let watcher::Event::Apply(kept) = kept else {
            unreachable!()
        };
        assert_eq!(
            serde_json::to_value(kept.to_config()).unwrap(),
            serde_json::to_value(rkc).unwrap()
        );
    }

    /// The parts kept apart (sequences of several organisations, the status's ARNs) come back
    /// as they were.
    #[test]
    fn sequences_and_arns_come_back() {
        let mut rkc: RecordingKeyConfig = serde_json::from_str(READY).unwrap();
        let status = rkc.status.as_mut().unwrap();
        status.highest_sequences = BTreeMap::from([
            ("org-b".into(), 7),
            ("org-a".into(), 3),
            ("org-c".into(), 1),
        ]);
        status.kms_key_alias_arn = None;
        let mut shared = SharedParts::default();
        let cached = CachedConfig::new(rkc.clone(), &mut shared);
        assert_eq!(
            serde_json::to_value(cached.to_config()).unwrap(),
            serde_json::to_value(&rkc).unwrap()
        );
        let status = cached.status.as_deref().unwrap();
        assert!(status.rest.highest_sequences.is_empty());
        assert_eq!(status.rest.kms_key_arn, None);
        let again = CachedConfig::new(rkc, &mut shared);
        let arn = |c: &CachedConfig| c.status.as_deref().unwrap().kms_key_arn.clone().unwrap();
        assert!(Arc::ptr_eq(&arn(&cached), &arn(&again)));
    }

    #[test]
    fn the_same_api_resource() {
        assert_eq!(CachedConfig::kind(&()), RecordingKeyConfig::kind(&()));
        assert_eq!(
            CachedConfig::url_path(&(), Some("ns")),
            RecordingKeyConfig::url_path(&(), Some("ns"))
        );
    }
}
