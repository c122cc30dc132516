//! Conformance tests of kube-sim through kube-rs (the client the operator uses).

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn crud_errors_have_real_status_shapes() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "stringData": {"a": "b"}}))
            .unwrap();
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(created.data.clone().unwrap()["a"].0, b"b");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let e = status(secrets.create(&PostParams::default(), &s).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, r#"secrets "x" already exists"#);

    let e = status(secrets.get("nope").await);
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", r#"secrets "nope" not found"#)
    );

    // Stale resourceVersion on update.
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.metadata.labels = Some([("a".to_string(), "1".to_string())].into());
    secrets
        .replace("x", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale.metadata.labels = Some([("a".to_string(), "2".to_string())].into());
    let e = status(secrets.replace("x", &PostParams::default(), &stale).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        r#"Operation cannot be fulfilled on secrets "x": the object has been modified; please apply your changes to the latest version and try again"#
    );

    // Creating an object that still carries a resourceVersion fails as in the storage layer:
    // a 500 without a reason.
    let e = status(secrets.create(&PostParams::default(), &created).await);
    assert_eq!((e.code, e.reason.as_str()), (500, ""));
    assert_eq!(
        e.message,
        "resourceVersion should not be set on objects to be created"
    );

    // Namespace must exist.
    let other: Api<Secret> = Api::namespaced(client.clone(), &h.name("missing"));
    let e = status(other.create(&PostParams::default(), &s).await);
    assert_eq!(
        e.message,
        format!(r#"namespaces "{}" not found"#, h.name("missing"))
    );

    // generateName.
    let g: Secret = serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let made = secrets.create(&PostParams::default(), &g).await.unwrap();
    assert!(made.metadata.name.unwrap().starts_with("gen-"));

    // Delete answers a Success Status; a second delete is NotFound.
    secrets.delete("x", &DeleteParams::default()).await.unwrap();
    let e = status(secrets.delete("x", &DeleteParams::default()).await);
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn resource_versions_are_global_and_monotonic() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let b = cms
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let rv = |c: &ConfigMap| {
        c.metadata
            .resource_version
            .clone()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&b) > rv(&a));
    // A no-op update does not write.
    let same = cms.replace("a", &PostParams::default(), &a).await.unwrap();
    assert_eq!(rv(&same), rv(&a));
    // A list answers the server's current resource version (the shared real server's moves on
    // with other tests' writes).
    let list = cms.list(&ListParams::default()).await.unwrap();
    let listed = list
        .metadata
        .resource_version
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(listed >= rv(&b));
    assert!(listed <= h.resource_version().await);
    if !h.is_real() {
        assert_eq!(listed, h.resource_version().await);
    }
}

#[tokio::test]
async fn generation_and_status_subresource() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    let created = api
        .create(&PostParams::default(), &crd.rkc("demo"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // Defaults applied.
    assert_eq!(
        created.data["spec"]["encryptionContextKey"],
        "genesys-cloud-organization-id"
    );

    // Status written through the main resource is ignored.
    let mut with_status = created.clone();
    with_status.data["status"] = json!({"observedGeneration": 7});
    let after = api
        .replace("demo", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(after.data.get("status").is_none());
    assert_eq!(after.metadata.generation, Some(1));

    // Status subresource: only status changes, generation unchanged.
    let st = api
        .patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}, "status": {"observedGeneration": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["observedGeneration"], 1);
    assert!(st.data["spec"].get("suspend").is_none());
    assert_eq!(st.metadata.generation, Some(1));

    // Spec change bumps generation; metadata change does not.
    let m = api
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(m.metadata.generation, Some(1));
    let s = api
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(2));
    assert_eq!(s.data["status"]["observedGeneration"], 1);

    // kube-rs status apply (what the operator does).
    let applied = api
        .patch_status(
            "demo",
            &PatchParams::apply("kekeeper").force(),
            &Patch::Apply(json!({
                "apiVersion": crd.api_version(), "kind": "RecordingKeyConfig",
                "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True", "reason": "KeyPairsActive", "message": "ok"}]}
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(applied.metadata.generation, Some(2));
    let managers: Vec<_> = applied
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap(), m.subresource))
        .collect();
    assert!(
        managers.contains(&("kekeeper".into(), "Apply".into(), Some("status".into()))),
        "{managers:?}"
    );
}

#[tokio::test]
async fn finalizers_delay_deletion() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut c = cm("f", json!({}));
    c.metadata.finalizers = Some(vec!["kekeeper.io/cleanup".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let r = cms.delete("f", &DeleteParams::default()).await.unwrap();
    let pending = r.left().expect("object still present");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(status(cms.get("f").await).code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_without_a_resource_version_all_apply() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &cm("busy", json!({})))
        .await
        .unwrap();
    // As the API server retries such a patch on the newer object, none of them gets a 409.
    let patches = (0..40).map(|i| {
        let cms = cms.clone();
        async move {
            cms.patch(
                "busy",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {format!("k{i}"): "v"}})),
            )
            .await
        }
    });
    for result in futures::future::join_all(patches).await {
        result.expect("a patch without a resourceVersion is never refused as a conflict");
    }
    let data = cms.get("busy").await.unwrap().data.unwrap();
    assert_eq!(data.len(), 41, "every patch applied");
    // A patch that names an old resourceVersion is still refused.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "data": {"late": "v"}});
    let err = cms
        .patch("busy", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut c = cm("p", json!({"a": "1"}));
    c.metadata.finalizers = Some(vec!["example.com/one".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let m = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": null, "n": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        m.data.unwrap().into_iter().collect::<Vec<_>>(),
        vec![("n".to_string(), "2".to_string())]
    );
    // Strategic merge: finalizers merge as a set.
    let s = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"finalizers": ["example.com/two"]}})),
        )
        .await
        .unwrap();
    // (kube-sim appends the patch's new items; the real server puts them first.)
    let mut finalizers = s.metadata.finalizers.unwrap();
    finalizers.sort();
    assert_eq!(finalizers, ["example.com/one", "example.com/two"]);
    // JSON patch through a raw request.
    let req = http::Request::patch(format!("/api/v1/namespaces/{ns}/configmaps/p"))
        .header("Content-Type", "application/json-patch+json")
        .body(serde_json::to_vec(&json!([{"op": "add", "path": "/data/j", "value": "3"}, {"op": "remove", "path": "/metadata/finalizers"}])).unwrap())
        .unwrap();
    let out: ConfigMap = client.request(req).await.unwrap();
    assert_eq!(out.data.unwrap()["j"], "3");
    assert!(out.metadata.finalizers.is_none());
    // Strategic merge is refused on custom resources, as the real server does.
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    api.create(&PostParams::default(), &crd.rkc("d"))
        .await
        .unwrap();
    let e = status(
        api.patch(
            "d",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"suspend": true}})),
        )
        .await,
    );
    assert_eq!(e.code, 415);
}

