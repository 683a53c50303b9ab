//! Parallel loops over independent chunks of an output, and the run-time choice of instruction
//! set.
//!
//! Programs run with the backend's persistent worker pool installed (`CpuBackend::run`,
//! `pool.rs`), so a parallel loop here groups its chunks into tasks that the calling thread and
//! the workers claim one at a time; nothing is allocated. With one thread the loops run
//! sequentially on the calling thread.
//!
//! Every loop gives each chunk to exactly one call of `f`, and the kernels compute a chunk the
//! same way whichever thread runs it, so results do not depend on the thread count.

use core::sync::atomic::{AtomicU8, Ordering};

use super::pool::{for_each_task, MAX_TASKS};

/// A base pointer shared by the tasks of one loop, each of which touches its own disjoint range.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the loops below give each chunk (a disjoint range behind the pointer) to exactly one
// task, and return only after every task has finished.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Elements `range` behind the pointer.
    ///
    /// # Safety
    /// `range` lies inside the slice the pointer came from, and no other live reference
    /// overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, range: core::ops::Range<usize>) -> &mut [f32] {
        core::slice::from_raw_parts_mut(self.0.add(range.start), range.len())
    }
}

/// Chunks per task: at least `MIN_TASK_WORK` of work each ([`for_each_index`] also keeps the
/// task count within the pool's bound).
fn chunks_per_task(work_per_chunk: usize) -> usize {
    (MIN_TASK_WORK / work_per_chunk.max(1)).max(1)
}

/// Calls `f(i)` for every `i` in `0..items` on up to `threads` threads, `per_task` consecutive
/// items per task.
pub(super) fn for_each_index(threads: usize, items: usize, per_task: usize, f: impl Fn(usize) + Sync) {
    let per_task = per_task.max(1).max(items.div_ceil(MAX_TASKS));
    for_each_task(threads, items.div_ceil(per_task), &|t| (t * per_task..((t + 1) * per_task).min(items)).for_each(&f));
}

/// A chunk smaller than this many multiply-adds (or element updates) is not worth a task of its
/// own: parallel loops group chunks until each task holds at least this much.
pub(super) const MIN_TASK_WORK: usize = 1 << 15;

