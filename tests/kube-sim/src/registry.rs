//! The kinds the simulator serves: built-in kinds plus those registered by CRDs.

use serde_json::{Value, json};

/// One served resource (group/version/plural).
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// `openAPIV3Schema` of a CRD version.
    pub schema: Option<Value>,
    pub printer_columns: Vec<Value>,
    /// Name of the CRD that defines this type, if any.
    pub crd: Option<String>,
    /// The storage group/resource: differs from (group, plural) for events.k8s.io events.
    pub storage_group: String,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status_subresource: false,
            schema: None,
            printer_columns: Vec::new(),
            crd: None,
            storage_group: group.into(),
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// Whether `metadata.generation` is maintained: custom resources, CRDs and the built-in
    /// kinds whose strategy bumps it on spec changes (Deployments, PodDisruptionBudgets,
    /// NetworkPolicies); not ConfigMaps, Secrets, Services or ServiceAccounts.
    pub fn tracks_generation(&self) -> bool {
        self.is_custom()
            || matches!(
                self.plural.as_str(),
                "customresourcedefinitions"
                    | "deployments"
                    | "poddisruptionbudgets"
                    | "networkpolicies"
                    | "validatingadmissionpolicies"
                    | "validatingadmissionpolicybindings"
            )
    }

    /// Top-level fields of a built-in kind, for strict field validation.
    pub fn builtin_fields(&self) -> Option<&'static [&'static str]> {
        let common: &[&str] = match (self.group.as_str(), self.plural.as_str()) {
            ("", "namespaces") => &["spec", "status"],
            ("", "secrets") => &["data", "stringData", "type", "immutable"],
            ("", "configmaps") => &["data", "binaryData", "immutable"],
            ("", "serviceaccounts") => &[
                "secrets",
                "imagePullSecrets",
                "automountServiceAccountToken",
            ],
            ("", "services") | ("apps", "deployments") | ("policy", "poddisruptionbudgets") => {
                &["spec", "status"]
            }
            ("networking.k8s.io", "networkpolicies") => &["spec"],
            ("", "events") => &[
                "involvedObject",
                "reason",
                "message",
                "source",
                "firstTimestamp",
                "lastTimestamp",
                "count",
                "type",
                "eventTime",
                "series",
                "action",
                "related",
                "reportingComponent",
                "reportingInstance",
            ],
            ("events.k8s.io", "events") => &[
                "eventTime",
                "series",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
                "regarding",
                "related",
                "note",
                "type",
                "deprecatedSource",
                "deprecatedFirstTimestamp",
                "deprecatedLastTimestamp",
                "deprecatedCount",
            ],
            ("coordination.k8s.io", "leases") => &["spec"],
            ("rbac.authorization.k8s.io", "roles")
            | ("rbac.authorization.k8s.io", "clusterroles") => &["rules", "aggregationRule"],
            ("rbac.authorization.k8s.io", _) => &["subjects", "roleRef"],
            ("apiextensions.k8s.io", _) => &["spec", "status"],
            ("admissionregistration.k8s.io", "validatingadmissionpolicies") => &["spec", "status"],
            ("admissionregistration.k8s.io", _) => &["spec"],
            _ => return None,
        };
        Some(common)
    }
}

pub fn builtins() -> Vec<ResourceType> {
    let rbac = "rbac.authorization.k8s.io";
    let mut v = vec![
        ResourceType::builtin("", "v1", "namespaces", "Namespace", false, &["ns"]),
        ResourceType::builtin("", "v1", "secrets", "Secret", true, &[]),
        ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        ResourceType::builtin("", "v1", "events", "Event", true, &["ev"]),
        ResourceType::builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        ResourceType::builtin("", "v1", "services", "Service", true, &["svc"]),
        ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
        ResourceType::builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"]),
        ResourceType::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
        ),
        ResourceType::builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            &["netpol"],
        ),
        ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        ResourceType::builtin(rbac, "v1", "roles", "Role", true, &[]),
        ResourceType::builtin(rbac, "v1", "clusterroles", "ClusterRole", false, &[]),
        ResourceType::builtin(rbac, "v1", "rolebindings", "RoleBinding", true, &[]),
        ResourceType::builtin(
            rbac,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        // Stored only: kube-sim runs no admission policy (a real server does; docs/testing.md).
        ResourceType::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
            false,
            &[],
        ),
        ResourceType::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
            &[],
        ),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        ),
    ];
    for t in &mut v {
        // Stored objects only: no controller ever writes these statuses, but clients may.
        if matches!(
            t.plural.as_str(),
            "namespaces"
                | "customresourcedefinitions"
                | "services"
                | "deployments"
                | "poddisruptionbudgets"
        ) {
            t.status_subresource = true;
        }
        // `kubectl get all` expands the `all` category, as for the real kinds.
        if matches!(t.plural.as_str(), "services" | "deployments") {
            t.categories = vec!["all".into()];
        }
        if t.group == "events.k8s.io" {
            // events.k8s.io/v1 and core/v1 events share one storage, as in the real server.
            t.storage_group = String::new();
        }
        if t.plural == "customresourcedefinitions" {
            t.categories = vec!["api-extensions".into()];
        }
    }
    v
}

/// Builds the resource types served for a CRD object (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let name = crd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| ResourceType {
            group: group.clone(),
            version: v["name"].as_str().unwrap_or_default().to_string(),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: v["subresources"].get("status").is_some(),
            schema: v["schema"].get("openAPIV3Schema").cloned(),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            crd: Some(name.clone()),
            storage_group: group.clone(),
        })
        .collect()
}

/// Discovery's `APIResource` entries for a type (main resource and its subresources).
pub fn api_resources(t: &ResourceType) -> Vec<Value> {
    let mut main = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": t.verbs(),
    });
    if !t.short_names.is_empty() {
        main["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        main["categories"] = json!(t.categories);
    }
    let mut out = vec![main];
    if t.status_subresource {
        out.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
    }
    if t.group.is_empty() && t.plural == "serviceaccounts" {
        out.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
    }
    out
}
