#![allow(dead_code)]

//! One harness for kube-sim's API tests, against either server: kube-sim in-process (the
//! default) or the real control plane `scripts/control-plane.sh` started
//! (`KEKEEPER_TEST_CLUSTER=real`, its admin kubeconfig in `KEKEEPER_CONTROL_PLANE` or
//! `KUBECONFIG`). The same test body runs on both; where they differ the test asserts what both
//! share and the README's "Differences from a real API server" says why.
//!
//! On the shared real server a test owns namespaces named with a suffix no other test uses, its
//! cluster-scoped objects (CRDs with a group of their own, ClusterRoles, ...) are named the same
//! way, and all of them are deleted when the harness drops, also when the test panics.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kube_sim::{Options, Running, Server};
use serde_json::{Value, json};

pub const CRD: &str = include_str!("../fixtures/crd.yaml");

/// The ConfigMap the real controller-manager's root-ca-cert-publisher puts in every namespace
/// (kube-sim has no such controller).
pub const ROOT_CA: &str = "kube-root-ca.crt";

/// The server under a test.
pub enum Target {
    Sim(Running),
    Real(Real),
}

/// The shared real control plane, as its admin kubeconfig reaches it.
pub struct Real {
    kubeconfig: String,
    url: String,
    ca_pem: String,
}

/// True when the tests run against the real control plane.
pub fn real_server() -> bool {
    match std::env::var("KEKEEPER_TEST_CLUSTER").as_deref() {
        Ok("real") => true,
        Ok("sim") | Err(_) => false,
        Ok(other) => panic!("KEKEEPER_TEST_CLUSTER={other}: expected real or sim"),
    }
}

pub struct Harness {
    pub target: Target,
    /// The admin (kube-sim's admin token; the real server's `system:masters` certificate).
    pub client: Client,
    /// Appended to namespace and cluster-scoped names on the real server; empty on kube-sim.
    suffix: String,
    /// API paths of what this test made on the real server, deleted on drop.
    made: Mutex<Vec<String>>,
}

impl Harness {
    /// The tests' server: the real control plane under `KEKEEPER_TEST_CLUSTER=real`, else
    /// kube-sim (RBAC enforced when `rbac`; the real server always enforces it).
    pub async fn start(rbac: bool) -> Harness {
        if real_server() {
            Harness::start_real().await
        } else {
            Harness::start_sim(rbac).await
        }
    }

    /// kube-sim whichever server the tests run on, for what only kube-sim has (each caller
    /// says what in one line).
    pub async fn start_sim(rbac: bool) -> Harness {
        let sim = Server::start(Options {
            rbac,
            bookmark_interval: Duration::from_millis(200),
            watch_cache_size: 50,
            ..Options::default()
        })
        .await
        .expect("start kube-sim");
        let client = client_from_yaml(&sim.kubeconfig()).await;
        Harness {
            target: Target::Sim(sim),
            client,
            suffix: String::new(),
            made: Mutex::new(Vec::new()),
        }
    }

    async fn start_real() -> Harness {
        let path = match std::env::var_os("KEKEEPER_CONTROL_PLANE") {
            Some(state) => PathBuf::from(state).join("admin.kubeconfig"),
            None => PathBuf::from(std::env::var_os("KUBECONFIG").expect(
                "KEKEEPER_TEST_CLUSTER=real needs KEKEEPER_CONTROL_PLANE or KUBECONFIG: \
                 eval \"$(scripts/control-plane.sh start)\"",
            )),
        };
        let kubeconfig = std::fs::read_to_string(&path).expect("the admin kubeconfig");
        let parsed = Kubeconfig::from_yaml(&kubeconfig).expect("admin kubeconfig");
        let cluster = parsed.clusters[0].cluster.as_ref().expect("cluster");
        let url = cluster.server.clone().expect("server");
        let ca_pem = {
            use base64::Engine;
            let data = cluster
                .certificate_authority_data
                .as_ref()
                .expect("certificate-authority-data");
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64");
            String::from_utf8(pem).expect("PEM")
        };
        let client = client_from_yaml(&kubeconfig).await;
        let suffix = format!("-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        Harness {
            target: Target::Real(Real {
                kubeconfig,
                url,
                ca_pem,
            }),
            client,
            suffix,
            made: Mutex::new(Vec::new()),
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self.target, Target::Real(_))
    }

