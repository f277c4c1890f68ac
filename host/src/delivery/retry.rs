//! Retry schedules: exponential backoff with full jitter, bounded by attempts and age.

use std::time::Duration;

pub use crate::model::RetryPolicy;

impl RetryPolicy {
    /// A single attempt, no retries (fire-and-forget).
    pub fn once() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before retry number `failed` (1 after the first failure), given a uniform
    /// random number in [0, 1): full jitter over `min(max, initial * 2^(failed-1))`.
    pub fn delay(&self, failed: u32, random: f64) -> Duration {
        ferry_triggers::backoff(self.initial, self.max, failed).mul_f64(random.clamp(0.0, 1.0))
    }

    /// After `attempts` failed attempts of an invocation `age` old: the delay before the next
    /// one, or None when it is time to give up.
    pub fn next(&self, attempts: u32, age: Duration, random: f64) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = self.delay(attempts, random);
        if age + delay > self.max_age {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceilings_double_up_to_max() {
        let p = policy();
        let ceilings: Vec<_> = (1..=6).map(|n| p.delay(n, 0.999_999).as_millis()).collect();
        assert_eq!(ceilings, vec![99, 199, 399, 799, 999, 999]);
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(
            p.delay(1000, 0.5),
            Duration::from_millis(500),
            "no overflow"
        );
    }

    #[test]
    fn gives_up_after_attempts_or_age() {
        let p = policy();
        assert!(p.next(4, Duration::ZERO, 0.5).is_some());
        assert!(p.next(5, Duration::ZERO, 0.5).is_none());
        assert!(p.next(1, Duration::from_secs(59), 0.0).is_some());
        assert!(p.next(1, Duration::from_millis(59_990), 0.5).is_none());
        assert!(RetryPolicy::once().next(1, Duration::ZERO, 0.0).is_none());
    }
}
