//! The fleet benchmark (`scripts/bench-fleet.sh`, release build): the real `kekeeper run`
//! against kube-sim with many RecordingKeyConfigs, KMS being LocalStack (and, for the 10k
//! memory/resync run, an in-process fast stand-in, labelled as such). Prints one table.
//!
//! `cargo bench --bench fleet -- [--resources N] [--steady-secs S] [--day-secs D] [--storm N]
//! [--big N] [--quota PAIRS] [--onboard ORGS] [--time-scale F]`
//!
//! The KMS quota rows run the operator at its default pace behind a proxy that throttles like
//! AWS (`tests/common/proxy.rs`): `--quota` RSA_3072 pairs on LocalStack in real time, and the
//! onboarding of `--onboard` organisations at RSA_3072 on the fast stand-in with every quota
//! and the pace `--time-scale` times faster (a faster clock), to check the time-to-finish
//! estimate in status against the real time.
//! with `KEKEEPER_TEST_KMS_ENDPOINT` (LocalStack) and `KEKEEPER_TEST_KUBECTL` set.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Operator};
use common::fleet::{self, FastKms, api_requests, kms_calls, outcomes, rss_detail, rss_mib, total};
use common::proxy::FaultProxy;

struct Args {
    resources: usize,
    steady_secs: u64,
    day_secs: u64,
    storm: usize,
    big: usize,
    in_flight: usize,
    quota: usize,
    onboard: usize,
    time_scale: f64,
}

fn args() -> Args {
    let mut args = Args {
        resources: 1000,
        steady_secs: 60,
        day_secs: 48,
        storm: 300,
        big: 10_000,
        in_flight: 4,
        quota: 24,
        onboard: 1000,
        time_scale: 10.0,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let value = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--resources" => args.resources = value(),
            "--steady-secs" => args.steady_secs = value() as u64,
            "--day-secs" => args.day_secs = value() as u64,
            "--storm" => args.storm = value(),
            "--big" => args.big = value(),
            "--in-flight" => args.in_flight = value(),
            "--quota" => args.quota = value(),
            "--onboard" => args.onboard = value(),
            "--time-scale" => args.time_scale = pair[1].parse().expect("a number"),
            _ => {}
        }
    }
    args
}

fn row(what: &str, value: String) {
    println!("| {what:<58} | {value:<40} |");
}

fn operator_args(rate: u32, in_flight: usize) -> Vec<String> {
    vec![
        format!("--kms-keypair-rate={rate}"),
        // The self-tests' Decrypts keep up with generation (the default is 100/s).
        format!("--kms-symmetric-rate={}", rate.max(100)),
        format!("--kms-max-in-flight={in_flight}"),
        "--concurrency=16".to_owned(),
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    println!(
        "| {:<58} | {:<40} |",
        if cfg!(debug_assertions) {
            "fleet benchmark (DEBUG build: cargo test --bench)"
        } else {
            "fleet benchmark (release build)"
        },
        "result"
    );
    println!("|{}|{}|", "-".repeat(60), "-".repeat(42));
    let server = if common::cluster::real_server() {
        "the real control plane (scripts/control-plane.sh)"
    } else {
        "kube-sim"
    };
    row("API server", server.to_owned());

    // `--resources 0` or `--big 0` leaves that part out.
    if args.resources > 0 {
        let endpoint = common::kms_endpoint();
        // As long as the cold start takes, give or take: key generation times vary widely.
        let capacity = fleet::capacity(&endpoint, args.in_flight, Duration::from_secs(30)).await;
        row(
            &format!(
                "LocalStack capacity, {} in flight (pairs/s)",
                args.in_flight
            ),
            format!("{capacity:.1} generate+decrypt per s"),
        );
        localstack_fleet(&args, &endpoint, capacity).await;
    }
    if args.quota > 0 {
        quota(&common::kms_endpoint(), args.quota).await;
    }
    if args.onboard > 0 {
        onboarding(args.onboard, args.time_scale).await;
    }
    if args.big > 0 {
        stand_in_fleet(&args).await;
    }
}

/// The default pace's RSA_3072 quota in its bucket, every pair from one operator.
const RSA_3072_PACE: f64 = 0.45;

/// RecordingKeyConfigs `{prefix}-{r}` of `per` organisations each, `orgs` in all, at RSA_3072.
async fn create_orgs(
    client: &kube::Client,
    alias: &str,
    prefix: &str,
    orgs: usize,
    per: usize,
) -> Vec<String> {
    use kekeeper::crd::RecordingKeyConfig;
    use kube::api::{Api, PostParams};
    let api: Api<RecordingKeyConfig> = Api::default_namespaced(client.clone());
    let mut names = Vec::new();
    for r in 0..orgs.div_ceil(per) {
        let ids: Vec<String> = (r * per..((r + 1) * per).min(orgs))
            .map(|o| format!("3fa85f64-5717-4562-b3fc-{o:012x}"))
            .collect();
        let name = format!("{prefix}-{r}");
        let rkc: RecordingKeyConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "kekeeper.io/v1alpha1", "kind": "RecordingKeyConfig",
            "metadata": {"name": name},
            "spec": {"kmsKeyAliasArn": alias, "organizationIds": ids, "keyPairSpec": "RSA_3072"},
        }))
        .expect("manifest");
        api.create(&PostParams::default(), &rkc)
            .await
            .expect("create");
        names.push(name);
    }
    names
}

