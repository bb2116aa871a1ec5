//! The retry schedule: when a failed delivery is tried again, as pure functions.
//!
//! The schedule lists the delays after each failed attempt (Svix-style: `5s,5m,30m,2h,5h,10h,10h`
//! is one attempt plus seven retries over about a day). Each delay is jittered so that endpoints
//! that failed together (an outage) are not hit again all at the same instant.

use std::time::Duration;

/// The default `--webhook-retry-schedule`.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// How far a delay may move either way, as a fraction of itself.
pub const JITTER: f64 = 0.2;

/// Why a schedule string is not usable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{0}` is not a duration (use e.g. 5s, 250ms, 2h)")]
    Duration(String),
}

/// Parses a comma-separated list of durations. An empty string means "never retry".
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, ScheduleError> {
    s.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            humantime::parse_duration(part).map_err(|_| ScheduleError::Duration(part.to_string()))
        })
        .collect()
}

/// The delay before the next attempt after `failed` attempts have failed (1 = the first),
/// or `None` when the schedule is used up and the delivery is given up. `jitter` is a random
/// number in `[-1, 1]` that moves the delay by up to `JITTER` of itself.
pub fn next_delay(schedule: &[Duration], failed: usize, jitter: f64) -> Option<Duration> {
    let base = *schedule.get(failed.checked_sub(1)?)?;
    let factor = 1.0 + JITTER * jitter.clamp(-1.0, 1.0);
    Some(base.mul_f64(factor))
}

/// `next_delay` with a random jitter.
pub fn next_delay_jittered(schedule: &[Duration], failed: usize) -> Option<Duration> {
    next_delay(schedule, failed, rand::random_range(-1.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_and_refuses_junk() {
        let s = parse_schedule(DEFAULT_SCHEDULE).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s[0], Duration::from_secs(5));
        assert_eq!(s[6], Duration::from_secs(10 * 3600));
        assert_eq!(
            parse_schedule("10ms, 20ms").unwrap(),
            [Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert!(parse_schedule("").unwrap().is_empty());
        assert_eq!(
            parse_schedule("5s,soon"),
            Err(ScheduleError::Duration("soon".into()))
        );
    }

    #[test]
    fn walks_the_schedule_then_gives_up() {
        let s = parse_schedule("5s,5m").unwrap();
        assert_eq!(next_delay(&s, 0, 0.0), None, "nothing failed yet");
        assert_eq!(next_delay(&s, 1, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(next_delay(&s, 2, 0.0), Some(Duration::from_secs(300)));
        assert_eq!(next_delay(&s, 3, 0.0), None);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = [Duration::from_secs(100)];
        assert_eq!(next_delay(&s, 1, 1.0), Some(Duration::from_secs(120)));
        assert_eq!(next_delay(&s, 1, -1.0), Some(Duration::from_secs(80)));
        assert_eq!(next_delay(&s, 1, 7.0), Some(Duration::from_secs(120)));
        for _ in 0..100 {
            let d = next_delay_jittered(&s, 1).unwrap();
            assert!(d >= Duration::from_secs(80) && d <= Duration::from_secs(120));
        }
    }
}
