//! KMS pacing (docs/design.md, "Rate limits"): AWS KMS counts `GenerateDataKeyPair*` against a
//! quota per key pair spec, per account and Region, and the quotas are low (RSA_3072: one pair
//! every two seconds), so throttling is avoided up front instead of retried after. Every
//! resource draws from one token bucket per (account, Region, key pair spec); `Decrypt` and
//! `ReEncrypt`, whose quota is thousands of times larger, draw from a separate symmetric bucket
//! so a custody check never waits behind key pair generation.
//!
//! Each key pair bucket also bounds how many of its pairs are in flight (generated but not yet
//! self-tested), so the queue forms here and not in KMS: a pair that KMS made is always tested
//! before the SDK's timeout, never thrown away. And it knows how many pairs the running
//! reconciles still have to make, for the queue gauge and the time-to-finish estimate in status.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::arn::AliasArn;
use crate::kms::KeyPairSpec;
use crate::metrics::KeyPairSpecLabels;

/// Every key pair spec the CRD allows (the RSA ones; KMS's ECC specs do not suit key
/// encryption, so the CRD has none).
pub const KEY_PAIR_SPECS: [KeyPairSpec; 3] = [
    KeyPairSpec::Rsa2048,
    KeyPairSpec::Rsa3072,
    KeyPairSpec::Rsa4096,
];

/// AWS KMS's documented request quota for `GenerateDataKeyPair` and
/// `GenerateDataKeyPairWithoutPlaintext` together, per account and Region, in requests per
/// second (AWS KMS developer guide, "Request quotas").
pub fn aws_key_pair_quota(spec: KeyPairSpec) -> f64 {
    match spec {
        KeyPairSpec::Rsa2048 => 1.0,
        KeyPairSpec::Rsa3072 => 0.5,
        KeyPairSpec::Rsa4096 => 0.1,
    }
}

/// The default pace: this share of AWS's quota, leaving room for the arrival jitter of our own
/// requests and for the odd call of another principal (docs/design.md, "Rate limits").
pub const DEFAULT_QUOTA_SHARE: f64 = 0.9;

/// The default symmetric pace (`Decrypt`, `ReEncrypt`), per second for the whole operator: far
/// under the smallest Region's shared quota for symmetric cryptographic operations (5,500/s),
/// which the recorders' own Decrypts share, and still 8.6 million Decrypts a day.
pub const DEFAULT_SYMMETRIC_RATE: f64 = 100.0;

/// One `--kms-keypair-rate` value: `RSA_3072=0.45` for one spec, or a bare number for every
/// spec (the older single-number form).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyPairRate {
    Every(f64),
    Spec(KeyPairSpec, f64),
}

impl FromStr for KeyPairRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (spec, rate) = match text.split_once('=') {
            Some((spec, rate)) => (Some(spec.trim()), rate.trim()),
            None => (None, text),
        };
        let rate: f64 = rate.parse().map_err(|_| {
            format!("{text:?}: expected pairs per second, e.g. RSA_3072=0.45 or 0.45")
        })?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "{text:?}: the rate must be a positive number of pairs per second"
            ));
        }
        match spec {
            None => Ok(KeyPairRate::Every(rate)),
            Some(name) => KEY_PAIR_SPECS
                .into_iter()
                .find(|s| s.as_str() == name)
                .map(|s| KeyPairRate::Spec(s, rate))
                .ok_or_else(|| {
                    format!("{text:?}: unknown key pair spec {name:?}; use RSA_2048, RSA_3072 or RSA_4096")
                }),
        }
    }
}

/// Key pairs per second per spec, for each account and Region.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPairRates(BTreeMap<&'static str, f64>);

impl Default for KeyPairRates {
    /// [`DEFAULT_QUOTA_SHARE`] of AWS's quotas.
    fn default() -> Self {
        KeyPairRates(
            KEY_PAIR_SPECS
                .into_iter()
                .map(|s| (s.as_str(), aws_key_pair_quota(s) * DEFAULT_QUOTA_SHARE))
                .collect(),
        )
    }
}

