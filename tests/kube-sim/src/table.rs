//! `meta.k8s.io/v1` Table rendering (server-side printing).

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// Evaluates the simple JSONPath subset used in printer columns:
/// `.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.type=="Ready")].status`.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut cur = vec![obj.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(key).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .collect();
            } else if let Ok(i) = inner.parse::<usize>() {
                cur = cur.iter().filter_map(|v| v.get(i).cloned()).collect();
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, want) = match filter.split_once("==") {
                    Some((f, w)) => (
                        f.trim(),
                        Some(w.trim().trim_matches(['"', '\'']).to_string()),
                    ),
                    None => (filter.trim(), None),
                };
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter(|item| match (&want, item.get(field)) {
                        (Some(w), Some(Value::String(s))) => s == w,
                        (Some(w), Some(other)) => {
                            serde_json::from_str::<Value>(w).is_ok_and(|x| x == *other)
                        }
                        (None, Some(_)) => true,
                        _ => false,
                    })
                    .collect();
            } else {
                cur.clear();
            }
        } else {
            break;
        }
    }
    cur
}

/// `duration.HumanDuration`, as the built-in printers show ages.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rs = s % 60;
        return if rs == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rs}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        let rm = m % 60;
        return if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 192 {
        let rh = h % 24;
        return if rh == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{rh}h", h / 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        return if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

fn age(obj: &Value) -> String {
    let ts = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match ts {
        Some(t) => human_duration(jiff::Timestamp::now().duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

fn col(name: &str, ty: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn name_col() -> Value {
    col("Name", "string", "name", NAME_DESC, 0)
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// Column definitions and a row builder for a type.
pub fn columns(t: &ResourceType) -> Vec<Value> {
    if t.is_custom() {
        let mut cols = vec![name_col()];
        if t.printer_columns.is_empty() {
            cols.push(col("Age", "date", "", AGE_DESC, 0));
        }
        for c in &t.printer_columns {
            cols.push(col(
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or("string"),
                c["format"].as_str().unwrap_or_default(),
                c["description"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or(0),
            ));
        }
        return cols;
    }
    let age = col("Age", "string", "", AGE_DESC, 0);
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => vec![
            name_col(),
            col("Type", "string", "", "The type of the secret", 0),
            col(
                "Data",
                "string",
                "",
                "The number of entries in the secret",
                0,
            ),
            age,
        ],
        ("", "configmaps") => vec![
            name_col(),
            col(
                "Data",
                "string",
                "",
                "Data contains the configuration data.",
                0,
            ),
            age,
        ],
        ("", "namespaces") => vec![
            name_col(),
            col("Status", "string", "", "The status of the namespace", 0),
            age,
        ],
        ("", "serviceaccounts") => vec![
            name_col(),
            col(
                "Secrets",
                "string",
                "",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                0,
            ),
            age,
        ],
        ("coordination.k8s.io", "leases") => vec![
            name_col(),
            col("Holder", "string", "", "The holder of the lease", 0),
            age,
        ],
        (_, "events") => vec![
            col(
                "Last Seen",
                "string",
                "",
                "Time when this Event was last seen",
                0,
            ),
            col(
                "Type",
                "string",
                "",
                "Type of this event (Normal, Warning), new types could be added in the future.",
                0,
            ),
            col(
                "Reason",
                "string",
                "",
                "Reason why the action was taken.",
                0,
            ),
            col(
                "Object",
                "string",
                "",
                "The object that this event is about.",
                0,
            ),
            col(
                "Message",
                "string",
                "",
                "A human-readable description of the status of this operation.",
                0,
            ),
        ],
        ("rbac.authorization.k8s.io", "roles") | ("rbac.authorization.k8s.io", "clusterroles") => {
            vec![name_col(), col("Created At", "date", "", AGE_DESC, 0)]
        }
        ("rbac.authorization.k8s.io", _) => vec![name_col(), col("Role", "string", "", "", 0), age],
        ("apiextensions.k8s.io", _) => vec![name_col(), col("Created At", "date", "", AGE_DESC, 0)],
        _ => vec![name_col(), age],
    }
}

pub fn cells(t: &ResourceType, obj: &Value) -> Vec<Value> {
    let name = json!(obj["metadata"]["name"].as_str().unwrap_or_default());
    let created = obj["metadata"]["creationTimestamp"].clone();
    if t.is_custom() {
        let mut out = vec![name];
        if t.printer_columns.is_empty() {
            out.push(json!(age(obj)));
        }
        for c in &t.printer_columns {
            let vals = jsonpath(obj, c["jsonPath"].as_str().unwrap_or_default());
            let is_date = c["type"].as_str() == Some("date");
            out.push(match vals.len() {
                0 => Value::Null,
                1 if is_date => match vals[0]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                {
                    Some(t) => json!(human_duration(
                        jiff::Timestamp::now().duration_since(t).as_secs()
                    )),
                    None => vals[0].clone(),
                },
                1 => vals[0].clone(),
                _ => json!(vals.iter().map(str_of).collect::<Vec<_>>().join(",")),
            });
        }
        return out;
    }
    let count = |v: &Value| v.as_object().map(|m| m.len()).unwrap_or(0);
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => vec![
            name,
            json!(obj["type"].as_str().unwrap_or("Opaque")),
            json!(count(&obj["data"])),
            json!(age(obj)),
        ],
        ("", "configmaps") => vec![
            name,
            json!(count(&obj["data"]) + count(&obj["binaryData"])),
            json!(age(obj)),
        ],
        ("", "namespaces") => vec![
            name,
            json!(obj["status"]["phase"].as_str().unwrap_or("Active")),
            json!(age(obj)),
        ],
        ("", "serviceaccounts") => vec![
            name,
            json!(obj["secrets"].as_array().map(Vec::len).unwrap_or(0)),
            json!(age(obj)),
        ],
        ("coordination.k8s.io", "leases") => vec![
            name,
            json!(obj["spec"]["holderIdentity"].as_str().unwrap_or("")),
            json!(age(obj)),
        ],
        (g, "events") => {
            let (inv, msg) = if g.is_empty() {
                (&obj["involvedObject"], &obj["message"])
            } else {
                (&obj["regarding"], &obj["note"])
            };
            let last = obj["lastTimestamp"]
                .as_str()
                .or(obj["eventTime"].as_str())
                .or(obj["metadata"]["creationTimestamp"].as_str());
            let seen = last
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| human_duration(jiff::Timestamp::now().duration_since(t).as_secs()))
                .unwrap_or_else(|| "<unknown>".into());
            vec![
                json!(seen),
                json!(obj["type"].as_str().unwrap_or_default()),
                json!(obj["reason"].as_str().unwrap_or_default()),
                json!(format!(
                    "{}/{}",
                    inv["kind"].as_str().unwrap_or_default().to_lowercase(),
                    inv["name"].as_str().unwrap_or_default()
                )),
                json!(msg.as_str().unwrap_or_default()),
            ]
        }
        ("rbac.authorization.k8s.io", "roles") | ("rbac.authorization.k8s.io", "clusterroles") => {
            vec![name, created]
        }
        ("rbac.authorization.k8s.io", _) => vec![
            name,
            json!(format!(
                "{}/{}",
                obj["roleRef"]["kind"].as_str().unwrap_or_default(),
                obj["roleRef"]["name"].as_str().unwrap_or_default()
            )),
            json!(age(obj)),
        ],
        ("apiextensions.k8s.io", _) => vec![name, created],
        _ => vec![name, json!(age(obj))],
    }
}

/// What a Table row carries in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

pub fn row(t: &ResourceType, obj: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(t, obj)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]});
        }
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

pub fn table(
    t: &ResourceType,
    objs: &[Value],
    include: IncludeObject,
    list_meta: Value,
    with_columns: bool,
) -> Value {
    let mut tbl = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if with_columns { json!(columns(t)) } else { Value::Null },
        "rows": objs.iter().map(|o| row(t, o, include)).collect::<Vec<_>>(),
    });
    if !with_columns {
        tbl["columnDefinitions"] = Value::Null;
    }
    tbl
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn jsonpath_subset() {
        let obj = json!({"spec": {"ids": ["a", "b"]}, "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Kms", "status": "False"}]}});
        assert_eq!(jsonpath(&obj, ".spec.ids[1]"), vec![json!("b")]);
        assert_eq!(jsonpath(&obj, ".spec.ids[*]"), vec![json!("a"), json!("b")]);
        assert_eq!(
            jsonpath(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("True")]
        );
        assert_eq!(
            jsonpath(&obj, "{.status.conditions[?(@.type=='Kms')].status}"),
            vec![json!("False")]
        );
        assert!(jsonpath(&obj, ".status.missing").is_empty());
    }

    #[test]
    fn human_durations_match_apimachinery() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
