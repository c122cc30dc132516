//! Leader election on a Lease against a mocked API server: create when absent, stand by while
//! another replica's lease is fresh, take over an expired one with the read resourceVersion,
//! and lose a race on 409.

use std::time::Duration;

use http::{Method, Request, Response};
use jiff::Timestamp;
use kekeeper::controller::leader::{LeaderElector, LeaseSettings};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kekeeper/leases";

fn elector() -> (LeaderElector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "kekeeper");
    let elector = LeaderElector::new(
        client,
        LeaseSettings {
            name: "kekeeper-leader".into(),
            namespace: "kekeeper".into(),
            identity: "pod-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
        },
    );
    (elector, handle)
}

/// Answers one request after checking its method and path; returns its body.
async fn answer(
    handle: &mut Handle,
    method: Method,
    path: &str,
    status: u16,
    reply: Value,
) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("request never made")
        .expect("client dropped");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().path(), path);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn conflict() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

fn lease(holder: &str, renewed: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kekeeper-leader", "namespace": "kekeeper", "resourceVersion": "42"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": 3}
    })
}

fn now() -> Timestamp {
    "2026-01-15T10:00:00Z".parse().unwrap()
}

#[tokio::test]
async fn creates_an_absent_lease_and_leads() {
    let (elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew(now()).await });
    let path = format!("{LEASE}/kekeeper-leader");
    answer(&mut handle, Method::GET, &path, 404, not_found()).await;
    let body = answer(
        &mut handle,
        Method::POST,
        LEASE,
        201,
        lease("pod-a", "2026-01-15T10:00:00Z"),
    )
    .await;
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert!(task.await.unwrap().unwrap());
}

#[tokio::test]
async fn stands_by_while_another_lease_is_fresh() {
    let (elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew(now()).await });
    let path = format!("{LEASE}/kekeeper-leader");
    answer(
        &mut handle,
        Method::GET,
        &path,
        200,
        lease("pod-b", "2026-01-15T09:59:55Z"),
    )
    .await;
    assert!(!task.await.unwrap().unwrap());
}

#[tokio::test]
async fn takes_over_an_expired_lease_with_the_read_resource_version() {
    let (elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew(now()).await });
    let path = format!("{LEASE}/kekeeper-leader");
    answer(
        &mut handle,
        Method::GET,
        &path,
        200,
        lease("pod-b", "2026-01-15T09:59:00Z"),
    )
    .await;
    let body = answer(
        &mut handle,
        Method::PUT,
        &path,
        200,
        lease("pod-a", "2026-01-15T10:00:00Z"),
    )
    .await;
    assert_eq!(body["metadata"]["resourceVersion"], "42");
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    assert!(task.await.unwrap().unwrap());
}

#[tokio::test]
async fn renews_its_own_lease() {
    let (elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew(now()).await });
    let path = format!("{LEASE}/kekeeper-leader");
    answer(
        &mut handle,
        Method::GET,
        &path,
        200,
        lease("pod-a", "2026-01-15T09:59:55Z"),
    )
    .await;
    let body = answer(
        &mut handle,
        Method::PUT,
        &path,
        200,
        lease("pod-a", "2026-01-15T10:00:00Z"),
    )
    .await;
    assert_eq!(
        body["spec"]["leaseTransitions"], 3,
        "no transition on renewal"
    );
    assert!(task.await.unwrap().unwrap());
}

#[tokio::test]
async fn loses_a_race_on_conflict() {
    let (elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew(now()).await });
    let path = format!("{LEASE}/kekeeper-leader");
    answer(
        &mut handle,
        Method::GET,
        &path,
        200,
        lease("pod-b", "2026-01-15T09:00:00Z"),
    )
    .await;
    answer(&mut handle, Method::PUT, &path, 409, conflict()).await;
    assert!(!task.await.unwrap().unwrap());
}