#[tokio::test]
async fn server_side_apply_conflicts_force_and_removal() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let a = PatchParams::apply("alice");
    let b = PatchParams::apply("bob");
    let doc = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    // Apply creates.
    let created = cms
        .patch("ssa", &a, &Patch::Apply(doc(json!({"x": "1", "y": "1"}))))
        .await
        .unwrap();
    assert_eq!(created.data.unwrap().len(), 2);
    // Same value from another manager: shared ownership, no conflict.
    cms.patch("ssa", &b, &Patch::Apply(doc(json!({"x": "1"}))))
        .await
        .unwrap();
    // Different value: conflict naming the owner and the field.
    let e = status(
        cms.patch("ssa", &b, &Patch::Apply(doc(json!({"y": "2"}))))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        r#"Apply failed with 1 conflict: conflict with "alice": .data.y"#
    );
    let cause = &e.details.as_ref().unwrap().causes[0];
    assert_eq!(
        (cause.reason.as_str(), cause.field.as_str()),
        ("FieldManagerConflict", ".data.y")
    );
    // Force takes ownership.
    let forced = cms
        .patch(
            "ssa",
            &b.clone().force(),
            &Patch::Apply(doc(json!({"x": "1", "y": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["y"], "2");
    // Alice stops applying x (still co-owned by bob: kept) and z never existed; Alice applies nothing now.
    let after = cms
        .patch("ssa", &a, &Patch::Apply(doc(json!({}))))
        .await
        .unwrap();
    assert_eq!(after.data.clone().unwrap()["x"], "1");
    // Bob drops y: removed since nobody else owns it.
    let dropped = cms
        .patch("ssa", &b, &Patch::Apply(doc(json!({"x": "1"}))))
        .await
        .unwrap();
    assert!(!dropped.data.unwrap().contains_key("y"));
    // Update managers conflict with appliers too.
    cms.patch(
        "ssa",
        &PatchParams {
            field_manager: Some("editor".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"data": {"x": "9"}})),
    )
    .await
    .unwrap();
    let e = status(
        cms.patch("ssa", &b, &Patch::Apply(doc(json!({"x": "1"}))))
            .await,
    );
    assert_eq!(
        e.message,
        r#"Apply failed with 1 conflict: conflict with "editor" using v1: .data.x"#
    );
}

#[tokio::test]
async fn ssa_list_map_merges_conditions_by_type() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    api.create(&PostParams::default(), &crd.rkc("c"))
        .await
        .unwrap();
    let cond = |t: &str| json!({"type": t, "status": "True"});
    let doc = |conds: serde_json::Value| json!({"apiVersion": crd.api_version(), "kind": "RecordingKeyConfig", "status": {"conditions": conds}});
    api.patch_status(
        "c",
        &PatchParams::apply("one"),
        &Patch::Apply(doc(json!([cond("Ready")]))),
    )
    .await
    .unwrap();
    let both = api
        .patch_status(
            "c",
            &PatchParams::apply("two"),
            &Patch::Apply(doc(json!([cond("KmsAvailable")]))),
        )
        .await
        .unwrap();
    assert_eq!(
        both.data["status"]["conditions"].as_array().unwrap().len(),
        2
    );
    let one_left = api
        .patch_status(
            "c",
            &PatchParams::apply("two"),
            &Patch::Apply(doc(json!([]))),
        )
        .await
        .unwrap();
    assert_eq!(
        one_left.data["status"]["conditions"],
        json!([cond("Ready")])
    );
}

#[tokio::test]
async fn dry_run_and_field_validation() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    let dry = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &crd.rkc("dry"),
        )
        .await
        .unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert_eq!(status(api.get("dry").await).code, 404);

    let mut extra = crd.rkc("strict");
    extra.data["spec"]["foo"] = json!("bar");
    let req = http::Request::post(format!(
        "/apis/{}/namespaces/{ns}/recordingkeyconfigs?fieldValidation=Strict",
        crd.api_version()
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&extra).unwrap())
    .unwrap();
    let e = client.request::<serde_json::Value>(req).await;
    let e = status(e);
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        e.message,
        r#"RecordingKeyConfig in version "v1alpha1" cannot be handled as a RecordingKeyConfig: strict decoding error: unknown field "spec.foo""#
    );
    // Default (Warn): pruned and stored.
    let stored = api.create(&PostParams::default(), &extra).await.unwrap();
    assert!(stored.data["spec"].get("foo").is_none());
}

