//! Softmax cross-entropy with integer labels, mean squared error, and their gradients.

use crate::kernels::{Float, KernelError, View, ViewMut};
use crate::ops::{CrossEntropy, Reduction};

/// Checks every label before anything is written, so that a bad batch leaves the outputs as they
/// were and reports the first offending row.
fn check_labels(op: &'static str, labels: &[i64], classes: usize) -> Result<(), KernelError> {
    for (row, &label) in labels.iter().enumerate() {
        if label < 0 || label as u64 >= classes as u64 {
            return Err(KernelError::LabelOutOfRange { op, row, label, classes });
        }
    }
    Ok(())
}

/// The largest logit of a row; subtracting it before `exp` keeps every exponent <= 0, so large
/// logits cannot overflow.
fn row_max<T: Float>(row: &[T]) -> T {
    row.iter().copied().fold(T::neg_infinity(), |m, v| if v > m { v } else { m })
}

/// `log(sum(exp(row)))`, computed stably as `max + log(sum(exp(row - max)))`.
pub(crate) fn log_sum_exp<T: Float>(row: &[T]) -> T {
    let max = row_max(row);
    let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

/// `loss[n] = log_sum_exp(logits[n]) - logits[n, label[n]]`, i.e. `-log softmax(logits[n])[label]`,
/// averaged over the batch for [`Reduction::Mean`] (`torch.nn.functional.cross_entropy`).
pub fn softmax_cross_entropy<T: Float>(r: Reduction, logits: View<T>, labels: View<i64>, loss: &mut ViewMut<T>) -> Result<(), KernelError> {
    let (batch, classes) = (logits.shape[0], logits.shape[1]);
    check_labels("SoftmaxCrossEntropy", labels.data, classes)?;
    let mut total = T::zero();
    for n in 0..batch {
        let row = &logits.data[n * classes..(n + 1) * classes];
        let sample_loss = log_sum_exp(row) - row[labels.data[n] as usize];
        match r {
            Reduction::Mean => total += sample_loss,
            Reduction::PerSample => loss.data[n] = sample_loss,
        }
    }
    if r == Reduction::Mean {
        loss.data[0] = total / T::from_usize(batch);
    }
    Ok(())
}

/// `dlogits[n] = (softmax(logits[n]) - onehot(label[n])) * w[n]`, with `w[n] = dloss / N` for
/// [`Reduction::Mean`] and `w[n] = dloss[n]` for [`Reduction::PerSample`].
pub fn softmax_cross_entropy_grad<T: Float>(
    r: Reduction,
    dloss: View<T>,
    logits: View<T>,
    labels: View<i64>,
    dlogits: &mut ViewMut<T>,
) -> Result<(), KernelError> {
    let (batch, classes) = (logits.shape[0], logits.shape[1]);
    check_labels("SoftmaxCrossEntropyGrad", labels.data, classes)?;
    for n in 0..batch {
        let weight = match r {
            Reduction::Mean => dloss.data[0] / T::from_usize(batch),
            Reduction::PerSample => dloss.data[n],
        };
        let row = &logits.data[n * classes..(n + 1) * classes];
        softmax_row_grad(row, &mut dlogits.data[n * classes..(n + 1) * classes], weight, labels.data[n] as usize);
    }
    Ok(())
}

/// `out = (softmax(row) - onehot(label)) * weight`, one position's logit gradient. The output row
/// holds the shifted exponentials first, so that softmax needs no scratch.
pub(crate) fn softmax_row_grad<T: Float>(row: &[T], out: &mut [T], weight: T, label: usize) {
    let max = row_max(row);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - max).exp();
    }
    let sum: T = out.iter().copied().sum();
    for o in out.iter_mut() {
        *o = *o / sum * weight;
    }
    out[label] -= weight;
}

/// Checks every label (in `[0, classes)` or `ignore_index`) before anything is written, as
/// [`check_labels`] does; returns how many positions are not ignored.
pub(crate) fn check_labels_ignoring(op: &'static str, labels: &[i64], classes: usize, ignore_index: i64) -> Result<usize, KernelError> {
    let mut kept = 0;
    for (row, &label) in labels.iter().enumerate() {
        if label == ignore_index {
            continue;
        }
        if label < 0 || label as u64 >= classes as u64 {
            return Err(KernelError::LabelOutOfRange { op, row, label, classes });
        }
        kept += 1;
    }
    Ok(kept)
}

