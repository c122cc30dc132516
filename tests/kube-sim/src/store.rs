//! The object store: one global resourceVersion counter, a bounded event history for watches
//! and the registered kinds.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
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
        let (kind, object) = match new {
            Some(mut obj) => {
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
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
        let start = (
            group.to_string(),
            plural.to_string(),
            ns.unwrap_or_default().to_string(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(|(k, _)| k.0 == group && k.1 == plural && ns.is_none_or(|n| k.2 == n))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The objects of one resource as they were at `rv`, rebuilt from the event history.
    pub fn list_at(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        rv: u64,
    ) -> Option<Vec<(Key, Value)>> {
        if rv < self.compacted {
            return None;
        }
        let mut map: BTreeMap<Key, Value> = self.list(group, plural, ns).into_iter().collect();
        for e in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if e.group != group || e.plural != plural || ns.is_some_and(|n| n != e.namespace) {
                continue;
            }
            let name = e.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let key = (e.group.clone(), e.plural.clone(), e.namespace.clone(), name);
            match &e.old {
                Some(o) => {
                    map.insert(key, o.clone());
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        Some(map.into_iter().collect())
    }
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}
