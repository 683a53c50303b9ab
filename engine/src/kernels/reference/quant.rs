//! Reference kernels of the quant family (`crate::ops::QuantOp`, whose documentation gives the
//! conventions). Int8 tensors arrive as their bytes (`u8`, read back with `as i8`); the dot
//! products accumulate in `i32` (wrapping: the compiler refuses layers whose sums could exceed
//! it, and a crafted plan must not panic), and the requantization multiplies in `f32`, whatever
//! the float type `T`, so that the f64 interpreter and the engine produce the same int8 values.

use crate::kernels::{Float, View};
use crate::ops::{QLinear, QOutput, QParams};

/// A weight: int8 bytes (frozen), or the f32 master copy of its integer-domain values (trained).
pub enum Weights<'a, T> {
    Int8(&'a [u8]),
    Master(&'a [T]),
}

impl<T: Float> Weights<'_, T> {
    /// The integer weight at `i`: a master value rounded to the nearest integer and clamped to
    /// [-127, 127] (NaN reads as 0).
    #[inline]
    fn at(&self, i: usize) -> i32 {
        match self {
            Weights::Int8(w) => i32::from(w[i] as i8),
            Weights::Master(w) => round(w[i].to_f64() as f32).clamp(-127.0, 127.0) as i32,
        }
    }
}

/// Where a linear layer writes: int8 bytes or real values.
pub enum Out<'a, T> {
    Int8(&'a mut [u8]),
    Real(&'a mut [T]),
}

/// The forward output a gradient op reads to know which elements the output clamp saturated.
pub enum Seen<'a> {
    Int8(&'a [u8]),
    /// An f32 output is not clamped: every element passes.
    Real,
}

/// Rounds half away from zero (C's `roundf`).
#[inline]
fn round(v: f32) -> f32 {
    libm::roundf(v)
}

/// `clamp(round(v) + zero_point, lo, hi)` as an int8 byte; NaN becomes `zero_point` clamped.
#[inline]
fn to_int8(v: f32, zero_point: i32, lo: i32, hi: i32) -> u8 {
    let q = (round(v) as i32).saturating_add(zero_point);
    // max then min (not `clamp`, which panics when a crafted plan has lo > hi).
    q.max(lo).min(hi).clamp(-128, 127) as i8 as u8
}

pub fn quantize<T: Float>(q: &QParams, x: &[T], out: &mut [u8]) {
    let inv = 1.0 / q.scale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = to_int8(v.to_f64() as f32 * inv, q.zero_point, -128, 127);
    }
}

pub fn dequantize<T: Float>(q: &QParams, x: &[u8], out: &mut [T]) {
    let scale = T::from_f32(q.scale);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = scale * T::from_i64(i64::from(v as i8) - i64::from(q.zero_point));
    }
}

/// `y[n, o] = requant(x.scale * w_scale[o] * (round(bias[o]) + sum_i (x[n, i] - x.zero_point) * w[o, i]))`.
pub fn linear<T: Float>(l: &QLinear, x: View<'_, u8>, w: &Weights<'_, T>, w_scale: &[T], bias: &[T], out: Out<'_, T>) {
    let (n, inner) = (x.shape[0], x.shape[1]);
    let outs = w_scale.len();
    let zx = l.x.zero_point;
    let acc = |r: usize, o: usize| -> i32 {
        let mut acc = round(bias[o].to_f64() as f32) as i32;
        let row = &x.data[r * inner..(r + 1) * inner];
        for (i, &xv) in row.iter().enumerate() {
            let xi = i32::from(xv as i8).wrapping_sub(zx);
            acc = acc.wrapping_add(xi.wrapping_mul(w.at(o * inner + i)));
        }
        acc
    };
    match (out, l.out) {
        (Out::Int8(y), QOutput::Int8 { q, lo, hi }) => {
            for r in 0..n {
                for o in 0..outs {
                    let multiplier = l.x.scale * (w_scale[o].to_f64() as f32) / q.scale;
                    y[r * outs + o] = to_int8(acc(r, o) as f32 * multiplier, q.zero_point, i32::from(lo), i32::from(hi));
                }
            }
        }
        (Out::Real(y), _) => {
            let sx = T::from_f32(l.x.scale);
            for r in 0..n {
                for o in 0..outs {
                    y[r * outs + o] = T::from_i64(i64::from(acc(r, o))) * sx * w_scale[o];
                }
            }
        }
        // The dtype rule ties the output's dtype to `l.out`, so the executor never pairs these.
        (Out::Int8(_), QOutput::F32) => {}
    }
}

