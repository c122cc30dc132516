//! Reconcile scenarios against a mocked API server (the controller-rs `ApiServerVerifier`
//! idea): each scenario lists every request the reconcile must make, in order; the verifier
//! asserts method, path and body of each, answers it, and fails on a missing call by timeout.
//! KMS is the engine's `FakeKms`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kekeeper::controller::cache::{self, KeyPairCache, PublicKeysCache};
use kekeeper::controller::ratelimit::KmsPace;
use kekeeper::controller::report::Events;
use kekeeper::controller::{self, Context, Settings};
use kekeeper::crd::{
    KmsKeyChangePolicy, LastKmsError, RecordingKeyConfig, RecordingKeyConfigSpec,
    RecordingKeyConfigStatus, RewrapPolicy, RotationPeriod, RotationPolicy,
};
use kekeeper::keypair::{KeyPairRecord, KeyPairSecret};
use kekeeper::keystore::KeyStore;
use kekeeper::keystore::memory::MemoryObjects;
use kekeeper::kms::Kms as _;
use kekeeper::kms::fake::FakeKms;
use kekeeper::kms::{KeyPairSpec, KmsErrorKind, KmsOperation};
use kekeeper::metrics::Metrics;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};

const NS: &str = "telephony";
const NAME: &str = "recordings";
const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const NOW: &str = "2026-01-15T10:00:00Z";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn spec(orgs: &[&str]) -> RecordingKeyConfigSpec {
    RecordingKeyConfigSpec {
        kms_key_alias_arn: ALIAS.into(),
        organization_ids: orgs.iter().map(|s| s.to_string()).collect(),
        rotation: RotationPolicy {
            period: RotationPeriod::Monthly,
            on_kms_key_change: KmsKeyChangePolicy::Rotate,
        },
        key_pair_spec: KeyPairSpec::Rsa2048,
        home_region: None,
        kms_replica_regions: Vec::new(),
        encryption_context_key: "genesys-cloud-organization-id".into(),
        recording_retention: None,
        history_limit: 10,
        suspend: false,
        rewrap: Default::default(),
    }
}

fn resource(spec: RecordingKeyConfigSpec, generation: i64) -> RecordingKeyConfig {
    let mut rkc = RecordingKeyConfig::new(NAME, spec);
    rkc.meta_mut().namespace = Some(NS.into());
    rkc.meta_mut().uid = Some("8b0f6a7e-0000-4000-8000-000000000001".into());
    rkc.meta_mut().generation = Some(generation);
    rkc
}

// ---------------------------------------------------------------------------------------------
// The verifier.

/// What the API server answers.
type Reply = Box<dyn FnOnce(&Value) -> (u16, Value) + Send>;

/// One expected request: method, path, a check of the query, and the answer.
struct Expect {
    method: Method,
    path: String,
    query_contains: Vec<&'static str>,
    reply: Reply,
}

/// A request the verifier saw, for assertions after the scenario.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

/// The named scenarios; each is the exact list of requests one reconcile makes.
enum Scenario {
    /// First reconcile of a new resource: list, create Secret(s), event(s), status, ConfigMap.
    Create { orgs: usize },
    /// A rotation of one organisation: list, create the new Secret, retire the old, event,
    /// status, ConfigMap.
    Rotate { existing: Vec<Secret> },
    /// Organisation added and one removed: list, create, event, retire the removed, status,
    /// ConfigMap.
    AddAndRemove { existing: Vec<Secret> },
    /// KMS fails: while a rotation is due, list, status (Reconciling), status (the error), a
    /// Warning event named after the KMS code; in a key check alone, no list (the key check
    /// reads the cache), status and the event; nothing else.
    KmsFailure {
        existing: Vec<Secret>,
        code: &'static str,
        rotating: bool,
    },
    /// Crash after the Secret write: list (lagging), POST answers 409, GET returns the
    /// stored Secret, event, status, ConfigMap.
    AdoptAfterCrash { stored: Box<Secret> },
    /// Crash between storing the new pair and retiring the old: list, retire the shadowed
    /// pair, a Warning event about the two active pairs, status, ConfigMap; no new pair.
    RetireShadowed { existing: Vec<Secret> },
    /// As `Rotate`, with a pair status has not recorded among `existing`: its status is read
    /// fresh before it is proven through KMS.
    ProveThenRotate { existing: Vec<Secret> },
    /// As `RetireShadowed`, with a rotate-now token pending: the status announces the work
    /// before the newer pair's proof through KMS.
    AnnounceThenRetireShadowed { existing: Vec<Secret> },
    /// Invalid spec: Warning event and status patch, no list, no KMS.
    ConfigInvalid,
    /// The alias's KMS key cannot be used: list, status (Reconciling), status, a Warning event
    /// named after the problem, ConfigMap; no Secret.
    KmsKeyProblem { reason: &'static str },
    /// Retention: list, delete the retired Secret, status.
    Prune {
        existing: Vec<Secret>,
        pruned: String,
    },
    /// KMS is back after a failure: DescribeKey, status; nothing else.
    Recover,
    /// Right after our own writes, the Secret cache lags: one fresh list, then nothing.
    StaleCache { existing: Vec<Secret> },
    /// The status write meets a newer resource (409): it re-reads it and writes again on top
    /// of the newer status, guarded by its resourceVersion.
    Conflict {
        existing: Vec<Secret>,
        newer: Box<RecordingKeyConfig>,
    },
    /// The custody check: a fresh list (the only source of private key blobs; the cache keeps
    /// none), then status; nothing else.
    VerifyCustody { existing: Vec<Secret> },
    /// The status write meets a newer resource whose spec changed (409): nothing is written
    /// from the old plan; the reconcile plans again on the newer resource and rotates for its
    /// spec: list, status (Reconciling), create, retire, event, status, ConfigMap, every write
    /// guarded by the newer resourceVersion.
    ConflictReplan {
        existing: Vec<Secret>,
        fresh: Box<RecordingKeyConfig>,
    },
    /// Suspended: one status write, nothing else.
    Suspended,
    /// Steady state: no request at all.
    SteadyState,
    /// A rotation with the key store down or refusing the new pair's object: list, status
    /// (Reconciling), status (the store's error), a Warning event; no Secret.
    StoreFailure { existing: Vec<Secret> },
    /// Key pair problems seen in the cache (a substituted public key): status and a Warning
    /// event naming the problem; no Secret list, no KMS; the published ConfigMap is read (the
    /// cache keeps only its digest) and not written (it keeps the verified key).
    KeyPairProblem {
        reason: &'static str,
        published: Box<ConfigMap>,
    },
    /// The active Secret is gone: a fresh list confirms it, status (Reconciling), a new pair,
    /// status, a Warning event about the missing pair, ConfigMap.
    ReplaceDeletedActive,
}

fn secrets_path() -> String {
    format!("/api/v1/namespaces/{NS}/secrets")
}
fn status_path() -> String {
    format!("/apis/kekeeper.io/v1alpha1/namespaces/{NS}/recordingkeyconfigs/{NAME}/status")
}
fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}
fn config_map_path() -> String {
    format!("/api/v1/namespaces/{NS}/configmaps/{NAME}-public-keys")
}

fn echo() -> Reply {
    Box::new(|body| (200, body.clone()))
}
fn reply_created() -> Reply {
    Box::new(|body| (201, body.clone()))
}

fn list(items: Vec<Secret>) -> Expect {
    Expect {
        method: Method::GET,
        path: secrets_path(),
        query_contains: vec!["labelSelector=kekeeper.io%2Fconfig%3Drecordings"],
        reply: Box::new(move |_| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": items}),
            )
        }),
    }
}
fn create_secret() -> Expect {
    Expect {
        method: Method::POST,
        path: secrets_path(),
        query_contains: vec!["fieldManager=kekeeper"],
        reply: reply_created(),
    }
}
fn retire_secret(name: &str) -> Expect {
    Expect {
        method: Method::PATCH,
        path: format!("{}/{name}", secrets_path()),
        query_contains: vec![],
        reply: Box::new(|body| {
            assert_eq!(body["metadata"]["labels"]["kekeeper.io/state"], "retired");
            assert!(body["metadata"]["annotations"]["kekeeper.io/retired-at"].is_string());
            (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}),
            )
        }),
    }
}
fn event(reason: &'static str) -> Expect {
    Expect {
        method: Method::POST,
        path: events_path(),
        query_contains: vec![],
        reply: Box::new(move |body| {
            assert_eq!(body["reason"], reason, "event: {body}");
            (201, body.clone())
        }),
    }
}
fn status_patch(object: &Value) -> Expect {
    Expect {
        method: Method::PATCH,
        path: status_path(),
        query_contains: vec!["fieldManager=kekeeper", "force=true"],
        reply: Box::new({
            let mut object = object.clone();
            move |body| {
                object["status"] = body["status"].clone();
                (200, object)
            }
        }),
    }
}
fn list_config_maps(published: ConfigMap) -> Expect {
    Expect {
        method: Method::GET,
        path: format!("/api/v1/namespaces/{NS}/configmaps"),
        query_contains: vec!["fieldSelector=metadata.name%3Drecordings-public-keys"],
        reply: Box::new(move |_| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": [published]}),
            )
        }),
    }
}
/// The status read before a proof (the cache may lag behind our own newest status): the
/// resource as it is.
fn read_status(object: &Value) -> Expect {
    let object = object.clone();
    Expect {
        method: Method::GET,
        path: status_path(),
        query_contains: vec![],
        reply: Box::new(move |_| (200, object.clone())),
    }
}
fn config_map_apply() -> Expect {
    Expect {
        method: Method::PATCH,
        path: config_map_path(),
        query_contains: vec!["fieldManager=kekeeper", "force=true"],
        reply: echo(),
    }
}

