//! Leader election on a Lease against a mocked API server: create when absent, stand by while
//! another replica's Lease keeps changing, take over a silent one with the read
//! resourceVersion, lose a race on 409, release with the resourceVersion last written, and
//! stop leading at the renew deadline. Time is tokio's paused clock: no test sleeps.

use std::time::Duration;

use http::{Method, Request, Response};
use kekeeper::controller::leader::election::LeaseTiming;
use kekeeper::controller::leader::{LeaderElector, LeaseSettings, LostLeadership, Round};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kekeeper/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kekeeper/leases/kekeeper-leader";

fn elector() -> (LeaderElector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "kekeeper");
    let elector = LeaderElector::new(
        client,
        LeaseSettings {
            name: "kekeeper-leader".into(),
            namespace: "kekeeper".into(),
            identity: "pod-a".into(),
            timing: LeaseTiming::default(),
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
    let (request, send) = tokio::time::timeout(Duration::from_secs(60), handle.next_request())
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

fn failure(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

fn lease(holder: &str, renewed: &str, version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kekeeper-leader", "namespace": "kekeeper", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": 3}
    })
}

/// Leads after answering the GET with `pod-a`'s own Lease (resourceVersion `version`).
async fn leading(version: &str) -> (LeaderElector, Handle) {
    let (mut elector, mut handle) = elector();
    let task = tokio::spawn(async move {
        let round = elector.try_acquire_or_renew().await;
        (elector, round)
    });
    let own = lease("pod-a", "2026-01-15T09:59:58Z", "41");
    answer(&mut handle, Method::GET, LEASE, 200, own).await;
    let renewed = lease("pod-a", "2026-01-15T10:00:00Z", version);
    answer(&mut handle, Method::PUT, LEASE, 200, renewed).await;
    let (elector, round) = task.await.unwrap();
    assert_eq!(round.unwrap(), Round::Leading);
    (elector, handle)
}

#[tokio::test(start_paused = true)]
async fn creates_an_absent_lease_and_leads() {
    let (mut elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew().await });
    answer(
        &mut handle,
        Method::GET,
        LEASE,
        404,
        failure(404, "NotFound"),
    )
    .await;
    let reply = lease("pod-a", "2026-01-15T10:00:00Z", "1");
    let body = answer(&mut handle, Method::POST, LEASES, 201, reply).await;
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(task.await.unwrap().unwrap(), Round::Leading);
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_silent_lease_by_its_own_clock_then_takes_it_with_the_read_version() {
    let (mut elector, mut handle) = elector();
    let task = tokio::spawn(async move {
        let mut rounds = Vec::new();
        for _ in 0..3 {
            rounds.push(elector.try_acquire_or_renew().await.unwrap());
            tokio::time::sleep(Duration::from_millis(7_500)).await;
        }
        rounds
    });
    // An hour-old renewTime: stale by the wall clock, but this replica has only just seen it.
    let silent = lease("pod-b", "2026-01-15T09:00:00Z", "42");
    answer(&mut handle, Method::GET, LEASE, 200, silent.clone()).await;
    // 7.5 s after first sight: still valid.
    answer(&mut handle, Method::GET, LEASE, 200, silent.clone()).await;
    // 15 s after first sight, unchanged: taken over.
    answer(&mut handle, Method::GET, LEASE, 200, silent).await;
    let reply = lease("pod-a", "2026-01-15T10:00:00Z", "43");
    let body = answer(&mut handle, Method::PUT, LEASE, 200, reply).await;
    assert_eq!(body["metadata"]["resourceVersion"], "42");
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    let standby = Round::StandBy {
        holder: Some("pod-b".into()),
    };
    assert_eq!(
        task.await.unwrap(),
        [standby.clone(), standby, Round::Leading]
    );
}

#[tokio::test(start_paused = true)]
async fn renews_its_own_lease() {
    let (mut elector, mut handle) = elector();
    let task = tokio::spawn(async move { elector.try_acquire_or_renew().await });
    let own = lease("pod-a", "2026-01-15T09:59:58Z", "42");
    answer(&mut handle, Method::GET, LEASE, 200, own).await;
    let reply = lease("pod-a", "2026-01-15T10:00:00Z", "43");
    let body = answer(&mut handle, Method::PUT, LEASE, 200, reply).await;
    assert_eq!(body["spec"]["leaseTransitions"], 3, "no transition");
    assert_eq!(body["spec"]["acquireTime"], "2026-01-15T09:59:58.000000Z");
    assert_eq!(task.await.unwrap().unwrap(), Round::Leading);
}

