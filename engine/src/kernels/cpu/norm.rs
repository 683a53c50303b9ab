//! Batch normalisation in training mode, forward and backward: per-channel sums split among the
//! pool's threads by channel, then the elementwise pass split by `(sample, channel)` plane and
//! vectorised for the instruction set chosen at run time. The sums keep the reference's order
//! (`kernels/reference/norm.rs`) and every formula is the reference's, so results are the
//! reference's bit for bit: reordered (vectorised) sums moved ResNet-18's BatchNorm gradients
//! after 3 steps by up to 3e-3 relative, outside the PyTorch parity test's 1e-4
//! (`tests/onnx_parity.rs`), because the bias gradients are sums with heavy cancellation.

use super::par::{for_each_chunk, for_each_chunk2, multiversion};
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
    // Per channel: the mean into `saved_mean`, the sum of squared deviations (two passes, as the
    // reference) into `saved_invstd` until the sequential pass below turns it into 1/std.
    for_each_chunk2(threads, saved_mean.data, 1, saved_invstd.data, 1, 3 * count, |c, mean, squares| {
        let runs = || (0..n).map(|s| &x.data[(s * channels + c) * inner..][..inner]);
        mean[0] = runs().map(|r| r.iter().copied().sum::<f32>()).sum::<f32>() / m;
        let mu = mean[0];
        squares[0] = runs().map(|r| r.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>()).sum::<f32>();
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
    for_each_chunk2(threads, dgamma.data, 1, dbeta.data, 1, 2 * n * inner, |c, dg, db| {
        let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
        let (mut sum_dy, mut sum_dy_xhat) = (0.0f32, 0.0f32);
        for s in 0..n {
            let run = (s * channels + c) * inner..(s * channels + c + 1) * inner;
            for (&g, &xv) in dy.data[run.clone()].iter().zip(&x.data[run]) {
                sum_dy += g;
                sum_dy_xhat += g * (xv - mean) * invstd;
            }
        }
        db[0] = sum_dy;
        dg[0] = sum_dy_xhat;
    });
    let (sum_dy, sum_dy_xhat) = (&*dbeta.data, &*dgamma.data);
    for_each_chunk(threads, dx.data, inner, 3 * inner, |p, dx_run| {
        let c = p % channels;
        let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
        let k = [gamma.data[c] * invstd / m, m, sum_dy[c], sum_dy_xhat[c], mean, invstd];
        grad_input_run(&dy.data[p * inner..][..inner], &x.data[p * inner..][..inner], k, dx_run);
    });
}
