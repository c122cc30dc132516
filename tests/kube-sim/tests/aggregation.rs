//! The clusterrole-aggregation controller: a ClusterRole with an `aggregationRule` has its
//! `rules` rewritten to the union of the rules of the ClusterRoles its selectors match, and
//! kept up to date as those roles are created, changed, relabelled and deleted; aggregated
//! roles chain (view into edit into admin, as a real cluster's bootstrap roles do); the
//! authorizer reads only the stored rules.

mod common;

use common::{admin, client_from_yaml, start, status};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn rule(resource: &str, verbs: &[&str]) -> Value {
    json!({"apiGroups": [""], "resources": [resource], "verbs": verbs})
}

async fn create(roles: &Api<ClusterRole>, role: Value) {
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
}

/// The user-facing roles as a real cluster's bootstrap policy has them: `view` is labelled
/// into `edit`, `edit` into `admin`.
async fn bootstrap_user_roles(roles: &Api<ClusterRole>) {
    for (name, into, selects) in [
        ("admin", None, "admin"),
        ("edit", Some("admin"), "edit"),
        ("view", Some("edit"), "view"),
    ] {
        let labels = into.map_or(json!({}), |i| json!({format!("{AGGREGATE_TO}{i}"): "true"}));
        create(
            roles,
            json!({"metadata": {"name": name, "labels": labels},
                   "aggregationRule": {"clusterRoleSelectors": [
                       {"matchLabels": {format!("{AGGREGATE_TO}{selects}"): "true"}}]}}),
        )
        .await;
    }
}

async fn rules_of(roles: &Api<ClusterRole>, name: &str) -> Vec<Value> {
    let role = serde_json::to_value(roles.get(name).await.unwrap()).unwrap();
    role["rules"].as_array().cloned().unwrap_or_default()
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
    let sim = start(true).await;
    let client = admin(&sim).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    bootstrap_user_roles(&roles).await;
    assert_eq!(rules_of(&roles, "admin").await, Vec::<Value>::new());

    let read_pods = rule("pods", &["get", "list", "watch"]);
    create(
        &roles,
        json!({"metadata": {"name": "system:aggregate-to-view",
                            "labels": {format!("{AGGREGATE_TO}view"): "true"}},
               "rules": [read_pods]}),
    )
    .await;
    // view selects it; edit selects view; admin selects edit.
    for name in ["view", "edit", "admin"] {
        assert_eq!(
            rules_of(&roles, name).await,
            vec![read_pods.clone()],
            "{name}"
        );
    }

    // A role labelled into edit and admin; a rule already there is not repeated.
    let write_pods = rule("pods", &["create", "delete"]);
    create(
        &roles,
        json!({"metadata": {"name": "pod-writer",
                            "labels": {format!("{AGGREGATE_TO}edit"): "true",
                                       format!("{AGGREGATE_TO}admin"): "true"}},
               "rules": [write_pods, read_pods]}),
    )
    .await;
    assert_eq!(rules_of(&roles, "view").await, vec![read_pods.clone()]);
    // edit: the selected roles in name order (pod-writer, then view), each rule once.
    assert_eq!(
        rules_of(&roles, "edit").await,
        vec![write_pods.clone(), read_pods.clone()]
    );
    // admin selects edit and pod-writer: edit's rules first (name order), nothing twice.
    assert_eq!(
        rules_of(&roles, "admin").await,
        vec![write_pods.clone(), read_pods.clone()]
    );

    // A change to a selected role reaches every role above it.
    let read_more = rule("pods", &["get", "list"]);
    roles
        .patch(
            "system:aggregate-to-view",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [read_more]})),
        )
        .await
        .unwrap();
    assert_eq!(rules_of(&roles, "view").await, vec![read_more.clone()]);
    assert_eq!(
        rules_of(&roles, "admin").await,
        vec![write_pods.clone(), read_pods.clone(), read_more.clone()]
    );

    // Relabelled out of edit: its rules leave edit (and admin keeps them through its own label).
    roles
        .patch(
            "pod-writer",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {format!("{AGGREGATE_TO}edit"): null}}})),
        )
        .await
        .unwrap();
    assert_eq!(rules_of(&roles, "edit").await, vec![read_more.clone()]);
    assert_eq!(
        rules_of(&roles, "admin").await,
        vec![read_more.clone(), write_pods.clone(), read_pods.clone()]
    );

    // Deleted: its rules are gone everywhere.
    roles
        .delete("pod-writer", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(rules_of(&roles, "admin").await, vec![read_more.clone()]);

    // Rules written by hand into an aggregated role are overwritten, as the controller does.
    roles
        .patch(
            "view",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [rule("secrets", &["get"])]})),
        )
        .await
        .unwrap();
    assert_eq!(rules_of(&roles, "view").await, vec![read_more.clone()]);
}

