//! Lending one borrowed job at a time to long-lived worker threads.
//!
//! A persistent thread pool must run closures that borrow the caller's stack (weights,
//! activations, output buffers), but its threads outlive every such borrow. [`Broadcast`]
//! is the one place where that borrow is stretched: [`Broadcast::run`] publishes the job,
//! runs its own share, and does not return (nor unwind) until every worker has finished
//! with it. Waiting threads spin for a moment, then sleep on a condition variable, so
//! an idle pool uses no CPU.
//!
//! Only the first [`active`](Broadcast::active) threads run jobs; the others sleep (without
//! spinning) until [`set_active`](Broadcast::set_active) takes them back, so that the power
//! policy can change the thread count between jobs without re-creating the threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A job: called once on every thread with that thread's index (the caller is 0).
pub type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// How long a waiting thread polls before it sleeps. Jobs of one forward pass follow each
/// other within microseconds; between tokens and requests the threads should sleep.
const SPIN: Duration = Duration::from_micros(50);

/// The meeting point of a caller and `workers` threads that each call [`Broadcast::serve`].
pub struct Broadcast {
    workers: usize,
    /// One job at a time: a second caller waits for the first to finish.
    turn: Mutex<()>,
    state: Mutex<State>,
    /// Workers sleep here between jobs.
    wake: Condvar,
    /// The caller sleeps here until the workers finish.
    done: Condvar,
    /// A copy of `State::epoch` that spinning workers can poll without the lock.
    epoch: AtomicU64,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Inactive workers sleep here until they are active again.
    parked: Condvar,
    /// A copy of `State::active` that spinning workers can poll without the lock.
    active: AtomicUsize,
}

struct State {
    /// The current job. Only `run` stores it, and it is cleared before `run` returns.
    job: Option<&'static Job<'static>>,
    /// Bumped for every job and at shutdown.
    epoch: u64,
    sleeping_workers: usize,
    caller_sleeping: bool,
    worker_panicked: bool,
    shutdown: bool,
    /// Threads that run jobs (the caller included): workers `1..active`.
    active: usize,
    /// The epoch when `active` last changed: a worker taken back runs every job after it.
    active_since: u64,
}

