//! The compute worker pool: `n` threads created once (the caller and `n - 1` workers),
//! optionally pinned to chosen cores, that run each job of a forward pass together and
//! sleep in between. Work is divided by the job itself, usually by claiming blocks of
//! output rows from a [`bitnet_kernels::RowsOut`], so that every output element is
//! computed by the same code whatever the thread count.

use std::sync::Arc;
use std::thread::JoinHandle;

use bitnet_kernels::broadcast::{Broadcast, Job};

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("at least one compute thread is needed (-t 0)")]
    NoThreads,
    #[error("cannot pin to core {core}: this machine's cores are {available:?}")]
    NoSuchCore { core: usize, available: Vec<usize> },
    #[error("cannot list this machine's cores to pin threads to them")]
    CoresUnknown,
    #[error("cannot start compute thread {index}: {source}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
}

/// A persistent group of compute threads.
pub struct Pool {
    broadcast: Arc<Broadcast>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Computes on the calling thread only.
    pub fn single() -> Self {
        Pool {
            broadcast: Arc::new(Broadcast::new(0)),
            workers: Vec::new(),
        }
    }

    /// `threads` threads: the calling thread (index 0) and `threads - 1` workers. With
    /// `cores`, thread `i` is pinned to `cores[i % cores.len()]`, the calling thread
    /// included (it is the one that will call [`run`](Self::run)).
    pub fn new(threads: usize, cores: Option<&[usize]>) -> Result<Self, ComputeError> {
        if threads == 0 {
            return Err(ComputeError::NoThreads);
        }
        let cores = match cores {
            Some(cores) if !cores.is_empty() => Some(core_ids(cores)?),
            _ => None,
        };
        let pin = move |index: usize| {
            if let Some(cores) = &cores {
                let core = cores[index % cores.len()];
                if !core_affinity::set_for_current(core) {
                    log::warn!("could not pin compute thread {index} to core {}", core.id);
                }
            }
        };
        let broadcast = Arc::new(Broadcast::new(threads - 1));
        let mut pool = Pool {
            broadcast,
            workers: Vec::with_capacity(threads - 1),
        };
        for index in 1..threads {
            let broadcast = Arc::clone(&pool.broadcast);
            let pin = pin.clone();
            let worker = std::thread::Builder::new()
                .name(format!("bitnetd-compute-{index}"))
                .spawn(move || {
                    pin(index);
                    broadcast.serve(index);
                })
                .map_err(|source| ComputeError::Spawn { index, source })?;
            pool.workers.push(worker);
        }
        pin(0);
        Ok(pool)
    }

    pub fn n_threads(&self) -> usize {
        self.broadcast.n_threads()
    }

    /// Calls `job(thread)` once on every thread of the pool (0 on the caller) and returns
    /// when all have finished. Jobs of concurrent callers run one after the other.
    pub fn run(&self, job: &Job<'_>) {
        self.broadcast.run(job);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.broadcast.shutdown();
        for worker in self.workers.drain(..) {
            // A worker cannot panic (jobs' panics are caught), so join only waits.
            let _ = worker.join();
        }
    }
}

/// The machine's core ids for the requested core numbers.
fn core_ids(wanted: &[usize]) -> Result<Vec<core_affinity::CoreId>, ComputeError> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .ok_or(ComputeError::CoresUnknown)?
        .iter()
        .map(|c| c.id)
        .collect();
    wanted
        .iter()
        .map(|&core| {
            if available.contains(&core) {
                Ok(core_affinity::CoreId { id: core })
            } else {
                Err(ComputeError::NoSuchCore {
                    core,
                    available: available.clone(),
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_thread_takes_part() {
        let pool = Pool::new(3, None).unwrap();
        assert_eq!(pool.n_threads(), 3);
        let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..10 {
            pool.run(&|i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 10));
    }

    #[test]
    fn pinned_pool_runs() {
        // Core 0 exists everywhere; pinning may be refused (containers), which only warns.
        let pool = Pool::new(2, Some(&[0])).unwrap();
        let count = AtomicUsize::new(0);
        pool.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(Pool::new(0, None), Err(ComputeError::NoThreads)));
        assert!(matches!(
            Pool::new(1, Some(&[usize::MAX])),
            Err(ComputeError::NoSuchCore { .. }) | Err(ComputeError::CoresUnknown)
        ));
    }
}
