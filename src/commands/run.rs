//! `kekeeper run`: the controller, with health and metrics endpoints, optional leader election
//! and graceful shutdown on SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::controller::cache::{self, Cache, CachedConfig, ConfigCompactor};
use crate::controller::leader::election::LeaseTiming;
use crate::controller::leader::{LeaderElector, LeaseSettings, LostLeadership};
use crate::controller::ratelimit::{KeyPairRates, KmsPace};
use crate::controller::report::Events;
use crate::controller::{self, Context, Settings};
use crate::crd::RecordingKeyConfig;
use crate::keypair::{self, LABEL_CONFIG, LABEL_MANAGED_BY, SecretConfig};
use crate::keystore::KeyStore;
use crate::keystore::s3::S3Objects;
use crate::kms::coalesce::CoalescingKms;
use crate::kms::sdk::SdkKms;
use crate::metrics::{ConfigLabels, MeteredKms, Metrics};

pub async fn execute(args: RunArgs) -> ExitCode {
    if let Err(err) = lease_timing(&args) {
        error!("{err}");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// How long in-flight reconciles may take after SIGTERM (Kubernetes' default grace is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = kube::Config::infer().await.map_err(|err| {
        anyhow::anyhow!("no Kubernetes configuration (kubeconfig or in-cluster): {err}")
    })?;
    let client = Client::try_from(crate::user_agent::kube_config(config))
        .map_err(|err| anyhow::anyhow!("Kubernetes client: {err}"))?;
    let metrics = Metrics::default();
    let health = Health {
        ready: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let bound = listener.local_addr().unwrap_or(args.metrics_addr);
    info!(addr = %bound, "serving /healthz, /readyz, /metrics");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health.clone());
    let mut server_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });

    let mut elector = if args.leader_elect {
        Some(LeaderElector::new(client.clone(), lease_settings(&args)?))
    } else {
        None
    };
    if let Some(elector) = elector.as_mut() {
        // A standby replica is ready: it serves and waits.
        health.ready.store(true, Ordering::SeqCst);
        if !elector.acquire(&mut shutdown_rx.clone()).await {
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            return Ok(());
        }
        health.ready.store(false, Ordering::SeqCst);
    }

    let controller = run_controller_with_grace(client, args, metrics, health, shutdown_rx);
    let result = match elector.as_mut() {
        None => controller.await,
        Some(elector) => lead(elector, controller).await,
    };
    // After a lost Lease, exit at once rather than wait for the server (it stops on SIGTERM).
    if result.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    result
}

/// Runs the controller while renewing the Lease. Losing the Lease ends the process (exit 1, as
/// client-go's OnStoppedLeading usually does), so nothing keeps acting and a restarted pod
/// rejoins as a standby; a controller that stopped (SIGTERM) gives the Lease up.
async fn lead(
    elector: &mut LeaderElector,
    controller: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    enum Ended {
        Stopped(anyhow::Result<()>),
        Lost(LostLeadership),
    }
    let ended = tokio::select! {
        result = controller => Ended::Stopped(result),
        lost = elector.keep_leading() => Ended::Lost(lost),
    };
    match ended {
        Ended::Lost(lost) => Err(anyhow::anyhow!(
            "leadership lost ({lost}); exiting so that nothing acts without the Lease"
        )),
        Ended::Stopped(result) => {
            if let Err(err) = elector.release().await {
                warn!(error = %err, "could not release the Lease; a standby takes over once it expires");
            }
            result
        }
    }
}

/// The controller until SIGTERM. Graceful: in-flight reconciles finish; forceful after a grace
/// period, so a reconcile stuck on a hung call cannot keep the pod past its termination grace.
async fn run_controller_with_grace(
    client: Client,
    args: RunArgs,
    metrics: Metrics,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut stop = shutdown.clone();
    let result = tokio::select! {
        result = run_controller(client, args, metrics, health, shutdown) => result,
        _ = async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            warn!("reconciles still running after {SHUTDOWN_GRACE:?}; stopping anyway");
            Ok(())
        }
    };
    info!("controller stopped");
    result
}

fn lease_settings(args: &RunArgs) -> anyhow::Result<LeaseSettings> {
    let namespace = args.lease_namespace.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .map(|ns| ns.trim().to_owned())
            .unwrap_or_else(|_| "default".to_owned())
    });
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kekeeper".to_owned());
        format!("{host}_{}", &crate::keypair::new_key_pair_id()[..8])
    });
    Ok(LeaseSettings {
        name: args.lease_name.clone(),
        namespace,
        identity,
        timing: lease_timing(args)?,
    })
}

