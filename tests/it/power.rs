//! Fake sysfs trees of real boards, laid out as the kernel lays them out (class devices and
//! `cpuN/cpufreq` as symlinks), for the power tests.

use std::path::{Path, PathBuf};

/// A sysfs tree under a temporary directory, standing for `/`.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

/// One CPU of a board: capacity (None: no file), max kHz, cluster.
pub struct CpuSpec {
    pub capacity: Option<u64>,
    pub max_khz: u64,
    pub cluster: u64,
}

impl Tree {
    pub fn empty() -> Tree {
        Tree {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel.trim_start_matches('/'))
    }

    /// Writes `text` at `rel`, creating the directories.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn symlink(&self, target: &str, rel: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// CPUs with one cpufreq policy per cluster (`cpuN/cpufreq` a symlink to it, as on arm64).
    pub fn cpus(&self, cpus: &[CpuSpec]) {
        let base = "sys/devices/system/cpu";
        self.write(
            &format!("{base}/online"),
            &format!("0-{}\n", cpus.len() - 1),
        );
        for (id, c) in cpus.iter().enumerate() {
            let cpu = format!("{base}/cpu{id}");
            if let Some(cap) = c.capacity {
                self.write(&format!("{cpu}/cpu_capacity"), &format!("{cap}\n"));
            }
            self.write(
                &format!("{cpu}/topology/cluster_id"),
                &format!("{}\n", c.cluster),
            );
            self.write(&format!("{cpu}/topology/physical_package_id"), "0\n");
            let policy = format!("{base}/cpufreq/policy{}", c.cluster);
            let related: Vec<String> = cpus
                .iter()
                .enumerate()
                .filter(|(_, o)| o.cluster == c.cluster)
                .map(|(i, _)| i.to_string())
                .collect();
            self.write(
                &format!("{policy}/cpuinfo_max_freq"),
                &format!("{}\n", c.max_khz),
            );
            self.write(
                &format!("{policy}/scaling_max_freq"),
                &format!("{}\n", c.max_khz),
            );
            self.write(
                &format!("{policy}/scaling_cur_freq"),
                &format!("{}\n", c.max_khz / 2),
            );
            self.write(&format!("{policy}/scaling_governor"), "ondemand\n");
            self.write(
                &format!("{policy}/related_cpus"),
                &format!("{}\n", related.join(" ")),
            );
            self.symlink(
                &format!("../cpufreq/policy{}", c.cluster),
                &format!("{cpu}/cpufreq"),
            );
        }
    }

    /// Gives cpufreq policy `cluster` a minimum clock, so that its ceiling has steps (100 MHz
    /// apart up to `cpuinfo_max_freq`) the daemon may choose from.
    pub fn clock_floor(&self, cluster: u64, min_khz: u64) {
        self.write(
            &format!("sys/devices/system/cpu/cpufreq/policy{cluster}/cpuinfo_min_freq"),
            &format!("{min_khz}\n"),
        );
    }

