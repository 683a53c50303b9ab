//! Row-wise kernels on f32, split among the pool's threads: cross-entropy over the last axis
//! (a language model's `[B, T, V]` logits), its gradient, and mean/sum reductions over trailing
//! axes with their gradients (LayerNorm's statistics as ONNX spells them).
//!
//! Each row is computed by the reference's own per-row code or the same arithmetic in the same
//! order, and every total adds the same terms in the same order, so results equal the reference
//! bit for bit. The cross-entropy's per-position losses go to scratch (one f32 per position,
//! allocated at load through `scratch_elems`), so they can be computed in parallel and still be
//! totalled in position order.

use super::par::for_each_chunk;
use crate::kernels::reference::loss as reference;
use crate::kernels::{KernelError, View, ViewMut};
use crate::ops::{CrossEntropy, Reduce, Reduction};

/// Scratch elements [`cross_entropy`] needs: one per position of `logits`.
pub(super) fn cross_entropy_scratch(logits: &[usize]) -> usize {
    logits.split_last().map_or(0, |(_, rows)| rows.iter().product())
}

/// `CrossEntropy` (see [`reference::cross_entropy`]). `false` when `scratch` is too small (the
/// caller then runs the reference).
pub(super) fn cross_entropy(
    ce: CrossEntropy,
    logits: View<'_, f32>,
    labels: View<'_, i64>,
    loss: &mut ViewMut<'_, f32>,
    scratch: &mut [f32],
    threads: usize,
) -> Result<bool, KernelError> {
    let Some(&classes) = logits.shape.last() else { return Ok(false) };
    let positions = labels.data.len();
    if classes == 0 || positions == 0 || logits.data.len() != positions * classes || scratch.len() < positions {
        return Ok(false);
    }
    let kept = reference::check_labels_ignoring("CrossEntropy", labels.data, classes, ce.ignore_index)?;
    let losses = &mut scratch[..positions];
    for_each_chunk(threads, losses, 1, classes, |p, out| {
        let label = labels.data[p];
        out[0] = if label == ce.ignore_index {
            0.0
        } else {
            let row = &logits.data[p * classes..(p + 1) * classes];
            reference::log_sum_exp(row) - row[label as usize]
        };
    });
    let losses = &*losses;
    let kept_losses = |range: core::ops::Range<usize>| range.filter(move |&p| labels.data[p] != ce.ignore_index).map(move |p| losses[p]);
    match ce.reduction {
        Reduction::Mean => {
            let mut total = 0.0f32;
            for l in kept_losses(0..positions) {
                total += l;
            }
            loss.data[0] = total / reference::divisor::<f32>(kept);
        }
        Reduction::PerSample => {
            let per = reference::positions_per_sample(&labels);
            for (n, out) in loss.data.iter_mut().enumerate() {
                let (mut total, mut count) = (0.0f32, 0);
                for l in kept_losses(n * per..(n + 1) * per) {
                    total += l;
                    count += 1;
                }
                *out = total / reference::divisor::<f32>(count);
            }
        }
    }
    Ok(true)
}

/// `CrossEntropyGrad` (see [`reference::cross_entropy_grad`]), one row per task.
pub(super) fn cross_entropy_grad(
    ce: CrossEntropy,
    dloss: View<'_, f32>,
    logits: View<'_, f32>,
    labels: View<'_, i64>,
    dlogits: &mut ViewMut<'_, f32>,
    threads: usize,
) -> Result<bool, KernelError> {
    let Some(&classes) = logits.shape.last() else { return Ok(false) };
    let positions = labels.data.len();
    if classes == 0 || positions == 0 || logits.data.len() != positions * classes || dlogits.data.len() != logits.data.len() {
        return Ok(false);
    }
    let kept = reference::check_labels_ignoring("CrossEntropyGrad", labels.data, classes, ce.ignore_index)?;
    let per = reference::positions_per_sample(&labels);
    for_each_chunk(threads, dlogits.data, classes, 4 * classes, |p, out| {
        let label = labels.data[p];
        if label == ce.ignore_index {
            out.fill(0.0);
            return;
        }
        let weight = match ce.reduction {
            Reduction::Mean => dloss.data[0] / reference::divisor::<f32>(kept),
            Reduction::PerSample => {
                let n = p / per;
                let count = labels.data[n * per..(n + 1) * per].iter().filter(|&&l| l != ce.ignore_index).count();
                dloss.data[n] / reference::divisor::<f32>(count)
            }
        };
        reference::softmax_row_grad(&logits.data[p * classes..(p + 1) * classes], out, weight, label as usize);
    });
    Ok(true)
}

/// The group size of a reduction over trailing axes (`axes` = the last `k` axes of `shape`),
/// else `None`.
fn trailing(reduce: &Reduce, shape: &[usize]) -> Option<usize> {
    let first = shape.len().checked_sub(reduce.axes.len())?;
    (reduce.axes.iter().copied().eq(first..shape.len()) && !reduce.axes.is_empty()).then(|| shape[first..].iter().product())
}

/// `ReduceSum`/`ReduceMean` over trailing axes: `y[r]` folds `x[r * n..(r + 1) * n]` in order.
pub(super) fn reduce(reduce: &Reduce, mean: bool, x: View<'_, f32>, y: &mut ViewMut<'_, f32>, threads: usize) -> bool {
    let Some(n) = trailing(reduce, x.shape) else { return false };
    if n == 0 || x.data.len() != y.data.len() * n {
        return false;
    }
    let divisor = n as f32;
    for_each_chunk(threads, y.data, 1, n, |r, out| {
        let sum: f32 = x.data[r * n..(r + 1) * n].iter().copied().sum();
        out[0] = if mean { sum / divisor } else { sum };
    });
    true
}

/// `ReduceSumGrad`/`ReduceMeanGrad` over trailing axes: `dx[r * n..(r + 1) * n] = dy[r] * scale`.
pub(super) fn reduce_grad(reduce: &Reduce, mean: bool, dy: View<'_, f32>, dx: &mut ViewMut<'_, f32>, threads: usize) -> bool {
    let Some(n) = trailing(reduce, dx.shape) else { return false };
    if n == 0 || dx.data.len() != dy.data.len() * n {
        return false;
    }
    let scale = if mean { 1.0 / n as f32 } else { 1.0 };
    for_each_chunk(threads, dx.data, n, n, |r, out| out.fill(dy.data[r] * scale));
    true
}
