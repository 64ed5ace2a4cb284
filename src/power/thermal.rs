//! The SoC's temperature from `/sys/class/thermal/thermal_zone*`, and its first passive trip
//! point (where the kernel itself would start to slow the CPU down).

use serde::Serialize;

use super::sysfs::{self, SysRoot};

const THERMAL_DIR: &str = "/sys/class/thermal";

/// Zone types that measure the CPU or SoC (Raspberry Pi `cpu-thermal`, Rockchip
/// `soc-thermal` / `bigcore0-thermal`, Intel `x86_pkg_temp`, ...).
const SOC_WORDS: [&str; 5] = ["cpu", "soc", "x86_pkg", "core", "package"];
/// A laptop whose package sensor has no driver still has ACPI's zone.
const FALLBACK_TYPES: [&str; 1] = ["acpitz"];

/// Readings outside this range (°C) are a broken sensor, not a temperature.
const PLAUSIBLE_C: std::ops::RangeInclusive<f64> = -40.0..=150.0;

/// One thermal zone with a usable temperature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Zone {
    /// `thermal_zoneN`.
    pub name: String,
    pub kind: String,
    pub temperature_c: f64,
    /// The lowest `passive` trip point, °C.
    pub passive_trip_c: Option<f64>,
}

/// Every zone with a plausible temperature, in zone order.
pub fn zones(root: &SysRoot) -> Vec<Zone> {
    let dir = root.path(THERMAL_DIR);
    sysfs::entries(&dir)
        .into_iter()
        .filter(|n| sysfs::numbered(n, "thermal_zone").is_some())
        .filter_map(|name| {
            let zone = dir.join(&name);
            let temperature_c = millidegrees(sysfs::read_i64(&zone.join("temp"))?)?;
            let kind = sysfs::read_text(&zone.join("type")).unwrap_or_default();
            Some(Zone {
                name,
                kind,
                temperature_c,
                passive_trip_c: passive_trip(&zone),
            })
        })
        .collect()
}

/// The zone that stands for the SoC: the hottest whose type names the CPU or SoC, else an
/// ACPI zone. A board with several CPU zones (RK3588: big and little clusters) is as hot as
/// its hottest.
pub fn soc_zone(zones: &[Zone]) -> Option<&Zone> {
    let hottest = |pick: &dyn Fn(&Zone) -> bool| {
        zones
            .iter()
            .filter(|z| pick(z))
            .max_by(|a, b| a.temperature_c.total_cmp(&b.temperature_c))
    };
    let kind = |z: &Zone| z.kind.to_ascii_lowercase();
    hottest(&|z| SOC_WORDS.iter().any(|w| kind(z).contains(w)))
        .or_else(|| hottest(&|z| FALLBACK_TYPES.contains(&kind(z).as_str())))
}

fn millidegrees(m: i64) -> Option<f64> {
    let c = m as f64 / 1000.0;
    PLAUSIBLE_C.contains(&c).then_some(c)
}

fn passive_trip(zone: &std::path::Path) -> Option<f64> {
    sysfs::entries(zone)
        .iter()
        .filter_map(|n| {
            n.strip_suffix("_type")?
                .strip_prefix("trip_point_")
                .map(str::to_owned)
        })
        .filter(|i| {
            sysfs::read_text(&zone.join(format!("trip_point_{i}_type"))).as_deref()
                == Some("passive")
        })
        .filter_map(|i| millidegrees(sysfs::read_i64(&zone.join(format!("trip_point_{i}_temp")))?))
        // x86 writes 0 for an unset trip point.
        .filter(|&c| c > 20.0)
        .min_by(f64::total_cmp)
}
