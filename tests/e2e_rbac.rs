//! The Helm chart's RBAC proven on kube-sim with RBAC enforced: the real `kekeeper run`, as the
//! chart's ServiceAccount with the chart's (Cluster)Roles and the rendered Deployment's args,
//! must never be refused (403) and must use every rule it is granted; with a rule taken away it
//! must fail visibly. Reads the render `scripts/chart-test.sh` writes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{
    Cluster, Faults, Operator, chart_render, condition, eventually, rkc_manifest, rkc_manifest_in,
    settle,
};
use common::proxy::FaultProxy;
use common::{create_key, kms_endpoint};
use serde_json::{Value, json};

const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "9b2e6c1a-7d4f-4e8a-a1c3-5f0d2b8e9c47";
const NAME: &str = "recordings";
const WAIT: Duration = Duration::from_secs(40);
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    docs.iter().filter(move |d| d["kind"] == kind)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// One granted permission: (apiGroup, resource, subresource, verb, resourceNames).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    subresource: String,
    verb: String,
    names: Vec<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{group} {}", self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        write!(f, " {}", self.verb)?;
        if !self.names.is_empty() {
            write!(f, " (resourceNames {:?})", self.names)?;
        }
        Ok(())
    }
}

/// The rendered (Cluster)Roles that a rendered binding grants (to the operator's
/// ServiceAccount); the aggregated user roles (`<fullname>-edit`/`-view`) are bound by no
/// binding of the chart and are not the operator's.
fn bound_roles(docs: &[Value]) -> impl Iterator<Item = &Value> {
    let refs: BTreeSet<(String, String, String)> = of_kind(docs, "ClusterRoleBinding")
        .chain(of_kind(docs, "RoleBinding"))
        .map(|b| {
            let kind = b["roleRef"]["kind"].as_str().unwrap_or_default().to_owned();
            // A ClusterRole is cluster-wide; a Role lives in its binding's namespace.
            let namespace = match kind.as_str() {
                "Role" => b["metadata"]["namespace"].as_str().unwrap_or_default(),
                _ => "",
            };
            let name = b["roleRef"]["name"].as_str().unwrap_or_default().to_owned();
            (kind, namespace.to_owned(), name)
        })
        .collect();
    of_kind(docs, "ClusterRole")
        .chain(of_kind(docs, "Role"))
        .filter(move |role| {
            let kind = role["kind"].as_str().unwrap_or_default().to_owned();
            let namespace = role["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = role["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            refs.contains(&(kind, namespace.to_owned(), name))
        })
}

/// Every (group, resource[/subresource], verb) the rendered bindings grant the operator.
fn grants(docs: &[Value]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for role in bound_roles(docs) {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_owned(), s.to_owned()),
                        None => (resource.clone(), String::new()),
                    };
                    for verb in strings(&rule["verbs"]) {
                        out.insert(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            subresource: subresource.clone(),
                            verb,
                            names: strings(&rule["resourceNames"]),
                        });
                    }
                }
            }
        }
    }
    out
}

/// kube-sim with RBAC, the CRD and the chart's RBAC objects applied as admin, and the operator
/// running as the chart's ServiceAccount with the rendered Deployment's args, through a KMS
/// fault proxy.
struct Setup {
    // Dropped first: the operator (its log is printed from the cluster's tempdir), then the rest.
    operator: Operator,
    /// Faults in the operator's API requests (kube-sim's, or a fault proxy's on the real server).
    faults: Faults,
    cluster: Cluster,
    proxy: FaultProxy,
    user: String,
    /// The ServiceAccount's own kubeconfig (no fault proxy).
    kubeconfig: std::path::PathBuf,
    alias: String,
    docs: Vec<Value>,
}