#[tokio::test(start_paused = true)]
async fn loses_a_race_on_conflict() {
    let (mut elector, mut handle) = elector();
    let task = tokio::spawn(async move {
        let first = elector.try_acquire_or_renew().await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        (first, elector.try_acquire_or_renew().await.unwrap())
    });
    let silent = lease("pod-b", "2026-01-15T09:00:00Z", "42");
    answer(&mut handle, Method::GET, LEASE, 200, silent.clone()).await;
    answer(&mut handle, Method::GET, LEASE, 200, silent).await;
    answer(
        &mut handle,
        Method::PUT,
        LEASE,
        409,
        failure(409, "Conflict"),
    )
    .await;
    let (_, second) = task.await.unwrap();
    assert_eq!(second, Round::StandBy { holder: None });
}

#[tokio::test(start_paused = true)]
async fn releases_with_the_resource_version_it_last_wrote() {
    let (mut elector, mut handle) = leading("77").await;
    let task = tokio::spawn(async move { elector.release().await });
    let released = lease("", "2026-01-15T10:00:01Z", "78");
    let body = answer(&mut handle, Method::PUT, LEASE, 200, released).await;
    assert_eq!(body["metadata"]["resourceVersion"], "77");
    assert!(body["spec"].get("holderIdentity").is_none(), "{body}");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(body["spec"]["leaseTransitions"], 3);
    assert!(task.await.unwrap().unwrap());
}

#[tokio::test(start_paused = true)]
async fn does_not_release_a_lease_that_changed_hands() {
    let (mut elector, mut handle) = leading("77").await;
    let task = tokio::spawn(async move { elector.release().await });
    answer(
        &mut handle,
        Method::PUT,
        LEASE,
        409,
        failure(409, "Conflict"),
    )
    .await;
    assert!(!task.await.unwrap().unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_lead_has_nothing_to_release() {
    let (mut elector, _handle) = elector();
    assert!(!elector.release().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn stops_leading_at_the_renew_deadline_when_renewals_fail() {
    let (mut elector, mut handle) = leading("77").await;
    let since = tokio::time::Instant::now();
    let task = tokio::spawn(async move {
        let lost = elector.keep_leading().await;
        (lost, tokio::time::Instant::now())
    });
    // Renewals every 2 s: a read fails, a write fails, a read fails, a read hangs.
    answer(
        &mut handle,
        Method::GET,
        LEASE,
        500,
        failure(500, "InternalError"),
    )
    .await;
    let own = lease("pod-a", "2026-01-15T10:00:00Z", "77");
    answer(&mut handle, Method::GET, LEASE, 200, own).await;
    answer(
        &mut handle,
        Method::PUT,
        LEASE,
        503,
        failure(503, "ServiceUnavailable"),
    )
    .await;
    answer(
        &mut handle,
        Method::GET,
        LEASE,
        500,
        failure(500, "InternalError"),
    )
    .await;
    let (hung, _never_answered) = handle.next_request().await.expect("a fourth attempt");
    assert_eq!(hung.method(), Method::GET);
    let (lost, at) = task.await.unwrap();
    assert_eq!(lost, LostLeadership::RenewDeadline(Duration::from_secs(10)));
    assert!(
        at - since <= Duration::from_secs(10) && at - since >= Duration::from_secs(9),
        "stopped {:?} after the last renewal; the renew deadline is 10 s",
        at - since
    );
}

#[tokio::test(start_paused = true)]
async fn stops_leading_at_once_when_another_replica_holds_the_lease() {
    let (mut elector, mut handle) = leading("77").await;
    let task = tokio::spawn(async move { elector.keep_leading().await });
    let taken = lease("pod-b", "2026-01-15T10:00:01Z", "80");
    answer(&mut handle, Method::GET, LEASE, 200, taken).await;
    assert_eq!(task.await.unwrap(), LostLeadership::TakenBy("pod-b".into()));
}