impl Broadcast {
    pub fn new(workers: usize) -> Self {
        Broadcast {
            workers,
            turn: Mutex::new(()),
            state: Mutex::new(State {
                job: None,
                epoch: 0,
                sleeping_workers: 0,
                caller_sleeping: false,
                worker_panicked: false,
                shutdown: false,
                active: workers + 1,
                active_since: 0,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            epoch: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            parked: Condvar::new(),
            active: AtomicUsize::new(workers + 1),
        }
    }

    /// Threads that run a job: the active workers and the caller.
    pub fn n_threads(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Threads that could run a job: every worker and the caller.
    pub fn capacity(&self) -> usize {
        self.workers + 1
    }

    /// From the next job on, jobs run on `threads` threads (clamped to `1..=capacity()`);
    /// the others sleep. Waits for a running job to finish first.
    pub fn set_active(&self, threads: usize) {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut s = self.lock();
        let threads = threads.clamp(1, self.workers + 1);
        if s.active == threads {
            return;
        }
        s.active = threads;
        s.active_since = s.epoch;
        self.active.store(threads, Ordering::Release);
        self.parked.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (jobs run outside the lock).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `job(i)` for every thread index `i` in `0..n_threads()`, index 0 on the
    /// calling thread, and returns when all calls have returned. Panics if a call panicked.
    pub fn run(&self, job: &Job<'_>) {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let workers = self.active.load(Ordering::Acquire) - 1;
        if workers == 0 {
            job(0);
            return;
        }
        // SAFETY: only the lifetime changes. The 'static reference is read by workers
        // between seeing this job's epoch and decrementing `pending`; `Finish` (below)
        // waits until `pending` is zero and clears the slot before `run` returns or
        // unwinds, so no use of it outlives the borrow of `job`.
        let erased = unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        self.pending.store(workers, Ordering::SeqCst);
        {
            let mut s = self.lock();
            s.job = Some(erased);
            s.worker_panicked = false;
            s.epoch += 1;
            self.epoch.store(s.epoch, Ordering::Release);
            if s.sleeping_workers > 0 {
                self.wake.notify_all();
            }
        }
        // Waits for the workers even if the caller's own share panics.
        struct Finish<'b>(&'b Broadcast);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.0.wait_for_workers();
            }
        }
        let finish = Finish(self);
        job(0);
        drop(finish);
        if self.lock().worker_panicked {
            panic!("a compute thread panicked");
        }
    }

    fn wait_for_workers(&self) {
        let deadline = Instant::now() + SPIN;
        while self.pending.load(Ordering::Acquire) != 0 && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let mut s = self.lock();
        s.caller_sleeping = true;
        while self.pending.load(Ordering::Acquire) != 0 {
            s = self.done.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.caller_sleeping = false;
        s.job = None;
    }

    /// A worker's life: runs every job with index `index` (in `1..capacity()`) while it is
    /// active, until [`shutdown`](Self::shutdown).
    pub fn serve(&self, index: usize) {
        let mut seen = 0u64;
        loop {
            // Only an active worker spins: a parked one has nothing to wait for soon.
            if index < self.active.load(Ordering::Acquire) {
                let deadline = Instant::now() + SPIN;
                while self.epoch.load(Ordering::Acquire) == seen && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
            }
            let job = {
                let mut s = self.lock();
                loop {
                    if s.shutdown {
                        return;
                    }
                    if index >= s.active {
                        s = self.parked.wait(s).unwrap_or_else(PoisonError::into_inner);
                        continue;
                    }
                    // Jobs published while this worker was inactive were not its to run,
                    // even if it never parked (it may have been asleep on `wake`, or not
                    // scheduled at all, while it was switched off and on again). An active
                    // worker has seen every job up to a change, so this moves only a
                    // worker that was switched off.
                    seen = seen.max(s.active_since);
                    if s.epoch != seen {
                        break;
                    }
                    s.sleeping_workers += 1;
                    s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
                    s.sleeping_workers -= 1;
                }
                seen = s.epoch;
                s.job
                    .expect("a new epoch of an active worker carries a job")
            };
            let panicked = catch_unwind(AssertUnwindSafe(|| job(index))).is_err();
            if panicked {
                self.lock().worker_panicked = true;
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                // The caller checks `pending` under the lock, so it cannot miss this.
                let s = self.lock();
                if s.caller_sleeping {
                    self.done.notify_one();
                }
            }
        }
    }

    /// Makes every worker's `serve` return once it is idle.
    pub fn shutdown(&self) {
        let mut s = self.lock();
        s.shutdown = true;
        s.epoch += 1;
        self.epoch.store(s.epoch, Ordering::Release);
        self.wake.notify_all();
        self.parked.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn with_workers(workers: usize, body: impl FnOnce(&Broadcast)) {
        let b = Arc::new(Broadcast::new(workers));
        let threads: Vec<_> = (1..=workers)
            .map(|i| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || b.serve(i))
            })
            .collect();
        body(&b);
        b.shutdown();
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn every_thread_runs_every_job_once() {
        with_workers(3, |b| {
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
                b.run(&|i| {
                    hits[i].fetch_add(round + 1, Ordering::Relaxed);
                });
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), round + 1);
                }
            }
        });
    }

    #[test]
    fn sleeping_workers_wake_up() {
        with_workers(2, |b| {
            std::thread::sleep(SPIN * 20);
            let sum = AtomicUsize::new(0);
            b.run(&|i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 1 + 2);
        });
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        with_workers(1, |b| {
            let r = catch_unwind(AssertUnwindSafe(|| {
                b.run(&|i| assert_ne!(i, 1, "worker fails"));
            }));
            assert!(r.is_err());
            let count = AtomicUsize::new(0);
            b.run(&|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 2);
        });
    }

    #[test]
    fn the_active_count_changes_between_jobs() {
        with_workers(3, |b| {
            assert_eq!(b.capacity(), 4);
            for (round, threads) in [4, 1, 2, 4, 3, 3, 1, 4, 2, 9, 0].into_iter().enumerate() {
                b.set_active(threads);
                let want = threads.clamp(1, 4);
                assert_eq!(b.n_threads(), want);
                // Some rounds let the workers fall asleep first, some do not.
                if round % 3 == 0 {
                    std::thread::sleep(SPIN * 20);
                }
                for _ in 0..50 {
                    let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
                    b.run(&|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    let hits: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
                    let expected: Vec<usize> = (0..4).map(|i| usize::from(i < want)).collect();
                    assert_eq!(hits, expected, "{want} active threads");
                }
            }
        });
    }

    #[test]
    fn no_workers_runs_on_the_caller() {
        let b = Broadcast::new(0);
        let count = AtomicUsize::new(0);
        b.run(&|i| {
            assert_eq!(i, 0);
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