impl KeyPairRates {
    /// The defaults, overridden by `flags` in order (a bare number sets every spec).
    pub fn from_flags(flags: &[KeyPairRate]) -> Self {
        let mut rates = KeyPairRates::default();
        for flag in flags {
            match *flag {
                KeyPairRate::Every(rate) => rates.0.values_mut().for_each(|r| *r = rate),
                KeyPairRate::Spec(spec, rate) => {
                    rates.0.insert(spec.as_str(), rate);
                }
            }
        }
        rates
    }

    pub fn rate(&self, spec: KeyPairSpec) -> f64 {
        self.0
            .get(spec.as_str())
            .copied()
            .unwrap_or(aws_key_pair_quota(spec) * DEFAULT_QUOTA_SHARE)
    }
}

impl fmt::Display for KeyPairRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 90 % of 0.1/s reads 0.09/s, not 0.09000000000000001/s.
        let rates: Vec<String> = self
            .0
            .iter()
            .map(|(s, r)| format!("{s}={}/s", round_rate(*r)))
            .collect();
        f.write_str(&rates.join(", "))
    }
}

/// A bucket of `burst` tokens refilled at `rate` per second; `acquire` waits for a token (and
/// for a free in-flight slot, when bounded).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    in_flight: Option<Arc<Semaphore>>,
}

