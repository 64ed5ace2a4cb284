//! Decode speed against thread count: what the calibration measures and the policies read.

use serde::Serialize;

/// Tokens/s with 1, 2, ... threads (index 0 is one thread).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedCurve(Vec<f64>);

impl SpeedCurve {
    /// `None` when empty or not all positive and finite.
    pub fn new(tokens_per_s: Vec<f64>) -> Option<Self> {
        let ok = !tokens_per_s.is_empty() && tokens_per_s.iter().all(|v| v.is_finite() && *v > 0.0);
        ok.then_some(SpeedCurve(tokens_per_s))
    }

    pub fn max_threads(&self) -> usize {
        self.0.len()
    }

    /// Tokens/s at `threads` (clamped to the measured range).
    pub fn at(&self, threads: usize) -> f64 {
        self.0[threads.clamp(1, self.0.len()) - 1]
    }

    fn best(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }

    pub fn fraction_of_best(&self, threads: usize) -> f64 {
        self.at(threads) / self.best()
    }

    /// The fewest threads within `fraction` of the best speed.
    pub fn fewest_within(&self, fraction: f64) -> usize {
        let goal = self.best() * fraction;
        self.0
            .iter()
            .position(|&v| v >= goal)
            .map_or(self.0.len(), |i| i + 1)
    }

    /// The fewest threads reaching `tokens_per_s`, else the fastest count.
    pub fn fewest_reaching(&self, tokens_per_s: f64) -> usize {
        match self.0.iter().position(|&v| v >= tokens_per_s) {
            Some(i) => i + 1,
            None => self.fewest_within(1.0),
        }
    }

    pub fn values(&self) -> &[f64] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knee_and_the_floor() {
        let c = SpeedCurve::new(vec![5.0, 8.8, 9.4, 9.6]).unwrap();
        assert_eq!(c.fewest_within(0.95), 3);
        assert_eq!(c.fewest_within(0.90), 2);
        assert_eq!(c.fewest_reaching(4.0), 1);
        assert_eq!(c.fewest_reaching(9.0), 3);
        assert_eq!(c.fewest_reaching(50.0), 4);
        assert_eq!(c.at(9), 9.6);
        assert!(SpeedCurve::new(vec![]).is_none());
        assert!(SpeedCurve::new(vec![1.0, f64::NAN]).is_none());
    }
}
