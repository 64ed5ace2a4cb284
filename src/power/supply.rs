//! Power supplies (`/sys/class/power_supply`): whether the board runs on battery and its
//! charge; and hwmon power or energy sensors (`/sys/class/hwmon`) for joules per token.

use serde::Serialize;

use super::sysfs::{self, SysRoot};

const SUPPLY_DIR: &str = "/sys/class/power_supply";
const HWMON_DIR: &str = "/sys/class/hwmon";

/// What the power supplies say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Supply {
    /// `None` when there is no system battery (a Pi on its adapter has no supply at all).
    pub on_battery: Option<bool>,
    pub battery_percent: Option<f64>,
}

pub fn read(root: &SysRoot) -> Supply {
    let dir = root.path(SUPPLY_DIR);
    let mut external_online = false;
    let mut battery: Option<(Option<String>, Option<f64>)> = None;
    for name in sysfs::entries(&dir) {
        let s = dir.join(&name);
        let kind = sysfs::read_text(&s.join("type")).unwrap_or_default();
        // A mouse's or headset's battery (scope Device) does not power the board.
        if sysfs::read_text(&s.join("scope")).as_deref() == Some("Device") {
            continue;
        }
        if kind == "Battery" {
            if battery.is_none() {
                let status = sysfs::read_text(&s.join("status"));
                let capacity = sysfs::read_u64(&s.join("capacity"))
                    .filter(|&c| c <= 100)
                    .map(|c| c as f64);
                battery = Some((status, capacity));
            }
        } else if sysfs::read_u64(&s.join("online")) == Some(1) {
            external_online = true;
        }
    }
    match battery {
        None => Supply {
            on_battery: external_online.then_some(false),
            battery_percent: None,
        },
        Some((status, percent)) => Supply {
            on_battery: Some(!external_online && status.as_deref() != Some("Charging")),
            battery_percent: percent,
        },
    }
}

/// A hwmon sensor that gives the power drawn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerSensor {
    /// `hwmonN/name` and the file, e.g. `rapl/energy1_input`.
    pub name: String,
    pub kind: SensorKind,
    /// The reading: microwatts, or microjoules since some start.
    pub micro: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    PowerMicrowatts,
    EnergyMicrojoules,
}

/// The first power (`power*_input`), else energy (`energy*_input`), sensor.
pub fn power_sensor(root: &SysRoot) -> Option<PowerSensor> {
    let dir = root.path(HWMON_DIR);
    let hwmons = sysfs::entries(&dir);
    let find = |prefix: &str, kind: SensorKind| {
        hwmons.iter().find_map(|h| {
            let h = dir.join(h);
            let label = sysfs::read_text(&h.join("name")).unwrap_or_default();
            sysfs::entries(&h).into_iter().find_map(|f| {
                let rest = f.strip_prefix(prefix)?.strip_suffix("_input")?;
                rest.parse::<u32>().ok()?;
                let micro = sysfs::read_u64(&h.join(&f))?;
                Some(PowerSensor {
                    name: format!("{label}/{f}"),
                    kind,
                    micro,
                })
            })
        })
    };
    find("power", SensorKind::PowerMicrowatts)
        .or_else(|| find("energy", SensorKind::EnergyMicrojoules))
}