    /// kube-sim, for what only it has (faults, its request log, its store); panics on real.
    pub fn sim(&self) -> &Running {
        match &self.target {
            Target::Sim(sim) => sim,
            Target::Real(_) => panic!("this test needs kube-sim: start it with start_sim"),
        }
    }

    /// A name no other test on the server uses: `name` on kube-sim, `name-<suffix>` on real.
    pub fn name(&self, name: &str) -> String {
        format!("{name}{}", self.suffix)
    }

    /// The test's own namespace `name`: `name` on kube-sim (where `default` exists and a test
    /// creates any other itself), `name-<suffix>` on real, created there with the controller-
    /// manager's `default` ServiceAccount and `kube-root-ca.crt` waited for, as a user would.
    pub async fn namespace(&self, name: &str) -> String {
        if !self.is_real() {
            return name.to_owned();
        }
        let namespace = self.name(name);
        let path = format!("/api/v1/namespaces/{namespace}");
        if self.made.lock().unwrap().contains(&path) {
            return namespace;
        }
        self.create(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        )
        .await;
        for waited in [
            format!("{path}/serviceaccounts/default"),
            format!("{path}/configmaps/{ROOT_CA}"),
        ] {
            eventually(&waited, || async { self.get(&waited).await }).await;
        }
        namespace
    }

    /// Delete the object at this API path when the test ends (on the real server).
    pub fn forget_later(&self, path: String) {
        if self.is_real() {
            self.made.lock().unwrap().push(path);
        }
    }

    /// POST `body` to `collection` as the admin; the object is deleted when the test ends.
    pub async fn create(&self, collection: &str, body: Value) -> Value {
        let name = body["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        let request = http::Request::post(collection)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        let made = self
            .client
            .request::<Value>(request)
            .await
            .unwrap_or_else(|e| panic!("create {collection}/{name}: {e}"));
        self.forget_later(format!("{collection}/{name}"));
        made
    }

    /// GET a path as the admin; None when it is not found.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        match self.client.request::<Value>(request).await {
            Ok(value) => Some(value),
            Err(kube::Error::Api(e)) if e.code == 404 => None,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// The server's current resource version: kube-sim's counter; on real, a list's.
    pub async fn resource_version(&self) -> u64 {
        match &self.target {
            Target::Sim(sim) => sim.resource_version(),
            Target::Real(_) => {
                let list = self.get("/api/v1/namespaces?limit=1").await.unwrap();
                list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            }
        }
    }

    /// A client that authenticates with `token` (kube-sim's or the real server's).
    pub async fn token_client(&self, token: &str) -> Client {
        let (url, ca_pem) = match &self.target {
            Target::Sim(sim) => (sim.url(), sim.ca_pem()),
            Target::Real(real) => (real.url.clone(), real.ca_pem.clone()),
        };
        client_from_yaml(&kube_sim::kubeconfig_yaml(&url, &ca_pem, token, "user")).await
    }

    /// A client for ServiceAccount `name` in `namespace` (as `namespace()` names it): kube-sim
    /// issues a token itself; the real server through the TokenRequest API, the account made
    /// first.
    pub async fn service_account(&self, namespace: &str, name: &str) -> Client {
        let token = match &self.target {
            Target::Sim(sim) => sim.service_account_token(namespace, name),
            Target::Real(_) => {
                let accounts = format!("/api/v1/namespaces/{namespace}/serviceaccounts");
                self.create(
                    &accounts,
                    json!({"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": name}}),
                )
                .await;
                let request = http::Request::post(format!("{accounts}/{name}/token"))
                    .header("content-type", "application/json")
                    .body(
                        serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1",
                                                   "kind": "TokenRequest", "spec": {}}))
                        .unwrap(),
                    )
                    .unwrap();
                let answer: Value = self.client.request(request).await.expect("TokenRequest");
                answer["status"]["token"].as_str().unwrap().to_owned()
            }
        };
        self.token_client(&token).await
    }

    /// The CRD fixture installed under a group of the test's own on the real server
    /// (`kekeeper.io` on kube-sim), Established and served.
    pub async fn install_crd(&self) -> Crd {
        let crd = Crd {
            group: if self.is_real() {
                format!("k{}.kekeeper.io", &self.suffix[1..])
            } else {
                "kekeeper.io".to_owned()
            },
        };
        let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        self.create(path, crd.definition()).await;
        let this = format!("{path}/{}", crd.name());
        eventually(&format!("{} Established", crd.name()), || async {
            let crd = self.get(&this).await?;
            let conditions = crd["status"]["conditions"].as_array()?;
            conditions
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
                .then_some(())
        })
        .await;
        let served = format!("/apis/{}/v1alpha1/recordingkeyconfigs", crd.group);
        eventually(&format!("{served} served"), || async {
            self.get(&served).await.map(|_| ())
        })
        .await;
        crd
    }

    /// The admin kubeconfig (kube-sim's, or the real server's).
    pub fn kubeconfig(&self) -> String {
        match &self.target {
            Target::Sim(sim) => sim.kubeconfig(),
            Target::Real(real) => real.kubeconfig.clone(),
        }
    }
}

