//! End-to-end harness: kube-sim in-process, kubectl against it, and the real `kekeeper run` as
//! a child process. Everything lives in one temporary directory; every process started here is
//! killed on drop, and a failing test prints the operator log.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root (where `crds/` and `target/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kubectl_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return path.into();
    }
    let out = Command::new(repo_root().join("scripts/kubectl.sh"))
        .output()
        .expect("scripts/kubectl.sh");
    assert!(out.status.success(), "scripts/kubectl.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// The API server under a test: kube-sim in-process, or the real control plane that
/// `scripts/control-plane.sh` started for the whole run (`KEKEEPER_TEST_CLUSTER=real`, its state
/// directory in `KEKEEPER_CONTROL_PLANE`). docs/testing.md says which test runs where.
pub enum Server {
    Sim(kube_sim::Running),
    Real(Real),
}

/// One test's share of the shared real control plane: namespaces of its own (named with a
/// suffix no other test uses) and the API server's audit log read as its request log.
pub struct Real {
    state: PathBuf,
    url: String,
    ca_pem: String,
    suffix: String,
    client: kube::Client,
    /// Where the request log starts (`clear_request_log` moves it): a byte offset in audit.log.
    audit_mark: std::sync::Mutex<u64>,
    /// Namespaces and cluster-scoped objects this test made, deleted when it ends.
    made: std::sync::Mutex<Vec<String>>,
}

/// True when the suite runs against the real control plane.
pub fn real_server() -> bool {
    match std::env::var("KEKEEPER_TEST_CLUSTER").as_deref() {
        Ok("real") => true,
        Ok("sim") | Err(_) => false,
        Ok(other) => panic!("KEKEEPER_TEST_CLUSTER={other}: expected real or sim"),
    }
}

pub struct Cluster {
    pub server: Server,
    pub dir: tempfile::TempDir,
    /// The admin kubeconfig (its context's namespace is the test's namespace, `ns()`).
    pub kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// `rbac` as the test asked for it: without, service accounts are bound to cluster-admin
    /// on the real server (which always enforces RBAC), as kube-sim without RBAC allows all.
    rbac: bool,
}

impl Cluster {
    /// The suite's server: the real control plane under `KEKEEPER_TEST_CLUSTER=real`, else
    /// kube-sim (with RBAC enforced when `rbac`; the real server always enforces it).
    pub async fn start(rbac: bool) -> Cluster {
        if real_server() {
            Cluster::start_real(rbac).await
        } else {
            Cluster::start_sim(rbac).await
        }
    }

    /// kube-sim whichever server the suite runs on: for the tests that need a fault only
    /// kube-sim makes (each caller says which in one line).
    pub async fn start_sim(rbac: bool) -> Cluster {
        let sim = kube_sim::Server::start(kube_sim::Options {
            rbac,
            ..Default::default()
        })
        .await
        .expect("kube-sim start");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Cluster {
            server: Server::Sim(sim),
            dir,
            kubeconfig,
            kubectl: kubectl_path(),
            rbac,
        }
    }

    async fn start_real(rbac: bool) -> Cluster {
        let state = PathBuf::from(std::env::var_os("KEKEEPER_CONTROL_PLANE").expect(
            "KEKEEPER_TEST_CLUSTER=real needs KEKEEPER_CONTROL_PLANE: run scripts/test.sh, or \
             eval \"$(scripts/control-plane.sh start)\"",
        ));
        let admin = std::fs::read_to_string(state.join("admin.kubeconfig"))
            .expect("the control plane's admin kubeconfig");
        let port = std::fs::read_to_string(state.join("apiserver-port")).expect("apiserver-port");
        let ca_pem = std::fs::read_to_string(state.join("ca.crt")).expect("ca.crt");
        let suffix = super::unique("t")[2..].to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let namespace = format!("default-{suffix}");
        std::fs::write(
            &kubeconfig,
            admin.replace("namespace: default", &format!("namespace: {namespace}")),
        )
        .expect("write kubeconfig");
        let client = client_for(&kubeconfig).await;
        let audit_len = std::fs::metadata(state.join("audit.log")).map_or(0, |m| m.len());
        let cluster = Cluster {
            server: Server::Real(Real {
                url: format!("https://127.0.0.1:{}", port.trim()),
                state,
                ca_pem,
                suffix,
                client,
                audit_mark: std::sync::Mutex::new(audit_len),
                made: std::sync::Mutex::new(Vec::new()),
            }),
            dir,
            kubeconfig,
            kubectl: kubectl_path(),
            rbac,
        };
        cluster.create_namespace(&namespace).await;
        cluster
    }

    pub fn is_real(&self) -> bool {
        matches!(self.server, Server::Real(_))
    }

    /// kube-sim, for what only it has (faults, its own store); panics on the real server.
    pub fn sim(&self) -> &kube_sim::Running {
        match &self.server {
            Server::Sim(sim) => sim,
            Server::Real(_) => panic!("this test needs kube-sim: start it with Cluster::start_sim"),
        }
    }

    /// The test's own name for namespace `name`, created if missing: `name` on kube-sim,
    /// `name-<suffix>` on the shared real server, so parallel tests never meet.
    pub async fn namespace(&self, name: &str) -> String {
        match &self.server {
            Server::Sim(_) => {
                // AlreadyExists (for `default`, or a second call) is what we want.
                self.kubectl(&["create", "namespace", name]).await;
                name.to_owned()
            }
            Server::Real(real) => {
                let namespace = format!("{name}-{}", real.suffix);
                self.create_namespace(&namespace).await;
                namespace
            }
        }
    }

    /// The test's main namespace (kubectl's and `rkc_manifest`'s): `default` on kube-sim.
    pub fn ns(&self) -> String {
        match &self.server {
            Server::Sim(_) => "default".to_owned(),
            Server::Real(real) => format!("default-{}", real.suffix),
        }
    }

    /// A name for a cluster-scoped object that no other test uses (unchanged on kube-sim).
    pub fn cluster_name(&self, name: &str) -> String {
        match &self.server {
            Server::Sim(_) => name.to_owned(),
            Server::Real(real) => format!("{name}-{}", real.suffix),
        }
    }

    async fn create_namespace(&self, namespace: &str) {
        let Server::Real(real) = &self.server else {
            return;
        };
        if real.made.lock().unwrap().iter().any(|n| n == namespace) {
            return;
        }
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": namespace}});
        let request = http::Request::post("/api/v1/namespaces")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        match real.client.request::<Value>(request).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create namespace {namespace}: {e}"),
        }
        real.made.lock().unwrap().push(namespace.to_owned());
        // ServiceAccount admission refuses pods, and TokenRequest needs the account: wait for
        // the controller-manager's `default` ServiceAccount, as a real cluster user would.
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/default");
        eventually(
            &format!("ServiceAccount default in {namespace}"),
            Duration::from_secs(30),
            || async { real_get(&real.client, &path).await },
        )
        .await;
    }

    /// kube-sim without RBAC (on the real server: the service account bound to cluster-admin),
    /// the CRD installed, and a kubeconfig for the operator's own identity (so the request log
    /// tells it apart from kubectl): (cluster, kubeconfig, user).
    pub async fn with_operator_identity() -> (Cluster, PathBuf, String) {
        let cluster = Cluster::start(false).await;
        let (kubeconfig, user) = cluster
            .service_account_kubeconfig("kekeeper-system", "kekeeper")
            .await;
        cluster.install_crd().await;
        (cluster, kubeconfig, user)
    }

    /// As [`Self::with_operator_identity`], always on a kube-sim of its own (a second cluster
    /// beside the suite's server).
    pub async fn with_operator_identity_on_sim() -> (Cluster, PathBuf, String) {
        let cluster = Cluster::start_sim(false).await;
        let (kubeconfig, user) = cluster
            .service_account_kubeconfig("kekeeper-system", "kekeeper")
            .await;
        cluster.install_crd().await;
        (cluster, kubeconfig, user)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A kubeconfig for a service account, `namespace` as `namespace()` names it (kube-sim
    /// issues the token itself; the real server through the TokenRequest API); returns (path,
    /// user). Without `rbac`, the real server's account is bound to cluster-admin.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> (PathBuf, String) {
        let namespace = self.namespace(namespace).await;
        self.service_account_kubeconfig_in(&namespace, name).await
    }

    /// As `service_account_kubeconfig`, in a namespace that exists under exactly this name.
    pub async fn service_account_kubeconfig_in(
        &self,
        namespace: &str,
        name: &str,
    ) -> (PathBuf, String) {
        let namespace = namespace.to_owned();
        let (token, url, ca_pem) = match &self.server {
            Server::Sim(sim) => (
                sim.service_account_token(&namespace, name),
                sim.url(),
                sim.ca_pem(),
            ),
            Server::Real(real) => {
                let account = format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
                );
                self.apply_ok(&account).await;
                if !self.rbac {
                    let binding = self.cluster_name(&format!("{name}-cluster-admin"));
                    self.apply_ok(&format!(
                        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {binding}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: {namespace}\n"
                    ))
                    .await;
                    self.forget_later(&format!("clusterrolebinding/{binding}"));
                }
                let token = self
                    .kubectl_ok(&["create", "token", name, "-n", &namespace, "--duration=2h"])
                    .await;
                (
                    token.trim().to_owned(),
                    real.url.clone(),
                    real.ca_pem.clone(),
                )
            }
        };
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let path = self.path(&format!("kubeconfig-{namespace}-{name}"));
        // The context's namespace is the test's main one, as in the admin kubeconfig.
        std::fs::write(
            &path,
            kube_sim::kubeconfig_yaml(&url, &ca_pem, &token, &user)
                .replace("namespace: default", &format!("namespace: {}", self.ns())),
        )
        .expect("write kubeconfig");
        (path, user)
    }

    /// Faults for the requests made through `kubeconfig` (a service account's, from
    /// `service_account_kubeconfig`): kube-sim injects them itself; on the real server a
    /// `kube_sim::FaultProxy` in front of it does, and the returned kubeconfig points there.
    pub async fn with_faults(&self, kubeconfig: &Path) -> (PathBuf, Faults) {
        match &self.server {
            Server::Sim(sim) => (kubeconfig.to_owned(), Faults::Sim(sim.faults())),
            Server::Real(real) => {
                let config: Value =
                    serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
                let user = &config["users"][0];
                let token = user["user"]["token"].as_str().expect("a token kubeconfig");
                let proxy = kube_sim::FaultProxy::start(&real.url, &real.ca_pem)
                    .await
                    .expect("start the fault proxy");
                let path = kubeconfig.with_extension("faults");
                std::fs::write(
                    &path,
                    kube_sim::kubeconfig_yaml(
                        &proxy.url(),
                        &proxy.ca_pem(),
                        token,
                        user["name"].as_str().unwrap(),
                    )
                    .replace("namespace: default", &format!("namespace: {}", self.ns())),
                )
                .expect("write kubeconfig");
                (path, Faults::Proxy(proxy))
            }
        }
    }

    /// A cluster-scoped object (`kind/name`, as kubectl names it) the test made, deleted when
    /// the test ends on the real server.
    pub fn forget_later(&self, object: &str) {
        if let Server::Real(real) = &self.server {
            real.made.lock().unwrap().push(object.to_owned());
        }
    }

    /// The admin's user name in the request log.
    pub fn admin_user(&self) -> &'static str {
        match &self.server {
            Server::Sim(_) => "kube-sim-admin",
            Server::Real(_) => "kekeeper-admin",
        }
    }

    /// One object as JSON, or None when it does not exist.
    pub async fn object(
        &self,
        api_group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        match &self.server {
            Server::Sim(sim) => sim.object(api_group, resource, namespace, name),
            Server::Real(real) => {
                let collection = collection_path(api_group, resource, Some(namespace));
                real_get(&real.client, &format!("{collection}/{name}")).await
            }
        }
    }

    /// Every object of a resource, in one namespace or all.
    pub async fn objects(
        &self,
        api_group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Vec<Value> {
        match &self.server {
            Server::Sim(sim) => sim.objects(api_group, resource, namespace),
            Server::Real(real) => {
                let path = collection_path(api_group, resource, namespace);
                real_get(&real.client, &path)
                    .await
                    .and_then(|list| list["items"].as_array().cloned())
                    .unwrap_or_default()
            }
        }
    }

    /// How many objects of a resource satisfy `keep` (kube-sim counts in place).
    pub async fn count(
        &self,
        api_group: &str,
        resource: &str,
        namespace: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> usize {
        match &self.server {
            Server::Sim(sim) => sim.count(api_group, resource, namespace, keep),
            Server::Real(_) => self
                .objects(api_group, resource, namespace)
                .await
                .iter()
                .filter(|o| keep(o))
                .count(),
        }
    }

    /// The API requests since the start or the last `clear_request_log`: kube-sim's own log,
    /// or the real API server's audit log (every test's requests: filter by user, namespace).
    pub fn request_log(&self) -> Vec<kube_sim::RequestRecord> {
        match &self.server {
            Server::Sim(sim) => sim.request_log(),
            Server::Real(real) => {
                let mark = *real.audit_mark.lock().unwrap();
                read_audit_log(&real.state.join("audit.log"), mark)
            }
        }
    }

    pub fn clear_request_log(&self) {
        match &self.server {
            Server::Sim(sim) => sim.clear_request_log(),
            Server::Real(real) => {
                let len = std::fs::metadata(real.state.join("audit.log")).map_or(0, |m| m.len());
                *real.audit_mark.lock().unwrap() = len;
            }
        }
    }

    /// Runs kubectl as admin, optionally with `stdin`.
    pub async fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .arg("--cache-dir")
            .arg(self.path("kubectl-cache"))
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kubectl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input.as_bytes())
                .await
                .expect("kubectl stdin");
        }
        let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl");
        Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        }
    }

    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(args, None).await
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.success,
            "kubectl {args:?} failed:\n{}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// `kubectl apply -f -` of a manifest.
    pub async fn apply(&self, manifest: &str) -> Output {
        self.kubectl_in(&["apply", "-f", "-"], Some(manifest)).await
    }

    pub async fn apply_ok(&self, manifest: &str) {
        let out = self.apply(manifest).await;
        assert!(
            out.success,
            "kubectl apply failed:\n{}{}\n{manifest}",
            out.stdout, out.stderr
        );
    }

    /// Applies the CRD from `crds/` and waits for Established. On the shared real server the
    /// CRD is shared too: a server-side apply, which tests running at once may repeat.
    pub async fn install_crd(&self) {
        let crds = repo_root().join("crds");
        let crds = crds.to_str().unwrap();
        if self.is_real() {
            self.kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kekeeper-tests",
                "-f",
                crds,
            ])
            .await;
        } else {
            self.kubectl_ok(&["apply", "-f", crds]).await;
        }
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/recordingkeyconfigs.kekeeper.io",
            "--timeout=30s",
        ])
        .await;
    }

    /// `kubectl get ARGS -o json`, parsed.
    /// `kubectl wait --for=condition=Ready rkc/NAME` in `default`, as a user would.
    pub async fn wait_ready(&self, name: &str) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("rkc/{name}"),
            "--timeout=60s",
        ])
        .await;
    }

    pub async fn get_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all).await).expect("kubectl JSON")
    }

    /// The key pair Secrets of a RecordingKeyConfig in the test's namespace.
    pub async fn key_pair_secrets(&self, config: &str) -> Vec<Value> {
        self.objects("", "secrets", Some(&self.ns()))
            .await
            .into_iter()
            .filter(|s| s["metadata"]["labels"]["kekeeper.io/config"] == config)
            .collect()
    }

    /// Starts `kekeeper run` with `args` (the metrics address is added unless given), the
    /// kubeconfig and the KMS endpoint; stdout and stderr go to `<log_name>.log`.
    pub fn start_operator(
        &self,
        log_name: &str,
        kubeconfig: &Path,
        kms_endpoint: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Operator {
        let log = self.path(&format!("{log_name}.log"));
        let file = std::fs::File::create(&log).expect("operator log");
        // `KEKEEPER_TEST_OPERATOR_WRAPPER=heaptrack` (say) runs the operator under a profiler.
        // A wrapper (heaptrack forks the operator) gets a process group of its own, so that
        // killing it kills the operator too.
        let wrapper = std::env::var("KEKEEPER_TEST_OPERATOR_WRAPPER")
            .ok()
            .filter(|w| !w.is_empty());
        let mut command = match &wrapper {
            Some(wrapper) => {
                let mut command = Command::new(wrapper);
                command.arg(env!("CARGO_BIN_EXE_kekeeper")).process_group(0);
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_kekeeper")),
        };
        command.arg("run");
        if !args.iter().any(|a| a.starts_with("--metrics-addr")) {
            command.arg("--metrics-addr=127.0.0.1:0");
        }
        if self.is_real() {
            // The shared server: the operator watches the test's namespace only, and its
            // Lease lives there (unless the test says otherwise).
            if !args
                .iter()
                .any(|a| a.starts_with("--namespace") || a == "-n")
            {
                command.arg(format!("--namespace={}", self.ns()));
            }
            command.env("KEKEEPER_LEASE_NAMESPACE", self.ns());
        }
        command
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ENDPOINT_URL_KMS", kms_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", super::REGION)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file);
        let child = command.spawn().expect("spawn kekeeper run");
        Operator {
            child: Some(child),
            log,
            wrapped: wrapper.is_some(),
        }
    }
}