/// Held from generation to the end of the self-test: one of the in-flight slots.
#[must_use = "the in-flight slot is released when the permit is dropped"]
#[derive(Debug)]
pub struct KeyPairPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl TokenBucket {
    /// `rate` tokens per second (at least one per hour), starting full.
    pub fn new(rate: f64, burst: u32) -> Self {
        let rate = if rate.is_finite() {
            rate.max(1.0 / 3600.0)
        } else {
            1.0
        };
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
            in_flight: None,
        }
    }

    /// At most `n` key pairs in flight (generated and not yet self-tested) at once.
    pub fn with_in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(Arc::new(Semaphore::new(n.max(1))));
        self
    }

    /// Tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes an in-flight slot, then a token, waiting until both are available. Waiters queue
    /// on the semaphore and the mutex, so they are served in order.
    pub async fn acquire(&self) -> KeyPairPermit {
        let permit = match &self.in_flight {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        self.take_token().await;
        KeyPairPermit(permit)
    }

    async fn take_token(&self) {
        let mut state = self.state.lock().await;
        loop {
            let now = Instant::now();
            let (tokens, last) = *state;
            let tokens =
                (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
            if tokens >= 1.0 {
                *state = (tokens - 1.0, now);
                return;
            }
            *state = (tokens, now);
            let wait = Duration::from_secs_f64((1.0 - tokens) / self.rate);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Where a key pair quota applies: AWS counts it per account and Region, per spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    pub account: String,
    pub region: String,
    pub spec: KeyPairSpec,
}

impl QuotaKey {
    /// The quota a pair generated under `alias` counts against (generation happens in the
    /// alias's Region, the home Region).
    pub fn of(alias: &AliasArn, spec: KeyPairSpec) -> Self {
        QuotaKey {
            account: alias.account().to_owned(),
            region: alias.region().to_owned(),
            spec,
        }
    }
}

/// The operator's KMS pace: one key pair bucket per [`QuotaKey`], made when first used, and one
/// symmetric bucket.
#[derive(Debug)]
pub struct KmsPace {
    rates: KeyPairRates,
    in_flight: usize,
    key_pairs: StdMutex<HashMap<QuotaKey, Arc<TokenBucket>>>,
    symmetric: TokenBucket,
    /// Pairs each running reconcile (by `namespace/name`) still has to make, per quota.
    queued: StdMutex<HashMap<QuotaKey, HashMap<String, usize>>>,
    /// `kekeeper_kms_key_pairs_queued{spec}`, when the operator exports it.
    queued_gauge: Option<Family<KeyPairSpecLabels, Gauge>>,
}

impl KmsPace {
    /// Key pairs at `rates`, at most `in_flight` of each bucket between generation and the end
    /// of their self-test; Decrypt and ReEncrypt at `symmetric_rate` per second, with a burst of
    /// one second's worth.
    pub fn new(rates: KeyPairRates, in_flight: usize, symmetric_rate: f64) -> Self {
        let burst = symmetric_rate.clamp(1.0, f64::from(u32::MAX)) as u32;
        KmsPace {
            rates,
            in_flight,
            key_pairs: StdMutex::default(),
            symmetric: TokenBucket::new(symmetric_rate, burst),
            queued: StdMutex::default(),
            queued_gauge: None,
        }
    }

    /// Every key pair spec at `rate` per second and Decrypt at 100 times that: for tests.
    pub fn uniform(rate: f64, in_flight: usize) -> Self {
        KmsPace::new(
            KeyPairRates::from_flags(&[KeyPairRate::Every(rate)]),
            in_flight,
            rate * 100.0,
        )
    }

    /// Exports the queued pairs per spec in `gauge`.
    pub fn with_queue_gauge(mut self, gauge: Family<KeyPairSpecLabels, Gauge>) -> Self {
        self.queued_gauge = Some(gauge);
        self
    }

    /// The bucket of key pairs of `spec` under `alias` (its account and Region).
    pub fn key_pairs(&self, alias: &AliasArn, spec: KeyPairSpec) -> Arc<TokenBucket> {
        lock(&self.key_pairs)
            .entry(QuotaKey::of(alias, spec))
            .or_insert_with(|| {
                Arc::new(TokenBucket::new(self.rates.rate(spec), 1).with_in_flight(self.in_flight))
            })
            .clone()
    }

    /// The bucket of Decrypt and ReEncrypt, for the whole operator.
    pub fn symmetric(&self) -> &TokenBucket {
        &self.symmetric
    }

    pub fn rates(&self) -> &KeyPairRates {
        &self.rates
    }

    /// Records that `resource` (`namespace/name`) has `pairs` to make under `alias` at `spec`;
    /// the returned handle counts them down and forgets them when dropped.
    pub fn queue(
        self: &Arc<Self>,
        alias: &AliasArn,
        spec: KeyPairSpec,
        resource: String,
        pairs: usize,
    ) -> QueuedPairs {
        let key = QuotaKey::of(alias, spec);
        lock(&self.queued)
            .entry(key.clone())
            .or_default()
            .insert(resource.clone(), pairs);
        self.export(spec);
        QueuedPairs {
            pace: self.clone(),
            key,
            resource,
        }
    }

    /// Progress and time left for `resource`'s queued pairs under `alias` at `spec`, if it has
    /// any.
    pub fn estimate(
        &self,
        alias: &AliasArn,
        spec: KeyPairSpec,
        resource: &str,
    ) -> Option<PaceEstimate> {
        let key = QuotaKey::of(alias, spec);
        let queued = lock(&self.queued);
        let resources = queued.get(&key)?;
        let mine = *resources.get(resource).filter(|n| **n > 0)?;
        Some(PaceEstimate::new(
            spec,
            self.rates.rate(spec),
            mine,
            resources.values().copied(),
        ))
    }

    /// Pairs queued for `spec`, in every account and Region.
    pub fn queued(&self, spec: KeyPairSpec) -> usize {
        lock(&self.queued)
            .iter()
            .filter(|(key, _)| key.spec == spec)
            .flat_map(|(_, resources)| resources.values())
            .sum()
    }

    fn export(&self, spec: KeyPairSpec) {
        if let Some(gauge) = &self.queued_gauge {
            let labels = KeyPairSpecLabels {
                spec: spec.as_str().to_owned(),
            };
            gauge
                .get_or_create(&labels)
                .set(i64::try_from(self.queued(spec)).unwrap_or(i64::MAX));
        }
    }
}

fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running reconcile's pairs in the queue; forgotten when dropped (done, failed or
/// cancelled).
#[derive(Debug)]
pub struct QueuedPairs {
    pace: Arc<KmsPace>,
    key: QuotaKey,
    resource: String,
}

impl QueuedPairs {
    /// One pair fewer to make (it was generated, or its attempt failed).
    pub fn one_done(&self) {
        if let Some(n) = lock(&self.pace.queued)
            .get_mut(&self.key)
            .and_then(|r| r.get_mut(&self.resource))
        {
            *n = n.saturating_sub(1);
        }
        self.pace.export(self.key.spec);
    }
}

impl Drop for QueuedPairs {
    fn drop(&mut self) {
        let mut queued = lock(&self.pace.queued);
        if let Some(resources) = queued.get_mut(&self.key) {
            resources.remove(&self.resource);
            if resources.is_empty() {
                queued.remove(&self.key);
            }
        }
        drop(queued);
        self.pace.export(self.key.spec);
    }
}

/// How long one resource's queued pairs will take at the pace, with the queue they share.
#[derive(Clone, Debug, PartialEq)]
pub struct PaceEstimate {
    pub spec: KeyPairSpec,
    /// Pairs per second of this spec's bucket.
    pub rate: f64,
    /// This resource's pairs still to make.
    pub queued_here: usize,
    /// Every running reconcile's pairs still to make under the same quota.
    pub queued: usize,
    /// Until this resource's last pair is generated.
    pub left: Duration,
}

impl PaceEstimate {
    /// The running reconciles share the bucket in turn (its waiters are served in order, and a
    /// reconcile asks for its next pair as soon as it has stored one): a round hands one token
    /// to every resource that still wants one. This resource's last pair comes in round
    /// `mine`, after every resource's pairs of the rounds before (min(theirs, mine - 1) each)
    /// and, on average, half of the last round's. `queued` includes this resource's own count.
    /// Good to one round (the resource cannot know its place in it) or 10 %, whichever is more.
    pub fn new(
        spec: KeyPairSpec,
        rate: f64,
        mine: usize,
        queued: impl IntoIterator<Item = usize>,
    ) -> Self {
        let (mut total, mut rounds_before, mut in_last_round) = (0usize, 0usize, 0usize);
        for theirs in queued {
            total += theirs;
            rounds_before += theirs.min(mine.saturating_sub(1));
            in_last_round += usize::from(theirs >= mine);
        }
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let tokens = rounds_before as f64 + (in_last_round.max(1) as f64 + 1.0) / 2.0;
        PaceEstimate {
            spec,
            rate,
            queued_here: mine,
            queued: total,
            left: Duration::from_secs_f64(tokens / rate),
        }
    }

    /// `about 33 min left at 0.45 RSA_3072 pairs/s (900 queued by running reconciles)`.
    pub fn message(&self) -> String {
        format!(
            "about {} left at {} {} pairs/s ({} queued by running reconciles)",
            human_duration(self.left),
            round_rate(self.rate),
            self.spec,
            self.queued
        )
    }
}

/// `45 s`, `3 min 20 s`, `33 min`, `2 h 5 min`: rounded up, coarser as it grows.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64().ceil() as u64;
    match secs {
        0..=89 => format!("{} s", secs.max(1)),
        90..=599 if secs % 60 == 0 => format!("{} min", secs / 60),
        90..=599 => format!("{} min {} s", secs / 60, secs % 60),
        600..=5399 => format!("{} min", secs.div_ceil(60)),
        _ => {
            let mins = secs.div_ceil(60);
            format!("{} h {} min", mins / 60, mins % 60)
        }
    }
}

/// A rate as people write it: `0.45`, `2`, `0.09`.
fn round_rate(rate: f64) -> String {
    let text = format!("{rate:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(account: &str, region: &str) -> AliasArn {
        AliasArn::parse(&format!("arn:aws:kms:{region}:{account}:alias/recordings")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn hands_out_tokens_at_the_rate() {
        let bucket = TokenBucket::new(1.0, 1);
        let start = Instant::now();
        let _ = bucket.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(10));
        let _ = bucket.acquire().await;
        let _ = bucket.acquire().await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1990), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_the_key_pairs_in_flight() {
        let bucket = Arc::new(TokenBucket::new(1000.0, 1000).with_in_flight(2));
        let first = bucket.acquire().await;
        let _second = bucket.acquire().await;
        let third = tokio::spawn({
            let bucket = bucket.clone();
            async move {
                let _permit = bucket.acquire().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "a third pair went in flight");
        drop(first);
        third.await.unwrap();
    }

    #[test]
    fn rates_default_to_90_percent_of_aws_quotas_and_take_overrides_in_order() {
        let defaults = KeyPairRates::default();
        assert_eq!(defaults.rate(KeyPairSpec::Rsa2048), 0.9);
        assert_eq!(defaults.rate(KeyPairSpec::Rsa3072), 0.45);
        assert!((defaults.rate(KeyPairSpec::Rsa4096) - 0.09).abs() < 1e-12);
        assert_eq!(
            defaults.to_string(),
            "RSA_2048=0.9/s, RSA_3072=0.45/s, RSA_4096=0.09/s"
        );
        let flags: Vec<KeyPairRate> = ["RSA_3072=0.3", "2", "RSA_4096=0.05"]
            .iter()
            .map(|f| f.parse().unwrap())
            .collect();
        let rates = KeyPairRates::from_flags(&flags);
        assert_eq!(rates.rate(KeyPairSpec::Rsa2048), 2.0);
        assert_eq!(
            rates.rate(KeyPairSpec::Rsa3072),
            2.0,
            "a bare number sets every spec"
        );
        assert_eq!(rates.rate(KeyPairSpec::Rsa4096), 0.05);
        assert_eq!(
            rates.to_string(),
            "RSA_2048=2/s, RSA_3072=2/s, RSA_4096=0.05/s"
        );
    }

    #[test]
    fn bad_rates_name_the_problem() {
        for (text, says) in [
            ("RSA_1024=1", "unknown key pair spec \"RSA_1024\""),
            ("ECC_NIST_P256=1", "use RSA_2048, RSA_3072 or RSA_4096"),
            ("RSA_3072=0", "positive"),
            ("-1", "positive"),
            ("RSA_3072=fast", "e.g. RSA_3072=0.45"),
            ("inf", "positive"),
        ] {
            let err = text.parse::<KeyPairRate>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    /// Each account, Region and spec has a bucket of its own; the same triple shares one.
    #[tokio::test(start_paused = true)]
    async fn one_bucket_per_account_region_and_spec() {
        let pace = KmsPace::new(KeyPairRates::default(), 4, 100.0);
        let a = alias("111122223333", "us-east-1");
        let bucket = pace.key_pairs(&a, KeyPairSpec::Rsa3072);
        assert!(Arc::ptr_eq(
            &bucket,
            &pace.key_pairs(&a, KeyPairSpec::Rsa3072)
        ));
        assert_eq!(bucket.rate(), 0.45);
        for (other, spec) in [
            (alias("111122223333", "us-east-1"), KeyPairSpec::Rsa2048),
            (alias("111122223333", "eu-west-1"), KeyPairSpec::Rsa3072),
            (alias("444455556666", "us-east-1"), KeyPairSpec::Rsa3072),
        ] {
            assert!(!Arc::ptr_eq(&bucket, &pace.key_pairs(&other, spec)));
        }
        // RSA_3072 pairs at 0.45/s: the third is out after 2 / 0.45 s; RSA_2048 meanwhile is not
        // held up.
        let start = Instant::now();
        for _ in 0..3 {
            let _ = bucket.acquire().await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((elapsed - 2.0 / 0.45).abs() < 0.01, "{elapsed}");
        let start = Instant::now();
        let _ = pace.key_pairs(&a, KeyPairSpec::Rsa2048).acquire().await;
        assert!(start.elapsed() < Duration::from_millis(1));
        // The symmetric bucket: a second's worth at once.
        let start = Instant::now();
        for _ in 0..100 {
            let _ = pace.symmetric().acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1));
    }

    #[test]
    fn the_estimate_reads_like_a_person_wrote_it() {
        let estimate = PaceEstimate::new(KeyPairSpec::Rsa3072, 0.45, 100, [100; 9]);
        assert_eq!(estimate.queued, 900);
        assert_eq!(estimate.left.as_secs(), (896.0 / 0.45) as u64);
        assert_eq!(
            estimate.message(),
            "about 34 min left at 0.45 RSA_3072 pairs/s (900 queued by running reconciles)"
        );
        // Others with fewer pairs than this resource hold it up only for theirs.
        let estimate = PaceEstimate::new(KeyPairSpec::Rsa2048, 0.9, 9, [9, 1, 2]);
        assert_eq!(estimate.left.as_secs(), (12.0 / 0.9) as u64);
        assert_eq!(human_duration(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(human_duration(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(human_duration(Duration::from_secs(240)), "4 min");
        assert_eq!(human_duration(Duration::from_secs(601)), "11 min");
        assert_eq!(human_duration(Duration::from_millis(200)), "1 s");
    }

    /// The estimate against the clock: several resources queue pairs on one bucket, each
    /// taking its pairs one after another as a reconcile does; each one's estimate at the start
    /// is within 10 % (or one token) of when its last pair really came out.
    #[tokio::test(start_paused = true)]
    async fn the_estimate_matches_the_time_the_pairs_take() {
        let pace = Arc::new(KmsPace::new(KeyPairRates::default(), 4, 100.0));
        let a = alias("111122223333", "us-east-1");
        let wants = [40usize, 25, 10, 3, 40, 1];
        let queued: Vec<QueuedPairs> = wants
            .iter()
            .enumerate()
            .map(|(i, n)| pace.queue(&a, KeyPairSpec::Rsa3072, format!("ns/r{i}"), *n))
            .collect();
        assert_eq!(pace.queued(KeyPairSpec::Rsa3072), 119);
        assert_eq!(pace.queued(KeyPairSpec::Rsa2048), 0);
        let estimates: Vec<Duration> = (0..wants.len())
            .map(|i| {
                pace.estimate(&a, KeyPairSpec::Rsa3072, &format!("ns/r{i}"))
                    .unwrap()
                    .left
            })
            .collect();
        let start = Instant::now();
        let tasks: Vec<_> = queued
            .into_iter()
            .zip(wants)
            .map(|(queued, n)| {
                let bucket = pace.key_pairs(&a, KeyPairSpec::Rsa3072);
                tokio::spawn(async move {
                    for _ in 0..n {
                        let _permit = bucket.acquire().await;
                        // The self-test and the Secret write take a moment.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        queued.one_done();
                    }
                    start.elapsed()
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let took = task.await.unwrap().as_secs_f64();
            let estimated = estimates[i].as_secs_f64();
            let one_round = wants.len() as f64 / 0.45;
            let tolerance = (0.1 * took).max(one_round);
            assert!(
                (estimated - took).abs() <= tolerance,
                "resource {i} ({} pairs): estimated {estimated:.1} s, took {took:.1} s",
                wants[i]
            );
        }
        assert_eq!(pace.queued(KeyPairSpec::Rsa3072), 0, "all forgotten");
        assert!(
            pace.estimate(&a, KeyPairSpec::Rsa3072, "ns/r0").is_none(),
            "no estimate without queued pairs"
        );
    }

    #[test]
    fn the_queue_gauge_follows_the_queue() {
        let gauge = Family::<KeyPairSpecLabels, Gauge>::default();
        let pace = Arc::new(
            KmsPace::new(KeyPairRates::default(), 4, 100.0).with_queue_gauge(gauge.clone()),
        );
        let a = alias("111122223333", "us-east-1");
        let b = alias("111122223333", "eu-west-1");
        let value = || {
            gauge
                .get_or_create(&KeyPairSpecLabels {
                    spec: "RSA_4096".to_owned(),
                })
                .get()
        };
        let first = pace.queue(&a, KeyPairSpec::Rsa4096, "ns/a".into(), 3);
        let second = pace.queue(&b, KeyPairSpec::Rsa4096, "ns/b".into(), 2);
        assert_eq!(value(), 5, "every account and Region");
        first.one_done();
        assert_eq!(value(), 4);
        drop(first);
        assert_eq!(value(), 2);
        drop(second);
        assert_eq!(value(), 0);
    }
}
