//! The fast kernels' persistent worker pool: fork-join over numbered tasks, allocation-free after
//! it starts.
//!
//! Why not rayon (which pock used until 2026-12): entering a rayon pool from the session's thread
//! (`ThreadPool::install`) queues a job on rayon's injector, a linked list of 63-slot blocks, so
//! one block was allocated every 63 program runs, and its work-stealing deques grow and shrink
//! their buffers; issue 8 asks for zero allocations inside a training step, on every thread.
//! The kernels need only one primitive, "run tasks `0..n` of this closure, then return", which
//! this file implements in about 200 lines with std's `Mutex`/`Condvar` (futex-based on Linux:
//! no allocation after they exist) and two atomics:
//!
//! - The caller publishes the job (a pointer to its closure, valid until it returns) and then
//!   takes part in it, so `threads` = the caller + `threads - 1` workers.
//! - Tasks are claimed one at a time through a single 64-bit word holding the job's generation,
//!   the next unclaimed task and the task count, so a worker that wakes late can never claim a
//!   task of a job other than the one it read.
//! - The caller returns when every task has finished; a panic in a task is caught where it
//!   happened and resumed on the caller's thread.
//! - Workers spin briefly for the next job (programs run one parallel loop after another) and
//!   then sleep on the condition variable.
//!
//! A parallel loop called from inside a task (a kernel's loop inside another's) runs
//! sequentially on that thread: every loop gives each task to exactly one call, so results never
//! depend on where a task runs or how many threads there are.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::{self, JoinHandle};

/// Bits of the claim word: generation (24) | next task (20) | task count (20).
const TASK_BITS: u32 = 20;
/// The most tasks one job may have; loops with more chunks group them into tasks.
pub const MAX_TASKS: usize = (1 << TASK_BITS) - 1;
const TASK_MASK: u64 = (1 << TASK_BITS) - 1;
/// Spin iterations a worker (or the waiting caller) polls before it sleeps (or yields).
const SPINS: u32 = 1 << 14;

/// The job being run: a type-erased `&dyn Fn(usize) + Sync` that lives on the caller's stack.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// generation << 40 | next << 20 | count.
    claim: AtomicU64,
    /// The current job (a `*const &Job`, valid while `remaining > 0`).
    job: AtomicPtr<&'static Job>,
    /// Tasks of the current job not yet finished.
    remaining: AtomicUsize,
    /// The first panic of a task of the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Sleeping workers wait on `wake` (under `sleep`) for a new generation or shutdown.
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Held by the thread publishing a job: a second thread using the same pool at the same time
    /// runs its loop sequentially instead of waiting.
    publish: Mutex<()>,
    /// Workers that have started ([`Pool::new`] waits for all).
    started: AtomicUsize,
}

/// A pool of `threads - 1` worker threads that, with the calling thread, run parallel loops.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

thread_local! {
    /// The pool the calling thread's parallel loops use ([`Pool::install`]).
    static CURRENT: Cell<*const Shared> = const { Cell::new(core::ptr::null()) };
    /// Whether this thread is inside a task (nested loops run sequentially).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// Starts `threads - 1` workers (none for 1 thread).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(core::ptr::null_mut()),
            remaining: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            publish: Mutex::new(()),
            started: AtomicUsize::new(0),
        });
        let mut workers = Vec::with_capacity(threads.saturating_sub(1));
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            let spawned = thread::Builder::new().name(format!("pock-worker-{i}")).spawn(move || worker(&s));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    drop(Pool { shared, workers });
                    return Err(e);
                }
            }
        }
        // A thread's start-up allocates (its handle and name, thread-locals). Waiting for every
        // worker to have started keeps that out of the first steps, on a loaded machine too.
        while shared.started.load(Ordering::Acquire) < workers.len() {
            thread::yield_now();
        }
        Ok(Pool { shared, workers })
    }

    /// Threads that run a loop: the workers and the caller.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f` on this thread with this pool as the one its parallel loops use.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Shared);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Arc::as_ptr(&self.shared))));
        f()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Calls `f(t)` once for every task `t` in `0..tasks`, on up to `threads` threads: the pool of
/// [`Pool::install`] on this thread, else a process-wide pool started on first use (kernels
/// called outside a session, as the kernel tests do). Sequential with `threads <= 1`, one task,
/// inside another loop's task, or while another thread is using the same pool.
pub fn for_each_task(threads: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if threads <= 1 || tasks <= 1 || IN_TASK.with(Cell::get) {
        return (0..tasks).for_each(f);
    }
    let current = CURRENT.with(Cell::get);
    // SAFETY: CURRENT is set only by `Pool::install`, whose pool outlives the call it wraps,
    // and this call happens inside it.
    let shared = if current.is_null() { &*global(threads).shared } else { unsafe { &*current } };
    run(shared, tasks, f);
}

