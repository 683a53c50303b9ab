//! Max pooling and its gradient, channel planes split among the pool's threads.
//!
//! Each plane is computed as the reference computes it (`kernels/reference/pool.rs`): the first
//! maximum of each window in row-major order, a NaN always winning, padding as -inf; the
//! gradient adds each `dy` value to its window's maximum in output order. So the results equal
//! the reference's bit for bit, on any number of threads.
//!
//! A plane without NaN (checked once per plane, vectorised) takes the fast path: the windows of
//! an output row that lie wholly inside the plane's columns are computed side by side, one
//! window per vector lane, visiting the window's elements in row-major order with a
//! branch-free "take `v` if `v > best`" (which, without NaN, is the reference's choice: the
//! first maximum, and for the gradient its index). Rows clipped by the padding just visit fewer
//! rows; the windows clipped at the left and right edges, and every window of a plane holding a
//! NaN, use the exact scalar loop. The gradient keeps output order: per output row, the left
//! edge windows, then blocks of interior windows (indices first, then the additions in order),
//! then the right edge.

use core::ops::Range;

use super::par::{for_each_chunk, multiversion};
use crate::kernels::{KernelError, View, ViewMut};
use crate::ops::Pool2d;

/// The in-bounds input positions of window `o` along one axis (the reference's clipping).
fn window(o: usize, stride: usize, kernel: usize, pad: usize, len: usize) -> Range<usize> {
    let start = o * stride;
    let lo = start.saturating_sub(pad).min(len);
    let hi = (start + kernel).saturating_sub(pad).min(len);
    lo..hi.max(lo)
}

/// The maximum of the window `rows x cols` of a plane of width `w`, and its index in the plane
/// (`None` for a window entirely in the padding).
#[inline(always)]
fn window_max(xs: &[f32], rows: Range<usize>, cols: &Range<usize>, w: usize) -> (f32, Option<usize>) {
    let mut best = f32::NEG_INFINITY;
    let mut arg = None;
    for r in rows {
        for (c, &v) in xs[r * w + cols.start..r * w + cols.end].iter().enumerate() {
            if arg.is_none() || v > best || v.is_nan() {
                best = v;
                arg = Some(r * w + cols.start + c);
            }
        }
    }
    (best, arg)
}

/// `(planes, h, w, ho, wo)` of an NCHW pooling op, after checking the shapes and data lengths.
fn dims(op: &'static str, input: (&[usize], usize), output: (&[usize], usize)) -> Result<[usize; 5], KernelError> {
    let (&[n, c, h, w], &[n2, c2, ho, wo]) = (input.0, output.0) else {
        return Err(KernelError::Invalid { op, message: "pooling takes 4-D NCHW tensors" });
    };
    if n != n2 || c != c2 || n * c * h * w != input.1 || n * c * ho * wo != output.1 {
        return Err(KernelError::Invalid { op, message: "tensor data does not match its shape" });
    }
    Ok([n * c, h, w, ho, wo])
}

/// The output columns `lo..hi` whose windows lie wholly inside the `len` input columns (none
/// for a zero stride, which plans refuse, or sizes that overflow).
fn interior(out_len: usize, stride: usize, kernel: usize, pad: usize, len: usize) -> Range<usize> {
    if stride == 0 {
        return out_len..out_len;
    }
    let lo = pad.div_ceil(stride);
    let hi = match len.checked_add(pad).and_then(|l| l.checked_sub(kernel)) {
        Some(last_start) => (last_start / stride + 1).min(out_len),
        None => 0,
    };
    lo.min(hi)..hi
}

multiversion!(fn has_nan(x: &[f32]) -> bool => has_nan_body);

#[inline(always)]
fn has_nan_body<const FMA: bool>(x: &[f32]) -> bool {
    const LANES: usize = 16;
    let mut acc = [false; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            #[allow(clippy::eq_op)]
            {
                *a |= v != v;
            }
        }
    }
    acc.iter().any(|&a| a) || chunks.remainder().iter().any(|v| v.is_nan())
}

/// Interior windows computed side by side (their values and indices are kept on the stack).
const WINDOWS: usize = 64;

