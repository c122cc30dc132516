//! The clusterrole-aggregation controller: a ClusterRole with an `aggregationRule` has its
//! `rules` rewritten to the union of the rules of the ClusterRoles its selectors match, and
//! kept up to date as those roles are created, changed, relabelled and deleted; aggregated
//! roles chain (view into edit into admin, as a real cluster's bootstrap roles do); the
//! authorizer reads only the stored rules.
//!
//! On the real server the roles carry names of the test's own and are labelled with a label
//! prefix of its own (the cluster's own admin, edit and view must not change), and the
//! controller-manager aggregates after the write: assertions poll.

mod common;

use common::{Harness, eventually, status};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The label prefix that aggregates into a role: the bootstrap policy's on kube-sim, one of
/// the test's own on the real server.
fn aggregate_to(h: &Harness) -> String {
    if h.is_real() {
        format!("k{}.example.com/aggregate-to-", &h.name("")[1..])
    } else {
        "rbac.authorization.k8s.io/aggregate-to-".to_owned()
    }
}

fn rule(resource: &str, verbs: &[&str]) -> Value {
    json!({"apiGroups": [""], "resources": [resource], "verbs": verbs})
}

/// Creates a ClusterRole (deleted when the test ends).
async fn create(h: &Harness, role: Value) {
    h.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
        .await;
}

/// The user-facing roles as a real cluster's bootstrap policy has them: `view` is labelled
/// into `edit`, `edit` into `admin`.
async fn bootstrap_user_roles(h: &Harness) {
    let to = aggregate_to(h);
    for (name, into, selects) in [
        ("admin", None, "admin"),
        ("edit", Some("admin"), "edit"),
        ("view", Some("edit"), "view"),
    ] {
        let labels = into.map_or(json!({}), |i| json!({format!("{to}{i}"): "true"}));
        create(
            h,
            json!({"metadata": {"name": h.name(name), "labels": labels},
                   "aggregationRule": {"clusterRoleSelectors": [
                       {"matchLabels": {format!("{to}{selects}"): "true"}}]}}),
        )
        .await;
    }
}

async fn rules_of(roles: &Api<ClusterRole>, name: &str) -> Vec<Value> {
    let role = serde_json::to_value(roles.get(name).await.unwrap()).unwrap();
    role["rules"].as_array().cloned().unwrap_or_default()
}

/// Waits for role `name` (the test's name for it) to have exactly these rules.
async fn assert_rules(h: &Harness, roles: &Api<ClusterRole>, name: &str, want: Vec<Value>) {
    let name = h.name(name);
    let what = format!("{name} aggregated");
    let found = eventually(&what, || async {
        let rules = rules_of(roles, &name).await;
        (rules == want).then_some(rules)
    });
    let deadline = tokio::time::timeout(std::time::Duration::from_secs(10), found).await;
    let rules = match deadline {
        Ok(rules) => rules,
        Err(_) => rules_of(roles, &name).await,
    };
    assert_eq!(rules, want, "{name}");
}

async fn resource_version(roles: &Api<ClusterRole>, name: &str) -> String {
    roles
        .get(name)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

#[tokio::test]
async fn aggregated_rules_follow_the_selected_roles_through_the_chain() {
    let h = Harness::start(true).await;
    let client = h.client.clone();
    let to = aggregate_to(&h);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    bootstrap_user_roles(&h).await;
    assert_rules(&h, &roles, "admin", Vec::<Value>::new()).await;

    let read_pods = rule("pods", &["get", "list", "watch"]);
    create(
        &h,
        json!({"metadata": {"name": h.name("system:aggregate-to-view"),
                            "labels": {format!("{to}view"): "true"}},
               "rules": [read_pods]}),
    )
    .await;
    // view selects it; edit selects view; admin selects edit.
    for name in ["view", "edit", "admin"] {
        assert_rules(&h, &roles, name, vec![read_pods.clone()]).await;
    }

    // A role labelled into edit and admin; a rule already there is not repeated.
    let write_pods = rule("pods", &["create", "delete"]);
    create(
        &h,
        json!({"metadata": {"name": h.name("pod-writer"),
                            "labels": {format!("{to}edit"): "true",
                                       format!("{to}admin"): "true"}},
               "rules": [write_pods, read_pods]}),
    )
    .await;
    assert_rules(&h, &roles, "view", vec![read_pods.clone()]).await;
    // edit: the selected roles in name order (pod-writer, then view), each rule once.
    assert_rules(
        &h,
        &roles,
        "edit",
        vec![write_pods.clone(), read_pods.clone()],
    )
    .await;
    // admin selects edit and pod-writer: edit's rules first (name order), nothing twice.
    assert_rules(
        &h,
        &roles,
        "admin",
        vec![write_pods.clone(), read_pods.clone()],
    )
    .await;

    // A change to a selected role reaches every role above it.
    let read_more = rule("pods", &["get", "list"]);
    roles
        .patch(
            &h.name("system:aggregate-to-view"),
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [read_more]})),
        )
        .await
        .unwrap();
    assert_rules(&h, &roles, "view", vec![read_more.clone()]).await;
    assert_rules(
        &h,
        &roles,
        "admin",
        vec![write_pods.clone(), read_pods.clone(), read_more.clone()],
    )
    .await;

    // Relabelled out of edit: its rules leave edit (and admin keeps them through its own label).
    roles
        .patch(
            &h.name("pod-writer"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {format!("{to}edit"): null}}})),
        )
        .await
        .unwrap();
    assert_rules(&h, &roles, "edit", vec![read_more.clone()]).await;
    assert_rules(
        &h,
        &roles,
        "admin",
        vec![read_more.clone(), write_pods.clone(), read_pods.clone()],
    )
    .await;

    // Deleted: its rules are gone everywhere.
    roles
        .delete(&h.name("pod-writer"), &DeleteParams::default())
        .await
        .unwrap();
    assert_rules(&h, &roles, "admin", vec![read_more.clone()]).await;

    // Rules written by hand into an aggregated role are overwritten, as the controller does.
    roles
        .patch(
            &h.name("view"),
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [rule("secrets", &["get"])]})),
        )
        .await
        .unwrap();
    assert_rules(&h, &roles, "view", vec![read_more.clone()]).await;
}

