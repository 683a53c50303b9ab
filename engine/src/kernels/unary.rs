//! The unary maths, each function written once: its forward formula and its derivative, as a type
//! implementing [`UnaryFormula`] (the shape of candle's `UnaryOpT`). The reference kernels
//! (`reference::unary`) are generated from these definitions, and faster CPU or GPU kernels are
//! meant to be generated from the same ones, so that every backend computes the same function.
//!
//! Each derivative is written in terms of one forward value, [`UnaryFormula::SAVES`]: the output
//! wherever the maths allows (exp, sigmoid, tanh, sqrt, reciprocal, softplus, hard sigmoid), so
//! the backward pass keeps the value the next op reads anyway; the input otherwise.

use serde::{Deserialize, Serialize};

use super::Float;

/// The forward value a derivative is written in terms of, which the backward pass keeps alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saves {
    /// The derivative is a constant: the backward op reads `dy` alone.
    Nothing,
    /// The derivative reads the op's input `x`.
    Input,
    /// The derivative reads the op's output `y`.
    Output,
}

/// One elementwise function `y = f(x)` and its derivative.
pub trait UnaryFormula {
    /// The op's name, as `pock inspect` and error messages show it.
    const NAME: &'static str;
    /// The name of its backward op.
    const GRAD_NAME: &'static str;
    /// Which forward value [`UnaryFormula::derivative`] reads.
    const SAVES: Saves;
    fn apply<T: Float>(&self, x: T) -> T;
    /// `dy/dx`, given the value named by [`UnaryFormula::SAVES`] (ignored for `Nothing`).
    fn derivative<T: Float>(&self, saved: T) -> T;
}

macro_rules! unit_formulas {
    ($($name:ident),* $(,)?) => {
        $(
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
            pub struct $name;
        )*
    };
}

unit_formulas!(Neg, Exp, Log, Sqrt, Reciprocal, Tanh, Sigmoid, Erf, Abs, Sin, Cos, Softplus);

/// `y = x` for `x > 0`, else `alpha * x` (PyTorch's default `alpha` is 0.01).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakyRelu {
    pub alpha: f32,
}

/// `y = x` for `x > 0`, else `alpha * (e^x - 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Elu {
    pub alpha: f32,
}

/// `y = max(0, min(1, alpha * x + beta))` (ONNX defaults 0.2 and 0.5; PyTorch's `hardsigmoid` is
/// alpha 1/6, beta 0.5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardSigmoid {
    pub alpha: f32,
    pub beta: f32,
}

impl UnaryFormula for Neg {
    const NAME: &'static str = "Neg";
    const GRAD_NAME: &'static str = "NegGrad";
    const SAVES: Saves = Saves::Nothing;
    fn apply<T: Float>(&self, x: T) -> T {
        -x
    }
    fn derivative<T: Float>(&self, _: T) -> T {
        -T::one()
    }
}

impl UnaryFormula for Exp {
    const NAME: &'static str = "Exp";
    const GRAD_NAME: &'static str = "ExpGrad";
    const SAVES: Saves = Saves::Output;
    fn apply<T: Float>(&self, x: T) -> T {
        x.exp()
    }
    fn derivative<T: Float>(&self, y: T) -> T {
        y
    }
}

impl UnaryFormula for Log {
    const NAME: &'static str = "Log";
    const GRAD_NAME: &'static str = "LogGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        x.ln()
    }
    fn derivative<T: Float>(&self, x: T) -> T {
        x.recip()
    }
}

impl UnaryFormula for Sqrt {
    const NAME: &'static str = "Sqrt";
    const GRAD_NAME: &'static str = "SqrtGrad";
    const SAVES: Saves = Saves::Output;
    fn apply<T: Float>(&self, x: T) -> T {
        x.sqrt()
    }
    /// `1 / (2 sqrt(x))`: infinite at 0, as in PyTorch.
    fn derivative<T: Float>(&self, y: T) -> T {
        (y + y).recip()
    }
}

impl UnaryFormula for Reciprocal {
    const NAME: &'static str = "Reciprocal";
    const GRAD_NAME: &'static str = "ReciprocalGrad";
    const SAVES: Saves = Saves::Output;
    fn apply<T: Float>(&self, x: T) -> T {
        x.recip()
    }
    /// `-1 / x^2 = -y^2`.
    fn derivative<T: Float>(&self, y: T) -> T {
        -(y * y)
    }
}

impl UnaryFormula for Tanh {
    const NAME: &'static str = "Tanh";
    const GRAD_NAME: &'static str = "TanhGrad";
    const SAVES: Saves = Saves::Output;
    fn apply<T: Float>(&self, x: T) -> T {
        x.tanh()
    }
    fn derivative<T: Float>(&self, y: T) -> T {
        T::one() - y * y
    }
}

