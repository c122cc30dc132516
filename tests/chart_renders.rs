//! The Helm chart as the operator sees it: every object `scripts/chart-test.sh` rendered with the
//! real Helm engine deserialises into its k8s-openapi type, the chart's CRD is the one the Rust
//! types generate, and the Deployment's and the `helm test` Pod's arguments are accepted by this
//! binary's command line.

use std::path::PathBuf;

use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kekeeper::cli::{Cli, Command};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const CASES: &[&str] = &[
    "default",
    "namespaced",
    "key-store",
    "ha",
    "no-crds",
    "servicemonitor",
    "networkpolicy",
    "monitoring",
    "everything",
];

fn renders_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KEKEEPER_CHART_RENDERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chart-renders"));
    if dir.join("default.yaml").exists() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} has no chart renders under CI; scripts/chart-test.sh makes them",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: no chart renders in {}; run scripts/chart-test.sh first",
        dir.display()
    );
    None
}

fn documents(dir: &std::path::Path, case: &str) -> Vec<Value> {
    let path = dir.join(format!("{case}.yaml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|err| panic!("{}: not YAML: {err}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn typed<T: DeserializeOwned>(case: &str, doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|err| {
        panic!(
            "{case}: {} {} does not deserialise into its k8s-openapi type: {err}",
            doc["kind"], doc["metadata"]["name"]
        )
    })
}

#[test]
fn every_rendered_object_is_its_kubernetes_type() {
    let Some(dir) = renders_dir() else { return };
    for case in CASES {
        let docs = documents(&dir, case);
        assert!(!docs.is_empty(), "{case}: nothing rendered");
        for doc in &docs {
            match doc["kind"].as_str().unwrap_or_default() {
                "Deployment" => drop(typed::<Deployment>(case, doc)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(case, doc)),
                "Service" => drop(typed::<Service>(case, doc)),
                "ConfigMap" => drop(typed::<ConfigMap>(case, doc)),
                "ClusterRole" => drop(typed::<ClusterRole>(case, doc)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(case, doc)),
                "Role" => drop(typed::<Role>(case, doc)),
                "RoleBinding" => drop(typed::<RoleBinding>(case, doc)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(case, doc)),
                "NetworkPolicy" => drop(typed::<NetworkPolicy>(case, doc)),
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(case, doc)),
                "ValidatingAdmissionPolicy" => drop(typed::<ValidatingAdmissionPolicy>(case, doc)),
                "ValidatingAdmissionPolicyBinding" => {
                    drop(typed::<ValidatingAdmissionPolicyBinding>(case, doc))
                }
                // The `helm test` hook.
                "Pod" => drop(typed::<Pod>(case, doc)),
                // Not k8s-openapi types (Prometheus operator); their shape is checked by the
                // chart's Python tests (promtool for the PrometheusRule).
                "ServiceMonitor" | "PrometheusRule" => {}
                other => panic!("{case}: unexpected kind {other:?}"),
            }
        }
    }
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let Some(dir) = renders_dir() else { return };
    let generated = serde_json::to_value(kekeeper::crd::crd()).unwrap();
    let docs = documents(&dir, "default");
    let rendered = docs
        .iter()
        .find(|doc| doc["kind"] == "CustomResourceDefinition")
        .expect("the default render installs the CRD");
    // Helm re-emits `100.0` as `100`: compare numbers by value.
    assert_eq!(
        numbers_as_f64(rendered["spec"].clone()),
        numbers_as_f64(generated["spec"].clone()),
        "chart CRD spec differs; run scripts/chart-test.sh sync-crd"
    );
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "uninstalling the chart must not delete the CRD (and every RecordingKeyConfig)"
    );
    assert!(
        !documents(&dir, "no-crds")
            .iter()
            .any(|doc| doc["kind"] == "CustomResourceDefinition")
    );
}

fn numbers_as_f64(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), Value::from),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, numbers_as_f64(value)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn deployment_arguments_are_accepted_by_the_binary() {
    let Some(dir) = renders_dir() else { return };
    // "everything" adds `extraArgs` for a future flag on purpose.
    for case in CASES.iter().filter(|case| **case != "everything") {
        let docs = documents(&dir, case);
        let deployment: Deployment = typed(
            case,
            docs.iter()
                .find(|doc| doc["kind"] == "Deployment")
                .expect("a Deployment"),
        );
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap_or_default();
        let cli = Cli::try_parse_from(std::iter::once("kekeeper".to_owned()).chain(args.clone()))
            .unwrap_or_else(|err| {
                panic!("{case}: kekeeper rejects the chart's args {args:?}: {err}")
            });
        let Command::Run(run) = cli.command else {
            panic!("{case}: the Deployment does not run `kekeeper run`: {args:?}")
        };
        if *case == "namespaced" {
            assert_eq!(run.namespace.len(), 2, "{case}: {args:?}");
        }
        let key_store = run.key_store.as_ref().map(ToString::to_string);
        let expected = (*case == "key-store").then(|| "s3://acme-kekeeper/prod-eu".to_owned());
        assert_eq!(key_store, expected, "{case}: {args:?}");
        assert!(
            run.leader_elect,
            "{case}: leader election is on by default (two processes would double every KMS call)"
        );
        assert_eq!(
            run.metrics_addr.port(),
            8080,
            "{case}: probes and Service use 8080"
        );
    }
}

#[test]
fn the_helm_test_pod_runs_kekeeper_test_on_the_watched_configs() {
    let Some(dir) = renders_dir() else { return };
    for case in CASES.iter().filter(|case| **case != "everything") {
        let docs = documents(&dir, case);
        let pod: Pod = typed(
            case,
            docs.iter()
                .find(|doc| doc["kind"] == "Pod")
                .expect("the helm test Pod"),
        );
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get("helm.sh/hook").map(String::as_str),
            Some("test")
        );
        let spec = pod.spec.unwrap();
        let args = spec.containers[0].args.clone().unwrap_or_default();
        let cli = Cli::try_parse_from(std::iter::once("kekeeper".to_owned()).chain(args.clone()))
            .unwrap_or_else(|err| {
                panic!("{case}: kekeeper rejects the test Pod's args {args:?}: {err}")
            });
        let Command::Test(test) = cli.command else {
            panic!("{case}: the helm test Pod does not run `kekeeper test`: {args:?}")
        };
        assert!(test.file.is_none(), "{case}: {args:?}");
        assert_eq!(test.max_organizations, 1, "{case}: {args:?}");
        if *case == "namespaced" {
            assert!(test.all && !test.all_namespaces, "{case}: {args:?}");
            assert_eq!(test.namespace, ["team-a", "team-b"], "{case}: {args:?}");
        } else {
            assert!(test.all_namespaces, "{case}: {args:?}");
        }
    }
}