pub(super) fn max_pool2d(p: &Pool2d, x: View<f32>, y: &mut ViewMut<f32>, threads: usize) -> Result<(), KernelError> {
    let [_, h, w, ho, wo] = dims("MaxPool2d", (x.shape, x.data.len()), (y.shape, y.data.len()))?;
    let (in_plane, out_plane) = (h * w, ho * wo);
    let work = out_plane * p.kernel[0] * p.kernel[1];
    let (stride, kw, pad) = (p.stride[1], p.kernel[1], p.padding[1]);
    let inner = interior(wo, stride, kw, pad, w);
    for_each_chunk(threads, y.data, out_plane.max(1), work, |plane, ys| {
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        let fast = !has_nan(xs);
        for (oh, y_row) in ys.chunks_exact_mut(wo.max(1)).enumerate() {
            let rows = window(oh, p.stride[0], p.kernel[0], p.padding[0], h);
            let scalar = if fast { (0..inner.start).chain(inner.end..wo) } else { (0..wo).chain(0..0) };
            for ow in scalar {
                let cols = window(ow, stride, kw, pad, w);
                y_row[ow] = window_max(xs, rows.clone(), &cols, w).0;
            }
            if fast {
                for (b, out) in y_row[inner.clone()].chunks_mut(WINDOWS).enumerate() {
                    let first_col = (inner.start + b * WINDOWS) * stride - pad;
                    interior_max(xs, w, rows.clone(), first_col, kw, stride, out);
                }
            }
        }
    });
    Ok(())
}

multiversion!(fn interior_max(xs: &[f32], w: usize, rows: Range<usize>, first_col: usize, kw: usize, stride: usize, out: &mut [f32]) => interior_max_body);

/// `out[j]` = the maximum of window `j`: rows `rows`, columns `first_col + j * stride` to
/// `first_col + j * stride + kw` (all inside the plane; `out` at most `WINDOWS` long), for a
/// plane without NaN: -inf, then every element in row-major order, taken when greater.
#[inline(always)]
fn interior_max_body<const FMA: bool>(
    xs: &[f32],
    w: usize,
    rows: Range<usize>,
    first_col: usize,
    kw: usize,
    stride: usize,
    out: &mut [f32],
) {
    out.fill(f32::NEG_INFINITY);
    let mut column = [0f32; WINDOWS];
    for r in rows {
        for kc in 0..kw {
            let src = strided(xs, r * w + first_col + kc, stride, out.len(), &mut column);
            for (o, &v) in out.iter_mut().zip(src) {
                *o = if v > *o { v } else { *o };
            }
        }
    }
}

/// The `n` elements `xs[start + j * stride]`: a slice of `xs` itself for stride 1, else gathered
/// into `buffer`, so that the loops over windows run over contiguous lanes.
#[inline(always)]
fn strided<'a>(xs: &'a [f32], start: usize, stride: usize, n: usize, buffer: &'a mut [f32; WINDOWS]) -> &'a [f32] {
    if stride == 1 {
        return &xs[start..start + n];
    }
    // Stride 2 with a whole last pair in the plane: pairs, which the compiler deinterleaves
    // with vector shuffles.
    if stride == 2 && start + 2 * n <= xs.len() {
        for (b, pair) in buffer[..n].iter_mut().zip(xs[start..start + 2 * n].chunks_exact(2)) {
            *b = pair[0];
        }
        return &buffer[..n];
    }
    let src = &xs[start..start + (n - 1) * stride + 1];
    for (b, &v) in buffer[..n].iter_mut().zip(src.iter().step_by(stride)) {
        *b = v;
    }
    &buffer[..n]
}