impl Scenario {
    /// The requests against `object`, the resource under reconcile (what a status write
    /// answers with, its status replaced).
    fn expectations(self, object: &Value) -> Vec<Expect> {
        match self {
            Scenario::Create { orgs } => {
                // Status says Reconciling before the first KMS call.
                let mut e = vec![list(vec![]), status_patch(object)];
                for _ in 0..orgs {
                    e.push(create_secret());
                    e.push(event("KeyPairGenerated"));
                }
                e.push(status_patch(object));
                e.push(config_map_apply());
                e
            }
            Scenario::Rotate { existing } => {
                let old = existing[0].metadata.name.clone().unwrap();
                vec![
                    list(existing),
                    status_patch(object),
                    create_secret(),
                    retire_secret(&old),
                    event("KeyPairGenerated"),
                    status_patch(object),
                    config_map_apply(),
                ]
            }
            Scenario::ProveThenRotate { existing } => {
                let old = existing[0].metadata.name.clone().unwrap();
                vec![
                    list(existing),
                    status_patch(object),
                    read_status(object),
                    create_secret(),
                    retire_secret(&old),
                    event("KeyPairGenerated"),
                    status_patch(object),
                    config_map_apply(),
                ]
            }
            Scenario::AddAndRemove { existing } => {
                let old = existing[0].metadata.name.clone().unwrap();
                vec![
                    list(existing),
                    status_patch(object),
                    create_secret(),
                    event("KeyPairGenerated"),
                    retire_secret(&old),
                    status_patch(object),
                    config_map_apply(),
                ]
            }
            Scenario::KmsFailure {
                existing,
                code,
                rotating,
            } => {
                let mut e = Vec::new();
                if rotating {
                    e.push(list(existing));
                    e.push(status_patch(object));
                }
                e.extend([status_patch(object), event(code)]);
                e
            }
            Scenario::AdoptAfterCrash { stored } => {
                let name = stored.metadata.name.clone().unwrap();
                vec![
                    list(vec![]),
                    status_patch(object),
                    Expect {
                        method: Method::POST,
                        path: secrets_path(),
                        query_contains: vec![],
                        reply: Box::new(|_| {
                            (
                                409,
                                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                       "reason": "AlreadyExists", "code": 409,
                                       "message": "secrets already exists"}),
                            )
                        }),
                    },
                    Expect {
                        method: Method::GET,
                        path: format!("{}/{name}", secrets_path()),
                        query_contains: vec![],
                        reply: Box::new(move |_| (200, serde_json::to_value(&stored).unwrap())),
                    },
                    event("KeyPairGenerated"),
                    status_patch(object),
                    config_map_apply(),
                ]
            }
            Scenario::RetireShadowed { existing } => {
                let old = existing[0].metadata.name.clone().unwrap();
                vec![
                    list(existing),
                    read_status(object),
                    retire_secret(&old),
                    event("DuplicateActiveKeyPair"),
                    status_patch(object),
                    config_map_apply(),
                ]
            }
            Scenario::AnnounceThenRetireShadowed { existing } => {
                let old = existing[0].metadata.name.clone().unwrap();
                vec![
                    list(existing),
                    status_patch(object),
                    read_status(object),
                    retire_secret(&old),
                    event("DuplicateActiveKeyPair"),
                    status_patch(object),
                    config_map_apply(),
                ]
            }
            Scenario::ConfigInvalid => vec![status_patch(object), event("ConfigInvalid")],
            Scenario::KeyPairProblem { reason, published } => vec![
                status_patch(object),
                event(reason),
                list_config_maps(*published),
            ],
            Scenario::ReplaceDeletedActive => vec![
                list(vec![]),
                status_patch(object),
                create_secret(),
                event("KeyPairGenerated"),
                status_patch(object),
                event("KeyPairMissing"),
                config_map_apply(),
            ],
            Scenario::KmsKeyProblem { reason } => vec![
                list(vec![]),
                status_patch(object),
                status_patch(object),
                event(reason),
                config_map_apply(),
            ],
            Scenario::Prune { existing, pruned } => vec![
                list(existing),
                Expect {
                    method: Method::DELETE,
                    path: format!("{}/{pruned}", secrets_path()),
                    query_contains: vec![],
                    reply: Box::new(|_| {
                        (
                            200,
                            json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}),
                        )
                    }),
                },
                status_patch(object),
            ],
            Scenario::StaleCache { existing } => vec![list(existing)],
            Scenario::Recover => vec![status_patch(object)],
            Scenario::VerifyCustody { existing } => vec![list(existing), status_patch(object)],
            Scenario::Suspended => vec![status_patch(object)],
            Scenario::Conflict { existing, newer } => {
                let stored = serde_json::to_value(&newer).unwrap();
                vec![
                    list(existing),
                    Expect {
                        method: Method::PATCH,
                        path: status_path(),
                        query_contains: vec!["fieldManager=kekeeper"],
                        reply: Box::new(|body| {
                            assert_eq!(body["metadata"]["resourceVersion"], "100", "{body}");
                            (
                                409,
                                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                   "reason": "Conflict", "code": 409,
                                   "message": "the object has been modified"}),
                            )
                        }),
                    },
                    Expect {
                        method: Method::GET,
                        path: status_path(),
                        query_contains: vec![],
                        reply: Box::new(move |_| (200, serde_json::to_value(&newer).unwrap())),
                    },
                    Expect {
                        method: Method::PATCH,
                        path: status_path(),
                        query_contains: vec!["fieldManager=kekeeper"],
                        reply: Box::new(move |body| {
                            assert_eq!(body["metadata"]["resourceVersion"], "101", "{body}");
                            let mut object = stored;
                            object["status"] = body["status"].clone();
                            (200, object)
                        }),
                    },
                ]
            }
            Scenario::ConflictReplan { existing, fresh } => {
                let old = existing[0].metadata.name.clone().unwrap();
                let fresh_value = serde_json::to_value(&fresh).unwrap();
                vec![
                    list(existing.clone()),
                    Expect {
                        method: Method::PATCH,
                        path: status_path(),
                        query_contains: vec!["fieldManager=kekeeper"],
                        reply: Box::new(|_| {
                            (
                                409,
                                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                   "reason": "Conflict", "code": 409,
                                   "message": "the object has been modified"}),
                            )
                        }),
                    },
                    Expect {
                        method: Method::GET,
                        path: status_path(),
                        query_contains: vec![],
                        reply: Box::new(move |_| (200, serde_json::to_value(&fresh).unwrap())),
                    },
                    list(existing),
                    status_patch(&fresh_value),
                    create_secret(),
                    retire_secret(&old),
                    event("KeyPairGenerated"),
                    status_patch(&fresh_value),
                    config_map_apply(),
                ]
            }
            Scenario::SteadyState => vec![],
            Scenario::StoreFailure { existing } => vec![
                list(existing),
                status_patch(object),
                status_patch(object),
                event("KeyStoreUnavailable"),
            ],
        }
    }
}

/// Answers the expected requests in order; panics on a wrong or missing one.
async fn verify(mut handle: Handle, expectations: Vec<Expect>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (index, expect) in expectations.into_iter().enumerate() {
        let (request, send) = tokio::time::timeout(Duration::from_secs(20), handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "request #{index} ({} {}) was never made",
                    expect.method, expect.path
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "request #{index} ({} {}) was never made: the reconcile ended before it",
                    expect.method, expect.path
                )
            });
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        assert_eq!(
            (&method, path.as_str()),
            (&expect.method, expect.path.as_str()),
            "request #{index}"
        );
        for q in &expect.query_contains {
            assert!(
                query.contains(q),
                "request #{index} {path}?{query} lacks {q}"
            );
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (status, answer) = (expect.reply)(&body);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        seen.push(Seen { method, path, body });
    }
    // Nothing more may follow.
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// The harness.

struct Harness {
    kms: FakeKms,
    secrets: KeyPairCache,
    config_maps: PublicKeysCache,
    /// The ConfigMaps as last applied (the cache keeps only digests).
    published: Vec<ConfigMap>,
    now: Timestamp,
    key_arn: String,
    /// The key store, when the scenario runs with one (`s3://acme-keys/prod`).
    store: Option<MemoryObjects>,
}