/// The address of the operator's `serving /healthz, /readyz, /metrics addr=HOST:PORT` log line.
fn metrics_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("serving /healthz"))?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some(addr.to_owned())
}

/// Status code and body of an HTTP/1.1 GET, or None when nothing answers.
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A running `kekeeper run`; killed (SIGKILL) on drop. Prints its log when the test panics.
/// Faults injected into one client's requests: by kube-sim, or by a fault proxy in front of
/// the real server (`Cluster::with_faults`).
pub enum Faults {
    Sim(kube_sim::Faults),
    Proxy(kube_sim::FaultProxy),
}

impl Faults {
    pub fn inject(&self, fault: kube_sim::ErrorFault) {
        match self {
            Faults::Sim(faults) => faults.inject(fault),
            Faults::Proxy(proxy) => proxy.inject(fault),
        }
    }

    /// Clears every injected fault.
    pub fn clear(&self) {
        match self {
            Faults::Sim(faults) => faults.clear(),
            Faults::Proxy(proxy) => proxy.clear(),
        }
    }

    /// Ends every open watch of the client.
    pub fn drop_watches(&self) {
        match self {
            Faults::Sim(faults) => faults.drop_watches(),
            Faults::Proxy(proxy) => proxy.drop_watches(),
        }
    }

    /// The client's requests with the codes it was answered, injected errors included.
    pub fn request_log(&self, cluster: &Cluster) -> Vec<kube_sim::RequestRecord> {
        match self {
            Faults::Sim(_) => cluster.request_log(),
            Faults::Proxy(proxy) => proxy.request_log(),
        }
    }
}

pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    /// Started under `KEKEEPER_TEST_OPERATOR_WRAPPER`, in a process group of its own.
    wrapped: bool,
}

impl Operator {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the operator answers 200 on `/readyz` (its caches have synced), reading the
    /// metrics address it bound from its log.
    pub async fn wait_ready(&mut self) {
        let log = self.log.clone();
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = metrics_addr(&text)
                && matches!(http_get(&addr, "/readyz").await, Some((200, _)))
            {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("kekeeper run exited ({status}) before it was ready");
            }
            assert!(
                Instant::now() < deadline,
                "kekeeper run: /readyz not 200 after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The body of a 200 answer to GET `path` on the operator's metrics address.
    pub async fn get(&self, path: &str) -> String {
        let addr = metrics_addr(&self.log_text()).expect("the operator logged its metrics address");
        match http_get(&addr, path).await {
            Some((200, body)) => body,
            other => panic!("GET {path} on {addr}: {other:?}"),
        }
    }

    /// SIGTERM, as Kubernetes stops a pod.
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {}", child.id());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The exit status once the process has ended, or None while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// The timestamps of the log lines that contain `message` (the text format's first field).
    pub fn logged_at(&self, message: &str) -> Vec<jiff::Timestamp> {
        self.log_text()
            .lines()
            .filter(|line| line.contains(message))
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.wrapped {
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- operator log {} -----\n{}\n----- end of operator log -----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Polls `probe` every 200 ms until it returns Some, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `user` has made no write request for `quiet`, at most `timeout`. Lease writes
/// (leader election's renewals, every 2 s) are not the controller's work and do not count.
pub async fn settle(cluster: &Cluster, user: &str, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let writes = || {
        cluster
            .request_log()
            .iter()
            .filter(|r| r.user == user && r.is_write() && r.resource != "leases")
            .count()
    };
    let mut seen = writes();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = writes();
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} still writing after {timeout:?}"
        );
    }
}

/// A RecordingKeyConfig manifest without a namespace: kubectl puts it in its context's, the
/// test's namespace (`Cluster::ns`).
pub fn rkc_manifest(name: &str, alias: &str, organization_ids: &[&str]) -> String {
    rkc_manifest_in("", name, alias, organization_ids).replace("  namespace: \n", "")
}

pub fn rkc_manifest_in(
    namespace: &str,
    name: &str,
    alias: &str,
    organization_ids: &[&str],
) -> String {
    let ids: String = organization_ids
        .iter()
        .map(|id| format!("    - {id}\n"))
        .collect();
    format!(
        "apiVersion: kekeeper.io/v1alpha1\nkind: RecordingKeyConfig\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  kmsKeyAliasArn: {alias}\n  organizationIds:\n{ids}  keyPairSpec: RSA_2048\n  rotation:\n    period: Monthly\n"
    )
}

/// The condition `type_`'s status in a RecordingKeyConfig JSON.
/// (active, retired) among key pair Secrets, by their `kekeeper.io/state` label.
pub fn count_states(secrets: &[Value]) -> (usize, usize) {
    let count = |state: &str| {
        secrets
            .iter()
            .filter(|s| s["metadata"]["labels"]["kekeeper.io/state"] == state)
            .count()
    };
    (count("active"), count("retired"))
}

pub fn condition(rkc: &Value, type_: &str) -> Option<String> {
    rkc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_owned)
}

/// The documents of `target/chart-renders/<case>.yaml` (or `$KEKEEPER_CHART_RENDERS_DIR`),
/// which `scripts/chart-test.sh` renders with the real Helm engine; a missing render fails.
pub fn chart_render(case: &str) -> Vec<Value> {
    use serde::Deserialize;
    let dir = std::env::var_os("KEKEEPER_CHART_RENDERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/chart-renders"));
    let path = dir.join(format!("{case}.yaml"));
    // A missing render fails the test, in CI or not: a test that returns early passes falsely.
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/chart-test.sh first (it renders the Helm chart)",
            path.display()
        )
    });
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("render YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// An admin client from a kubeconfig.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

/// The API version a test reads of each group.
fn group_version(api_group: &str) -> String {
    match api_group {
        "" => "v1".to_owned(),
        "kekeeper.io" => "kekeeper.io/v1alpha1".to_owned(),
        group => format!("{group}/v1"),
    }
}

/// `/api/v1/namespaces/NS/secrets`, `/apis/kekeeper.io/v1alpha1/recordingkeyconfigs`, ...
fn collection_path(api_group: &str, resource: &str, namespace: Option<&str>) -> String {
    let root = match api_group {
        "" => "/api/v1".to_owned(),
        _ => format!("/apis/{}", group_version(api_group)),
    };
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{root}/namespaces/{ns}/{resource}"),
        _ => format!("{root}/{resource}"),
    }
}