/// The mean's divisor: the number of positions that are not ignored, or 1 where there are none
/// (their sum is then 0, so the mean is 0; see [`CrossEntropy`]).
pub(crate) fn divisor<T: Float>(kept: usize) -> T {
    T::from_usize(kept.max(1))
}

/// Positions (label entries) per sample: the label count over the batch axis, or 1 for labels
/// of rank 0.
pub(crate) fn positions_per_sample(labels: &View<i64>) -> usize {
    match labels.shape.first() {
        Some(&0) | None => labels.data.len(),
        Some(&batch) => labels.data.len() / batch,
    }
}

/// Cross-entropy over the last axis with ignored positions: `loss[p] = log_sum_exp(logits[p]) -
/// logits[p, label[p]]` for each position `p` whose label is not `ignore_index`, averaged over
/// those positions (all of them, or each sample's; see [`CrossEntropy`]).
pub fn cross_entropy<T: Float>(ce: CrossEntropy, logits: View<T>, labels: View<i64>, loss: &mut ViewMut<T>) -> Result<(), KernelError> {
    let classes = logits.shape[logits.shape.len() - 1];
    let kept = check_labels_ignoring("CrossEntropy", labels.data, classes, ce.ignore_index)?;
    let position_loss = |p: usize| {
        let row = &logits.data[p * classes..(p + 1) * classes];
        log_sum_exp(row) - row[labels.data[p] as usize]
    };
    match ce.reduction {
        Reduction::Mean => {
            let mut total = T::zero();
            for (p, &label) in labels.data.iter().enumerate() {
                if label != ce.ignore_index {
                    total += position_loss(p);
                }
            }
            loss.data[0] = total / divisor::<T>(kept);
        }
        Reduction::PerSample => {
            let per = positions_per_sample(&labels);
            for (n, out) in loss.data.iter_mut().enumerate() {
                let (mut total, mut count) = (T::zero(), 0);
                for p in n * per..(n + 1) * per {
                    if labels.data[p] != ce.ignore_index {
                        total += position_loss(p);
                        count += 1;
                    }
                }
                *out = total / divisor::<T>(count);
            }
        }
    }
    Ok(())
}

/// `dlogits[p] = (softmax(logits[p]) - onehot(label[p])) * w` for each position that is not
/// ignored, with `w = dloss / kept` for [`Reduction::Mean`] and `w = dloss[n] / kept[n]` for
/// [`Reduction::PerSample`]; ignored positions get 0.
pub fn cross_entropy_grad<T: Float>(
    ce: CrossEntropy,
    dloss: View<T>,
    logits: View<T>,
    labels: View<i64>,
    dlogits: &mut ViewMut<T>,
) -> Result<(), KernelError> {
    let classes = logits.shape[logits.shape.len() - 1];
    let kept = check_labels_ignoring("CrossEntropyGrad", labels.data, classes, ce.ignore_index)?;
    let per = positions_per_sample(&labels);
    let mut sample_weight = (usize::MAX, T::zero());
    for (p, &label) in labels.data.iter().enumerate() {
        let row = &logits.data[p * classes..(p + 1) * classes];
        let out = &mut dlogits.data[p * classes..(p + 1) * classes];
        if label == ce.ignore_index {
            out.iter_mut().for_each(|o| *o = T::zero());
            continue;
        }
        let weight = match ce.reduction {
            Reduction::Mean => dloss.data[0] / divisor::<T>(kept),
            Reduction::PerSample => {
                // Each sample's count of labelled positions, computed once per sample.
                let n = p / per;
                if sample_weight.0 != n {
                    let count = labels.data[n * per..(n + 1) * per].iter().filter(|&&l| l != ce.ignore_index).count();
                    sample_weight = (n, dloss.data[n] / divisor::<T>(count));
                }
                sample_weight.1
            }
        };
        softmax_row_grad(row, out, weight, label as usize);
    }
    Ok(())
}

/// Elements per sample: everything but the batch axis 0.
fn features(shape: &[usize]) -> usize {
    shape[1..].iter().product()
}