/// On the shared real server, the render's namespaces become the test's own
/// (`Cluster::namespace`) and its ClusterRoles and ClusterRoleBindings get names no other test
/// uses, so tests running side by side never share a grant. Unchanged on kube-sim.
async fn localize(cluster: &Cluster, docs: &mut [Value]) {
    if !cluster.is_real() {
        return;
    }
    let mut local: BTreeMap<String, String> = BTreeMap::new();
    let mut named: BTreeSet<String> = BTreeSet::new();
    for doc in docs.iter() {
        named.extend(doc["metadata"]["namespace"].as_str().map(str::to_owned));
        for subject in doc["subjects"].as_array().into_iter().flatten() {
            named.extend(subject["namespace"].as_str().map(str::to_owned));
        }
    }
    for arg in deployment_args(docs) {
        for flag in ["--namespace=", "--lease-namespace="] {
            named.extend(arg.strip_prefix(flag).map(str::to_owned));
        }
    }
    for namespace in named {
        let own = cluster.namespace(&namespace).await;
        local.insert(namespace, own);
    }
    // (`get_mut`: indexing a Value mutably would add the fields it does not have.)
    let map = |v: Option<&mut Value>, local: &BTreeMap<String, String>| {
        if let Some(v) = v
            && let Some(own) = v.as_str().and_then(|n| local.get(n))
        {
            *v = json!(own);
        }
    };
    for doc in docs.iter_mut() {
        map(doc.pointer_mut("/metadata/namespace"), &local);
        let subjects = doc.get_mut("subjects").and_then(Value::as_array_mut);
        for subject in subjects.into_iter().flatten() {
            map(subject.get_mut("namespace"), &local);
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "ClusterRole" || kind == "ClusterRoleBinding" {
            let name = cluster.cluster_name(doc["metadata"]["name"].as_str().unwrap());
            cluster.forget_later(&format!("{}/{name}", kind.to_lowercase()));
            doc["metadata"]["name"] = json!(name);
        }
        if doc.pointer("/roleRef/kind") == Some(&json!("ClusterRole")) {
            let name = cluster.cluster_name(doc["roleRef"]["name"].as_str().unwrap());
            doc["roleRef"]["name"] = json!(name);
        }
        if kind == "Deployment" {
            let args = doc.pointer_mut("/spec/template/spec/containers/0/args");
            for arg in args.and_then(Value::as_array_mut).into_iter().flatten() {
                let text = arg.as_str().unwrap_or_default().to_owned();
                for flag in ["--namespace=", "--lease-namespace="] {
                    if let Some(own) = text.strip_prefix(flag).and_then(|n| local.get(n)) {
                        *arg = json!(format!("{flag}{own}"));
                    }
                }
            }
        }
    }
}

fn deployment_args(docs: &[Value]) -> Vec<String> {
    of_kind(docs, "Deployment")
        .flat_map(|d| strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]))
        .collect()
}

async fn setup(endpoint: &str, mut docs: Vec<Value>, edit: impl FnOnce(&mut Vec<Value>)) -> Setup {
    edit(&mut docs);
    let key = create_key(endpoint, common::REGION, false).await;
    let cluster = Cluster::start(true).await;
    cluster.install_crd().await;
    localize(&cluster, &mut docs).await;

    let account = of_kind(&docs, "ServiceAccount")
        .next()
        .expect("the render has a ServiceAccount");
    let sa_name = account["metadata"]["name"].as_str().unwrap().to_owned();
    let release_ns = account["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let mut namespaces: BTreeSet<String> = docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or("")))
        .filter_map(|d| d["metadata"]["namespace"].as_str().map(str::to_owned))
        .collect();
    namespaces.insert(release_ns.clone());
    if !cluster.is_real() {
        // (On the real server `localize` made the test's own.)
        for ns in &namespaces {
            cluster.namespace(ns).await;
        }
    }
    // The rendered objects as one multi-document stream, as `helm template | kubectl apply -f -`.
    let stream: Vec<String> = docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or("")))
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    cluster.apply_ok(&stream.join("---\n")).await;

    let (kubeconfig, user) = cluster
        .service_account_kubeconfig_in(&release_ns, &sa_name)
        .await;
    let sa_kubeconfig = kubeconfig.clone();
    let (kubeconfig, faults) = cluster.with_faults(&kubeconfig).await;

    // The rendered Deployment's container: its args (metrics on 127.0.0.1:0) and env.
    let deployment = of_kind(&docs, "Deployment").next().expect("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut args = strings(&container["args"]);
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    args.remove(0);
    for arg in &mut args {
        if arg.starts_with("--metrics-addr") {
            *arg = "--metrics-addr=127.0.0.1:0".into();
        }
    }
    let mut env = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else {
            match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => "kekeeper-e2e".to_owned(),
                Some("metadata.namespace") => release_ns.clone(),
                _ => continue,
            }
        };
        if name != "AWS_ENDPOINT_URL_KMS" {
            env.push((name, value));
        }
    }
    let proxy = FaultProxy::start(endpoint).await;
    let mut operator =
        cluster.start_operator("operator", &kubeconfig, &proxy.endpoint(), &args, &env);
    operator.wait_ready().await;
    Setup {
        cluster,
        faults,
        operator,
        proxy,
        user,
        kubeconfig: sa_kubeconfig,
        alias: key.alias.to_string(),
        docs,
    }
}

