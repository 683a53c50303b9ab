//! Batch normalisation in training mode, forward and backward: per-channel sums split among the
//! pool's threads (the forward's eight channels side by side in the vector lanes, each channel
//! still one sequential sum, so eight independent add chains instead of one), then the
//! elementwise pass split by `(sample, channel)` plane and vectorised for the instruction set
//! chosen at run time. The sums keep the reference's order
//! (`kernels/reference/norm.rs`) and every formula is the reference's, so results are the
//! reference's bit for bit: reordered (vectorised) sums moved ResNet-18's BatchNorm gradients
//! after 3 steps by up to 3e-3 relative, outside the PyTorch parity test's 1e-4
//! (`tests/onnx_parity.rs`), because the bias gradients are sums with heavy cancellation.

use super::par::{for_each_chunk, for_each_chunk2, multiversion};
use crate::kernels::{View, ViewMut};
use crate::ops::BatchNorm;

/// `(N, C, elements per sample and channel)` of a rank-2 or rank-4 input.
/// Channels whose gradient sums one task runs side by side.
const SUM_CHANNELS: usize = 4;

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

/// Channels whose sums run side by side, one per vector lane.
const LANES: usize = 8;

/// The runs of channels `first ..` (eight, the last repeated past the final channel) of sample
/// `s` in an `[N, C, inner]` tensor.
#[inline(always)]
fn block_runs(data: &[f32], [_, channels, inner]: [usize; 3], s: usize, first: usize) -> [&[f32]; LANES] {
    core::array::from_fn(|l| &data[(s * channels + (first + l).min(channels - 1)) * inner..][..inner])
}

multiversion!(fn block_moments(x: &[f32], layout: [usize; 3], first: usize, m: f32) -> [[f32; LANES]; 2] => block_moments_body);

/// The means and sums of squared deviations of channels `first ..` (eight), each summed exactly
/// as the reference does (`Iterator::sum` per sample run, from -0.0, then over the runs): only
/// the channels run side by side, so the result is the reference's bit for bit.
// Element `i` of eight runs at once: an index reads clearer than eight zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn block_moments_body<const FMA: bool>(x: &[f32], layout: [usize; 3], first: usize, m: f32) -> [[f32; LANES]; 2] {
    let (n, inner) = (layout[0], layout[2]);
    let mut total = [-0.0f32; LANES];
    for s in 0..n {
        let runs = block_runs(x, layout, s, first);
        let mut run_sum = [-0.0f32; LANES];
        for i in 0..inner {
            for l in 0..LANES {
                run_sum[l] += runs[l][i];
            }
        }
        for l in 0..LANES {
            total[l] += run_sum[l];
        }
    }
    let mean: [f32; LANES] = core::array::from_fn(|l| total[l] / m);
    let mut total = [-0.0f32; LANES];
    for s in 0..n {
        let runs = block_runs(x, layout, s, first);
        let mut run_sum = [-0.0f32; LANES];
        for i in 0..inner {
            for l in 0..LANES {
                let d = runs[l][i] - mean[l];
                run_sum[l] += d * d;
            }
        }
        for l in 0..LANES {
            total[l] += run_sum[l];
        }
    }
    [mean, total]
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
    let m = count as f32;
    // Per block of channels: the means into `saved_mean`, the sums of squared deviations (two
    // passes, as the reference) into `saved_invstd` until the sequential pass below turns them
    // into 1/std.
    for_each_chunk2(threads, saved_mean.data, LANES, saved_invstd.data, LANES, 3 * count * LANES, |b, mean, squares| {
        let [means, sums] = block_moments(x.data, [n, channels, inner], b * LANES, m);
        mean.copy_from_slice(&means[..mean.len()]);
        squares.copy_from_slice(&sums[..squares.len()]);
    });
    let (eps, momentum) = (b.eps, b.momentum);
    for c in 0..channels {
        let (mean, squares) = (saved_mean.data[c], saved_invstd.data[c]);
        let var = squares / m;
        saved_invstd.data[c] = (var + eps).sqrt().recip();
        // As the reference: PyTorch's unbiased running variance, the biased one for one element.
        let unbiased = if count > 1 { squares / (count - 1) as f32 } else { var };
        running_mean.data[c] = (1.0 - momentum) * running_mean.data[c] + momentum * mean;
        running_var.data[c] = (1.0 - momentum) * running_var.data[c] + momentum * unbiased;
    }
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
    // Each channel's sums add its elements in the reference's order (sample by sample, each run
    // in order), as one chain per sum. A chain is bound by the adder's latency, so each task runs
    // the chains of `SUM_CHANNELS` neighbouring channels side by side: their runs lie next to each
    // other in every sample. (Eight channels in SIMD lanes, like the forward's moments, were twice
    // as slow: sixteen runs read at once.)
    for_each_chunk2(threads, dgamma.data, SUM_CHANNELS, dbeta.data, SUM_CHANNELS, 2 * n * inner * SUM_CHANNELS, |b, dg, db| {
        let first = b * SUM_CHANNELS;
        if let (Ok(dg), Ok(db)) = (<&mut [f32; SUM_CHANNELS]>::try_from(&mut *dg), <&mut [f32; SUM_CHANNELS]>::try_from(&mut *db)) {
            let mean: [f32; SUM_CHANNELS] = core::array::from_fn(|l| saved_mean.data[first + l]);
            let invstd: [f32; SUM_CHANNELS] = core::array::from_fn(|l| saved_invstd.data[first + l]);
            let (mut sum_dy, mut sum_dy_xhat) = ([0.0f32; SUM_CHANNELS], [0.0f32; SUM_CHANNELS]);
            for s in 0..n {
                let block = (s * channels + first) * inner..(s * channels + first + SUM_CHANNELS) * inner;
                let (dy, x) = (&dy.data[block.clone()], &x.data[block]);
                for j in 0..inner {
                    for l in 0..SUM_CHANNELS {
                        let (g, xv) = (dy[l * inner + j], x[l * inner + j]);
                        sum_dy[l] += g;
                        sum_dy_xhat[l] += g * (xv - mean[l]) * invstd[l];
                    }
                }
            }
            *db = sum_dy;
            *dg = sum_dy_xhat;
            return;
        }
        // The last block, when the channels do not divide evenly: one channel at a time.
        for (l, (dg, db)) in dg.iter_mut().zip(db.iter_mut()).enumerate() {
            let c = first + l;
            let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
            let (mut sum_dy, mut sum_dy_xhat) = (0.0f32, 0.0f32);
            for s in 0..n {
                let run = (s * channels + c) * inner..(s * channels + c + 1) * inner;
                for (&g, &xv) in dy.data[run.clone()].iter().zip(&x.data[run]) {
                    sum_dy += g;
                    sum_dy_xhat += g * (xv - mean) * invstd;
                }
            }
            *db = sum_dy;
            *dg = sum_dy_xhat;
        }
    });
    let (sum_dy, sum_dy_xhat) = (&*dbeta.data, &*dgamma.data);
    for_each_chunk(threads, dx.data, inner, 3 * inner, |p, dx_run| {
        let c = p % channels;
        let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
        let k = [gamma.data[c] * invstd / m, m, sum_dy[c], sum_dy_xhat[c], mean, invstd];
        grad_input_run(&dy.data[p * inner..][..inner], &x.data[p * inner..][..inner], k, dx_run);
    });
}
