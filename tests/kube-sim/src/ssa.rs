//! Field management: `metadata.managedFields` (FieldsV1), server-side apply merging, conflict
//! detection and removal of fields a manager stopped applying.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::errors::ApiError;
use crate::patch::builtin_merge_key;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    /// A map field.
    F(String),
    /// An associative-list element, by its key fields (compact JSON, sorted keys).
    K(String),
    /// A set element (compact JSON).
    V(String),
    /// A list index.
    I(usize),
}

pub type Path = Vec<Pe>;
pub type FieldSet = BTreeSet<Path>;

#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Schema context for list semantics: a CRD schema node and/or built-in knowledge.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub schema: Option<&'a Value>,
    /// Built-in list semantics apply (built-in kinds, and `metadata` of every kind); custom
    /// resources otherwise follow their schema only, where lists default to atomic.
    pub builtin: bool,
    pub root: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(schema: Option<&'a Value>) -> Self {
        Ctx {
            schema,
            builtin: schema.is_none(),
            root: true,
        }
    }

    fn field(&self, name: &str) -> Ctx<'a> {
        let schema = self.schema.and_then(|s| {
            s.get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
        });
        Ctx {
            schema,
            builtin: self.builtin || (self.root && name == "metadata"),
            root: false,
        }
    }

    fn items(&self) -> Ctx<'a> {
        Ctx {
            schema: self.schema.and_then(|s| s.get("items")),
            builtin: self.builtin,
            root: false,
        }
    }

    /// `x-kubernetes-map-type: atomic` (or granular by default).
    fn atomic_map(&self) -> bool {
        self.schema
            .is_some_and(|s| s["x-kubernetes-map-type"].as_str() == Some("atomic"))
    }

    fn list_kind(&self, field: &str) -> ListKind {
        if let Some(s) = self.schema {
            match s["x-kubernetes-list-type"].as_str() {
                Some("set") => return ListKind::Set,
                Some("map") => return ListKind::Map(crate::schema::map_keys(s)),
                Some(_) => return ListKind::Atomic,
                None => {}
            }
        }
        if !self.builtin {
            return ListKind::Atomic;
        }
        if field == "finalizers" {
            return ListKind::Set;
        }
        match builtin_merge_key(field) {
            Some(k) => ListKind::Map(vec![k.to_string()]),
            None => ListKind::Atomic,
        }
    }
}

fn key_of(item: &Value, keys: &[String]) -> String {
    let m: std::collections::BTreeMap<&str, &Value> = keys
        .iter()
        .filter_map(|k| item.get(k).map(|v| (k.as_str(), v)))
        .collect();
    serde_json::to_string(&m).unwrap_or_default()
}

/// The set of fields a value sets (leaves, set members, list-map elements).
pub fn fields_of(v: &Value, ctx: Ctx, field: &str, base: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !ctx.atomic_map() => {
            for (k, child) in m {
                base.push(Pe::F(k.clone()));
                fields_of(child, ctx.field(k), k, base, out);
                base.pop();
            }
        }
        Value::Array(items) => match ctx.list_kind(field) {
            ListKind::Atomic => {
                out.insert(base.clone());
            }
            ListKind::Set => {
                for i in items {
                    base.push(Pe::V(serde_json::to_string(i).unwrap_or_default()));
                    out.insert(base.clone());
                    base.pop();
                }
            }
            ListKind::Map(keys) => {
                for i in items {
                    base.push(Pe::K(key_of(i, &keys)));
                    out.insert(base.clone());
                    fields_of(i, ctx.items(), "", base, out);
                    base.pop();
                }
            }
        },
        _ => {
            out.insert(base.clone());
        }
    }
}

/// Fields that are never tracked (identity and system-managed metadata).
fn strip_untracked(set: &mut FieldSet) {
    set.retain(|p| match p.as_slice() {
        [Pe::F(a)] if a == "apiVersion" || a == "kind" => false,
        [Pe::F(m), Pe::F(f), ..] if m == "metadata" => !matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "selfLink"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
        ),
        [Pe::F(m)] if m == "metadata" => false,
        _ => true,
    });
}

