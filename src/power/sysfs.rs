//! Reading the kernel's sysfs files under an injectable root, so that tests and
//! `bitnetd power --sysfs-root DIR` can point at a fake tree.
//!
//! Every read is forgiving: a missing, unreadable, empty or garbled file is `None`, never
//! an error. Symlinks (class devices, `cpuN/cpufreq`) are followed as the kernel's are.

use std::path::{Path, PathBuf};

/// The directory that stands for `/`.
#[derive(Debug, Clone)]
pub struct SysRoot(PathBuf);

impl SysRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SysRoot(root.into())
    }

    /// `relative` (written as an absolute path, `/sys/...`) under the root.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative.trim_start_matches('/'))
    }

    pub fn root(&self) -> &Path {
        &self.0
    }
}

impl Default for SysRoot {
    fn default() -> Self {
        SysRoot::new("/")
    }
}

/// The file's text without surrounding white space; `None` when it cannot be read, is not
/// UTF-8, or is empty. Reads at most a page, like a sysfs attribute.
pub fn read_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut buf)
        .ok()?;
    let text = String::from_utf8(buf).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A decimal integer file (`cpu_capacity`, `temp` in millidegrees, frequencies in kHz).
pub fn read_i64(path: &Path) -> Option<i64> {
    read_text(path)?.parse().ok()
}

/// A non-negative decimal integer file.
pub fn read_u64(path: &Path) -> Option<u64> {
    read_text(path)?.parse().ok()
}

/// The names of a directory's entries, sorted naturally (`cpu2` before `cpu10`); empty when
/// the directory cannot be read.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort_by_key(|n| natural_key(n));
    names
}

/// `prefix` followed by a decimal number: the number.
pub fn numbered(name: &str, prefix: &str) -> Option<usize> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn natural_key(name: &str) -> (String, u64) {
    let split = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number = name[split..].parse().unwrap_or(0);
    (name[..split].to_owned(), number)
}

/// A kernel CPU list such as `0-3,6,8-9`; `None` when any part is not one.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                // A garbled range must not allocate without bound.
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0,2-3,7\n"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        for bad in ["x", "3-1", "0-", "1,,a", "0-999999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_sort_naturally_and_numbers_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["cpu10", "cpu2", "cpufreq", "cpu0"] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        assert_eq!(entries(dir.path()), ["cpu0", "cpu2", "cpu10", "cpufreq"]);
        assert_eq!(numbered("cpu10", "cpu"), Some(10));
        assert_eq!(numbered("cpufreq", "cpu"), None);
        assert_eq!(numbered("cpu", "cpu"), None);
    }

    #[test]
    fn unreadable_empty_and_garbage_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("empty"), "").unwrap();
        std::fs::write(p("blank"), " \n").unwrap();
        std::fs::write(p("garbage"), "4x2\n").unwrap();
        std::fs::write(p("binary"), [0xff, 0xfe, 0x00]).unwrap();
        std::fs::write(p("ok"), "1024\n").unwrap();
        std::fs::create_dir(p("dir")).unwrap();
        for n in ["empty", "blank", "garbage", "binary", "dir", "missing"] {
            assert_eq!(read_i64(&p(n)), None, "{n}");
        }
        assert_eq!(read_i64(&p("ok")), Some(1024));
    }
}