/// Calls `f(index, chunk)` for every `chunk_len`-element chunk of `data` (the last may be
/// shorter), on up to `threads` threads. `work_per_chunk` (about the element operations one call
/// does) decides how many chunks a task takes.
pub fn for_each_chunk(
    threads: usize,
    data: &mut [f32],
    chunk_len: usize,
    work_per_chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Send + Sync,
) {
    if data.is_empty() {
        return;
    }
    let chunk_len = chunk_len.max(1);
    let chunks = data.len().div_ceil(chunk_len);
    if threads > 1 && chunks > 1 && chunks.saturating_mul(work_per_chunk) >= 2 * MIN_TASK_WORK {
        let (len, base) = (data.len(), Shared(data.as_mut_ptr()));
        for_each_index(threads, chunks, chunks_per_task(work_per_chunk), |i| {
            // SAFETY: chunk `i` is inside `data` and given to this call only.
            f(i, unsafe { base.slice(i * chunk_len..((i + 1) * chunk_len).min(len)) })
        });
    } else {
        data.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// [`for_each_chunk`] over two outputs split alike: chunk `i` of `a` (`a_len` elements) goes
/// with chunk `i` of `b` (`b_len`); both must hold the same number of chunks.
pub fn for_each_chunk2(
    threads: usize,
    a: &mut [f32],
    a_len: usize,
    b: &mut [f32],
    b_len: usize,
    work_per_chunk: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Send + Sync,
) {
    let (a_len, b_len) = (a_len.max(1), b_len.max(1));
    let chunks = a.len().div_ceil(a_len);
    debug_assert_eq!(chunks, b.len().div_ceil(b_len));
    if threads > 1 && chunks > 1 && chunks.saturating_mul(work_per_chunk) >= 2 * MIN_TASK_WORK {
        assert!(b.len().div_ceil(b_len) >= chunks, "for_each_chunk2: b has fewer chunks than a");
        let (a_total, b_total) = (a.len(), b.len());
        let (a_base, b_base) = (Shared(a.as_mut_ptr()), Shared(b.as_mut_ptr()));
        for_each_index(threads, chunks, chunks_per_task(work_per_chunk), |i| {
            // SAFETY: chunk `i` of each output is inside it and given to this call only.
            let (x, y) = unsafe {
                (a_base.slice(i * a_len..((i + 1) * a_len).min(a_total)), b_base.slice(i * b_len..((i + 1) * b_len).min(b_total)))
            };
            f(i, x, y)
        });
    } else {
        a.chunks_mut(a_len).zip(b.chunks_mut(b_len)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    }
}

/// [`for_each_chunk`] over three outputs of the same length split alike: `f(index, chunk of a,
/// chunk of b, chunk of c)`, the three chunks covering the same elements (an optimizer update's
/// parameter and its two moments). Panics when the lengths differ.
pub fn for_each_chunk3(
    threads: usize,
    a: &mut [f32],
    b: &mut [f32],
    c: &mut [f32],
    chunk_len: usize,
    work_per_chunk: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32], &mut [f32]) + Send + Sync,
) {
    let len = a.len();
    assert!(b.len() == len && c.len() == len, "for_each_chunk3: outputs of different lengths");
    let chunk_len = chunk_len.max(1);
    let chunks = len.div_ceil(chunk_len);
    if threads > 1 && chunks > 1 && chunks.saturating_mul(work_per_chunk) >= 2 * MIN_TASK_WORK {
        let (a_base, b_base, c_base) = (Shared(a.as_mut_ptr()), Shared(b.as_mut_ptr()), Shared(c.as_mut_ptr()));
        for_each_index(threads, chunks, chunks_per_task(work_per_chunk), |i| {
            let range = i * chunk_len..((i + 1) * chunk_len).min(len);
            // SAFETY: chunk `i` of each output (all `len` long, asserted above) is inside it and
            // given to this call only.
            let (x, y, z) = unsafe { (a_base.slice(range.clone()), b_base.slice(range.clone()), c_base.slice(range)) };
            f(i, x, y, z)
        });
    } else {
        let chunks = a.chunks_mut(chunk_len).zip(b.chunks_mut(chunk_len)).zip(c.chunks_mut(chunk_len));
        chunks.enumerate().for_each(|(i, ((x, y), z))| f(i, x, y, z));
    }
}

/// Splits `data` (whole `chunk_len`-element chunks) into at most `parts` runs of consecutive
/// chunks, one task each, and gives each run its own `scratch_len` elements of `scratch`:
/// `f(first chunk index, run, scratch)`. For kernels that need per-task scratch (a packing
/// buffer); `scratch` must hold `parts * scratch_len` elements. With one part `f` runs once, on
/// the calling thread.
pub fn for_each_part(
    parts: usize,
    data: &mut [f32],
    chunk_len: usize,
    scratch: &mut [f32],
    scratch_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Send + Sync,
) {
    let chunk_len = chunk_len.max(1);
    let chunks = data.len().div_ceil(chunk_len);
    let per = chunks.div_ceil(parts.max(1)).max(1);
    let used = chunks.div_ceil(per);
    assert!(
        scratch.len() >= used * scratch_len,
        "for_each_part: scratch holds {} elements, {used} parts need {}",
        scratch.len(),
        used * scratch_len
    );
    if used > 1 {
        // With `scratch_len` 0 (an empty product) zipping with empty chunks would drop every part.
        let (len, run_len) = (data.len(), per * chunk_len);
        let (base, scratch_base) = (Shared(data.as_mut_ptr()), Shared(scratch.as_mut_ptr()));
        for_each_index(used, used, 1, |i| {
            // SAFETY: run `i` of `data` and part `i` of `scratch` (`used * scratch_len` elements
            // exist, asserted above) are given to this call only.
            let (run, s) = unsafe {
                (base.slice(i * run_len..((i + 1) * run_len).min(len)), scratch_base.slice(i * scratch_len..(i + 1) * scratch_len))
            };
            f(i * per, run, s)
        });
    } else if !data.is_empty() {
        f(0, data, &mut scratch[..scratch_len]);
    }
}

/// The instruction sets the SIMD kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the build target guarantees (SSE2 on x86-64, NEON on aarch64), vectorised by the
    /// compiler.
    Portable,
    /// AVX2 and FMA on x86-64, chosen at run time when the CPU has both.
    Avx2Fma,
}