/// The process-wide pool of loops called outside [`Pool::install`].
fn global(threads: usize) -> &'static Pool {
    static GLOBAL: OnceLock<Pool> = OnceLock::new();
    GLOBAL.get_or_init(|| Pool::new(threads.max(2)).expect("cannot start the kernels' worker threads"))
}

fn run(shared: &Shared, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let _publishing = match shared.publish.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::WouldBlock) => return (0..tasks).for_each(f),
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
    };
    assert!(tasks <= MAX_TASKS, "for_each_task: {tasks} tasks, at most {MAX_TASKS}");
    // SAFETY: the job pointer is erased to 'static only while this function has not returned:
    // it returns after `remaining` reaches 0, and no thread reads the pointer after claiming no
    // task (a claim is only possible while tasks remain).
    let job: &'static Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
    let slot: *const &'static Job = &job;
    shared.job.store(slot as *mut _, Ordering::Release);
    shared.remaining.store(tasks, Ordering::Release);
    let generation = (shared.claim.load(Ordering::Relaxed) >> (2 * TASK_BITS)).wrapping_add(1) & 0xff_ffff;
    shared.claim.store(generation << (2 * TASK_BITS) | tasks as u64, Ordering::Release);
    {
        let _guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
        shared.wake.notify_all();
    }
    work(shared, generation);
    let mut spins = 0u32;
    while shared.remaining.load(Ordering::Acquire) != 0 {
        if spins < SPINS {
            core::hint::spin_loop();
            spins += 1;
        } else {
            thread::yield_now();
        }
    }
    shared.job.store(core::ptr::null_mut(), Ordering::Release);
    let payload = shared.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = payload {
        panic::resume_unwind(payload);
    }
}

/// Claims and runs tasks of job `generation` until none is left.
fn work(shared: &Shared, generation: u64) {
    loop {
        let c = shared.claim.load(Ordering::Acquire);
        let (next, count) = ((c >> TASK_BITS) & TASK_MASK, c & TASK_MASK);
        if c >> (2 * TASK_BITS) != generation || next >= count {
            return;
        }
        if shared.claim.compare_exchange_weak(c, c + (1 << TASK_BITS), Ordering::AcqRel, Ordering::Acquire).is_err() {
            continue;
        }
        // SAFETY: task `next` of this generation is claimed and unfinished, so the caller is
        // still inside `run` and the job slot holds this generation's closure.
        let job = unsafe { *shared.job.load(Ordering::Acquire) };
        IN_TASK.with(|t| t.set(true));
        let result = panic::catch_unwind(AssertUnwindSafe(|| job(next as usize)));
        IN_TASK.with(|t| t.set(false));
        if let Err(payload) = result {
            let mut first = shared.panic.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(payload);
        }
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

fn worker(shared: &Shared) {
    // Initialise what the thread creates lazily (its handle; the thread-locals) before reporting.
    let _ = thread::current();
    IN_TASK.with(|t| t.set(false));
    CURRENT.with(Cell::get);
    shared.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let generation = loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = shared.claim.load(Ordering::Acquire) >> (2 * TASK_BITS);
            if g != seen {
                break g;
            }
            if spins < SPINS {
                core::hint::spin_loop();
                spins += 1;
                continue;
            }
            let guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            // Re-checked under the lock the publisher takes to notify: no wake-up is lost.
            if shared.claim.load(Ordering::Acquire) >> (2 * TASK_BITS) == seen && !shared.shutdown.load(Ordering::Acquire) {
                drop(shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
        };
        seen = generation;
        work(shared, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_thread_count() {
        for threads in 1..=4 {
            let pool = Pool::new(threads).unwrap();
            for tasks in [0, 1, 2, 3, 17, 1000] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.install(|| {
                    for_each_task(threads, tasks, &|t| {
                        hits[t].fetch_add(1, Ordering::Relaxed);
                    })
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn nested_loops_run_sequentially_and_panics_reach_the_caller() {
        let pool = Pool::new(3).unwrap();
        let total = AtomicUsize::new(0);
        pool.install(|| {
            for_each_task(3, 8, &|_| {
                for_each_task(3, 5, &|_| {
                    total.fetch_add(1, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 40);
        let caught =
            panic::catch_unwind(AssertUnwindSafe(|| pool.install(|| for_each_task(3, 64, &|t| assert!(t != 40, "task 40 fails")))));
        assert!(caught.is_err(), "a task's panic reaches the caller");
        // The pool still works after a panic.
        let n = AtomicUsize::new(0);
        pool.install(|| {
            for_each_task(3, 64, &|_| {
                n.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }
}
