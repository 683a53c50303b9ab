//! Gradient accumulation, global-norm scaling and optimizer updates.
//!
//! The updates follow the single-tensor code paths of `torch.optim.SGD`, `torch.optim.Adam` and
//! `torch.optim.AdamW` operation by operation, so that a plan trains the way PyTorch does.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::{Adam, GradScale, Sgd};

/// Added to the global norm before dividing by it, as `torch.nn.utils.clip_grad_norm_` does.
const CLIP_NORM_EPS: f32 = 1e-6;

/// `acc += g`.
pub fn accumulate_grad<T: Float>(g: View<T>, acc: &mut ViewMut<T>) {
    for (a, &gv) in acc.data.iter_mut().zip(g.data) {
        *a += gv;
    }
}

/// Every element of `t` becomes `value`.
pub fn fill<T: Float>(value: f32, t: &mut ViewMut<T>) {
    t.data.fill(T::from_f32(value));
}

/// `scale = multiplier * min(1, max_norm / (norm + 1e-6))`, `norm` being the global L2 norm of
/// `multiplier * g` over every gradient; just `multiplier` without `max_norm`. The scale is NaN
/// when the norm (without `max_norm`: any gradient element) is not finite, so that every update
/// reading it skips and the step is skipped as a whole.
pub fn grad_scale<T: Float>(g: &GradScale, grads: &[View<T>], scale: &mut ViewMut<T>) {
    let multiplier = T::from_f32(g.multiplier);
    let clip = match g.max_norm {
        // Accumulation alone needs no norm, only the finiteness every update checks anyway.
        None if all_finite(grads.iter().flat_map(|v| v.data)) => T::one(),
        None => T::nan(),
        Some(max_norm) => {
            let sum_sq: T = grads.iter().flat_map(|v| v.data.iter()).map(|&x| (multiplier * x) * (multiplier * x)).sum();
            if !sum_sq.is_finite() {
                // An infinite norm would otherwise give a scale of 0, and a zero-gradient update
                // still moves Adam's moments and applies weight decay; NaN skips the step.
                T::nan()
            } else {
                let coef = T::from_f32(max_norm) / (sum_sq.sqrt() + T::from_f32(CLIP_NORM_EPS));
                if coef > T::one() {
                    T::one()
                } else {
                    coef
                }
            }
        }
    };
    scale.data[0] = multiplier * clip;
}

fn all_finite<'a, T: Float>(mut values: impl Iterator<Item = &'a T>) -> bool {
    values.all(|x| x.is_finite())
}

/// `count += 1` when any element of `x` is not finite: the update reading `x` was skipped.
pub fn count_non_finite<T: Float>(x: View<T>, count: &mut ViewMut<T>) {
    if !all_finite(x.data.iter()) {
        count.data[0] += T::one();
    }
}

/// The scalar runtime inputs every optimizer update shares: `[grad, lr, step, (scale)]`.
struct StepInputs<'a, T> {
    grad: &'a [T],
    lr: T,
    step: T,
    scale: T,
}