impl Drop for Harness {
    /// On the real server: what the test made goes, newest first (namespaces are finished by
    /// the namespace controller; not waited for). A runtime of its own on a thread of its own,
    /// since the test's runtime may be the one dropping.
    fn drop(&mut self) {
        let Target::Real(real) = &self.target else {
            return;
        };
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        if made.is_empty() {
            return;
        }
        let kubeconfig = real.kubeconfig.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = client_from_yaml(&kubeconfig).await;
                for path in made.iter().rev() {
                    let request = http::Request::delete(path.as_str())
                        .body(Vec::new())
                        .unwrap();
                    let _ = client.request::<Value>(request).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The CRD fixture under a group of one test's own.
pub struct Crd {
    pub group: String,
}

impl Crd {
    pub fn name(&self) -> String {
        format!("recordingkeyconfigs.{}", self.group)
    }

    pub fn api_version(&self) -> String {
        format!("{}/v1alpha1", self.group)
    }

    /// The fixture, its group replaced.
    pub fn definition(&self) -> Value {
        let mut crd: Value = serde_yaml::from_str(CRD).expect("crd yaml");
        crd["metadata"]["name"] = json!(self.name());
        crd["spec"]["group"] = json!(self.group);
        crd
    }

    pub fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(&self.group, "v1alpha1", "RecordingKeyConfig"),
            "recordingkeyconfigs",
        )
    }

    pub fn api(&self, client: &Client, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), ns, &self.resource())
    }

    /// A valid RecordingKeyConfig named `name`.
    pub fn rkc(&self, name: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": self.api_version(),
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

    /// The kind as the API server names it in messages: `RecordingKeyConfig.GROUP`.
    pub fn qualified_kind(&self) -> String {
        format!("RecordingKeyConfig.{}", self.group)
    }
}

pub fn crd_api(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    )
}

pub async fn client_from_yaml(yaml: &str) -> Client {
    let kc = Kubeconfig::from_yaml(yaml).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// Polls `probe` until it answers, for what the real server's controllers do after the write
/// (kube-sim does most of it within the write, so there the first probe answers).
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Object names in a list, without the real server's `kube-root-ca.crt`.
pub fn names<K: kube::Resource + Clone>(list: kube::core::ObjectList<K>) -> Vec<String> {
    list.items
        .into_iter()
        .filter_map(|o| o.meta().name.clone())
        .filter(|n| n != ROOT_CA)
        .collect()
}

/// The `Status` of a failed call.
pub fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
