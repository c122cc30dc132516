//! Discovery documents (legacy and aggregated) and the small OpenAPI v3 documents kubectl needs
//! to learn that the server supports the `fieldValidation` parameter.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::registry::{ResourceType, api_resources};

/// Groups and their versions, in serving order (core first, then alphabetical groups).
pub fn groups(types: &[ResourceType]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types {
        let versions = out.entry(t.group.clone()).or_default();
        if !versions.contains(&t.version) {
            versions.push(t.version.clone());
        }
    }
    out
}

pub fn api_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

pub fn api_group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(types: &[ResourceType], group: &str) -> Option<Value> {
    let vs = groups(types).remove(group)?;
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": versions[0]}),
    )
}

pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .flat_map(api_resources)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`; `core` selects `/api` or `/apis`.
pub fn aggregated(types: &[ResourceType], core: bool, api_version: &str) -> Value {
    let items: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == g && &t.version == v)
                        .map(|t| {
                            let kind = json!({"group": t.group, "version": t.version, "kind": t.kind});
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": kind,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": t.verbs(),
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if !t.categories.is_empty() {
                                r["categories"] = json!(t.categories);
                            }
                            let mut subs = Vec::new();
                            if t.status_subresource {
                                subs.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
                            }
                            if t.group.is_empty() && t.plural == "serviceaccounts" {
                                subs.push(json!({"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
                            }
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut item = json!({"metadata": {"creationTimestamp": null}, "versions": versions});
            if !g.is_empty() {
                item["metadata"]["name"] = json!(g);
            }
            item
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_v3_index(types: &[ResourceType], hash: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, vs) in groups(types) {
        for v in vs {
            let p = gv_path(&g, &v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api|apis/group}/{version}`: paths with their write operations and parameters,
/// and component schemas for custom resources.
pub fn openapi_v3_gv(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let selected: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if selected.is_empty() {
        return None;
    }
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let write_params = json!([
        param("dryRun"),
        param("fieldManager"),
        param("fieldValidation")
    ]);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for t in selected {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "parameters": write_params, "responses": {}});
        let base = format!("/{}", gv_path(&t.group, &t.version));
        let coll = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        paths.insert(coll.clone(), json!({"get": {"x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": {}}, "post": op("post")}));
        paths.insert(format!("{coll}/{{name}}"), json!({"get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": {}}, "put": op("put"), "patch": op("patch"), "delete": {"x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk, "responses": {}}}));
        if t.status_subresource {
            paths.insert(
                format!("{coll}/{{name}}/status"),
                json!({"put": op("put"), "patch": op("patch")}),
            );
        }
        if let Some(schema) = &t.schema {
            let mut s = schema.clone();
            s["x-kubernetes-group-version-kind"] = json!([gvk]);
            let reversed: Vec<&str> = t.group.split('.').rev().collect();
            schemas.insert(
                format!("{}.{}.{}", reversed.join("."), t.version, t.kind),
                s,
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

const OPENAPI_V2_TITLE: &str = "Kubernetes";
const OPENAPI_V2_VERSION: &str = "v1.33.0";

/// `/openapi/v2` as JSON: a valid Swagger 2.0 document without paths or definitions. kubectl only
/// reads it for client-side schema validation (e.g. of a `kind: List`), and skips the validation
/// of kinds the document does not define; the server still validates every object it receives.
pub fn openapi_v2_json() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": OPENAPI_V2_TITLE, "version": OPENAPI_V2_VERSION},
        "paths": {},
        "definitions": {},
    })
}

/// A length-delimited protobuf field (wire type 2).
fn pb_field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut v = (num << 3) | 2;
    let mut len = payload.len() as u64;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(payload);
}

/// The same document as gnostic's `openapi.v2.Document` protobuf (what client-go's
/// `OpenAPISchema` asks for): swagger = 1, info = 2 (title = 1, version = 2), paths = 8,
/// definitions = 9.
pub fn openapi_v2_proto() -> Vec<u8> {
    let mut info = Vec::new();
    pb_field(1, OPENAPI_V2_TITLE.as_bytes(), &mut info);
    pb_field(2, OPENAPI_V2_VERSION.as_bytes(), &mut info);
    let mut doc = Vec::new();
    pb_field(1, b"2.0", &mut doc);
    pb_field(2, &info, &mut doc);
    pb_field(8, &[], &mut doc);
    pb_field(9, &[], &mut doc);
    doc
}

/// The protobuf `Content-Type` of `/openapi/v2`. Clients ask for the `@v1.0` form, but `@` is not
/// a MIME token character (Go's `mime.ParseMediaType`, which client-go runs on every response,
/// rejects it), so kube-openapi answers both accepted spellings with the dotted one.
pub const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The `Content-Type` `/openapi/v2` answers for an `Accept` header, as kube-openapi negotiates
/// it: clauses by descending quality, the first one matching JSON or one of the two protobuf
/// spellings wins; an absent header means `*/*`. None: 406 Not Acceptable.
pub fn openapi_v2_media_type(accept: &str) -> Option<&'static str> {
    const OFFERED: [(&str, &str); 3] = [
        ("application/json", "application/json"),
        (
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
            OPENAPI_V2_PROTOBUF,
        ),
        (OPENAPI_V2_PROTOBUF, OPENAPI_V2_PROTOBUF),
    ];
    let accept = if accept.trim().is_empty() {
        "*/*"
    } else {
        accept
    };
    let mut clauses: Vec<(f64, &str)> = accept
        .split(',')
        .map(|clause| {
            let mut parts = clause.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            (q, media)
        })
        .filter(|(q, media)| *q > 0.0 && !media.is_empty())
        .collect();
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
    clauses.iter().find_map(|(_, media)| {
        let (ty, sub) = media.split_once('/').unwrap_or((media, ""));
        OFFERED.into_iter().find_map(|(offered, returned)| {
            let (oty, osub) = offered.split_once('/').unwrap_or_default();
            ((ty == "*" || ty == oty) && (sub == "*" || sub == osub)).then_some(returned)
        })
    })
}