#[tokio::test]
async fn an_unrelated_change_does_not_rewrite_aggregated_roles() {
    let h = Harness::start(true).await;
    let to = aggregate_to(&h);
    let roles: Api<ClusterRole> = Api::all(h.client.clone());
    bootstrap_user_roles(&h).await;
    create(
        &h,
        json!({"metadata": {"name": h.name("reader"), "labels": {format!("{to}view"): "true"}},
               "rules": [rule("configmaps", &["get"])]}),
    )
    .await;
    assert_rules(&h, &roles, "admin", vec![rule("configmaps", &["get"])]).await;
    let before = resource_version(&roles, &h.name("admin")).await;
    create(
        &h,
        json!({"metadata": {"name": h.name("unrelated")}, "rules": [rule("pods", &["get"])]}),
    )
    .await;
    // (Time for the real controller-manager to react, were it to.)
    if h.is_real() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    assert_eq!(resource_version(&roles, &h.name("admin")).await, before);
}

#[tokio::test]
async fn match_expressions_and_an_empty_selector() {
    let h = Harness::start(true).await;
    let to = aggregate_to(&h);
    let roles: Api<ClusterRole> = Api::all(h.client.clone());
    let tier = format!("{to}tier");
    create(
        &h,
        json!({"metadata": {"name": h.name("by-tier")},
               "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [
                   {"key": tier, "operator": "In", "values": ["gold", "silver"]}]}]}}),
    )
    .await;
    create(
        &h,
        json!({"metadata": {"name": h.name("gold"), "labels": {&tier: "gold"}},
               "rules": [rule("configmaps", &["get"])]}),
    )
    .await;
    create(
        &h,
        json!({"metadata": {"name": h.name("bronze"), "labels": {&tier: "bronze"}},
               "rules": [rule("secrets", &["get"])]}),
    )
    .await;
    assert_rules(&h, &roles, "by-tier", vec![rule("configmaps", &["get"])]).await;
    // An empty selector selects every ClusterRole (metav1.LabelSelectorAsSelector).
    create(
        &h,
        json!({"metadata": {"name": h.name("everything")},
               "aggregationRule": {"clusterRoleSelectors": [{}]}}),
    )
    .await;
    let everything = h.name("everything");
    eventually("everything aggregated", || async {
        let all = rules_of(&roles, &everything).await;
        (all.contains(&rule("secrets", &["get"])) && all.contains(&rule("configmaps", &["get"])))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_namespace_editor_gets_what_is_aggregated_into_edit() {
    let h = Harness::start(true).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let to = aggregate_to(&h);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    bootstrap_user_roles(&h).await;
    let binding = json!({"metadata": {"name": "editor", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": h.name("edit")},
        "subjects": [{"kind": "ServiceAccount", "name": "editor", "namespace": ns}]});
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
    let editor = h.service_account(&ns, "editor").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(editor, &ns);
    let forbidden = || async {
        matches!(configmaps.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403)
            .then_some(())
    };
    assert_eq!(
        status(configmaps.list(&ListParams::default()).await).code,
        403
    );

    // Reaches edit through view's label.
    create(
        &h,
        json!({"metadata": {"name": h.name("cm-reader"), "labels": {format!("{to}view"): "true"}},
               "rules": [rule("configmaps", &["list"])]}),
    )
    .await;
    eventually("the editor may list configmaps", || async {
        configmaps.list(&ListParams::default()).await.ok()
    })
    .await;

    roles
        .delete(&h.name("cm-reader"), &DeleteParams::default())
        .await
        .unwrap();
    eventually("the editor may not list configmaps", forbidden).await;
}

#[tokio::test]
async fn rbac_names_are_path_segments_not_dns_names() {
    let h = Harness::start(true).await;
    let roles: Api<ClusterRole> = Api::all(h.client.clone());
    // The bootstrap policy's names (ValidateRBACName: path.IsValidPathSegmentName).
    create(
        &h,
        json!({"metadata": {"name": h.name("system:aggregate-to-edit")}, "rules": []}),
    )
    .await;
    let e = status(
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": h.name("a%b")}, "rules": []}))
                    .unwrap(),
            )
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(e.message.contains("may not contain '%'"), "{}", e.message);
}
