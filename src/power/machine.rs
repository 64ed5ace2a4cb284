//! One reading of everything the policy looks at.

use serde::Serialize;

use super::cpus::{self, Cpu};
use super::supply::{self, PowerSensor, Supply};
use super::sysfs::SysRoot;
use super::thermal::{self, Zone};
use super::throttle::{self, Throttle};

/// What the machine looks like now. Anything sysfs does not show is empty or `None`.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: Vec<Cpu>,
    pub zones: Vec<Zone>,
    /// The SoC zone's temperature (see [`thermal::soc_zone`]).
    pub temperature_c: Option<f64>,
    pub passive_trip_c: Option<f64>,
    pub throttle: Option<Throttle>,
    pub supply: Supply,
    pub sensor: Option<PowerSensor>,
}

impl Machine {
    pub fn read(root: &SysRoot) -> Self {
        let zones = thermal::zones(root);
        let soc = thermal::soc_zone(&zones).cloned();
        Machine {
            cpus: cpus::read(root),
            temperature_c: soc.as_ref().map(|z| z.temperature_c),
            passive_trip_c: soc.and_then(|z| z.passive_trip_c),
            zones,
            throttle: throttle::read(root),
            supply: supply::read(root),
            sensor: supply::power_sensor(root),
        }
    }

    /// The online fast cores, fastest first.
    pub fn fast_cores(&self) -> Vec<usize> {
        cpus::fast_cores(&self.cpus)
    }

    /// Whether the firmware reports a throttling condition now (`None`: no firmware flags).
    pub fn throttled(&self) -> Option<bool> {
        self.throttle.map(Throttle::now)
    }
}