/// Whether the gradient passes output element `i`: strictly inside the clamp `(lo, hi)`.
#[inline]
fn passes(l: &QLinear, y: &Seen<'_>, i: usize) -> bool {
    match (y, l.out) {
        (Seen::Int8(y), QOutput::Int8 { lo, hi, .. }) => {
            let v = y[i] as i8;
            lo < v && v < hi
        }
        _ => true,
    }
}

/// `dx[n, i] = sum_o g[n, o] * w_scale[o] * w[o, i]`, `g` being `dy` where it passes.
pub fn linear_grad_input<T: Float>(l: &QLinear, dy: View<'_, T>, y: &Seen<'_>, w: &Weights<'_, T>, w_scale: &[T], dx: &mut [T]) {
    let (n, outs) = (dy.shape[0], dy.shape[1]);
    let inner = dx.len().checked_div(n).unwrap_or(0);
    dx.iter_mut().for_each(|v| *v = T::zero());
    for r in 0..n {
        for (o, &scale) in w_scale.iter().enumerate().take(outs) {
            let k = r * outs + o;
            if !passes(l, y, k) {
                continue;
            }
            let g = dy.data[k] * scale;
            for i in 0..inner {
                dx[r * inner + i] += g * T::from_i64(i64::from(w.at(o * inner + i)));
            }
        }
    }
}

/// `dw[o, i] = c[o] * sum_n g[n, o] * x.scale * (x[n, i] - x.zero_point)`, with `c = w_scale`,
/// or `1 / w_scale` under QAS.
pub fn linear_grad_weight<T: Float>(l: &QLinear, dy: View<'_, T>, y: &Seen<'_>, x: View<'_, u8>, w_scale: &[T], dw: &mut [T]) {
    let (n, outs) = (dy.shape[0], dy.shape[1]);
    let inner = x.shape[1];
    let sx = T::from_f32(l.x.scale);
    for o in 0..outs {
        let c = if l.qas { T::one() / w_scale[o] } else { w_scale[o] };
        for i in 0..inner {
            let mut sum = T::zero();
            for r in 0..n {
                let k = r * outs + o;
                if passes(l, y, k) {
                    sum += dy.data[k] * T::from_i64(i64::from(x.data[r * inner + i] as i8) - i64::from(l.x.zero_point));
                }
            }
            dw[o * inner + i] = c * sx * sum;
        }
    }
}

