//! Per-client request budgets of the API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A token bucket per client identity: `rate` requests per second sustained,
/// bursts of `2 × rate`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    /// Take one token for `who` at `now`; false when the budget is spent.
    pub fn allow(&mut self, who: &str, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate.max(1));
        let burst = 2.0 * rate;
        // Identities come from certificates of our own CA: few. Still bound it.
        if self.buckets.len() > 10_000 {
            self.buckets
                .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let (tokens, last) = self.buckets.entry(who.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_the_sustained_rate_per_identity() {
        let mut l = RateLimiter::default();
        let t0 = Instant::now();
        let burst = (0..30).filter(|_| l.allow("a", 10, t0)).count();
        assert_eq!(burst, 20, "burst is twice the rate");
        assert!(l.allow("b", 10, t0), "another identity has its own budget");
        assert!(!l.allow("a", 10, t0 + Duration::from_millis(50)));
        assert!(l.allow("a", 10, t0 + Duration::from_millis(150)));
    }
}