impl Harness {
    fn new() -> Self {
        let kms = FakeKms::reusing_key_pairs();
        let key_arn = kms.create_key_for(&kekeeper::arn::AliasArn::parse(ALIAS).unwrap());
        let secrets = cache::key_pair_cache();
        let config_maps = cache::public_keys_cache();
        // Synced and empty, as after a first list that found nothing.
        secrets.apply_watcher_event(&watcher::Event::InitDone);
        config_maps.apply_watcher_event(&watcher::Event::InitDone);
        Harness {
            kms,
            secrets,
            config_maps,
            published: Vec::new(),
            now: ts(NOW),
            key_arn,
            store: None,
        }
    }

    /// Runs one reconcile of `rkc` against `scenario`; returns the reconcile's result and
    /// the requests seen.
    async fn reconcile(
        &self,
        rkc: RecordingKeyConfig,
        scenario: Scenario,
    ) -> (
        Result<kube::runtime::controller::Action, controller::Error>,
        Vec<Seen>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NS);
        let now = self.now;
        let ctx = Context::new(
            client.clone(),
            self.kms.clone(),
            Arc::new(move || now),
            Events::new(client, Reporter::from("kekeeper")),
            self.secrets.clone(),
            self.config_maps.clone(),
            Arc::new(KmsPace::uniform(1000.0, 100)),
            Settings::default(),
            Metrics::default(),
        );
        let ctx = Arc::new(match &self.store {
            Some(objects) => ctx.with_key_store(KeyStore::new(
                STORE.parse().unwrap(),
                Arc::new(objects.clone()),
            )),
            None => ctx,
        });
        let verifier = tokio::spawn(verify(
            handle,
            scenario.expectations(&serde_json::to_value(&rkc).unwrap()),
        ));
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            controller::reconcile(Arc::new(rkc), ctx),
        )
        .await
        .expect("reconcile hung (a request nobody answered?)");
        let seen = verifier.await.unwrap();
        (result, seen)
    }

    /// Feeds what the API server stored into the caches, as the reflectors would.
    fn cache(&mut self, seen: &[Seen], existing: &[Secret]) -> Vec<Secret> {
        let mut secrets: Vec<Secret> = existing.to_vec();
        for s in seen {
            if s.method == Method::POST && s.path == secrets_path() {
                let mut secret: Secret = serde_json::from_value(s.body.clone()).unwrap();
                secret.metadata.namespace = Some(NS.into());
                secrets.push(secret);
            }
            if s.method == Method::PATCH && s.path.starts_with(&format!("{}/", secrets_path())) {
                let name = s.path.rsplit('/').next().unwrap();
                let secret = secrets
                    .iter_mut()
                    .find(|x| x.metadata.name.as_deref() == Some(name))
                    .unwrap();
                for (k, v) in s.body["metadata"]["labels"].as_object().unwrap() {
                    secret
                        .metadata
                        .labels
                        .get_or_insert_default()
                        .insert(k.clone(), v.as_str().unwrap().into());
                }
                for (k, v) in s.body["metadata"]["annotations"].as_object().unwrap() {
                    secret
                        .metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(k.clone(), v.as_str().unwrap().into());
                }
            }
            if s.method == Method::PATCH && s.path == config_map_path() {
                let cm: ConfigMap = serde_json::from_value(s.body.clone()).unwrap();
                self.config_maps
                    .apply_watcher_event(&watcher::Event::Apply(cm.clone()));
                self.published = vec![cm];
            }
        }
        for secret in &secrets {
            self.secrets
                .apply_watcher_event(&watcher::Event::Apply(secret.clone()));
        }
        secrets
    }
}

fn status_of(seen: &[Seen]) -> RecordingKeyConfigStatus {
    let patch = seen
        .iter()
        .rfind(|s| s.path == status_path())
        .expect("a status patch");
    assert_eq!(patch.body["apiVersion"], "kekeeper.io/v1alpha1");
    assert_eq!(patch.body["kind"], "RecordingKeyConfig");
    serde_json::from_value(patch.body["status"].clone()).unwrap()
}

fn condition<'a>(
    status: &'a RecordingKeyConfigStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

/// `rkc` asking for one rotation of every key pair with `token` (as `kekeeper rotate` does).
fn rotate_now(rkc: RecordingKeyConfig, token: &str) -> RecordingKeyConfig {
    annotate(rkc, "kekeeper.io/rotate-now", token)
}

/// `rkc` asking for a custody check now with `token`.
fn verify_now(rkc: RecordingKeyConfig, token: &str) -> RecordingKeyConfig {
    annotate(rkc, "kekeeper.io/verify-now", token)
}

fn annotate(mut rkc: RecordingKeyConfig, name: &str, value: &str) -> RecordingKeyConfig {
    rkc.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(name.into(), value.into());
    rkc
}

fn with_status(
    mut rkc: RecordingKeyConfig,
    status: RecordingKeyConfigStatus,
) -> RecordingKeyConfig {
    rkc.status = Some(status);
    rkc
}

/// A created resource: its Secrets (cached), status, and the harness.
async fn created(orgs: &[&str]) -> (Harness, RecordingKeyConfig, Vec<Secret>) {
    let mut h = Harness::new();
    let rkc = resource(spec(orgs), 1);
    let (result, seen) = h
        .reconcile(rkc.clone(), Scenario::Create { orgs: orgs.len() })
        .await;
    result.unwrap();
    let secrets = h.cache(&seen, &[]);
    let rkc = with_status(rkc, status_of(&seen));
    h.kms.reset_calls();
    (h, rkc, secrets)
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test]
async fn a_reconcile_waits_for_the_first_list_of_the_key_pair_cache() {
    let mut h = Harness::new();
    // A restarted operator: the key pair Secrets' first list is not in yet.
    h.secrets = cache::key_pair_cache();
    let secrets = h.secrets.clone();
    let rkc = resource(spec(&[ORG_A]), 1);
    let run = h.reconcile(rkc, Scenario::Create { orgs: 1 });
    tokio::pin!(run);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut run)
            .await
            .is_err(),
        "reconciled before the cache had listed"
    );
    assert_eq!(h.kms.total_calls(), 0);
    secrets.apply_watcher_event(&watcher::Event::InitDone);
    let (result, seen) = run.await;
    result.unwrap();
    assert_eq!(status_of(&seen).active_key_pairs.len(), 1);
}

#[tokio::test]
async fn create_makes_secrets_status_and_config_map() {
    let mut h = Harness::new();
    let rkc = resource(spec(&[ORG_A, ORG_B]), 1);
    let (result, seen) = h.reconcile(rkc, Scenario::Create { orgs: 2 }).await;
    let action = result.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(3600)),
        "requeued for the next KMS key check"
    );

    // DescribeKey, and per organisation generate + the self-test's Decrypt.
    assert_eq!(h.kms.calls(KmsOperation::DescribeKey), 1);
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        2
    );
    assert_eq!(h.kms.calls(KmsOperation::Decrypt), 2);

    let secrets: Vec<Secret> = seen
        .iter()
        .filter(|s| s.method == Method::POST && s.path == secrets_path())
        .map(|s| serde_json::from_value(s.body.clone()).unwrap())
        .collect();
    assert_eq!(secrets.len(), 2);
    for secret in &secrets {
        assert_eq!(secret.type_.as_deref(), Some("kekeeper.io/key-pair"));
        assert!(
            secret.metadata.owner_references.is_none(),
            "key material must not be garbage-collected with the resource"
        );
        let record = KeyPairSecret::from_secret(secret).unwrap();
        assert_eq!(record.sequence, 1);
        assert_eq!(record.reason, "NoActiveKeyPair");
        assert_eq!(record.kms_key_arn, h.key_arn);
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(KeyPairRecord::secret_name(NAME, &record.organization_id, 1).as_str())
        );
    }

    let status = status_of(&seen);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.organization_count, Some(2));
    assert_eq!(status.active_key_pairs.len(), 2);
    assert_eq!(status.active_key_pairs[0].organization_id, ORG_A);
    assert_eq!(status.key_pair_history.len(), 2);
    assert_eq!(status.last_rotation_time, Some(ts(NOW)));
    assert_eq!(status.next_rotation_time, Some(ts("2026-02-15T10:00:00Z")));
    assert_eq!(status.kms_key_arn.as_deref(), Some(h.key_arn.as_str()));
    assert_eq!(status.kms_key_alias_arn.as_deref(), Some(ALIAS));
    assert!(status.last_test.as_ref().unwrap().passed);
    assert!(status.last_kms_error.is_none());
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "KeyPairsActive")
    );
    assert_eq!(
        ready.message,
        "2/2 organisations have a key pair under the current spec"
    );
    assert_eq!(condition(&status, "KmsAvailable").status, "True");
    assert_eq!(condition(&status, "ConfigValid").status, "True");
    assert_eq!(condition(&status, "HistoricalKeysAtRisk").status, "False");

    let cm = &seen.last().unwrap().body;
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(
        cm["metadata"]["ownerReferences"][0]["kind"],
        "RecordingKeyConfig"
    );
    assert!(
        cm["data"][format!("{ORG_A}.pem")]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    let json: Value =
        serde_json::from_str(cm["data"]["activeKeyPairs.json"].as_str().unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let _ = h.cache(&seen, &[]);
}

#[tokio::test]
async fn steady_state_makes_no_request_and_no_kms_call() {
    let (h, rkc, _) = created(&[ORG_A]).await;
    let (result, seen) = h.reconcile(rkc, Scenario::SteadyState).await;
    let action = result.unwrap();
    assert!(seen.is_empty());
    assert_eq!(h.kms.total_calls(), 0);
    // Requeued for the KMS key check, an hour after the last one.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(3600))
    );
}

