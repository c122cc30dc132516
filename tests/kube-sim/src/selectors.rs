//! Label and field selectors.

use serde_json::Value;

use crate::errors::ApiError;

#[derive(Debug, Clone)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Vec<Req>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn set_values(s: &str) -> Result<Vec<String>, ApiError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{s}', expected: '('"
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if let Some(k) = part.strip_prefix('!') {
                reqs.push(Req::NotExists(k.trim().to_string()));
            } else if let Some((k, v)) = part.split_once("!=") {
                reqs.push(Req::Ne(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = part.split_once("==") {
                reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = part.split_once('=') {
                reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = part.split_once(" notin ") {
                reqs.push(Req::NotIn(k.trim().into(), set_values(v)?));
            } else if let Some((k, v)) = part.split_once(" in ") {
                reqs.push(Req::In(k.trim().into(), set_values(v)?));
            } else if part.contains(' ') || part.contains('(') {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {part}"
                )));
            } else {
                reqs.push(Req::Exists(part.to_string()));
            }
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A `key=value` requirement of the selector, if it has one: an index can narrow a list
    /// to the objects with that label before the whole selector is matched.
    pub fn equality(&self) -> Option<(&str, &str)> {
        self.0.iter().find_map(|req| match req {
            Req::Eq(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A field selector over dotted object paths (`metadata.name`, `involvedObject.uid`, ...).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            out.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let mut cur = obj;
            for seg in k.split('.') {
                cur = &cur[seg];
            }
            let actual = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selector_operators() {
        let labels = json!({"env": "prod", "tier": "db"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&labels);
        assert!(
            m("env=prod")
                && m("env==prod")
                && m("env!=dev")
                && m("env in (prod, dev)")
                && m("tier notin (web)")
        );
        assert!(m("env") && m("!missing") && m("env=prod,tier=db") && m(""));
        assert!(
            !m("env=dev")
                && !m("env notin (prod)")
                && !m("!env")
                && !m("missing")
                && !m("env in (dev)")
        );
        assert!(LabelSelector::parse("env in prod").is_err());
    }

    #[test]
    fn field_selector_on_dotted_paths() {
        let obj = json!({"metadata": {"name": "a", "namespace": "n"}, "involvedObject": {"uid": "u1"}, "count": 3});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&obj);
        assert!(
            m("metadata.name=a")
                && m("metadata.namespace!=x")
                && m("involvedObject.uid==u1")
                && m("count=3")
        );
        assert!(!m("metadata.name=b") && !m("metadata.name=a,metadata.namespace=x"));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
