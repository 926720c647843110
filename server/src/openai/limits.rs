//! Per-key request rate limits (RELIABILITY K2): a generic cell rate limiter per API key, so
//! one key's burst cannot starve the others and the answer says when to retry. Limits are per
//! portal instance.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};

use super::error::ApiError;

pub struct KeyLimits {
    limiter: DefaultKeyedRateLimiter<String>,
    per_minute: NonZeroU32,
}

impl KeyLimits {
    pub fn per_minute(per_minute: NonZeroU32) -> KeyLimits {
        KeyLimits {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            per_minute,
        }
    }

    pub fn check(&self, key_id: &str) -> Result<(), ApiError> {
        self.limiter.check_key(&key_id.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::rate_limited(
                format!(
                    "Rate limit reached for this API key: {} requests per minute. Retry after {} s.",
                    self.per_minute,
                    wait.as_secs().max(1)
                ),
                "rate_limit_exceeded",
                wait.as_secs_f64().ceil() as u64,
            )
        })
    }

    /// Forgets keys that are back at full allowance (bounded memory).
    pub fn prune(&self) {
        self.limiter.retain_recent();
    }
}