#[tokio::test]
async fn crd_schema_and_cel_rejections() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    let mut bad = crd.rkc("bad");
    bad.data["spec"]["kmsKeyAliasArn"] = json!("arn:aws:kms:us-east-1:111122223333:key/1234");
    bad.data["spec"]["rotation"]["period"] = json!("Hourly");
    bad.data["spec"]["organizationIds"] = json!(["a", "a"]);
    let e = status(api.create(&PostParams::default(), &bad).await);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        format!(
            "{} \"bad\" is invalid: [spec.rotation.period: Unsupported value: \"Hourly\": supported values: \"Daily\", \"Weekly\", \"Monthly\", \"Yearly\", \"Never\", spec.organizationIds[1]: Duplicate value: \"a\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
            crd.qualified_kind()
        )
    );
    let causes = &e.details.as_ref().unwrap().causes;
    let fields: Vec<_> = causes
        .iter()
        .map(|c| (c.reason.as_str(), c.field.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("FieldValueNotSupported", "spec.rotation.period"),
            ("FieldValueDuplicate", "spec.organizationIds[1]"),
            ("FieldValueInvalid", "<nil>")
        ]
    );

    // Without blocking schema errors the CEL rules run.
    let mut key_arn = crd.rkc("key-arn");
    key_arn.data["spec"]["kmsKeyAliasArn"] = json!("arn:aws:kms:us-east-1:111122223333:key/1234");
    let e = status(api.create(&PostParams::default(), &key_arn).await);
    assert_eq!(
        e.message,
        format!(
            "{} \"key-arn\" is invalid: spec.kmsKeyAliasArn: Invalid value: \"arn:aws:kms:us-east-1:111122223333:key/1234\": must be a KMS alias ARN (arn:aws:kms:REGION:ACCOUNT:alias/NAME)",
            crd.qualified_kind()
        )
    );
    assert_eq!(
        e.details.as_ref().unwrap().causes[0].field,
        "spec.kmsKeyAliasArn"
    );

    let mut managed = crd.rkc("managed");
    managed.data["spec"]["kmsKeyAliasArn"] =
        json!("arn:aws:kms:us-east-1:111122223333:alias/aws/s3");
    let e = status(api.create(&PostParams::default(), &managed).await);
    assert!(e.message.ends_with("spec.kmsKeyAliasArn: Invalid value: \"arn:aws:kms:us-east-1:111122223333:alias/aws/s3\": AWS managed keys (alias/aws/*) cannot be used"), "{}", e.message);

    let mut region = crd.rkc("region");
    region.data["spec"]["homeRegion"] = json!("eu-west-1");
    let e = status(api.create(&PostParams::default(), &region).await);
    assert!(
        e.message.ends_with(
            "spec.homeRegion: Invalid value: homeRegion must equal the region of kmsKeyAliasArn"
        ),
        "{}",
        e.message
    );

    let mut empty = crd.rkc("empty");
    empty.data["spec"]["organizationIds"] = json!([]);
    empty.data["spec"]
        .as_object_mut()
        .unwrap()
        .remove("kmsKeyAliasArn");
    let e = status(api.create(&PostParams::default(), &empty).await);
    assert_eq!(
        e.message,
        format!(
            "{} \"empty\" is invalid: [spec.organizationIds: Invalid value: 0: spec.organizationIds in body should have at least 1 items, spec.kmsKeyAliasArn: Required value, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
            crd.qualified_kind()
        )
    );

    let mut history = crd.rkc("history");
    history.data["spec"]["historyLimit"] = json!(60);
    let e = status(api.create(&PostParams::default(), &history).await);
    assert!(
        e.message.ends_with(
            "spec.historyLimit: Invalid value: 60: historyLimit is above the supported 50"
        ),
        "{}",
        e.message
    );
    history.data["spec"]["historyLimit"] = json!(0);
    let e = status(api.create(&PostParams::default(), &history).await);
    assert!(e.message.ends_with("spec.historyLimit: Invalid value: 0: spec.historyLimit in body should be greater than or equal to 1"), "{}", e.message);

    let mut retention = crd.rkc("retention");
    retention.data["spec"]["recordingRetention"] = json!({"days": 1, "forever": true});
    let e = status(api.create(&PostParams::default(), &retention).await);
    assert!(
        e.message.ends_with(r#"<nil>: Invalid value: "": "spec.recordingRetention" must validate one and only one schema (oneOf). Found 2 valid alternatives"#),
        "{}",
        e.message
    );
    retention.data["spec"]["recordingRetention"] = json!({"days": 1});
    api.create(&PostParams::default(), &retention)
        .await
        .unwrap();

    // Transition rule: keyPairSpec is immutable (evaluated only on update).
    api.create(&PostParams::default(), &crd.rkc("immutable"))
        .await
        .unwrap();
    let e = status(
        api.patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"keyPairSpec": "RSA_4096"}})),
        )
        .await,
    );
    assert!(
        e.message
            .ends_with("spec.keyPairSpec: Invalid value: \"RSA_4096\": keyPairSpec is immutable"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn selectors_and_pagination() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for (n, env) in [
        ("a", "prod"),
        ("b", "dev"),
        ("c", "prod"),
        ("d", "test"),
        ("e", ""),
    ] {
        let labels = if env.is_empty() {
            json!({})
        } else {
            json!({"env": env})
        };
        cms.create(&PostParams::default(), &cm(n, labels))
            .await
            .unwrap();
    }
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("env=prod"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("env!=prod"))
                .await
                .unwrap()
        ),
        ["b", "d", "e"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("env in (dev,test)"))
                .await
                .unwrap()
        ),
        ["b", "d"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("env notin (dev,test)"))
                .await
                .unwrap()
        ),
        ["a", "c", "e"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("env"))
                .await
                .unwrap()
        ),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("!env"))
                .await
                .unwrap()
        ),
        ["e"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            cms.list(
                &ListParams::default().fields(&format!("metadata.namespace={ns},metadata.name!=c"))
            )
            .await
            .unwrap()
        ),
        ["a", "b", "d", "e"]
    );
    // Across namespaces (on the shared real server: many; ours among them).
    let all: Api<ConfigMap> = Api::all(client.clone());
    let everywhere = all.list(&ListParams::default()).await.unwrap();
    let ours = everywhere
        .items
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|c| c.metadata.name.as_deref() != Some(ROOT_CA))
        .count();
    assert_eq!(ours, 5);

    // Pages of two in name order (the real server's namespace also holds kube-root-ca.crt,
    // which sorts after "e").
    let total = cms.list(&ListParams::default()).await.unwrap().items.len();
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.metadata.remaining_item_count, Some(total as i64 - 2));
    let token = first.metadata.continue_.clone().unwrap();
    let second = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(first), ["a", "b"]);
    let token2 = second.metadata.continue_.clone().unwrap();
    assert_eq!(names(second), ["c", "d"]);
    let third = cms
        .list(&ListParams::default().limit(2).continue_token(&token2))
        .await
        .unwrap();
    assert!(
        third
            .metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(names(third), ["e"]);
}

