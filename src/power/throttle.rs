//! The Raspberry Pi firmware's throttling and under-voltage flags (`get_throttled`, as
//! `vcgencmd get_throttled` shows them).

use serde::Serialize;

use super::sysfs::{self, SysRoot};

/// Where Raspberry Pi OS kernels put the attribute; other firmware nodes are searched too.
const FIRMWARE_FILE: &str = "/sys/devices/platform/soc/soc:firmware/get_throttled";
const PLATFORM_DIR: &str = "/sys/devices/platform";

/// The flag word: bits 0-3 say what holds now, bits 16-19 what has happened since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle(pub u32);

const NAMES: [&str; 4] = [
    "under-voltage",
    "frequency capped",
    "throttled",
    "soft temperature limit",
];

impl Throttle {
    /// Bare hex as the kernel writes it (`50005`), `0x` accepted too.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        u32::from_str_radix(digits, 16).ok().map(Throttle)
    }

    /// Whether any condition holds now (bits 0-3).
    pub fn now(self) -> bool {
        self.0 & 0xf != 0
    }

    pub fn since_boot(self) -> bool {
        self.0 & 0xf_0000 != 0
    }

    /// The conditions that hold now, by name.
    pub fn active(self) -> Vec<&'static str> {
        (0..4)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| NAMES[b])
            .collect()
    }
}

impl Serialize for Throttle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{:x}", self.0))
    }
}

/// The flags, when the kernel exposes them.
pub fn read(root: &SysRoot) -> Option<Throttle> {
    let known = root.path(FIRMWARE_FILE);
    let text = sysfs::read_text(&known).or_else(|| {
        // Other SoC node names (e.g. `soc@107c000000`): any platform device's firmware
        // child with the attribute.
        let platform = root.path(PLATFORM_DIR);
        sysfs::entries(&platform).iter().find_map(|bus| {
            let bus = platform.join(bus);
            sysfs::entries(&bus)
                .iter()
                .filter(|n| n.ends_with("firmware"))
                .find_map(|n| sysfs::read_text(&bus.join(n).join("get_throttled")))
        })
    })?;
    Throttle::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_and_without_0x() {
        assert_eq!(Throttle::parse("50005"), Some(Throttle(0x50005)));
        assert_eq!(Throttle::parse("0x0\n"), Some(Throttle(0)));
        assert_eq!(Throttle::parse("zz"), None);
        assert_eq!(Throttle::parse(""), None);
        let t = Throttle(0x50005);
        assert!(t.now() && t.since_boot());
        assert_eq!(t.active(), ["under-voltage", "throttled"]);
        let past = Throttle(0x80000);
        assert!(!past.now() && past.since_boot());
    }
}