/// The three durations of `--lease-duration`, `--renew-deadline` and `--retry-period`, checked
/// against each other.
pub fn lease_timing(args: &RunArgs) -> anyhow::Result<LeaseTiming> {
    let duration = |flag: &str, value: jiff::SignedDuration| {
        Duration::try_from(value)
            .map_err(|_| anyhow::anyhow!("--{flag} must not be negative; got {value:#}"))
    };
    Ok(LeaseTiming::new(
        duration("lease-duration", args.lease_duration)?,
        duration("renew-deadline", args.renew_deadline)?,
        duration("retry-period", args.retry_period)?,
    )?)
}

async fn run_controller(
    client: Client,
    args: RunArgs,
    metrics: Metrics,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sdk = SdkKms::from_env().await;
    let key_store = match args.key_store.clone() {
        Some(url) => {
            info!(key_store = %url, "key pairs are written to the key store before they become active");
            let objects = S3Objects::new(sdk.sdk_config(), &url.bucket);
            let store = KeyStore::unclaimed(url, Arc::new(objects));
            hold_the_prefix(&client, &args, store.clone()).await?;
            Some(store)
        }
        None => {
            warn!(
                "no --key-store: key pairs live only in this cluster (docs/disaster-recovery.md)"
            );
            None
        }
    };
    let shared = Shared {
        settings: Settings {
            kms_key_check_interval: args.kms_key_check_interval,
            key_verify_interval: args.key_verify_interval,
            operator_region: sdk.operator_region().map(str::to_owned),
            key_store: None,
        },
        key_store,
        // Metered inside the coalescing layer: the metrics count the calls KMS really gets.
        kms: CoalescingKms::new(
            MeteredKms {
                inner: sdk,
                metrics: metrics.clone(),
            },
            Duration::try_from(args.kms_key_check_interval).unwrap_or(Duration::from_secs(3600)),
        ),
        kms_pace: kms_pace(&args, &metrics),
        concurrency: args.concurrency,
        reporter: Reporter {
            controller: "kekeeper".into(),
            instance: args.identity.clone(),
        },
        metrics,
    };
    // No namespace: one cluster-wide controller; otherwise one per namespace, so that a
    // namespaced install needs Roles in the watched namespaces only.
    let scopes: Vec<Option<String>> = if args.namespace.is_empty() {
        vec![None]
    } else {
        args.namespace.iter().cloned().map(Some).collect()
    };
    let synced = Arc::new(AtomicUsize::new(0));
    let scope_count = scopes.len();
    let controllers = scopes.into_iter().map(|scope| {
        let health = health.clone();
        let synced = synced.clone();
        let on_synced = move || {
            if synced.fetch_add(1, Ordering::SeqCst) + 1 == scope_count {
                info!("caches synced; ready");
                health.ready.store(true, Ordering::SeqCst);
            }
        };
        run_scope(
            client.clone(),
            scope,
            shared.clone(),
            on_synced,
            shutdown.clone(),
        )
    });
    futures::future::join_all(controllers).await;
    Ok(())
}

/// The KMS pace for every resource in every watched namespace: KMS quotas are per account and
/// Region, not per resource (docs/design.md, "Rate limits").
fn kms_pace(args: &RunArgs, metrics: &Metrics) -> Arc<KmsPace> {
    let rates = KeyPairRates::from_flags(&args.kms_keypair_rate);
    info!(key_pairs = %rates, in_flight = args.kms_max_in_flight, symmetric = args.kms_symmetric_rate, "KMS pace per account and Region (pairs per second per spec; Decrypt and ReEncrypt per second)");
    Arc::new(
        KmsPace::new(rates, args.kms_max_in_flight, args.kms_symmetric_rate)
            .with_queue_gauge(metrics.kms_key_pairs_queued.clone()),
    )
}

/// Claims the key store's prefix for this cluster now and renews the claim every third of
/// `--key-store-claim-ttl` while the process runs (docs/design.md, "The key store"; a lease by
/// compare-and-swap). Refused, unreachable or lapsed, the store refuses every operation and each
/// attempt logs an error; rotations wait, as for any store failure.
async fn hold_the_prefix(client: &Client, args: &RunArgs, store: KeyStore) -> anyhow::Result<()> {
    let ttl = args.key_store_claim_ttl;
    if ttl < jiff::SignedDuration::from_secs(MIN_CLAIM_TTL_SECS) {
        anyhow::bail!(
            "--key-store-claim-ttl must be at least {MIN_CLAIM_TTL_SECS}s (the store dates objects in whole seconds); got {ttl:#}"
        );
    }
    let cluster_id = match &args.key_store_cluster_id {
        Some(id) => id.clone(),
        None => {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let kube_system = namespaces.get("kube-system").await.with_context(|| {
                "cannot read the kube-system namespace's uid (this cluster's id in the key store's writer claim): grant get on namespaces/kube-system, or set --key-store-cluster-id"
            })?;
            kube_system.uid().context(
                "the kube-system namespace has no uid (this cluster's id in the key store's writer claim): set --key-store-cluster-id",
            )?
        }
    };
    let holder = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kekeeper".to_owned());
    // The first attempt's failure is logged by `hold`; the renewals go on in its task.
    let _ = store.hold(cluster_id, holder, ttl).await;
    Ok(())
}

