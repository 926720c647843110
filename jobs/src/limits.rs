//! Tokens-per-minute limits of allocations: one token bucket per organisation and model,
//! holding at most a minute's tokens and refilled continuously. Admission takes the job's
//! largest size (prompt + max_tokens) from it; settlement gives back what the job did not use,
//! so a tenant is limited by the tokens it really consumes. Hand-written rather than a rate
//! limiting crate because of that give-back, which the usual GCRA limiters cannot express.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    per_minute: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let cap = self.per_minute as f64;
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        self.at = now;
    }
}

/// Why a job may not start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Retry after this many seconds.
    Wait(u64),
    /// Larger than a whole minute's allowance: it can never start under this limit.
    TooLarge,
}

#[derive(Default)]
pub struct TokenLimits {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl TokenLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `tokens` from the organisation's bucket for the model, limited to `per_minute`.
    pub fn take(
        &self,
        org: &str,
        model: &str,
        per_minute: u64,
        tokens: u64,
        now: Instant,
    ) -> Result<(), Refusal> {
        if tokens > per_minute {
            return Err(Refusal::TooLarge);
        }
        let mut buckets = self.lock();
        let b = buckets
            .entry((org.to_string(), model.to_string()))
            .or_insert(Bucket {
                per_minute,
                tokens: per_minute as f64,
                at: now,
            });
        if b.per_minute != per_minute {
            // The allocation's limit changed: keep the fill level, within the new size.
            b.per_minute = per_minute;
            b.tokens = b.tokens.min(per_minute as f64);
        }
        b.refill(now);
        if b.tokens >= tokens as f64 {
            b.tokens -= tokens as f64;
            Ok(())
        } else {
            let missing = tokens as f64 - b.tokens;
            Err(Refusal::Wait(
                (missing * 60.0 / per_minute as f64).ceil().max(1.0) as u64,
            ))
        }
    }

    /// Gives back tokens a job took but did not use.
    pub fn give_back(&self, org: &str, model: &str, tokens: u64, now: Instant) {
        if tokens == 0 {
            return;
        }
        if let Some(b) = self.lock().get_mut(&(org.to_string(), model.to_string())) {
            b.refill(now);
            b.tokens = (b.tokens + tokens as f64).min(b.per_minute as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_holds_a_minute_refills_and_takes_back_unused_tokens() {
        let limits = TokenLimits::default();
        let t0 = Instant::now();
        assert_eq!(limits.take("o", "m", 600, 601, t0), Err(Refusal::TooLarge));
        assert_eq!(limits.take("o", "m", 600, 500, t0), Ok(()));
        // 100 left; 150 more needs 50 = 5 s of refill at 10 tokens/s.
        assert_eq!(limits.take("o", "m", 600, 150, t0), Err(Refusal::Wait(5)));
        assert_eq!(
            limits.take("o", "m", 600, 150, t0 + Duration::from_secs(5)),
            Ok(())
        );
        // Other organisations and models have their own buckets.
        assert_eq!(limits.take("p", "m", 600, 600, t0), Ok(()));
        assert_eq!(limits.take("o", "n", 600, 600, t0), Ok(()));
        // Unused tokens come back, never above a minute's worth.
        let t1 = t0 + Duration::from_secs(5);
        limits.give_back("o", "m", 100, t1);
        assert_eq!(limits.take("o", "m", 600, 100, t1), Ok(()));
        limits.give_back("o", "m", 10_000, t1);
        assert_eq!(limits.take("o", "m", 600, 600, t1), Ok(()));
        assert!(limits.take("o", "m", 600, 1, t1).is_err());
    }
}
