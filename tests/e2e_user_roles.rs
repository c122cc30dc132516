//! The chart's user roles with RBAC enforced: the cluster's aggregating `admin`/`edit`/`view`
//! ClusterRoles (on the real server its bootstrap policy, aggregated by the real
//! controller-manager; on kube-sim a fixture of them), plus the rendered
//! `kekeeper-edit`/`kekeeper-view`. A user bound to `edit` in a namespace manages
//! RecordingKeyConfigs there (create, change, rotate-now, delete) and one bound to `view` reads
//! them and their status but changes nothing and reads no Secret; checked with the real
//! `kubectl auth can-i` and with real requests (`kubectl --as`). Reads the render
//! `scripts/chart-test.sh` writes.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Output, chart_render, eventually, rkc_manifest_in};
use serde_json::{Value, json};

const NS: &str = "contact-centre";
const EDITOR: &str = "alice";
const VIEWER: &str = "bob";
const NAME: &str = "recordings";
const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
/// The chart's user roles in the `default` render (release `kekeeper`).
const USER_ROLES: [&str; 2] = ["kekeeper-edit", "kekeeper-view"];
const WAIT: Duration = Duration::from_secs(30);

/// A cluster with the user roles in place and the namespace the users are bound in.
struct Roles {
    cluster: Cluster,
    /// `contact-centre` as the test's own namespace (`Cluster::namespace`).
    ns: String,
    /// The chart's `kekeeper-edit` and `kekeeper-view` as installed (unique names on the
    /// shared real server; their aggregation labels are the chart's).
    edit_role: String,
    view_role: String,
}

