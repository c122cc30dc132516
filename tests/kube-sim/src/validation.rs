//! Object metadata and built-in kind validation, worded as k8s.io/apimachinery's
//! `util/validation` and the core validators.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::errors::{FieldError, FieldErrorKind};

const QNAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QNAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";

/// `validation.RegexError`.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            // kube-apiserver's RegexError: " or " after "', " (two spaces).
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

/// A compiled-regex cache: validation runs on every write.
pub fn regex(pattern: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok())
        .clone()
}

fn full_match(fmt: &str, s: &str) -> bool {
    regex(&format!("^(?:{fmt})$")).is_some_and(|r| r.is_match(s))
}

pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 bytes".to_string());
    }
    if !full_match(DNS1123_SUBDOMAIN_FMT, s) {
        out.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    out
}

/// `path.IsValidPathSegmentName`: the name rule of RBAC objects (`ValidateRBACName`), which
/// allows the bootstrap policy's `system:aggregate-to-view` and the like.
pub fn path_segment_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s == "." || s == ".." {
        out.push(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            out.push(format!("may not contain '{bad}'"));
        }
    }
    out
}

/// `validation.IsQualifiedName`.
pub fn qualified_name(value: &str) -> Vec<String> {
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return vec!["prefix part must be non-empty".to_string()];
            }
            let mut errs: Vec<String> = dns1123_subdomain(prefix)
                .into_iter()
                .map(|m| format!("prefix part {m}"))
                .collect();
            errs.extend(name_part(name));
            return errs;
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QNAME_MSG, QNAME_FMT, &["MyName", "my.name", "123-abc"])
            )];
        }
    };
    name_part(name)
}

fn name_part(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 bytes".to_string());
    }
    if !name.is_empty() && !full_match(QNAME_FMT, name) {
        errs.push(format!(
            "name part {}",
            regex_error(QNAME_MSG, QNAME_FMT, &["MyName", "my.name", "123-abc"])
        ));
    }
    errs
}

pub fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 bytes".to_string());
    }
    if !full_match(LABEL_VALUE_FMT, v) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn invalid(field: &str, value: &str, msg: String) -> FieldError {
    FieldError::new(
        FieldErrorKind::Invalid,
        field,
        Some(Value::String(value.to_string())),
        msg,
    )
}

/// Labels and annotations (`ValidateObjectMeta`'s parts that clients get wrong).
pub fn object_meta(meta: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for m in qualified_name(k) {
                errs.push(invalid("metadata.labels", k, m));
            }
            match v.as_str() {
                Some(s) => {
                    for m in label_value(s) {
                        errs.push(invalid("metadata.labels", s, m));
                    }
                }
                None => errs.push(invalid(
                    "metadata.labels",
                    &v.to_string(),
                    "must be a string".into(),
                )),
            }
        }
    }
    // ValidateFinalizerName: a name without a '/' must be one of the standard finalizers.
    let finalizers = meta["finalizers"].as_array().cloned().unwrap_or_default();
    for (i, f) in finalizers.iter().enumerate() {
        let f = f.as_str().unwrap_or_default();
        if !f.contains('/') && !["kubernetes", "orphan", "foregroundDeletion"].contains(&f) {
            errs.push(invalid(
                &format!("metadata.finalizers[{i}]"),
                f,
                "name is neither a standard finalizer name nor is it fully qualified".into(),
            ));
        }
    }
    let refs = meta["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, r) in refs.iter().enumerate() {
        for field in ["apiVersion", "kind", "name", "uid"] {
            if r[field].as_str().is_none_or(str::is_empty) {
                errs.push(crate::errors::FieldError::new(
                    crate::errors::FieldErrorKind::Required,
                    &format!("metadata.ownerReferences[{i}].{field}"),
                    None,
                    "must not be empty",
                ));
            }
        }
    }
    let controllers: Vec<String> = refs
        .iter()
        .filter(|r| r["controller"] == Value::Bool(true))
        .map(|r| {
            format!(
                "{}/{}",
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if controllers.len() > 1 {
        errs.push(FieldError::new(
            FieldErrorKind::Invalid,
            "metadata.ownerReferences",
            Some(Value::Array(refs.clone())),
            format!("Only one reference can have Controller set to true. Found \"true\" in references for {}", controllers.join(" and ")),
        ));
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            for m in qualified_name(&k.to_lowercase()) {
                errs.push(invalid("metadata.annotations", k, m));
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > 256 * 1024 {
            errs.push(FieldError::new(
                FieldErrorKind::TooLong,
                "metadata.annotations",
                None,
                "may not be more than 262144 bytes",
            ));
        }
    }
    errs
}

/// Keys of Secret/ConfigMap `data` (`IsConfigMapKey`) and the Secret size limit.
pub fn config_data(obj: &Value, secret: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for field in ["data", "binaryData"] {
        if let Some(m) = obj[field].as_object() {
            for (k, v) in m {
                let path = format!("{field}[{k}]");
                if k.len() > 253 {
                    errs.push(invalid(&path, k, "must be no more than 253 bytes".into()));
                }
                if !full_match(CONFIG_KEY_FMT, k) {
                    errs.push(invalid(
                        &path,
                        k,
                        regex_error(
                            CONFIG_KEY_MSG,
                            CONFIG_KEY_FMT,
                            &["key.name", "KEY_NAME", "key-name"],
                        ),
                    ));
                }
                if k == "." {
                    errs.push(invalid(&path, k, "must not be '.'".into()));
                } else if k == ".." {
                    errs.push(invalid(&path, k, "must not be '..'".into()));
                } else if k.starts_with("..") {
                    errs.push(invalid(&path, k, "must not start with '..'".into()));
                }
                total += k.len()
                    + v.as_str()
                        .map(|s| if secret { s.len() * 3 / 4 } else { s.len() })
                        .unwrap_or(0);
            }
        }
    }
    if secret && total > 1024 * 1024 {
        errs.push(FieldError::new(
            FieldErrorKind::TooLong,
            "data",
            None,
            "may not be more than 1048576 bytes",
        ));
    }
    errs
}