#[tokio::test]
async fn watch_from_resource_version_bookmarks_and_gone() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let a = cms
        .create(&PostParams::default(), &cm("w1", json!({})))
        .await
        .unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    cms.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("w1", &DeleteParams::default()).await.unwrap();

    let wp = WatchParams::default().timeout(2);
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    let mut kinds = Vec::new();
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Bookmark(_) => kinds.push("BOOKMARK"),
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
        if kinds.len() >= 3 {
            break;
        }
    }
    assert_eq!(kinds[..2], ["MODIFIED", "DELETED"]);

    // Bookmarks arrive periodically when allowed. Sim-only: the interval is kube-sim's knob
    // (200 ms here); the real server's is about a minute.
    if !h.is_real() {
        bookmark_within_three_seconds(&cms).await;
    }

    // Push the watch window past `rv`: 410 Gone, as an ERROR event on watch and 410 on list.
    // Sim-only: kube-sim's window is its watch-cache-size knob (50 here); the real server
    // serves any version etcd has not compacted (every 5 minutes), which a test cannot force.
    if h.is_real() {
        return;
    }
    for i in 0..60 {
        cms.create(&PostParams::default(), &cm(&format!("fill{i}"), json!({})))
            .await
            .unwrap();
    }
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message
                    .starts_with(&format!("too old resource version: {rv} (")),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
    let lp = ListParams::default()
        .at(&rv)
        .matching(kube::api::VersionMatch::Exact);
    assert_eq!(status(cms.list(&lp).await).code, 410);
}

async fn bookmark_within_three_seconds(cms: &Api<ConfigMap>) {
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let got = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            if let WatchEvent::Bookmark(b) = ev {
                return b.metadata.resource_version;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert!(!got.is_empty());
}

#[tokio::test]
async fn watcher_with_streaming_lists_and_list_watch() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    api.create(&PostParams::default(), &crd.rkc("one"))
        .await
        .unwrap();
    for cfg in [
        kube::runtime::watcher::Config::default().streaming_lists(),
        kube::runtime::watcher::Config::default(),
    ] {
        let mut stream = kube::runtime::watcher(api.clone(), cfg).boxed();
        let mut seen_init_done = false;
        let mut names = Vec::new();
        let api2 = api.clone();
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
        {
            match ev.unwrap() {
                kube::runtime::watcher::Event::InitApply(o) => names.push(o.metadata.name.unwrap()),
                kube::runtime::watcher::Event::InitDone => {
                    seen_init_done = true;
                    let mut two = crd.rkc("two");
                    two.metadata.name = Some(format!(
                        "two-{}",
                        names.len() + h.resource_version().await as usize
                    ));
                    api2.create(&PostParams::default(), &two).await.unwrap();
                }
                kube::runtime::watcher::Event::Apply(o) => {
                    assert!(o.metadata.name.unwrap().starts_with("two-"));
                    break;
                }
                _ => {}
            }
        }
        assert!(seen_init_done);
        assert!(names.contains(&"one".to_string()));
    }
}

