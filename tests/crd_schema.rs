//! The committed CRD is the generated one, and its schema carries the validation SPEC §2 asks
//! for. (Apply-time rejection is exercised against the API simulator in the end-to-end test.)

use kekeeper::crd::{RecordingKeyConfig, crd_yaml};
use serde_json::Value;

const COMMITTED: &str = "crds/recordingkeyconfigs.kekeeper.io.yaml";

#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = crd_yaml().unwrap();
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "{COMMITTED} is out of date with src/crd.rs; regenerate it with:\n\n    \
         cargo run -- crd > {COMMITTED}\n"
    );
}

fn version() -> Value {
    serde_json::to_value(kekeeper::crd::crd()).unwrap()["spec"]["versions"][0].clone()
}

fn spec_schema() -> Value {
    version()["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn rules(schema: &Value) -> Vec<(String, String)> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap().to_owned(),
                        r["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn names_short_name_category_and_status_subresource() {
    let crd = serde_json::to_value(kekeeper::crd::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "recordingkeyconfigs.kekeeper.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "rkc");
    assert_eq!(crd["spec"]["names"]["categories"][0], "kekeeper");
    assert_eq!(version()["name"], "v1alpha1");
    assert!(version()["subresources"]["status"].is_object());
}

/// `kubectl get rkc` shows the verdict and its reason; `-o wide` adds the message, the KMS key
/// and the key store (priority 1), as cert-manager's `kubectl get certificate -o wide` does.
#[test]
fn printer_columns() {
    let columns: Vec<(String, String, i64)> = version()["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["jsonPath"].as_str().unwrap().to_owned(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("Alias", ".spec.kmsKeyAliasArn", 0),
        ("Period", ".spec.rotation.period", 0),
        ("Orgs", ".status.organizationCount", 0),
        (
            "Ready",
            ".status.conditions[?(@.type==\"Ready\")].status",
            0,
        ),
        (
            "Reason",
            ".status.conditions[?(@.type==\"Ready\")].reason",
            0,
        ),
        ("Next Rotation", ".status.nextRotationTime", 0),
        (
            "Message",
            ".status.conditions[?(@.type==\"Ready\")].message",
            1,
        ),
        ("KMS Key", ".status.kmsKeyArn", 1),
        (
            "Key Store",
            ".status.conditions[?(@.type==\"KeyStoreSynced\")].reason",
            1,
        ),
        ("Age", ".metadata.creationTimestamp", 0),
    ];
    let expected: Vec<(String, String, i64)> = expected
        .iter()
        .map(|(a, b, p)| (a.to_string(), b.to_string(), *p))
        .collect();
    assert_eq!(columns, expected);
}

#[test]
fn alias_arn_rules_name_the_field() {
    let arn = &spec_schema()["properties"]["kmsKeyAliasArn"];
    assert_eq!(arn["type"], "string");
    assert!(arn["maxLength"].is_number(), "CEL cost needs a bound");
    let rules = rules(arn);
    assert_eq!(rules.len(), 3);
    assert!(rules[0].0.contains(":key/"));
    assert!(rules[0].1.contains("key ARN"));
    assert!(rules[1].0.contains("alias/aws"));
    assert!(rules[1].1.contains("AWS managed key"));
    assert!(rules[2].0.contains("alias/"));
    for (rule, message) in &rules {
        assert!(message.starts_with("spec.kmsKeyAliasArn"), "{message}");
        // Only what a plain CEL interpreter offers.
        for banned in [".split(", "format(", "url(", ".lowerAscii(", "quantity("] {
            assert!(!rule.contains(banned), "{rule} uses {banned}");
        }
    }
    let required = spec_schema()["required"].clone();
    assert!(
        required
            .as_array()
            .unwrap()
            .contains(&"kmsKeyAliasArn".into())
    );
}

#[test]
fn organisation_ids_are_a_set_of_one_to_a_hundred() {
    let ids = &spec_schema()["properties"]["organizationIds"];
    assert_eq!(ids["x-kubernetes-list-type"], "set");
    assert_eq!(ids["minItems"], 1);
    assert_eq!(ids["maxItems"], 100);
    assert_eq!(ids["items"]["minLength"], 1);
}

#[test]
fn enums_and_bounds() {
    let props = &spec_schema()["properties"];
    assert_eq!(
        props["rotation"]["properties"]["period"]["enum"],
        serde_json::json!(["Daily", "Weekly", "Monthly", "Yearly", "Never"])
    );
    assert_eq!(
        props["rotation"]["properties"]["onKmsKeyChange"]["enum"],
        serde_json::json!(["Rotate", "Ignore"])
    );
    assert_eq!(
        props["keyPairSpec"]["enum"],
        serde_json::json!(["RSA_2048", "RSA_3072", "RSA_4096"])
    );
    assert_eq!(props["historyLimit"]["minimum"], 1.0);
    assert_eq!(props["historyLimit"]["maximum"], 100.0);
    assert_eq!(props["recordingRetention"]["pattern"], "^[0-9]+(d|h)$");
    assert!(
        rules(&props["recordingRetention"])[0]
            .1
            .contains("at least 1d or 24h")
    );
    assert_eq!(props["encryptionContextKey"]["minLength"], 1);
    assert!(rules(&props["encryptionContextKey"])[0].0.contains("aws:"));
    assert_eq!(
        props["rotation"]["properties"]["period"]["default"],
        "Monthly"
    );
}

#[test]
fn home_region_must_equal_the_arn_region_and_default_key_ids_be_uuids() {
    let rules = rules(&spec_schema());
    assert_eq!(rules.len(), 3);
    assert!(rules[0].0.contains("self.homeRegion"));
    assert!(rules[0].1.starts_with("spec.homeRegion"));
    assert!(rules[1].0.contains("self.kmsReplicaRegions.exists"));
    assert!(
        rules[1]
            .1
            .starts_with("spec.kmsReplicaRegions must not list the home Region")
    );
    assert!(rules[2].0.contains("genesys-cloud-organization-id"));
    assert!(rules[2].1.starts_with("spec.organizationIds must be UUIDs"));
}

#[test]
fn every_spec_field_has_a_description_kubectl_explain_shows() {
    let spec = spec_schema();
    let mut missing = Vec::new();
    let mut check = |path: String, schema: &Value| {
        if schema["description"].as_str().is_none_or(str::is_empty) {
            missing.push(path);
        }
    };
    for (name, field) in spec["properties"].as_object().unwrap() {
        check(format!("spec.{name}"), field);
    }
    for (name, field) in spec["properties"]["rotation"]["properties"]
        .as_object()
        .unwrap()
    {
        check(format!("spec.rotation.{name}"), field);
    }
    assert!(missing.is_empty(), "no description: {missing:?}");
    let period = spec["properties"]["rotation"]["properties"]["period"]["description"]
        .as_str()
        .unwrap();
    assert!(
        period.contains("Jan 31 + 1 month = Feb 28 or 29"),
        "{period}"
    );
    assert!(period.contains("UTC"), "{period}");
}

#[test]
fn status_timestamps_are_date_times() {
    let status = &version()["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    for field in [
        "lastRotationTime",
        "nextRotationTime",
        "lastKmsKeyCheckTime",
    ] {
        assert_eq!(status[field]["type"], "string", "{field}");
        assert_eq!(status[field]["format"], "date-time", "{field}");
    }
    assert_eq!(
        status["lastKmsError"]["properties"]["time"]["format"],
        "date-time"
    );
    assert_eq!(
        status["activeKeyPairs"]["items"]["properties"]["createdAt"]["format"],
        "date-time"
    );
}

#[test]
fn spec_example_parses_with_defaults() {
    let yaml = r#"
apiVersion: kekeeper.io/v1alpha1
kind: RecordingKeyConfig
metadata: {name: recordings, namespace: telephony}
spec:
  kmsKeyAliasArn: arn:aws:kms:us-east-1:111122223333:alias/recordings
  organizationIds: [3fa85f64-5717-4562-b3fc-2c963f66afa6]
"#;
    let rkc: RecordingKeyConfig = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(rkc.spec.history_limit, 10);
    assert_eq!(
        rkc.spec.encryption_context_key,
        "genesys-cloud-organization-id"
    );
    assert!(!rkc.spec.suspend);
}

mod common;

/// What the API server (kube-sim, which runs the CRD's CEL rules) refuses at apply time, and
/// that the refusal names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_at_apply_time_naming_the_field() {
    use common::cluster::{Cluster, rkc_manifest};
    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let cluster = Cluster::start(false).await;
    cluster.install_crd().await;
    let alias = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    let valid = |name: &str, ids: &[&str]| rkc_manifest(name, alias, ids);
    let with = |name: &str, ids: &[&str], field: &str| {
        valid(name, ids).replace("  keyPairSpec:", &format!("  {field}\n  keyPairSpec:"))
    };
    let rejected = [
        (
            valid("not-uuid", &[ORG, "org-a"]),
            "spec.organizationIds must be UUIDs",
        ),
        (
            with("retention-hours", &[ORG], "recordingRetention: 23h"),
            "spec.recordingRetention must be at least 1d or 24h",
        ),
        (
            with("retention-zero", &[ORG], "recordingRetention: 0d"),
            "spec.recordingRetention must be at least 1d or 24h",
        ),
        (
            with(
                "replica-home",
                &[ORG],
                "kmsReplicaRegions: [eu-west-1, us-east-1]",
            ),
            "spec.kmsReplicaRegions must not list the home Region",
        ),
    ];
    for (manifest, message) in &rejected {
        let out = cluster.apply(manifest).await;
        assert!(!out.success, "accepted:\n{manifest}");
        assert!(out.stderr.contains(message), "{message}:\n{}", out.stderr);
    }
    for manifest in [
        valid("uuids", &[ORG, "7C9E6679-7425-40DE-944B-E07FC1F90AE7"]),
        with(
            "tenant-ids",
            &["org-a", "org-b"],
            "encryptionContextKey: tenant-id",
        ),
        with("retention-day", &[ORG], "recordingRetention: 24h"),
        with("retention-days", &[ORG], "recordingRetention: 1d"),
        with("replicas", &[ORG], "kmsReplicaRegions: [eu-west-1]"),
    ] {
        cluster.apply_ok(&manifest).await;
    }
    let stored = cluster
        .objects("kekeeper.io", "recordingkeyconfigs", Some(&cluster.ns()))
        .await;
    assert_eq!(stored.len(), 5);

    // What `kubectl explain` shows for the fields users ask about.
    for (field, expected) in [
        ("rkc.spec.rotation", "When key pairs are replaced"),
        (
            "rkc.spec.rotation.period",
            "Jan 31 + 1 month = Feb 28 or 29",
        ),
        (
            "rkc.spec.rotation.onKmsKeyChange",
            "pointed at another KMS key",
        ),
        ("rkc.spec.organizationIds", "UUIDs when"),
        ("rkc.spec.recordingRetention", "at least 1d"),
    ] {
        let text = cluster.kubectl_ok(&["explain", field]).await;
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.contains(expected), "kubectl explain {field}:\n{text}");
    }
}