impl UnaryFormula for Sigmoid {
    const NAME: &'static str = "Sigmoid";
    const GRAD_NAME: &'static str = "SigmoidGrad";
    const SAVES: Saves = Saves::Output;
    /// Written so that `exp` never overflows: `1 / (1 + e^-x)` for `x >= 0`, `e^x / (1 + e^x)`
    /// below.
    fn apply<T: Float>(&self, x: T) -> T {
        if x >= T::zero() {
            (T::one() + (-x).exp()).recip()
        } else {
            let e = x.exp();
            e / (T::one() + e)
        }
    }
    fn derivative<T: Float>(&self, y: T) -> T {
        y * (T::one() - y)
    }
}

impl UnaryFormula for Erf {
    const NAME: &'static str = "Erf";
    const GRAD_NAME: &'static str = "ErfGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        x.erf()
    }
    /// `2 / sqrt(pi) * e^(-x^2)`.
    fn derivative<T: Float>(&self, x: T) -> T {
        T::from_f64(core::f64::consts::FRAC_2_SQRT_PI) * (-(x * x)).exp()
    }
}

impl UnaryFormula for Abs {
    const NAME: &'static str = "Abs";
    const GRAD_NAME: &'static str = "AbsGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        x.abs()
    }
    /// The sign of `x`, 0 at 0 (PyTorch's `sgn`).
    fn derivative<T: Float>(&self, x: T) -> T {
        if x > T::zero() {
            T::one()
        } else if x < T::zero() {
            -T::one()
        } else {
            T::zero()
        }
    }
}

impl UnaryFormula for Sin {
    const NAME: &'static str = "Sin";
    const GRAD_NAME: &'static str = "SinGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        x.sin()
    }
    fn derivative<T: Float>(&self, x: T) -> T {
        x.cos()
    }
}

impl UnaryFormula for Cos {
    const NAME: &'static str = "Cos";
    const GRAD_NAME: &'static str = "CosGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        x.cos()
    }
    fn derivative<T: Float>(&self, x: T) -> T {
        -x.sin()
    }
}

impl UnaryFormula for Softplus {
    const NAME: &'static str = "Softplus";
    const GRAD_NAME: &'static str = "SoftplusGrad";
    const SAVES: Saves = Saves::Output;
    /// `ln(1 + e^x)`, as `max(x, 0) + ln(1 + e^-|x|)` so that it neither overflows for large `x`
    /// nor loses the small values of very negative `x`.
    fn apply<T: Float>(&self, x: T) -> T {
        x.max(T::zero()) + (-x.abs()).exp().ln_1p()
    }
    /// `sigmoid(x) = 1 - e^-y`, computed as `-expm1(-y)`, accurate for small `y` too.
    fn derivative<T: Float>(&self, y: T) -> T {
        -(-y).exp_m1()
    }
}

impl UnaryFormula for LeakyRelu {
    const NAME: &'static str = "LeakyRelu";
    const GRAD_NAME: &'static str = "LeakyReluGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        if x > T::zero() {
            x
        } else {
            x * T::from_f32(self.alpha)
        }
    }
    /// 1 for `x > 0`, else `alpha` (PyTorch's `leaky_relu_backward`: `alpha` at 0).
    fn derivative<T: Float>(&self, x: T) -> T {
        if x > T::zero() {
            T::one()
        } else {
            T::from_f32(self.alpha)
        }
    }
}

impl UnaryFormula for Elu {
    const NAME: &'static str = "Elu";
    const GRAD_NAME: &'static str = "EluGrad";
    const SAVES: Saves = Saves::Input;
    fn apply<T: Float>(&self, x: T) -> T {
        if x > T::zero() {
            x
        } else {
            T::from_f32(self.alpha) * x.exp_m1()
        }
    }
    /// 1 for `x > 0`, else `alpha * e^x`. Written in terms of the input because the output does
    /// not tell the two sides apart when `alpha <= 0`.
    fn derivative<T: Float>(&self, x: T) -> T {
        if x > T::zero() {
            T::one()
        } else {
            T::from_f32(self.alpha) * x.exp()
        }
    }
}

impl UnaryFormula for HardSigmoid {
    const NAME: &'static str = "HardSigmoid";
    const GRAD_NAME: &'static str = "HardSigmoidGrad";
    const SAVES: Saves = Saves::Output;
    fn apply<T: Float>(&self, x: T) -> T {
        let v = T::from_f32(self.alpha) * x + T::from_f32(self.beta);
        // Clamped in this order so that a NaN input stays NaN.
        let raised = if v < T::zero() { T::zero() } else { v };
        if raised > T::one() {
            T::one()
        } else {
            raised
        }
    }
    /// `alpha` where the output lies strictly inside (0, 1), else 0 (PyTorch's
    /// `hardsigmoid_backward`: no gradient at the two kinks).
    fn derivative<T: Float>(&self, y: T) -> T {
        if T::zero() < y && y < T::one() {
            T::from_f32(self.alpha)
        } else {
            T::zero()
        }
    }
}
