//! Batch normalisation in training mode, forward and backward: per-channel sums split among the
//! pool's threads (the forward's eight channels side by side in the vector lanes, each channel
//! still one sequential sum, so eight independent add chains instead of one), then the
//! elementwise pass split by `(sample, channel)` plane and vectorised for the instruction set
//! chosen at run time. The sums keep the reference's order
//! (`kernels/reference/norm.rs`) and every formula is the reference's, so results are the
//! reference's bit for bit: reordered (vectorised) sums moved ResNet-18's BatchNorm gradients
//! after 3 steps by up to 3e-3 relative, outside the PyTorch parity test's 1e-4
//! (`tests/onnx_parity.rs`), because the bias gradients are sums with heavy cancellation.

use super::epilogue;
use super::par::{for_each_index, multiversion, MIN_TASK_WORK};
use crate::kernels::{View, ViewMut};
use crate::ops::{Activation, BatchNorm};

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
    let n = layout[0];
    let mut total = [-0.0f32; LANES];
    for s in 0..n {
        let run_sum = run_sums::<FMA>(block_runs(x, layout, s, first), None);
        for l in 0..LANES {
            total[l] += run_sum[l];
        }
    }
    let mean: [f32; LANES] = core::array::from_fn(|l| total[l] / m);
    let mut total = [-0.0f32; LANES];
    for s in 0..n {
        let run_sum = run_sums::<FMA>(block_runs(x, layout, s, first), Some(mean));
        for l in 0..LANES {
            total[l] += run_sum[l];
        }
    }
    [mean, total]
}

/// Each run's sum from -0.0 in element order (`Iterator::sum`), of its elements, or with
/// `mean` of their squared deviations `(v - mean) * (v - mean)`.
// Element `i` of eight runs at once: an index reads clearer than eight zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn run_sums<const FMA: bool>(runs: [&[f32]; LANES], mean: Option<[f32; LANES]>) -> [f32; LANES] {
    let inner = runs[0].len();
    let mut run_sum = [-0.0f32; LANES];
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in a `multiversion!` body's AVX2+FMA instance, which runs only
        // where the CPU has both.
        done = unsafe { run_sums_avx2(runs, mean, &mut run_sum) };
    }
    for i in done..inner {
        for l in 0..LANES {
            let v = runs[l][i];
            run_sum[l] += match mean {
                None => v,
                Some(mean) => (v - mean[l]) * (v - mean[l]),
            };
        }
    }
    run_sum
}

/// [`run_sums`] eight elements at a time: eight vectors (one per run) transposed into eight
/// vectors of one element of every run, added onto the sums in element order, so every lane is
/// still its run's sequential sum (the same bits). Returns how many elements of each run it added
/// (a multiple of eight; the caller adds the rest).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_sums_avx2(runs: [&[f32]; LANES], mean: Option<[f32; LANES]>, run_sum: &mut [f32; LANES]) -> usize {
    use core::arch::x86_64::*;
    let inner = runs.iter().map(|r| r.len()).min().unwrap_or(0);
    let whole = inner / LANES * LANES;
    let mut acc = _mm256_loadu_ps(run_sum.as_ptr());
    let mean_v = mean.map(|m| _mm256_loadu_ps(m.as_ptr()));
    let mut i = 0;
    while i < whole {
        let r = [
            _mm256_loadu_ps(runs[0].as_ptr().add(i)),
            _mm256_loadu_ps(runs[1].as_ptr().add(i)),
            _mm256_loadu_ps(runs[2].as_ptr().add(i)),
            _mm256_loadu_ps(runs[3].as_ptr().add(i)),
            _mm256_loadu_ps(runs[4].as_ptr().add(i)),
            _mm256_loadu_ps(runs[5].as_ptr().add(i)),
            _mm256_loadu_ps(runs[6].as_ptr().add(i)),
            _mm256_loadu_ps(runs[7].as_ptr().add(i)),
        ];
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps(t[0], t[2], 0x44),
            _mm256_shuffle_ps(t[0], t[2], 0xEE),
            _mm256_shuffle_ps(t[1], t[3], 0x44),
            _mm256_shuffle_ps(t[1], t[3], 0xEE),
            _mm256_shuffle_ps(t[4], t[6], 0x44),
            _mm256_shuffle_ps(t[4], t[6], 0xEE),
            _mm256_shuffle_ps(t[5], t[7], 0x44),
            _mm256_shuffle_ps(t[5], t[7], 0xEE),
        ];
        // Column `j`: element `i + j` of every run.
        let columns = [
            _mm256_permute2f128_ps(u[0], u[4], 0x20),
            _mm256_permute2f128_ps(u[1], u[5], 0x20),
            _mm256_permute2f128_ps(u[2], u[6], 0x20),
            _mm256_permute2f128_ps(u[3], u[7], 0x20),
            _mm256_permute2f128_ps(u[0], u[4], 0x31),
            _mm256_permute2f128_ps(u[1], u[5], 0x31),
            _mm256_permute2f128_ps(u[2], u[6], 0x31),
            _mm256_permute2f128_ps(u[3], u[7], 0x31),
        ];
        for c in columns {
            acc = match mean_v {
                None => _mm256_add_ps(acc, c),
                Some(m) => {
                    let d = _mm256_sub_ps(c, m);
                    _mm256_add_ps(acc, _mm256_mul_ps(d, d))
                }
            };
        }
        i += LANES;
    }
    _mm256_storeu_ps(run_sum.as_mut_ptr(), acc);
    whole
}