/// The shortest `--key-store-claim-ttl`.
const MIN_CLAIM_TTL_SECS: i64 = 5;

/// What every namespace's controller shares.
#[derive(Clone)]
struct Shared {
    settings: Settings,
    key_store: Option<KeyStore>,
    kms: CoalescingKms<MeteredKms<SdkKms>>,
    kms_pace: Arc<KmsPace>,
    concurrency: u16,
    reporter: Reporter,
    metrics: Metrics,
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller of one namespace (or of all namespaces).
async fn run_scope(
    client: Client,
    namespace: Option<String>,
    shared: Shared,
    on_synced: impl FnOnce() + Send + 'static,
    shutdown: watch::Receiver<bool>,
) {
    let namespace = namespace.as_deref();
    let rkcs: Api<RecordingKeyConfig> = scoped(&client, namespace);
    let secrets_api: Api<Secret> = scoped(&client, namespace);
    let config_maps_api: Api<ConfigMap> = scoped(&client, namespace);
    // One watch per kind, each feeding both its cache (a steady-state reconcile reads only
    // these) and the controller's triggers, so a deleted or edited key pair Secret or
    // ConfigMap is put right at once.
    // The resources are cached as `CachedConfig`s (see `controller::cache`).
    let (rkc_store, rkc_events) = cached_configs(rkcs, list_in_pages());
    // The owned objects are kept as records and digests, not objects (see `controller::cache`).
    let key_pairs = cache::key_pair_cache();
    let secrets_events = compacted(
        secrets_api,
        list_in_pages().labels(LABEL_CONFIG),
        &key_pairs,
    );
    let managed = format!("{LABEL_MANAGED_BY}=kekeeper");
    let public_keys = cache::public_keys_cache();
    let config_maps_events = compacted(
        config_maps_api,
        list_in_pages().labels(&managed),
        &public_keys,
    );

    let ctx = Context::new(
        client.clone(),
        shared.kms,
        controller::system_clock(),
        Events::new(client.clone(), shared.reporter),
        key_pairs.clone(),
        public_keys.clone(),
        shared.kms_pace,
        shared.settings,
        shared.metrics,
    );
    let ctx = Arc::new(match shared.key_store {
        Some(store) => ctx.with_key_store(store),
        None => ctx,
    });
    // A deleted resource's metric series and failure count go with it.
    let deleted = ctx.clone();
    let rkc_stream = rkc_events
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(cached) = event {
                let rkc = cached.to_config();
                forget_deleted(&deleted.metrics, &rkc);
                deleted.forget_deleted(&rkc);
            }
        })
        .applied_objects();

    let configs = rkc_store.clone();
    let controller = Controller::for_stream(rkc_stream, rkc_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .watches_stream(secrets_events.touched_objects(), move |secret: Secret| {
            configs_of_secret(&secret, &configs)
        })
        .owns_stream(config_maps_events.touched_objects());
    let store = controller.store();
    tokio::spawn(async move {
        if synced(&store).await {
            key_pairs.synced().await;
            public_keys.synced().await;
            on_synced();
        }
    });
    let mut stop = shutdown;
    controller
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(controller::reconcile_cached, controller::error_policy, ctx)
        .for_each(|result| {
            if let Err(err) = result {
                warn!(error = %err, "reconcile");
            }
            futures::future::ready(())
        })
        .await;
}

/// The resources whose reconcile an event on a key pair Secret wakes: the one its metadata
/// names; for a Secret made before the name annotation whose label is only a hash of a long
/// name, the cached resources of its namespace with that label (docs/design.md, "Which config
/// a Secret wakes").
fn configs_of_secret(
    secret: &Secret,
    configs: &reflector::Store<CachedConfig>,
) -> Vec<ObjectRef<CachedConfig>> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    match keypair::config_of(&secret.metadata) {
        Some(SecretConfig::Named(name)) => vec![ObjectRef::new(name).within(&namespace)],
        Some(SecretConfig::Hashed(label)) => configs
            .state()
            .iter()
            .filter(|config| {
                config.namespace().as_deref() == Some(namespace.as_str())
                    && keypair::config_label(&config.name_any()) == label
            })
            .map(|config| ObjectRef::from_obj(config.as_ref()))
            .collect(),
        None => Vec::new(),
    }
}

