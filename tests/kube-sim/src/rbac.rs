//! RBAC authorization from the Roles, ClusterRoles and bindings stored in the simulator.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// An authenticated user.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn service_account(ns: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// What a request asks to do.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

type Store = BTreeMap<(String, String, String, String), Value>;

fn subject_matches(s: &Value, user: &User, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = s["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|a| {
        a.iter()
            .any(|v| v.as_str() == Some("*") || v.as_str() == Some(want))
    })
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&rule["verbs"], &a.verb) || !has(&rule["apiGroups"], &a.group) {
        return false;
    }
    let resources = rule["resources"].as_array().cloned().unwrap_or_default();
    let res_ok = resources.iter().filter_map(Value::as_str).any(|r| {
        if a.subresource.is_empty() {
            r == "*" || r == a.resource
        } else {
            r == "*"
                || r == format!("{}/{}", a.resource, a.subresource)
                || r == format!("*/{}", a.subresource)
        }
    });
    if !res_ok {
        return false;
    }
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            names.iter().any(|n| n.as_str() == Some(a.name.as_str())) && !a.name.is_empty()
        }
        _ => true,
    }
}

fn role_rules<'s>(store: &'s Store, role_ref: &Value, binding_ns: &str) -> Vec<&'s Value> {
    let name = role_ref["name"].as_str().unwrap_or_default().to_string();
    let key = match role_ref["kind"].as_str() {
        Some("ClusterRole") => (
            "rbac.authorization.k8s.io".to_string(),
            "clusterroles".to_string(),
            String::new(),
            name,
        ),
        Some("Role") => (
            "rbac.authorization.k8s.io".to_string(),
            "roles".to_string(),
            binding_ns.to_string(),
            name,
        ),
        _ => return Vec::new(),
    };
    let Some(role) = store.get(&key) else {
        return Vec::new();
    };
    // Only the stored rules count, as in the API server's authorizer; the rules of aggregated
    // ClusterRoles are written by the aggregation controller (`aggregated_rules`).
    role["rules"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// What the clusterrole-aggregation controller writes into `rules` of a ClusterRole with an
/// `aggregationRule` (None without one): for each selector in turn, the rules of the matching
/// ClusterRoles (in name order, the role itself excluded), each rule once.
pub fn aggregated_rules(store: &Store, role: &Value) -> Option<Vec<Value>> {
    let selectors = role["aggregationRule"]["clusterRoleSelectors"].as_array()?;
    let name = role["metadata"]["name"].as_str().unwrap_or_default();
    let cluster_roles = store
        .iter()
        .filter(|(k, _)| k.0 == "rbac.authorization.k8s.io" && k.1 == "clusterroles");
    let mut rules: Vec<Value> = Vec::new();
    for selector in selectors {
        for (key, other) in cluster_roles.clone() {
            if key.3 == name || !selector_matches(selector, &other["metadata"]["labels"]) {
                continue;
            }
            for rule in other["rules"].as_array().into_iter().flatten() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
    }
    Some(rules)
}

/// A `metav1.LabelSelector` (matchLabels and matchExpressions).
fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let labels_ok = sel["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).and_then(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => have.is_some_and(|h| values.contains(&h)),
                Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            }
        });
    // An empty selector selects everything (metav1.LabelSelectorAsSelector).
    labels_ok && exprs_ok
}

pub fn allowed(store: &Store, user: &User, a: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    for ((g, r, ns, _), binding) in store.range(
        (
            "rbac.authorization.k8s.io".to_string(),
            String::new(),
            String::new(),
            String::new(),
        )..,
    ) {
        if g != "rbac.authorization.k8s.io" {
            break;
        }
        let applies = match r.as_str() {
            "clusterrolebindings" => true,
            "rolebindings" => *ns == a.namespace && !a.namespace.is_empty(),
            _ => false,
        };
        if !applies {
            continue;
        }
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, user, ns)) {
            continue;
        }
        if role_rules(store, &binding["roleRef"], ns)
            .into_iter()
            .any(|rule| rule_allows(rule, a))
        {
            return true;
        }
    }
    false
}

/// The reason text of a 403, as the API server words it.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    if a.namespace.is_empty() {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
            user.name, a.verb, resource, a.group
        )
    } else {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
            user.name, a.verb, resource, a.group, a.namespace
        )
    }
}
