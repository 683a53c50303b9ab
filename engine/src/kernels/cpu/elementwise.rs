//! Elementwise activations, their gradients, same-shape addition and the activation masks' packing: the reference formulas
//! (so results are bit for bit the reference's), vectorised for the instruction set chosen at
//! run time and split into blocks among the pool's threads.

use super::par::{for_each_chunk, for_each_index, multiversion, MIN_TASK_WORK};
use crate::kernels::reference;
use crate::ops::{Clip, MaskKind};

/// Elements per task: large enough to amortise a task, small enough to share a layer's
/// activations among two threads.
const BLOCK: usize = 1 << 14;

/// The `i`-th `BLOCK`-element block of an input whose output is split the same way.
fn block(data: &[f32], i: usize, len: usize) -> &[f32] {
    &data[i * BLOCK..i * BLOCK + len]
}

pub fn clip(c: &Clip, x: &[f32], y: &mut [f32], threads: usize) {
    let (lo, hi) = (c.min, c.max);
    for_each_chunk(threads, y, BLOCK, BLOCK, |i, y| clip_block(lo, hi, block(x, i, y.len()), y));
}

multiversion!(fn clip_block(lo: f32, hi: f32, x: &[f32], y: &mut [f32]) => clip_block_body);

#[inline(always)]
fn clip_block_body<const FMA: bool>(lo: f32, hi: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = reference::dense::clip_value(xv, lo, hi);
    }
}

pub fn clip_grad(c: &Clip, dy: &[f32], x: &[f32], dx: &mut [f32], threads: usize) {
    let (lo, hi) = (c.min, c.max);
    for_each_chunk(threads, dx, BLOCK, BLOCK, |i, dx| {
        let n = dx.len();
        clip_grad_block(lo, hi, block(dy, i, n), block(x, i, n), dx)
    });
}

multiversion!(fn clip_grad_block(lo: f32, hi: f32, dy: &[f32], x: &[f32], dx: &mut [f32]) => clip_grad_block_body);

#[inline(always)]
fn clip_grad_block_body<const FMA: bool>(lo: f32, hi: f32, dy: &[f32], x: &[f32], dx: &mut [f32]) {
    for ((d, &g), &xv) in dx.iter_mut().zip(dy).zip(x) {
        *d = if lo < xv && xv < hi { g } else { 0.0 };
    }
}

pub fn relu(x: &[f32], y: &mut [f32], threads: usize) {
    for_each_chunk(threads, y, BLOCK, BLOCK, |i, y| relu_block(block(x, i, y.len()), y));
}

multiversion!(fn relu_block(x: &[f32], y: &mut [f32]) => relu_block_body);

#[inline(always)]
fn relu_block_body<const FMA: bool>(x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = reference::dense::relu_value(xv);
    }
}

pub fn relu_grad(dy: &[f32], x: &[f32], dx: &mut [f32], threads: usize) {
    for_each_chunk(threads, dx, BLOCK, BLOCK, |i, dx| {
        let n = dx.len();
        relu_grad_block(block(dy, i, n), block(x, i, n), dx)
    });
}

multiversion!(fn relu_grad_block(dy: &[f32], x: &[f32], dx: &mut [f32]) => relu_grad_block_body);

#[inline(always)]
fn relu_grad_block_body<const FMA: bool>(dy: &[f32], x: &[f32], dx: &mut [f32]) {
    for ((d, &g), &xv) in dx.iter_mut().zip(dy).zip(x) {
        *d = if xv > 0.0 { g } else { 0.0 };
    }
}

pub fn add(a: &[f32], b: &[f32], y: &mut [f32], threads: usize) {
    for_each_chunk(threads, y, BLOCK, BLOCK, |i, y| {
        let n = y.len();
        add_block(block(a, i, n), block(b, i, n), y)
    });
}

multiversion!(fn add_block(a: &[f32], b: &[f32], y: &mut [f32]) => add_block_body);

#[inline(always)]
fn add_block_body<const FMA: bool>(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((yv, &av), &bv) in y.iter_mut().zip(a).zip(b) {
        *yv = av + bv;
    }
}