/// GET `path` as JSON; None on 404.
async fn real_get(client: &kube::Client, path: &str) -> Option<Value> {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request::<Value>(request).await {
        Ok(value) => Some(value),
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// The audit log's events from byte `from`, as request records: one per request, at the
/// ResponseComplete stage, except a watch, which counts when it starts (ResponseStarted: it
/// completes only when it ends) unless it was refused. A line still being written is left for
/// the next read.
fn read_audit_log(path: &Path, from: u64) -> Vec<kube_sim::RequestRecord> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).expect("audit.log");
    file.seek(std::io::SeekFrom::Start(from)).expect("seek");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read audit.log");
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| {
            // A refused watch never starts: its ResponseComplete is the record.
            let refused = event["responseStatus"]["code"].as_u64().unwrap_or(0) >= 300;
            event["stage"] == "ResponseStarted" || event["verb"] != "watch" || refused
        })
        .map(|event| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let object = &event["objectRef"];
            let verb = s(&event["verb"]);
            let method = match verb.as_str() {
                "get" | "list" | "watch" => "GET",
                "create" => "POST",
                "update" => "PUT",
                "patch" => "PATCH",
                "delete" | "deletecollection" => "DELETE",
                other => other,
            };
            kube_sim::RequestRecord {
                method: method.to_owned(),
                path: s(&event["requestURI"]),
                verb,
                api_group: s(&object["apiGroup"]),
                resource: s(&object["resource"]),
                subresource: s(&object["subresource"]),
                namespace: s(&object["namespace"]),
                name: s(&object["name"]),
                user: s(&event["user"]["username"]),
                code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                time: s(&event["stageTimestamp"]),
                user_agent: s(&event["userAgent"]),
            }
        })
        .collect()
}

impl Drop for Cluster {
    /// On the shared real server: the test's namespaces and cluster-scoped objects go (not
    /// waited for: the namespace controller finishes the work).
    fn drop(&mut self) {
        let Server::Real(real) = &self.server else {
            return;
        };
        let made = std::mem::take(&mut *real.made.lock().unwrap());
        for object in made {
            let target = if object.contains('/') {
                object
            } else {
                format!("namespace/{object}")
            };
            let _ = Command::new(&self.kubectl)
                .args(["delete", &target, "--wait=false", "--ignore-not-found"])
                .env("KUBECONFIG", &self.kubeconfig)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