async fn status(cluster: &Cluster) -> Option<Value> {
    cluster
        .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), NAME)
        .await
        .map(|o| o["status"].clone())
}

/// No request of `user` in `log` was answered 403.
fn assert_no_refusals(log: &[kube_sim::RequestRecord], user: &str) {
    let refused: Vec<String> = log
        .iter()
        .filter(|r| r.user == user && r.code == 403)
        .map(|r| format!("{} {} {}", r.verb, r.path, r.code))
        .collect();
    assert!(refused.is_empty(), "403 answers to {user}: {refused:#?}");
}

async fn wait_secrets(cluster: &Cluster, total: usize) {
    eventually(&format!("{total} key pair Secrets"), WAIT, || async {
        (cluster.key_pair_secrets(NAME).await.len() == total).then_some(())
    })
    .await;
}

/// The chart's `helm test` Pod: `kekeeper test` as the chart's ServiceAccount, with only the
/// chart's RBAC, reads the RecordingKeyConfigs (list, with a field selector by name) and proves
/// the KMS key with the operator's identity; never a 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn chart_rbac_is_sufficient_for_the_helm_test_pod() {
    let endpoint = kms_endpoint();
    let docs = chart_render("default");
    let pod = of_kind(&docs, "Pod").next().expect("the helm test Pod");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let pod_args = strings(&pod["spec"]["containers"][0]["args"]);
    assert_eq!(
        pod_args,
        ["test", "--all-namespaces", "--max-organizations=1"]
    );
    let s = setup(&endpoint, docs, |_| {}).await;
    let cluster = &s.cluster;
    cluster
        .apply_ok(&rkc_manifest(NAME, &s.alias, &[ORG_A, ORG_B]))
        .await;
    let ns = cluster.ns();
    // The Pod's args; on the shared real server the test's namespace stands for "all" (other
    // tests' RecordingKeyConfigs come and go there), on kube-sim exactly the Pod's.
    let mut args = pod_args.clone();
    if cluster.is_real() {
        args = ["test", "--all", "-n", &ns, "--max-organizations=1"]
            .map(str::to_owned)
            .to_vec();
    }
    let by_name = ["test", NAME, "-n", &ns].map(str::to_owned).to_vec();
    for args in [args, by_name] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
            .args(&args)
            .env("KUBECONFIG", &s.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", "/nonexistent")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", common::REGION)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_ENDPOINT_URL_KMS", &endpoint)
            .kill_on_drop(true)
            .output()
            .await
            .expect("kekeeper test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "kekeeper {args:?}\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("RecordingKeyConfig {ns}/{NAME}:")),
            "{stdout}"
        );
        let expected = if args.contains(&"--max-organizations=1".to_owned()) {
            "PASSED: 1/1 organisations passed"
        } else {
            "PASSED: 2/2 organisations passed"
        };
        assert!(stdout.contains(expected), "{args:?}: {stdout}");
    }
    // A name that does not exist: exit 2, kubectl's wording.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
        .args(["test", "nope", "-n", &ns])
        .env("KUBECONFIG", &s.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .kill_on_drop(true)
        .output()
        .await
        .expect("kekeeper test");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("recordingkeyconfig \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_no_refusals(&cluster.request_log(), &s.user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn chart_rbac_is_sufficient_and_every_rule_is_used() {
    let endpoint = kms_endpoint();
    let docs = chart_render("default");
    let s = setup(&endpoint, docs, |_| {}).await;
    let cluster = &s.cluster;

    // Create, Ready; change key now; then KMS refuses key-pair generation.
    cluster
        .apply_ok(&rkc_manifest(NAME, &s.alias, &[ORG_A, ORG_B]))
        .await;
    cluster.wait_ready(NAME).await;
    wait_secrets(cluster, 2).await;
    // The crash-retry race (SPEC §3): the next Secret create is answered AlreadyExists once,
    // so the operator takes its adopt path (get the existing Secret) before it succeeds.
    s.faults.inject(kube_sim::ErrorFault {
        user: Some(s.user.clone()),
        verb: Some("create".into()),
        resource: Some("secrets".into()),
        code: 409,
        reason: Some("AlreadyExists".into()),
        times: Some(1),
        ..Default::default()
    });
    // The next status write is refused with 409, as when someone changes the resource between
    // the operator's read and its write: it reads the newer resource (status get), writes again.
    s.faults.inject(kube_sim::ErrorFault {
        user: Some(s.user.clone()),
        verb: Some("patch".into()),
        resource: Some("recordingkeyconfigs".into()),
        subresource: Some("status".into()),
        code: 409,
        reason: Some("Conflict".into()),
        times: Some(1),
        ..Default::default()
    });
    cluster
        .kubectl_ok(&[
            "annotate",
            &format!("rkc/{NAME}"),
            "kekeeper.io/rotate-now=token-1",
        ])
        .await;
    wait_secrets(cluster, 4).await;
    s.proxy.fail(
        "GenerateDataKeyPairWithoutPlaintext",
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::000000000000:role/kekeeper is not authorized to perform: kms:GenerateDataKeyPairWithoutPlaintext",
    );
    cluster
        .kubectl_ok(&[
            "annotate",
            "--overwrite",
            &format!("rkc/{NAME}"),
            "kekeeper.io/rotate-now=token-2",
        ])
        .await;
    let status = eventually("lastKmsError AccessDeniedException", WAIT, || async {
        let status = status(cluster).await?;
        (status["lastKmsError"]["code"] == "AccessDeniedException").then_some(status)
    })
    .await;
    assert_eq!(
        condition(&json!({ "status": status }), "KmsAvailable").as_deref(),
        Some("False"),
        "{status:#}"
    );
    eventually(
        "a Warning event about the RecordingKeyConfig",
        WAIT,
        || async {
            cluster
                .objects("", "events", Some(&cluster.ns()))
                .await
                .into_iter()
                .find(|e| {
                    e["type"] == "Warning"
                        && (e["involvedObject"]["name"] == NAME || e["regarding"]["name"] == NAME)
                })
        },
    )
    .await;
    // The failure repeats (retry with backoff): the recorder folds the repeated Warning into
    // an event series, which it patches.
    eventually("a patched (repeated) event", WAIT, || async {
        cluster
            .request_log()
            .into_iter()
            .find(|r| r.user == s.user && r.resource == "events" && r.verb == "patch")
    })
    .await;
    assert_eq!(
        cluster.key_pair_secrets(NAME).await.len(),
        4,
        "key material kept"
    );

    // The request log of the ServiceAccount: never refused, every granted rule used.
    let log: Vec<_> = cluster
        .request_log()
        .into_iter()
        .filter(|r| r.user == s.user)
        .collect();
    assert_no_refusals(&log, &s.user);
    let granted = grants(&s.docs);
    assert!(!granted.is_empty(), "no rules in the render");
    // A server-side apply that creates its object (201) is authorized as `patch` and `create`
    // (kube-apiserver's createAuthorizerAttributes; kube-sim does the same), so such a request
    // counts as a use of both.
    let verbs = |r: &kube_sim::RequestRecord| {
        let mut verbs = vec![r.verb.clone()];
        if r.verb == "patch" && r.code == 201 {
            verbs.push("create".to_owned());
        }
        verbs
    };
    let unused: Vec<String> = granted
        .iter()
        .filter(|g| {
            !log.iter().any(|r| {
                r.api_group == g.group
                    && r.resource == g.resource
                    && r.subresource == g.subresource
                    && verbs(r).contains(&g.verb)
                    && (g.names.is_empty() || g.names.contains(&r.name))
            })
        })
        .map(|g| g.to_string())
        .collect();
    let used: BTreeSet<String> = log
        .iter()
        .map(|r| {
            format!(
                "{} {}{} {}",
                if r.api_group.is_empty() {
                    "core"
                } else {
                    &r.api_group
                },
                r.resource,
                if r.subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{}", r.subresource)
                },
                r.verb
            )
        })
        .collect();
    assert!(
        unused.is_empty(),
        "the chart grants {} what the operator never used in this scenario:\n  {}\n\
         requests the operator made (group resource verb):\n  {}",
        s.user,
        unused.join("\n  "),
        used.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    drop(s.operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn chart_rbac_without_secrets_create_fails_visibly() {
    let endpoint = kms_endpoint();
    let docs = chart_render("default");
    // The same chart with `create` taken off the Secrets rule.
    let s = setup(&endpoint, docs, |docs| {
        let mut removed = false;
        for doc in docs.iter_mut() {
            if doc["kind"] != "ClusterRole" && doc["kind"] != "Role" {
                continue;
            }
            for rule in doc["rules"].as_array_mut().into_iter().flatten() {
                if strings(&rule["resources"]).contains(&"secrets".to_owned()) {
                    let verbs = rule["verbs"].as_array_mut().unwrap();
                    verbs.retain(|v| v != "create");
                    removed = true;
                }
            }
        }
        assert!(removed, "no Secrets rule to take `create` from");
    })
    .await;
    let cluster = &s.cluster;
    cluster
        .apply_ok(&rkc_manifest(NAME, &s.alias, &[ORG_A]))
        .await;

    let refused = eventually("a 403 on creating a Secret", WAIT, || async {
        cluster.request_log().into_iter().find(|r| {
            r.user == s.user && r.code == 403 && r.verb == "create" && r.resource == "secrets"
        })
    })
    .await;
    assert_eq!(refused.namespace, cluster.ns());
    let log = eventually("the refusal in the operator log", WAIT, || async {
        let text = s.operator.log_text();
        text.contains(r#"cannot create resource "secrets""#)
            .then_some(text)
    })
    .await;
    eprintln!(
        "operator log mentions the refusal:\n{}",
        log.lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(cluster.key_pair_secrets(NAME).await.is_empty());
    let status = status(cluster).await.unwrap_or_default();
    assert_ne!(
        condition(&json!({ "status": status }), "Ready").as_deref(),
        Some("True"),
        "Ready without a key pair Secret: {status:#}"
    );
    drop(s.operator);
}

/// With several replicas (as by default) the chart runs with leader election and grants the
/// Lease rules in the release namespace: the leader creates its Lease, reads it and renews it
/// (update), with no 403 and no Lease rule left unused. The default render's Lease rules are
/// also covered by `chart_rbac_is_sufficient_and_every_rule_is_used`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn chart_rbac_for_leader_election_is_sufficient_and_used() {
    let endpoint = kms_endpoint();
    let docs = chart_render("ha");
    let s = setup(&endpoint, docs, |_| {}).await;
    let lease_grants: Vec<Grant> = grants(&s.docs)
        .into_iter()
        .filter(|g| g.group == "coordination.k8s.io" && g.resource == "leases")
        .collect();
    assert!(
        !lease_grants.is_empty(),
        "the ha render grants no Lease rules"
    );
    // Renewals come every few seconds; wait for one.
    let log = eventually("the leader renews its Lease", WAIT, || {
        let log: Vec<_> = s
            .cluster
            .request_log()
            .into_iter()
            .filter(|r| r.user == s.user)
            .collect();
        let renewed = log
            .iter()
            .any(|r| r.resource == "leases" && r.verb == "update" && r.code == 200);
        std::future::ready(renewed.then_some(log))
    })
    .await;
    assert_no_refusals(&log, &s.user);
    let unused: Vec<String> = lease_grants
        .iter()
        .filter(|g| {
            !log.iter().any(|r| {
                r.resource == g.resource
                    && r.verb == g.verb
                    && (g.names.is_empty() || g.names.contains(&r.name))
            })
        })
        .map(Grant::to_string)
        .collect();
    assert!(
        unused.is_empty(),
        "Lease rules the leader never used: {unused:?}"
    );
    drop(s.operator);
}

/// A namespaced install (`watchNamespaces: [a, b]`): Roles in the two namespaces only, one
/// `--namespace` per namespace. The operator reconciles RecordingKeyConfigs in both, leaves one
/// in an unwatched namespace alone, and never needs a cluster-wide permission (no 403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn chart_rbac_namespaced_scope_reconciles_only_its_namespaces() {
    let endpoint = kms_endpoint();
    let docs = chart_render("namespaced");
    let deployment = of_kind(&docs, "Deployment").next().expect("Deployment");
    let watched: Vec<String> =
        strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
            .iter()
            .filter_map(|arg| arg.strip_prefix("--namespace=").map(str::to_owned))
            .collect();
    assert_eq!(
        watched.len(),
        2,
        "the namespaced render watches two namespaces"
    );
    // The user roles (`<fullname>-edit`/`-view`) are ClusterRoles too, but bound to nobody.
    assert!(
        of_kind(&docs, "ClusterRoleBinding").next().is_none()
            && bound_roles(&docs).all(|role| role["kind"] == "Role"),
        "a namespaced install grants the operator no ClusterRole"
    );
    let s = setup(&endpoint, docs, |_| {}).await;
    let cluster = &s.cluster;
    // The namespaces as set up (the test's own on the real server).
    let deployment = of_kind(&s.docs, "Deployment").next().expect("Deployment");
    let watched: Vec<String> =
        strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
            .iter()
            .filter_map(|arg| arg.strip_prefix("--namespace=").map(str::to_owned))
            .collect();
    let outside = cluster.namespace("kekeeper-unwatched").await;
    for namespace in watched.iter().chain([&outside]) {
        cluster
            .apply_ok(&rkc_manifest_in(namespace, NAME, &s.alias, &[ORG_A]))
            .await;
    }
    for namespace in &watched {
        eventually(&format!("{namespace}/{NAME} Ready"), WAIT, || async {
            let rkc = cluster
                .object("kekeeper.io", "recordingkeyconfigs", namespace, NAME)
                .await;
            rkc.filter(|rkc| condition(rkc, "Ready").as_deref() == Some("True"))
        })
        .await;
    }
    settle(cluster, &s.user, Duration::from_secs(2), WAIT).await;
    let unwatched = cluster
        .object("kekeeper.io", "recordingkeyconfigs", &outside, NAME)
        .await
        .expect("the unwatched RecordingKeyConfig exists");
    assert!(
        unwatched["status"].is_null(),
        "a RecordingKeyConfig outside the watched namespaces was reconciled: {}",
        unwatched["status"]
    );
    assert!(
        cluster
            .objects("", "secrets", Some(&outside))
            .await
            .is_empty(),
        "key pairs were made in an unwatched namespace"
    );
    assert_no_refusals(&cluster.request_log(), &s.user);
    drop(s.operator);
}