/// `MaskPack`: bit `i` of `bits` set where `v[i]` passes `kind`'s predicate (the reference's
/// `mask::pack`, same bits: the same strict comparisons, NaN passing none), `BLOCK` elements (a
/// whole number of mask bytes) per task. Returns false, writing nothing, when `bits` is not
/// `ceil(v.len() / 8)` bytes.
pub fn mask_pack(kind: &MaskKind, v: &[f32], bits: &mut [u8], threads: usize) -> bool {
    if bits.len() != v.len().div_ceil(8) {
        return false;
    }
    // `(lo, hi)`: an element passes where `lo < x && x < hi` (ReLU: `0 < x`, with no upper bound;
    // `x < inf` would drop an infinite input, so ReLU keeps its own predicate).
    let bounds = match *kind {
        MaskKind::Relu => (0.0, None),
        MaskKind::Clip(c) => (c.min, Some(c.max)),
    };
    let blocks = v.len().div_ceil(BLOCK);
    let per_task = (MIN_TASK_WORK / BLOCK).max(1);
    let threads = if blocks > 1 { threads } else { 1 };
    let (base, len) = (SharedBytes(bits.as_mut_ptr()), bits.len());
    for_each_index(threads, blocks, per_task, |i| {
        let elems = &v[i * BLOCK..((i + 1) * BLOCK).min(v.len())];
        let start = i * BLOCK / 8;
        let count = elems.len().div_ceil(8);
        assert!(start + count <= len, "mask_pack: block {i} reaches past the mask");
        // SAFETY: block `i`'s bytes lie inside `bits` (asserted) and are given to this call only.
        let out = unsafe { base.bytes(start, count) };
        pack_block(bounds.0, bounds.1, elems, out);
    });
    true
}

/// The mask bytes behind a pointer shared by [`mask_pack`]'s tasks, each writing its own bytes.
#[derive(Clone, Copy)]
struct SharedBytes(*mut u8);
// SAFETY: `mask_pack` gives each block of bytes to exactly one task and returns only after every
// task has finished.
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// `count` bytes from `start`.
    ///
    /// # Safety
    /// They lie inside the slice the pointer came from, and no other live reference overlaps them.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes(&self, start: usize, count: usize) -> &mut [u8] {
        core::slice::from_raw_parts_mut(self.0.add(start), count)
    }
}

multiversion!(fn pack_block(lo: f32, hi: Option<f32>, v: &[f32], bits: &mut [u8]) => pack_block_body);

#[inline(always)]
fn pack_block_body<const FMA: bool>(lo: f32, hi: Option<f32>, v: &[f32], bits: &mut [u8]) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in a `multiversion!` body's AVX2+FMA instance, which runs only
        // where the CPU has both.
        done = unsafe { pack_avx2(lo, hi, v, bits) };
    }
    for (byte, chunk) in bits[done..].iter_mut().zip(v[done * 8..].chunks(8)) {
        let mut b = 0u8;
        for (i, &x) in chunk.iter().enumerate() {
            b |= u8::from(lo < x && hi.is_none_or(|hi| x < hi)) << i;
        }
        *byte = b;
    }
}

/// [`pack_block_body`]'s whole bytes, eight elements compared at once (ordered comparisons: NaN
/// passes none, as the scalar `<`); returns how many bytes it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_avx2(lo: f32, hi: Option<f32>, v: &[f32], bits: &mut [u8]) -> usize {
    use core::arch::x86_64::*;
    let whole = (v.len() / 8).min(bits.len());
    let lo_v = _mm256_set1_ps(lo);
    match hi {
        None => {
            for (k, byte) in bits[..whole].iter_mut().enumerate() {
                let x = _mm256_loadu_ps(v.as_ptr().add(8 * k));
                *byte = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(x, lo_v)) as u8;
            }
        }
        Some(hi) => {
            let hi_v = _mm256_set1_ps(hi);
            for (k, byte) in bits[..whole].iter_mut().enumerate() {
                let x = _mm256_loadu_ps(v.as_ptr().add(8 * k));
                let inside = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(x, lo_v), _mm256_cmp_ps::<_CMP_LT_OQ>(x, hi_v));
                *byte = _mm256_movemask_ps(inside) as u8;
            }
        }
    }
    whole
}
