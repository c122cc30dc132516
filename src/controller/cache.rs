//! The controller's caches of the objects it owns, holding what a reconcile reads rather than
//! the objects: a key pair Secret as its record without the private key blob (only the custody
//! check needs the blob, and it lists the Secrets fresh), a public-keys ConfigMap as a digest
//! of its labels and data. Entries are grouped by a key the reconcile knows (the config label),
//! so a resource's key pairs are found without scanning every Secret. Fed by one watch per
//! kind; a relist replaces the contents in one step once it is complete. The resources
//! themselves are kept in kube's store as [`CachedConfig`]s (`config.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aws_lc_rs::digest;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::warn;

use crate::keypair::{
    ANNOTATION_ROTATE_NOW_TOKEN, KeyPairRecord, KeyPairSecret, KeyPairState, LABEL_CONFIG,
};
use crate::kms::{EncryptionContext, KeyPairSpec};

mod config;
pub use config::{
    CachedConfig, ConfigCompactor, LAST_APPLIED_ANNOTATION, SharedParts, slim_config,
};

/// A cache of `K` objects kept as `V`, grouped within their namespace.
pub struct Cache<K, V> {
    shared: Arc<Shared<V>>,
    /// The group and the kept value of an object; `None` keeps nothing of it.
    compact: fn(&K, &mut Interner) -> Option<(String, V)>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            shared: self.shared.clone(),
            compact: self.compact,
        }
    }
}

struct Shared<V> {
    state: RwLock<State<V>>,
    synced: watch::Sender<bool>,
}

struct State<V> {
    live: Contents<V>,
    /// A relist in progress: it replaces `live` when done.
    relist: Option<Contents<V>>,
}

/// (namespace, group) → (name, value)s, and (namespace, name) → group to move or drop an
/// entry whose group is not its own name (an object in no `group_of` entry is in the group of
/// its name, if anywhere). A group is small (a resource's key pairs), so a list sized to it,
/// not a map.
struct Contents<V> {
    groups: HashMap<(String, String), Vec<(String, V)>>,
    group_of: HashMap<(String, String), String>,
    interner: Interner,
}

impl<V> Default for Contents<V> {
    fn default() -> Self {
        Contents {
            groups: HashMap::new(),
            group_of: HashMap::new(),
            interner: Interner::default(),
        }
    }
}

impl<V> Contents<V> {
    fn insert(&mut self, namespace: String, name: String, group: String, value: V) {
        self.remove(&namespace, &name);
        let members = self
            .groups
            .entry((namespace.clone(), group.clone()))
            .or_default();
        members.push((name.clone(), value));
        members.shrink_to_fit();
        if group != name {
            self.group_of.insert((namespace, name), group);
        }
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let group = self
            .group_of
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| name.to_owned());
        let key = (namespace.to_owned(), group);
        if let Some(members) = self.groups.get_mut(&key) {
            members.retain(|(member, _)| member != name);
            if members.is_empty() {
                self.groups.remove(&key);
            }
        }
    }
}

/// Strings that many cached values share (the KMS key ARN, say), each kept once. A relist
/// starts a new one, so values no longer seen do not stay.
#[derive(Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    pub fn get(&mut self, value: &str) -> Arc<str> {
        if let Some(kept) = self.strings.get(value) {
            return kept.clone();
        }
        let kept: Arc<str> = value.into();
        self.strings.insert(kept.clone());
        kept
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// Drops the strings nothing else holds any more.
    pub fn sweep(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }
}