pub fn field_set(obj: &Value, schema: Option<&Value>) -> FieldSet {
    let mut out = FieldSet::new();
    fields_of(obj, Ctx::new(schema), "", &mut Vec::new(), &mut out);
    strip_untracked(&mut out);
    out
}

/// The value at a path, if present.
pub fn get<'v>(v: &'v Value, path: &[Pe], ctx: Ctx, field: &str) -> Option<&'v Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    match first {
        Pe::F(k) => get(v.get(k)?, rest, ctx.field(k), k),
        Pe::I(i) => get(v.get(*i)?, rest, ctx.items(), ""),
        Pe::V(s) => {
            let want: Value = serde_json::from_str(s).ok()?;
            v.as_array()?.iter().find(|x| **x == want)
        }
        Pe::K(s) => {
            let ListKind::Map(keys) = ctx.list_kind(field) else {
                return None;
            };
            let found = v.as_array()?.iter().find(|x| key_of(x, &keys) == *s)?;
            get(found, rest, ctx.items(), "")
        }
    }
}

fn remove(v: &mut Value, path: &[Pe], ctx: Ctx, field: &str) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match first {
        Pe::F(k) => {
            if rest.is_empty() {
                if let Some(m) = v.as_object_mut() {
                    m.remove(k);
                }
            } else if let Some(child) = v.get_mut(k) {
                remove(child, rest, ctx.field(k), k);
            }
        }
        Pe::V(s) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(s), v.as_array_mut()) {
                a.retain(|x| *x != want);
            }
        }
        Pe::K(s) => {
            let ListKind::Map(keys) = ctx.list_kind(field) else {
                return;
            };
            if let Some(a) = v.as_array_mut() {
                if rest.is_empty() {
                    a.retain(|x| key_of(x, &keys) != *s);
                } else if let Some(found) = a.iter_mut().find(|x| key_of(x, &keys) == *s) {
                    remove(found, rest, ctx.items(), "");
                }
            }
        }
        Pe::I(i) => {
            if let Some(child) = v.get_mut(*i) {
                remove(child, rest, ctx.items(), "");
            }
        }
    }
}