impl<'a, T: Float> StepInputs<'a, T> {
    fn read(inputs: &[View<'a, T>], scaled: bool) -> Self {
        StepInputs {
            grad: inputs[0].data,
            lr: inputs[1].data[0],
            step: inputs[2].data[0],
            scale: if scaled { inputs[3].data[0] } else { T::one() },
        }
    }

    /// Whether the update must be skipped: the scale or a gradient element is not finite. The
    /// check only reads; it does not touch the arithmetic of the updates that do run.
    fn must_skip(&self) -> bool {
        !self.scale.is_finite() || !all_finite(self.grad.iter())
    }
}

/// `inputs = [grad, lr, step, (scale)]`, `outputs = [param, (momentum_buffer)]`. Writes nothing
/// when the scale or a gradient element is not finite (`CountNonFinite` counts the skip).
///
/// Per element: `g = grad * scale + weight_decay * param`; with momentum,
/// `buf = g` on the first step and `momentum * buf + (1 - dampening) * g` afterwards, and
/// `g = g + momentum * buf` (Nesterov) or `g = buf`; finally `param -= lr * g`.
pub fn sgd_update<T: Float>(s: &Sgd, inputs: &[View<T>], outputs: &mut [ViewMut<T>]) {
    let [param, rest @ ..] = outputs else { unreachable!("arity checked at load") };
    // The buffer output exists exactly when momentum is non-zero (see `Op::inplace_outputs`).
    sgd_step(s, inputs, param.data, rest.first_mut().map(|b| &mut *b.data));
}

/// [`sgd_update`] of the rows `start ..` of `param` that the gradient covers (axis 0); the
/// momentum buffer has the gradient's shape. Every other row of `param` is left as it was.
pub fn sgd_update_rows<T: Float>(s: &Sgd, start: usize, inputs: &[View<T>], outputs: &mut [ViewMut<T>]) {
    let [param, rest @ ..] = outputs else { unreachable!("arity checked at load") };
    let rows = row_range(start, inputs[0]);
    sgd_step(s, inputs, &mut param.data[rows], rest.first_mut().map(|b| &mut *b.data));
}

/// The element range of rows `start .. start + grad rows` in a parameter whose rows have as many
/// elements as the gradient's (the shape rule checks that it lies inside the parameter).
fn row_range<T>(start: usize, grad: View<T>) -> core::ops::Range<usize> {
    let row = grad.shape[1..].iter().product::<usize>();
    start * row..start * row + grad.data.len()
}

fn sgd_step<T: Float>(s: &Sgd, inputs: &[View<T>], param: &mut [T], mut buffer: Option<&mut [T]>) {
    let x = StepInputs::read(inputs, s.scaled);
    if x.must_skip() {
        return;
    }
    let (weight_decay, momentum, dampening) = (T::from_f32(s.weight_decay), T::from_f32(s.momentum), T::from_f32(s.dampening));
    // PyTorch creates the buffer from the first gradient; the plan counts steps from 1.
    let first_step = x.step <= T::one();
    for (i, p) in param.iter_mut().enumerate() {
        let mut g = x.grad[i] * x.scale;
        if s.weight_decay != 0.0 {
            g += weight_decay * *p;
        }
        if let Some(buf) = buffer.as_mut() {
            let b = if first_step { g } else { momentum * buf[i] + (T::one() - dampening) * g };
            buf[i] = b;
            g = if s.nesterov { g + momentum * b } else { b };
        }
        *p -= x.lr * g;
    }
}

/// `inputs = [grad, lr, step, (scale)]`, `outputs = [param, exp_avg, exp_avg_sq]`. Writes nothing
/// when the scale or a gradient element is not finite (`CountNonFinite` counts the skip).
///
/// Per element: `g = grad * scale` (plus `weight_decay * param` for Adam; AdamW instead multiplies
/// `param` by `1 - lr * weight_decay`), `m = b1 * m + (1 - b1) * g`, `v = b2 * v + (1 - b2) * g^2`,
/// `param -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)`.
pub fn adam_update<T: Float>(a: &Adam, inputs: &[View<T>], outputs: &mut [ViewMut<T>]) {
    let [param, exp_avg, exp_avg_sq] = outputs else { unreachable!("arity checked at load") };
    adam_step(a, inputs, param.data, exp_avg.data, exp_avg_sq.data);
}

/// [`adam_update`] of the rows `start ..` of `param` that the gradient covers (axis 0); the
/// moments have the gradient's shape. Every other row of `param` is left as it was.
pub fn adam_update_rows<T: Float>(a: &Adam, start: usize, inputs: &[View<T>], outputs: &mut [ViewMut<T>]) {
    let [param, exp_avg, exp_avg_sq] = outputs else { unreachable!("arity checked at load") };
    let rows = row_range(start, inputs[0]);
    adam_step(a, inputs, &mut param.data[rows], exp_avg.data, exp_avg_sq.data);
}

fn adam_step<T: Float>(a: &Adam, inputs: &[View<T>], param: &mut [T], exp_avg: &mut [T], exp_avg_sq: &mut [T]) {
    let x = StepInputs::read(inputs, a.scaled);
    if x.must_skip() {
        return;
    }
    let (beta1, beta2, eps, weight_decay) = (T::from_f32(a.beta1), T::from_f32(a.beta2), T::from_f32(a.eps), T::from_f32(a.weight_decay));
    let step_size = x.lr / (T::one() - beta1.powf(x.step));
    let bias_correction2_sqrt = (T::one() - beta2.powf(x.step)).sqrt();
    let decay_factor = T::one() - x.lr * weight_decay;
    for (i, p) in param.iter_mut().enumerate() {
        let mut g = x.grad[i] * x.scale;
        if a.weight_decay != 0.0 {
            if a.decoupled {
                *p *= decay_factor;
            } else {
                g += weight_decay * *p;
            }
        }
        let m = beta1 * exp_avg[i] + (T::one() - beta1) * g;
        let v = beta2 * exp_avg_sq[i] + (T::one() - beta2) * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        *p -= step_size * m / (v.sqrt() / bias_correction2_sqrt + eps);
    }
}
