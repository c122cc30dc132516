//! Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge patch
//! for the built-in kinds served here.

use serde_json::{Map, Value};

use crate::errors::ApiError;

pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 patch with the API server's (evanphx/json-patch) leniency: `test` of a missing path
/// against `null` succeeds, which kube-rs's finalizer helper relies on.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && target.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(target, std::slice::from_ref(&op)).map_err(|e| {
            ApiError::new(422, "Invalid", "the server rejected our request due to an error in our request")
                .with_details(serde_json::json!({"causes": [{"reason": "UnexpectedServerResponse", "message": e.to_string()}]}))
        })?;
    }
    Ok(())
}

/// The `patchMergeKey` of list fields of the built-in kinds (by field name).
pub fn builtin_merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => "name",
        "secrets" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Lists of scalars merged as sets by strategic merge patch.
fn primitive_merge_list(field: &str) -> bool {
    field == "finalizers"
}

pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, pv) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(del)) = (t.get_mut(field), pv.as_array()) {
                items.retain(|i| !del.contains(i));
            }
            continue;
        }
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        match (pv, builtin_merge_key(k)) {
            (Value::Array(items), Some(key)) if items.iter().all(Value::is_object) => {
                let entry = t
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !entry.is_array() {
                    *entry = Value::Array(Vec::new());
                }
                if let Value::Array(current) = entry {
                    for item in items {
                        let directive = item.get("$patch").and_then(Value::as_str);
                        let pos = current.iter().position(|c| c.get(key) == item.get(key));
                        match (directive, pos) {
                            (Some("delete"), Some(i)) => {
                                current.remove(i);
                            }
                            (Some("delete"), None) => {}
                            (_, Some(i)) => strategic_merge(&mut current[i], item),
                            (_, None) => {
                                let mut fresh = Value::Object(Map::new());
                                strategic_merge(&mut fresh, item);
                                current.push(fresh);
                            }
                        }
                    }
                }
            }
            (Value::Array(items), None) if primitive_merge_list(k) => {
                let entry = t
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(current) = entry {
                    for i in items {
                        if !current.contains(i) {
                            current.push(i.clone());
                        }
                    }
                }
            }
            (Value::Object(_), _) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                if pv.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    strategic_merge(entry, pv);
                }
            }
            _ => {
                t.insert(k.clone(), pv.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merge_uses_merge_keys_and_directives() {
        let mut sa = json!({
            "metadata": {"finalizers": ["a"]},
            "imagePullSecrets": [{"name": "one"}, {"name": "two"}],
            "secrets": [{"name": "s1", "namespace": "x"}],
        });
        strategic_merge(
            &mut sa,
            &json!({
                "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                "$setElementOrder/imagePullSecrets": [{"name": "two"}, {"name": "three"}],
                "imagePullSecrets": [{"name": "one", "$patch": "delete"}, {"name": "three"}],
                "secrets": [{"name": "s1", "namespace": "y"}],
            }),
        );
        assert_eq!(sa["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(
            sa["imagePullSecrets"],
            json!([{"name": "two"}, {"name": "three"}])
        );
        assert_eq!(sa["secrets"], json!([{"name": "s1", "namespace": "y"}]));
        // Lists without a merge key are replaced; null deletes; $patch: replace replaces a map.
        let mut obj =
            json!({"rules": [{"verbs": ["get"]}], "data": {"a": "1", "b": "2"}, "keep": {"x": 1}});
        strategic_merge(
            &mut obj,
            &json!({"rules": [{"verbs": ["list"]}], "data": {"a": null}, "keep": {"$patch": "replace", "y": 2}}),
        );
        assert_eq!(
            obj,
            json!({"rules": [{"verbs": ["list"]}], "data": {"b": "2"}, "keep": {"y": 2}})
        );
    }

    #[test]
    fn json_patch_test_of_missing_path_against_null_passes() {
        let mut obj = json!({"metadata": {"name": "x"}});
        json_patch(
            &mut obj,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}, {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["f"]));
        let e = json_patch(
            &mut obj,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": ["g"]}]),
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    }
}