pub(super) fn max_pool2d_grad(p: &Pool2d, dy: View<f32>, x: View<f32>, dx: &mut ViewMut<f32>, threads: usize) -> Result<(), KernelError> {
    const OP: &str = "MaxPool2dGrad";
    let [_, h, w, ho, wo] = dims(OP, (x.shape, x.data.len()), (dy.shape, dy.data.len()))?;
    if dx.shape != x.shape || dx.data.len() != x.data.len() {
        return Err(KernelError::Invalid { op: OP, message: "dx's shape differs from x's" });
    }
    let (in_plane, out_plane) = (h * w, ho * wo);
    let work = out_plane * p.kernel[0] * p.kernel[1];
    let (stride, kw, pad) = (p.stride[1], p.kernel[1], p.padding[1]);
    let inner = interior(wo, stride, kw, pad, w);
    // Interior indices are kept as u32.
    let indexable = u32::try_from(in_plane).is_ok();
    for_each_chunk(threads, dx.data, in_plane.max(1), work, |plane, dxs| {
        dxs.fill(0.0);
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        let dys = &dy.data[plane * out_plane..(plane + 1) * out_plane];
        let fast = indexable && !has_nan(xs);
        let inner = if fast { inner.clone() } else { wo..wo };
        let mut best = [0f32; WINDOWS];
        let mut index = [0u32; WINDOWS];
        for (oh, dy_row) in dys.chunks_exact(wo.max(1)).enumerate() {
            let rows = window(oh, p.stride[0], p.kernel[0], p.padding[0], h);
            let scalar = |ow: usize, dxs: &mut [f32]| {
                let cols = window(ow, stride, kw, pad, w);
                if let (_, Some(j)) = window_max(xs, rows.clone(), &cols, w) {
                    dxs[j] += dy_row[ow];
                }
            };
            (0..inner.start).for_each(|ow| scalar(ow, dxs));
            // A window wholly in the padding rows has no maximum and routes nothing.
            if !rows.is_empty() {
                let mut ow = inner.start;
                while ow < inner.end {
                    let n = WINDOWS.min(inner.end - ow);
                    let first_col = ow * stride - pad;
                    interior_argmax(xs, w, rows.clone(), first_col, kw, stride, &mut best[..n], &mut index[..n]);
                    for (&j, &g) in index[..n].iter().zip(&dy_row[ow..ow + n]) {
                        dxs[j as usize] += g;
                    }
                    ow += n;
                }
            }
            (inner.end..wo).for_each(|ow| scalar(ow, dxs));
        }
    });
    Ok(())
}

multiversion!(#[allow(clippy::too_many_arguments)] fn interior_argmax(xs: &[f32], w: usize, rows: Range<usize>, first_col: usize, kw: usize, stride: usize, best: &mut [f32], index: &mut [u32]) => interior_argmax_body);

/// `index[j]` = the plane index of the first maximum in row-major order of the window of rows
/// `rows` (not empty) and columns `first_col + j * stride .. + kw` (all inside the plane), for a
/// plane without NaN: the first element, then every later one taken when greater. The loop keeps
/// each window's best element as its offset in the plane from the window's first element (the
/// same for all lanes of one step), and adds the window's start at the end (no division).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn interior_argmax_body<const FMA: bool>(
    xs: &[f32],
    w: usize,
    rows: Range<usize>,
    first_col: usize,
    kw: usize,
    stride: usize,
    best: &mut [f32],
    index: &mut [u32],
) {
    let n = best.len();
    let index = &mut index[..n];
    let mut column = [0f32; WINDOWS];
    for r in rows.clone() {
        for kc in 0..kw {
            let src = strided(xs, r * w + first_col + kc, stride, n, &mut column);
            // The element's place in the plane relative to its window's first element (the
            // same for all lanes of one step; plane sizes that reach here fit a u32,
            // `indexable`).
            let offset = ((r - rows.start) * w + kc) as u32;
            if offset == 0 {
                best.copy_from_slice(src);
                index.fill(0);
            } else {
                for ((b, i), &v) in best.iter_mut().zip(index.iter_mut()).zip(src) {
                    let take = v > *b;
                    *b = if take { v } else { *b };
                    *i = if take { offset } else { *i };
                }
            }
        }
    }
    // Window `j` starts `j * stride` after the first: plane index = first + offset + j * stride.
    let (first, stride) = ((rows.start * w + first_col) as u32, stride as u32);
    for (j, i) in index.iter_mut().enumerate() {
        *i = first + *i + j as u32 * stride;
    }
}
