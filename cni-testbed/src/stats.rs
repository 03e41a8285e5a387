//! Latency statistics for the benchmark and for tests that report timings.

use std::time::Duration;

/// The `p`-th percentile (`p` in percent, `0.0..=100.0`) of `sorted`, which
/// must be sorted ascending, by the nearest-rank method.
///
/// Nearest-rank always returns a latency that was actually measured, which
/// is what one wants to quote ("p99 was this call"), rather than an
/// interpolated value. `p` is clamped to `0..=100` (NaN counts as 0); an
/// empty slice yields [`Duration::ZERO`] so callers need no special case.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    // Rank is in 1..=n; the float is non-negative and at most n, so the cast
    // is exact for any realistic sample count.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let s = ms(&[7]);
        for p in [0.0, 1.0, 50.0, 99.9, 100.0] {
            assert_eq!(percentile(&s, p), Duration::from_millis(7));
        }
    }

    #[test]
    fn nearest_rank_on_hundred_samples() {
        let s = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 90.0), Duration::from_millis(90));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn nearest_rank_rounds_up() {
        let s = ms(&[10, 20, 30, 40]);
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(20));
        assert_eq!(percentile(&s, 51.0), Duration::from_millis(30));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(40));
    }

    #[test]
    fn out_of_range_is_clamped() {
        let s = ms(&[1, 2, 3]);
        assert_eq!(percentile(&s, -5.0), Duration::from_millis(1));
        assert_eq!(percentile(&s, 250.0), Duration::from_millis(3));
        assert_eq!(percentile(&s, f64::NAN), Duration::from_millis(1));
    }
}
