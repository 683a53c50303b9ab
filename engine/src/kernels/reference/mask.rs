//! Reference kernels of the mask family: packing an activation's gradient predicate into bits,
//! and applying those bits to a gradient. Both walk the data eight elements (one mask byte) at a
//! time, which is also what makes them fast: no division per element, and the inner loop over a
//! byte's bits has a fixed length the compiler unrolls.

use crate::kernels::Float;
use crate::ops::MaskKind;

/// Sets bit `i` of `bits` (byte `i / 8`, bit `i % 8`) where `v[i]` passes `kind`'s predicate; the
/// unused high bits of the last byte are 0. `bits` holds `ceil(v.len() / 8)` bytes.
pub fn pack<T: Float>(kind: &MaskKind, v: &[T], bits: &mut [u8]) {
    match *kind {
        MaskKind::Relu => pack_with(v, bits, |x| x > T::zero()),
        MaskKind::Clip(c) => {
            let (lo, hi) = (T::from_f32(c.min), T::from_f32(c.max));
            pack_with(v, bits, |x| lo < x && x < hi)
        }
    }
}

fn pack_with<T: Float>(v: &[T], bits: &mut [u8], passes: impl Fn(T) -> bool) {
    for (byte, chunk) in bits.iter_mut().zip(v.chunks(8)) {
        let mut b = 0u8;
        for (i, &x) in chunk.iter().enumerate() {
            b |= u8::from(passes(x)) << i;
        }
        *byte = b;
    }
}

/// `dx[i] = dy[i]` where bit `i` of `bits` is set, else 0 (a zero, not `dy * 0`, so that an
/// infinite or NaN `dy` where the gradient is blocked gives 0, as `ReluGrad` and `ClipGrad` do).
pub fn grad<T: Float>(dy: &[T], bits: &[u8], dx: &mut [T]) {
    for ((dx, dy), &b) in dx.chunks_mut(8).zip(dy.chunks(8)).zip(bits) {
        for (i, (d, &g)) in dx.iter_mut().zip(dy).enumerate() {
            *d = if (b >> i) & 1 != 0 { g } else { T::zero() };
        }
    }
}

/// `dx[i] = dx[i]` where bit `i` of `bits` is set, else 0: [`grad`] applied in place, for the
/// ops that compute `dy` and mask it in one (`ConvOp::Conv2dGradInputMasked`).
pub fn mask_in_place<T: Float>(bits: &[u8], dx: &mut [T]) {
    for (dx, &b) in dx.chunks_mut(8).zip(bits) {
        for (i, d) in dx.iter_mut().enumerate() {
            if (b >> i) & 1 == 0 {
                *d = T::zero();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::dense::{clip_grad, relu_grad};
    use crate::kernels::{View, ViewMut};
    use crate::ops::Clip;

    /// A deterministic spread of values around the kinks 0 and 6, with signed zeros, NaN and
    /// infinities, and a length that leaves a partial last byte.
    fn values() -> Vec<f32> {
        let mut v: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 200) as f32 * 0.05 - 2.0).collect();
        v.extend([0.0, -0.0, 6.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-38, 5.999_999_5, 6.000_001]);
        v
    }

    fn gradients(n: usize) -> Vec<f32> {
        let mut g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        g[5] = f32::NAN;
        g[6] = f32::INFINITY;
        g
    }

    /// The mask kernels compute exactly what the gradient ops they replace compute, for every
    /// value including the kinks, signed zeros, NaN and infinities.
    #[test]
    fn pack_then_grad_equals_the_float_gradient_ops_bit_for_bit() {
        let v = values();
        let dy = gradients(v.len());
        let shape = [v.len()];
        let mut bits = vec![0xaau8; v.len().div_ceil(8)];
        let (mut want, mut got) = (vec![0f32; v.len()], vec![1f32; v.len()]);
        type FloatGrad<'a> = &'a dyn Fn(&mut [f32]);
        let cases: [(MaskKind, FloatGrad); 3] = [
            (MaskKind::Relu, &|out| {
                relu_grad(View { data: &dy, shape: &shape }, View { data: &v, shape: &shape }, &mut ViewMut { data: out, shape: &shape })
            }),
            (MaskKind::Clip(Clip { min: 0.0, max: 6.0 }), &|out| {
                clip_grad(
                    &Clip { min: 0.0, max: 6.0 },
                    View { data: &dy, shape: &shape },
                    View { data: &v, shape: &shape },
                    &mut ViewMut { data: out, shape: &shape },
                )
            }),
            (MaskKind::Clip(Clip { min: -1.0, max: 0.5 }), &|out| {
                clip_grad(
                    &Clip { min: -1.0, max: 0.5 },
                    View { data: &dy, shape: &shape },
                    View { data: &v, shape: &shape },
                    &mut ViewMut { data: out, shape: &shape },
                )
            }),
        ];
        for (kind, reference) in cases {
            reference(&mut want);
            pack(&kind, &v, &mut bits);
            grad(&dy, &bits, &mut got);
            let mut in_place = dy.clone();
            mask_in_place(&bits, &mut in_place);
            assert!(got.iter().zip(&in_place).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?}: mask_in_place differs from grad");
            let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kind:?}: the mask gradient differs from the float gradient op");
            // The unused bits of the last byte are cleared.
            assert_eq!(bits[bits.len() - 1] >> (v.len() % 8), 0, "{kind:?}");
        }
    }

    #[test]
    fn pack_sets_bits_least_significant_first() {
        let v = [1.0f64, 0.0, -1.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0];
        let mut bits = [0u8; 2];
        pack(&MaskKind::Relu, &v, &mut bits);
        assert_eq!(bits, [0b1000_1001, 0b1]);
        let mut dx = [7.0f64; 9];
        grad(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], &bits, &mut dx);
        assert_eq!(dx, [1.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 8.0, 9.0]);
    }
}