#[tokio::test]
async fn steady_state_requeues_for_the_rotation_when_that_is_earlier() {
    let (mut h, mut rkc, _) = created(&[ORG_A]).await;
    // Daily period, a clock 23h30m on (the rotation is due in 30 minutes) and a KMS key
    // check ten minutes ago (next one in 50).
    rkc.spec.rotation.period = RotationPeriod::Daily;
    let status = rkc.status.as_mut().unwrap();
    status.last_kms_key_check_time = Some(ts("2026-01-16T09:20:00Z"));
    status.next_rotation_time = Some(ts("2026-01-16T10:00:00Z"));
    h.now = ts("2026-01-16T09:30:00Z");
    let (result, seen) = h.reconcile(rkc, Scenario::SteadyState).await;
    assert!(seen.is_empty());
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::from_secs(30 * 60))
    );
}

#[tokio::test]
async fn kms_failure_keeps_the_active_pair_and_reports_the_error() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    // Two hours on: the KMS key check is due, and DescribeKey is denied.
    h.now = ts("2026-01-15T12:00:00Z");
    h.kms
        .fail_next(KmsOperation::DescribeKey, KmsErrorKind::AccessDenied);
    let before = rkc.status.clone().unwrap();
    let (result, seen) = h
        .reconcile(
            rkc,
            Scenario::KmsFailure {
                existing: secrets,
                code: "AccessDeniedException",
                rotating: false,
            },
        )
        .await;
    // Reported in status and retried after the first backoff step.
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );

    let status = status_of(&seen);
    let error = status.last_kms_error.clone().unwrap();
    assert_eq!(error.operation, "DescribeKey");
    assert_eq!(error.code, "AccessDeniedException");
    assert_eq!(error.time, ts("2026-01-15T12:00:00Z"));
    let kms = condition(&status, "KmsAvailable");
    assert_eq!(
        (kms.status.as_str(), kms.reason.as_str()),
        ("False", "AccessDeniedException")
    );
    // The active pair stays; recorders keep encrypting with it. AccessDenied needs a change
    // of the key policy: not Ready, and Stalled (kstatus: Failed).
    assert_eq!(status.active_key_pairs, before.active_key_pairs);
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "KmsUnavailable")
    );
    let stalled = condition(&status, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "AccessDeniedException")
    );
    assert_eq!(condition(&status, "Reconciling").status, "False");
    assert_eq!(status.failed_attempts, Some(1));
    assert_eq!(status.last_failure_time, Some(ts("2026-01-15T12:00:00Z")));
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        0
    );
}

#[tokio::test]
async fn kms_failure_during_generation_reports_the_failed_test() {
    let (h, rkc, secrets) = created(&[ORG_A]).await;
    let rkc = rotate_now(rkc, "t1");
    h.kms.fail_next(
        KmsOperation::GenerateDataKeyPairWithoutPlaintext,
        KmsErrorKind::Throttling,
    );
    let (result, seen) = h
        .reconcile(
            rkc,
            Scenario::KmsFailure {
                existing: secrets,
                code: "ThrottlingException",
                rotating: true,
            },
        )
        .await;
    result.unwrap();
    // Before the first KMS call, status already said a rotation is under way.
    let announced: RecordingKeyConfigStatus =
        serde_json::from_value(seen[1].body["status"].clone()).unwrap();
    assert_eq!(condition(&announced, "Ready").reason, "Rotating");
    assert_eq!(condition(&announced, "Reconciling").status, "True");
    let status = status_of(&seen);
    // Transient: not Ready while the rotation waits, Reconciling (kstatus: InProgress), not
    // Stalled.
    assert_eq!(condition(&status, "Ready").reason, "KmsUnavailable");
    assert_eq!(condition(&status, "Reconciling").status, "True");
    assert_eq!(condition(&status, "Stalled").status, "False");
    assert_eq!(
        status.last_kms_error.as_ref().unwrap().code,
        "ThrottlingException"
    );
    let test = status.last_test.unwrap();
    assert!(!test.passed);
    // Not honoured: the next try rotates again.
    assert_eq!(status.rotate_now_token, None);
}

#[tokio::test]
async fn rotate_now_rotates_once_per_token() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let rkc = rotate_now(rkc, "t1");
    let (result, seen) = h
        .reconcile(
            rkc.clone(),
            Scenario::Rotate {
                existing: secrets.clone(),
            },
        )
        .await;
    result.unwrap();
    let new_secret: Secret = serde_json::from_value(seen[2].body.clone()).unwrap();
    assert_eq!(
        new_secret.metadata.annotations.as_ref().unwrap()["kekeeper.io/rotate-now-token"],
        "t1"
    );
    let status = status_of(&seen);
    assert_eq!(status.rotate_now_token.as_deref(), Some("t1"));
    assert_eq!(status.key_pair_history.len(), 2);
    assert_eq!(status.key_pair_history[0].reason, "RotateNowRequested");
    let old_id = rkc.status.as_ref().unwrap().active_key_pairs[0]
        .key_pair_id
        .clone();
    assert_ne!(status.active_key_pairs[0].key_pair_id, old_id);
    assert_eq!(
        status.active_key_pairs[0].secret_name,
        KeyPairRecord::secret_name(NAME, ORG_A, 2)
    );
    assert_eq!(status.key_pair_history[1].key_pair_id, old_id);
    assert_eq!(status.key_pair_history[1].retired_at, Some(ts(NOW)));

    // The same token again: steady state.
    h.cache(&seen, &secrets);
    h.kms.reset_calls();
    let rkc = with_status(rkc, status);
    let (result, seen) = h.reconcile(rkc, Scenario::SteadyState).await;
    result.unwrap();
    assert!(seen.is_empty());
    assert_eq!(h.kms.total_calls(), 0);
}

/// A rotate-now token that arrives while a KMS backoff runs is tried at once (as
/// cert-manager's manual renew is), once: its failure starts the next backoff, which then
/// holds; after it, the rotation is retried and the token honoured.
#[tokio::test]
async fn rotate_now_during_a_kms_backoff_is_tried_at_once_and_once() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    // The hourly key check fails: one failure, a 5 s backoff until 12:00:05.
    h.now = ts("2026-01-15T12:00:00Z");
    h.kms
        .fail_next(KmsOperation::DescribeKey, KmsErrorKind::KeyUnavailable);
    let (result, seen) = h
        .reconcile(
            rkc.clone(),
            Scenario::KmsFailure {
                existing: secrets.clone(),
                code: "KeyUnavailableException",
                rotating: false,
            },
        )
        .await;
    result.unwrap();
    let failed = status_of(&seen);
    assert_eq!(failed.failed_attempts, Some(1));
    assert_eq!(failed.failed_rotate_now_token, None);

    // Two seconds into the backoff, `kekeeper rotate` sets a token: tried at once, and KMS
    // throttles the generation.
    h.now = ts("2026-01-15T12:00:02Z");
    h.kms.reset_calls();
    h.kms.fail_next(
        KmsOperation::GenerateDataKeyPairWithoutPlaintext,
        KmsErrorKind::Throttling,
    );
    let asked = rotate_now(with_status(rkc, failed), "t1");
    let (result, seen) = h
        .reconcile(
            asked.clone(),
            Scenario::KmsFailure {
                existing: secrets.clone(),
                code: "ThrottlingException",
                rotating: true,
            },
        )
        .await;
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        1,
        "the token is tried without waiting for the backoff"
    );
    // The backoff continues from the new failure: 10 s after the second.
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::from_secs(10))
    );
    let tried = status_of(&seen);
    assert_eq!(tried.failed_attempts, Some(2));
    assert_eq!(tried.last_failure_time, Some(ts("2026-01-15T12:00:02Z")));
    assert_eq!(tried.failed_rotate_now_token.as_deref(), Some("t1"));
    assert_eq!(tried.rotate_now_token, None);

    // Another event during that backoff (the operator's own status write): it waits, with no
    // KMS call and no request.
    h.now = ts("2026-01-15T12:00:03Z");
    h.kms.reset_calls();
    let asked = with_status(asked, tried);
    let (result, seen) = h.reconcile(asked.clone(), Scenario::SteadyState).await;
    assert!(seen.is_empty());
    assert_eq!(h.kms.total_calls(), 0);
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::from_secs(9))
    );

    // The backoff over, the retry rotates and honours the token.
    h.now = ts("2026-01-15T12:00:12Z");
    let (result, seen) = h
        .reconcile(
            asked,
            Scenario::Rotate {
                existing: secrets.clone(),
            },
        )
        .await;
    result.unwrap();
    let done = status_of(&seen);
    assert_eq!(done.rotate_now_token.as_deref(), Some("t1"));
    assert_eq!(done.failed_attempts, None);
    assert_eq!(done.failed_rotate_now_token, None);
    assert_eq!(done.key_pair_history[0].reason, "RotateNowRequested");
}

