//! Runs the shipped Argo CD health check (`contrib/argocd/health.lua`) on a resource, with
//! Debian's `lua5.4` (`scripts/chart-test.sh` installs it; `scripts/test.sh` runs that first),
//! handing the object over as a Lua table the way Argo CD does.

use std::process::Command;

use serde_json::Value;

/// (status, message) the health check gives `object`.
pub fn health(object: &Value) -> (String, String) {
    let script = super::cluster::repo_root().join("contrib/argocd/health.lua");
    let harness = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message)\n",
        lua(object),
        Value::from(script.to_string_lossy()),
    );
    let run = Command::new("lua5.4")
        .args(["-e", &harness])
        .output()
        .expect("lua5.4 (scripts/chart-test.sh installs it: apt-get install lua5.4)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let (status, message) = out.split_once('\n').unwrap_or((&out, ""));
    (status.to_owned(), message.to_owned())
}

/// A JSON value as a Lua table constructor.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // JSON string escapes are valid Lua escapes for this text.
        Value::String(_) => value.to_string(),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", Value::from(k.as_str()), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