#[tokio::test]
async fn rbac_allows_and_forbids() {
    let h = Harness::start(true).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let sa = h.service_account(&ns, "kekeeper").await;
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &ns);
    let e = status(secrets.list(&ListParams::default()).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        format!(
            r#"secrets is forbidden: User "system:serviceaccount:{ns}:kekeeper" cannot list resource "secrets" in API group "" in the namespace "{ns}""#
        )
    );
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "kekeeper", "namespace": ns}]});
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    let rbs: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), &ns);
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(binding).unwrap(),
    )
    .await
    .unwrap();
    eventually("the secrets list allowed", || async {
        secrets.list(&ListParams::default()).await.ok()
    })
    .await;
    let e = status(
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap(),
            )
            .await,
    );
    assert_eq!(
        e.message,
        format!(
            r#"secrets is forbidden: User "system:serviceaccount:{ns}:kekeeper" cannot create resource "secrets" in API group "" in the namespace "{ns}""#
        )
    );
    let e = status(secrets.delete("named", &DeleteParams::default()).await);
    assert!(
        e.message.starts_with(r#"secrets "named" is forbidden"#),
        "{}",
        e.message
    );
    let nss: Api<Namespace> = Api::all(sa.clone());
    let e = status(nss.list(&ListParams::default()).await);
    assert!(
        e.message
            .ends_with(r#"cannot list resource "namespaces" in API group "" at the cluster scope"#),
        "{}",
        e.message
    );
    // resourceNames rules cover list/watch of that one object by field selector.
    let named_role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "lease", "namespace": ns},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kekeeper-leader"], "verbs": ["get", "list", "watch"]}]});
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(named_role).unwrap(),
        )
        .await
        .unwrap();
    let lease_binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "lease", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
        "subjects": [{"kind": "ServiceAccount", "name": "kekeeper", "namespace": ns}]});
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(lease_binding).unwrap(),
    )
    .await
    .unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(sa.clone(), &ns);
    // (The real authorizer sees a new binding through its informer, shortly after.)
    let lease = ListParams::default().fields("metadata.name=kekeeper-leader");
    eventually("the lease list allowed", || async {
        leases.list(&lease).await.ok()
    })
    .await;
    let e = status(leases.list(&ListParams::default()).await);
    assert_eq!(e.code, 403);
    let e = status(
        leases
            .list(&ListParams::default().fields("metadata.name=other"))
            .await,
    );
    assert!(
        e.message
            .starts_with(r#"leases.coordination.k8s.io "other" is forbidden"#),
        "{}",
        e.message
    );

    // Aggregated ClusterRoles: rules of labelled ClusterRoles count.
    // (Names and the label of the test's own: ClusterRoles are shared on the real server.)
    let label = format!("example.com/aggregate-to-{}", h.name("reader"));
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    h.create(&format!("{rbac}/clusterroles"), json!({"metadata": {"name": h.name("aggregate")},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {&label: "true"}}]}, "rules": []})).await;
    h.create(
        &format!("{rbac}/clusterroles"),
        json!({"metadata": {"name": h.name("rkc-reader"), "labels": {&label: "true"}},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}),
    )
    .await;
    h.create(&format!("{rbac}/clusterrolebindings"), json!({"metadata": {"name": h.name("aggregate")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": h.name("aggregate")},
        "subjects": [{"kind": "ServiceAccount", "name": "kekeeper", "namespace": ns}]})).await;
    // The real server aggregates in its controller-manager, after the write.
    let everywhere = Api::<ConfigMap>::all(sa.clone());
    eventually("aggregated configmaps list", || async {
        everywhere.list(&ListParams::default()).await.ok()
    })
    .await;

    // Unknown token: 401.
    let anon = h.token_client("bogus").await;
    let e = status(
        Api::<Secret>::namespaced(anon, &ns)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(e.code, 401);
}

// Sim-only: kube-sim's own request log and fault injection.
#[tokio::test]
async fn request_log_and_faults() {
    let h = Harness::start_sim(false).await;
    let sim = h.sim();
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    sim.clear_request_log();
    cms.create(&PostParams::default(), &cm("l", json!({})))
        .await
        .unwrap();
    cms.get("l").await.unwrap();
    let log = sim.request_log();
    let last: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r.verb.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
                r.code,
            )
        })
        .collect();
    assert_eq!(
        last,
        vec![
            ("create", "configmaps", "", 201),
            ("get", "configmaps", "l", 200)
        ]
    );
    assert_eq!(log[0].user, "kube-sim-admin");
    assert_eq!(log[0].namespace, "default");

    sim.faults().inject(kube_sim::ErrorFault {
        verb: Some("get".into()),
        resource: Some("configmaps".into()),
        code: 500,
        times: Some(2),
        ..Default::default()
    });
    assert_eq!(status(cms.get("l").await).code, 500);
    assert_eq!(status(cms.get("l").await).code, 500);
    cms.get("l").await.unwrap();

    // A fault scoped to another user leaves this client alone.
    sim.faults().inject(kube_sim::ErrorFault {
        user: Some("system:serviceaccount:kekeeper:kekeeper".into()),
        code: 500,
        ..Default::default()
    });
    cms.get("l").await.unwrap();
    sim.faults().clear();

    sim.faults().set_latency(Duration::from_millis(150));
    let t = std::time::Instant::now();
    cms.get("l").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    sim.faults().clear();

    // Dropping watches ends open streams.
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let _ = stream.try_next().await.unwrap();
    sim.faults().drop_watches();
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(end.is_ok());
}

