//! CEL evaluation for `x-kubernetes-validations` rules, on top of cel-interpreter, plus a few
//! Kubernetes CEL library string functions it lacks.

use std::sync::Arc;

use cel_interpreter::extractors::This;
use cel_interpreter::{Context, Program, Value as CelValue};
use serde_json::Value;

fn lower_ascii(This(s): This<Arc<String>>) -> String {
    s.to_ascii_lowercase()
}

fn upper_ascii(This(s): This<Arc<String>>) -> String {
    s.to_ascii_uppercase()
}

fn trim(This(s): This<Arc<String>>) -> String {
    s.trim().to_string()
}

fn split(This(s): This<Arc<String>>, sep: Arc<String>) -> cel_interpreter::ResolveResult {
    Ok(CelValue::List(Arc::new(
        s.split(sep.as_str())
            .map(|p| CelValue::String(Arc::new(p.to_string())))
            .collect(),
    )))
}

fn index_of(This(s): This<Arc<String>>, needle: Arc<String>) -> i64 {
    s.find(needle.as_str())
        .map(|i| s[..i].chars().count() as i64)
        .unwrap_or(-1)
}

fn replace(This(s): This<Arc<String>>, from: Arc<String>, to: Arc<String>) -> String {
    s.replace(from.as_str(), to.as_str())
}

/// Evaluates `expr` with `self` (and `oldSelf` when given); returns the result as JSON.
pub fn eval(expr: &str, this: &Value, old: Option<&Value>) -> Result<Value, String> {
    let program = Program::compile(expr).map_err(|e| format!("compilation failed: {e}"))?;
    let mut ctx = Context::default();
    ctx.add_function("lowerAscii", lower_ascii);
    ctx.add_function("upperAscii", upper_ascii);
    ctx.add_function("trim", trim);
    ctx.add_function("split", split);
    ctx.add_function("indexOf", index_of);
    ctx.add_function("replace", replace);
    ctx.add_variable("self", this.clone())
        .map_err(|e| e.to_string())?;
    if let Some(o) = old {
        ctx.add_variable("oldSelf", o.clone())
            .map_err(|e| e.to_string())?;
    }
    let out = program.execute(&ctx).map_err(|e| e.to_string())?;
    to_json(&out)
}

fn to_json(v: &CelValue) -> Result<Value, String> {
    Ok(match v {
        CelValue::Null => Value::Null,
        CelValue::Bool(b) => Value::Bool(*b),
        CelValue::Int(i) => Value::from(*i),
        CelValue::UInt(u) => Value::from(*u),
        CelValue::Float(f) => Value::from(*f),
        CelValue::String(s) => Value::String(s.to_string()),
        CelValue::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        other => Value::String(format!("{other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::eval;

    #[test]
    fn kubernetes_style_rules() {
        let spec = json!({"arn": "arn:aws:kms:us-east-1:111122223333:alias/x", "ids": ["a", "b"], "region": "us-east-1"});
        let t = |rule: &str| eval(rule, &spec, None).unwrap();
        assert_eq!(
            t("self.arn.startsWith('arn:aws:kms:') && self.arn.matches('alias/.+$')"),
            json!(true)
        );
        assert_eq!(t("self.arn.split(':')[3] == self.region"), json!(true));
        assert_eq!(
            t(
                "size(self.ids) == 2 && self.ids.all(i, size(i) == 1) && self.ids.exists(i, i == 'b')"
            ),
            json!(true)
        );
        assert_eq!(
            t("'a' in self.ids && has(self.region) && !has(self.missing)"),
            json!(true)
        );
        assert_eq!(t("self.arn.lowerAscii().contains('alias')"), json!(true));
        assert_eq!(
            eval("self == oldSelf", &json!("x"), Some(&json!("y"))).unwrap(),
            json!(false)
        );
        assert!(eval("self.missing == 1", &spec, None).is_err());
    }
}

#[cfg(test)]
mod more_tests {
    use serde_json::json;

    use super::eval;

    #[test]
    fn common_kubernetes_cel_forms() {
        let v = json!({"ids": ["a", "bb"], "n": 3, "m": {"k": "v"}, "ts": "2026-01-01T00:00:00Z"});
        for rule in [
            "self.ids.size() == 2",
            "self.ids.exists_one(i, i == 'a')",
            "self.ids.filter(i, size(i) > 1).size() == 1",
            "self.ids.map(i, i + '!')[0] == 'a!'",
            "'k' in self.m && self.m.k == 'v'",
            "int(self.n) == 3 && double(self.n) > 2.5",
            "timestamp(self.ts) < timestamp('2027-01-01T00:00:00Z')",
            "duration('1h') > duration('30m')",
        ] {
            assert_eq!(eval(rule, &v, None), Ok(json!(true)), "{rule}");
        }
    }
}
