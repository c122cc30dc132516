//! Structural-schema handling for custom resources: pruning, defaulting, OpenAPI v3 validation and
//! CEL `x-kubernetes-validations`, with the field-error wording of the apiextensions-apiserver.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::errors::{FieldError, FieldErrorKind};

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Removes fields the schema does not know; returns their paths (for strict field validation).
pub fn prune(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(map) = obj.as_object_mut() {
        let props = &schema["properties"];
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.get(&k) {
                Some(s) => {
                    if let Some(child) = map.get_mut(&k) {
                        prune_node(child, s, &k, &mut unknown);
                    }
                }
                None if preserves(schema) => {}
                None => {
                    map.remove(&k);
                    unknown.push(k);
                }
            }
        }
    }
    unknown
}

fn prune_node(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    let p = join(path, &k);
                    match props.get(&k) {
                        Some(s) => {
                            if let Some(child) = map.get_mut(&k) {
                                prune_node(child, s, &p, unknown);
                            }
                        }
                        None if preserves(schema) => {}
                        None => {
                            map.remove(&k);
                            unknown.push(p);
                        }
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in map.iter_mut() {
                    prune_node(child, ap, &join(path, k), unknown);
                }
            } else if !preserves(schema)
                && schema["type"] == "object"
                && schema.get("additionalProperties").is_none()
            {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    map.remove(&k);
                    unknown.push(join(path, &k));
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_node(item, is, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s of the schema to absent properties of present objects.
pub fn apply_defaults(v: &mut Value, schema: &Value) {
    match v {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if !map.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(k)
                        && k != "metadata"
                    {
                        apply_defaults(child, s);
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(child, ap);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for item in items {
                    apply_defaults(item, is);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(v: &Value, schema: &Value) -> bool {
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        return v.is_string() || v.is_i64() || v.is_u64();
    }
    match schema["type"].as_str() {
        None => true,
        Some("integer") => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        Some("number") => v.is_number(),
        Some(t) => type_name(v) == t,
    }
}

fn type_invalid(path: &str, value: Value, detail: String) -> FieldError {
    FieldError::new(FieldErrorKind::TypeInvalid, path, Some(value), detail)
}

fn invalid(path: &str, value: Value, detail: String) -> FieldError {
    FieldError::new(FieldErrorKind::Invalid, path, Some(value), detail)
}

/// Validates a custom resource against its schema (excluding `metadata`).
pub fn validate(obj: &Value, old: Option<&Value>, schema: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(map) = obj.as_object()
        && let Some(props) = schema["properties"].as_object()
    {
        for (k, s) in props {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match map.get(k) {
                Some(child) => validate_node(child, old.and_then(|o| o.get(k)), s, k, &mut errs),
                None => {
                    if required(schema).contains(k.as_str()) {
                        errs.push(FieldError::new(FieldErrorKind::Required, k, None, ""));
                    }
                }
            }
        }
    }
    if let Some(o) = old {
        ratchet(&mut errs, obj, o);
    }
    // Order as kube-apiserver answers: the properties' errors, then missing required fields
    // (kube-openapi's object validator reports them after), then the list-type (set and map
    // key) ones (a second pass in the apiextensions-apiserver). Approximate for nested objects.
    errs.sort_by_key(|e| match e.kind {
        FieldErrorKind::Required => 1,
        FieldErrorKind::Duplicate => 2,
        _ => 0,
    });
    // As the apiextensions-apiserver: CEL rules run only when the schema errors do not make the
    // object unfit for them (type, required, enum and size violations).
    let blocking = errs.iter().any(|e| {
        matches!(
            e.kind,
            FieldErrorKind::NotSupported
                | FieldErrorKind::Required
                | FieldErrorKind::TooLong
                | FieldErrorKind::TooMany
                | FieldErrorKind::TypeInvalid
        )
    });
    if blocking {
        errs.push(FieldError::new(
            FieldErrorKind::Invalid,
            "<nil>",
            Some(Value::Null),
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ));
    } else {
        cel_walk(obj, old, schema, "", &mut errs);
    }
    errs
}

/// The value at a field-error path (`spec.list[2].field`).
fn at_path<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = v;
    for seg in path.split('.') {
        let (name, indices) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            cur = cur.get(idx.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

/// Validation ratcheting (CRDValidationRatcheting, GA in 1.33): on update, schema errors about
/// values that did not change are dropped (CEL rules ratchet per node in `cel_rules`).
fn ratchet(errs: &mut Vec<FieldError>, new: &Value, old: &Value) {
    errs.retain(|e| {
        if e.field == "<nil>" {
            return true;
        }
        let path = match e.kind {
            // A missing required field ratchets when its parent object is unchanged.
            FieldErrorKind::Required => e
                .field
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default(),
            _ => e.field.clone(),
        };
        let (n, o) = if path.is_empty() {
            (Some(new), Some(old))
        } else {
            (at_path(new, &path), at_path(old, &path))
        };
        !(n.is_some() && n == o)
    });
}

/// Evaluates the CEL rules of every schema node present in the object, parents first.
fn cel_walk(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    cel_rules(v, old, schema, path, errs);
    match v {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if path.is_empty() && k == "metadata" {
                        continue;
                    }
                    if let Some(child) = map.get(k) {
                        cel_walk(child, old.and_then(|o| o.get(k)), s, &join(path, k), errs);
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in map {
                    cel_walk(child, old.and_then(|o| o.get(k)), ap, &join(path, k), errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let old_item = old.and_then(|o| correlate(o, item, schema));
                    cel_walk(item, old_item, is, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn required(schema: &Value) -> HashSet<&str> {
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect()
}

fn validate_node(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if v.is_null() {
        if schema["nullable"].as_bool() == Some(true) || schema.get("type").is_none() {
            return;
        }
        errs.push(type_invalid(
            path,
            Value::String("null".into()),
            format!(
                "{path} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ),
        ));
        return;
    }
    if !type_ok(v, schema) {
        errs.push(type_invalid(
            path,
            Value::String(type_name(v).into()),
            format!(
                "{path} in body must be of type {}: \"{}\"",
                schema["type"].as_str().unwrap_or("object"),
                type_name(v)
            ),
        ));
        return;
    }
    combinators(v, schema, path, errs);
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list = allowed
            .iter()
            .map(crate::errors::go_value)
            .collect::<Vec<_>>()
            .join(", ");
        errs.push(FieldError::new(
            FieldErrorKind::NotSupported,
            path,
            Some(v.clone()),
            format!("supported values: {list}"),
        ));
    }
    match v {
        Value::String(s) => string_checks(s, schema, path, errs),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or_default();
            let shown = Value::Number(n.clone());
            if let Some(min) = schema["minimum"].as_f64() {
                let excl = schema["exclusiveMinimum"].as_bool() == Some(true);
                if f < min || (excl && f == min) {
                    let rel = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    errs.push(invalid(
                        path,
                        shown.clone(),
                        format!("{path} in body should be {rel} {}", schema["minimum"]),
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                let excl = schema["exclusiveMaximum"].as_bool() == Some(true);
                if f > max || (excl && f == max) {
                    let rel = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    errs.push(invalid(
                        path,
                        shown,
                        format!("{path} in body should be {rel} {}", schema["maximum"]),
                    ));
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema["maxItems"].as_u64()
                && n > max
            {
                errs.push(FieldError::new(
                    FieldErrorKind::TooMany,
                    path,
                    Some(Value::from(n)),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && n < min
            {
                errs.push(invalid(
                    path,
                    Value::from(n),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            list_uniqueness(items, schema, path, errs);
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let old_item = old.and_then(|o| correlate(o, item, schema));
                    validate_node(item, old_item, is, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    let p = join(path, k);
                    match map.get(k) {
                        Some(child) => {
                            validate_node(child, old.and_then(|o| o.get(k)), s, &p, errs)
                        }
                        None => {
                            if required(schema).contains(k.as_str()) {
                                errs.push(FieldError::new(FieldErrorKind::Required, &p, None, ""));
                            }
                        }
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in map {
                    validate_node(child, old.and_then(|o| o.get(k)), ap, &join(path, k), errs);
                }
            }
            // `required` without a matching property (as in oneOf/anyOf branches).
            let props = schema["properties"].as_object();
            for r in required(schema) {
                if !map.contains_key(r) && props.is_none_or(|p| !p.contains_key(r)) {
                    errs.push(FieldError::new(
                        FieldErrorKind::Required,
                        &join(path, r),
                        None,
                        "",
                    ));
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                errs.push(FieldError::new(
                    FieldErrorKind::TooMany,
                    path,
                    Some(Value::from(map.len())),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (map.len() as u64) < min
            {
                errs.push(invalid(
                    path,
                    Value::from(map.len()),
                    format!("{path} in body should have at least {min} properties"),
                ));
            }
        }
        _ => {}
    }
}

/// Value validation through `allOf`, `anyOf`, `oneOf` and `not` (structural schemas allow only
/// value validations in them), with kube-openapi's wording.
fn combinators(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let passes = |branch: &Value| {
        let mut e = Vec::new();
        validate_node(v, None, branch, path, &mut e);
        e.is_empty()
    };
    let shown = || {
        Value::String(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    if let Some(all) = schema["allOf"].as_array() {
        for branch in all {
            validate_node(v, None, branch, path, errs);
        }
    }
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(passes)
    {
        errs.push(invalid(
            path,
            shown(),
            format!("{path} in body must validate at least one schema (anyOf)"),
        ));
    }
    if let Some(one) = schema["oneOf"].as_array() {
        match one.iter().filter(|b| passes(b)).count() {
            1 => {}
            // kube-apiserver v1.37.2's wording for more than one, field and value left out.
            n @ 2.. => errs.push(invalid(
                "<nil>",
                Value::String(String::new()),
                format!(
                    "\"{path}\" must validate one and only one schema (oneOf). Found {n} valid alternatives"
                ),
            )),
            0 => errs.push(invalid(
                path,
                shown(),
                format!("{path} in body must validate one and only one schema (oneOf)"),
            )),
        }
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        errs.push(invalid(
            path,
            shown(),
            format!("{path} in body must not validate the schema (not)"),
        ));
    }
}

fn string_checks(s: &str, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let shown = Value::String(s.to_string());
    let len = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        errs.push(FieldError::new(
            FieldErrorKind::TooLong,
            path,
            Some(shown.clone()),
            format!("may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        errs.push(invalid(
            path,
            shown.clone(),
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(p) = schema["pattern"].as_str()
        && let Some(re) = crate::validation::regex(p)
        && !re.is_match(s)
    {
        errs.push(invalid(
            path,
            shown.clone(),
            format!("{path} in body should match '{p}'"),
        ));
    }
    if schema["format"].as_str() == Some("date-time") && s.parse::<jiff::Timestamp>().is_err() {
        errs.push(invalid(
            path,
            shown,
            format!("{path} in body must be of type date-time: \"{s}\""),
        ));
    }
}

fn list_uniqueness(items: &[Value], schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errs.push(FieldError::new(
                        FieldErrorKind::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(item.clone()),
                        "",
                    ));
                }
            }
        }
        Some("map") => {
            let keys = map_keys(schema);
            let key_of =
                |v: &Value| -> Vec<Value> { keys.iter().map(|k| v[k.as_str()].clone()).collect() };
            for (i, item) in items.iter().enumerate() {
                let k = key_of(item);
                if items[..i].iter().any(|o| key_of(o) == k) {
                    let shown: Map<String, Value> = keys
                        .iter()
                        .zip(k)
                        .filter(|(_, v)| !v.is_null())
                        .map(|(n, v)| (n.clone(), v))
                        .collect();
                    errs.push(FieldError::new(
                        FieldErrorKind::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(Value::Object(shown)),
                        "",
                    ));
                }
            }
        }
        _ => {}
    }
}

pub fn map_keys(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-list-map-keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Finds the old element matching `item` in a `map` list (the only lists CEL correlates).
fn correlate<'a>(old: &'a Value, item: &Value, schema: &Value) -> Option<&'a Value> {
    if schema["x-kubernetes-list-type"].as_str() != Some("map") {
        return None;
    }
    let keys = map_keys(schema);
    old.as_array()?
        .iter()
        .find(|o| keys.iter().all(|k| o[k.as_str()] == item[k.as_str()]))
}

fn schema_type(v: &Value, schema: &Value) -> String {
    schema["type"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| type_name(v).to_string())
}

fn cel_rules(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(rules) = schema["x-kubernetes-validations"].as_array() else {
        return;
    };
    // Ratcheting: the rules of a node whose value did not change are not enforced.
    if old.is_some_and(|o| o == v) {
        return;
    }
    for rule in rules {
        let Some(expr) = rule["rule"].as_str() else {
            continue;
        };
        let transition = expr.contains("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let mut field = path.to_string();
        if let Some(fp) = rule["fieldPath"].as_str() {
            field.push_str(fp);
            if path.is_empty() {
                field = fp.trim_start_matches('.').to_string();
            }
        }
        let kind = match rule["reason"].as_str() {
            Some("FieldValueForbidden") => FieldErrorKind::Forbidden,
            Some("FieldValueRequired") => FieldErrorKind::Required,
            Some("FieldValueDuplicate") => FieldErrorKind::Duplicate,
            _ => FieldErrorKind::Invalid,
        };
        // The failing value itself when it is a scalar, as kube-apiserver prints it.
        let ty = match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => v.clone(),
            _ => Value::String(schema_type(v, schema)),
        };
        match crate::cel::eval(expr, v, old) {
            Ok(Value::Bool(true)) => {}
            Ok(Value::Bool(false)) => {
                let mut message = rule["message"].as_str().map(str::to_string);
                if let Some(me) = rule["messageExpression"].as_str()
                    && let Ok(Value::String(m)) = crate::cel::eval(me, v, old)
                {
                    message = Some(m);
                }
                let message = message.unwrap_or_else(|| format!("failed rule: {expr}"));
                // A rule with a fieldPath names no value (kube-apiserver omits it).
                let value = if rule.get("fieldPath").is_some() {
                    None
                } else if matches!(kind, FieldErrorKind::Invalid | FieldErrorKind::Duplicate) {
                    Some(ty)
                } else {
                    None
                };
                errs.push(FieldError::new(
                    kind,
                    if field.is_empty() { "<nil>" } else { &field },
                    value,
                    message,
                ));
            }
            Ok(other) => errs.push(invalid(
                if path.is_empty() { "<nil>" } else { path },
                ty,
                format!("rule result is not a boolean: {other} evaluating rule: {expr}"),
            )),
            Err(e) => errs.push(invalid(
                if path.is_empty() { "<nil>" } else { path },
                ty,
                format!("{e} evaluating rule: {expr}"),
            )),
        }
    }
}
