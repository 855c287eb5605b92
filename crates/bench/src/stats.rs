//! Latency samples and their percentiles.

use std::time::Duration;

/// Collected durations of one kind of operation.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    /// Adds all samples of `other`.
    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The `p`-th percentile (0–100, nearest rank) in seconds; 0 without samples.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        // Nearest rank: the smallest sample with at least p% of samples at or below it.
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64()
    }

    /// Median in seconds.
    pub fn p50(&self) -> f64 {
        self.percentile(50.0)
    }

    /// 99th percentile in seconds.
    pub fn p99(&self) -> f64 {
        self.percentile(99.0)
    }
}

/// The median of a few repeated measurements (seconds); 0 if none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut l = Latencies::new();
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert!((l.p50() - 0.050).abs() < 1e-9);
        assert!((l.p99() - 0.099).abs() < 1e-9);
        assert_eq!(Latencies::new().p99(), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