#[tokio::test]
async fn period_elapsed_rotates() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    h.now = ts("2026-02-15T10:00:00Z");
    let (result, seen) = h
        .reconcile(rkc, Scenario::Rotate { existing: secrets })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.key_pair_history[0].reason, "PeriodElapsed");
    // Ready was False (Rotating) while the rotation ran, and is True again.
    let announced: RecordingKeyConfigStatus =
        serde_json::from_value(seen[1].body["status"].clone()).unwrap();
    assert_eq!(condition(&announced, "Ready").reason, "Rotating");
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "KeyPairsActive")
    );
    assert_eq!(status.next_rotation_time, Some(ts("2026-03-15T10:00:00Z")));
}

#[tokio::test]
async fn spec_change_rotates() {
    let (h, mut rkc, secrets) = created(&[ORG_A]).await;
    rkc.spec.encryption_context_key = "tenant-id".into();
    rkc.meta_mut().generation = Some(2);
    let (result, seen) = h
        .reconcile(rkc, Scenario::Rotate { existing: secrets })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.key_pair_history[0].reason, "SpecChanged");
    assert_eq!(status.observed_generation, Some(2));
    let new_secret: Secret = serde_json::from_value(seen[2].body.clone()).unwrap();
    let record = KeyPairSecret::from_secret(&new_secret).unwrap();
    assert_eq!(record.encryption_context.key, "tenant-id");
}

#[tokio::test]
async fn alias_pointing_at_a_new_kms_key_rotates() {
    let (mut h, mut rkc, secrets) = created(&[ORG_A]).await;
    // Rotation only: the rewrap of the old pairs (spec.rewrap) is tested in e2e_rewrap.
    rkc.spec.rewrap = RewrapPolicy::Never;
    let alias = kekeeper::arn::AliasArn::parse(ALIAS).unwrap();
    let new_key = h.kms.create_key("aws", "us-east-1", "111122223333");
    h.kms.point_alias(&alias, &new_key);
    h.now = ts("2026-01-15T11:00:00Z"); // the hourly KMS key check notices
    let (result, seen) = h
        .reconcile(rkc, Scenario::Rotate { existing: secrets })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.key_pair_history[0].reason, "KmsKeyChanged");
    assert_eq!(status.active_key_pairs[0].kms_key_arn, new_key);
    assert_eq!(status.kms_key_arn.as_deref(), Some(new_key.as_str()));
}

#[tokio::test]
async fn disabled_old_kms_key_raises_historical_keys_at_risk() {
    let (mut h, mut rkc, secrets) = created(&[ORG_A]).await;
    // Rotation only: the rewrap of the old pairs (spec.rewrap) is tested in e2e_rewrap.
    rkc.spec.rewrap = RewrapPolicy::Never;
    let alias = kekeeper::arn::AliasArn::parse(ALIAS).unwrap();
    let new_key = h.kms.create_key("aws", "us-east-1", "111122223333");
    h.kms.point_alias(&alias, &new_key);
    h.kms.disable_key(&h.key_arn);
    h.now = ts("2026-01-15T11:00:00Z");
    let (result, seen) = h
        .reconcile(rkc, Scenario::Rotate { existing: secrets })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    let risk = condition(&status, "HistoricalKeysAtRisk");
    assert_eq!(risk.status, "True", "{risk:?}");
    assert!(risk.message.contains(&h.key_arn));
    assert_eq!(status.key_pairs_at_risk.len(), 1);
}

#[tokio::test]
async fn organisation_added_and_removed() {
    let (h, mut rkc, secrets) = created(&[ORG_A]).await;
    rkc.spec.organization_ids = vec![ORG_B.into()];
    rkc.meta_mut().generation = Some(2);
    let (result, seen) = h
        .reconcile(rkc, Scenario::AddAndRemove { existing: secrets })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.active_key_pairs.len(), 1);
    assert_eq!(status.active_key_pairs[0].organization_id, ORG_B);
    // The removed organisation's pair is retired and kept in history.
    let a = status
        .key_pair_history
        .iter()
        .find(|e| e.organization_id == ORG_A)
        .unwrap();
    assert_eq!(a.retired_at, Some(ts(NOW)));
    assert!(!seen.iter().any(|s| s.method == Method::DELETE));
    let cm = &seen.last().unwrap().body;
    assert!(cm["data"].get(format!("{ORG_A}.pem")).is_none());
    assert!(cm["data"].get(format!("{ORG_B}.pem")).is_some());
}

#[tokio::test]
async fn crash_after_secret_write_adopts_the_stored_secret() {
    // A previous run stored the Secret, then died before writing status.
    let h = Harness::new();
    let rkc = resource(spec(&[ORG_A]), 1);
    let stored = {
        let kms = FakeKms::reusing_key_pairs();
        let alias = kekeeper::arn::AliasArn::parse(ALIAS).unwrap();
        kms.create_key_for(&alias);
        let config = kekeeper::config::validate(&rkc.spec, None).unwrap();
        let passed = kekeeper::selftest::run(&kms, &config, ORG_A).await.unwrap();
        KeyPairSecret::new_active(
            NAME,
            NS,
            1,
            passed.key_pair,
            ALIAS,
            config.context_for(ORG_A),
            ts("2026-01-15T09:59:58Z"),
            "NoActiveKeyPair",
        )
    };
    let (result, seen) = h
        .reconcile(
            rkc,
            Scenario::AdoptAfterCrash {
                stored: Box::new(stored.to_secret().unwrap()),
            },
        )
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.active_key_pairs.len(), 1);
    assert_eq!(status.active_key_pairs[0].key_pair_id, stored.key_pair_id);
    assert_eq!(status.key_pair_history.len(), 1, "no second active pair");
}

#[tokio::test]
async fn invalid_config_reports_the_field_and_makes_no_kms_call() {
    let h = Harness::new();
    let mut s = spec(&[ORG_A]);
    s.home_region = Some("eu-west-1".into());
    let (result, seen) = h.reconcile(resource(s, 1), Scenario::ConfigInvalid).await;
    result.unwrap();
    assert_eq!(h.kms.total_calls(), 0);
    let status = status_of(&seen);
    let valid = condition(&status, "ConfigValid");
    assert_eq!(
        (valid.status.as_str(), valid.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        valid.message.starts_with("spec.homeRegion"),
        "{}",
        valid.message
    );
    assert_eq!(condition(&status, "Ready").status, "False");
    assert!(status.active_key_pairs.is_empty());
}

#[tokio::test]
async fn disabled_kms_key_makes_config_invalid_without_generating() {
    let h = Harness::new();
    h.kms.disable_key(&h.key_arn);
    let rkc = resource(spec(&[ORG_A]), 1);
    let (result, seen) = h
        .reconcile(
            rkc,
            Scenario::KmsKeyProblem {
                reason: "KmsKeyNotEnabled",
            },
        )
        .await;
    result.unwrap();
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        0
    );
    let status = status_of(&seen);
    let valid = condition(&status, "ConfigValid");
    assert_eq!(
        (valid.status.as_str(), valid.reason.as_str()),
        ("False", "KmsKeyNotEnabled")
    );
}

#[tokio::test]
async fn suspended_resource_is_left_alone() {
    let h = Harness::new();
    let mut s = spec(&[ORG_A]);
    s.suspend = true;
    let (result, seen) = h.reconcile(resource(s, 1), Scenario::Suspended).await;
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::await_change()
    );
    // One status write: observedGeneration is current and Ready says why it is False; no KMS
    // call and no key change.
    let status = status_of(&seen);
    assert_eq!(status.observed_generation, Some(1));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Suspended")
    );
    assert_eq!(condition(&status, "Stalled").status, "False");
    assert_eq!(condition(&status, "Reconciling").status, "False");
    assert_eq!(h.kms.total_calls(), 0);
}

#[tokio::test]
async fn retention_prunes_only_long_retired_pairs() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    // Rotate once so there is a retired pair.
    let rkc = rotate_now(rkc, "t1");
    let (result, seen) = h
        .reconcile(
            rkc.clone(),
            Scenario::Rotate {
                existing: secrets.clone(),
            },
        )
        .await;
    result.unwrap();
    let secrets = h.cache(&seen, &secrets);
    let mut rkc = with_status(rkc, status_of(&seen));
    h.kms.reset_calls();

    // Without recordingRetention, nothing is ever deleted, however old.
    h.now = ts("2026-01-15T10:30:00Z");
    let (result, seen) = h.reconcile(rkc.clone(), Scenario::SteadyState).await;
    result.unwrap();
    assert!(seen.is_empty());

    // With 1d and no periodic rotation (whose period would be the floor): a day after
    // retirement, the retired Secret goes.
    rkc.spec.recording_retention = Some("1d".into());
    rkc.spec.rotation.period = kekeeper::crd::RotationPeriod::Never;
    rkc.meta_mut().generation = Some(2);
    rkc.status.as_mut().unwrap().observed_generation = Some(2);
    h.now = ts("2026-01-16T10:00:00Z");
    let retired = secrets[0].metadata.name.clone().unwrap();
    let (result, seen) = h
        .reconcile(
            rkc,
            Scenario::Prune {
                existing: secrets,
                pruned: retired.clone(),
            },
        )
        .await;
    result.unwrap();
    assert!(
        seen.iter()
            .any(|s| s.method == Method::DELETE && s.path.ends_with(&retired))
    );
}

