//! The object store: one global resourceVersion counter, a bounded event history for watches
//! and the registered kinds.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::rbac::User;
use crate::registry::{self, ResourceType};

/// (storage group, plural, namespace, name)
pub type Key = (String, String, String, String);

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
    pub old: Option<Value>,
}

/// (storage group, plural, label key, label value)
type LabelKey = (String, String, String, String);

pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    /// (namespace, name) of the objects carrying each label, for selective lists.
    by_label: HashMap<LabelKey, BTreeSet<(String, String)>>,
    pub history: VecDeque<Arc<Event>>,
    /// resourceVersion of the newest event dropped from the history (0: none).
    pub compacted: u64,
    pub history_size: usize,
    pub types: Vec<ResourceType>,
    pub tokens: HashMap<String, User>,
    pub tx: broadcast::Sender<Arc<Event>>,
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl State {
    pub fn new(history_size: usize, tx: broadcast::Sender<Arc<Event>>) -> Self {
        let mut st = Self {
            rv: 0,
            objects: BTreeMap::new(),
            by_label: HashMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            history_size: history_size.max(1),
            types: registry::builtins(),
            tokens: HashMap::new(),
            tx,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now(),
                             "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            st.put(
                ("".into(), "namespaces".into(), String::new(), ns.into()),
                obj,
            );
        }
        let admin_role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "cluster-admin", "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now(),
                         "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}],
        });
        st.put(
            (
                "rbac.authorization.k8s.io".into(),
                "clusterroles".into(),
                String::new(),
                "cluster-admin".into(),
            ),
            admin_role,
        );
        let admin_binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "cluster-admin", "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now(),
                         "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}],
        });
        st.put(
            (
                "rbac.authorization.k8s.io".into(),
                "clusterrolebindings".into(),
                String::new(),
                "cluster-admin".into(),
            ),
            admin_binding,
        );
        st
    }

    fn put(&mut self, key: Key, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.index(&key, &obj, true);
        self.objects.insert(key, obj);
    }

    /// Stores (or deletes, when `new` is None) an object and records the watch event. A write to
    /// a ClusterRole also runs the clusterrole-aggregation controller.
    pub fn commit(&mut self, key: Key, new: Option<Value>) -> Value {
        let cluster_role = key.0 == "rbac.authorization.k8s.io" && key.1 == "clusterroles";
        let object = self.record(key, new);
        if cluster_role {
            self.aggregate_cluster_roles();
        }
        object
    }

    /// The clusterrole-aggregation controller, run to a fixed point (synchronously, where the
    /// real one converges through its work queue): each ClusterRole with an `aggregationRule`
    /// gets the rules `rbac::aggregated_rules` computes, written as an update (new
    /// resourceVersion, a MODIFIED watch event) only when they differ. Aggregated roles may
    /// select each other (a real cluster's `view` is aggregated into `edit`, `edit` into
    /// `admin`), so one write can ripple through several rounds.
    fn aggregate_cluster_roles(&mut self) {
        // Every round rewrites one role; more rounds than objects would mean a cycle that
        // does not settle, which the real controller would keep rewriting: stop there.
        for _ in 0..=self.objects.len() {
            let stale = self
                .objects
                .iter()
                .filter(|(k, _)| k.0 == "rbac.authorization.k8s.io" && k.1 == "clusterroles")
                .find_map(|(key, role)| {
                    let rules = crate::rbac::aggregated_rules(&self.objects, role)?;
                    let current = role["rules"].as_array().cloned().unwrap_or_default();
                    (rules != current).then(|| {
                        let mut role = role.clone();
                        role["rules"] = Value::Array(rules);
                        (key.clone(), role)
                    })
                });
            let Some((key, role)) = stale else { return };
            self.record(key, Some(role));
        }
    }

    fn record(&mut self, key: Key, new: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let old = self.objects.get(&key).cloned();
        if let Some(old) = &old {
            self.index(&key, old, false);
        }
        let (kind, object) = match new {
            Some(mut obj) => {
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                self.index(&key, &obj, true);
                self.objects.insert(key.clone(), obj.clone());
                (if old.is_some() { "MODIFIED" } else { "ADDED" }, obj)
            }
            None => {
                let mut obj = self.objects.remove(&key).unwrap_or(Value::Null);
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                ("DELETED", obj)
            }
        };
        let ev = Arc::new(Event {
            rv,
            group: key.0,
            plural: key.1,
            namespace: key.2,
            kind,
            object: object.clone(),
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_size {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        let _ = self.tx.send(ev);
        object
    }

    /// Adds (or removes) the object at `key` to (from) the label index.
    fn index(&mut self, key: &Key, object: &Value, add: bool) {
        let Some(labels) = object["metadata"]["labels"].as_object() else {
            return;
        };
        for (label, value) in labels {
            let entry = (
                key.0.clone(),
                key.1.clone(),
                label.clone(),
                value.as_str().unwrap_or_default().to_string(),
            );
            let member = (key.2.clone(), key.3.clone());
            if add {
                self.by_label.entry(entry).or_default().insert(member);
            } else if let Some(members) = self.by_label.get_mut(&entry) {
                members.remove(&member);
                if members.is_empty() {
                    self.by_label.remove(&entry);
                }
            }
        }
    }

    /// Removes an object, then collects garbage as the garbage collector would (background
    /// propagation): dependents left without any existing owner are deleted (or marked for
    /// deletion when they carry finalizers), dangling owner references of others are dropped.
    pub fn remove(&mut self, key: Key) -> Value {
        let deleted = self.commit(key, None);
        let mut gone: Vec<String> = deleted["metadata"]["uid"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .collect();
        while let Some(uid) = gone.pop() {
            let live: std::collections::HashSet<String> = self
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            let dependents: Vec<(Key, Value)> = self
                .objects
                .iter()
                .filter(|(_, o)| owner_uids(o).any(|u| u == uid))
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            for (k, mut obj) in dependents {
                let alive: Vec<Value> = obj["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["uid"].as_str().is_some_and(|u| live.contains(u)))
                    .cloned()
                    .collect();
                if !alive.is_empty() {
                    obj["metadata"]["ownerReferences"] = Value::Array(alive);
                    self.commit(k, Some(obj));
                } else if obj["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
                {
                    if obj["metadata"]["deletionTimestamp"].is_null() {
                        obj["metadata"]["deletionTimestamp"] = json!(now());
                        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                        self.commit(k, Some(obj));
                    }
                } else {
                    let d = self.commit(k, None);
                    gone.extend(d["metadata"]["uid"].as_str().map(str::to_string));
                }
            }
        }
        deleted
    }

    /// `propagationPolicy: Orphan`: drops the owner references to `uid`.
    pub fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, o)| owner_uids(o).any(|u| u == uid))
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (k, mut obj) in dependents {
            if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
                if refs.is_empty() {
                    obj["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("ownerReferences"));
                }
            }
            self.commit(k, Some(obj));
        }
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Re-derives the custom resource types from the stored CRDs.
    pub fn refresh_types(&mut self) {
        let mut types = registry::builtins();
        for (k, crd) in &self.objects {
            if k.0 == "apiextensions.k8s.io"
                && k.1 == "customresourcedefinitions"
                && crd["metadata"]["deletionTimestamp"].is_null()
            {
                types.extend(registry::from_crd(crd));
            }
        }
        self.types = types;
    }

    /// Objects of one storage resource, optionally in one namespace, sorted by key.
    pub fn list(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<(Key, Value)> {
        let scope = Scope::of(group, plural, ns);
        self.page(&scope, None, None, |_| true, None, false)
            .map(|(items, _)| items)
            .unwrap_or_default()
    }

    /// How many objects of a kind `keep` accepts, read in place (nothing is copied).
    pub fn count(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> usize {
        let scope = Scope::of(group, plural, ns);
        self.page(&scope, None, None, keep, Some(0), true)
            .map_or(0, |(_, more)| more)
    }

    /// One page of a list: the objects of `scope` as they were at `rv` (None: now) after the
    /// (namespace, name) `after`, that `keep` accepts, at most `limit` of them, and how many
    /// more there are when `count_rest` (else 0 or 1: whether there are more; counting them
    /// would read every later object for each page, and a paged list of N objects would cost
    /// N²/limit). Only what is returned is copied: the objects written since `rv` are
    /// looked up in the event history, the others read in place. None when `rv` is older than
    /// the history.
    pub fn page(
        &self,
        scope: &Scope<'_>,
        rv: Option<u64>,
        after: Option<(&str, &str)>,
        keep: impl Fn(&Value) -> bool,
        limit: Option<usize>,
        count_rest: bool,
    ) -> Option<(Vec<(Key, Value)>, usize)> {
        // Each key written since `rv`, with what it was then (None: it did not exist).
        let mut then: BTreeMap<Key, Option<&Value>> = BTreeMap::new();
        if let Some(rv) = rv {
            if rv < self.compacted {
                return None;
            }
            // Newest first: the last insert for a key is its state at `rv`.
            for e in self.history.iter().rev().take_while(|e| e.rv > rv) {
                if e.group != scope.group
                    || e.plural != scope.plural
                    || scope.ns.is_some_and(|n| n != e.namespace)
                {
                    continue;
                }
                let name = e.object["metadata"]["name"].as_str().unwrap_or_default();
                let key = (
                    e.group.clone(),
                    e.plural.clone(),
                    e.namespace.clone(),
                    name.to_string(),
                );
                then.insert(key, e.old.as_ref());
            }
        }
        let lower = match after {
            Some((ns, name)) => Bound::Excluded(scope.key(ns, name)),
            None => Bound::Included(scope.key(scope.ns.unwrap_or_default(), "")),
        };
        // A list of now with a `key=value` label: only the objects carrying that label.
        if let (Some((label, value)), None) = (scope.label, rv) {
            let entry = (
                scope.group.to_string(),
                scope.plural.to_string(),
                label.to_string(),
                value.to_string(),
            );
            let members = self.by_label.get(&entry);
            let candidates = members.into_iter().flatten().filter_map(|(ns, name)| {
                let key = scope.key(ns, name);
                let after_lower = match &lower {
                    Bound::Excluded(l) => key > *l,
                    _ => true,
                };
                (scope.contains(&key) && after_lower)
                    .then(|| self.objects.get_key_value(&key))
                    .flatten()
            });
            return Some(take_page(candidates, keep, limit, count_rest));
        }
        let range = (lower, Bound::Unbounded);
        let now = self
            .objects
            .range::<Key, _>(range.clone())
            .take_while(|(k, _)| scope.contains(k))
            .filter(|(k, _)| !then.contains_key(*k));
        let past = then
            .range::<Key, _>(range)
            .filter(|(k, _)| scope.contains(k))
            .filter_map(|(k, v)| v.map(|v| (k, v)));
        Some(take_page(merge_by_key(now, past), keep, limit, count_rest))
    }
}

/// The first `limit` of `objects` that `keep` accepts, copied, and how many more it accepts
/// (when `count_rest`; else at most 1).
fn take_page<'a>(
    objects: impl Iterator<Item = (&'a Key, &'a Value)>,
    keep: impl Fn(&Value) -> bool,
    limit: Option<usize>,
    count_rest: bool,
) -> (Vec<(Key, Value)>, usize) {
    let mut items = Vec::new();
    let mut more = 0;
    for (key, object) in objects {
        if !keep(object) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            more += 1;
            if !count_rest {
                break;
            }
        } else {
            items.push((key.clone(), object.clone()));
        }
    }
    (items, more)
}

/// Which objects a list is about: one storage resource, optionally in one namespace.
pub struct Scope<'a> {
    pub group: &'a str,
    pub plural: &'a str,
    pub ns: Option<&'a str>,
    /// A label every listed object must carry (`key`, `value`), if known: the label index
    /// then gives the candidates. `keep` must still test it.
    pub label: Option<(&'a str, &'a str)>,
}

impl<'a> Scope<'a> {
    /// Every object of one storage resource, optionally in one namespace.
    pub fn of(group: &'a str, plural: &'a str, ns: Option<&'a str>) -> Self {
        Scope {
            group,
            plural,
            ns,
            label: None,
        }
    }

    fn key(&self, ns: &str, name: &str) -> Key {
        (
            self.group.to_string(),
            self.plural.to_string(),
            ns.to_string(),
            name.to_string(),
        )
    }

    fn contains(&self, key: &Key) -> bool {
        key.0 == self.group && key.1 == self.plural && self.ns.is_none_or(|n| key.2 == n)
    }
}

/// Two key-sorted sequences (with no key in both) as one.
fn merge_by_key<'a>(
    a: impl Iterator<Item = (&'a Key, &'a Value)>,
    b: impl Iterator<Item = (&'a Key, &'a Value)>,
) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.0 < x.0 => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}}})
    }

    fn names(state: &State, app: &str, rv: Option<u64>) -> Vec<String> {
        let scope = Scope {
            label: Some(("app", app)),
            ..Scope::of("", "secrets", Some("ns"))
        };
        let keep = |o: &Value| o["metadata"]["labels"]["app"] == app;
        let (items, _) = state.page(&scope, rv, None, keep, None, false).unwrap();
        items.into_iter().map(|(k, _)| k.3).collect()
    }

    #[test]
    fn a_list_by_label_follows_relabelling_and_deletion() {
        let mut state = State::new(100, broadcast::channel(16).0);
        let key = |name: &str| ("".into(), "secrets".into(), "ns".into(), name.to_string());
        state.commit(key("b"), Some(secret("b", "x")));
        state.commit(key("a"), Some(secret("a", "x")));
        state.commit(key("c"), Some(secret("c", "y")));
        assert_eq!(names(&state, "x", None), ["a", "b"]);
        let before = state.rv;
        state.commit(key("a"), Some(secret("a", "y")));
        state.commit(key("b"), None);
        assert_eq!(names(&state, "x", None), Vec::<String>::new());
        assert_eq!(names(&state, "y", None), ["a", "c"]);
        // A list as of an earlier resourceVersion sees the objects as they were.
        assert_eq!(names(&state, "x", Some(before)), ["a", "b"]);
        let labelled = |app: &'static str| move |o: &Value| o["metadata"]["labels"]["app"] == app;
        assert_eq!(state.count("", "secrets", Some("ns"), labelled("y")), 2);
        assert_eq!(state.count("", "secrets", Some("other"), labelled("y")), 0);
    }
}
