//! The real kubectl against the `kube-sim` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KUBECTL: &str = "/usr/bin/kubectl";

/// A running `kube-sim` process, killed on drop.
struct Sim {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Sim {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kc)
            .args(["--bookmark-interval-secs", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("kube-sim listening on ")
            .expect("first stdout line")
            .to_string();
        Self { child, dir, url }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path().join("home"))
            .env_remove("KUBERNETES_SERVICE_HOST");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs kubectl and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl and asserts failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs kubectl with `input` on stdin; returns its output.
    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn install_crd(&self) {
        let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crd.yaml");
        self.ok(&["apply", "-f", crd.to_str().unwrap()]);
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "crd/recordingkeyconfigs.kekeeper.io",
            "--timeout=10s",
        ]);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A background kubectl, killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CR: &str = "apiVersion: kekeeper.io/v1alpha1
kind: RecordingKeyConfig
metadata:
  name: demo
spec:
  kmsKeyAliasArn: arn:aws:kms:us-east-1:111122223333:alias/recordings
  organizationIds: [3fa85f64-5717-4562-b3fc-2c963f66afa6]
  rotation: {period: Weekly}
  keyPairSpec: RSA_3072
";

// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn apply_get_tables_and_output_formats() {
    let sim = Sim::start(&[]);
    assert!(sim.url.starts_with("https://127.0.0.1:"));
    sim.install_crd();
    let cr = sim.write("cr.yaml", CR);
    assert!(
        sim.ok(&["apply", "-f", &cr])
            .contains("recordingkeyconfig.kekeeper.io/demo created")
    );
    assert!(sim.ok(&["apply", "-f", &cr]).contains("unchanged"));
    let table = sim.ok(&["get", "rkc"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ALIAS", "PERIOD", "READY", "AGE"]);
    assert!(
        table.contains("arn:aws:kms:us-east-1:111122223333:alias/recordings")
            && table.contains("Weekly")
    );
    assert!(sim.ok(&["get", "kekeeper"]).contains("demo"));
    assert!(
        sim.ok(&["get", "recordingkeyconfigs.kekeeper.io", "-A"])
            .contains("default")
    );
    assert_eq!(
        sim.ok(&["get", "rkc", "demo", "-o", "jsonpath={.spec.keyPairSpec}"]),
        "RSA_3072"
    );
    let yaml = sim.ok(&["get", "rkc", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("encryptionContextKey: genesys-cloud-organization-id")
            && yaml.contains("generation: 1")
    );
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["get", "rkc", "-o", "json"])).unwrap();
    assert_eq!(json["items"][0]["metadata"]["name"], "demo");
    // Server-side apply, with a conflict against client-side apply's manager.
    assert!(
        sim.ok(&["apply", "--server-side", "-f", &cr])
            .contains("serverside-applied")
    );
    let changed = sim.write("cr2.yaml", &CR.replace("Weekly", "Daily"));
    let err = sim.fails(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &changed,
    ]);
    assert!(
        err.contains(
            // kubectl migrated client-side-apply ownership to "kubectl" on its first --server-side.
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.rotation.period"
        ),
        "{err}"
    );
    assert!(
        sim.ok(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            &changed
        ])
        .contains("serverside-applied")
    );
    assert_eq!(
        sim.ok(&[
            "get",
            "rkc",
            "demo",
            "-o",
            "jsonpath={.spec.rotation.period} {.metadata.generation}"
        ]),
        "Daily 2"
    );
    // Built-in kinds: typed clients send protobuf bodies.
    sim.ok(&["create", "secret", "generic", "s1", "--from-literal=a=b"]);
    let secrets = sim.ok(&["get", "secrets"]);
    assert!(
        secrets
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "TYPE", "DATA", "AGE"])
    );
    assert!(secrets.contains("Opaque"));
    assert_eq!(
        sim.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.a}"]),
        "Yg=="
    );
    sim.ok(&["create", "namespace", "team"]);
    sim.ok(&[
        "create",
        "configmap",
        "c1",
        "-n",
        "team",
        "--from-literal=x=y",
    ]);
    assert!(sim.ok(&["get", "cm", "-A"]).contains("team"));
    let describe = sim.ok(&["describe", "rkc", "demo"]);
    assert!(describe.contains("Kms Key Alias Arn"), "{describe}");
}

// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn invalid_resources_show_field_errors() {
    let sim = Sim::start(&[]);
    sim.install_crd();
    let bad = sim.write(
        "bad.yaml",
        &CR.replace("alias/recordings", "key/1234")
            .replace("Weekly", "Hourly")
            .replace("keyPairSpec: RSA_3072", "keyPairSpec: RSA_3072\n  foo: bar"),
    );
    let err = sim.fails(&["apply", "-f", &bad]);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.foo\""),
        "{err}"
    );
    let bad = sim.write(
        "bad2.yaml",
        &CR.replace("alias/recordings", "key/1234")
            .replace("Weekly", "Hourly"),
    );
    let err = sim.fails(&["apply", "-f", &bad]);
    assert!(
        err.contains("The RecordingKeyConfig \"demo\" is invalid"),
        "{err}"
    );
    assert!(err.contains("spec.rotation.period: Unsupported value: \"Hourly\": supported values: \"Daily\", \"Weekly\", \"Monthly\", \"Yearly\", \"Never\""), "{err}");
    assert!(
        err.contains("some validation rules were not checked"),
        "{err}"
    );
    let bad = sim.write("bad3.yaml", &CR.replace("alias/recordings", "key/1234"));
    let err = sim.fails(&["apply", "-f", &bad]);
    assert!(
        err.contains("spec.kmsKeyAliasArn: Invalid value: \"arn:aws:kms:us-east-1:111122223333:key/1234\": must be a KMS alias ARN"),
        "{err}"
    );
    // Nothing was stored; dry-run validates without storing.
    assert!(
        sim.fails(&["get", "rkc", "demo"])
            .contains("recordingkeyconfigs.kekeeper.io \"demo\" not found")
    );
    let cr = sim.write("cr.yaml", CR);
    sim.ok(&["apply", "--dry-run=server", "-f", &cr]);
    assert!(sim.fails(&["get", "rkc", "demo"]).contains("not found"));
}

// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn watch_wait_label_annotate_patch_replace_delete() {
    let sim = Sim::start(&[]);
    sim.install_crd();
    let cr = sim.write("cr.yaml", CR);
    sim.ok(&["apply", "-f", &cr]);
    let watch_out = sim.dir.path().join("watch.out");
    let watch = Background(
        sim.cmd(&["get", "rkc", "-w"])
            .stdout(std::fs::File::create(&watch_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait = sim
        .cmd(&["wait", "--for=condition=Ready", "rkc/demo", "--timeout=20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    sim.ok(&[
        "patch", "rkc", "demo", "--subresource=status", "--type=merge",
        "-p", r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KeyPairsActive","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
    ]);
    let waited = wait.wait_with_output().unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stdout).contains("condition met"));
    sim.ok(&["label", "rkc", "demo", "team=voice"]);
    sim.ok(&["annotate", "rkc", "demo", "kekeeper.io/rotate-now=t1"]);
    assert_eq!(
        sim.ok(&[
            "get",
            "rkc",
            "-l",
            "team=voice",
            "-o",
            "jsonpath={.items[*].metadata.name}"
        ]),
        "demo"
    );
    assert_eq!(
        sim.ok(&[
            "get",
            "rkc",
            "demo",
            "-o",
            "jsonpath={.metadata.annotations.kekeeper\\.io/rotate-now}"
        ]),
        "t1"
    );
    // Patch types on a built-in kind and replace.
    sim.ok(&["create", "configmap", "c", "--from-literal=a=1"]);
    sim.ok(&["patch", "configmap", "c", "-p", r#"{"data":{"b":"2"}}"#]);
    sim.ok(&[
        "patch",
        "configmap",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"a":null}}"#,
    ]);
    sim.ok(&[
        "patch",
        "configmap",
        "c",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
    ]);
    assert_eq!(
        sim.ok(&["get", "configmap", "c", "-o", "jsonpath={.data}"]),
        r#"{"b":"2","c":"3"}"#
    );
    let cm = sim
        .ok(&["get", "configmap", "c", "-o", "yaml"])
        .replace("c: \"3\"", "c: \"4\"");
    let cm_file = sim.write("cm.yaml", &cm);
    sim.ok(&["replace", "-f", &cm_file]);
    let err = sim.fails(&["replace", "-f", &cm_file]);
    assert!(err.contains("the object has been modified"), "{err}");
    sim.ok(&["delete", "rkc", "demo"]);
    assert!(sim.ok(&["get", "rkc"]).is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = std::fs::read_to_string(&watch_out).unwrap_or_default();
        if seen.lines().filter(|l| l.starts_with("demo")).count() >= 4 || Instant::now() > deadline
        {
            assert!(
                seen.lines().next().unwrap_or_default().starts_with("NAME"),
                "{seen}"
            );
            assert!(
                seen.lines().filter(|l| l.starts_with("demo")).count() >= 4,
                "{seen}"
            );
            assert!(seen.contains("True"), "{seen}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(watch);
}

// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn rbac_tokens_and_forbidden() {
    let sim = Sim::start(&["--rbac"]);
    sim.ok(&["create", "serviceaccount", "bot"]);
    let token = sim.ok(&["create", "token", "bot"]).trim().to_string();
    let err = sim.fails(&["--token", &token, "get", "secrets"]);
    assert!(
        err.contains(r#"secrets is forbidden: User "system:serviceaccount:default:bot" cannot list resource "secrets" in API group "" in the namespace "default""#),
        "{err}"
    );
    sim.ok(&[
        "create",
        "role",
        "reader",
        "--verb=get,list,watch",
        "--resource=secrets",
    ]);
    sim.ok(&[
        "create",
        "rolebinding",
        "bot-reader",
        "--role=reader",
        "--serviceaccount=default:bot",
    ]);
    sim.ok(&["--token", &token, "get", "secrets"]);
    let err = sim.fails(&[
        "--token",
        &token,
        "create",
        "secret",
        "generic",
        "x",
        "--from-literal=a=b",
    ]);
    assert!(err.contains("cannot create resource \"secrets\""), "{err}");
    // Impersonation and SelfSubjectAccessReview (`kubectl auth can-i`), as chart RBAC tests use.
    let sa = "system:serviceaccount:default:bot";
    assert_eq!(
        sim.ok(&["auth", "can-i", "list", "secrets", "--as", sa])
            .trim(),
        "yes"
    );
    let out = sim.run(&["auth", "can-i", "delete", "secrets", "--as", sa]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let err = sim.fails(&["get", "configmaps", "--as", sa]);
    assert!(
        err.contains(
            r#"User "system:serviceaccount:default:bot" cannot list resource "configmaps""#
        ),
        "{err}"
    );
    let err = sim.fails(&["--token", "nonsense", "get", "secrets"]);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn sim_endpoints_over_http() {
    let sim = Sim::start(&[]);
    sim.ok(&["get", "ns"]);
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&sim.ok(&["get", "--raw", "/_sim/requests"])).unwrap();
    assert!(
        log.iter()
            .any(|r| r["verb"] == "list" && r["resource"] == "namespaces" && r["code"] == 200)
    );
    // Each record keeps the client's User-Agent.
    assert!(
        log.iter().all(|r| r["userAgent"]
            .as_str()
            .is_some_and(|a| a.starts_with("kubectl"))),
        "{log:?}"
    );
    sim.ok(&["delete", "--raw", "/_sim/requests"]);
    let fault = sim.write("fault.json", r#"{"error": {"verb": "list", "resource": "configmaps", "code": 500, "message": "boom", "times": 1}}"#);
    sim.ok(&["create", "--raw", "/_sim/faults", "-f", &fault]);
    let err = sim.fails(&["get", "cm"]);
    assert!(err.contains("boom"), "{err}");
    sim.ok(&["get", "cm"]);
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&sim.ok(&["get", "--raw", "/_sim/requests"])).unwrap();
    assert!(
        log.iter()
            .any(|r| r["resource"] == "configmaps" && r["code"] == 500)
    );
}

// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn binary_exits_cleanly_on_sigterm() {
    let mut sim = Sim::start(&[]);
    let pid = sim.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(code) = sim.child.try_wait().unwrap() {
            assert!(code.success(), "{code:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kube-sim did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kubectl apply -f` of a `kind: List`: kubectl validates a List client-side against
/// `/openapi/v2` (protobuf), then applies each item (still with server-side field validation).
// Sim-only: drives the kube-sim binary itself (its flags, its kubeconfig, its process).
#[test]
fn apply_lists() {
    let sim = Sim::start(&[]);
    let stdout = |out: &Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let builtins = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: listed-cm
  data:
    colour: blue
- apiVersion: v1
  kind: Secret
  metadata:
    name: listed-secret
  stringData:
    password: hunter2
";
    let out = stdout(&sim.run_stdin(&["apply", "-f", "-"], builtins));
    assert!(
        out.contains("configmap/listed-cm created") && out.contains("secret/listed-secret created"),
        "{out}"
    );
    assert_eq!(
        sim.ok(&["get", "cm", "listed-cm", "-o", "jsonpath={.data.colour}"]),
        "blue"
    );
    assert_eq!(
        sim.ok(&[
            "get",
            "secret",
            "listed-secret",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "aHVudGVyMg=="
    );
    let file = sim.write("builtins.yaml", builtins);
    assert!(
        sim.ok(&["apply", "-f", &file])
            .contains("configmap/listed-cm unchanged")
    );
    let out = sim.ok(&["apply", "--server-side", "-f", &file]);
    assert!(
        out.contains("configmap/listed-cm serverside-applied")
            && out.contains("secret/listed-secret serverside-applied"),
        "{out}"
    );

    sim.install_crd();
    let custom = format!(
        "apiVersion: v1
kind: List
items:
- {}- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: listed-cm2
  data:
    k: v
",
        CR.replace("name: demo", "name: listed-rkc")
            .lines()
            .collect::<Vec<_>>()
            .join("\n  ")
            + "\n"
    );
    let out = stdout(&sim.run_stdin(&["apply", "-f", "-"], &custom));
    assert!(
        out.contains("recordingkeyconfig.kekeeper.io/listed-rkc created")
            && out.contains("configmap/listed-cm2 created"),
        "{out}"
    );
    assert_eq!(
        sim.ok(&[
            "get",
            "rkc",
            "listed-rkc",
            "-o",
            "jsonpath={.spec.rotation.period} {.spec.keyPairSpec}"
        ]),
        "Weekly RSA_3072"
    );
    assert_eq!(
        sim.ok(&["get", "cm", "listed-cm2", "-o", "jsonpath={.data.k}"]),
        "v"
    );
    let out = stdout(&sim.run_stdin(&["apply", "-f", "-"], &custom));
    assert!(
        out.contains("recordingkeyconfig.kekeeper.io/listed-rkc unchanged"),
        "{out}"
    );
    // Items are still validated by the server (strict field validation).
    let out = sim.run_stdin(
        &["apply", "-f", "-"],
        &custom.replace("keyPairSpec", "keyPairSpek"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"unknown field "spec.keyPairSpek""#), "{err}");
}
