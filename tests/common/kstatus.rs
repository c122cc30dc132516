//! The kstatus rules (sigs.k8s.io/cli-utils/pkg/kstatus, docs/status.md "Conditions" and the
//! generic checks of `status.Compute`) for a custom resource, as Flux's `wait: true` and
//! `kubectl`-based tooling read it.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KStatus {
    InProgress,
    Current,
    Failed,
}

/// The kstatus verdict: a newer generation than `status.observedGeneration` is InProgress;
/// then the first of `Reconciling=True` (InProgress) and `Stalled=True` (Failed) in the
/// condition list; anything else is Current (a resource with no status at all included).
pub fn kstatus(object: &Value) -> KStatus {
    let generation = object["metadata"]["generation"].as_i64();
    if let Some(observed) = object["status"]["observedGeneration"].as_i64()
        && generation.is_some_and(|g| g != observed)
    {
        return KStatus::InProgress;
    }
    let conditions = object["status"]["conditions"].as_array();
    for condition in conditions.into_iter().flatten() {
        match (condition["type"].as_str(), condition["status"].as_str()) {
            (Some("Reconciling"), Some("True")) => return KStatus::InProgress,
            (Some("Stalled"), Some("True")) => return KStatus::Failed,
            _ => {}
        }
    }
    KStatus::Current
}

/// The `reason` of condition `type_`.
pub fn reason(object: &Value, type_: &str) -> Option<String> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["reason"].as_str())
        .map(str::to_owned)
}
