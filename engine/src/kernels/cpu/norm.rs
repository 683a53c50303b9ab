//! Batch normalisation in training mode, forward and backward: per-channel sums split among the
//! pool's threads by channel, then the elementwise pass split by `(sample, channel)` plane, all
//! vectorised for the instruction set chosen at run time. The sums are the reference's
//! (`kernels/reference/norm.rs`: f64 accumulation in eight lanes, in a fixed order) run through
//! the same functions, and every formula is the reference's, so results are the reference's bit
//! for bit. (One f32 running sum, the reference's earlier order, could not vectorise, and an
//! eight-lane f32 sum moved ResNet-18's BatchNorm bias gradients after 3 steps by up to 3e-3
//! relative, outside the PyTorch parity test's 1e-4 in `tests/onnx_parity.rs`: the bias gradients
//! are sums with heavy cancellation.)

use super::par::{for_each_chunk, for_each_chunk2, multiversion, MIN_TASK_WORK};
use crate::kernels::reference::norm::{channel_grad_sums, channel_moments, statistics};
use crate::kernels::{View, ViewMut};
use crate::ops::BatchNorm;

/// `(N, C, elements per sample and channel)` of a rank-2 or rank-4 input.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

multiversion!(fn affine(x: &[f32], mean: f32, scale: f32, shift: f32, y: &mut [f32]) => affine_body);

#[inline(always)]
fn affine_body<const FMA: bool>(x: &[f32], mean: f32, scale: f32, shift: f32, y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = (xv - mean) * scale + shift;
    }
}

multiversion!(fn grad_input_run(dy: &[f32], x: &[f32], k: [f32; 6], dx: &mut [f32]) => grad_input_run_body);

/// `dx = scale * (m * dy - sum_dy - xhat * sum_dy_xhat)` with `xhat = (x - mean) * invstd`;
/// `k` is `[scale, m, sum_dy, sum_dy_xhat, mean, invstd]`.
#[inline(always)]
fn grad_input_run_body<const FMA: bool>(dy: &[f32], x: &[f32], k: [f32; 6], dx: &mut [f32]) {
    let [scale, m, sum_dy, sum_dy_xhat, mean, invstd] = k;
    for ((d, &g), &xv) in dx.iter_mut().zip(dy).zip(x) {
        let xhat = (xv - mean) * invstd;
        *d = scale * (m * g - sum_dy - xhat * sum_dy_xhat);
    }
}

multiversion!(fn moments(x: View<'_, f32>, c: usize) -> (f64, f64) => moments_body);

#[inline(always)]
fn moments_body<const FMA: bool>(x: View<'_, f32>, c: usize) -> (f64, f64) {
    channel_moments(x, c)
}

multiversion!(fn grad_sums(dy: View<'_, f32>, x: View<'_, f32>, c: usize, mean: f32) -> (f64, f64) => grad_sums_body);

#[inline(always)]
fn grad_sums_body<const FMA: bool>(dy: View<'_, f32>, x: View<'_, f32>, c: usize, mean: f32) -> (f64, f64) {
    channel_grad_sums(dy, x, c, mean)
}

/// Calls `f(c, [&mut a[c], &mut b[c], ...])` for every channel `c` of four per-channel outputs,
/// split among up to `threads` threads when `work_per_channel` element operations make it worth it.
fn per_channel(threads: usize, work_per_channel: usize, outputs: [&mut [f32]; 4], f: impl Fn(usize, [&mut f32; 4]) + Send + Sync) {
    use rayon::prelude::*;
    let [a, b, c, d] = outputs;
    let channels = a.len();
    if threads > 1 && channels > 1 && channels.saturating_mul(work_per_channel) >= 2 * MIN_TASK_WORK {
        let min_len = (MIN_TASK_WORK / work_per_channel.max(1)).max(1);
        a.par_iter_mut()
            .zip(b.par_iter_mut())
            .zip(c.par_iter_mut())
            .zip(d.par_iter_mut())
            .with_min_len(min_len)
            .enumerate()
            .for_each(|(i, (((a, b), c), d))| f(i, [a, b, c, d]));
    } else {
        a.iter_mut().zip(b.iter_mut()).zip(c.iter_mut()).zip(d.iter_mut()).enumerate().for_each(|(i, (((a, b), c), d))| f(i, [a, b, c, d]));
    }
}

/// Normalises with the batch statistics and updates the running statistics in place.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    b: &BatchNorm,
    x: View<f32>,
    gamma: View<f32>,
    beta: View<f32>,
    y: &mut ViewMut<f32>,
    saved_mean: &mut ViewMut<f32>,
    saved_invstd: &mut ViewMut<f32>,
    running_mean: &mut ViewMut<f32>,
    running_var: &mut ViewMut<f32>,
    threads: usize,
) {
    let (n, channels, inner) = layout(x.shape);
    let count = n * inner;
    let (eps, momentum) = (b.eps, b.momentum);
    let stats = [&mut *saved_mean.data, &mut *saved_invstd.data, &mut *running_mean.data, &mut *running_var.data];
    per_channel(threads, 3 * count, stats, |c, [mean, invstd, run_mean, run_var]| {
        let (m, squares) = moments(x, c);
        let unbiased;
        (*mean, *invstd, unbiased) = statistics(m, squares, count, eps);
        *run_mean = (1.0 - momentum) * *run_mean + momentum * *mean;
        *run_var = (1.0 - momentum) * *run_var + momentum * unbiased;
    });
    let (mean, invstd) = (&*saved_mean.data, &*saved_invstd.data);
    for_each_chunk(threads, y.data, inner, inner, |p, y_run| {
        let c = p % channels;
        affine(&x.data[p * inner..][..inner], mean[c], gamma.data[c] * invstd[c], beta.data[c], y_run);
    });
}

/// The backward pass through batch statistics (the reference's formula).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_grad(
    dy: View<f32>,
    x: View<f32>,
    gamma: View<f32>,
    saved_mean: View<f32>,
    saved_invstd: View<f32>,
    dx: &mut ViewMut<f32>,
    dgamma: &mut ViewMut<f32>,
    dbeta: &mut ViewMut<f32>,
    threads: usize,
) {
    let (n, channels, inner) = layout(x.shape);
    let m = (n * inner) as f32;
    for_each_chunk2(threads, dgamma.data, 1, dbeta.data, 1, 2 * n * inner, |c, dg, db| {
        let (sum_dy, sum_dy_xmu) = grad_sums(dy, x, c, saved_mean.data[c]);
        db[0] = sum_dy as f32;
        dg[0] = (sum_dy_xmu * f64::from(saved_invstd.data[c])) as f32;
    });
    let (sum_dy, sum_dy_xhat) = (&*dbeta.data, &*dgamma.data);
    for_each_chunk(threads, dx.data, inner, 3 * inner, |p, dx_run| {
        let c = p % channels;
        let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
        let k = [gamma.data[c] * invstd / m, m, sum_dy[c], sum_dy_xhat[c], mean, invstd];
        grad_input_run(&dy.data[p * inner..][..inner], &x.data[p * inner..][..inner], k, dx_run);
    });
}
