//! Heap bytes the controller's caches hold for N resources, by a counting allocator
//! (`cargo bench --bench cache_memory -- [N]`, 10,000 by default): the RecordingKeyConfig
//! store, the key pair cache and the public-keys cache, each filled as the operator's watches
//! fill them. With `PARTS=1` it first prints what a cached resource costs with each part of
//! its status left out. Bytes asked for, not the allocator's size classes; the resource is a
//! Ready one of one organisation (`tests/fixtures/status/ready.json`, cut to one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kekeeper::controller::cache::{self, CachedConfig, ConfigCompactor};
use kekeeper::crd::RecordingKeyConfig;
use kekeeper::keypair::{KeyPairRecord, KeyPairSecret, KeyPairState};
use kekeeper::kms::{EncryptionContext, KeyPairSpec};
use kube::runtime::{reflector, watcher};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn report(what: &str, before: isize, n: usize) {
    let bytes = live() - before;
    println!(
        "{what:<40} {:>8.2} MiB  {:>6.0} B per resource",
        bytes as f64 / 1048576.0,
        bytes as f64 / n as f64
    );
}

fn org(i: usize) -> String {
    format!("3fa85f64-5717-4562-b3fc-{i:012x}")
}

/// A Ready resource of one organisation, as the fleet benchmark's look after their cold start.
fn resource(i: usize) -> RecordingKeyConfig {
    let text = include_str!("../tests/fixtures/status/ready.json");
    let mut value: serde_json::Value = serde_json::from_str(text).expect("fixture");
    let name = format!("big-{i}");
    value["metadata"]["name"] = name.clone().into();
    value["metadata"]["namespace"] = "default".into();
    value["metadata"]["uid"] = format!("5b0e3f0a-8a64-4a4c-9f1e-{i:012x}").into();
    value["metadata"]["resourceVersion"] = (100_000 + i).to_string().into();
    value["spec"]["organizationIds"] = serde_json::json!([org(i)]);
    for list in ["activeKeyPairs", "keyPairHistory"] {
        let pairs = value["status"][list].as_array_mut().expect("pairs");
        pairs.truncate(1);
        pairs[0]["organizationId"] = org(i).into();
        pairs[0]["secretName"] = format!("{name}-c7aa09cd25-1").into();
        pairs[0]["keyPairId"] = format!("9ea95011-8ffc-41eb-a2ca-{i:012x}").into();
    }
    value["status"]["organizationCount"] = 1.into();
    value["status"]["conditions"][0]["message"] =
        "1/1 organisations have an active key pair".into();
    value["status"]["highestSequences"] = serde_json::json!({org(i): 1});
    serde_json::from_value(value).expect("resource")
}

fn secret(i: usize) -> k8s_openapi::api::core::v1::Secret {
    let config = format!("big-{i}");
    let record = KeyPairRecord {
        config_name: config.clone(),
        namespace: "default".into(),
        organization_id: org(i),
        sequence: 1,
        secret_name: KeyPairRecord::secret_name(&config, &org(i), 1),
        key_pair_id: format!("9ea95011-8ffc-41eb-a2ca-{i:012x}"),
        kms_key_arn: "arn:aws:kms:us-east-1:000000000000:key/fast-stand-in".into(),
        kms_key_alias_arn: Some("arn:aws:kms:us-east-1:000000000000:alias/fast-stand-in".into()),
        key_pair_spec: KeyPairSpec::Rsa2048,
        encryption_context: EncryptionContext {
            key: "genesys-cloud-organization-id".into(),
            organization_id: org(i),
        },
        created_at: "2026-11-30T10:00:00Z".parse().expect("time"),
        reason: "NoActiveKeyPair".into(),
        state: KeyPairState::Active,
        retired_at: None,
        public_key_der: vec![7; 294],
    };
    KeyPairSecret {
        record,
        private_key_ciphertext: vec![9; 1400],
        wraps: Vec::new(),
    }
    .to_secret()
    .expect("secret")
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);

    if std::env::var("PARTS").is_ok() {
        parts(n);
    }
    let before = live();
    let (store, mut writer) = reflector::store::<CachedConfig>();
    let mut compactor = ConfigCompactor::default();
    writer.apply_watcher_event(&compactor.event(watcher::Event::Init));
    for i in 0..n {
        let event = compactor.event(watcher::Event::InitApply(resource(i)));
        writer.apply_watcher_event(&event);
    }
    writer.apply_watcher_event(&compactor.event(watcher::Event::InitDone));
    report("RecordingKeyConfig store", before, n);

    let before = live();
    let key_pairs = cache::key_pair_cache();
    key_pairs.apply_watcher_event(&watcher::Event::Init);
    for i in 0..n {
        key_pairs.apply_watcher_event(&watcher::Event::InitApply(secret(i)));
    }
    key_pairs.apply_watcher_event(&watcher::Event::InitDone);
    report("key pair cache", before, n);

    let before = live();
    let public_keys = cache::public_keys_cache();
    public_keys.apply_watcher_event(&watcher::Event::Init);
    for i in 0..n {
        let mut config_map = k8s_openapi::api::core::v1::ConfigMap::default();
        config_map.metadata.name = Some(format!("big-{i}-public-keys"));
        config_map.metadata.namespace = Some("default".into());
        public_keys.apply_watcher_event(&watcher::Event::InitApply(config_map));
    }
    public_keys.apply_watcher_event(&watcher::Event::InitDone);
    report("public-keys cache", before, n);
    println!("{} resources in the store", store.state().len());
}

fn parts(n: usize) {
    let measure = |what: &str, edit: &dyn Fn(&mut RecordingKeyConfig)| {
        let mut strings = cache::SharedParts::default();
        let before = live();
        let kept: Vec<CachedConfig> = (0..n)
            .map(|i| {
                let mut rkc = resource(i);
                edit(&mut rkc);
                CachedConfig::new(rkc, &mut strings)
            })
            .collect();
        report(what, before, n);
        drop(kept);
    };
    use std::mem::size_of;
    println!(
        "sizes: CachedConfig {} ObjectMeta {} spec {} status {} active {} history {} condition {}",
        size_of::<CachedConfig>(),
        size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(),
        size_of::<kekeeper::crd::RecordingKeyConfigSpec>(),
        size_of::<kekeeper::crd::RecordingKeyConfigStatus>(),
        size_of::<kekeeper::crd::ActiveKeyPair>(),
        size_of::<kekeeper::crd::KeyPairHistoryEntry>(),
        size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>(),
    );
    measure("CachedConfig", &|_| {});
    measure("  without status", &|r| r.status = None);
    measure("  without history", &|r| {
        r.status.as_mut().unwrap().key_pair_history.clear()
    });
    measure("  without active", &|r| {
        r.status.as_mut().unwrap().active_key_pairs.clear()
    });
    measure("  without highest_sequences", &|r| {
        r.status.as_mut().unwrap().highest_sequences.clear()
    });
    measure("  without conditions", &|r| {
        r.status.as_mut().unwrap().conditions.clear()
    });
    measure("  without lastTest", &|r| {
        r.status.as_mut().unwrap().last_test = None
    });
}