// Sim-only: kube-sim's own /_sim endpoints.
#[tokio::test]
async fn sim_http_endpoints() {
    let h = Harness::start_sim(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let req = http::Request::post("/_sim/faults")
        .header("Content-Type", "application/json")
        .body(
            serde_json::to_vec(
                &json!({"error": {"verb": "list", "resource": "secrets", "code": 500, "times": 1}}),
            )
            .unwrap(),
        )
        .unwrap();
    let summary: serde_json::Value = client.request(req).await.unwrap();
    assert_eq!(summary["errors"][0]["code"], 500);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert_eq!(status(secrets.list(&ListParams::default()).await).code, 500);
    secrets.list(&ListParams::default()).await.unwrap();
    let log: Vec<kube_sim::RequestRecord> = client
        .request(http::Request::get("/_sim/requests").body(vec![]).unwrap())
        .await
        .unwrap();
    assert!(log.iter().any(|r| r.resource == "secrets" && r.code == 500));
    let _: serde_json::Value = client
        .request(
            http::Request::delete("/_sim/requests")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    let log: Vec<kube_sim::RequestRecord> = client
        .request(http::Request::get("/_sim/requests").body(vec![]).unwrap())
        .await
        .unwrap();
    assert!(log.is_empty());
}

#[tokio::test]
async fn events_share_storage_across_groups() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let new: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let ev = json!({"metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "kekeeper", "reportingInstance": "kekeeper-0",
        "action": "Rotate", "reason": "Rotated", "type": "Normal", "note": "rotated", "regarding": {"kind": "RecordingKeyConfig", "name": "demo", "namespace": ns}});
    new.create(&PostParams::default(), &serde_json::from_value(ev).unwrap())
        .await
        .unwrap();
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let list = core
        .list(&ListParams::default().fields("involvedObject.name=demo"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].message.as_deref(), Some("rotated"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "kekeeper"}, "spec": {"holderIdentity": "a"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn delete_collection_and_namespace_cleanup() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let tmp = h.name("tmp");
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": tmp}})).unwrap(),
    )
    .await
    .unwrap();
    h.forget_later(format!("/api/v1/namespaces/{tmp}"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &tmp);
    for (n, l) in [("a", "x"), ("b", "x"), ("c", "y")] {
        cms.create(&PostParams::default(), &cm(n, json!({"l": l})))
            .await
            .unwrap();
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("l=x"),
    )
    .await
    .unwrap();
    assert_eq!(
        names(cms.list(&ListParams::default()).await.unwrap()),
        ["c"]
    );
    // The namespace and what is in it go (on the real server through the namespace
    // controller, after the namespace's finalizer: Terminating in between).
    nss.delete(&tmp, &DeleteParams::default()).await.unwrap();
    eventually("the namespace gone", || async {
        matches!(nss.get(&tmp).await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
    assert!(
        Api::<ConfigMap>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|c| c.metadata.namespace.as_deref() != Some(tmp.as_str()))
    );
}

#[tokio::test]
async fn table_responses() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    crd.api(&client, &ns)
        .create(&PostParams::default(), &crd.rkc("t"))
        .await
        .unwrap();
    let req = http::Request::get(format!(
        "/apis/{}/namespaces/{ns}/recordingkeyconfigs?includeObject=Metadata",
        crd.api_version()
    ))
    .header(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(vec![])
    .unwrap();
    let table: serde_json::Value = client.request(req).await.unwrap();
    assert_eq!(table["kind"], "Table");
    let cols: Vec<_> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cols, ["Name", "Alias", "Period", "Ready", "Age"]);
    let row = &table["rows"][0];
    assert_eq!(row["cells"][0], "t");
    assert_eq!(row["cells"][2], "Monthly");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
}

#[tokio::test]
async fn metadata_and_data_key_validation() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let long = "x".repeat(64);
    let e = status(
        cms.create(
            &PostParams::default(),
            &cm("lv", json!({"kekeeper.io/organization-id": long})),
        )
        .await,
    );
    assert_eq!(
        e.message,
        format!(
            r#"ConfigMap "lv" is invalid: metadata.labels: Invalid value: "{long}": must be no more than 63 bytes"#
        )
    );
    let e = status(
        cms.create(&PostParams::default(), &cm("lk", json!({"bad key": "v"})))
            .await,
    );
    assert_eq!(
        e.message,
        r#"ConfigMap "lk" is invalid: metadata.labels: Invalid value: "bad key": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#
    );
    let bad: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "dk"}, "data": {"a/b": "v"}})).unwrap();
    let e = status(cms.create(&PostParams::default(), &bad).await);
    assert_eq!(
        e.message,
        r#"ConfigMap "dk" is invalid: data[a/b]: Invalid value: "a/b": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"#
    );
    let e = status(
        cms.create(&PostParams::default(), &cm("Upper", json!({})))
            .await,
    );
    assert!(e.message.starts_with(r#"ConfigMap "Upper" is invalid: metadata.name: Invalid value: "Upper": a lowercase RFC 1123 subdomain"#), "{}", e.message);
}

#[tokio::test]
async fn watch_selector_transitions_and_initial_events_bookmark() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &cm("sel", json!({"env": "dev"})))
        .await
        .unwrap();
    let rv = h.resource_version().await.to_string();
    let mut stream = cms
        .watch(&WatchParams::default().labels("env=prod").timeout(3), &rv)
        .await
        .unwrap()
        .boxed();
    cms.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"env": "prod"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"env": "dev"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match stream.try_next().await.unwrap().expect("event") {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            _ => {}
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);

    // Streaming list: ADDED for the current state, then a bookmark marking the end.
    let req = http::Request::get(format!(
        "/api/v1/namespaces/{ns}/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1&fieldSelector=metadata.name%3Dsel",
    ))
    .body(vec![])
    .unwrap();
    let lines: Vec<WatchEvent<serde_json::Value>> = client
        .request_events::<serde_json::Value>(req)
        .await
        .unwrap()
        .take(2)
        .try_collect()
        .await
        .unwrap();
    assert!(matches!(lines[0], WatchEvent::Added(_)), "{lines:?}");
    match &lines[1] {
        WatchEvent::Bookmark(b) => assert_eq!(
            b.metadata
                .annotations
                .get("k8s.io/initial-events-end")
                .map(String::as_str),
            Some("true")
        ),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_collection_follows_owner_references() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    let owner = api
        .create(&PostParams::default(), &crd.rkc("owner"))
        .await
        .unwrap();
    let owner_ref = json!([{"apiVersion": crd.api_version(), "kind": "RecordingKeyConfig", "name": "owner", "uid": owner.metadata.uid.clone().unwrap(), "controller": true}]);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let owned: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "owner-public-keys", "ownerReferences": owner_ref}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &owned).await.unwrap();
    let orphaned: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "orphan", "ownerReferences": owner_ref}}),
    )
    .unwrap();
    let key_pair: Secret = serde_json::from_value(
        json!({"metadata": {"name": "owner-key-pair"}, "type": "kekeeper.io/key-pair"}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &key_pair)
        .await
        .unwrap();

    // Invalid owner references are refused.
    let bad: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "bad", "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "y", "uid": ""}]}})).unwrap();
    let e = status(cms.create(&PostParams::default(), &bad).await);
    assert_eq!(
        e.message,
        r#"ConfigMap "bad" is invalid: metadata.ownerReferences[0].uid: Required value: must not be empty"#
    );

    // Orphan propagation keeps dependents and drops the reference.
    let second = api
        .create(&PostParams::default(), &crd.rkc("second"))
        .await
        .unwrap();
    let mut o = orphaned.clone();
    o.metadata.owner_references.as_mut().unwrap()[0].uid = second.metadata.uid.clone().unwrap();
    o.metadata.owner_references.as_mut().unwrap()[0].name = "second".into();
    cms.create(&PostParams::default(), &o).await.unwrap();
    api.delete("second", &DeleteParams::orphan()).await.unwrap();
    // (The real server's garbage collector works after the delete; kube-sim within it.)
    eventually("the orphan's owner reference dropped", || async {
        let orphan = cms.get("orphan").await.unwrap();
        orphan.metadata.owner_references.is_none().then_some(())
    })
    .await;

    // Background propagation: the owned ConfigMap goes, the unowned key pair Secret stays.
    let gone = api.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(
        gone.is_right(),
        "a deleted custom resource answers a Success Status"
    );
    eventually("the owned ConfigMap collected", || async {
        matches!(cms.get("owner-public-keys").await, Err(kube::Error::Api(e)) if e.code == 404)
            .then_some(())
    })
    .await;
    secrets.get("owner-key-pair").await.unwrap();
}