/// `pairs` RSA_3072 pairs (three resources) at the default pace on LocalStack behind a proxy
/// that throttles like AWS: pairs/s against the pace, and throttled calls.
async fn quota(endpoint: &str, pairs: usize) {
    let key = common::create_key(endpoint, common::REGION, false).await;
    let proxy = FaultProxy::start(endpoint).await;
    proxy.throttle_key_pairs_like_aws();
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let client = fleet::client(&cluster).await;
    let mut operator = cluster.start_operator("quota", &kubeconfig, &proxy.endpoint(), &[], &[]);
    operator.wait_ready().await;
    let names = create_orgs(
        &client,
        key.alias.as_str(),
        "quota",
        pairs,
        pairs.div_ceil(3),
    )
    .await;
    fleet::wait_for(&cluster, names.len(), Duration::from_secs(3600), |o| {
        fleet::is_ready(o)
            && o["status"]["activeKeyPairs"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    })
    .await
    .expect("all Ready");
    let (accepted, span) = proxy.accepted("RSA_3072");
    let rate = (accepted.saturating_sub(1)) as f64 / span.as_secs_f64();
    row(
        &format!("KMS quota, {accepted} RSA_3072 pairs: rate vs pace (goal >= 95 %)"),
        format!(
            "{rate:.3}/s of {RSA_3072_PACE}/s = {:.0} % (AWS quota 0.5/s)",
            100.0 * rate / RSA_3072_PACE
        ),
    );
    row(
        "KMS quota: throttled calls (goal 0)",
        proxy.throttled("RSA_3072").to_string(),
    );
    operator.kill();
}

/// "about 1 min 51 s left" → seconds.
fn estimate_secs(message: &str) -> Option<f64> {
    let text = message.split("about ").nth(1)?.split(" left at").next()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut secs = 0.0;
    for pair in words.chunks(2) {
        let n: f64 = pair.first()?.parse().ok()?;
        secs += n * match *pair.get(1)? {
            "h" => 3600.0,
            "min" => 60.0,
            "s" => 1.0,
            _ => return None,
        };
    }
    Some(secs)
}

/// `orgs` organisations at RSA_3072 (100 per resource) on the fast stand-in behind a proxy that
/// throttles like AWS, every quota and the pace `scale` times faster: the time to all Ready,
/// throttled calls, and each resource's first estimate in status against the time it really
/// took from then.
async fn onboarding(orgs: usize, scale: f64) {
    let kms = FastKms::start().await;
    let proxy = FaultProxy::start(&kms.endpoint).await;
    proxy.throttle_key_pairs_like_aws_sped_up(scale);
    let (cluster, kubeconfig, _) = Cluster::with_operator_identity().await;
    let client = fleet::client(&cluster).await;
    let pace = RSA_3072_PACE * scale;
    let args = [format!("--kms-keypair-rate=RSA_3072={pace}")];
    let mut operator =
        cluster.start_operator("onboard", &kubeconfig, &proxy.endpoint(), &args, &[]);
    operator.wait_ready().await;
    let started = Instant::now();
    let alias = "arn:aws:kms:us-east-1:000000000000:alias/fast-stand-in";
    let names = create_orgs(&client, alias, "onboard", orgs, 100).await;
    // Per resource: its first estimate (when seen, seconds) and when it became Ready.
    let mut first: Vec<Option<(Instant, f64)>> = vec![None; names.len()];
    let mut ready: Vec<Option<Instant>> = vec![None; names.len()];
    while ready.iter().any(Option::is_none) {
        for (i, name) in names.iter().enumerate() {
            if ready[i].is_some() {
                continue;
            }
            let Some(object) = cluster
                .object("kekeeper.io", "recordingkeyconfigs", &cluster.ns(), name)
                .await
            else {
                continue;
            };
            if fleet::is_ready(&object) {
                ready[i] = Some(Instant::now());
                continue;
            }
            let message = object["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Reconciling"))
                .and_then(|c| c["message"].as_str())
                .unwrap_or_default();
            if first[i].is_none()
                && let Some(secs) = estimate_secs(message)
            {
                first[i] = Some((Instant::now(), secs));
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "onboarding took over an hour"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = ready
        .iter()
        .flatten()
        .max()
        .map_or(0.0, |t| t.duration_since(started).as_secs_f64());
    let errors: Vec<f64> = first
        .iter()
        .zip(&ready)
        .filter_map(|(first, ready)| {
            let (seen, estimate) = (*first)?;
            let real = ready.as_ref()?.duration_since(seen).as_secs_f64();
            Some((estimate - real).abs() / real)
        })
        .collect();
    let worst = errors.iter().copied().fold(0.0, f64::max);
    row(
        &format!("onboarding {orgs} orgs, RSA_3072, clock x{scale}: all Ready"),
        format!(
            "{took:.1} s = {:.1} min at AWS's real pace ({:.1} min ideal)",
            took * scale / 60.0,
            orgs as f64 / RSA_3072_PACE / 60.0
        ),
    );
    let (accepted, span) = proxy.accepted("RSA_3072");
    let rate = accepted.saturating_sub(1) as f64 / span.as_secs_f64();
    row(
        "onboarding: pairs/s vs the pace (goal >= 95 %), throttled (0)",
        format!(
            "{rate:.2}/s of {pace:.2}/s = {:.0} %, {} throttled",
            100.0 * rate / pace,
            proxy.throttled("RSA_3072")
        ),
    );
    row(
        &format!(
            "onboarding: estimate vs real, worst of {} (goal <= 10 %)",
            errors.len()
        ),
        format!("{:.1} % off", 100.0 * worst),
    );
    operator.kill();
}

/// Cold start, steady state, restart and a rotation storm of `args.resources` on LocalStack.
async fn localstack_fleet(args: &Args, endpoint: &str, capacity: f64) {
    let n = args.resources;
    let key = common::create_key(endpoint, common::REGION, false).await;
    let (cluster, kubeconfig, user) = Cluster::with_operator_identity().await;
    let client = fleet::client(&cluster).await;
    fleet::create(&client, "fleet", n, key.alias.as_str()).await;

    let started = Instant::now();
    let operator_args = operator_args(100, args.in_flight);
    let mut operator = cluster.start_operator("cold", &kubeconfig, endpoint, &operator_args, &[]);
    let all_ready = fleet::wait_for(&cluster, n, Duration::from_secs(3600), fleet::is_ready)
        .await
        .expect("all Ready");
    let elapsed = started.elapsed();
    let cold = kms_calls(&operator).await;
    let ideal = 2 * n as u64 + 1;
    let generated = *cold
        .get(&("GenerateDataKeyPairWithoutPlaintext".into(), "ok".into()))
        .unwrap_or(&0);
    let stored = secrets(&cluster).await;
    let rate = n as f64 / all_ready.as_secs_f64();
    row(
        &format!("cold start of {n}: time to all Ready"),
        format!("{:.1} s", elapsed.as_secs_f64()),
    );
    row(
        "cold start: pairs/s as % of the KMS capacity (goal >= 90 %)",
        format!("{rate:.1}/s = {:.0} %", 100.0 * rate / capacity),
    );
    row(
        "cold start: KMS calls / ideal (N gen + N decrypt + 1 describe)",
        format!(
            "{} / {ideal} = {:.3}",
            total(&cold),
            total(&cold) as f64 / ideal as f64
        ),
    );
    row(
        "cold start: DescribeKey / Generate / Decrypt calls",
        fleet::by_operation(&cold),
    );
    row(
        "cold start: client timeouts",
        outcomes(&cold, "Timeout").to_string(),
    );
    row(
        "cold start: discarded key pairs (generated - stored)",
        format!("{}", generated as i64 - stored as i64),
    );
    row(
        "cold start: API writes",
        api_requests(&cluster, &user).1.to_string(),
    );
    row(
        "cold start: operator CPU time (user + system)",
        format!("{:.1} s", fleet::cpu_seconds(operator.pid())),
    );
    row(
        "cold start: operator peak RSS",
        format!("{:.1} MiB", rss_mib(operator.pid()).1),
    );

    steady(&cluster, &operator, &user, args.steady_secs).await;
    operator.kill();
    let run = Fleet {
        cluster: &cluster,
        kubeconfig: &kubeconfig,
        endpoint,
        user: &user,
        n,
        operator_args: &operator_args,
    };
    drop(restart(&run, "LocalStack").await);
    if args.day_secs > 0 {
        drop(day(&run, args.day_secs).await);
    }
    storm(&cluster, &client, &kubeconfig, endpoint, args.storm.min(n)).await;
}

/// The unchanged fleet over simulated days: the key check every "hour" (`day_secs` / 24) and
/// the custody check every "day", the defaults' ratio (1h and 24h). After one day for the
/// custody checks due at start, two days are counted: what one unchanged resource costs the
/// API server per day, and what the fleet costs KMS per day (docs/design.md, "A quiet steady
/// state").
async fn day(run: &Fleet<'_>, day_secs: u64) -> Operator {
    let Fleet {
        cluster,
        kubeconfig,
        endpoint,
        user,
        n,
        operator_args,
    } = *run;
    let hour_ms = day_secs * 1000 / 24;
    let mut args = operator_args.to_vec();
    args.push(format!("--kms-key-check-interval={hour_ms}ms"));
    args.push(format!("--key-verify-interval={day_secs}s"));
    let mut operator = cluster.start_operator("day", kubeconfig, endpoint, &args, &[]);
    operator.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(day_secs)).await;
    let (verbs, kms) = (api_verbs(cluster, user), kms_calls(&operator).await);
    tokio::time::sleep(Duration::from_secs(2 * day_secs)).await;
    let (verbs_after, kms_after) = (api_verbs(cluster, user), kms_calls(&operator).await);
    let per_day = |verb: &str| {
        let count = |m: &std::collections::BTreeMap<String, usize>| *m.get(verb).unwrap_or(&0);
        (count(&verbs_after) - count(&verbs)) as f64 / (2 * n) as f64
    };
    let writes: f64 = ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| per_day(v))
        .sum();
    row(
        &format!("a simulated day (1 h = {hour_ms} ms), per unchanged resource"),
        format!(
            "{writes:.2} writes, {:.2} lists, {:.2} gets",
            per_day("list"),
            per_day("get")
        ),
    );
    let kms_per_day = |operation: &str| {
        (fleet::calls(&kms_after, operation) - fleet::calls(&kms, operation)) as f64 / 2.0
    };
    row(
        &format!("a simulated day: KMS calls of the fleet of {n} per day"),
        format!(
            "DescribeKey {:.0}, Decrypt {:.0}, Generate {:.0}",
            kms_per_day("DescribeKey"),
            kms_per_day("Decrypt"),
            kms_per_day("GenerateDataKeyPairWithoutPlaintext")
        ),
    );
    operator
}

/// The operator's API requests by verb (Leases left out: leader election is its own cost).
fn api_verbs(cluster: &Cluster, user: &str) -> std::collections::BTreeMap<String, usize> {
    let mut verbs = std::collections::BTreeMap::new();
    for r in cluster.request_log() {
        if r.user == user && r.resource != "leases" {
            *verbs.entry(r.verb).or_default() += 1;
        }
    }
    verbs
}

async fn secrets(cluster: &Cluster) -> usize {
    cluster
        .objects("", "secrets", Some(&cluster.ns()))
        .await
        .iter()
        .filter(|s| s["type"] == "kekeeper.io/key-pair")
        .count()
}

async fn steady(cluster: &Cluster, operator: &Operator, user: &str, secs: u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (requests, _) = api_requests(cluster, user);
    let kms = total(&kms_calls(operator).await);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    row(
        &format!("steady state {secs} s: API requests / KMS calls (goal 0 / 0)"),
        format!(
            "{} / {}",
            api_requests(cluster, user).0 - requests,
            total(&kms_calls(operator).await) - kms
        ),
    );
    row("steady state: operator RSS", rss_detail(operator.pid()));
}

/// A fleet of `n` RecordingKeyConfigs the operator runs with, and its identity.
#[derive(Clone, Copy)]
struct Fleet<'a> {
    cluster: &'a Cluster,
    kubeconfig: &'a std::path::Path,
    endpoint: &'a str,
    user: &'a str,
    n: usize,
    operator_args: &'a [String],
}

