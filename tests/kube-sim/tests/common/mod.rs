#![allow(dead_code)]

use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kube_sim::{Options, Running, Server};
use serde_json::{Value, json};

pub const CRD: &str = include_str!("../fixtures/crd.yaml");

pub async fn start(rbac: bool) -> Running {
    Server::start(Options {
        rbac,
        bookmark_interval: Duration::from_millis(200),
        watch_cache_size: 50,
        ..Options::default()
    })
    .await
    .expect("start kube-sim")
}

pub async fn client_from_yaml(yaml: &str) -> Client {
    let kc = Kubeconfig::from_yaml(yaml).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

pub async fn admin(sim: &Running) -> Client {
    client_from_yaml(&sim.kubeconfig()).await
}

pub fn rkc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kekeeper.io", "v1alpha1", "RecordingKeyConfig"),
        "recordingkeyconfigs",
    )
}

pub fn rkc_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &rkc_resource())
}

pub async fn install_crd(client: &Client) {
    let crd: Value = serde_yaml::from_str(CRD).expect("crd yaml");
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let obj: DynamicObject = serde_json::from_value(crd).expect("crd object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create crd");
}

pub fn rkc(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kekeeper.io/v1alpha1",
        "kind": "RecordingKeyConfig",
        "metadata": {"name": name},
        "spec": {
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
            "keyPairSpec": "RSA_3072",
            "rotation": {"period": "Monthly"},
        }
    }))
    .expect("rkc")
}

/// The `Status` of a failed call.
pub fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
