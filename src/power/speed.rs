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

    /// The thread count with the fewest joules per token on a board drawing `idle_w` plus
    /// `core_w` per busy thread: a thread is worth it only while it raises the speed by more
    /// than it raises the board's power (memory traffic costs the same per token at any
    /// count, so it does not move the choice). The fewer threads on a tie.
    pub fn cheapest(&self, idle_w: f64, core_w: f64) -> usize {
        let joules = |n: usize| (idle_w + n as f64 * core_w) / self.at(n);
        (2..=self.0.len()).fold(1, |best, n| if joules(n) < joules(best) { n } else { best })
    }

    pub fn values(&self) -> &[f64] {
        &self.0
    }
}

/// Decode tokens/s on every fast core against the clock ceiling: the full clock and the
/// steps the calibration measured (it stops once one is close enough to the full speed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClockCurve {
    /// Ceilings, ascending, kHz; the last is the full clock.
    steps: Vec<u64>,
    /// Tokens/s at each, where measured.
    speeds: Vec<Option<f64>>,
}

impl ClockCurve {
    /// `None` without steps, with the full clock unmeasured, or with a speed that is not
    /// positive and finite.
    pub fn new(steps: Vec<u64>, speeds: Vec<Option<f64>>) -> Option<Self> {
        let ok = !steps.is_empty()
            && steps.len() == speeds.len()
            && steps.windows(2).all(|w| w[0] < w[1])
            && speeds.last().is_some_and(Option::is_some)
            && speeds.iter().flatten().all(|v| v.is_finite() && *v > 0.0);
        ok.then_some(ClockCurve { steps, speeds })
    }

    pub fn steps(&self) -> &[u64] {
        &self.steps
    }

    pub fn speeds(&self) -> &[Option<f64>] {
        &self.speeds
    }

    pub fn full_speed(&self) -> f64 {
        self.speeds[self.speeds.len() - 1].unwrap_or(0.0)
    }

    /// The index of the lowest step measured within `fraction` of the full clock's speed.
    pub fn lowest_within(&self, fraction: f64) -> usize {
        let goal = self.full_speed() * fraction;
        self.speeds
            .iter()
            .position(|s| s.is_some_and(|s| s >= goal))
            .unwrap_or(self.steps.len() - 1)
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

    #[test]
    fn the_lowest_clock_close_enough_to_the_full_one() {
        let steps = vec![1_500_000, 1_800_000, 2_100_000, 2_400_000];
        let c = ClockCurve::new(steps.clone(), vec![Some(8.0), Some(9.0), None, Some(9.2)]);
        let c = c.unwrap();
        assert_eq!(c.lowest_within(0.97), 1);
        assert_eq!(c.lowest_within(0.85), 0);
        assert_eq!(c.lowest_within(1.01), 3);
        // The full clock must be measured; steps ascend.
        assert!(ClockCurve::new(steps.clone(), vec![Some(1.0), None, None, None]).is_none());
        assert!(ClockCurve::new(vec![2, 1], vec![Some(1.0), Some(1.0)]).is_none());
    }

    #[test]
    fn the_cheapest_count_weighs_idle_power_against_speed() {
        // Memory-bound past two threads: the third adds 7% speed for 21% more power.
        let c = SpeedCurve::new(vec![5.0, 8.8, 9.4, 9.6]).unwrap();
        assert_eq!(c.cheapest(2.7, 1.0), 2);
        // Scaling well, racing on every thread amortizes the idle draw best.
        let c = SpeedCurve::new(vec![5.0, 9.5, 13.5, 17.0]).unwrap();
        assert_eq!(c.cheapest(2.7, 1.0), 4);
        // Cores cost much more than the idle board: one thread.
        assert_eq!(c.cheapest(0.5, 5.0), 1);
        // No idle draw and perfect scaling: a tie everywhere goes to the fewest.
        let c = SpeedCurve::new(vec![5.0, 10.0, 15.0]).unwrap();
        assert_eq!(c.cheapest(0.0, 1.0), 1);
    }
}