#[tokio::test]
async fn crash_before_retiring_the_old_pair_retires_it_on_retry() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    // The new pair (sequence 2) was stored, then the process died: two active pairs.
    let mut newer = KeyPairSecret::from_secret(&secrets[0]).unwrap();
    newer.sequence = 2;
    newer.secret_name = KeyPairRecord::secret_name(&newer.config_name, &newer.organization_id, 2);
    newer.key_pair_id = kekeeper::keypair::new_key_pair_id();
    newer.created_at = ts("2026-01-15T10:05:00Z");
    newer.reason = "PeriodElapsed".into();
    let mut existing = secrets.clone();
    existing.push(newer.to_secret().unwrap());
    h.cache(&[], &existing);
    h.now = ts("2026-01-15T10:06:00Z");
    let (result, seen) = h
        .reconcile(rkc, Scenario::RetireShadowed { existing })
        .await;
    result.unwrap();
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        0
    );
    let status = status_of(&seen);
    assert_eq!(status.active_key_pairs.len(), 1);
    assert_eq!(status.active_key_pairs[0].key_pair_id, newer.key_pair_id);
    assert_eq!(status.key_pair_history.len(), 2);
    assert_eq!(
        status.key_pair_history[1].retired_at,
        Some(ts("2026-01-15T10:06:00Z"))
    );
}

#[tokio::test]
async fn a_lagging_cache_costs_one_list_and_no_kms_call() {
    let mut h = Harness::new();
    let rkc = resource(spec(&[ORG_A]), 1);
    let (result, seen) = h.reconcile(rkc.clone(), Scenario::Create { orgs: 1 }).await;
    result.unwrap();
    // Only the ConfigMap reached the cache; the Secret watch event has not arrived yet.
    let secrets: Vec<Secret> = seen
        .iter()
        .filter(|s| s.method == Method::POST && s.path == secrets_path())
        .map(|s| {
            let mut secret: Secret = serde_json::from_value(s.body.clone()).unwrap();
            secret.metadata.namespace = Some(NS.into());
            secret
        })
        .collect();
    let config_map_only: Vec<Seen> = seen
        .iter()
        .filter(|s| s.path == config_map_path())
        .cloned()
        .collect();
    h.cache(&config_map_only, &[]);
    h.kms.reset_calls();
    let rkc = with_status(rkc, status_of(&seen));
    let (result, seen) = h
        .reconcile(rkc, Scenario::StaleCache { existing: secrets })
        .await;
    result.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(h.kms.total_calls(), 0);
}

#[tokio::test]
async fn kms_recovery_clears_the_condition_and_keeps_the_last_error() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    h.now = ts("2026-01-15T12:00:00Z");
    h.kms
        .fail_next(KmsOperation::DescribeKey, KmsErrorKind::KeyUnavailable);
    let (result, seen) = h
        .reconcile(
            rkc.clone(),
            Scenario::KmsFailure {
                existing: secrets.clone(),
                code: "KeyUnavailableException",
                rotating: false,
            },
        )
        .await;
    result.unwrap();
    let failed = status_of(&seen);
    // A transient failure with nothing pending: the active pairs are honoured.
    assert_eq!(condition(&failed, "Ready").status, "True");
    let rkc = with_status(rkc, failed.clone());

    // Five seconds later (the first backoff), KMS answers again.
    h.now = ts("2026-01-15T12:00:05Z");
    h.kms.reset_calls();
    let (result, seen) = h.reconcile(rkc, Scenario::Recover).await;
    result.unwrap();
    assert_eq!(h.kms.calls(KmsOperation::DescribeKey), 1);
    let status = status_of(&seen);
    let kms = condition(&status, "KmsAvailable");
    assert_eq!(kms.status, "True");
    assert_eq!(kms.last_transition_time.0, ts("2026-01-15T12:00:05Z"));
    // The last error stays, marked resolved by this success.
    let resolved = status.last_kms_error.clone().unwrap();
    assert_eq!(resolved.resolved_at, Some(ts("2026-01-15T12:00:05Z")));
    assert_eq!(
        LastKmsError {
            resolved_at: None,
            ..resolved
        },
        failed.last_kms_error.unwrap()
    );
    assert_eq!(status.failed_attempts, None);
    assert_eq!(
        status.last_kms_key_check_time,
        Some(ts("2026-01-15T12:00:05Z"))
    );
}

#[tokio::test]
async fn rotate_now_is_not_repeated_after_a_crash_before_the_status_write() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let rkc = rotate_now(rkc, "t1");
    // The rotation for t1 stored its Secret (with the token), then the process died before
    // retiring the old pair and writing status.
    let mut newer = KeyPairSecret::from_secret(&secrets[0]).unwrap();
    newer.sequence = 2;
    newer.secret_name = KeyPairRecord::secret_name(&newer.config_name, &newer.organization_id, 2);
    newer.key_pair_id = kekeeper::keypair::new_key_pair_id();
    newer.reason = "RotateNowRequested".into();
    let mut newer_secret = newer.to_secret().unwrap();
    newer_secret
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("kekeeper.io/rotate-now-token".into(), "t1".into());
    newer_secret.metadata.namespace = Some(NS.into());
    let mut existing = secrets.clone();
    existing.push(newer_secret);
    h.cache(&[], &existing);
    let (result, seen) = h
        .reconcile(rkc, Scenario::AnnounceThenRetireShadowed { existing })
        .await;
    result.unwrap();
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        0,
        "no second rotation for the same token"
    );
    assert_eq!(
        h.kms.calls(KmsOperation::Decrypt),
        1,
        "the newer pair, which status has not recorded, is proven before it counts"
    );
    let status = status_of(&seen);
    assert_eq!(status.rotate_now_token.as_deref(), Some("t1"));
    assert_eq!(status.active_key_pairs[0].key_pair_id, newer.key_pair_id);
}

const NEW_ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings-2027";

/// The key pair Secret of `secret` as the cache and a list would hold it after `change`.
fn changed_secret(secret: &Secret, change: impl FnOnce(&mut KeyPairSecret)) -> Secret {
    let mut pair = KeyPairSecret::from_secret(secret).unwrap();
    change(&mut pair);
    let mut changed = pair.to_secret().unwrap();
    changed.metadata.namespace = Some(NS.into());
    changed
}

/// The Secret of a key pair made by a version that recorded no alias on the pair.
fn without_alias(secret: &Secret) -> Secret {
    changed_secret(secret, |pair| pair.kms_key_alias_arn = None)
}

/// An alias change cut short: organisation A already has its pair under the new alias (its
/// old pair retired), B's is still under the old one, and the final status write never
/// happened, so status still names the old alias. Only B gets a new pair, and the resource
/// ends with one pair per organisation under the new alias (docs/design.md, "The alias a pair
/// was made under").
#[tokio::test]
async fn an_alias_change_cut_short_replaces_only_the_pairs_still_under_the_old_alias() {
    let (mut h, mut rkc, secrets) = created(&[ORG_A, ORG_B]).await;
    // Rotation only: the rewrap of the old pairs (spec.rewrap) is tested in e2e_rewrap.
    rkc.spec.rewrap = RewrapPolicy::Never;
    let new_alias = kekeeper::arn::AliasArn::parse(NEW_ALIAS).unwrap();
    let new_key = h.kms.create_key_for(&new_alias);
    let org_of = |s: &Secret| {
        KeyPairSecret::from_secret(s)
            .unwrap()
            .organization_id
            .clone()
    };
    let a1 = secrets.iter().find(|s| org_of(s) == ORG_A).unwrap();
    let b1 = secrets.iter().find(|s| org_of(s) == ORG_B).unwrap();
    // A's new pair, made by KMS under the new key (status has not recorded it: it is proven).
    h.kms.point_alias(&new_alias, &new_key);
    let made = h
        .kms
        .generate_key_pair(
            &new_alias,
            kekeeper::kms::KeyPairSpec::Rsa2048,
            &kekeeper::kms::EncryptionContext {
                key: "genesys-cloud-organization-id".into(),
                organization_id: ORG_A.into(),
            },
        )
        .await
        .unwrap();
    h.kms.reset_calls();
    let a2 = changed_secret(a1, |pair| {
        pair.sequence = 2;
        pair.secret_name = KeyPairRecord::secret_name(NAME, ORG_A, 2);
        pair.key_pair_id = kekeeper::keypair::new_key_pair_id();
        pair.kms_key_arn = made.kms_key_arn.clone();
        pair.key_pair_spec = made.spec;
        pair.public_key_der = made.public_key_der.clone();
        pair.private_key_ciphertext = made.private_key_ciphertext.clone();
        pair.kms_key_alias_arn = Some(NEW_ALIAS.into());
        pair.reason = "SpecChanged".into();
        pair.created_at = ts("2026-01-15T10:30:00Z");
    });
    let a1_retired = changed_secret(a1, |pair| pair.retire(ts("2026-01-15T10:30:00Z")));
    // B's pair first: the one the rotation retires.
    let existing = vec![b1.clone(), a1_retired, a2.clone()];
    h.cache(&[], &existing);
    assert_eq!(
        rkc.status.as_ref().unwrap().kms_key_alias_arn.as_deref(),
        Some(ALIAS),
        "status still summarises the old alias"
    );
    rkc.spec.kms_key_alias_arn = NEW_ALIAS.into();
    rkc.meta_mut().generation = Some(2);
    h.now = ts("2026-01-15T10:31:00Z");

    let (result, seen) = h
        .reconcile(rkc, Scenario::ProveThenRotate { existing })
        .await;
    result.unwrap();
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        1,
        "A's pair under the new alias is not made again"
    );
    let created: Secret = serde_json::from_value(seen[3].body.clone()).unwrap();
    let created = KeyPairSecret::from_secret(&created).unwrap();
    assert_eq!(created.organization_id, ORG_B);
    assert_eq!(created.kms_key_alias_arn.as_deref(), Some(NEW_ALIAS));
    assert_eq!(created.reason, "SpecChanged");
    let status = status_of(&seen);
    assert_eq!(status.active_key_pairs.len(), 2);
    for active in &status.active_key_pairs {
        assert_eq!(
            active.kms_key_alias_arn.as_deref(),
            Some(NEW_ALIAS),
            "{active:?}"
        );
        assert_eq!(active.kms_key_arn, new_key);
    }
    let a2_name = a2.metadata.name.as_deref().unwrap();
    assert!(
        status
            .active_key_pairs
            .iter()
            .any(|a| a.secret_name == a2_name)
    );
    let old_entries: Vec<_> = status
        .key_pair_history
        .iter()
        .filter(|e| e.retired_at.is_some())
        .collect();
    assert_eq!(old_entries.len(), 2);
    for entry in old_entries {
        assert_eq!(entry.kms_key_alias_arn.as_deref(), Some(ALIAS), "{entry:?}");
    }
    assert_eq!(status.kms_key_alias_arn.as_deref(), Some(NEW_ALIAS));
    assert_eq!(condition(&status, "Ready").status, "True");
}

