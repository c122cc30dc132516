//! The controller's caches of the objects it owns, holding what a reconcile reads rather than
//! the objects: a key pair Secret as its record without the private key blob (only the custody
//! check needs the blob, and it lists the Secrets fresh), a public-keys ConfigMap as a digest
//! of its labels and data. Entries are grouped by a key the reconcile knows (the config label),
//! so a resource's key pairs are found without scanning every Secret. Fed by one watch per
//! kind; a relist replaces the contents in one step once it is complete.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aws_lc_rs::digest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::warn;

use crate::keypair::{KeyPairRecord, LABEL_CONFIG};

use super::observe::ANNOTATION_ROTATE_NOW_TOKEN;

/// A cache of `K` objects kept as `V`, grouped within their namespace.
pub struct Cache<K, V> {
    shared: Arc<Shared<V>>,
    /// The group and the kept value of an object; `None` keeps nothing of it.
    compact: fn(&K) -> Option<(String, V)>,
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
/// entry. A group is small (a resource's key pairs), so a list sized to it, not a map.
struct Contents<V> {
    groups: HashMap<(String, String), Vec<(String, V)>>,
    group_of: HashMap<(String, String), String>,
}

impl<V> Default for Contents<V> {
    fn default() -> Self {
        Contents {
            groups: HashMap::new(),
            group_of: HashMap::new(),
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
        self.group_of.insert((namespace, name), group);
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(group) = self
            .group_of
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        let key = (namespace.to_owned(), group);
        if let Some(members) = self.groups.get_mut(&key) {
            members.retain(|(member, _)| member != name);
            if members.is_empty() {
                self.groups.remove(&key);
            }
        }
    }
}

impl<K: kube::Resource, V: Clone> Cache<K, V> {
    pub fn new(compact: fn(&K) -> Option<(String, V)>) -> Self {
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
        match (self.compact)(object) {
            Some((group, value)) => contents.insert(namespace, name, group, value),
            None => contents.remove(&namespace, &name),
        }
    }

    /// The values of one group, with their objects' names.
    pub fn group(&self, namespace: &str, group: &str) -> Vec<(String, V)> {
        self.read()
            .live
            .groups
            .get(&(namespace.to_owned(), group.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// The value kept of one object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<V> {
        let state = self.read();
        let group = state
            .live
            .group_of
            .get(&(namespace.to_owned(), name.to_owned()))?;
        state
            .live
            .groups
            .get(&(namespace.to_owned(), group.clone()))?
            .iter()
            .find(|(member, _)| member == name)
            .map(|(_, value)| value.clone())
    }

    /// Objects kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.read().live.group_of.len()
    }

    /// Waits until the first list is complete.
    pub async fn synced(&self) {
        let mut synced = self.shared.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }
}

/// A key pair Secret as the cache keeps it.
#[derive(Clone, Debug)]
pub struct CachedKeyPair {
    /// The record, its private key blob left out (empty).
    pub record: KeyPairRecord,
    /// The `kekeeper.io/rotate-now-token` annotation.
    pub rotate_now_token: Option<String>,
}

/// Key pair Secrets, grouped by their config label.
pub type KeyPairCache = Cache<Secret, CachedKeyPair>;

pub fn key_pair_cache() -> KeyPairCache {
    Cache::new(compact_key_pair)
}

/// The record of a key pair Secret, without its blob; an unreadable one is logged (once per
/// change, as it arrives) and not kept, as a reconcile would skip it.
fn compact_key_pair(secret: &Secret) -> Option<(String, CachedKeyPair)> {
    let group = secret.labels().get(LABEL_CONFIG)?.clone();
    match KeyPairRecord::from_secret(secret) {
        Ok(mut record) => {
            record.private_key_ciphertext = Vec::new();
            Some((
                group,
                CachedKeyPair {
                    record,
                    rotate_now_token: secret
                        .annotations()
                        .get(ANNOTATION_ROTATE_NOW_TOKEN)
                        .cloned(),
                },
            ))
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
    Cache::new(|config_map| Some((config_map.name_any(), content_digest(config_map))))
}

/// What decides whether a ConfigMap must be written again: its labels and data.
pub fn content_digest(config_map: &ConfigMap) -> ContentDigest {
    let content =
        serde_json::to_vec(&(&config_map.metadata.labels, &config_map.data)).unwrap_or_default();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, &content).as_ref());
    out
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
        Cache::new(|cm| Some((cm.labels().get(LABEL_CONFIG)?.clone(), cm.name_any())))
    }

    #[test]
    fn an_object_moves_between_groups_and_leaves_on_delete() {
        let cache = by_label();
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "one")));
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("b", "one")));
        assert_eq!(cache.group("ns", "one").len(), 2);
        cache.apply_watcher_event(&watcher::Event::Apply(config_map("a", "two")));
        assert_eq!(cache.group("ns", "one").len(), 1);
        assert_eq!(cache.group("ns", "two"), vec![("a".into(), "a".into())]);
        assert_eq!(cache.group("other", "two"), vec![]);
        cache.apply_watcher_event(&watcher::Event::Delete(config_map("a", "two")));
        assert!(cache.group("ns", "two").is_empty());
        assert_eq!(cache.get("ns", "b"), Some("b".into()));
        assert_eq!(cache.len(), 1);
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
        assert_eq!(cache.group("ns", "one"), vec![("new".into(), "new".into())]);
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
}
