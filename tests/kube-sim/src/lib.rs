//! kube-sim: a Kubernetes API server simulator for kekeeper's tests and demos.
//!
//! It serves the kinds the operator and kubectl need (namespaces, secrets, configmaps, events,
//! leases, service accounts, RBAC, CRDs and their custom resources) over plain HTTP on
//! 127.0.0.1, with watch, server-side apply, CRD schema and CEL validation, server-side tables,
//! RBAC, a request log and fault injection. Dev-only: never linked into the operator.

mod cel;
mod discovery;
mod errors;
mod patch;
mod proto;
mod proxy;
mod rbac;
mod registry;
mod schema;
mod selectors;
mod server;
mod ssa;
mod store;
mod table;
mod tls;
mod validation;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::proxy::FaultProxy;

use crate::errors::ApiError;
use crate::rbac::Attributes;
use crate::server::{FaultState, Sim};

/// Server options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Enforce RBAC for every token but the admin token.
    pub rbac: bool,
    /// Address to bind; must be loopback. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Number of watch events kept; older resourceVersions answer 410 Gone.
    pub watch_cache_size: usize,
    /// Admin bearer token; random when None.
    pub admin_token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rbac: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(60),
            watch_cache_size: 1000,
            admin_token: None,
        }
    }
}

/// One served request, as recorded in the request log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection); the
    /// lower-cased HTTP method for non-resource paths.
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Authenticated user name; empty when unauthenticated.
    pub user: String,
    /// HTTP status code of the response.
    pub code: u16,
    pub time: String,
    /// The request's `User-Agent` header; empty without one.
    #[serde(default)]
    pub user_agent: String,
}

impl RequestRecord {
    /// create, update, patch, delete or deletecollection.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// A forced error answer for matching requests. Unset matchers match anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorFault {
    pub verb: Option<String>,
    pub api_group: Option<String>,
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Authenticated user name (e.g. `system:serviceaccount:ns:sa`), to fail only one client.
    pub user: Option<String>,
    /// HTTP status code to answer (e.g. 500, 503, 429, 409, 403).
    pub code: u16,
    /// Status reason; derived from the code when None.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// How many requests to fail; None: until cleared.
    pub times: Option<u32>,
}

impl ErrorFault {
    fn matches(&self, a: &Attributes, user: &str) -> bool {
        let m = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w == have);
        m(&self.user, user)
            && m(&self.verb, &a.verb)
            && m(&self.api_group, &a.group)
            && m(&self.resource, &a.resource)
            && m(&self.subresource, &a.subresource)
            && m(&self.namespace, &a.namespace)
            && m(&self.name, &a.name)
    }

    fn to_error(&self, a: &Attributes) -> ApiError {
        let reason = self.reason.clone().unwrap_or_else(|| {
            match self.code {
                400 => "BadRequest",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                410 => "Expired",
                422 => "Invalid",
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "InternalError",
            }
            .to_string()
        });
        let message = self.message.clone().unwrap_or_else(|| {
            format!("kube-sim injected fault: {} {} failed", a.verb, a.resource)
        });
        let mut e = ApiError::new(self.code, &reason, message);
        if self.code == 429 {
            e = e.with_details(json!({"retryAfterSeconds": 1}));
        }
        e
    }
}

/// Body of `POST /_sim/faults`; every field optional, applied in order: clear, latencyMs,
/// error/errors, dropWatches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultRequest {
    pub clear: bool,
    pub latency_ms: Option<u64>,
    pub error: Option<ErrorFault>,
    pub errors: Vec<ErrorFault>,
    pub drop_watches: bool,
}

fn faults_lock(sim: &Sim) -> std::sync::MutexGuard<'_, FaultState> {
    sim.faults.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn apply_fault_request(sim: &Sim, fr: FaultRequest) {
    {
        let mut f = faults_lock(sim);
        if fr.clear {
            *f = FaultState::default();
        }
        if let Some(ms) = fr.latency_ms {
            f.latency = Duration::from_millis(ms);
        }
        f.errors.extend(fr.error);
        f.errors.extend(fr.errors);
    }
    if fr.drop_watches {
        sim.drop_watches.send_modify(|n| *n += 1);
    }
}

pub(crate) fn fault_summary(sim: &Sim) -> Value {
    let f = faults_lock(sim);
    json!({"latencyMs": f.latency.as_millis() as u64, "errors": f.errors})
}

/// Fault injection handle.
#[derive(Clone)]
pub struct Faults(Arc<Sim>);