/// An upgrade from a version that recorded no alias on each pair: its pairs are taken as made
/// under the alias status summarised, so the upgraded operator rotates nothing, and a later
/// alias change still replaces them.
#[tokio::test]
async fn pairs_from_before_the_alias_was_recorded_are_kept_until_the_alias_changes() {
    let (mut h, mut rkc, secrets) = created(&[ORG_A]).await;
    // Rotation only: the rewrap of the old pairs (spec.rewrap) is tested in e2e_rewrap.
    rkc.spec.rewrap = RewrapPolicy::Never;
    let legacy: Vec<Secret> = secrets.iter().map(without_alias).collect();
    let status = rkc.status.as_mut().unwrap();
    for active in &mut status.active_key_pairs {
        active.kms_key_alias_arn = None;
    }
    for entry in &mut status.key_pair_history {
        entry.kms_key_alias_arn = None;
    }
    assert_eq!(status.kms_key_alias_arn.as_deref(), Some(ALIAS));
    h.cache(&[], &legacy);

    let (result, seen) = h.reconcile(rkc.clone(), Scenario::SteadyState).await;
    result.unwrap();
    assert!(seen.is_empty());
    assert_eq!(h.kms.total_calls(), 0);

    h.kms
        .create_key_for(&kekeeper::arn::AliasArn::parse(NEW_ALIAS).unwrap());
    rkc.spec.kms_key_alias_arn = NEW_ALIAS.into();
    rkc.meta_mut().generation = Some(2);
    let (result, seen) = h
        .reconcile(rkc, Scenario::Rotate { existing: legacy })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.key_pair_history[0].reason, "SpecChanged");
    assert_eq!(
        status.active_key_pairs[0].kms_key_alias_arn.as_deref(),
        Some(NEW_ALIAS)
    );
    // The old pair's entry claims no alias it never recorded.
    assert_eq!(status.key_pair_history[1].kms_key_alias_arn, None);
}

#[tokio::test]
async fn a_status_write_on_a_stale_view_is_redone_on_the_newer_one() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    // The cached view predates our own last write, which honoured token t2 and recorded a
    // newer self-test; only status differs, so the plan stands and status is rebuilt on the
    // newer one.
    let mut stale = rkc.clone();
    stale.metadata.resource_version = Some("100".into());
    let mut newer = rkc;
    newer.metadata.resource_version = Some("101".into());
    let newer_status = newer.status.as_mut().unwrap();
    newer_status.rotate_now_token = Some("t2".into());
    let newer_test = kekeeper::crd::LastTest {
        time: ts("2026-01-15T10:30:00Z"),
        passed: true,
        message: "newer".into(),
    };
    newer_status.last_test = Some(newer_test.clone());
    // A day and an hour on, the custody check (which lists) and the key check are due: list,
    // DescribeKey, Decrypt, then a status write.
    h.now = ts("2026-01-16T11:00:00Z");
    let (result, seen) = h
        .reconcile(
            stale,
            Scenario::Conflict {
                existing: secrets,
                newer: Box::new(newer),
            },
        )
        .await;
    result.unwrap();
    let status = status_of(&seen);
    // Nothing of the newer status rolled back.
    assert_eq!(status.rotate_now_token.as_deref(), Some("t2"));
    assert_eq!(status.last_test, Some(newer_test));
    assert_eq!(
        status.last_kms_key_check_time,
        Some(ts("2026-01-16T11:00:00Z"))
    );
    assert_eq!(h.kms.calls(KmsOperation::DescribeKey), 1);
}

#[tokio::test]
async fn a_substituted_public_key_is_reported_and_never_published() {
    use aws_lc_rs::encoding::AsDer;
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let recorded = rkc.status.as_ref().unwrap().active_key_pairs[0].clone();
    let other =
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let other_pem =
        kekeeper::keypair::public_key_pem(other.public_key().as_der().unwrap().as_ref());
    let mut tampered = secrets.clone();
    tampered[0].data.as_mut().unwrap().insert(
        "publicKey.pem".into(),
        k8s_openapi::ByteString(other_pem.into_bytes()),
    );
    h.cache(&[], &tampered);
    let (result, seen) = h
        .reconcile(
            rkc,
            Scenario::KeyPairProblem {
                reason: "PublicKeyMismatch",
                published: Box::new(h.published[0].clone()),
            },
        )
        .await;
    result.unwrap();
    assert_eq!(h.kms.total_calls(), 0);
    let status = status_of(&seen);
    let integrity = condition(&status, "KeyPairIntegrity");
    assert_eq!(
        (integrity.status.as_str(), integrity.reason.as_str()),
        ("False", "PublicKeyMismatch")
    );
    assert!(integrity.message.contains(&recorded.secret_name));
    assert_eq!(
        status.active_key_pairs[0], recorded,
        "the recorded fingerprint stays"
    );
    assert_eq!(condition(&status, "Ready").status, "True");
}

#[tokio::test]
async fn a_deleted_active_secret_is_confirmed_reported_and_replaced_under_a_new_name() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let gone = rkc.status.as_ref().unwrap().active_key_pairs[0].clone();
    assert_eq!(secrets.len(), 1);
    // The watch saw the deletion: a harness with empty caches; the list confirms it.
    let mut fresh = Harness::new();
    fresh.now = h.now;
    h = fresh;
    let (result, seen) = h.reconcile(rkc, Scenario::ReplaceDeletedActive).await;
    result.unwrap();
    let status = status_of(&seen);
    let active = &status.active_key_pairs[0];
    assert_ne!(active.secret_name, gone.secret_name);
    assert!(
        active.secret_name.ends_with("-0002"),
        "{}",
        active.secret_name
    );
    let at_risk = condition(&status, "HistoricalKeysAtRisk");
    assert_eq!(
        (at_risk.status.as_str(), at_risk.reason.as_str()),
        ("True", "KeyPairMissing")
    );
    assert!(at_risk.message.contains(&gone.secret_name) && at_risk.message.contains(ORG_A));
    let entry = status
        .key_pair_history
        .iter()
        .find(|e| e.secret_name == gone.secret_name)
        .expect("the history keeps the missing pair");
    assert!(entry.missing);
    assert_eq!(status.highest_sequences[ORG_A], 2);
}

/// The custody check runs on the listed Secrets' private key blobs, never on the cache's
/// records (which have none, and are another type): asked for with verify-now, the reconcile
/// lists the Secrets, decrypts each active blob through KMS and records the check.
#[tokio::test]
async fn the_custody_check_decrypts_the_listed_blobs() {
    let (h, rkc, secrets) = created(&[ORG_A, ORG_B]).await;
    let rkc = verify_now(rkc, "v1");
    let (result, seen) = h
        .reconcile(rkc, Scenario::VerifyCustody { existing: secrets })
        .await;
    result.unwrap();
    assert_eq!(h.kms.calls(KmsOperation::Decrypt), 2);
    let status = status_of(&seen);
    assert_eq!(status.verify_now_token.as_deref(), Some("v1"));
    assert_eq!(status.last_key_verify_time, Some(ts(NOW)));
    assert!(status.key_pair_problems.is_empty(), "{status:?}");
    assert_eq!(condition(&status, "KeyPairIntegrity").status, "True");
}

