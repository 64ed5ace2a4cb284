//! Log lines that a hostile or broken peer could repeat without end: the first ones of each
//! window are written, the rest counted and reported with the next line written.

use std::time::{Duration, Instant};

/// Up to `burst` lines per `window`.
#[derive(Debug)]
pub struct LogBudget {
    burst: u32,
    window: Duration,
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(burst: u32, window: Duration) -> Self {
        LogBudget {
            burst,
            window,
            started: None,
            written: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were left out since the
    /// last one; `None` when this one is to be left out.
    pub fn take(&mut self, now: Instant) -> Option<u64> {
        if self
            .started
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            self.started = Some(now);
            self.written = 0;
        }
        if self.written >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// " (N more like it not logged)" when N > 0.
pub fn suppressed_note(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more like it since the last such line were not logged)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(2, Duration::from_secs(10));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0 + Duration::from_secs(9)), None);
        assert_eq!(b.take(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(b.take(t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(suppressed_note(0), "");
        assert!(suppressed_note(3).contains("3 more"));
    }
}
