//! The fast cores' clock ceiling: cpufreq's `scaling_max_freq`, which balanced lowers while
//! decoding (memory-bound: a lower clock costs little speed and saves much power) when the
//! daemon may write it, and the unit's `--grant-clock` / `--restore-clock` around it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::cpus;
use super::sysfs::{self, SysRoot};

/// Steps between `cpuinfo_min_freq` and `cpuinfo_max_freq` when the driver lists none, kHz
/// (the Raspberry Pi firmware's step).
const STEP_KHZ: u64 = 100_000;

/// The writable clock ceiling of the fast cores' cpufreq policies.
#[derive(Debug)]
pub struct Clock {
    /// Each policy's `scaling_max_freq` and the value it held at start.
    files: Vec<(PathBuf, u64)>,
    /// The ceilings balanced may choose, ascending, up to the one found at start.
    steps: Vec<u64>,
    /// The value last written (`None`: the originals).
    current: Option<u64>,
    /// Restored: nothing is written any more.
    released: bool,
}

/// Why the daemon cannot set the clock (logged once; the policy then uses threads only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Clock {
    /// The clock of `cores`' cpufreq policies, when every `scaling_max_freq` among them can
    /// be written: each is written back with the value it holds, so that a read-only tree
    /// is found here and not in the middle of a request.
    pub fn open(root: &SysRoot, cores: &[usize]) -> Result<Clock, Unavailable> {
        let dirs = policy_dirs(root, cores);
        let Some(first) = dirs.first() else {
            return Err(Unavailable(format!(
                "no cpufreq policy for cores {cores:?} under {}",
                root.root().display()
            )));
        };
        let mut files = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let path = dir.join("scaling_max_freq");
            let Some(now) = sysfs::read_u64(&path).filter(|&v| v > 0) else {
                return Err(Unavailable(format!("cannot read {}", path.display())));
            };
            write_khz(&path, now).map_err(|e| {
                Unavailable(format!(
                    "scaling_max_freq not writable ({}): {}",
                    errno_name(&e),
                    path.display()
                ))
            })?;
            files.push((path, now));
        }
        // The admin's ceiling stays the top: never above what was found.
        let ceiling = files.iter().map(|f| f.1).min().unwrap_or(0);
        let steps: Vec<u64> = steps_of(first)
            .into_iter()
            .filter(|&s| s <= ceiling)
            .collect();
        if steps.is_empty() {
            return Err(Unavailable(format!(
                "no clock steps in {} (scaling_available_frequencies or \
                 cpuinfo_min_freq/cpuinfo_max_freq)",
                first.display()
            )));
        }
        Ok(Clock {
            files,
            steps,
            current: None,
            released: false,
        })
    }

    /// The ceilings to choose from, ascending; the last is the full clock.
    pub fn steps(&self) -> &[u64] {
        &self.steps
    }

    pub fn full_khz(&self) -> u64 {
        self.steps[self.steps.len() - 1]
    }

    /// Sets every policy's ceiling to `khz`; writes nothing when it is already there or the
    /// clock was restored.
    pub fn set(&mut self, khz: u64) -> Result<(), String> {
        if self.released || self.current == Some(khz) {
            return Ok(());
        }
        for (path, _) in &self.files {
            write_khz(path, khz)
                .map_err(|e| format!("writing {khz} to {}: {e}", path.display()))?;
        }
        self.current = Some(khz);
        Ok(())
    }

    /// Writes back what each ceiling held at start; later [`set`](Self::set)s do nothing.
    pub fn restore(&mut self) -> Result<(), String> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let mut failed = Vec::new();
        for (path, khz) in &self.files {
            if let Err(e) = write_khz(path, *khz) {
                failed.push(format!("writing {khz} to {}: {e}", path.display()));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// The cpufreq policy directories of `cores` (`cpuN/cpufreq`, a symlink to `policyM` on
/// most kernels), each once.
fn policy_dirs(root: &SysRoot, cores: &[usize]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for core in cores {
        let link = root.path(&format!("/sys/devices/system/cpu/cpu{core}/cpufreq"));
        if let Ok(dir) = std::fs::canonicalize(&link)
            && dir.is_dir()
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    dirs
}

/// `scaling_available_frequencies` when the driver has it, else `cpuinfo_min_freq` to
/// `cpuinfo_max_freq` in [`STEP_KHZ`] steps; ascending.
fn steps_of(dir: &Path) -> Vec<u64> {
    let listed: Vec<u64> = sysfs::read_text(&dir.join("scaling_available_frequencies"))
        .map(|t| {
            t.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .collect()
        })
        .unwrap_or_default();
    let mut steps = if listed.is_empty() {
        let min = sysfs::read_u64(&dir.join("cpuinfo_min_freq")).filter(|&v| v > 0);
        let max = sysfs::read_u64(&dir.join("cpuinfo_max_freq")).filter(|&v| v > 0);
        match (min, max) {
            (Some(min), Some(max)) if min <= max => {
                let mut s: Vec<u64> = (min..max).step_by(STEP_KHZ as usize).collect();
                s.push(max);
                s
            }
            _ => Vec::new(),
        }
    } else {
        listed
    };
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// Writes `khz` into an existing attribute (never creates one: a missing file is an error).
fn write_khz(path: &Path, khz: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(khz.to_string().as_bytes())
}

/// The errno's name for the log (`EACCES`), else the error's text.
fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(1) => "EPERM".into(),
        Some(13) => "EACCES".into(),
        Some(30) => "EROFS".into(),
        Some(2) => "ENOENT".into(),
        _ => e.to_string(),
    }
}

/// The fast cores' policy directories, for the unit's commands.
fn fast_policy_dirs(root: &SysRoot) -> Vec<PathBuf> {
    policy_dirs(root, &cpus::fast_cores(&cpus::read(root)))
}

/// `bitnetd power --grant-clock GROUP` (the unit's `ExecStartPre=+`, as root): gives `gid`
/// write access to the fast cores' `scaling_max_freq`. Missing files (a VM, a container)
/// are skipped; returns the files changed.
pub fn grant(root: &SysRoot, gid: u32) -> Result<Vec<PathBuf>, String> {
    let mut done = Vec::new();
    for dir in fast_policy_dirs(root) {
        let path = dir.join("scaling_max_freq");
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        std::os::unix::fs::chown(&path, None, Some(gid))
            .map_err(|e| format!("chgrp {gid} {}: {e}", path.display()))?;
        let mut mode = meta.permissions();
        mode.set_mode(mode.mode() | 0o020);
        std::fs::set_permissions(&path, mode)
            .map_err(|e| format!("chmod g+w {}: {e}", path.display()))?;
        done.push(path);
    }
    Ok(done)
}

/// `bitnetd power --restore-clock` (the unit's `ExecStopPost=+`): writes each fast policy's
/// `cpuinfo_max_freq` into its `scaling_max_freq`, which undoes a cap a crashed daemon left.
/// Policies without both files are skipped; returns the files written.
pub fn restore_max(root: &SysRoot) -> Result<Vec<PathBuf>, String> {
    let mut done = Vec::new();
    for dir in fast_policy_dirs(root) {
        let path = dir.join("scaling_max_freq");
        let Some(max) = sysfs::read_u64(&dir.join("cpuinfo_max_freq")).filter(|&v| v > 0) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        write_khz(&path, max).map_err(|e| format!("writing {max} to {}: {e}", path.display()))?;
        done.push(path);
    }
    Ok(done)
}

/// A group's id: a number, or a name looked up in `group_file` (`/etc/group`).
pub fn group_id(group: &str, group_file: &Path) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string(group_file)
        .map_err(|e| format!("reading {}: {e}", group_file.display()))?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("no group {group:?} in {}", group_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn steps_come_from_the_driver_list_else_the_range() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        policy(
            &a,
            &[(
                "scaling_available_frequencies",
                "2400000 1500000 1800000 \n",
            )],
        );
        assert_eq!(steps_of(&a), [1_500_000, 1_800_000, 2_400_000]);
        let b = d.path().join("b");
        policy(
            &b,
            &[
                ("cpuinfo_min_freq", "1500000\n"),
                ("cpuinfo_max_freq", "1750000\n"),
            ],
        );
        assert_eq!(steps_of(&b), [1_500_000, 1_600_000, 1_700_000, 1_750_000]);
        let c = d.path().join("c");
        policy(&c, &[("cpuinfo_max_freq", "garbage")]);
        assert!(steps_of(&c).is_empty());
    }

    #[test]
    fn groups_are_numbers_or_names() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("group");
        std::fs::write(&f, "root:x:0:\nbitnetd:x:998:alice\n").unwrap();
        assert_eq!(group_id("998", &f), Ok(998));
        assert_eq!(group_id("bitnetd", &f), Ok(998));
        let e = group_id("nobody", &f).unwrap_err();
        assert!(e.contains("\"nobody\"") && e.contains("group"), "{e}");
    }
}