multiversion!(fn block_sums(x: &[f32], layout: [usize; 3], first: usize) -> [f32; LANES] => block_sums_body);

/// The sums of channels `first ..` (eight) as the reference's `bias_grad` forms them: each
/// sample's run summed from -0.0 in element order (`Iterator::sum`), added onto 0 in sample
/// order; only the channels run side by side, so the result is the reference's bit for bit.
// Element `l` of eight sums at once: an index reads clearer than eight zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn block_sums_body<const FMA: bool>(x: &[f32], layout: [usize; 3], first: usize) -> [f32; LANES] {
    let mut total = [0.0f32; LANES];
    for s in 0..layout[0] {
        let run_sum = run_sums::<FMA>(block_runs(x, layout, s, first), None);
        for l in 0..LANES {
            total[l] += run_sum[l];
        }
    }
    total
}

/// `DenseOp::BiasGrad`: `db[c]` = the sum of `dy` over every axis but axis 1, eight channels
/// side by side and blocks of channels split among the threads, each channel summed in the
/// reference's order (`reference::dense::bias_grad`), so the same bits. Returns false, writing
/// nothing, for a layout the reference must handle (rank below 2, an empty tensor, or `db` not
/// axis 1's length).
pub fn bias_grad(dy: View<f32>, db: &mut ViewMut<f32>, threads: usize) -> bool {
    let channels = db.data.len();
    if dy.shape.len() < 2 || dy.shape[1] != channels || dy.data.is_empty() || dy.data.len() != dy.shape.iter().product::<usize>() {
        return false;
    }
    let layout @ [n, _, inner] = [dy.shape[0], channels, dy.shape[2..].iter().product()];
    let out = ChannelOut::new(db.data);
    for_each_block(threads, channels, LANES, n * inner * LANES, |first, block| {
        let sums = block_sums(dy.data, layout, first);
        for (l, &v) in sums.iter().enumerate().take(block) {
            // SAFETY: channel `first + l` belongs to this block alone.
            unsafe { out.run(first + l, 1)[0] = v };
        }
    });
    true
}

/// Disjoint per-channel writes from the tasks of one loop over blocks of channels: each task
/// writes only the elements of its own channels (their statistics, and their runs of every sample).
#[derive(Clone, Copy)]
struct ChannelOut {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: `for_each_block` gives each block of channels to exactly one task and returns only after
// every task has finished; a task writes only its channels' elements (`ChannelOut::run`, `::at`).
unsafe impl Send for ChannelOut {}
unsafe impl Sync for ChannelOut {}

impl ChannelOut {
    fn new(data: &mut [f32]) -> Self {
        ChannelOut { ptr: data.as_mut_ptr(), len: data.len() }
    }

