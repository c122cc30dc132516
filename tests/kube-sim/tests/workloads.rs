//! The built-in kinds a `helm install` of the kekeeper chart creates besides RBAC and CRDs:
//! apps/v1 Deployments, v1 Services, policy/v1 PodDisruptionBudgets and networking.k8s.io/v1
//! NetworkPolicies, served as stored objects (no controllers) with discovery, CRUD, status
//! subresources, generation, server-side apply and list/watch.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::discovery::{Discovery, Scope};
use serde_json::json;

fn deployment(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "op", "labels": {"app": "op"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "op"}},
            "template": {
                "metadata": {"labels": {"app": "op"}},
                "spec": {"containers": [{"name": "op", "image": "example/op:1", "args": ["run"]}]}
            }
        },
        "status": {"replicas": 7}
    }))
    .unwrap()
}

#[tokio::test]
async fn discovery_lists_the_workload_kinds() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let discovery = Discovery::new(client).run().await.unwrap();
    let expected = [
        ("apps", "v1", "Deployment", "deployments"),
        ("", "v1", "Service", "services"),
        (
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        ),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
    ];
    for (group, version, kind, plural) in expected {
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{kind} is not discovered"));
        assert_eq!(resource.plural, plural);
        assert_eq!(caps.scope, Scope::Namespaced, "{kind}");
    }
}

#[tokio::test]
async fn deployments_keep_generation_and_status_apart() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let api: Api<Deployment> = Api::namespaced(client, &ns);

    let created = api
        .create(&PostParams::default(), &deployment(1))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // (The real server answers an empty `status: {}`; kube-sim none.)
    assert!(
        created.status.unwrap_or_default().replicas.is_none(),
        "status is not writable on create"
    );

    // A label change keeps the generation; a spec change bumps it.
    let patch = json!({"metadata": {"labels": {"extra": "1"}}});
    let labelled = api
        .patch("op", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let patch = json!({"spec": {"replicas": 2}});
    let scaled = api
        .patch("op", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_eq!(scaled.spec.unwrap().replicas, Some(2));

    // Status only through the subresource, which leaves spec and generation alone.
    let status = json!({"status": {"replicas": 2, "observedGeneration": 2}});
    let with_status = api
        .patch_status("op", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(with_status.status.unwrap().replicas, Some(2));
    assert_eq!(with_status.metadata.generation, Some(2));
    let mut replaced = api.get("op").await.unwrap();
    replaced.status.as_mut().unwrap().replicas = Some(9);
    let replaced = api
        .replace("op", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(replaced.status.unwrap().replicas, Some(2));
}

#[tokio::test]
async fn server_side_apply_of_the_chart_kinds_round_trips() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let pp = PatchParams::apply("helm").force();
    let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics"},
        "spec": {"selector": {"app": "op"}, "ports": [{"name": "metrics", "port": 8080, "targetPort": "metrics"}]}
    });
    let applied = svc
        .patch("metrics", &pp, &Patch::Apply(&service))
        .await
        .unwrap();
    assert_eq!(applied.spec.unwrap().ports.unwrap()[0].port, 8080);
    assert_eq!(
        applied.metadata.generation, None,
        "Services have no generation"
    );

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "op"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "op"}}}
    });
    let applied = pdbs.patch("op", &pp, &Patch::Apply(&pdb)).await.unwrap();
    assert_eq!(applied.metadata.generation, Some(1));
    assert_eq!(
        applied.metadata.managed_fields.unwrap()[0]
            .manager
            .as_deref(),
        Some("helm")
    );

    let netpols: Api<NetworkPolicy> = Api::namespaced(client, &ns);
    let netpol = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "op"},
        "spec": {"podSelector": {"matchLabels": {"app": "op"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}]}
    });
    let applied = netpols
        .patch("op", &pp, &Patch::Apply(&netpol))
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(1));
    assert_eq!(
        serde_json::to_value(applied.spec.unwrap()).unwrap()["policyTypes"],
        json!(["Ingress"])
    );
    // Unknown top-level fields are refused under strict validation, as for other built-ins.
    let bogus = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bogus"}, "spec": {"podSelector": {}}, "status": {}
    });
    let mut strict = PatchParams::apply("helm");
    strict.field_validation = Some(kube::api::ValidationDirective::Strict);
    // kube-sim: 400 `unknown field "status"`; the real server: 500 "failed to create typed
    // patch object (...): .status: field not declared in schema" (README, Differences).
    let e = status(netpols.patch("bogus", &strict, &Patch::Apply(&bogus)).await);
    assert!(e.code == 400 || e.code == 500, "{}", e.message);
    assert!(e.message.contains("status"), "{}", e.message);
}

#[tokio::test]
async fn deployments_list_watch_and_delete() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut events = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &deployment(1))
        .await
        .unwrap();
    api.delete("op", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
            .expect("watch stream open");
        match next {
            WatchEvent::Added(d) => seen.push(("ADDED", d.metadata.name.unwrap())),
            WatchEvent::Deleted(d) => seen.push(("DELETED", d.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [("ADDED", "op".to_string()), ("DELETED", "op".to_string())]
    );
    let all: Api<Deployment> = Api::all(client);
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|d| d.metadata.namespace.as_deref() != Some(ns.as_str()))
    );
}
