//! One token bucket shared by every reconcile: KMS quotas for RSA key pair generation are low,
//! so throttling is avoided up front instead of retried after.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A bucket of `burst` tokens refilled at `rate` per second; `acquire` waits for a token.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

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
        }
    }

    /// Takes a token, waiting until one is available. Waiters queue on the mutex, so tokens
    /// are handed out in order.
    pub async fn acquire(&self) {
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
        bucket.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(10));
        bucket.acquire().await;
        bucket.acquire().await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1990), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }
}
