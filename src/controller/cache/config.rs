//! RecordingKeyConfigs as the controller's cache keeps them (docs/design.md, "Caches"): typed,
//! less what the controller never reads ([`slim_config`]), with the status conditions'
//! strings shared between resources ([`CachedConfig`]).

use std::borrow::Cow;
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
/// status conditions kept with shared strings. The conditions are the largest part of the
/// status and nearly the same on every resource (seven types, a few reasons, messages that
/// name the same KMS key). [`CachedConfig::to_config`] gives the resource back as it was
/// slimmed. The same API resource as [`RecordingKeyConfig`], for kube's controller.
#[derive(Clone, Debug)]
pub struct CachedConfig {
    pub metadata: ObjectMeta,
    spec: RecordingKeyConfigSpec,
    /// The status without its conditions, and the conditions.
    status: Option<(RecordingKeyConfigStatus, Box<[CachedCondition]>)>,
}

/// A status condition with shared strings.
#[derive(Clone, Debug)]
struct CachedCondition {
    type_: Arc<str>,
    status: Arc<str>,
    reason: Arc<str>,
    message: Arc<str>,
    last_transition_time: Time,
    observed_generation: Option<i64>,
}

impl CachedCondition {
    fn new(condition: &Condition, strings: &mut Interner) -> Self {
        CachedCondition {
            type_: strings.get(&condition.type_),
            status: strings.get(&condition.status),
            reason: strings.get(&condition.reason),
            message: strings.get(&condition.message),
            last_transition_time: condition.last_transition_time.clone(),
            observed_generation: condition.observed_generation,
        }
    }

    fn to_condition(&self) -> Condition {
        Condition {
            type_: self.type_.as_ref().into(),
            status: self.status.as_ref().into(),
            reason: self.reason.as_ref().into(),
            message: self.message.as_ref().into(),
            last_transition_time: self.last_transition_time.clone(),
            observed_generation: self.observed_generation,
        }
    }
}

impl CachedConfig {
    pub fn new(mut rkc: RecordingKeyConfig, strings: &mut Interner) -> Self {
        slim_config(&mut rkc);
        let status = rkc.status.map(|mut status| {
            let conditions = std::mem::take(&mut status.conditions)
                .iter()
                .map(|c| CachedCondition::new(c, strings))
                .collect();
            (status, conditions)
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
        rkc.status = self.status.as_ref().map(|(status, conditions)| {
            let mut status = status.clone();
            status.conditions = conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect();
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
/// their condition strings. Strings no cached resource holds any more are dropped whenever
/// the shared set has doubled since the last sweep.
#[derive(Default)]
pub struct ConfigCompactor {
    strings: Interner,
    sweep_at: usize,
}

/// The shared set is never swept below this many strings.
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
        if self.strings.len() >= self.sweep_at.max(MIN_SWEEP_AT) {
            self.strings.sweep();
            self.sweep_at = 2 * self.strings.len();
        }
        event
    }

    fn compact(&mut self, rkc: RecordingKeyConfig) -> CachedConfig {
        CachedConfig::new(rkc, &mut self.strings)
    }
}

/// Only for kube's bound on a controller's resource type: the controller is fed by
/// [`ConfigCompactor`], which shares strings between resources; this does not.
impl<'de> Deserialize<'de> for CachedConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rkc = RecordingKeyConfig::deserialize(deserializer)?;
        Ok(CachedConfig::new(rkc, &mut Interner::default()))
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
        let mut strings = Interner::default();
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut rkc: RecordingKeyConfig = serde_json::from_str(&text).unwrap();
            rkc.metadata.managed_fields = Some(vec![Default::default()]);
            let cached = CachedConfig::new(rkc.clone(), &mut strings);
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

    /// Two resources with the same conditions hold one copy of their strings.
    #[test]
    fn condition_strings_are_shared() {
        let mut compactor = ConfigCompactor::default();
        let rkc: RecordingKeyConfig = serde_json::from_str(READY).unwrap();
        let mut other = rkc.clone();
        other.metadata.name = Some("other".into());
        let message = |event: watcher::Event<CachedConfig>| match event {
            watcher::Event::Apply(cached) => cached.status.unwrap().1[0].message.clone(),
            _ => unreachable!(),
        };
        let a = message(compactor.event(watcher::Event::Apply(rkc)));
        let b = message(compactor.event(watcher::Event::Apply(other)));
        assert!(Arc::ptr_eq(&a, &b));
    }

    /// Strings no cached resource holds any more go once the set has doubled.
    #[test]
    fn unused_strings_are_swept() {
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
            compactor.strings.len() <= 2 * MIN_SWEEP_AT,
            "{} strings",
            compactor.strings.len()
        );
        let watcher::Event::Apply(kept) = kept else {
            unreachable!()
        };
        assert_eq!(
            serde_json::to_value(kept.to_config()).unwrap(),
            serde_json::to_value(rkc).unwrap()
        );
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
