//! The chart's user roles on kube-sim with RBAC enforced: a cluster with the aggregating
//! `admin`/`edit`/`view` ClusterRoles of a real cluster's bootstrap policy, plus the rendered
//! `kekeeper-edit`/`kekeeper-view`. A user bound to `edit` in a namespace manages
//! RecordingKeyConfigs there (create, change, rotate-now, delete) and one bound to `view` reads
//! them and their status but changes nothing and reads no Secret; checked with the real
//! `kubectl auth can-i` and with real requests (`kubectl --as`). Reads the render
//! `scripts/chart-test.sh` writes.

mod common;

use common::cluster::{Cluster, Output, chart_render, rkc_manifest_in};
use serde_json::{Value, json};

const NS: &str = "contact-centre";
const EDITOR: &str = "alice";
const VIEWER: &str = "bob";
const NAME: &str = "recordings";
const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
/// The chart's user roles in the `default` render (release `kekeeper`).
const USER_ROLES: [&str; 2] = ["kekeeper-edit", "kekeeper-view"];

/// kube-sim with RBAC, the CRD, a real cluster's user-facing roles, the chart's user roles,
/// and `alice` bound to `edit`, `bob` to `view` in the namespace.
async fn cluster_with_user_roles(docs: &[Value]) -> Cluster {
    let cluster = Cluster::start(true).await;
    cluster.install_crd().await;
    let bootstrap =
        common::cluster::repo_root().join("tests/fixtures/rbac/bootstrap-user-roles.yaml");
    cluster
        .kubectl_ok(&["apply", "-f", bootstrap.to_str().unwrap()])
        .await;
    let user_roles: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .filter(|d| USER_ROLES.contains(&d["metadata"]["name"].as_str().unwrap_or_default()))
        .map(Value::to_string)
        .collect();
    assert_eq!(
        user_roles.len(),
        2,
        "the render has kekeeper-edit and kekeeper-view"
    );
    cluster.apply_ok(&user_roles.join("\n---\n")).await;
    cluster.kubectl_ok(&["create", "namespace", NS]).await;
    for (user, role) in [(EDITOR, "edit"), (VIEWER, "view")] {
        cluster
            .kubectl_ok(&[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
                "-n",
                NS,
            ])
            .await;
    }
    cluster
}

/// `kubectl auth can-i VERB RESOURCE [--subresource S] -n NS --as USER`: yes or no.
async fn can_i(cluster: &Cluster, user: &str, ns: &str, verb: &str, resource: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, "--as", user];
    if let Some(s) = subresource {
        args.extend(["--subresource", s]);
    }
    let out = cluster.kubectl(&args).await;
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: {other:?} {}", out.stderr),
    }
}

/// kubectl as `user` in the namespace.
async fn kubectl_as(cluster: &Cluster, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = args.to_vec();
    all.extend(["-n", NS, "--as", user]);
    cluster.kubectl_in(&all, stdin).await
}

