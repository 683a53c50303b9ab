//! Elementwise activations, their gradients and same-shape addition: the reference formulas
//! (so results are bit for bit the reference's), vectorised for the instruction set chosen at
//! run time and split into blocks among the pool's threads.

use super::par::{for_each_chunk, multiversion};
use crate::ops::Clip;

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
        let raised = if xv < lo { lo } else { xv };
        *yv = if raised > hi { hi } else { raised };
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
        *yv = if xv < 0.0 { 0.0 } else { xv };
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