impl std::ops::Deref for Roles {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// RBAC enforced, the CRD, the cluster's user-facing roles (the real server's bootstrap
/// policy, aggregated by the real controller-manager; on kube-sim a fixture of them), the
/// chart's user roles, and `alice` bound to `edit`, `bob` to `view` in the namespace.
async fn cluster_with_user_roles(docs: &[Value]) -> Roles {
    let cluster = Cluster::start(true).await;
    cluster.install_crd().await;
    if !cluster.is_real() {
        let bootstrap =
            common::cluster::repo_root().join("tests/fixtures/rbac/bootstrap-user-roles.yaml");
        cluster
            .kubectl_ok(&["apply", "-f", bootstrap.to_str().unwrap()])
            .await;
    }
    let mut user_roles: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .filter(|d| USER_ROLES.contains(&d["metadata"]["name"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    assert_eq!(
        user_roles.len(),
        2,
        "the render has kekeeper-edit and kekeeper-view"
    );
    for role in &mut user_roles {
        let name = cluster.cluster_name(role["metadata"]["name"].as_str().unwrap());
        cluster.forget_later(&format!("clusterrole/{name}"));
        role["metadata"]["name"] = json!(name);
    }
    for role in &user_roles {
        cluster.apply_ok(&role.to_string()).await;
    }
    let ns = cluster.namespace(NS).await;
    for (user, role) in [(EDITOR, "edit"), (VIEWER, "view")] {
        cluster
            .kubectl_ok(&[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
                "-n",
                &ns,
            ])
            .await;
    }
    let roles = Roles {
        edit_role: cluster.cluster_name(USER_ROLES[0]),
        view_role: cluster.cluster_name(USER_ROLES[1]),
        cluster,
        ns,
    };
    // The controller-manager aggregates asynchronously: wait until `edit` and `view` carry
    // the chart's rules, as a user would before binding anyone.
    eventually(
        "edit and view aggregate the chart's roles",
        WAIT,
        || async {
            let edit = rules(&roles, "edit").await;
            let view = rules(&roles, "view").await;
            let aggregated = rules(&roles, &roles.edit_role)
                .await
                .iter()
                .all(|r| edit.contains(r))
                && rules(&roles, &roles.view_role)
                    .await
                    .iter()
                    .all(|r| view.contains(r));
            aggregated.then_some(())
        },
    )
    .await;
    roles
}

/// The rules of ClusterRole `name`.
async fn rules(cluster: &Cluster, name: &str) -> Vec<Value> {
    let role = cluster.get_json(&["get", "clusterrole", name]).await;
    role["rules"].as_array().cloned().unwrap_or_default()
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
async fn kubectl_as(cluster: &Roles, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = args.to_vec();
    all.extend(["-n", &cluster.ns, "--as", user]);
    cluster.kubectl_in(&all, stdin).await
}

async fn ok_as(cluster: &Roles, user: &str, args: &[&str], stdin: Option<&str>) -> String {
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
    cluster: &Roles,
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
    let docs = chart_render("default");
    let cluster = cluster_with_user_roles(&docs).await;
    let edit = rules(&cluster, "edit").await;
    let view = rules(&cluster, "view").await;
    let admin = rules(&cluster, "admin").await;
    let kekeeper_edit = rules(&cluster, &cluster.edit_role).await;
    let kekeeper_view = rules(&cluster, &cluster.view_role).await;
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
    let docs = chart_render("default");
    let cluster = cluster_with_user_roles(&docs).await;
    let c = &cluster;
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            can_i(c, EDITOR, &c.ns, verb, "recordingkeyconfigs").await,
            "editor {verb}"
        );
    }
    assert!(can_i(c, EDITOR, &c.ns, "get", "recordingkeyconfigs/status").await);
    // Status is the operator's: nobody else writes it.
    assert!(!can_i(c, EDITOR, &c.ns, "patch", "recordingkeyconfigs/status").await);
    assert!(!can_i(c, EDITOR, &c.ns, "update", "recordingkeyconfigs/status").await);
    // A RoleBinding grants its namespace only.
    assert!(!can_i(c, EDITOR, &c.ns(), "create", "recordingkeyconfigs").await);
    assert!(!can_i(c, EDITOR, &c.ns(), "get", "recordingkeyconfigs").await);

    for verb in ["get", "list", "watch"] {
        assert!(
            can_i(c, VIEWER, &c.ns, verb, "recordingkeyconfigs").await,
            "viewer {verb}"
        );
        assert!(
            can_i(c, VIEWER, &c.ns, verb, "recordingkeyconfigs/status").await,
            "viewer {verb} status"
        );
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !can_i(c, VIEWER, &c.ns, verb, "recordingkeyconfigs").await,
            "viewer {verb}"
        );
    }
    assert!(!can_i(c, VIEWER, &c.ns, "patch", "recordingkeyconfigs/status").await);
    for verb in ["get", "list", "watch"] {
        assert!(
            !can_i(c, VIEWER, &c.ns, verb, "secrets").await,
            "viewer {verb} secrets"
        );
    }
    // The cluster's own `edit` reads Secrets (Kubernetes' choice, not the chart's): the
    // chart's roles add nothing on Secrets, which tests/chart/test_user_roles.py checks.
    assert!(can_i(c, EDITOR, &c.ns, "get", "secrets").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_manages_and_a_viewer_reads() {
    let docs = chart_render("default");
    let cluster = cluster_with_user_roles(&docs).await;
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "recordings-key-pair",
            "-n",
            &cluster.ns,
            "--from-literal=privateKey.kms=opaque",
        ])
        .await;
    let manifest = rkc_manifest_in(&cluster.ns, NAME, ALIAS, &[ORG]);
    editor_creates_rotates_and_changes(&cluster, &manifest).await;
    write_status_as_the_operator(&cluster).await;
    viewer_reads(&cluster).await;
    viewer_changes_nothing_and_reads_no_secret(&cluster, &manifest).await;

    ok_as(&cluster, EDITOR, &["delete", "rkc", NAME], None).await;
    assert!(
        cluster
            .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns, NAME)
            .await
            .is_none(),
        "the editor deleted it"
    );
}

async fn editor_creates_rotates_and_changes(c: &Roles, manifest: &str) {
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
async fn write_status_as_the_operator(c: &Roles) {
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
        &c.ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ];
    c.kubectl_ok(&args).await;
}

async fn viewer_reads(c: &Roles) {
    let args = ["get", "rkc", NAME, "--subresource=status", "-o", "json"];
    let read: Value = serde_json::from_str(&ok_as(c, VIEWER, &args, None).await).unwrap();
    assert_eq!(read["status"]["conditions"][0]["reason"], "KeyPairsActive");
    let listed = ok_as(c, VIEWER, &["get", "rkc"], None).await;
    assert!(listed.contains(NAME), "{listed}");
}

async fn viewer_changes_nothing_and_reads_no_secret(c: &Roles, manifest: &str) {
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