/// `db[o] = c[o] * sum_n g[n, o]`, with `c = x.scale * w_scale`, or its inverse under QAS.
pub fn linear_grad_bias<T: Float>(l: &QLinear, dy: View<'_, T>, y: &Seen<'_>, w_scale: &[T], db: &mut [T]) {
    let (n, outs) = (dy.shape[0], dy.shape[1]);
    let sx = T::from_f32(l.x.scale);
    for o in 0..outs {
        let mut sum = T::zero();
        for r in 0..n {
            if passes(l, y, r * outs + o) {
                sum += dy.data[r * outs + o];
            }
        }
        let c = sx * w_scale[o];
        db[o] = if l.qas { sum / c } else { sum * c };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: QParams = QParams { scale: 0.5, zero_point: -2 };

    #[test]
    fn quantize_rounds_and_saturates() {
        let x = [0.0f32, 0.26, -0.26, 100.0, -100.0, f32::NAN];
        let mut q = [0u8; 6];
        quantize(&X, &x, &mut q);
        // 0.26 / 0.5 = 0.52 rounds to 1; -0.52 to -1; NaN reads as 0.
        assert_eq!(q.map(|b| b as i8), [-2, -1, -3, 127, -128, -2]);
        let mut back = [0f32; 6];
        dequantize(&X, &q, &mut back);
        assert_eq!(back, [0.0, 0.5, -0.5, 64.5, -63.0, 0.0]);
    }

    #[test]
    fn linear_by_hand() {
        // x = [[1, 3]] as int8 with zero point -2: (x - z) = [3, 5]. w = [[1, -2], [4, 0]].
        // acc0 = round(0.6) + 3 - 10 = -6; acc1 = round(-1.4) + 12 = 11.
        let x = [1i8 as u8, 3];
        let w = [1i8 as u8, (-2i8) as u8, 4, 0];
        let (ws, bias) = ([0.1f32, 0.2], [0.6f32, -1.4]);
        let real = QLinear { x: X, out: QOutput::F32, qas: false };
        let mut y = [0f32; 2];
        let xv = View { data: &x[..], shape: &[1, 2] };
        linear(&real, xv, &Weights::<f32>::Int8(&w), &ws, &bias, Out::Real(&mut y));
        assert_eq!(y, [-6.0 * 0.5 * 0.1, 11.0 * 0.5 * 0.2]);
        // The master copy reads the same integers (1.4 rounds to 1, -2.2 to -2, 200 clamps to 127).
        let master = [1.4f32, -2.2, 4.0, 0.3];
        let mut y2 = [0f32; 2];
        linear(&real, xv, &Weights::Master(&master), &ws, &bias, Out::Real(&mut y2));
        assert_eq!(y2, y);
        // Requantized with a fused ReLU: scale 0.25, zero point -128, lo = -128.
        let q = QParams { scale: 0.25, zero_point: -128 };
        let relu = QLinear { x: X, out: QOutput::Int8 { q, lo: -128, hi: 127 }, qas: false };
        let mut yq = [0u8; 2];
        linear(&relu, xv, &Weights::<f32>::Int8(&w), &ws, &bias, Out::Int8(&mut yq));
        // -0.3 / 0.25 = -1.2 -> -1 - 128 = -129, clamped to -128; 1.1 / 0.25 = 4.4 -> 4 - 128.
        assert_eq!(yq.map(|b| b as i8), [-128, -124]);

        // Gradients: the first output sits on the ReLU's floor, so only the second passes.
        let dy = [1.0f32, 2.0];
        let dyv = View { data: &dy[..], shape: &[1, 2] };
        let seen = Seen::Int8(&yq);
        let mut dx = [0f32; 2];
        linear_grad_input(&relu, dyv, &seen, &Weights::<f32>::Int8(&w), &ws, &mut dx);
        assert_eq!(dx, [2.0 * 0.2 * 4.0, 0.0]);
        let mut dw = [9f32; 4];
        linear_grad_weight(&relu, dyv, &seen, xv, &ws, &mut dw);
        // dw[1, i] = w_scale[1] * x.scale * 2 * (x - z) = 0.2 * 0.5 * 2 * [3, 5].
        assert_eq!(dw, [0.0, 0.0, 0.2 * (0.5 * (2.0 * 3.0)), 0.2 * (0.5 * (2.0 * 5.0))]);
        let mut db = [9f32; 2];
        linear_grad_bias(&relu, dyv, &seen, &ws, &mut db);
        assert_eq!(db, [0.0, 2.0 * (0.5 * 0.2)]);
        // QAS divides by w_scale^2 (weights) and (x.scale * w_scale)^2 (biases).
        let qas = QLinear { qas: true, ..relu };
        linear_grad_weight(&qas, dyv, &seen, xv, &ws, &mut dw);
        assert_eq!(dw[2], (1.0 / 0.2) * (0.5 * (2.0 * 3.0)));
        linear_grad_bias(&qas, dyv, &seen, &ws, &mut db);
        assert_eq!(db[1], 2.0 / (0.5 * 0.2));
    }
}
