//! The fleet measurements (issue: fleet scale), shared by `tests/fleet.rs` (CI, 100 resources,
//! counts only) and `benches/fleet.rs` (`scripts/bench-fleet.sh`, release build, the table):
//! many RecordingKeyConfigs created at once, the real `kekeeper run` against kube-sim, its KMS
//! calls read from its own `/metrics`, its API requests from kube-sim's request log, its memory
//! from `/proc`. Also a fast in-process KMS stand-in for runs too large for LocalStack's key
//! generation rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::Engine;
use futures::StreamExt;
use kekeeper::crd::RecordingKeyConfig;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::cluster::{Cluster, Operator};

/// Organisation `i`'s id (a UUID, as the default context key wants).
pub fn org(i: usize) -> String {
    format!("3fa85f64-5717-4562-b3fc-{i:012x}")
}

/// An admin client of the cluster.
pub async fn client(cluster: &Cluster) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// Creates `n` RecordingKeyConfigs `{prefix}-{i}` in the client's namespace (the test's
/// main one, `Cluster::ns`), one organisation each, all
/// under `alias`, 32 requests at a time.
pub async fn create(client: &Client, prefix: &str, n: usize, alias: &str) {
    let api: Api<RecordingKeyConfig> = Api::default_namespaced(client.clone());
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let rkc: RecordingKeyConfig = serde_json::from_value(json!({
                    "apiVersion": "kekeeper.io/v1alpha1", "kind": "RecordingKeyConfig",
                    "metadata": {"name": format!("{prefix}-{i}")},
                    "spec": {"kmsKeyAliasArn": alias, "organizationIds": [org(i)],
                             "keyPairSpec": "RSA_2048"},
                }))
                .expect("manifest");
                api.create(&PostParams::default(), &rkc)
                    .await
                    .expect("create");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// Sets a rotate-now token on `{prefix}-{i}` for `i` in `0..n`.
pub async fn rotate_now(client: &Client, prefix: &str, n: usize, token: &str) {
    annotate(client, prefix, n, "kekeeper.io/rotate-now", token).await;
}

/// Sets annotation `key` to `value` on `{prefix}-{i}` for `i` in `0..n`.
pub async fn annotate(client: &Client, prefix: &str, n: usize, key: &str, value: &str) {
    let api: Api<RecordingKeyConfig> = Api::default_namespaced(client.clone());
    let patch = json!({"metadata": {"annotations": {key: value}}});
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, patch) = (api.clone(), patch.clone());
            async move {
                api.patch(
                    &format!("{prefix}-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .expect("annotate");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// How many RecordingKeyConfigs satisfy `done`.
pub async fn count(cluster: &Cluster, done: impl Fn(&Value) -> bool) -> usize {
    cluster
        .count(
            "kekeeper.io",
            "recordingkeyconfigs",
            Some(&cluster.ns()),
            done,
        )
        .await
}

pub fn is_ready(object: &Value) -> bool {
    object["metadata"]["generation"] == object["status"]["observedGeneration"]
        && super::cluster::condition(object, "Ready").as_deref() == Some("True")
}

/// Waits until `n` resources satisfy `done`; the time it took, or None after `timeout`.
pub async fn wait_for(
    cluster: &Cluster,
    n: usize,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    // Counting reads every object (under kube-sim's lock): poll a large fleet less often.
    let every = Duration::from_millis(if n > 1000 { 2000 } else { 200 });
    while start.elapsed() < timeout {
        if count(cluster, &done).await >= n {
            return Some(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// The operator's KMS calls so far: (operation, outcome) -> count, from its `/metrics`.
pub async fn kms_calls(operator: &Operator) -> BTreeMap<(String, String), u64> {
    metric_family(&operator.get("/metrics").await, "kekeeper_kms_calls_total")
        .into_iter()
        .map(|(labels, value)| {
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            ((label("operation"), label("outcome")), value as u64)
        })
        .collect()
}

/// Waits until the operator has finished `n` reconciles in all (`kekeeper_reconciles_total`
/// counts a reconcile when it ends, its writes made).
pub async fn wait_reconciles(operator: &Operator, n: u64) {
    super::cluster::eventually(
        &format!("{n} reconciles done"),
        Duration::from_secs(60),
        || async {
            (metric(operator, "kekeeper_reconciles_total").await >= n as f64).then_some(())
        },
    )
    .await;
}

/// The sum of a metric's samples (all its series), 0 when absent.
pub async fn metric(operator: &Operator, name: &str) -> f64 {
    metric_family(&operator.get("/metrics").await, name)
        .into_iter()
        .map(|(_, v)| v)
        .sum()
}

/// (labels, value) of every sample of `name` in a Prometheus text exposition.
fn metric_family(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name).then(|| (labels.to_owned(), value.parse().unwrap_or(0.0)))
        })
        .collect()
}

/// Calls by operation (all outcomes), and the calls whose outcome was `outcome`.
pub fn calls(all: &BTreeMap<(String, String), u64>, operation: &str) -> u64 {
    all.iter()
        .filter(|((op, _), _)| op == operation)
        .map(|(_, n)| n)
        .sum()
}

/// "DescribeKey / Generate / Decrypt" call counts, as the benchmark's table shows them.
pub fn by_operation(all: &BTreeMap<(String, String), u64>) -> String {
    format!(
        "{} / {} / {}",
        calls(all, "DescribeKey"),
        calls(all, "GenerateDataKeyPairWithoutPlaintext"),
        calls(all, "Decrypt")
    )
}

pub fn outcomes(all: &BTreeMap<(String, String), u64>, outcome: &str) -> u64 {
    all.iter()
        .filter(|((_, o), _)| o == outcome)
        .map(|(_, n)| n)
        .sum()
}

pub fn total(all: &BTreeMap<(String, String), u64>) -> u64 {
    all.values().sum()
}

/// The operator's API requests in kube-sim's log: (all, writes), leases excluded.
pub fn api_requests(cluster: &Cluster, user: &str) -> (usize, usize) {
    let log = cluster.request_log();
    let mine: Vec<_> = log
        .iter()
        .filter(|r| r.user == user && r.resource != "leases")
        .collect();
    let writes = mine
        .iter()
        .filter(|r| matches!(r.verb.as_str(), "create" | "update" | "patch" | "delete"))
        .count();
    (mine.len(), writes)
}

/// A memory field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`, ...) in MiB; 0 when absent.
fn proc_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// (current, peak) resident memory of a process in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    (proc_mib(pid, "VmRSS:"), proc_mib(pid, "VmHWM:"))
}

/// A process's resident memory now: "X MiB (anon A, files F)": heap and other anonymous
/// memory, and mapped files (the binary).
pub fn rss_detail(pid: u32) -> String {
    format!(
        "{:.1} MiB (anon {:.1}, files {:.1})",
        proc_mib(pid, "VmRSS:"),
        proc_mib(pid, "RssAnon:"),
        proc_mib(pid, "RssFile:")
    )
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Kernel clock ticks: 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Key pairs generated and then decrypted per second by `concurrency` workers for `duration`,
/// directly against the KMS endpoint: the peer's own capacity.
pub async fn capacity(endpoint: &str, concurrency: usize, duration: Duration) -> f64 {
    let key = super::create_key(endpoint, super::REGION, false).await;
    let kms = super::admin(endpoint, super::REGION).await;
    let start = Instant::now();
    let workers = (0..concurrency).map(|w| {
        let kms = kms.clone();
        let key_id = key.key_id.clone();
        async move {
            let mut done = 0u64;
            while start.elapsed() < duration {
                let context = [("genesys-cloud-organization-id".to_owned(), org(w))];
                let pair = kms
                    .generate_data_key_pair_without_plaintext()
                    .key_id(&key_id)
                    .key_pair_spec(aws_sdk_kms::types::DataKeyPairSpec::Rsa2048)
                    .set_encryption_context(Some(context.clone().into()))
                    .send()
                    .await
                    .expect("GenerateDataKeyPairWithoutPlaintext");
                kms.decrypt()
                    .ciphertext_blob(pair.private_key_ciphertext_blob().expect("blob").clone())
                    .set_encryption_context(Some(context.into()))
                    .send()
                    .await
                    .expect("Decrypt");
                done += 1;
            }
            done
        }
    });
    let done: u64 = futures::future::join_all(workers).await.into_iter().sum();
    done as f64 / start.elapsed().as_secs_f64()
}

/// A KMS stand-in speaking the AWS JSON protocol for DescribeKey,
/// GenerateDataKeyPairWithoutPlaintext and Decrypt, answering from a small pool of RSA key
/// pairs made at start. Not KMS: for measuring the operator's memory and resync with more
/// resources than LocalStack can generate keys for in reasonable time.
pub struct FastKms {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FastKms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Pool {
    /// (SPKI DER, PKCS#8 DER)
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    next: std::sync::atomic::AtomicUsize,
}

const FAST_KEY_ARN: &str = "arn:aws:kms:us-east-1:000000000000:key/fast-stand-in";

impl FastKms {
    pub async fn start() -> FastKms {
        let pairs = (0..8)
            .map(|_| {
                let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("RSA");
                let public = key.public_key().as_der().expect("SPKI").as_ref().to_vec();
                let private: aws_lc_rs::encoding::Pkcs8V1Der = key.as_der().expect("PKCS#8");
                (public, private.as_ref().to_vec())
            })
            .collect();
        let pool = Arc::new(Pool {
            pairs,
            next: Default::default(),
        });
        let app = axum::Router::new()
            .route("/", axum::routing::post(answer))
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FastKms { endpoint, task }
    }
}

async fn answer(
    axum::extract::State(pool): axum::extract::State<Arc<Pool>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let b64 = base64::engine::general_purpose::STANDARD;
    let request: Value = serde_json::from_str(&body).unwrap_or_default();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let reply = match target.rsplit('.').next().unwrap_or_default() {
        "DescribeKey" => json!({"KeyMetadata": {
            "AWSAccountId": "000000000000", "KeyId": "fast-stand-in", "Arn": FAST_KEY_ARN,
            "Enabled": true, "KeyState": "Enabled", "KeySpec": "SYMMETRIC_DEFAULT",
            "KeyUsage": "ENCRYPT_DECRYPT", "KeyManager": "CUSTOMER", "MultiRegion": false,
            "Origin": "AWS_KMS", "CreationDate": 1.7e9}}),
        "GenerateDataKeyPairWithoutPlaintext" => {
            let i = pool.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % pool.pairs.len();
            // Padded to the size of a real RSA_2048 private key blob (about 1.4 KB).
            let blob = json!({"pair": i, "context": request["EncryptionContext"],
                              "pad": "x".repeat(1250)})
            .to_string();
            json!({"KeyId": FAST_KEY_ARN, "KeyPairSpec": "RSA_2048",
                   "PublicKey": b64.encode(&pool.pairs[i].0),
                   "PrivateKeyCiphertextBlob": b64.encode(blob)})
        }
        "Decrypt" => {
            let blob: Value = request["CiphertextBlob"]
                .as_str()
                .and_then(|b| b64.decode(b).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let i = blob["pair"].as_u64().unwrap_or(0) as usize % pool.pairs.len();
            if blob["context"] != request["EncryptionContext"] {
                let error = json!({"__type": "InvalidCiphertextException", "message": "context"});
                return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response();
            }
            json!({"KeyId": FAST_KEY_ARN, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                   "Plaintext": b64.encode(&pool.pairs[i].1)})
        }
        other => {
            let error = json!({"__type": "UnsupportedOperationException", "message": other});
            return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response();
        }
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/x-amz-json-1.1",
        )],
        reply.to_string(),
    )
        .into_response()
}