async fn ok_as(cluster: &Cluster, user: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_as(cluster, user, args, stdin).await;
    assert!(
        out.success,
        "{user}: kubectl {args:?}:\n{}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// The request is refused with the API server's 403 wording for `verb` on `resource`.
async fn forbidden_as(
    cluster: &Cluster,
    user: &str,
    (args, stdin): (&[&str], Option<&str>),
    verb: &str,
    resource: &str,
) {
    let out = kubectl_as(cluster, user, args, stdin).await;
    assert!(
        !out.success,
        "{user}: kubectl {args:?} was allowed:\n{}",
        out.stdout
    );
    let wording = format!("User \"{user}\" cannot {verb} resource \"{resource}\"");
    assert!(
        out.stderr.contains("Forbidden") || out.stderr.contains("forbidden"),
        "{user}: kubectl {args:?}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&wording),
        "{user}: kubectl {args:?}: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_roles_aggregate_the_chart_roles() {
    let Some(docs) = chart_render("default") else {
        return;
    };
    let cluster = cluster_with_user_roles(&docs).await;
    let rules = |role: Value| role["rules"].as_array().cloned().unwrap_or_default();
    let edit = rules(cluster.get_json(&["get", "clusterrole", "edit"]).await);
    let view = rules(cluster.get_json(&["get", "clusterrole", "view"]).await);
    let admin = rules(cluster.get_json(&["get", "clusterrole", "admin"]).await);
    let kekeeper_edit = rules(
        cluster
            .get_json(&["get", "clusterrole", "kekeeper-edit"])
            .await,
    );
    let kekeeper_view = rules(
        cluster
            .get_json(&["get", "clusterrole", "kekeeper-view"])
            .await,
    );
    for rule in &kekeeper_view {
        assert!(view.contains(rule), "view lacks {rule}");
        assert!(
            edit.contains(rule),
            "edit lacks {rule} (view is aggregated into edit)"
        );
        assert!(admin.contains(rule), "admin lacks {rule}");
    }
    for rule in &kekeeper_edit {
        assert!(edit.contains(rule), "edit lacks {rule}");
        assert!(admin.contains(rule), "admin lacks {rule}");
        assert!(!view.contains(rule), "view has {rule}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_for_an_editor_and_a_viewer() {
    let Some(docs) = chart_render("default") else {
        return;
    };
    let cluster = cluster_with_user_roles(&docs).await;
    let c = &cluster;
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            can_i(c, EDITOR, NS, verb, "recordingkeyconfigs").await,
            "editor {verb}"
        );
    }
    assert!(can_i(c, EDITOR, NS, "get", "recordingkeyconfigs/status").await);
    // Status is the operator's: nobody else writes it.
    assert!(!can_i(c, EDITOR, NS, "patch", "recordingkeyconfigs/status").await);
    assert!(!can_i(c, EDITOR, NS, "update", "recordingkeyconfigs/status").await);
    // A RoleBinding grants its namespace only.
    assert!(!can_i(c, EDITOR, "default", "create", "recordingkeyconfigs").await);
    assert!(!can_i(c, EDITOR, "default", "get", "recordingkeyconfigs").await);

    for verb in ["get", "list", "watch"] {
        assert!(
            can_i(c, VIEWER, NS, verb, "recordingkeyconfigs").await,
            "viewer {verb}"
        );
        assert!(
            can_i(c, VIEWER, NS, verb, "recordingkeyconfigs/status").await,
            "viewer {verb} status"
        );
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !can_i(c, VIEWER, NS, verb, "recordingkeyconfigs").await,
            "viewer {verb}"
        );
    }
    assert!(!can_i(c, VIEWER, NS, "patch", "recordingkeyconfigs/status").await);
    for verb in ["get", "list", "watch"] {
        assert!(
            !can_i(c, VIEWER, NS, verb, "secrets").await,
            "viewer {verb} secrets"
        );
    }
    // The cluster's own `edit` reads Secrets (Kubernetes' choice, not the chart's): the
    // chart's roles add nothing on Secrets, which tests/chart/test_user_roles.py checks.
    assert!(can_i(c, EDITOR, NS, "get", "secrets").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_manages_and_a_viewer_reads() {
    let Some(docs) = chart_render("default") else {
        return;
    };
    let cluster = cluster_with_user_roles(&docs).await;
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "recordings-key-pair",
            "-n",
            NS,
            "--from-literal=privateKey.kms=opaque",
        ])
        .await;
    let manifest = rkc_manifest_in(NS, NAME, ALIAS, &[ORG]);
    editor_creates_rotates_and_changes(&cluster, &manifest).await;
    write_status_as_the_operator(&cluster).await;
    viewer_reads(&cluster).await;
    viewer_changes_nothing_and_reads_no_secret(&cluster, &manifest).await;

    ok_as(&cluster, EDITOR, &["delete", "rkc", NAME], None).await;
    assert!(
        cluster
            .object("kekeeper.io", "recordingkeyconfigs", NS, NAME)
            .await
            .is_none(),
        "the editor deleted it"
    );
}

async fn editor_creates_rotates_and_changes(c: &Cluster, manifest: &str) {
    let rkc = format!("rkc/{NAME}");
    ok_as(c, EDITOR, &["apply", "-f", "-"], Some(manifest)).await;
    let rotate = ["annotate", &rkc, "kekeeper.io/rotate-now=2026-11-30"];
    ok_as(c, EDITOR, &rotate, None).await;
    let weekly = r#"{"spec":{"rotation":{"period":"Weekly"}}}"#;
    ok_as(
        c,
        EDITOR,
        &["patch", &rkc, "--type=merge", "-p", weekly],
        None,
    )
    .await;
    let got = ok_as(c, EDITOR, &["get", "rkc", NAME, "-o", "json"], None).await;
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        got["metadata"]["annotations"]["kekeeper.io/rotate-now"],
        "2026-11-30"
    );
    assert_eq!(got["spec"]["rotation"]["period"], "Weekly");
    // Status is the operator's.
    let status = r#"{"status":{"observedGeneration":99}}"#;
    let args = [
        "patch",
        &rkc,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ];
    forbidden_as(
        c,
        EDITOR,
        (&args, None),
        "patch",
        "recordingkeyconfigs/status",
    )
    .await;
}

/// The status the operator would write (here as admin), for the viewer to read.
async fn write_status_as_the_operator(c: &Cluster) {
    let status = json!({"status": {"observedGeneration": 2, "conditions": [{
        "type": "Ready", "status": "True", "reason": "KeyPairsActive",
        "message": "1/1 organisations have an active key pair", "observedGeneration": 2,
        "lastTransitionTime": "2026-11-30T06:00:00Z"}]}});
    let rkc = format!("rkc/{NAME}");
    let patch = status.to_string();
    let args = [
        "patch",
        &rkc,
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ];
    c.kubectl_ok(&args).await;
}

async fn viewer_reads(c: &Cluster) {
    let args = ["get", "rkc", NAME, "--subresource=status", "-o", "json"];
    let read: Value = serde_json::from_str(&ok_as(c, VIEWER, &args, None).await).unwrap();
    assert_eq!(read["status"]["conditions"][0]["reason"], "KeyPairsActive");
    let listed = ok_as(c, VIEWER, &["get", "rkc"], None).await;
    assert!(listed.contains(NAME), "{listed}");
}

async fn viewer_changes_nothing_and_reads_no_secret(c: &Cluster, manifest: &str) {
    let rkc = format!("rkc/{NAME}");
    let rotate = [
        "annotate",
        &rkc,
        "--overwrite",
        "kekeeper.io/rotate-now=again",
    ];
    forbidden_as(c, VIEWER, (&rotate, None), "patch", "recordingkeyconfigs").await;
    let delete = ["delete", "rkc", NAME];
    forbidden_as(c, VIEWER, (&delete, None), "delete", "recordingkeyconfigs").await;
    let apply = ["apply", "-f", "-"];
    forbidden_as(
        c,
        VIEWER,
        (&apply, Some(manifest)),
        "patch",
        "recordingkeyconfigs",
    )
    .await;
    let get = ["get", "secret", "recordings-key-pair"];
    forbidden_as(c, VIEWER, (&get, None), "get", "secrets").await;
    forbidden_as(c, VIEWER, (&["get", "secrets"], None), "list", "secrets").await;
}
