//! The optimizer updates (`SgdUpdate`, `AdamUpdate`/AdamW and their `Rows` variants) and
//! `CountNonFinite` in f32: the reference's per-element formulas (`kernels/reference/optim.rs`)
//! in the same operation order, without FMA contraction, so the results are the reference's bit
//! for bit; vectorised for the instruction set chosen at run time and split into blocks among
//! the pool's threads.
//!
//! The skip rule is the reference's: when the scale or any gradient element is not finite,
//! nothing is written. The finiteness scan tests the exponent bits with integer operations the
//! compiler vectorises, block by block on the threads; only then does the update run.

use core::sync::atomic::{AtomicBool, Ordering};

use super::par::{for_each_chunk, for_each_chunk2, for_each_chunk3, for_each_index, multiversion};
use crate::kernels::{KernelError, NodeArgs, View};
use crate::ops::{Adam, OptimOp, Sgd};

/// Elements per update block (one block is one chunk of a parallel loop).
const BLOCK: usize = 1 << 14;
/// Elements per block of the finiteness scan: scanning is cheaper per element than updating,
/// so a task takes more of them.
const SCAN_BLOCK: usize = 1 << 16;

/// Runs one of the optimizer ops this module covers (see `cpu::execute`'s match).
pub(super) fn execute(op: &OptimOp, args: NodeArgs<'_, '_, f32>, threads: usize) -> Result<(), KernelError> {
    let NodeArgs { inputs, outputs, .. } = args;
    match op {
        OptimOp::CountNonFinite => {
            let (Some(x), Some(count)) = (inputs.first(), outputs.first_mut()) else { return Err(invalid(op, "wrong arity")) };
            let Some(c) = count.data.first_mut() else { return Err(invalid(op, "the count is empty")) };
            if !all_finite(x.data, threads) {
                *c += 1.0;
            }
            Ok(())
        }
        OptimOp::SgdUpdate(s) => {
            let (param, buffer) = sgd_outputs(op, outputs)?;
            sgd(op, s, inputs, param, buffer, threads)
        }
        OptimOp::SgdUpdateRows { sgd: s, rows } => {
            let (param, buffer) = sgd_outputs(op, outputs)?;
            let range = row_range(op, rows.start, inputs, param.len())?;
            sgd(op, s, inputs, &mut param[range], buffer, threads)
        }
        OptimOp::AdamUpdate(a) => {
            let [param, m, v] = &mut outputs[..] else { return Err(invalid(op, "wrong number of outputs")) };
            adam(op, a, inputs, param.data, m.data, v.data, threads)
        }
        OptimOp::AdamUpdateRows { adam: a, rows } => {
            let [param, m, v] = &mut outputs[..] else { return Err(invalid(op, "wrong number of outputs")) };
            let range = row_range(op, rows.start, inputs, param.data.len())?;
            adam(op, a, inputs, &mut param.data[range], m.data, v.data, threads)
        }
        // `cpu::execute` sends only the ops above here.
        _ => Err(invalid(op, "no fast kernel for this optimizer op")),
    }
}

fn invalid(op: &OptimOp, message: &'static str) -> KernelError {
    use crate::ops::OpRules;
    KernelError::Invalid { op: op.name(), message }
}

/// `(param, momentum buffer)`: the buffer output exists exactly when momentum is non-zero.
fn sgd_outputs<'o>(
    op: &OptimOp,
    outputs: &'o mut [crate::kernels::ViewMut<'_, f32>],
) -> Result<(&'o mut [f32], Option<&'o mut [f32]>), KernelError> {
    match outputs {
        [param] => Ok((&mut *param.data, None)),
        [param, buffer] => Ok((&mut *param.data, Some(&mut *buffer.data))),
        _ => Err(invalid(op, "wrong number of outputs")),
    }
}

