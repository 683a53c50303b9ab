//! Batch normalisation: training (batch statistics) and frozen (running statistics) forms.
//!
//! The input is `[N, C]` or `[N, C, H, W]`; statistics are per channel (axis 1) over the other
//! axes. In the row-major layout, channel `c` of sample `n` is the contiguous run of `H * W`
//! elements starting at `(n * C + c) * H * W`, which [`channel_runs`] walks.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::BatchNorm;

/// `(N, C, elements per sample and channel)` of a rank-2 or rank-4 input.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// The index ranges that hold channel `c`: one contiguous run per sample.
fn channel_runs(shape: &[usize], c: usize) -> impl Iterator<Item = core::ops::Range<usize>> {
    let (n, channels, inner) = layout(shape);
    (0..n).map(move |s| {
        let start = (s * channels + c) * inner;
        start..start + inner
    })
}

/// Normalises with per-channel `mean` and `invstd`, then applies the affine transform.
fn normalize<T: Float>(x: View<T>, gamma: View<T>, beta: View<T>, c: usize, mean: T, invstd: T, y: &mut [T]) {
    let scale = gamma.data[c] * invstd;
    let shift = beta.data[c];
    for run in channel_runs(x.shape, c) {
        for (yv, &xv) in y[run.clone()].iter_mut().zip(&x.data[run]) {
            *yv = (xv - mean) * scale + shift;
        }
    }
}

/// Normalises with the batch statistics and updates the running statistics in place.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train<T: Float>(
    b: &BatchNorm,
    x: View<T>,
    gamma: View<T>,
    beta: View<T>,
    y: &mut ViewMut<T>,
    saved_mean: &mut ViewMut<T>,
    saved_invstd: &mut ViewMut<T>,
    running_mean: &mut ViewMut<T>,
    running_var: &mut ViewMut<T>,
) {
    let (n, channels, inner) = layout(x.shape);
    let count = n * inner;
    let m = T::from_usize(count);
    let eps = T::from_f32(b.eps);
    let momentum = T::from_f32(b.momentum);
    for c in 0..channels {
        // Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which loses
        // precision when the mean is large compared with the spread.
        let sum: T = channel_runs(x.shape, c).map(|r| x.data[r].iter().copied().sum::<T>()).sum();
        let mean = sum / m;
        let squares: T = channel_runs(x.shape, c).map(|r| x.data[r].iter().map(|&v| (v - mean) * (v - mean)).sum::<T>()).sum();
        let var = squares / m;
        let invstd = (var + eps).sqrt().recip();
        normalize(x, gamma, beta, c, mean, invstd, y.data);
        saved_mean.data[c] = mean;
        saved_invstd.data[c] = invstd;
        // PyTorch tracks the unbiased variance. With one element per channel it is 0/0; PyTorch
        // refuses to train then, and a kernel cannot refuse, so it keeps the (zero) biased value
        // instead of writing NaN into persistent state.
        let unbiased = if count > 1 { squares / T::from_usize(count - 1) } else { var };
        running_mean.data[c] = (T::one() - momentum) * running_mean.data[c] + momentum * mean;
        running_var.data[c] = (T::one() - momentum) * running_var.data[c] + momentum * unbiased;
    }
}

/// Normalises with the frozen running statistics.
pub fn batch_norm_infer<T: Float>(
    b: &BatchNorm,
    x: View<T>,
    gamma: View<T>,
    beta: View<T>,
    running_mean: View<T>,
    running_var: View<T>,
    y: &mut ViewMut<T>,
) {
    let eps = T::from_f32(b.eps);
    for c in 0..x.shape[1] {
        let invstd = (running_var.data[c] + eps).sqrt().recip();
        normalize(x, gamma, beta, c, running_mean.data[c], invstd, y.data);
    }
}

/// `sum(dy)` and `sum(dy * xhat)` over one channel, with `xhat = (x - mean) * invstd`: the
/// gradients of beta and gamma.
fn channel_sums<T: Float>(dy: View<T>, x: View<T>, c: usize, mean: T, invstd: T) -> (T, T) {
    let (mut sum_dy, mut sum_dy_xhat) = (T::zero(), T::zero());
    for run in channel_runs(x.shape, c) {
        for (&g, &xv) in dy.data[run.clone()].iter().zip(&x.data[run]) {
            sum_dy += g;
            sum_dy_xhat += g * (xv - mean) * invstd;
        }
    }
    (sum_dy, sum_dy_xhat)
}