#[tokio::test]
async fn an_unrelated_change_does_not_rewrite_aggregated_roles() {
    let sim = start(true).await;
    let roles: Api<ClusterRole> = Api::all(admin(&sim).await);
    bootstrap_user_roles(&roles).await;
    create(
        &roles,
        json!({"metadata": {"name": "reader", "labels": {format!("{AGGREGATE_TO}view"): "true"}},
               "rules": [rule("configmaps", &["get"])]}),
    )
    .await;
    let before = resource_version(&roles, "admin").await;
    create(
        &roles,
        json!({"metadata": {"name": "unrelated"}, "rules": [rule("pods", &["get"])]}),
    )
    .await;
    assert_eq!(resource_version(&roles, "admin").await, before);
}

#[tokio::test]
async fn match_expressions_and_an_empty_selector() {
    let sim = start(true).await;
    let roles: Api<ClusterRole> = Api::all(admin(&sim).await);
    create(
        &roles,
        json!({"metadata": {"name": "by-tier"},
               "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [
                   {"key": "example.com/tier", "operator": "In", "values": ["gold", "silver"]}]}]}}),
    )
    .await;
    create(
        &roles,
        json!({"metadata": {"name": "gold", "labels": {"example.com/tier": "gold"}},
               "rules": [rule("configmaps", &["get"])]}),
    )
    .await;
    create(
        &roles,
        json!({"metadata": {"name": "bronze", "labels": {"example.com/tier": "bronze"}},
               "rules": [rule("secrets", &["get"])]}),
    )
    .await;
    assert_eq!(
        rules_of(&roles, "by-tier").await,
        vec![rule("configmaps", &["get"])]
    );
    // An empty selector selects every ClusterRole (metav1.LabelSelectorAsSelector).
    create(
        &roles,
        json!({"metadata": {"name": "everything"},
               "aggregationRule": {"clusterRoleSelectors": [{}]}}),
    )
    .await;
    let all = rules_of(&roles, "everything").await;
    assert!(all.contains(&rule("secrets", &["get"])), "{all:?}");
    assert!(all.contains(&rule("configmaps", &["get"])), "{all:?}");
}

#[tokio::test]
async fn a_namespace_editor_gets_what_is_aggregated_into_edit() {
    let sim = start(true).await;
    let client = admin(&sim).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    bootstrap_user_roles(&roles).await;
    let binding = json!({"metadata": {"name": "editor", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "editor", "namespace": "default"}]});
    Api::<RoleBinding>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
    let token = sim.service_account_token("default", "editor");
    let editor: Client = client_from_yaml(&sim.kubeconfig_for_token(&token)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(editor, "default");
    assert_eq!(
        status(configmaps.list(&ListParams::default()).await).code,
        403
    );

    // Reaches edit through view's label.
    create(
        &roles,
        json!({"metadata": {"name": "cm-reader", "labels": {format!("{AGGREGATE_TO}view"): "true"}},
               "rules": [rule("configmaps", &["list"])]}),
    )
    .await;
    configmaps.list(&ListParams::default()).await.unwrap();

    roles
        .delete("cm-reader", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        status(configmaps.list(&ListParams::default()).await).code,
        403
    );
}

#[tokio::test]
async fn rbac_names_are_path_segments_not_dns_names() {
    let sim = start(true).await;
    let roles: Api<ClusterRole> = Api::all(admin(&sim).await);
    // The bootstrap policy's names (ValidateRBACName: path.IsValidPathSegmentName).
    create(
        &roles,
        json!({"metadata": {"name": "system:aggregate-to-edit"}, "rules": []}),
    )
    .await;
    let e = status(
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "a%b"}, "rules": []})).unwrap(),
            )
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(e.message.contains("may not contain '%'"), "{}", e.message);
}
