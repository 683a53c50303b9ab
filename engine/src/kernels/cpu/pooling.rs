//! Max pooling and its gradient, channel planes split among the pool's threads.
//!
//! Each plane is computed as the reference computes it (`kernels/reference/pool.rs`): the first
//! maximum of each window in row-major order, a NaN always winning, padding as -inf; the
//! gradient adds each `dy` value to its window's maximum in output order. So the results equal
//! the reference's bit for bit, on any number of threads. The speed comes from walking the
//! windows as row and column ranges (no per-element index iterator) and from the threads.

use core::ops::Range;

use super::par::for_each_chunk;
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

pub(super) fn max_pool2d(p: &Pool2d, x: View<f32>, y: &mut ViewMut<f32>, threads: usize) -> Result<(), KernelError> {
    let [_, h, w, ho, wo] = dims("MaxPool2d", (x.shape, x.data.len()), (y.shape, y.data.len()))?;
    let (in_plane, out_plane) = (h * w, ho * wo);
    let work = out_plane * p.kernel[0] * p.kernel[1];
    for_each_chunk(threads, y.data, out_plane.max(1), work, |plane, ys| {
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        for (oh, y_row) in ys.chunks_exact_mut(wo.max(1)).enumerate() {
            let rows = window(oh, p.stride[0], p.kernel[0], p.padding[0], h);
            for (ow, yv) in y_row.iter_mut().enumerate() {
                let cols = window(ow, p.stride[1], p.kernel[1], p.padding[1], w);
                *yv = window_max(xs, rows.clone(), &cols, w).0;
            }
        }
    });
    Ok(())
}

pub(super) fn max_pool2d_grad(p: &Pool2d, dy: View<f32>, x: View<f32>, dx: &mut ViewMut<f32>, threads: usize) -> Result<(), KernelError> {
    const OP: &str = "MaxPool2dGrad";
    let [_, h, w, ho, wo] = dims(OP, (x.shape, x.data.len()), (dy.shape, dy.data.len()))?;
    if dx.shape != x.shape || dx.data.len() != x.data.len() {
        return Err(KernelError::Invalid { op: OP, message: "dx's shape differs from x's" });
    }
    let (in_plane, out_plane) = (h * w, ho * wo);
    let work = out_plane * p.kernel[0] * p.kernel[1];
    for_each_chunk(threads, dx.data, in_plane.max(1), work, |plane, dxs| {
        dxs.fill(0.0);
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        let dys = &dy.data[plane * out_plane..(plane + 1) * out_plane];
        for (oh, dy_row) in dys.chunks_exact(wo.max(1)).enumerate() {
            let rows = window(oh, p.stride[0], p.kernel[0], p.padding[0], h);
            for (ow, &g) in dy_row.iter().enumerate() {
                let cols = window(ow, p.stride[1], p.kernel[1], p.padding[1], w);
                if let (_, Some(j)) = window_max(xs, rows.clone(), &cols, w) {
                    dxs[j] += g;
                }
            }
        }
    });
    Ok(())
}