/// The backward pass through batch statistics: the mean and variance depend on `x` too, so
/// `dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))` with `M` elements per
/// channel.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_grad<T: Float>(
    _b: &BatchNorm,
    dy: View<T>,
    x: View<T>,
    gamma: View<T>,
    saved_mean: View<T>,
    saved_invstd: View<T>,
    dx: &mut ViewMut<T>,
    dgamma: &mut ViewMut<T>,
    dbeta: &mut ViewMut<T>,
) {
    let (n, channels, inner) = layout(x.shape);
    let m = T::from_usize(n * inner);
    for c in 0..channels {
        let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
        let (sum_dy, sum_dy_xhat) = channel_sums(dy, x, c, mean, invstd);
        dbeta.data[c] = sum_dy;
        dgamma.data[c] = sum_dy_xhat;
        let scale = gamma.data[c] * invstd / m;
        for run in channel_runs(x.shape, c) {
            for ((d, &g), &xv) in dx.data[run.clone()].iter_mut().zip(&dy.data[run.clone()]).zip(&x.data[run]) {
                let xhat = (xv - mean) * invstd;
                *d = scale * (m * g - sum_dy - xhat * sum_dy_xhat);
            }
        }
    }
}

/// The backward pass through frozen statistics: a per-channel affine map, so `dx = dy * gamma *
/// invstd`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_infer_grad<T: Float>(
    b: &BatchNorm,
    dy: View<T>,
    x: View<T>,
    gamma: View<T>,
    running_mean: View<T>,
    running_var: View<T>,
    dx: &mut ViewMut<T>,
    dgamma: &mut ViewMut<T>,
    dbeta: &mut ViewMut<T>,
) {
    let eps = T::from_f32(b.eps);
    for c in 0..x.shape[1] {
        let (mean, invstd) = (running_mean.data[c], (running_var.data[c] + eps).sqrt().recip());
        let (sum_dy, sum_dy_xhat) = channel_sums(dy, x, c, mean, invstd);
        dbeta.data[c] = sum_dy;
        dgamma.data[c] = sum_dy_xhat;
        let scale = gamma.data[c] * invstd;
        for run in channel_runs(x.shape, c) {
            for (d, &g) in dx.data[run.clone()].iter_mut().zip(&dy.data[run]) {
                *d = g * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_normalises_and_tracks_unbiased_running_variance() {
        // x is [N=2, C=2, 1, 2]: channel 0 holds {1, 2, 3, 6} (mean 3, biased var 14/4, unbiased
        // 14/3), channel 1 holds {-1, -1, -1, -1} (mean -1, var 0).
        let x: [f64; 8] = [1., 2., -1., -1., 3., 6., -1., -1.];
        let shape = [2, 2, 1, 2];
        let b = BatchNorm { eps: 0.0, momentum: 0.25 };
        let (mut y, mut mean, mut invstd) = ([0.0; 8], [0.0; 2], [0.0; 2]);
        let (mut rmean, mut rvar) = ([1.0, 2.0], [1.0, 1.0]);
        batch_norm_train(
            &b,
            View { data: &x, shape: &shape },
            View { data: &[2.0, 1.0], shape: &[2] },
            View { data: &[0.5, 0.0], shape: &[2] },
            &mut ViewMut { data: &mut y, shape: &shape },
            &mut ViewMut { data: &mut mean, shape: &[2] },
            &mut ViewMut { data: &mut invstd, shape: &[2] },
            &mut ViewMut { data: &mut rmean, shape: &[2] },
            &mut ViewMut { data: &mut rvar, shape: &[2] },
        );
        assert_eq!(mean, [3.0, -1.0]);
        let s = (14.0f64 / 4.0).sqrt().recip();
        assert_eq!(invstd[0], s);
        assert!(invstd[1].is_infinite(), "eps 0 and zero variance give an infinite invstd");
        assert_eq!(rmean, [0.75 + 0.75, 1.5 - 0.25]);
        assert_eq!(rvar, [0.75 + 0.25 * 14.0 / 3.0, 0.75]);
        // Deviations from the mean, normalised, times gamma 2, plus beta 0.5.
        let expect = [-2.0, -1.0, 0.0, 3.0].map(|d: f64| d * s * 2.0 + 0.5);
        for (got, want) in [y[0], y[1], y[4], y[5]].iter().zip(expect) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn infer_uses_running_statistics() {
        let x: [f64; 4] = [1., 2., 3., 4.];
        let shape = [1, 1, 2, 2];
        let mut y = [0.0; 4];
        let b = BatchNorm { eps: 0.0, momentum: 0.1 };
        let one = |v: f64| [v];
        batch_norm_infer(
            &b,
            View { data: &x, shape: &shape },
            View { data: &one(3.0), shape: &[1] },
            View { data: &one(1.0), shape: &[1] },
            View { data: &one(2.0), shape: &[1] },
            View { data: &one(4.0), shape: &[1] },
            &mut ViewMut { data: &mut y, shape: &shape },
        );
        // (x - 2) / 2 * 3 + 1.
        assert_eq!(y, [-0.5, 1.0, 2.5, 4.0]);
    }
}