    /// Makes policy `cluster`'s `scaling_max_freq` unwritable even for root (these tests may
    /// run as root, which file modes do not stop): a symlink to a read-only sysctl, which
    /// the kernel refuses to anyone (EACCES), or EROFS where /proc/sys is mounted read-only.
    pub fn read_only_ceiling(&self, cluster: u64) {
        let rel = format!("sys/devices/system/cpu/cpufreq/policy{cluster}/scaling_max_freq");
        std::fs::remove_file(self.path(&rel)).unwrap();
        self.symlink("/proc/sys/kernel/ngroups_max", &rel);
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A thermal zone (`/sys/class/thermal/thermal_zoneN` a symlink into devices/virtual),
    /// with trip points `(type, millidegrees)`.
    pub fn zone(&self, n: usize, kind: &str, millideg: i64, trips: &[(&str, i64)]) {
        let real = format!("sys/devices/virtual/thermal/thermal_zone{n}");
        self.write(&format!("{real}/type"), &format!("{kind}\n"));
        self.write(&format!("{real}/temp"), &format!("{millideg}\n"));
        for (i, (t, m)) in trips.iter().enumerate() {
            self.write(&format!("{real}/trip_point_{i}_type"), &format!("{t}\n"));
            self.write(&format!("{real}/trip_point_{i}_temp"), &format!("{m}\n"));
        }
        let link = format!("sys/class/thermal/thermal_zone{n}");
        if !self.path(&link).exists() {
            self.symlink(
                &format!("../../devices/virtual/thermal/thermal_zone{n}"),
                &link,
            );
        }
    }

    pub fn set_temp(&self, n: usize, millideg: i64) {
        self.write(
            &format!("sys/devices/virtual/thermal/thermal_zone{n}/temp"),
            &format!("{millideg}\n"),
        );
    }

    pub fn throttled(&self, text: &str) {
        self.write("sys/devices/platform/soc/soc:firmware/get_throttled", text);
    }

    /// A power supply (`/sys/class/power_supply/NAME` a symlink), with its attributes.
    pub fn supply(&self, name: &str, attrs: &[(&str, &str)]) {
        let real = format!("sys/devices/platform/supplies/power_supply/{name}");
        for (k, v) in attrs {
            self.write(&format!("{real}/{k}"), &format!("{v}\n"));
        }
        self.symlink(
            &format!("../../devices/platform/supplies/power_supply/{name}"),
            &format!("sys/class/power_supply/{name}"),
        );
    }

    pub fn pi5() -> Tree {
        let t = Tree::empty();
        t.cpus(
            &(0..4)
                .map(|_| cpu(Some(1024), 2_400_000, 0))
                .collect::<Vec<_>>(),
        );
        t.zone(0, "cpu-thermal", 52_350, &[("critical", 110_000)]);
        t.throttled("0\n");
        t
    }

    pub fn pi4() -> Tree {
        let t = Tree::empty();
        t.cpus(
            &(0..4)
                .map(|_| cpu(Some(1024), 1_800_000, 0))
                .collect::<Vec<_>>(),
        );
        t.zone(0, "cpu-thermal", 61_000, &[("critical", 110_000)]);
        t.throttled("50005\n");
        t
    }

    pub fn pi_zero_2w() -> Tree {
        let t = Tree::empty();
        t.cpus(&(0..4).map(|_| cpu(None, 1_000_000, 0)).collect::<Vec<_>>());
        t.zone(0, "cpu-thermal", 47_000, &[]);
        t.throttled("0x0\n");
        t
    }

    /// Rockchip RK3588: A55 cores 0-3 (capacity 414), A76 cores 4-5 and 6-7 (1024; 6-7
    /// clocked a little higher), SoC and big-core thermal zones.
    pub fn rk3588() -> Tree {
        let t = Tree::empty();
        let mut cpus: Vec<CpuSpec> = (0..4).map(|_| cpu(Some(414), 1_800_000, 0)).collect();
        cpus.extend((0..2).map(|_| cpu(Some(1024), 2_256_000, 1)));
        cpus.extend((0..2).map(|_| cpu(Some(1024), 2_304_000, 2)));
        t.cpus(&cpus);
        t.zone(
            0,
            "soc-thermal",
            44_000,
            &[("passive", 85_000), ("critical", 115_000)],
        );
        t.zone(1, "bigcore0-thermal", 46_500, &[("passive", 85_000)]);
        t
    }

    /// An x86 laptop on battery at `percent`: no capacities, package sensor, RAPL energy.
    pub fn laptop(percent: u32, ac_online: bool) -> Tree {
        let t = Tree::empty();
        t.cpus(&(0..4).map(|_| cpu(None, 4_200_000, 0)).collect::<Vec<_>>());
        t.zone(0, "acpitz", 40_000, &[("critical", 120_000)]);
        t.zone(1, "x86_pkg_temp", 55_000, &[("passive", 0)]);
        t.supply(
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", if ac_online { "Charging" } else { "Discharging" }),
                ("capacity", &percent.to_string()),
            ],
        );
        t.supply(
            "AC",
            &[
                ("type", "Mains"),
                ("online", if ac_online { "1" } else { "0" }),
            ],
        );
        // A wireless mouse's battery does not power the laptop.
        t.supply(
            "hidpp_battery_0",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("status", "Discharging"),
                ("capacity", "90"),
            ],
        );
        t.write("sys/class/hwmon/hwmon0/name", "rapl\n");
        t.write("sys/class/hwmon/hwmon0/energy1_input", "123456789\n");
        t
    }
}

pub fn cpu(capacity: Option<u64>, max_khz: u64, cluster: u64) -> CpuSpec {
    CpuSpec {
        capacity,
        max_khz,
        cluster,
    }
}