/// Merges an applied configuration into the live object, honouring list semantics.
pub fn apply_merge(live: &Value, applied: &Value, ctx: Ctx, field: &str) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !ctx.atomic_map() => {
            let mut out = l.clone();
            for (k, av) in a {
                let merged = match l.get(k) {
                    Some(lv) => apply_merge(lv, av, ctx.field(k), k),
                    None => av.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => match ctx.list_kind(field) {
            ListKind::Atomic => applied.clone(),
            ListKind::Set => {
                let mut out = l.clone();
                for i in a {
                    if !out.contains(i) {
                        out.push(i.clone());
                    }
                }
                Value::Array(out)
            }
            ListKind::Map(keys) => {
                let mut out = l.clone();
                for i in a {
                    let k = key_of(i, &keys);
                    match out.iter_mut().find(|x| key_of(x, &keys) == k) {
                        Some(existing) => *existing = apply_merge(existing, i, ctx.items(), ""),
                        None => out.push(i.clone()),
                    }
                }
                Value::Array(out)
            }
        },
        _ => applied.clone(),
    }
}

/// FieldsV1 text form of a path (`.spec.containers[name="x"].image`), as in conflict messages.
pub fn path_string(p: &Path) -> String {
    let mut s = String::new();
    for e in p {
        match e {
            Pe::F(k) => {
                s.push('.');
                s.push_str(k);
            }
            Pe::K(k) => {
                let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::V(v) => s.push_str(&format!("[={v}]")),
            Pe::I(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[Pe], element: bool) {
        let Some((first, rest)) = path.split_first() else {
            if element {
                node.insert(".".into(), json!({}));
            }
            return;
        };
        let key = match first {
            Pe::F(k) => format!("f:{k}"),
            Pe::K(k) => format!("k:{k}"),
            Pe::V(v) => format!("v:{v}"),
            Pe::I(i) => format!("i:{i}"),
        };
        if let Some(child) = node.entry(key).or_insert_with(|| json!({})).as_object_mut() {
            insert(child, rest, element);
        }
    }
    let mut root = Map::new();
    for p in set {
        insert(&mut root, p, matches!(p.last(), Some(Pe::K(_))));
    }
    Value::Object(root)
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, base: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            out.insert(base.clone());
            return;
        }
        for (k, child) in m {
            if k == "." {
                out.insert(base.clone());
                continue;
            }
            let e = if let Some(f) = k.strip_prefix("f:") {
                Pe::F(f.to_string())
            } else if let Some(f) = k.strip_prefix("k:") {
                let parsed: Value = serde_json::from_str(f).unwrap_or_default();
                Pe::K(serde_json::to_string(&parsed).unwrap_or_default())
            } else if let Some(f) = k.strip_prefix("v:") {
                Pe::V(f.to_string())
            } else if let Some(f) = k.strip_prefix("i:") {
                Pe::I(f.parse().unwrap_or_default())
            } else {
                continue;
            };
            base.push(e);
            walk(child, base, out);
            base.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct Manager {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Manager {
    fn same(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }
}

pub fn read_managers(obj: &Value) -> Vec<Manager> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Manager {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub fn write_managers(obj: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Parameters of one write for field management.
pub struct Write<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub schema: Option<&'a Value>,
    pub now: &'a str,
}

/// Records an Update-operation write: the writer takes the fields it changed; fields that no
/// longer exist lose their owners.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Write) {
    // Managed fields the client set explicitly win (kubectl's client-side-apply migration sends
    // them); an empty list resets them; absent keeps the stored ones.
    let explicit = &new["metadata"]["managedFields"];
    let mut managers = match (old, explicit) {
        (_, Value::Array(a)) if a.is_empty() => Vec::new(),
        (Some(o), Value::Array(_)) if o["metadata"]["managedFields"] != *explicit => {
            read_managers(new)
        }
        (None, Value::Array(_)) => read_managers(new),
        (Some(o), _) => read_managers(o),
        (None, _) => Vec::new(),
    };
    let ctx = Ctx::new(w.schema);
    let new_set = field_set(new, w.schema);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| old.is_none_or(|o| !same_value(get(o, p, ctx, ""), get(new, p, ctx, ""))))
        .cloned()
        .collect();
    for m in &mut managers {
        m.fields
            .retain(|p| new_set.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        match managers
            .iter_mut()
            .find(|m| m.same(w.manager, "Update", w.subresource))
        {
            Some(m) => {
                m.fields.extend(changed);
                m.time = w.now.to_string();
                m.api_version = w.api_version.to_string();
            }
            None => managers.push(Manager {
                manager: w.manager.to_string(),
                operation: "Update".into(),
                api_version: w.api_version.to_string(),
                subresource: w.subresource.to_string(),
                time: w.now.to_string(),
                fields: changed,
            }),
        }
    }
    write_managers(new, &managers);
}

/// Value equality as structured-merge-diff sees it: numbers compare by numeric value, so `100`
/// and `100.0` (a float field written by one client as an integer) are the same value.
fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_json(a, b),
        (a, b) => a == b,
    }
}

fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Server-side apply of `applied` onto `live` (an empty object for creation).
pub fn apply(live: &Value, applied: &Value, force: bool, w: &Write) -> Result<Value, ApiError> {
    let ctx = Ctx::new(w.schema);
    let mut managers = read_managers(live);
    let applied_set = field_set(applied, w.schema);
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for m in managers
        .iter()
        .filter(|m| !m.same(w.manager, "Apply", w.subresource))
    {
        for p in applied_set.intersection(&m.fields) {
            if matches!(p.last(), Some(Pe::K(_)) | Some(Pe::V(_))) {
                continue;
            }
            if !same_value(get(live, p, ctx, ""), get(applied, p, ctx, "")) {
                conflicts.push((m.display(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    let previous = managers
        .iter()
        .find(|m| m.same(w.manager, "Apply", w.subresource))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let mut merged = apply_merge(live, applied, ctx, "");
    if force {
        for m in managers
            .iter_mut()
            .filter(|m| !m.same(w.manager, "Apply", w.subresource))
        {
            m.fields.retain(|p| {
                !applied_set.contains(p)
                    || same_value(get(live, p, ctx, ""), get(applied, p, ctx, ""))
            });
        }
    }
    let others: FieldSet = managers
        .iter()
        .filter(|m| !m.same(w.manager, "Apply", w.subresource))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&Path> = previous
        .iter()
        .filter(|p| !applied_set.contains(*p) && !others.contains(*p))
        .collect();
    // Shallowest first: a list-map element goes before its fields (which hold its key).
    dropped.sort_by_key(|p| p.len());
    for p in dropped {
        remove(&mut merged, p, ctx, "");
    }
    match managers
        .iter_mut()
        .find(|m| m.same(w.manager, "Apply", w.subresource))
    {
        Some(m) => {
            m.fields = applied_set;
            m.time = w.now.to_string();
            m.api_version = w.api_version.to_string();
        }
        None => managers.push(Manager {
            manager: w.manager.to_string(),
            operation: "Apply".into(),
            api_version: w.api_version.to_string(),
            subresource: w.subresource.to_string(),
            time: w.now.to_string(),
            fields: applied_set,
        }),
    }
    let merged_set = field_set(&merged, w.schema);
    for m in &mut managers {
        m.fields.retain(|p| merged_set.contains(p));
    }
    write_managers(&mut merged, &managers);
    Ok(merged)
}

fn conflict_error(conflicts: &[(String, Path)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": path_string(p)}))
        .collect();
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0,
            path_string(&conflicts[0].1)
        )
    } else {
        let mut by_manager: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (m, p) in conflicts {
            by_manager
                .entry(m.as_str())
                .or_default()
                .push(path_string(p));
        }
        let mut lines = Vec::new();
        for (m, paths) in by_manager {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_v1_round_trip_and_path_strings() {
        let obj = json!({
            "metadata": {"name": "x", "labels": {"a": "1"}, "finalizers": ["f"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        let set = field_set(&obj, None);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"f\"": {}}},
                "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}},
            })
        );
        assert_eq!(from_fields_v1(&v1), set);
        let paths: Vec<String> = set.iter().map(path_string).collect();
        assert!(
            paths.contains(&r#".status.conditions[type="Ready"].status"#.to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&r#".metadata.finalizers[="f"]"#.to_string()),
            "{paths:?}"
        );
    }

    #[test]
    fn custom_resource_lists_are_atomic_unless_typed() {
        let schema =
            json!({"properties": {"status": {"properties": {"conditions": {"type": "array"}}}}});
        let obj = json!({"status": {"conditions": [{"type": "Ready"}]}});
        let set = field_set(&obj, Some(&schema));
        assert_eq!(
            set.into_iter().map(|p| path_string(&p)).collect::<Vec<_>>(),
            vec![".status.conditions"]
        );
    }

    #[test]
    fn an_integer_and_the_same_float_do_not_conflict() {
        let w = |manager| Write {
            manager,
            api_version: "v1",
            subresource: "",
            schema: None,
            now: "2026-01-01T00:00:00Z",
        };
        let mut live =
            json!({"metadata": {"name": "x"}, "spec": {"maximum": 100.0, "minimum": 1.0}});
        record_update(None, &mut live, &w("kubectl-client-side-apply"));
        let applied = json!({"spec": {"maximum": 100, "minimum": 1}});
        assert!(apply(&live, &applied, false, &w("helm")).is_ok());
        let changed = json!({"spec": {"maximum": 99, "minimum": 1}});
        let err = apply(&live, &changed, false, &w("helm")).unwrap_err();
        assert_eq!(err.code, 409);
    }
}