#[tokio::test]
async fn non_structural_crds_are_refused() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let fixture = Crd {
        group: if h.is_real() {
            format!("k{}.kekeeper.io", h.name("")[1..].to_owned())
        } else {
            "kekeeper.io".to_owned()
        },
    };
    let mut crd = fixture.definition();
    h.forget_later(format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
        fixture.name()
    ));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["loose"] =
        json!({"description": "no type"});
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            "customresourcedefinitions",
        ),
    );
    let e = status(
        api.create(
            &PostParams::default(),
            &serde_json::from_value(crd).unwrap(),
        )
        .await,
    );
    assert_eq!(
        e.message,
        format!(
            r#"CustomResourceDefinition.apiextensions.k8s.io "{}" is invalid: spec.validation.openAPIV3Schema.properties[spec].properties[loose].type: Required value: must not be empty for specified object fields"#,
            fixture.name()
        )
    );
}

#[tokio::test]
async fn validation_ratchets_unchanged_values_on_update() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let crd = h.install_crd().await;
    let api = crd.api(&client, &ns);
    let mut legacy = crd.rkc("legacy");
    legacy.data["spec"]["homeRegion"] = json!("us-east-1");
    api.create(&PostParams::default(), &legacy).await.unwrap();
    // Tighten the schema: homeRegion must now be an EU region.
    let crds: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            "customresourcedefinitions",
        ),
    );
    let patch = json!([{"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/homeRegion/pattern", "value": "^eu-"}]);
    let req = http::Request::patch(format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
        crd.name()
    ))
    .header("Content-Type", "application/json-patch+json")
    .body(serde_json::to_vec(&patch).unwrap())
    .unwrap();
    let _: serde_json::Value = client.request(req).await.unwrap();
    assert!(crds.get(&crd.name()).await.is_ok());
    // The real server serves the new schema shortly after the write.
    let mut fresh = crd.rkc("fresh");
    fresh.data["spec"]["homeRegion"] = json!("us-east-1");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the tightened schema served", || async {
        api.create(&dry_run, &fresh).await.is_err().then_some(())
    })
    .await;
    // Unchanged invalid value: the update of another field passes.
    api.patch(
        "legacy",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    // Changing it to another invalid value fails; new objects fail.
    let e = status(api.patch("legacy", &PatchParams::default(), &Patch::Merge(json!({"spec": {"homeRegion": "us-west-2", "kmsKeyAliasArn": "arn:aws:kms:us-west-2:111122223333:alias/recordings"}}))).await);
    assert!(e.message.contains(r#"spec.homeRegion: Invalid value: "us-west-2": spec.homeRegion in body should match '^eu-'"#), "{}", e.message);
    // A rule on spec with a fieldPath is enforced when spec changed, even if the target field did not.
    let e = status(
        api.patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"homeRegion": "eu-west-1"}})),
        )
        .await,
    );
    assert!(
        e.message.contains(
            "spec.homeRegion: Invalid value: homeRegion must equal the region of kmsKeyAliasArn"
        ),
        "{}",
        e.message
    );
    assert_eq!(
        status(api.create(&PostParams::default(), &fresh).await).code,
        422
    );
}

#[tokio::test]
async fn partial_object_metadata_get_list_and_watch() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "meta", "labels": {"kekeeper.io/state": "active"}}, "stringData": {"privateKey.kms": "blob"}})).unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let meta = secrets.get_metadata("meta").await.unwrap();
    assert_eq!(meta.metadata.labels.unwrap()["kekeeper.io/state"], "active");
    let list = secrets.list_metadata(&ListParams::default()).await.unwrap();
    let patched = secrets
        .patch_metadata(
            "meta",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kekeeper.io/state": "retired"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.labels.unwrap()["kekeeper.io/state"],
        "retired"
    );
    assert_eq!(list.items.len(), 1);
    // The raw answer carries no data.
    let req = http::Request::get(format!("/api/v1/namespaces/{ns}/secrets/meta"))
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        )
        .body(vec![])
        .unwrap();
    let raw: serde_json::Value = client.request(req).await.unwrap();
    assert_eq!(raw["kind"], "PartialObjectMetadata");
    assert!(raw.get("data").is_none());
    let mut stream = kube::runtime::watcher(
        Api::<kube::core::PartialObjectMeta<Secret>>::namespaced(client.clone(), &ns),
        kube::runtime::watcher::Config::default(),
    )
    .boxed();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            kube::runtime::watcher::Event::InitApply(m) => {
                assert_eq!(m.metadata.name.as_deref(), Some("meta"))
            }
            kube::runtime::watcher::Event::InitDone => break,
            _ => {}
        }
    }
}