/// The reference's `row_range`: rows `start ..` of a parameter of `param_len` elements whose rows
/// have as many elements as the gradient's, checked to lie inside it.
fn row_range(op: &OptimOp, start: usize, inputs: &[View<f32>], param_len: usize) -> Result<core::ops::Range<usize>, KernelError> {
    let grad = inputs.first().ok_or_else(|| invalid(op, "wrong arity"))?;
    let row = grad.shape.get(1..).unwrap_or(&[]).iter().product::<usize>();
    let begin = start.checked_mul(row).ok_or_else(|| invalid(op, "row range overflows"))?;
    let end = begin.checked_add(grad.data.len()).filter(|&e| e <= param_len);
    end.map(|end| begin..end).ok_or_else(|| invalid(op, "the gradient's rows lie outside the parameter"))
}

/// `[grad, lr, step, (scale)]` as the reference reads them (`StepInputs`).
struct Step<'a> {
    grad: &'a [f32],
    lr: f32,
    step: f32,
    scale: f32,
}

fn step_inputs<'a>(op: &OptimOp, inputs: &[View<'a, f32>], scaled: bool) -> Result<Step<'a>, KernelError> {
    let scalar = |i: usize| inputs.get(i).and_then(|v| v.data.first().copied()).ok_or_else(|| invalid(op, "missing scalar input"));
    Ok(Step {
        grad: inputs.first().ok_or_else(|| invalid(op, "wrong arity"))?.data,
        lr: scalar(1)?,
        step: scalar(2)?,
        scale: if scaled { scalar(3)? } else { 1.0 },
    })
}

impl Step<'_> {
    /// The reference's `must_skip`: the scale or a gradient element is not finite.
    fn must_skip(&self, threads: usize) -> bool {
        !self.scale.is_finite() || !all_finite(self.grad, threads)
    }
}

/// Whether every element of `x` is finite, scanned in `SCAN_BLOCK`s on up to `threads` threads.
pub(super) fn all_finite(x: &[f32], threads: usize) -> bool {
    let blocks = x.len().div_ceil(SCAN_BLOCK);
    if threads <= 1 || blocks <= 1 {
        return finite_block(x);
    }
    let bad = AtomicBool::new(false);
    for_each_index(threads, blocks, 1, |i| {
        // Once one block has a non-finite element the answer is known.
        if !bad.load(Ordering::Relaxed) && !finite_block(&x[i * SCAN_BLOCK..((i + 1) * SCAN_BLOCK).min(x.len())]) {
            bad.store(true, Ordering::Relaxed);
        }
    });
    !bad.load(Ordering::Relaxed)
}

multiversion!(fn finite_block(x: &[f32]) -> bool => finite_block_body);

/// `f32::is_finite` on every element: the exponent field is all ones exactly for inf and NaN,
/// and `(bits & EXP) + 2^23` then carries into the sign bit. ORing those sums lane by lane
/// vectorises (integer AND, ADD, OR), and the sign bit of the result says whether any element
/// was not finite.
#[inline(always)]
fn finite_block_body<const FMA: bool>(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    const LANES: usize = 16;
    let probe = |v: f32| (v.to_bits() & EXP) + 0x0080_0000;
    let mut acc = [0u32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a |= probe(v);
        }
    }
    let tail = chunks.remainder().iter().fold(0, |a, &v| a | probe(v));
    (acc.iter().fold(tail, |a, &b| a | b) & 0x8000_0000) == 0
}

/// The per-element constants of an SGD update.
struct SgdConsts {
    scale: f32,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    /// `1 - dampening`, as the reference computes it.
    one_minus_dampening: f32,
}