impl<K: kube::Resource, V> Cache<K, V> {
    pub fn new(compact: fn(&K, &mut Interner) -> Option<(String, V)>) -> Self {
        Cache {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    live: Contents::default(),
                    relist: None,
                }),
                synced: watch::Sender::new(false),
            }),
            compact,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State<V>> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<V>> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one watch event, as a reflector's store would.
    pub fn apply_watcher_event(&self, event: &watcher::Event<K>) {
        let mut state = self.write();
        match event {
            watcher::Event::Apply(object) => self.keep(&mut state.live, object),
            watcher::Event::Delete(object) => {
                state
                    .live
                    .remove(&object.namespace().unwrap_or_default(), &object.name_any());
            }
            watcher::Event::Init => state.relist = Some(Contents::default()),
            watcher::Event::InitApply(object) => {
                let mut relist = state.relist.take().unwrap_or_default();
                self.keep(&mut relist, object);
                state.relist = Some(relist);
            }
            watcher::Event::InitDone => {
                if let Some(relist) = state.relist.take() {
                    state.live = relist;
                }
                drop(state);
                self.shared.synced.send_replace(true);
            }
        }
    }

    fn keep(&self, contents: &mut Contents<V>, object: &K) {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        match (self.compact)(object, &mut contents.interner) {
            Some((group, value)) => contents.insert(namespace, name, group, value),
            None => contents.remove(&namespace, &name),
        }
    }

    /// `read` of each value of one group, with its object's name.
    pub fn group<T>(&self, namespace: &str, group: &str, read: impl Fn(&str, &V) -> T) -> Vec<T> {
        self.read()
            .live
            .groups
            .get(&(namespace.to_owned(), group.to_owned()))
            .map(|members| {
                members
                    .iter()
                    .map(|(name, value)| read(name, value))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value kept of one object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<V>
    where
        V: Clone,
    {
        let state = self.read();
        let group = state
            .live
            .group_of
            .get(&(namespace.to_owned(), name.to_owned()))
            .map_or(name, String::as_str);
        state
            .live
            .groups
            .get(&(namespace.to_owned(), group.to_owned()))?
            .iter()
            .find(|(member, _)| member == name)
            .map(|(_, value)| value.clone())
    }

    /// Objects kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.read().live.groups.values().map(Vec::len).sum()
    }

    /// Waits until the first list is complete.
    pub async fn synced(&self) {
        let mut synced = self.shared.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }
}

/// A key pair Secret as the cache keeps it: its record without the private key blob, the
/// config name and the namespace (the group's), the strings every pair has the same shared.
#[derive(Clone, Debug)]
pub struct CachedKeyPair {
    organization_id: Box<str>,
    sequence: u64,
    secret_name: Box<str>,
    key_pair_id: Box<str>,
    kms_key_arn: Arc<str>,
    kms_key_alias_arn: Option<Arc<str>>,
    key_pair_spec: KeyPairSpec,
    context_key: Arc<str>,
    created_at: Timestamp,
    reason: Arc<str>,
    state: KeyPairState,
    retired_at: Option<Timestamp>,
    public_key_der: Box<[u8]>,
    /// The `kekeeper.io/rotate-now-token` annotation.
    rotate_now_token: Option<Box<str>>,
}

impl CachedKeyPair {
    fn new(
        record: KeyPairRecord,
        rotate_now_token: Option<&String>,
        shared: &mut Interner,
    ) -> Self {
        CachedKeyPair {
            organization_id: record.organization_id.into(),
            sequence: record.sequence,
            secret_name: record.secret_name.into(),
            key_pair_id: record.key_pair_id.into(),
            kms_key_arn: shared.get(&record.kms_key_arn),
            kms_key_alias_arn: record.kms_key_alias_arn.as_deref().map(|a| shared.get(a)),
            key_pair_spec: record.key_pair_spec,
            context_key: shared.get(&record.encryption_context.key),
            created_at: record.created_at,
            reason: shared.get(&record.reason),
            state: record.state,
            retired_at: record.retired_at,
            public_key_der: record.public_key_der.into(),
            rotate_now_token: rotate_now_token.map(|t| t.as_str().into()),
        }
    }

    /// The record of a pair of `config` in `namespace` (the cache keeps no private key blob,
    /// and a [`KeyPairRecord`] has none).
    pub fn record(&self, config: &str, namespace: &str) -> KeyPairRecord {
        KeyPairRecord {
            config_name: config.to_owned(),
            namespace: namespace.to_owned(),
            organization_id: self.organization_id.to_string(),
            sequence: self.sequence,
            secret_name: self.secret_name.to_string(),
            key_pair_id: self.key_pair_id.to_string(),
            kms_key_arn: self.kms_key_arn.to_string(),
            kms_key_alias_arn: self.kms_key_alias_arn.as_deref().map(str::to_owned),
            key_pair_spec: self.key_pair_spec,
            encryption_context: EncryptionContext {
                key: self.context_key.to_string(),
                organization_id: self.organization_id.to_string(),
            },
            created_at: self.created_at,
            reason: self.reason.to_string(),
            state: self.state,
            retired_at: self.retired_at,
            public_key_der: self.public_key_der.to_vec(),
        }
    }

    pub fn rotate_now_token(&self) -> Option<&str> {
        self.rotate_now_token.as_deref()
    }
}

/// Key pair Secrets, grouped by their config label.
pub type KeyPairCache = Cache<Secret, CachedKeyPair>;

pub fn key_pair_cache() -> KeyPairCache {
    Cache::new(compact_key_pair)
}

/// What is kept of a key pair Secret; an unreadable one is logged (once per change, as it
/// arrives) and not kept, as a reconcile would skip it.
fn compact_key_pair(secret: &Secret, shared: &mut Interner) -> Option<(String, CachedKeyPair)> {
    let group = secret.labels().get(LABEL_CONFIG)?.clone();
    match KeyPairSecret::from_secret(secret) {
        Ok(pair) => {
            let token = secret.annotations().get(ANNOTATION_ROTATE_NOW_TOKEN);
            Some((group, CachedKeyPair::new(pair.into_record(), token, shared)))
        }
        Err(err) => {
            warn!(secret = %secret.name_any(), error = %err, "skipping unreadable key pair Secret");
            None
        }
    }
}

/// A SHA-256 digest of a ConfigMap's labels and data.
pub type ContentDigest = [u8; 32];

/// Public-keys ConfigMaps, each in its own group (its name).
pub type PublicKeysCache = Cache<ConfigMap, ContentDigest>;

pub fn public_keys_cache() -> PublicKeysCache {
    Cache::new(|config_map, _| Some((config_map.name_any(), content_digest(config_map))))
}

/// What decides whether a ConfigMap must be written again: its labels and data. Hashed
/// field by field (each string length-prefixed, each map after its presence and size), so
/// there is no serialisation that could fail and silently make every digest that of an empty
/// body (docs/design.md, "Serialisation failures are errors").
pub fn content_digest(config_map: &ConfigMap) -> ContentDigest {
    let mut context = digest::Context::new(&digest::SHA256);
    for map in [&config_map.metadata.labels, &config_map.data] {
        digest_map(&mut context, map.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Feeds an optional string map to `context` unambiguously: absent, or its size and each
/// key and value with its length.
fn digest_map(
    context: &mut digest::Context,
    map: Option<&std::collections::BTreeMap<String, String>>,
) {
    let Some(map) = map else {
        context.update(&[0]);
        return;
    };
    context.update(&[1]);
    context.update(&(map.len() as u64).to_le_bytes());
    for (key, value) in map {
        for s in [key, value] {
            context.update(&(s.len() as u64).to_le_bytes());
            context.update(s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn config_map(name: &str, group_label: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([(LABEL_CONFIG.into(), group_label.into())])),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// Grouped by label, like the key pair cache.
    fn by_label() -> Cache<ConfigMap, String> {
        Cache::new(|cm, _| Some((cm.labels().get(LABEL_CONFIG)?.clone(), cm.name_any())))
    }

    fn members(cache: &Cache<ConfigMap, String>, group: &str) -> Vec<(String, String)> {
        cache.group("ns", group, |name, value| (name.to_owned(), value.clone()))
    }

    #[test]
    fn an_object_moves_between_groups_and_leaves_on_delete() {
        let cache = by_label();
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "one")));
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("b", "one")));
        assert_eq!(members(&cache, "one").len(), 2);
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "two")));
        assert_eq!(members(&cache, "one").len(), 1);
        assert_eq!(members(&cache, "two"), vec![("a".into(), "a".into())]);
        assert!(cache.group("other", "two", |_, _| ()).is_empty());
        cache.apply_watcher_event(&watcher::Event::Delete(config_map("a", "two")));
        assert!(members(&cache, "two").is_empty());
        assert_eq!(cache.get("ns", "b"), Some("b".into()));
        assert_eq!(cache.len(), 1);
    }

    /// An object in the group of its own name has no `group_of` entry: it still moves out of
    /// it, back into it, and leaves on delete.
    #[test]
    fn an_object_in_its_own_group_moves_and_leaves() {
        let cache = by_label();
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "a")));
        assert_eq!(members(&cache, "a"), vec![("a".into(), "a".into())]);
        assert_eq!(cache.get("ns", "a"), Some("a".into()));
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "other")));
        assert!(members(&cache, "a").is_empty());
        assert_eq!(members(&cache, "other").len(), 1);
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "a")));
        assert!(members(&cache, "other").is_empty());
        assert_eq!(cache.len(), 1);
        cache.apply_watcher_event(&watcher::Event::Delete(config_map("a", "a")));
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get("ns", "a"), None);
    }

    /// The cached record is the Secret's, without its private key blob; pairs share one copy
    /// of their KMS key ARN.
    #[test]
    fn a_key_pair_is_kept_as_its_record_without_the_blob() {
        let cache = key_pair_cache();
        let created = "2026-11-30T10:00:00Z".parse().unwrap();
        let pairs = ["org-a", "org-b"].map(|org| KeyPairSecret {
            record: crate::keypair::test_pair(org, 1, KeyPairSpec::Rsa2048, vec![1, 2, 3], created),
            private_key_ciphertext: vec![9; 8],
            wraps: Vec::new(),
        });
        for pair in &pairs {
            let mut secret = pair.to_secret().unwrap();
            secret
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(ANNOTATION_ROTATE_NOW_TOKEN.into(), "t1".into());
            cache.apply_watcher_event(&watcher::Event::Apply(secret));
        }
        let group = crate::keypair::config_label("recordings");
        let kept = cache.group("telephony", &group, |_, pair| pair.clone());
        assert_eq!(kept.len(), 2);
        for (pair, cached) in pairs.iter().zip(&kept) {
            assert_eq!(cached.record("recordings", "telephony"), pair.record);
            assert_eq!(cached.rotate_now_token(), Some("t1"));
        }
        assert!(Arc::ptr_eq(&kept[0].kms_key_arn, &kept[1].kms_key_arn));
    }

    #[tokio::test]
    async fn a_relist_replaces_the_contents_when_complete() {
        let cache = by_label();
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("gone", "one")));
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(config_map("new", "one")));
        // Until the relist is complete, readers see the old contents.
        assert_eq!(cache.get("ns", "gone"), Some("gone".into()));
        assert_eq!(cache.get("ns", "new"), None);
        cache.apply_watcher_event(&watcher::Event::InitDone);
        cache.synced().await;
        assert_eq!(members(&cache, "one"), vec![("new".into(), "new".into())]);
    }

    #[test]
    fn the_digest_follows_labels_and_data() {
        let a = config_map("a", "one");
        let mut b = a.clone();
        assert_eq!(content_digest(&a), content_digest(&b));
        b.data = Some(BTreeMap::from([("k".into(), "v".into())]));
        assert_ne!(content_digest(&a), content_digest(&b));
        let relabelled = config_map("a", "two");
        assert_ne!(content_digest(&a), content_digest(&relabelled));
    }

    /// The digest is of the content itself: moving bytes between a key and its value, between
    /// entries or between labels and data, or an empty map against none, changes it.
    #[test]
    fn the_digest_is_unambiguous() {
        let with = |labels: Option<&[(&str, &str)]>, data: Option<&[(&str, &str)]>| {
            let map = |pairs: &[(&str, &str)]| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            };
            let mut cm = ConfigMap::default();
            cm.metadata.labels = labels.map(map);
            cm.data = data.map(map);
            content_digest(&cm)
        };
        let digests = [
            with(None, None),
            with(Some(&[]), None),
            with(None, Some(&[])),
            with(None, Some(&[("ab", "c")])),
            with(None, Some(&[("a", "bc")])),
            with(None, Some(&[("a", "b"), ("c", "")])),
            with(Some(&[("ab", "c")]), None),
        ];
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            with(None, Some(&[("a", "bc")])),
            with(None, Some(&[("a", "bc")]))
        );
    }
}
