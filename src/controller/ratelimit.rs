//! One token bucket shared by every reconcile: KMS quotas for RSA key pair generation are low,
//! so throttling is avoided up front instead of retried after. It also bounds how many key
//! pairs are in flight (generated but not yet self-tested), so the queue forms here and not in
//! KMS: a pair that KMS made is always tested before the SDK's timeout, never thrown away.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
