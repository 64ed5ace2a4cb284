//! CPUs from `/sys/devices/system/cpu`: which are online, their capacity (big.LITTLE),
//! frequencies and cluster, and which are the fast ones.

use serde::Serialize;

use super::sysfs::{self, SysRoot};

const CPU_DIR: &str = "/sys/devices/system/cpu";

/// Cores within this fraction of the fastest core's capacity (or maximum frequency) count
/// as fast: an RK3588's A76 clusters differ by a few percent, its A55 cores by 60%.
const FAST_FRACTION: f64 = 0.9;

/// One CPU as sysfs shows it. Fields the kernel does not expose are `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    pub id: usize,
    pub online: bool,
    /// Relative compute capacity, 1024 for the fastest core (arm64 with a capacity table).
    pub capacity: Option<u64>,
    pub max_khz: Option<u64>,
    pub cur_khz: Option<u64>,
    /// The cpufreq policy's ceiling (lowered by thermal governors or the user).
    pub scaling_max_khz: Option<u64>,
    pub governor: Option<String>,
    pub cluster: Option<u64>,
}

/// Every CPU directory (`cpuN`) under the root, in id order.
pub fn read(root: &SysRoot) -> Vec<Cpu> {
    let dir = root.path(CPU_DIR);
    let online_list = sysfs::read_text(&dir.join("online")).and_then(|t| sysfs::parse_cpu_list(&t));
    sysfs::entries(&dir)
        .iter()
        .filter_map(|name| sysfs::numbered(name, "cpu"))
        .map(|id| {
            let cpu = dir.join(format!("cpu{id}"));
            let freq = cpu.join("cpufreq");
            let online = match &online_list {
                Some(list) => list.contains(&id),
                // cpu0 often has no `online` file: it cannot go offline.
                None => sysfs::read_u64(&cpu.join("online")).is_none_or(|v| v == 1),
            };
            Cpu {
                id,
                online,
                capacity: sysfs::read_u64(&cpu.join("cpu_capacity")).filter(|&c| c > 0),
                max_khz: sysfs::read_u64(&freq.join("cpuinfo_max_freq")).filter(|&f| f > 0),
                cur_khz: sysfs::read_u64(&freq.join("scaling_cur_freq")).filter(|&f| f > 0),
                scaling_max_khz: sysfs::read_u64(&freq.join("scaling_max_freq")).filter(|&f| f > 0),
                governor: sysfs::read_text(&freq.join("scaling_governor")),
                cluster: cluster(&cpu),
            }
        })
        .collect()
}

/// `topology/cluster_id`, else `topology/physical_package_id`, else the first of the
/// cpufreq policy's `related_cpus` (cores that share a clock share a cluster).
fn cluster(cpu: &std::path::Path) -> Option<u64> {
    let topo = cpu.join("topology");
    // Kernels without cluster information write -1 (or 65535): not an answer.
    let valid = |v: i64| (0..65535).contains(&v).then_some(v as u64);
    sysfs::read_i64(&topo.join("cluster_id"))
        .and_then(valid)
        .or_else(|| sysfs::read_i64(&topo.join("physical_package_id")).and_then(valid))
        .or_else(|| {
            let related = sysfs::read_text(&cpu.join("cpufreq/related_cpus"))?;
            let first = *sysfs::parse_cpu_list(&related.replace(' ', ","))?.first()?;
            Some(first as u64)
        })
}

/// The online cores that count as fast, fastest first (capacity, then maximum frequency,
/// then id). Without capacity or frequency information every online core is as fast.
pub fn fast_cores(cpus: &[Cpu]) -> Vec<usize> {
    let online: Vec<&Cpu> = cpus.iter().filter(|c| c.online).collect();
    let best_capacity = online.iter().filter_map(|c| c.capacity).max();
    let best_khz = online.iter().filter_map(|c| c.max_khz).max();
    let fast = |c: &&&Cpu| match (best_capacity, best_khz) {
        (Some(best), _) => c.capacity.unwrap_or(0) as f64 >= best as f64 * FAST_FRACTION,
        (None, Some(best)) => c.max_khz.unwrap_or(0) as f64 >= best as f64 * FAST_FRACTION,
        (None, None) => true,
    };
    let mut fast: Vec<&&Cpu> = online.iter().filter(fast).collect();
    fast.sort_by_key(|c| {
        (
            std::cmp::Reverse(c.capacity.unwrap_or(0)),
            std::cmp::Reverse(c.max_khz.unwrap_or(0)),
            c.id,
        )
    });
    fast.iter().map(|c| c.id).collect()
}
