//! The status fixtures the GitOps health recipes are tested against (tests/fixtures/status/,
//! used by tests/gitops) are objects the API would store: each one's spec passes the CRD's
//! schema and CEL rules on kube-sim, its status is accepted through the status subresource
//! without a field pruned, and the whole object reads back into the operator's Rust type.

mod common;

use common::cluster::{Cluster, repo_root};
use kekeeper::crd::RecordingKeyConfig;
use serde_json::{Value, json};

fn fixtures() -> Vec<(String, Value)> {
    let dir = repo_root().join("tests/fixtures/status");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).expect("fixture JSON"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 10, "fixtures in {}", dir.display());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fixtures_are_objects_the_api_accepts() {
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    for (name, fixture) in fixtures() {
        let typed: RecordingKeyConfig = serde_json::from_value(fixture.clone())
            .unwrap_or_else(|err| panic!("{name}: not a RecordingKeyConfig: {err}"));
        assert_eq!(typed.metadata.name.as_deref(), Some("recordings"), "{name}");

        // A fresh namespace per fixture: the same name in each.
        let ns = format!("fixture-{name}");
        cluster.kubectl_ok(&["create", "namespace", &ns]).await;
        let manifest = json!({
            "apiVersion": fixture["apiVersion"], "kind": fixture["kind"],
            "metadata": {"name": fixture["metadata"]["name"], "namespace": ns,
                         "annotations": fixture["metadata"]["annotations"].clone()},
            "spec": fixture["spec"],
        });
        let manifest = strip_nulls(manifest);
        cluster.apply_ok(&manifest.to_string()).await;
        let Some(status) = fixture.get("status") else {
            continue;
        };
        let patch = json!({ "status": status }).to_string();
        cluster
            .kubectl_ok(&[
                "patch",
                "rkc/recordings",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ])
            .await;
        let stored = cluster
            .get_json(&["get", "rkc", "recordings", "-n", &ns])
            .await;
        assert_eq!(
            &stored["status"], status,
            "{name}: status changed on the way in"
        );
    }
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}
