//! kube-runtime's Controller, finalizer helper and event Recorder against kube-sim: the same
//! machinery the operator runs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{Controller, watcher};
use serde_json::json;

/// The error type of a reconcile step that cannot fail.
#[derive(Debug)]
enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl std::error::Error for Never {}

#[tokio::test]
async fn finalizer_helper_adds_and_removes_its_finalizer() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    api.create(&PostParams::default(), &crd.rkc("fin"))
        .await
        .unwrap();
    let name = "kekeeper.io/cleanup";
    // (Not the suite's CRD group: a finalizer name is any qualified name.)
    let run = |obj: DynamicObject| {
        let api = api.clone();
        async move {
            finalizer(&api, name, Arc::new(obj), |ev| async move {
                Ok::<_, Never>(match ev {
                    Finalizer::Apply(_) | Finalizer::Cleanup(_) => Action::await_change(),
                })
            })
            .await
        }
    };
    run(api.get("fin").await.unwrap()).await.unwrap();
    assert_eq!(
        api.get("fin").await.unwrap().metadata.finalizers,
        Some(vec![name.to_string()])
    );
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    let pending = api.get("fin").await.unwrap();
    assert!(pending.metadata.deletion_timestamp.is_some());
    run(pending).await.unwrap();
    assert_eq!(status(api.get("fin").await).code, 404);
}

#[tokio::test]
async fn controller_reconciles_and_applies_status() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    api.create(&PostParams::default(), &crd.rkc("ctl"))
        .await
        .unwrap();

    let ctx = Arc::new(api.clone());
    let api_version = crd.api_version();
    let controller = Controller::new_with(api.clone(), watcher::Config::default(), crd.resource())
        .run(
            move |obj: Arc<DynamicObject>, api: Arc<Api<DynamicObject>>| {
                let api_version = api_version.clone();
                async move {
                let generation = obj.metadata.generation.unwrap_or_default();
                let status = json!({
                    "apiVersion": api_version, "kind": "RecordingKeyConfig",
                    "status": {"observedGeneration": generation, "conditions": [{"type": "Ready", "status": "True", "reason": "KeyPairsActive", "message": "ok"}]}
                });
                api.patch_status(&obj.metadata.name.clone().unwrap(), &PatchParams::apply("kekeeper").force(), &Patch::Apply(status))
                    .await?;
                Ok::<_, kube::Error>(Action::await_change())
                }
            },
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx,
        )
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    let observed = |want: i64| {
        let api = api.clone();
        async move {
            for _ in 0..100 {
                let o = api.get("ctl").await.unwrap();
                if o.data["status"]["observedGeneration"] == want {
                    return o;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("status never reached generation {want}");
        }
    };
    let first = observed(1).await;
    assert_eq!(first.data["status"]["conditions"][0]["type"], "Ready");
    if let Target::Sim(sim) = &h.target {
        sim.clear_request_log();
    }
    api.patch(
        "ctl",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    let settled = observed(2).await.metadata.resource_version;
    // A steady state: the status write of generation 2 does not retrigger further writes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.get("ctl").await.unwrap().metadata.resource_version,
        settled
    );
    // Sim-only: kube-sim's own request log counts the status writes.
    if let Target::Sim(sim) = &h.target {
        let writes: Vec<_> = sim
            .request_log()
            .into_iter()
            .filter(|r| r.is_write() && r.user == "kube-sim-admin" && r.subresource == "status")
            .collect();
        assert_eq!(writes.len(), 2, "{writes:?}");
    }
    handle.abort();
}

#[tokio::test]
async fn event_recorder_creates_then_patches_series() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    let obj = api
        .create(&PostParams::default(), &crd.rkc("ev"))
        .await
        .unwrap();
    let reporter = Reporter {
        controller: "kekeeper".into(),
        instance: Some("kekeeper-0".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(crd.api_version()),
        kind: Some("RecordingKeyConfig".into()),
        name: obj.metadata.name.clone(),
        namespace: Some(ns.clone()),
        uid: obj.metadata.uid.clone(),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "AccessDeniedException".into(),
        note: Some("GenerateDataKeyPair: denied".into()),
        action: "GenerateKeyPair".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let list = core
        .list(
            &kube::api::ListParams::default()
                .fields(&format!("involvedObject.uid={}", obj.metadata.uid.unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].reason.as_deref(),
        Some("AccessDeniedException")
    );
    // Sim-only: kube-sim's own request log shows a create, then a patch.
    if let Target::Sim(sim) = &h.target {
        let verbs: Vec<_> = sim
            .request_log()
            .into_iter()
            .filter(|r| r.resource == "events")
            .map(|r| (r.verb, r.code))
            .collect();
        assert_eq!(
            verbs[..2],
            [("create".to_string(), 201), ("patch".to_string(), 200)]
        );
    }
    let series = &list.items[0].series;
    assert_eq!(
        series.as_ref().map(|s| s.count),
        Some(Some(2)),
        "{:?}",
        list.items[0]
    );
}