fn sgd(
    op: &OptimOp,
    s: &Sgd,
    inputs: &[View<f32>],
    param: &mut [f32],
    buffer: Option<&mut [f32]>,
    threads: usize,
) -> Result<(), KernelError> {
    let x = step_inputs(op, inputs, s.scaled)?;
    let n = param.len();
    if x.grad.len() != n || buffer.as_ref().is_some_and(|b| b.len() != n) {
        return Err(invalid(op, "the gradient, parameter and buffer lengths differ"));
    }
    if x.must_skip(threads) {
        return Ok(());
    }
    let k =
        SgdConsts { scale: x.scale, lr: x.lr, weight_decay: s.weight_decay, momentum: s.momentum, one_minus_dampening: 1.0 - s.dampening };
    // PyTorch creates the buffer from the first gradient; the plan counts steps from 1.
    let first_step = x.step <= 1.0;
    let flags = SgdFlags { decay: s.weight_decay != 0.0, first_step, nesterov: s.nesterov };
    let grad = x.grad;
    match buffer {
        Some(buffer) => for_each_chunk2(threads, param, BLOCK, buffer, BLOCK, BLOCK, |i, p, b| {
            sgd_block(&k, flags, &grad[i * BLOCK..i * BLOCK + p.len()], p, b)
        }),
        None => {
            for_each_chunk(threads, param, BLOCK, BLOCK, |i, p| sgd_block(&k, flags, &grad[i * BLOCK..i * BLOCK + p.len()], p, &mut []))
        }
    }
    Ok(())
}

/// Which branches of the reference's loop an SGD update takes (the same for every element).
#[derive(Clone, Copy)]
struct SgdFlags {
    decay: bool,
    first_step: bool,
    nesterov: bool,
}

multiversion!(fn sgd_block(k: &SgdConsts, flags: SgdFlags, grad: &[f32], param: &mut [f32], buffer: &mut [f32]) => sgd_block_body);

/// One block of an SGD update; `buffer` is empty without momentum. Each combination of flags
/// gets its own branch-free loop.
#[inline(always)]
fn sgd_block_body<const FMA: bool>(k: &SgdConsts, flags: SgdFlags, grad: &[f32], param: &mut [f32], buffer: &mut [f32]) {
    let momentum = !buffer.is_empty();
    macro_rules! pick {
        ($($decay:literal $mom:literal $first:literal $nest:literal),*) => {
            match (flags.decay, momentum, flags.first_step, flags.nesterov) {
                $(($decay, $mom, $first, $nest) => sgd_elems::<$decay, $mom, $first, $nest>(k, grad, param, buffer),)*
                (decay, false, _, _) => if decay { sgd_elems::<true, false, false, false>(k, grad, param, buffer) } else { sgd_elems::<false, false, false, false>(k, grad, param, buffer) },
            }
        };
    }
    pick!(
        false true false false, false true false true, false true true false, false true true true,
        true true false false, true true false true, true true true false, true true true true
    );
}

/// The reference's `sgd_step` loop for one set of branches: `g = grad * scale (+ wd * p)`; with
/// momentum `b = g` on the first step, else `momentum * b + (1 - dampening) * g`, and `g = g +
/// momentum * b` (Nesterov) or `b`; `p -= lr * g`.
#[inline(always)]
fn sgd_elems<const DECAY: bool, const MOMENTUM: bool, const FIRST: bool, const NESTEROV: bool>(
    k: &SgdConsts,
    grad: &[f32],
    param: &mut [f32],
    buffer: &mut [f32],
) {
    let n = param.len();
    let grad = &grad[..n];
    let element = |gv: f32, p: f32, b: f32| -> (f32, f32) {
        let mut g = gv * k.scale;
        if DECAY {
            g += k.weight_decay * p;
        }
        let mut b_new = b;
        if MOMENTUM {
            b_new = if FIRST { g } else { k.momentum * b + k.one_minus_dampening * g };
            g = if NESTEROV { g + k.momentum * b_new } else { b_new };
        }
        (p - k.lr * g, b_new)
    };
    if MOMENTUM {
        let buffer = &mut buffer[..n];
        for ((p, b), &gv) in param.iter_mut().zip(buffer.iter_mut()).zip(grad) {
            (*p, *b) = element(gv, *p, *b);
        }
    } else {
        for (p, &gv) in param.iter_mut().zip(grad) {
            *p = element(gv, *p, 0.0).0;
        }
    }
}

