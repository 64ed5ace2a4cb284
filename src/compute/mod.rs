//! The compute worker pool: `n` threads created once (the caller and `n - 1` workers),
//! optionally pinned to chosen cores, that run each job of a forward pass together and
//! sleep in between. Work is divided by the job itself, usually by claiming blocks of
//! output rows from a [`bitnet_kernels::RowsOut`], so that every output element is
//! computed by the same code whatever the thread count.
//!
//! The power policy changes how many of the threads run and where, at run time, through a
//! [`PlanHandle`]: the owner of the pool applies the current plan with [`Pool::enter`]
//! before each forward pass (never inside one), so a decision lands between tokens or
//! prompt batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};

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
    /// What the power policy asks for (`None`: run as created).
    plan: PlanHandle,
    /// Where the threads are pinned now, by the last plan applied.
    placed: Placement,
    /// Told the phase before each forward pass (the power governor's clock).
    on_enter: Option<PhaseHook>,
}

/// Called by [`Pool::enter`] with the kind of pass about to run, between passes.
pub type PhaseHook = Arc<dyn Fn(Phase) + Send + Sync>;

/// The threads the power policy wants for each kind of forward pass, and their cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub decode_threads: usize,
    pub prefill_threads: usize,
    /// Thread i runs on `cores[i]`; empty: leave the placement alone.
    pub cores: Vec<usize>,
}

/// The kind of forward pass about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A prompt batch (compute-bound: more threads help).
    Prefill,
    /// One generated token (memory-bound: a few threads reach the speed limit).
    Decode,
}

impl Plan {
    pub fn threads(&self, phase: Phase) -> usize {
        match phase {
            Phase::Prefill => self.prefill_threads,
            Phase::Decode => self.decode_threads,
        }
    }
}

/// Shared between the pool and whoever decides (the power governor).
pub type PlanHandle = Arc<Mutex<Option<Plan>>>;

#[derive(Debug, Default, PartialEq, Eq)]
struct Placement {
    /// Thread i is pinned to `cores[i]`, for the first `cores.len()` threads.
    cores: Vec<usize>,
    /// The thread that was thread 0 (the caller) when they were pinned.
    caller: Option<ThreadId>,
}

/// Pinning refused (a seccomp filter answering EPERM, a cpuset): said once, then unpinned.
static PIN_REFUSED: AtomicBool = AtomicBool::new(false);

impl Pool {
    /// Computes on the calling thread only.
    pub fn single() -> Self {
        Pool {
            broadcast: Arc::new(Broadcast::new(0)),
            workers: Vec::new(),
            plan: Arc::new(Mutex::new(None)),
            placed: Placement::default(),
            on_enter: None,
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
            plan: Arc::new(Mutex::new(None)),
            placed: Placement::default(),
            on_enter: None,
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

    /// Threads that run the next job.
    pub fn n_threads(&self) -> usize {
        self.broadcast.n_threads()
    }

    /// Threads created: the most any plan can use.
    pub fn capacity(&self) -> usize {
        self.broadcast.capacity()
    }

    /// Where a power governor puts its plans.
    pub fn plan_handle(&self) -> PlanHandle {
        Arc::clone(&self.plan)
    }

    /// Calls `hook` with the phase at every [`enter`](Self::enter), before the plan applies.
    pub fn set_phase_hook(&mut self, hook: PhaseHook) {
        self.on_enter = Some(hook);
    }

    /// Runs the next jobs on `threads` threads (clamped to `1..=capacity()`).
    pub fn set_active(&mut self, threads: usize) {
        self.broadcast.set_active(threads);
    }

    /// Applies the current plan for a forward pass of kind `phase`: sets the thread count,
    /// and pins the threads when the cores changed or another thread became the caller.
    /// `&mut self`: no job can be running.
    pub fn enter(&mut self, phase: Phase) {
        if let Some(hook) = &self.on_enter {
            hook(phase);
        }
        let plan = match &*self.plan.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(plan) => plan.clone(),
            None => return,
        };
        self.set_active(plan.threads(phase));
        if plan.cores.is_empty() || PIN_REFUSED.load(Ordering::Relaxed) {
            return;
        }
        let n = self.n_threads().min(plan.cores.len());
        let wanted = Placement {
            cores: plan.cores[..n].to_vec(),
            caller: Some(std::thread::current().id()),
        };
        // Threads pinned before stay where they are; the active ones must match.
        let pinned_ok = self.placed.caller == wanted.caller
            && self.placed.cores.len() >= n
            && self.placed.cores[..n] == wanted.cores[..];
        if pinned_ok {
            return;
        }
        let cores = &wanted.cores;
        self.broadcast.run(&|thread| {
            if let Some(&core) = cores.get(thread) {
                pin_current(thread, core);
            }
        });
        // Keep what the threads beyond `n` were pinned to when the caller is the same.
        let mut placed = wanted;
        if self.placed.caller == placed.caller && self.placed.cores.len() > n {
            placed.cores.extend_from_slice(&self.placed.cores[n..]);
        }
        self.placed = placed;
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

/// Pins the calling thread (compute thread `thread`) to `core`. A refusal is logged once and
/// turns pinning off: the threads then run where the scheduler puts them.
fn pin_current(thread: usize, core: usize) {
    if PIN_REFUSED.load(Ordering::Relaxed) {
        return;
    }
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        let error = std::io::Error::last_os_error();
        if !PIN_REFUSED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cannot pin compute thread {thread} to core {core} ({error}): running unpinned"
            );
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
    fn a_plan_changes_threads_per_phase_between_jobs() {
        let mut pool = Pool::new(3, None).unwrap();
        let handle = pool.plan_handle();
        let count = |pool: &Pool| {
            let n = AtomicUsize::new(0);
            pool.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            n.into_inner()
        };
        pool.enter(Phase::Decode);
        assert_eq!(count(&pool), 3, "no plan: as created");
        *handle.lock().unwrap() = Some(Plan {
            decode_threads: 1,
            prefill_threads: 2,
            cores: vec![0],
        });
        pool.enter(Phase::Decode);
        assert_eq!((pool.n_threads(), count(&pool)), (1, 1));
        pool.enter(Phase::Prefill);
        assert_eq!((pool.n_threads(), count(&pool)), (2, 2));
        *handle.lock().unwrap() = Some(Plan {
            decode_threads: 7,
            prefill_threads: 7,
            cores: vec![],
        });
        pool.enter(Phase::Prefill);
        assert_eq!((pool.capacity(), pool.n_threads(), count(&pool)), (3, 3, 3));
    }

    #[test]
    fn the_phase_hook_hears_every_pass_with_or_without_a_plan() {
        let mut pool = Pool::new(2, None).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&heard);
        pool.set_phase_hook(Arc::new(move |phase| log.lock().unwrap().push(phase)));
        pool.enter(Phase::Prefill);
        pool.enter(Phase::Decode);
        pool.enter(Phase::Decode);
        assert_eq!(
            *heard.lock().unwrap(),
            [Phase::Prefill, Phase::Decode, Phase::Decode]
        );
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