impl Faults {
    /// Delays every API request by `latency` (zero disables).
    pub fn set_latency(&self, latency: Duration) {
        faults_lock(&self.0).latency = latency;
    }
    /// Answers matching requests with an error (for `times` requests, or until cleared).
    pub fn inject(&self, fault: ErrorFault) {
        faults_lock(&self.0).errors.push(fault);
    }
    /// Ends every open watch stream (clients see the connection close and must re-watch).
    pub fn drop_watches(&self) {
        self.0.drop_watches.send_modify(|n| *n += 1);
    }
    /// Removes latency and pending errors.
    pub fn clear(&self) {
        *faults_lock(&self.0) = FaultState::default();
    }
}

/// Entry point.
pub struct Server;

impl Server {
    /// Binds `opts.listen` (127.0.0.1:0 by default) and serves in the background until the
    /// returned handle is dropped.
    pub async fn start(opts: Options) -> std::io::Result<Running> {
        if !opts.listen.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "kube-sim binds loopback addresses only",
            ));
        }
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, _) = tokio::sync::broadcast::channel(8192);
        let (drop_tx, _) = tokio::sync::watch::channel(0u64);
        let admin_token = opts
            .admin_token
            .clone()
            .unwrap_or_else(|| format!("kube-sim-admin.{}", uuid::Uuid::new_v4().simple()));
        let sim = Arc::new(Sim {
            state: Mutex::new(store::State::new(opts.watch_cache_size, tx.clone())),
            tx,
            rbac: opts.rbac,
            bookmark_interval: opts.bookmark_interval.max(Duration::from_millis(10)),
            admin_token,
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(FaultState::default()),
            drop_watches: drop_tx,
            addr: Mutex::new(addr.to_string()),
        });
        let tls = tls::generate()?;
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(sim.clone());
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let acceptor = acceptor.clone();
                        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                        connections.spawn(async move {
                            let Ok(tls_stream) = acceptor.accept(stream).await else { return };
                            let io = hyper_util::rt::TokioIo::new(tls_stream);
                            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = &mut stop_rx => break,
                }
            }
            connections.abort_all();
        });
        Ok(Running {
            sim,
            addr,
            ca_pem: tls.ca_pem,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A running simulator; dropping it stops the server and ends open watches.
pub struct Running {
    sim: Arc<Sim>,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// PEM of the CA that signed the serving certificate (also in the kubeconfig).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bearer token of user `kube-sim-admin` (group `system:masters`).
    pub fn admin_token(&self) -> String {
        self.sim.admin_token.clone()
    }

    /// Kubeconfig YAML for the admin user (context `kube-sim`, namespace `default`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(
            &self.url(),
            &self.ca_pem,
            &self.sim.admin_token,
            "kube-sim-admin",
        )
    }

    /// Kubeconfig YAML for another bearer token (e.g. a service account token).
    pub fn kubeconfig_for_token(&self, token: &str) -> String {
        kubeconfig_yaml(&self.url(), &self.ca_pem, token, "user")
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Every request served so far (except `/_sim/*`), oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.sim
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn clear_request_log(&self) {
        self.sim
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn faults(&self) -> Faults {
        Faults(self.sim.clone())
    }

    /// Issues a token for a service account directly (the account need not exist).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let token = format!("kube-sim.{namespace}.{}", uuid::Uuid::new_v4().simple());
        self.sim
            .state()
            .tokens
            .insert(token.clone(), rbac::User::service_account(namespace, name));
        token
    }

    /// A stored object as JSON (`api_group` "" for core; events of both groups are stored as
    /// core/v1 events). `namespace` is "" for cluster-scoped kinds.
    pub fn object(
        &self,
        api_group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (
            api_group.to_string(),
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.sim.state().objects.get(&key).cloned()
    }

    /// Stored objects of one resource, in one namespace or all (sorted by namespace and name).
    pub fn objects(&self, api_group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        self.sim
            .state()
            .list(api_group, resource, namespace)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// How many objects of a kind `keep` accepts, without copying them (for polling many).
    pub fn count(
        &self,
        api_group: &str,
        resource: &str,
        namespace: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> usize {
        self.sim.state().count(api_group, resource, namespace, keep)
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.sim.state().rv
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.sim.drop_watches.send_modify(|n| *n += 1);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A kubeconfig for `url`, trusting `ca_pem`, authenticating with a bearer token.
pub fn kubeconfig_yaml(url: &str, ca_pem: &str, token: &str, user: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: {user}\n    namespace: default\ncurrent-context: kube-sim\npreferences: {{}}\n"
    )
}
