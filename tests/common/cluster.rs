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

fn kubectl_path() -> PathBuf {
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

pub struct Cluster {
    pub sim: kube_sim::Running,
    pub dir: tempfile::TempDir,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl Cluster {
    pub async fn start(rbac: bool) -> Cluster {
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
            sim,
            dir,
            kubeconfig,
            kubectl: kubectl_path(),
        }
    }

    /// kube-sim without RBAC, the CRD installed, and a kubeconfig for the operator's own
    /// identity (so the request log tells it apart from kubectl): (cluster, kubeconfig, user).
    pub async fn with_operator_identity() -> (Cluster, PathBuf, String) {
        let cluster = Cluster::start(false).await;
        let (kubeconfig, user) = cluster.service_account_kubeconfig("kekeeper-system", "kekeeper");
        cluster.install_crd().await;
        (cluster, kubeconfig, user)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A kubeconfig for a service account (token issued by kube-sim); returns (path, user).
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> (PathBuf, String) {
        let token = self.sim.service_account_token(namespace, name);
        let path = self.path(&format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(&path, self.sim.kubeconfig_for_token(&token)).expect("write kubeconfig");
        (path, format!("system:serviceaccount:{namespace}:{name}"))
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

    /// Applies the CRD from `crds/` and waits for Established.
    pub async fn install_crd(&self) {
        let crds = repo_root().join("crds");
        self.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()])
            .await;
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

    /// The key pair Secrets of a RecordingKeyConfig in `default` (from the simulator's store).
    pub fn key_pair_secrets(&self, config: &str) -> Vec<Value> {
        self.sim
            .objects("", "secrets", Some("default"))
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
pub async fn settle(sim: &kube_sim::Running, user: &str, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let writes = || {
        sim.request_log()
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

/// A RecordingKeyConfig manifest in `default`.
pub fn rkc_manifest(name: &str, alias: &str, organization_ids: &[&str]) -> String {
    rkc_manifest_in("default", name, alias, organization_ids)
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
/// which `scripts/chart-test.sh` renders with the real Helm engine. Missing: a failure under
/// CI, otherwise None with a SKIPPED message.
pub fn chart_render(case: &str) -> Option<Vec<Value>> {
    use serde::Deserialize;
    let dir = std::env::var_os("KEKEEPER_CHART_RENDERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/chart-renders"));
    let path = dir.join(format!("{case}.yaml"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        let message = format!(
            "{} is missing; run scripts/chart-test.sh (it renders the Helm chart)",
            path.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
        return None;
    };
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).expect("render YAML"))
            .filter(|doc| !doc.is_null())
            .collect(),
    )
}
