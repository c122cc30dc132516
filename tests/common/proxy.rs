//! A fault-injecting HTTP/1.1 proxy in front of the KMS emulator: requests whose `X-Amz-Target`
//! names a chosen operation get an AWS JSON error (AccessDenied, Throttling, ...) that LocalStack
//! never produces; everything else is forwarded. One request per connection (`Connection:
//! close`), which the SDK handles by reconnecting. Stopped when dropped.
//!
//! It can make a whole Region fail ([`FaultProxy::fail_region`]): every request signed for that
//! Region (the Region in the SigV4 `Credential=AKID/DATE/REGION/kms/aws4_request` of the
//! `Authorization` header) gets a connection reset or an HTTP error, as when a Region's KMS is
//! unreachable or down; LocalStack serves every Region on one endpoint, so the signature is
//! what tells them apart.
//!
//! It can also throttle like AWS KMS ([`FaultProxy::throttle_key_pairs_like_aws`]): a token
//! bucket per key pair spec at AWS's documented quota for `GenerateDataKeyPair*`, answering
//! `ThrottlingException` (HTTP 400, `Rate exceeded`) as AWS does when a spec's quota is spent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Only requests whose body contains this (an organisation id in the encryption context,
    /// say) get the fault; `None`: every request of the operation.
    pub body_contains: Option<String>,
}

/// AWS KMS's quotas for `GenerateDataKeyPair` and `GenerateDataKeyPairWithoutPlaintext`
/// together, per account and Region, in requests per second.
pub const AWS_KEY_PAIR_QUOTAS: [(&str, f64); 3] =
    [("RSA_2048", 1.0), ("RSA_3072", 0.5), ("RSA_4096", 0.1)];

/// How early, in seconds of quota, a request may come and still pass: the bucket holds one
/// request plus this much, so the scheduling jitter of a busy test machine between the
/// operator's token and the request's arrival is not mistaken for a burst, while any sustained
/// rate above the quota is throttled within a few requests (docs/testing.md).
pub const THROTTLE_TOLERANCE_SECS: f64 = 0.5;

/// One spec's quota as the proxy enforces it, and what it let through and refused.
struct Quota {
    rate: f64,
    tokens: f64,
    last: Instant,
    accepted: Vec<Instant>,
    throttled: usize,
}

impl Quota {
    fn new(rate: f64) -> Self {
        Quota {
            rate,
            tokens: Self::capacity(rate),
            last: Instant::now(),
            accepted: Vec::new(),
            throttled: 0,
        }
    }

    fn capacity(rate: f64) -> f64 {
        1.0 + rate * THROTTLE_TOLERANCE_SECS
    }

    /// Whether a request now is within the quota (it then takes its token).
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(Self::capacity(self.rate));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.accepted.push(now);
            true
        } else {
            self.throttled += 1;
            false
        }
    }
}

/// How a failed Region answers.
#[derive(Clone, Debug)]
pub enum RegionFault {
    /// The connection is reset without an answer (an unreachable Region).
    Reset,
    /// An AWS JSON error with this HTTP status and code (`503`, `ServiceUnavailableException`).
    Error(Fault),
}