    /// Elements `start .. start + len`.
    ///
    /// # Safety
    /// Only the task that owns these elements' channel calls this, once per element at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start <= self.len && len <= self.len - start, "batch norm: a channel's run reaches past its tensor");
        core::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// Calls `f(first, count)` for every block of `block` channels (`count` of them, fewer in the last
/// block) on up to `threads` threads; `work` is about the element operations one block does.
fn for_each_block(threads: usize, channels: usize, block: usize, work: usize, f: impl Fn(usize, usize) + Sync) {
    let blocks = channels.div_ceil(block);
    let threads = if blocks.saturating_mul(work) >= 2 * MIN_TASK_WORK { threads } else { 1 };
    for_each_index(threads, blocks, (MIN_TASK_WORK / work.max(1)).max(1), |b| {
        let first = b * block;
        f(first, (channels - first).min(block))
    });
}

/// Normalises with the batch statistics and updates the running statistics in place; `act` is
/// `BatchNormTrainAct`'s activation (`Identity` for `BatchNormTrain`).
///
/// One task per block of eight channels computes their statistics and then writes their output
/// runs of every sample, while the block's input is still in cache (a pass over the whole tensor
/// per stage read it from memory three times).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    b: &BatchNorm,
    act: &Activation,
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
    let (eps, momentum) = (b.eps, b.momentum);
    let stats = [
        ChannelOut::new(saved_mean.data),
        ChannelOut::new(saved_invstd.data),
        ChannelOut::new(running_mean.data),
        ChannelOut::new(running_var.data),
    ];
    let y_out = ChannelOut::new(y.data);
    for_each_block(threads, channels, LANES, 4 * count * LANES, |first, block| {
        // The means and the sums of squared deviations (two passes, as the reference).
        let [means, squares] = block_moments(x.data, [n, channels, inner], first, m);
        for l in 0..block {
            let c = first + l;
            // SAFETY: channel `c` belongs to this block alone.
            let [mean_out, invstd_out, running_mean, running_var] = stats.each_ref().map(|s| unsafe { &mut s.run(c, 1)[0] });
            let (mean, squares) = (means[l], squares[l]);
            let var = squares / m;
            let invstd = (var + eps).sqrt().recip();
            *mean_out = mean;
            *invstd_out = invstd;
            // As the reference: PyTorch's unbiased running variance, the biased one for one element.
            let unbiased = if count > 1 { squares / (count - 1) as f32 } else { var };
            *running_mean = (1.0 - momentum) * *running_mean + momentum * mean;
            *running_var = (1.0 - momentum) * *running_var + momentum * unbiased;
            let scale = gamma.data[c] * invstd;
            for s in 0..n {
                let start = (s * channels + c) * inner;
                // SAFETY: channel `c`'s run of sample `s`, written by this task only.
                let run = unsafe { y_out.run(start, inner) };
                affine(&x.data[start..][..inner], mean, scale, beta.data[c], run);
                // `BatchNormTrainAct`'s activation, on the run while it is in L1.
                epilogue::activate(act, run);
            }
        }
    });
}

/// The backward pass through batch statistics (the reference's formula). One task per block of
/// channels computes their sums and then writes their input gradient runs, while the block's `dy`
/// and `x` are still in cache.
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
    let (dx_out, dgamma_out, dbeta_out) = (ChannelOut::new(dx.data), ChannelOut::new(dgamma.data), ChannelOut::new(dbeta.data));
    // Each channel's sums add its elements in the reference's order (sample by sample, each run
    // in order), as one chain per sum. A chain is bound by the adder's latency, so each task runs
    // the chains of `SUM_CHANNELS` neighbouring channels side by side: their runs lie next to each
    // other in every sample. (Eight channels in SIMD lanes, like the forward's moments, were twice
    // as slow: sixteen runs read at once.)
    for_each_block(threads, channels, SUM_CHANNELS, 5 * n * inner * SUM_CHANNELS, |first, block| {
        let mut sum_dy = [0.0f32; SUM_CHANNELS];
        let mut sum_dy_xhat = [0.0f32; SUM_CHANNELS];
        if block == SUM_CHANNELS {
            let mean: [f32; SUM_CHANNELS] = core::array::from_fn(|l| saved_mean.data[first + l]);
            let invstd: [f32; SUM_CHANNELS] = core::array::from_fn(|l| saved_invstd.data[first + l]);
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
        } else {
            // The last block, when the channels do not divide evenly: one channel at a time.
            for l in 0..block {
                let c = first + l;
                let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
                for s in 0..n {
                    let run = (s * channels + c) * inner..(s * channels + c + 1) * inner;
                    for (&g, &xv) in dy.data[run.clone()].iter().zip(&x.data[run]) {
                        sum_dy[l] += g;
                        sum_dy_xhat[l] += g * (xv - mean) * invstd;
                    }
                }
            }
        }
        for l in 0..block {
            let c = first + l;
            // SAFETY: channel `c` belongs to this block alone.
            unsafe {
                dbeta_out.run(c, 1)[0] = sum_dy[l];
                dgamma_out.run(c, 1)[0] = sum_dy_xhat[l];
            }
            let (mean, invstd) = (saved_mean.data[c], saved_invstd.data[c]);
            let k = [gamma.data[c] * invstd / m, m, sum_dy[l], sum_dy_xhat[l], mean, invstd];
            for s in 0..n {
                let start = (s * channels + c) * inner;
                // SAFETY: channel `c`'s run of sample `s`, written by this task only.
                let dx_run = unsafe { dx_out.run(start, inner) };
                grad_input_run(&dy.data[start..][..inner], &x.data[start..][..inner], k, dx_run);
            }
        }
    });
}