async fn restart(run: &Fleet<'_>, label: &str) -> Operator {
    let (_, writes) = api_requests(run.cluster, run.user);
    let server_cpu = fleet::cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut operator = run.cluster.start_operator(
        "restart",
        run.kubeconfig,
        run.endpoint,
        run.operator_args,
        &[],
    );
    operator.wait_ready().await;
    let ready = started.elapsed();
    while fleet::metric(&operator, "kekeeper_reconciles_total").await < run.n as f64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resync = started.elapsed();
    let cpu = (
        fleet::cpu_seconds(operator.pid()),
        fleet::cpu_seconds(std::process::id()) - server_cpu,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    row(
        &format!(
            "restart ({label}, {}): resync time (every resource reconciled)",
            run.n
        ),
        format!("{:.2} s", resync.as_secs_f64()),
    );
    row(
        &format!("restart ({label}): ready (caches listed) after"),
        format!("{:.2} s", ready.as_secs_f64()),
    );
    // kube-sim runs inside the benchmark's process: its CPU is the benchmark's.
    row(
        &format!("restart ({label}): CPU until resynced, operator / kube-sim"),
        format!("{:.2} s / {:.2} s", cpu.0, cpu.1),
    );
    row(
        &format!("restart ({label}): KMS calls / API writes (goal 0 / 0)"),
        format!(
            "{} / {}",
            total(&kms_calls(&operator).await),
            api_requests(run.cluster, run.user).1 - writes
        ),
    );
    row(
        &format!("restart ({label}): operator RSS"),
        rss_detail(operator.pid()),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    row(
        &format!("restart ({label}): operator RSS 10 s later"),
        rss_detail(operator.pid()),
    );
    operator
}

/// `count` rotate-now requests at once with `--kms-keypair-rate 3`.
async fn storm(
    cluster: &Cluster,
    client: &kube::Client,
    kubeconfig: &std::path::Path,
    endpoint: &str,
    count: usize,
) {
    const RATE: f64 = 3.0;
    let mut operator = cluster.start_operator(
        "storm",
        kubeconfig,
        endpoint,
        &operator_args(RATE as u32, 4),
        &[],
    );
    operator.wait_ready().await;
    let started = Instant::now();
    fleet::rotate_now(client, "fleet", count, "storm").await;
    let honoured =
        |o: &serde_json::Value| o["status"]["rotateNowToken"] == "storm" && fleet::is_ready(o);
    let took = fleet::wait_for(cluster, count, Duration::from_secs(3600), honoured)
        .await
        .expect("storm honoured");
    let _ = started;
    let kms = kms_calls(&operator).await;
    let achieved = count as f64 / took.as_secs_f64();
    row(
        &format!("rotation storm: {count} rotate-now at rate {RATE}/s"),
        format!(
            "{achieved:.2}/s = {:.0} % of the rate",
            100.0 * achieved / RATE
        ),
    );
    row(
        "rotation storm: DescribeKey / Generate / Decrypt calls",
        fleet::by_operation(&kms),
    );
    operator.kill();
}

/// Memory and resync with `args.big` resources, KMS served by the in-process stand-in.
async fn stand_in_fleet(args: &Args) {
    let n = args.big;
    let kms = FastKms::start().await;
    let (cluster, kubeconfig, user) = Cluster::with_operator_identity().await;
    let client = fleet::client(&cluster).await;
    let alias = "arn:aws:kms:us-east-1:000000000000:alias/fast-stand-in";
    fleet::create(&client, "big", n, alias).await;
    let label = "KMS stand-in, not LocalStack";
    let started = Instant::now();
    let operator_args = operator_args(100_000, 16);
    let mut operator =
        cluster.start_operator("big", &kubeconfig, &kms.endpoint, &operator_args, &[]);
    fleet::wait_for(&cluster, n, Duration::from_secs(3600), fleet::is_ready)
        .await
        .expect("all Ready");
    row(
        &format!("cold start of {n} ({label}): time to all Ready"),
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    row(
        &format!("cold start of {n}: operator peak RSS (goal < 128 MiB)"),
        format!("{:.1} MiB", rss_mib(operator.pid()).1),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    row(
        &format!("steady state, {n} + {n} Secrets: RSS (goal < 96 MiB)"),
        rss_detail(operator.pid()),
    );
    operator.kill();
    let run = Fleet {
        cluster: &cluster,
        kubeconfig: &kubeconfig,
        endpoint: &kms.endpoint,
        user: &user,
        n,
        operator_args: &operator_args,
    };
    let operator = restart(&run, label).await;
    row(
        &format!("restart of {n}: peak RSS during resync"),
        format!("{:.1} MiB", rss_mib(operator.pid()).1),
    );
}
