//! Helpers shared by the compiler's integration tests (each test file includes it with `mod support;`).

#![allow(dead_code)]

use pock_compiler::ir::{Graph, Phase, Program, TensorId};

/// Counts allocations made on a thread while that thread has counting switched on, so that the
/// other tests of this binary, running on their own threads, do not disturb the count.
pub struct Counting;

pub static ALLOCATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
thread_local! {
    pub static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// How many allocations `f` made on this thread. The test binary must install [`Counting`] as its
/// global allocator (`#[global_allocator] static ALLOCATOR: support::Counting = support::Counting;`).
pub fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst) - before
}

/// Appends a forward node of the train program and returns its first output.
pub fn emit(g: &mut Graph, name: &str, op: impl Into<pock_engine::Op>, inputs: &[TensorId]) -> TensorId {
    g.emit(name, op, inputs, Phase::Forward, Program::Train).unwrap()[0]
}