/// As kube-apiserver's patch handler: a PATCH that would create the object (server-side apply of
/// a missing object) also needs `create`; the 403 names the `create` verb while the request is
/// still logged as a `patch`.
#[tokio::test]
async fn apply_that_creates_also_needs_create() {
    let h = Harness::start(true).await;
    let client = h.client.clone();
    let ns = h.namespace("default").await;
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), &ns);
    let role = |verbs: &[&str]| -> k8s_openapi::api::rbac::v1::Role {
        serde_json::from_value(json!({"metadata": {"name": "patcher", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}]}))
        .unwrap()
    };
    roles
        .create(&PostParams::default(), &role(&["patch"]))
        .await
        .unwrap();
    let rbs: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), &ns);
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "patcher", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patcher"},
            "subjects": [{"kind": "ServiceAccount", "name": "applier", "namespace": ns}]}))
        .unwrap(),
    )
    .await
    .unwrap();
    let sa = h.service_account(&ns, "applier").await;
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), &ns);
    let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let applied = |name: &str| {
        Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}}),
        )
    };
    let pp = PatchParams::apply("applier");

    // patch only: the apply that would create is refused, dry run included.
    if let Target::Sim(sim) = &h.target {
        sim.clear_request_log();
    }
    let e = status(cms.patch("x", &pp, &applied("x")).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        format!(
            r#"configmaps "x" is forbidden: User "system:serviceaccount:{ns}:applier" cannot create resource "configmaps" in API group "" in the namespace "{ns}""#
        )
    );
    let d = e.details.as_ref().expect("details");
    assert_eq!((d.name.as_str(), d.kind.as_str()), ("x", "configmaps"));
    assert_eq!(status(admin_cms.get("x").await).code, 404);
    // Sim-only: kube-sim's own request log (the real server's is its audit log).
    if let Target::Sim(sim) = &h.target {
        let log = sim.request_log();
        let rec = log
            .iter()
            .find(|r| r.resource == "configmaps" && r.name == "x")
            .expect("logged");
        assert_eq!(
            (rec.method.as_str(), rec.verb.as_str(), rec.code),
            ("PATCH", "patch", 403)
        );
    }
    let e = status(cms.patch("x", &pp.clone().dry_run(), &applied("x")).await);
    assert_eq!(e.code, 403);
    // Patches that cannot create stay plain `patch`: a merge patch of a missing object is 404.
    let e = status(
        cms.patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "c"}})),
        )
        .await,
    );
    assert_eq!(e.code, 404);

    // patch only, existing object: 200.
    admin_cms
        .create(&PostParams::default(), &cm("existing", json!({})))
        .await
        .unwrap();
    let out = cms
        .patch("existing", &pp, &applied("existing"))
        .await
        .unwrap();
    assert_eq!(out.data.unwrap()["a"], "b");

    // patch + create: 201.
    let mut r = roles.get("patcher").await.unwrap();
    r.rules = role(&["patch", "create"]).rules;
    roles
        .replace("patcher", &PostParams::default(), &r)
        .await
        .unwrap();
    // (The real authorizer reads the changed Role from its informer, shortly after.)
    eventually("apply creates with patch and create", || async {
        cms.patch("x", &pp, &applied("x")).await.ok()
    })
    .await;
    assert_eq!(admin_cms.get("x").await.unwrap().data.unwrap()["a"], "b");
}

/// `/openapi/v2`, negotiated as kube-openapi does: protobuf (gnostic `openapi.v2.Document`) for
/// either protobuf spelling, answered with the dotted media type client-go can parse; JSON for
/// JSON or wildcards; 406 otherwise.
#[tokio::test]
async fn openapi_v2_is_negotiated() {
    let h = Harness::start(false).await;
    let client = h.client.clone();
    let get = |accept: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get("/openapi/v2");
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = client
                .send(req.body(kube::client::Body::empty()).unwrap())
                .await
                .unwrap();
            let code = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("Content-Type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = resp.into_body().collect_bytes().await.unwrap().to_vec();
            (code, ct, body)
        }
    };
    const PB: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
    for accept in [
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        PB,
        "application/json;q=0.5, application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    ] {
        let (code, ct, body) = get(Some(accept)).await;
        assert_eq!((code, ct.as_str()), (200, PB), "{accept}");
        // swagger = "2.0" (field 1), then info (field 2) with title and version.
        assert_eq!(&body[..5], b"\x0a\x032.0", "{accept}");
        assert_eq!(body[5], 0x12);
        let info = &body[7..7 + body[6] as usize];
        assert!(info.starts_with(b"\x0a\x0aKubernetes\x12"), "{accept}");
        // kube-sim serves empty paths (8) and definitions (9).
        if !h.is_real() {
            assert_eq!(info, b"\x0a\x0aKubernetes\x12\x07v1.33.0");
            assert_eq!(&body[7 + body[6] as usize..], b"\x42\x00\x4a\x00");
        }
    }
    for accept in [
        None,
        Some("*/*"),
        Some("application/*"),
        Some("application/json"),
        Some("application/test, application/json"),
    ] {
        let (code, ct, body) = get(accept).await;
        assert_eq!((code, ct.as_str()), (200, "application/json"), "{accept:?}");
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        assert!(doc["paths"].is_object() && doc["definitions"].is_object());
    }
    for accept in ["text/plain", "application/yaml"] {
        let (code, _, _) = get(Some(accept)).await;
        assert_eq!(code, 406, "{accept}");
    }
}