/// 0: detect, 1: portable, 2: AVX2+FMA where available, without AVX-512.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Restricts the kernels to the portable code (`Some(Isa::Portable)`), to AVX2+FMA without the
/// AVX-512 gemm micro-kernel (`Some(Isa::Avx2Fma)`), or lets them pick the best the CPU offers
/// (`None`), for tests that compare the paths with the reference and with each other.
pub fn force_isa(isa: Option<Isa>) {
    FORCED.store(
        match isa {
            None => 0,
            Some(Isa::Portable) => 1,
            Some(Isa::Avx2Fma) => 2,
        },
        Ordering::Relaxed,
    );
}

/// The instruction set the kernels use on this CPU.
pub fn isa() -> Isa {
    if FORCED.load(Ordering::Relaxed) == 1 {
        return Isa::Portable;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return Isa::Avx2Fma;
    }
    Isa::Portable
}

/// Whether the gemm micro-kernel may use AVX-512F (512-bit registers) on this CPU: [`isa`] is
/// AVX2+FMA, the CPU has AVX-512F, and no test restricted the kernels to AVX2. Only the gemm
/// micro-kernel has an AVX-512 form; it adds in the same order as the AVX2 one, so both give
/// the same bits.
pub fn avx512() -> bool {
    if FORCED.load(Ordering::Relaxed) != 0 || isa() != Isa::Avx2Fma {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return true;
    }
    false
}

/// `a * b + c`, fused into one rounding where the instruction set has FMA (`FMA`), else two.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Defines `fn $name(args)` that runs `$body::<true>(args)` compiled for AVX2+FMA when [`isa`]
/// allows, else `$body::<false>(args)` compiled for the build target. `$body` must be
/// `#[inline(always)]` and generic over `const FMA: bool` (see [`madd`]), so that the compiler
/// vectorises its loops separately for each instruction set.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body::<true>($($arg),*)
                }
                if $crate::kernels::cpu::par::isa() == $crate::kernels::cpu::par::Isa::Avx2Fma {
                    // SAFETY: `isa` returned Avx2Fma, so this CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Calls `f(tasks, run)` for runs of consecutive tasks of `0..tasks`, on up to `threads` threads,
/// where task `t`'s output is `data[start(t)..start(t + 1)]` (`start` increasing, `start(0) = 0`,
/// `start(tasks) = data.len()`): for kernels whose tasks own outputs of different lengths (a
/// block of channels that may be the last, shorter one of its sample). `work_per_task` (about the
/// element operations one task does) decides how many runs are worth a task each. Each run is
/// computed by one call on one thread, so a kernel that computes each task alike gives results
/// that do not depend on the thread count.
pub fn for_each_run(
    threads: usize,
    tasks: usize,
    work_per_task: usize,
    data: &mut [f32],
    start: impl Fn(usize) -> usize + Sync,
    f: impl Fn(core::ops::Range<usize>, &mut [f32]) + Send + Sync,
) {
    if tasks == 0 {
        return;
    }
    let worth = tasks.saturating_mul(work_per_task) / MIN_TASK_WORK;
    // Two runs per thread let a thread that finishes early take over the remainder of another.
    let runs = if threads > 1 && worth >= 2 { (2 * threads).min(tasks).min(worth) } else { 1 };
    if runs == 1 {
        f(0..tasks, data);
        return;
    }
    // Run `i` holds tasks `bound(i)..bound(i + 1)` and the part of `data` from `start` of its
    // first task to `start` of the next run's (the last run, to the end of `data`).
    let bound = |i: usize| tasks * i / runs;
    let (len, base) = (data.len(), Shared(data.as_mut_ptr()));
    for_each_index(runs, runs, 1, |i| {
        let end = if i + 1 == runs { len } else { start(bound(i + 1)) };
        let begin = start(bound(i));
        assert!(begin <= end && end <= len, "for_each_run: run {i} reaches past its data");
        // SAFETY: runs cover disjoint, increasing ranges of `data` (asserted in range), each
        // given to this call only.
        f(bound(i)..bound(i + 1), unsafe { base.slice(begin..end) })
    });
}