/// Squared error of one sample, summed over its features.
fn squared_error<T: Float>(pred: &[T], target: &[T]) -> T {
    pred.iter().zip(target).map(|(&p, &t)| (p - t) * (p - t)).sum()
}

/// [`Reduction::Mean`]: the mean of `(pred - target)^2` over every element, batch included
/// (`torch.nn.functional.mse_loss`'s default). [`Reduction::PerSample`]: `loss[n]` is the mean
/// over the features of sample `n`.
pub fn mse<T: Float>(r: Reduction, pred: View<T>, target: View<T>, loss: &mut ViewMut<T>) {
    let (batch, per_sample) = (pred.shape[0], features(pred.shape));
    match r {
        Reduction::Mean => {
            let total = squared_error(pred.data, target.data);
            loss.data[0] = total / T::from_usize(pred.data.len());
        }
        Reduction::PerSample => {
            for n in 0..batch {
                let span = n * per_sample..(n + 1) * per_sample;
                loss.data[n] = squared_error(&pred.data[span.clone()], &target.data[span]) / T::from_usize(per_sample);
            }
        }
    }
}

/// `dpred = 2 * (pred - target) * w`, with `w = dloss / (N * F)` for [`Reduction::Mean`] and
/// `w[n] = dloss[n] / F` for [`Reduction::PerSample`], `F` being the features per sample.
pub fn mse_grad<T: Float>(r: Reduction, dloss: View<T>, pred: View<T>, target: View<T>, dpred: &mut ViewMut<T>) {
    let (batch, per_sample) = (pred.shape[0], features(pred.shape));
    let two = T::from_f32(2.0);
    for n in 0..batch {
        let weight = match r {
            Reduction::Mean => two * dloss.data[0] / T::from_usize(pred.data.len()),
            Reduction::PerSample => two * dloss.data[n] / T::from_usize(per_sample),
        };
        let span = n * per_sample..(n + 1) * per_sample;
        for ((d, &p), &t) in dpred.data[span.clone()].iter_mut().zip(&pred.data[span.clone()]).zip(&target.data[span]) {
            *d = (p - t) * weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_ce(r: Reduction, logits: &[f64], shape: &[usize], labels: &[i64], loss: &mut [f64]) -> Result<(), KernelError> {
        let loss_shape: &[usize] = if r == Reduction::Mean { &[] } else { &shape[..1] };
        softmax_cross_entropy(
            r,
            View { data: logits, shape },
            View { data: labels, shape: &shape[..1] },
            &mut ViewMut { data: loss, shape: loss_shape },
        )
    }

    #[test]
    fn labels_outside_the_classes_are_an_error_and_write_nothing() {
        let logits = [0.0; 6];
        for bad in [3, -1, i64::MAX, i64::MIN] {
            let mut loss = [7.0, 7.0];
            let err = run_ce(Reduction::PerSample, &logits, &[2, 3], &[0, bad], &mut loss).unwrap_err();
            assert_eq!(err, KernelError::LabelOutOfRange { op: "SoftmaxCrossEntropy", row: 1, label: bad, classes: 3 });
            assert_eq!(loss, [7.0, 7.0], "nothing is written on error");
        }
        let mut dlogits = [7.0; 6];
        let err = softmax_cross_entropy_grad(
            Reduction::Mean,
            View { data: &[1.0], shape: &[] },
            View { data: &logits, shape: &[2, 3] },
            View { data: &[5, 0], shape: &[2] },
            &mut ViewMut { data: &mut dlogits, shape: &[2, 3] },
        )
        .unwrap_err();
        assert_eq!(err, KernelError::LabelOutOfRange { op: "SoftmaxCrossEntropyGrad", row: 0, label: 5, classes: 3 });
        assert_eq!(dlogits, [7.0; 6]);
    }

    #[test]
    fn large_logits_stay_finite() {
        // Row 0: logits [1000, 0, -1000] with label 0: the loss is log(1 + e^-1000 + e^-2000),
        // which is 0 in floating point. Row 1: logits [1000, 1000, 1000] with label 2: the
        // softmax is uniform, so the loss is log(3).
        let logits = [1000.0, 0.0, -1000.0, 1000.0, 1000.0, 1000.0];
        let mut loss = [0.0; 2];
        run_ce(Reduction::PerSample, &logits, &[2, 3], &[0, 2], &mut loss).unwrap();
        assert_eq!(loss[0], 0.0);
        assert!((loss[1] - 3f64.ln()).abs() < 1e-12, "{loss:?}");

        let logits32 = [1000.0f32, 0.0, -1000.0, 1000.0, 1000.0, 1000.0];
        let mut loss32 = [0.0f32];
        softmax_cross_entropy(
            Reduction::Mean,
            View { data: &logits32, shape: &[2, 3] },
            View { data: &[1, 2], shape: &[2] },
            &mut ViewMut { data: &mut loss32, shape: &[] },
        )
        .unwrap();
        // Row 0 with label 1 costs 1000 (its logit is 1000 below the maximum); the mean is
        // (1000 + ln 3) / 2.
        assert!(loss32[0].is_finite());
        assert!((loss32[0] - (1000.0 + 3f32.ln()) / 2.0).abs() < 1e-3, "{loss32:?}");

        let mut dlogits = [0.0f32; 6];
        softmax_cross_entropy_grad(
            Reduction::Mean,
            View { data: &[1.0], shape: &[] },
            View { data: &logits32, shape: &[2, 3] },
            View { data: &[1, 2], shape: &[2] },
            &mut ViewMut { data: &mut dlogits, shape: &[2, 3] },
        )
        .unwrap();
        // Row 0: softmax is [1, 0, 0], minus onehot(1), over N = 2. Row 1: ([1/3; 3] - onehot(2)) / 2.
        let expected = [0.5, -0.5, 0.0, 1.0 / 6.0, 1.0 / 6.0, -1.0 / 3.0];
        for (got, want) in dlogits.iter().zip(expected) {
            assert!(got.is_finite() && (got - want).abs() < 1e-6, "{dlogits:?}");
        }
    }

    #[test]
    fn cross_entropy_of_a_small_batch() {
        // Logits [0, ln 3] with label 1: softmax = [1/4, 3/4], loss = -ln(3/4) = ln(4/3).
        // Logits [ln 2, 0] with label 1: softmax = [2/3, 1/3], loss = ln 3.
        let logits = [0.0, 3f64.ln(), 2f64.ln(), 0.0];
        let mut loss = [0.0];
        run_ce(Reduction::Mean, &logits, &[2, 2], &[1, 1], &mut loss).unwrap();
        assert!((loss[0] - ((4.0f64 / 3.0).ln() + 3f64.ln()) / 2.0).abs() < 1e-14);
    }

    /// `-log softmax(row)[label]` in f64, from the definition (no shift by the maximum).
    fn nll(row: &[f64], label: usize) -> f64 {
        let sum: f64 = row.iter().map(|v| v.exp()).sum();
        -(row[label].exp() / sum).ln()
    }

    #[test]
    fn cross_entropy_over_the_last_axis_skips_ignored_positions() {
        // Logits [2, 3, 2]: batch 2, 3 positions, 2 classes; positions (0, 1) and (1, 0) ignored.
        let logits = [0.5, -1.0, 2.0, 0.0, -0.25, 0.75, 1.5, 1.0, 0.0, 0.0, -2.0, 3.0];
        let labels = [1, -100, 0, -100, 0, 1];
        let shape = [2, 3, 2];
        let kept = [(0, 1), (2, 0), (4, 0), (5, 1)];
        let losses: Vec<f64> = kept.iter().map(|&(p, l)| nll(&logits[2 * p..2 * p + 2], l)).collect();
        let ce = |reduction| CrossEntropy { reduction, ignore_index: -100 };
        let mut mean = [0.0];
        cross_entropy(
            ce(Reduction::Mean),
            View { data: &logits, shape: &shape },
            View { data: &labels, shape: &shape[..2] },
            &mut ViewMut { data: &mut mean, shape: &[] },
        )
        .unwrap();
        assert!((mean[0] - losses.iter().sum::<f64>() / 4.0).abs() < 1e-14, "{mean:?} {losses:?}");
        let mut per = [0.0; 2];
        cross_entropy(
            ce(Reduction::PerSample),
            View { data: &logits, shape: &shape },
            View { data: &labels, shape: &shape[..2] },
            &mut ViewMut { data: &mut per, shape: &[2] },
        )
        .unwrap();
        assert!((per[0] - (losses[0] + losses[1]) / 2.0).abs() < 1e-14, "{per:?}");
        assert!((per[1] - (losses[2] + losses[3]) / 2.0).abs() < 1e-14, "{per:?}");

        // The gradient of the mean: ignored rows are zero, the others (softmax - onehot) / 4.
        let mut d = [9.0; 12];
        cross_entropy_grad(
            ce(Reduction::Mean),
            View { data: &[2.0], shape: &[] },
            View { data: &logits, shape: &shape },
            View { data: &labels, shape: &shape[..2] },
            &mut ViewMut { data: &mut d, shape: &shape },
        )
        .unwrap();
        assert_eq!(&d[2..4], &[0.0, 0.0]);
        assert_eq!(&d[6..8], &[0.0, 0.0]);
        for &(p, l) in &kept {
            let row = &logits[2 * p..2 * p + 2];
            let sum: f64 = row.iter().map(|v| v.exp()).sum();
            for c in 0..2 {
                let want = 2.0 * (row[c].exp() / sum - if c == l { 1.0 } else { 0.0 }) / 4.0;
                assert!((d[2 * p + c] - want).abs() < 1e-14, "{d:?}");
            }
        }
    }

    #[test]
    fn cross_entropy_with_every_position_ignored_is_zero_with_zero_gradient() {
        let logits = [1.0, 2.0, 3.0, 4.0];
        let ce = CrossEntropy { reduction: Reduction::Mean, ignore_index: 7 };
        let mut loss = [5.0];
        cross_entropy(
            ce,
            View { data: &logits, shape: &[2, 2] },
            View { data: &[7, 7], shape: &[2] },
            &mut ViewMut { data: &mut loss, shape: &[] },
        )
        .unwrap();
        assert_eq!(loss, [0.0]);
        let mut d = [5.0; 4];
        cross_entropy_grad(
            ce,
            View { data: &[1.0], shape: &[] },
            View { data: &logits, shape: &[2, 2] },
            View { data: &[7, 7], shape: &[2] },
            &mut ViewMut { data: &mut d, shape: &[2, 2] },
        )
        .unwrap();
        assert_eq!(d, [0.0; 4]);
        // A label that is neither a class nor the ignored index is still an error.
        let err = cross_entropy(
            ce,
            View { data: &logits, shape: &[2, 2] },
            View { data: &[7, -100], shape: &[2] },
            &mut ViewMut { data: &mut loss, shape: &[] },
        )
        .unwrap_err();
        assert_eq!(err, KernelError::LabelOutOfRange { op: "CrossEntropy", row: 1, label: -100, classes: 2 });
    }

    #[test]
    fn mse_means_over_every_element_or_per_sample() {
        // pred - target = [[1, 3], [0, 2]]: squares [[1, 9], [0, 4]].
        let pred = [1.0, 3.0, 0.0, 2.0];
        let target = [0.0; 4];
        let (p, t) = (View { data: &pred[..], shape: &[2, 2] }, View { data: &target[..], shape: &[2, 2] });
        let mut mean = [0.0];
        mse(Reduction::Mean, p, t, &mut ViewMut { data: &mut mean, shape: &[] });
        assert_eq!(mean, [14.0 / 4.0]);
        let mut per = [0.0; 2];
        mse(Reduction::PerSample, p, t, &mut ViewMut { data: &mut per, shape: &[2] });
        assert_eq!(per, [5.0, 2.0]);
        let mut d = [0.0; 4];
        mse_grad(Reduction::Mean, View { data: &[1.0], shape: &[] }, p, t, &mut ViewMut { data: &mut d, shape: &[2, 2] });
        assert_eq!(d, [0.5, 1.5, 0.0, 1.0]);
        mse_grad(Reduction::PerSample, View { data: &[1.0, 2.0], shape: &[2] }, p, t, &mut ViewMut { data: &mut d, shape: &[2, 2] });
        assert_eq!(d, [1.0, 3.0, 0.0, 4.0]);
    }
}