/// A deleted resource's series go with it.
fn forget_deleted(metrics: &Metrics, rkc: &RecordingKeyConfig) {
    let config = ConfigLabels {
        namespace: rkc.namespace().unwrap_or_default(),
        config: rkc.name_any(),
    };
    metrics.forget(&config, rkc.uid().as_deref(), rkc.status.as_ref());
}

/// Watches that list in pages of 100 objects: the objects of a page are parsed at once, and
/// smaller pages keep that passing memory (and the heap it leaves fragmented) small.
fn list_in_pages() -> watcher::Config {
    watcher::Config::default().page_size(100)
}

/// A cache of the resources as `CachedConfig`s, and the watch events that fill it, for the
/// triggers.
fn cached_configs(
    api: Api<RecordingKeyConfig>,
    config: watcher::Config,
) -> (
    reflector::Store<CachedConfig>,
    impl futures::Stream<Item = Result<watcher::Event<CachedConfig>, watcher::Error>> + Send,
) {
    let (store, writer) = reflector::store();
    let mut compactor = ConfigCompactor::default();
    let events = watcher(api, config).map_ok(move |event| compactor.event(event));
    (store, reflector(writer, events).default_backoff())
}

/// The watch events of `api`'s objects, each taken into `cache` before it is passed on (to
/// trigger reconciles).
fn compacted<K, V>(
    api: Api<K>,
    config: watcher::Config,
    cache: &Cache<K, V>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K, V>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    V: Send + Sync + 'static,
{
    let cache = cache.clone();
    watcher(api, config)
        .default_backoff()
        .inspect_ok(move |event| cache.apply_watcher_event(event))
}

/// Whether a cache has synced (false: its watcher is gone). A store's readiness wakes only its
/// most recent waiter, and the controller waits on its own store too, so this re-polls instead
/// of waiting once.
async fn synced<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await
        {
            return result.is_ok();
        }
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_resource_is_forgotten_by_its_uid() {
        let text = include_str!("../../tests/fixtures/status/ready.json");
        let rkc: RecordingKeyConfig = serde_json::from_str(text).unwrap();
        let uid = Some("5b0e3f0a-8a64-4a4c-9f1e-0d5c1f6a7b21");
        let metrics = Metrics::default();
        assert!(!metrics.is_forgotten(uid));
        forget_deleted(&metrics, &rkc);
        assert!(metrics.is_forgotten(uid));
    }

    /// An event on a key pair Secret wakes its config, whatever the length of the name: by the
    /// name annotation; a Secret from before it, by its label, or by the cached config whose
    /// label it is when the label is a hash.
    #[test]
    fn a_secret_wakes_the_config_it_names_whatever_the_length() {
        let text = include_str!("../../tests/fixtures/status/ready.json");
        let template: RecordingKeyConfig = serde_json::from_str(text).unwrap();
        let namespace = template.namespace().unwrap();
        let (store, mut writer) = reflector::store::<CachedConfig>();
        let mut compactor = ConfigCompactor::default();
        let names: Vec<String> = [1, 63, 64, 253].map(|n| "k".repeat(n)).into();
        for name in &names {
            let mut rkc = template.clone();
            rkc.metadata.name = Some(name.clone());
            writer.apply_watcher_event(&compactor.event(watcher::Event::Apply(rkc)));
        }
        // The same long name in another namespace is not woken.
        let mut elsewhere = template.clone();
        elsewhere.metadata.name = Some(names[3].clone());
        elsewhere.metadata.namespace = Some("elsewhere".into());
        writer.apply_watcher_event(&compactor.event(watcher::Event::Apply(elsewhere)));

        for name in &names {
            let pair = crate::keypair::KeyPairSecret {
                record: crate::keypair::KeyPairRecord {
                    config_name: name.clone(),
                    namespace: namespace.clone(),
                    secret_name: crate::keypair::KeyPairRecord::secret_name(name, "org", 1),
                    ..crate::keypair::test_pair(
                        "org",
                        1,
                        crate::kms::KeyPairSpec::Rsa2048,
                        vec![1, 2, 3],
                        "2026-11-30T10:00:00Z".parse().unwrap(),
                    )
                },
                private_key_ciphertext: vec![9; 8],
                wraps: Vec::new(),
            };
            let expected = vec![ObjectRef::<CachedConfig>::new(name).within(&namespace)];
            let secret = pair.to_secret().unwrap();
            assert_eq!(configs_of_secret(&secret, &store), expected, "{name}");
            let mut older = secret.clone();
            older
                .annotations_mut()
                .remove(crate::keypair::ANNOTATION_CONFIG);
            assert_eq!(configs_of_secret(&older, &store), expected, "{name}");
        }
        let mut unlabelled = Secret::default();
        unlabelled.metadata.namespace = Some(namespace);
        assert!(configs_of_secret(&unlabelled, &store).is_empty());
    }
}