/// A multi-Region key whose home Region fails: the custody check reads through the replica
/// DescribeKey named, and status says which Region answered (docs/design.md, "Multi-Region
/// reads"); an AccessDenied of the home Region is a verdict, and no replica is asked.
#[tokio::test]
async fn the_custody_check_reads_through_a_replica_when_the_home_region_fails() {
    let mut h = Harness::new();
    let alias = kekeeper::arn::AliasArn::parse(ALIAS).unwrap();
    h.key_arn = h
        .kms
        .create_multi_region_key("aws", "us-east-1", "111122223333");
    h.kms.point_alias(&alias, &h.key_arn);
    h.kms.replicate_key(&h.key_arn, "eu-west-1");
    let rkc = resource(spec(&[ORG_A]), 1);
    let (result, seen) = h.reconcile(rkc.clone(), Scenario::Create { orgs: 1 }).await;
    result.unwrap();
    let secrets = h.cache(&seen, &[]);
    // The new pair's self-test checked the replica too, and says so.
    let created = status_of(&seen);
    let last_test = created.last_test.clone().unwrap();
    assert!(
        last_test.message.ends_with("; replicas: eu-west-1 ok"),
        "{}",
        last_test.message
    );
    assert_eq!(h.kms.decrypts_in("eu-west-1"), 1);
    let rkc = with_status(rkc, created);

    h.kms.fail_region("us-east-1", KmsErrorKind::Network);
    let (result, seen) = h
        .reconcile(
            verify_now(rkc.clone(), "v1"),
            Scenario::VerifyCustody {
                existing: secrets.clone(),
            },
        )
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.verify_now_token.as_deref(), Some("v1"));
    let read = status.last_key_verify_replica_read.clone().unwrap();
    assert_eq!(
        (
            read.region.as_str(),
            read.home_region.as_str(),
            read.home_error.as_str()
        ),
        ("eu-west-1", "us-east-1", "NetworkError")
    );
    let integrity = condition(&status, "KeyPairIntegrity");
    assert_eq!(integrity.status, "True");
    assert!(
        integrity.message.ends_with(
            "through replica in eu-west-1: the home Region us-east-1 failed with NetworkError"
        ),
        "{}",
        integrity.message
    );
    assert_eq!(h.kms.decrypts_in("eu-west-1"), 2);

    h.kms.clear_failures();
    h.kms.fail_region("us-east-1", KmsErrorKind::AccessDenied);
    let (result, seen) = h
        .reconcile(
            verify_now(with_status(rkc, status), "v2"),
            Scenario::VerifyCustody { existing: secrets },
        )
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.verify_now_token.as_deref(), Some("v1"));
    assert_eq!(
        status.last_kms_error.as_ref().map(|e| e.code.as_str()),
        Some("AccessDeniedException")
    );
    assert_eq!(h.kms.decrypts_in("eu-west-1"), 2);
}

/// A 409 on the status write whose newer resource has another spec: no status from the plan
/// made on the older resource is written; the reconcile plans again on the newer one (a new
/// generation with another key pair spec: a rotation) and every later write is for it.
#[tokio::test]
async fn a_conflict_with_a_changed_spec_plans_again_on_the_newer_resource() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let mut stale = rkc.clone();
    stale.metadata.resource_version = Some("100".into());
    let mut fresh = rkc;
    fresh.metadata.resource_version = Some("101".into());
    fresh.metadata.generation = Some(2);
    fresh.spec.key_pair_spec = KeyPairSpec::Rsa3072;
    // A day and an hour on, the custody and key checks are due on the stale view: its status
    // write meets the new spec.
    h.now = ts("2026-01-16T11:00:00Z");
    let (result, seen) = h
        .reconcile(
            stale,
            Scenario::ConflictReplan {
                existing: secrets,
                fresh: Box::new(fresh),
            },
        )
        .await;
    result.unwrap();
    let writes: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == Method::PATCH && s.path == status_path())
        .collect();
    assert_eq!(writes.len(), 3);
    // The rejected write was the old plan's; every write after it is the new plan's.
    assert_eq!(writes[0].body["metadata"]["resourceVersion"], "100");
    assert_eq!(writes[0].body["status"]["observedGeneration"], 1);
    for write in &writes[1..] {
        assert_eq!(write.body["metadata"]["resourceVersion"], "101");
        assert_eq!(
            write.body["status"]["observedGeneration"], 2,
            "{}",
            write.body
        );
    }
    let status = status_of(&seen);
    assert_eq!(status.active_key_pairs.len(), 1);
    assert_eq!(
        status.active_key_pairs[0].key_pair_spec,
        KeyPairSpec::Rsa3072
    );
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        1
    );
}

/// Hours of steady state: a resource whose state does not change makes no API request at all
/// (no status write to move lastKmsKeyCheckTime, no Secret list) across several key-check
/// intervals; KMS is asked once per interval (in the operator, once per alias for all
/// resources), and each reconcile requeues for the next check.
#[tokio::test]
async fn hours_of_steady_state_make_no_request() {
    let (mut h, rkc, _) = created(&[ORG_A, ORG_B]).await;
    let recorded = rkc.status.clone();
    for hour in 1..=6 {
        h.now = ts(NOW) + jiff::SignedDuration::from_hours(hour);
        let (result, seen) = h.reconcile(rkc.clone(), Scenario::SteadyState).await;
        assert!(seen.is_empty(), "hour {hour}: {seen:?}");
        assert_eq!(h.kms.calls(KmsOperation::DescribeKey), hour as usize);
        assert_eq!(
            result.unwrap(),
            kube::runtime::controller::Action::requeue(Duration::from_secs(3600)),
            "hour {hour}"
        );
    }
    assert_eq!(h.kms.total_calls(), 6);
    assert_eq!(rkc.status, recorded);
}

const STORE: &str = "s3://acme-keys/prod";

/// With the key store down, a rotation waits: the store cannot be listed, so nothing is
/// generated and nothing becomes active; Ready=False names the store, the backoff comes from
/// status. Back up, the rotation completes and every retained pair is in the store.
#[tokio::test]
async fn with_the_store_down_a_rotation_waits_and_resumes() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let objects = MemoryObjects::new();
    objects.set_down(true);
    h.store = Some(objects.clone());
    let rkc = rotate_now(rkc, "t1");
    let (result, seen) = h
        .reconcile(
            rkc.clone(),
            Scenario::StoreFailure {
                existing: secrets.clone(),
            },
        )
        .await;
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
    let status = status_of(&seen);
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "KeyStoreUnavailable")
    );
    assert!(
        ready
            .message
            .contains("key store s3://acme-keys/prod: ListObjectsV2"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&status, "Reconciling").status, "True");
    assert_eq!(
        condition(&status, "KeyStoreSynced").reason,
        "KeyStoreUnavailable"
    );
    assert_eq!(status.rotate_now_token, None);
    assert_eq!(status.failed_attempts, Some(1));
    assert_eq!(
        status.active_key_pairs,
        rkc.status.as_ref().unwrap().active_key_pairs
    );
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        0
    );

    // The store is back and the backoff over: the rotation completes, both pairs stored.
    objects.set_down(false);
    h.cache(&seen, &secrets);
    h.now = ts("2026-01-15T10:00:10Z");
    let rkc = with_status(rkc, status);
    let (result, seen) = h
        .reconcile(rkc, Scenario::Rotate { existing: secrets })
        .await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status.rotate_now_token.as_deref(), Some("t1"));
    let synced = condition(&status, "KeyStoreSynced");
    assert_eq!(
        (synced.status.as_str(), synced.message.as_str()),
        ("True", "2/2 key pairs stored in s3://acme-keys/prod")
    );
    let keys: Vec<String> = objects.objects().into_keys().collect();
    assert_eq!(
        keys.len(),
        3,
        "two pairs and the old one's retirement marker: {keys:?}"
    );
}

/// The store answers but refuses the new pair's object: the pair was generated and
/// self-tested, and still never becomes active (no Secret); the error names the write.
#[tokio::test]
async fn a_pair_the_store_refuses_never_becomes_active() {
    let (mut h, rkc, secrets) = created(&[ORG_A]).await;
    let objects = MemoryObjects::new();
    objects.set_refuse_puts(true);
    h.store = Some(objects.clone());
    let (result, seen) = h
        .reconcile(
            rotate_now(rkc, "t1"),
            Scenario::StoreFailure { existing: secrets },
        )
        .await;
    result.unwrap();
    let status = status_of(&seen);
    let ready = condition(&status, "Ready");
    assert_eq!(ready.reason, "KeyStoreUnavailable");
    assert!(
        ready.message.contains("PutObject") && ready.message.contains("AccessDenied"),
        "{}",
        ready.message
    );
    assert_eq!(
        h.kms
            .calls(KmsOperation::GenerateDataKeyPairWithoutPlaintext),
        1
    );
    assert_eq!(status.active_key_pairs.len(), 1);
    assert_eq!(status.rotate_now_token, None);
    assert!(objects.objects().is_empty());
}
