//! Unary elementwise kernels, generated from each function's [`UnaryFormula`]: the forward map
//! and the backward map `dx = dy * f'(saved)`. Every function writes all of its output; the shape
//! rule makes every argument the same length.

use crate::kernels::unary::UnaryFormula;
use crate::kernels::Float;

/// `y = f(x)`.
pub fn apply<T: Float, F: UnaryFormula>(f: &F, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = f.apply(x);
    }
}

/// `dx = dy * f'(saved)`, where `saved` is the forward value `F::SAVES` names.
pub fn grad<T: Float, F: UnaryFormula>(f: &F, dy: &[T], saved: &[T], dx: &mut [T]) {
    for ((dx, &dy), &s) in dx.iter_mut().zip(dy).zip(saved) {
        *dx = dy * f.derivative(s);
    }
}

/// `dx = dy * f'` for a function whose derivative is a constant (it reads no forward value).
pub fn grad_constant<T: Float, F: UnaryFormula>(f: &F, dy: &[T], dx: &mut [T]) {
    let d = f.derivative(T::zero());
    for (dx, &dy) in dx.iter_mut().zip(dy) {
        *dx = dy * d;
    }
}

/// Logical not of bools (any non-zero byte is true); writes 0 or 1.
pub fn not(x: &[u8], y: &mut [u8]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = u8::from(x == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::unary::*;

    fn map<F: UnaryFormula>(f: F, x: &[f64]) -> alloc::vec::Vec<f64> {
        let mut y = alloc::vec![f64::NAN; x.len()];
        apply(&f, x, &mut y);
        y
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn forward_formulas_on_hand_computed_values() {
        close(&map(Neg, &[1.5, -2.0, 0.0]), &[-1.5, 2.0, 0.0]);
        close(&map(Exp, &[0.0, 1.0]), &[1.0, core::f64::consts::E]);
        close(&map(Log, &[1.0, core::f64::consts::E]), &[0.0, 1.0]);
        close(&map(Sqrt, &[4.0, 0.25]), &[2.0, 0.5]);
        close(&map(Reciprocal, &[4.0, -0.5]), &[0.25, -2.0]);
        close(&map(Abs, &[-3.0, 2.0]), &[3.0, 2.0]);
        close(&map(Sin, &[0.0, core::f64::consts::FRAC_PI_2]), &[0.0, 1.0]);
        close(&map(Cos, &[0.0, core::f64::consts::PI]), &[1.0, -1.0]);
        // tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6; sigmoid(ln 3) = 3/4.
        close(&map(Tanh, &[2f64.ln()]), &[0.6]);
        close(&map(Sigmoid, &[3f64.ln(), -(3f64.ln()), 0.0]), &[0.75, 0.25, 0.5]);
        // erf(0) = 0; erf(1) = 0.8427007929497149 (Abramowitz and Stegun, table 7.1).
        close(&map(Erf, &[0.0, 1.0, -1.0]), &[0.0, 0.8427007929497149, -0.8427007929497149]);
        // softplus(0) = ln 2; softplus(ln 3) = ln 4; far from 0 it is x, or e^x.
        close(&map(Softplus, &[0.0, 3f64.ln(), 800.0, -800.0]), &[2f64.ln(), 4f64.ln(), 800.0, (-800f64).exp()]);
        close(&map(LeakyRelu { alpha: 0.25 }, &[2.0, -2.0]), &[2.0, -0.5]);
        close(&map(Elu { alpha: 2.0 }, &[3.0, -(2f64.ln())]), &[3.0, -1.0]);
        close(&map(HardSigmoid { alpha: 0.25, beta: 0.5 }, &[-4.0, 0.0, 1.0, 4.0]), &[0.0, 0.5, 0.75, 1.0]);
        close(&map(Floor, &[-1.5, 2.0, 2.7]), &[-2.0, 2.0, 2.0]);
        close(&map(Ceil, &[-1.5, 2.0, 2.2]), &[-1.0, 2.0, 3.0]);
        // Halves go to the even neighbour, in f64 and f32.
        close(&map(Round, &[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6]), &[0.0, 2.0, 2.0, 0.0, -2.0, -2.0, 2.0, -3.0]);
        let mut y32 = [0f32; 4];
        apply(&Round, &[3.5f32, 4.5, -3.5, 8_388_607.0], &mut y32);
        assert_eq!(y32, [4.0, 4.0, -4.0, 8_388_607.0]);
        let s = map(Sign, &[-2.5, 0.0, -0.0, 3.0, f64::NAN]);
        assert_eq!(s[..4], [-1.0, 0.0, 0.0, 1.0]);
        assert!(s[2].is_sign_negative() && s[4].is_nan(), "Sign keeps -0 and NaN: {s:?}");
    }

    #[test]
    fn sigmoid_and_softplus_do_not_overflow() {
        let y = map(Sigmoid, &[-1000.0, 1000.0]);
        assert_eq!(y, [0.0, 1.0]);
        let mut y32 = [0f32; 2];
        apply(&Softplus, &[100f32, -100.0], &mut y32);
        assert_eq!(y32[0], 100.0);
        assert!(y32[1] > 0.0 && y32[1] < 1e-43);
    }

    #[test]
    fn gradients_read_the_saved_value() {
        let dy = [2.0, 2.0];
        let mut dx = [0.0; 2];
        // Exp keeps y: dx = dy * y.
        grad(&Exp, &dy, &[3.0, 5.0], &mut dx);
        assert_eq!(dx, [6.0, 10.0]);
        // Sigmoid keeps y: y (1 - y) at y = 0.75 is 0.1875.
        grad(&Sigmoid, &dy, &[0.75, 0.5], &mut dx);
        assert_eq!(dx, [0.375, 0.5]);
        // Tanh keeps y: 1 - y^2 at y = 0.6 is 0.64.
        grad(&Tanh, &dy, &[0.6, 0.0], &mut dx);
        close(&dx, &[1.28, 2.0]);
        // Log keeps x: 1 / x.
        grad(&Log, &dy, &[4.0, 0.5], &mut dx);
        assert_eq!(dx, [0.5, 4.0]);
        // Softplus keeps y: 1 - e^-y at y = ln 4 is 3/4 (sigmoid(ln 3)).
        grad(&Softplus, &dy, &[4f64.ln(), 2f64.ln()], &mut dx);
        close(&dx, &[1.5, 1.0]);
        // Abs: the sign, 0 at 0.
        let mut dx3 = [9.0; 3];
        grad(&Abs, &[1.0; 3], &[-2.0, 0.0, 3.0], &mut dx3);
        assert_eq!(dx3, [-1.0, 0.0, 1.0]);
        // HardSigmoid keeps y: alpha strictly inside (0, 1), 0 at the bounds.
        grad(&HardSigmoid { alpha: 0.25, beta: 0.5 }, &[1.0; 3], &[0.0, 0.5, 1.0], &mut dx3);
        assert_eq!(dx3, [0.0, 0.25, 0.0]);
        // LeakyRelu: alpha at 0 and below.
        grad(&LeakyRelu { alpha: 0.25 }, &[1.0; 3], &[-1.0, 0.0, 1.0], &mut dx3);
        assert_eq!(dx3, [0.25, 0.25, 1.0]);
        // Neg reads nothing.
        grad_constant(&Neg, &[1.0, -3.0], &mut dx);
        assert_eq!(dx, [-1.0, 3.0]);
        // The step functions pass no gradient.
        grad_constant(&Floor, &[1.0, -3.0], &mut dx);
        assert_eq!(dx, [0.0, 0.0]);
    }

    #[test]
    fn not_writes_zero_or_one() {
        let mut y = [9u8; 4];
        not(&[0, 1, 2, 255], &mut y);
        assert_eq!(y, [1, 0, 0, 0]);
    }
}