/// The per-element constants of an Adam update, computed as the reference computes them.
struct AdamConsts {
    scale: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    decay_factor: f32,
}

fn adam(
    op: &OptimOp,
    a: &Adam,
    inputs: &[View<f32>],
    param: &mut [f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let x = step_inputs(op, inputs, a.scaled)?;
    let n = param.len();
    if x.grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n {
        return Err(invalid(op, "the gradient, parameter and moment lengths differ"));
    }
    if x.must_skip(threads) {
        return Ok(());
    }
    // The reference's scalar arithmetic, through the same `num_traits::Float` functions.
    let k = AdamConsts {
        scale: x.scale,
        beta1: a.beta1,
        beta2: a.beta2,
        one_minus_beta1: 1.0 - a.beta1,
        one_minus_beta2: 1.0 - a.beta2,
        eps: a.eps,
        weight_decay: a.weight_decay,
        step_size: x.lr / (1.0 - num_traits::Float::powf(a.beta1, x.step)),
        bias_correction2_sqrt: num_traits::Float::sqrt(1.0 - num_traits::Float::powf(a.beta2, x.step)),
        decay_factor: 1.0 - x.lr * a.weight_decay,
    };
    let (decay, decoupled) = (a.weight_decay != 0.0, a.decoupled);
    let grad = x.grad;
    for_each_chunk3(threads, param, exp_avg, exp_avg_sq, BLOCK, BLOCK, |i, p, m, v| {
        adam_block(&k, decay, decoupled, &grad[i * BLOCK..i * BLOCK + p.len()], p, m, v)
    });
    Ok(())
}

multiversion!(fn adam_block(k: &AdamConsts, decay: bool, decoupled: bool, grad: &[f32], param: &mut [f32], exp_avg: &mut [f32], exp_avg_sq: &mut [f32]) => adam_block_body);

#[inline(always)]
fn adam_block_body<const FMA: bool>(
    k: &AdamConsts,
    decay: bool,
    decoupled: bool,
    grad: &[f32],
    param: &mut [f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    match (decay, decoupled) {
        (false, _) => adam_elems::<false, false>(k, grad, param, exp_avg, exp_avg_sq),
        (true, false) => adam_elems::<true, false>(k, grad, param, exp_avg, exp_avg_sq),
        (true, true) => adam_elems::<true, true>(k, grad, param, exp_avg, exp_avg_sq),
    }
}

/// The reference's `adam_step` loop for one set of branches: `g = grad * scale` (Adam: `+ wd *
/// p`; AdamW: `p *= 1 - lr * wd` first), `m = b1 * m + (1 - b1) * g`,
/// `v = b2 * v + (1 - b2) * g * g`, `p -= step_size * m / (sqrt(v) / sqrt(1 - b2^step) + eps)`.
#[inline(always)]
fn adam_elems<const DECAY: bool, const DECOUPLED: bool>(
    k: &AdamConsts,
    grad: &[f32],
    param: &mut [f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    let n = param.len();
    let (grad, exp_avg, exp_avg_sq) = (&grad[..n], &mut exp_avg[..n], &mut exp_avg_sq[..n]);
    for (((p, m), v), &gv) in param.iter_mut().zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()).zip(grad) {
        let mut g = gv * k.scale;
        let mut pv = *p;
        if DECAY {
            if DECOUPLED {
                pv *= k.decay_factor;
            } else {
                g += k.weight_decay * pv;
            }
        }
        let m_new = k.beta1 * *m + k.one_minus_beta1 * g;
        let v_new = k.beta2 * *v + k.one_minus_beta2 * g * g;
        *m = m_new;
        *v = v_new;
        *p = pv - k.step_size * m_new / (v_new.sqrt() / k.bias_correction2_sqrt + k.eps);
    }
}