#[derive(Default)]
struct State {
    faults: Mutex<HashMap<String, Fault>>,
    /// Regions whose requests fail, by the Region of their signature.
    regions: Mutex<HashMap<String, RegionFault>>,
    /// Requests seen per (signed Region, operation).
    seen_in: Mutex<HashMap<(String, String), usize>>,
    /// Requests seen per operation (`Decrypt`, ...), faulted or forwarded.
    seen: Mutex<HashMap<String, usize>>,
    /// The `User-Agent` header of every request seen, in order (empty without one).
    user_agents: Mutex<Vec<String>>,
    /// Operations whose requests are held open without an answer (to provoke timeouts).
    hang: Mutex<Vec<String>>,
    next_request: AtomicU64,
    /// Key pair quotas by spec (`RSA_3072`), when throttling like AWS.
    quotas: Mutex<HashMap<String, Quota>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State::default());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let state = state.clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let _ = handle(client, &upstream, &state).await;
                    });
                }
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every request for `operation` (e.g. `GenerateDataKeyPairWithoutPlaintext`) with
    /// HTTP `status` and the AWS JSON error `code` until cleared.
    pub fn fail(&self, operation: &str, status: u16, code: &str, message: &str) {
        self.insert_fault(operation, status, code, message, None);
    }

    /// As [`Self::fail`], only for the requests whose body contains `needle` (e.g. one
    /// organisation's id, which every request under its encryption context carries).
    pub fn fail_matching(
        &self,
        operation: &str,
        needle: &str,
        status: u16,
        code: &str,
        message: &str,
    ) {
        self.insert_fault(operation, status, code, message, Some(needle.to_owned()));
    }

    fn insert_fault(
        &self,
        operation: &str,
        status: u16,
        code: &str,
        message: &str,
        body_contains: Option<String>,
    ) {
        self.state.faults.lock().unwrap().insert(
            operation.to_owned(),
            Fault {
                status,
                code: code.to_owned(),
                message: message.to_owned(),
                body_contains,
            },
        );
    }

    /// How many requests got a fault so far.
    pub fn faulted(&self) -> u64 {
        self.state.next_request.load(Ordering::SeqCst)
    }

    /// Never answers requests for `operation`.
    pub fn hang(&self, operation: &str) {
        self.state.hang.lock().unwrap().push(operation.to_owned());
    }

    /// Every request signed for `region` fails as `fault` says, until cleared.
    pub fn fail_region(&self, region: &str, fault: RegionFault) {
        self.state
            .regions
            .lock()
            .unwrap()
            .insert(region.to_owned(), fault);
    }

    /// As [`Self::fail_region`], with an AWS JSON error of HTTP `status` and `code`.
    pub fn fail_region_with(&self, region: &str, status: u16, code: &str, message: &str) {
        self.fail_region(
            region,
            RegionFault::Error(Fault {
                status,
                code: code.to_owned(),
                message: message.to_owned(),
                body_contains: None,
            }),
        );
    }

    /// Requests for `operation` signed for `region`, faulted or forwarded.
    pub fn seen_in(&self, region: &str, operation: &str) -> usize {
        self.state
            .seen_in
            .lock()
            .unwrap()
            .get(&(region.to_owned(), operation.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn clear(&self) {
        self.state.faults.lock().unwrap().clear();
        self.state.hang.lock().unwrap().clear();
        self.state.regions.lock().unwrap().clear();
    }

    pub fn seen(&self, operation: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// The `User-Agent` header of every request seen so far, in order.
    pub fn user_agents(&self) -> Vec<String> {
        self.state.user_agents.lock().unwrap().clone()
    }

    /// From now on, `GenerateDataKeyPair*` requests beyond AWS's quota for their key pair spec
    /// get `ThrottlingException`, as AWS answers them.
    pub fn throttle_key_pairs_like_aws(&self) {
        self.throttle_key_pairs_like_aws_sped_up(1.0);
    }

    /// As [`Self::throttle_key_pairs_like_aws`] on a clock running `factor` times faster: every
    /// quota times `factor` (the early-arrival tolerance stays half a real second).
    pub fn throttle_key_pairs_like_aws_sped_up(&self, factor: f64) {
        let mut quotas = self.state.quotas.lock().unwrap();
        for (spec, rate) in AWS_KEY_PAIR_QUOTAS {
            quotas.insert(spec.to_owned(), Quota::new(rate * factor));
        }
    }

    /// `GenerateDataKeyPair*` requests of `spec` throttled so far.
    pub fn throttled(&self, spec: &str) -> usize {
        let quotas = self.state.quotas.lock().unwrap();
        quotas.get(spec).map_or(0, |q| q.throttled)
    }

    /// `GenerateDataKeyPair*` requests of `spec` let through so far, and the time between the
    /// first and the last of them.
    pub fn accepted(&self, spec: &str) -> (usize, Duration) {
        let quotas = self.state.quotas.lock().unwrap();
        quotas.get(spec).map_or((0, Duration::ZERO), |q| {
            let span = match (q.accepted.first(), q.accepted.last()) {
                (Some(first), Some(last)) => last.duration_since(*first),
                _ => Duration::ZERO,
            };
            (q.accepted.len(), span)
        })
    }

    /// The request id the proxy gave its `n`-th faulted answer (1-based).
    pub fn request_id(n: u64) -> String {
        format!("kekeeper-fault-proxy-{n:04}")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// AWS's answer to a key pair request beyond its spec's quota, when throttling like AWS.
fn throttled(state: &State, operation: &str, body: &[u8]) -> Option<Fault> {
    if !operation.starts_with("GenerateDataKeyPair") {
        return None;
    }
    let spec = serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("KeyPairSpec")?
        .as_str()?
        .to_owned();
    let mut quotas = state.quotas.lock().unwrap();
    let quota = quotas.get_mut(&spec)?;
    (!quota.admit()).then(|| Fault {
        status: 400,
        code: "ThrottlingException".to_owned(),
        message: "Rate exceeded".to_owned(),
        body_contains: None,
    })
}

/// The Region of a SigV4 `Authorization` header: `AWS4-HMAC-SHA256
/// Credential=AKID/20261206/us-east-1/kms/aws4_request, SignedHeaders=..., Signature=...`.
pub fn signed_region(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    let scope = credential.split(',').next()?;
    scope.split('/').nth(2)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn handle(mut client: TcpStream, upstream: &str, state: &State) -> std::io::Result<()> {
    // Read the head, then exactly Content-Length bytes of body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let content_length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + content_length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let operation = header("x-amz-target")
        .and_then(|t| t.rsplit('.').next().map(str::to_owned))
        .unwrap_or_default();
    *state
        .seen
        .lock()
        .unwrap()
        .entry(operation.clone())
        .or_default() += 1;
    state
        .user_agents
        .lock()
        .unwrap()
        .push(header("user-agent").unwrap_or_default());
    let region = header("authorization")
        .and_then(|a| signed_region(&a).map(str::to_owned))
        .unwrap_or_default();
    *state
        .seen_in
        .lock()
        .unwrap()
        .entry((region.clone(), operation.clone()))
        .or_default() += 1;
    let region_fault = state.regions.lock().unwrap().get(&region).cloned();
    match region_fault {
        // Dropped with SO_LINGER 0: the client sees a connection reset, no answer.
        Some(RegionFault::Reset) => {
            client.set_zero_linger()?;
            drop(client);
            return Ok(());
        }
        Some(RegionFault::Error(fault)) => return answer_with(client, state, &fault).await,
        None => {}
    }

    if state.hang.lock().unwrap().contains(&operation) {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        return Ok(());
    }

    let body = &buf[head_end..];
    let fault = state
        .faults
        .lock()
        .unwrap()
        .get(&operation)
        .filter(|f| {
            f.body_contains
                .as_ref()
                .is_none_or(|needle| find(body, needle.as_bytes()).is_some())
        })
        .cloned();
    let fault = fault.or_else(|| throttled(state, &operation, body));
    if let Some(fault) = fault {
        return answer_with(client, state, &fault).await;
    }

    // Forward with `Connection: close` so the upstream ends the response with EOF.
    let mut rewritten = String::new();
    for line in head[..head_end - 4].split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(rewritten.as_bytes()).await?;
    server.write_all(&buf[head_end..]).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    // Tell the client too, so it never reuses this connection.
    if let Some(end) = find(&response, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&response[..end]).into_owned();
        let mut out = String::new();
        for line in head.split("\r\n") {
            if line
                .split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
            {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        client.write_all(out.as_bytes()).await?;
        client.write_all(&response[end + 4..]).await?;
    } else {
        client.write_all(&response).await?;
    }
    client.shutdown().await?;
    Ok(())
}

/// Answers with the fault's AWS JSON error and closes the connection.
async fn answer_with(mut client: TcpStream, state: &State, fault: &Fault) -> std::io::Result<()> {
    let n = state.next_request.fetch_add(1, Ordering::SeqCst) + 1;
    let body = serde_json::json!({"__type": fault.code, "message": fault.message}).to_string();
    let response = format!(
        "HTTP/1.1 {} Error\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        fault.status,
        FaultProxy::request_id(n),
        body.len(),
        body
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await?;
    Ok(())
}
