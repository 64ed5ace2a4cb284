//! Joules per token: from a hwmon sensor when the board has one, else from a stated model
//! of a Raspberry Pi 5's power draw (the same model the simulation uses).

use serde::Serialize;

/// Board power as idle draw plus busy cores plus memory traffic. The figures are a
/// Raspberry Pi 5's (README "Power" names their sources); on other boards the estimate is
/// only a rough guide, which `joules_per_token_source: "estimate"` says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PowerModel {
    /// The whole board idle, W (Pi 5: about 2.7 W measured at the USB-C input).
    pub idle_w: f64,
    /// One busy Cortex-A76 core at full clock, W (all four cores under stress add about
    /// 4 W over idle).
    pub core_w: f64,
    /// Per GB/s of DRAM traffic, W (LPDDR4X at about 5 pJ/bit plus the controller).
    pub memory_w_per_gbps: f64,
    /// The clock `core_w` is for, kHz.
    pub full_khz: f64,
    /// Dynamic power grows with f·V²; with voltage roughly following frequency, as f^2.5.
    pub frequency_exponent: f64,
}

pub const PI5: PowerModel = PowerModel {
    idle_w: 2.7,
    core_w: 1.0,
    memory_w_per_gbps: 0.1,
    full_khz: 2_400_000.0,
    frequency_exponent: 2.5,
};

impl PowerModel {
    /// Board watts with `busy` cores at `khz` moving `gbps` GB/s.
    pub fn watts(&self, busy: usize, khz: f64, gbps: f64) -> f64 {
        let per_core = self.core_w * (khz / self.full_khz).powf(self.frequency_exponent);
        self.idle_w + busy as f64 * per_core + self.memory_w_per_gbps * gbps
    }
}
