//! The unary maths, each function written once: its forward formula and its derivative, as a type
//! implementing [`UnaryFormula`] (the shape of candle's `UnaryOpT`). The reference kernels
//! (`reference::unary`) are generated from these definitions, and faster CPU or GPU kernels are
//! meant to be generated from the same ones, so that every backend computes the same function.
//!
//! Each derivative is written in terms of one forward value, [`UnaryFormula::SAVES`]: the output
//! wherever the maths allows (exp, sigmoid, tanh, sqrt, reciprocal, softplus, hard sigmoid), so
//! the backward pass keeps the value the next op reads anyway; the input otherwise.
//!
//! One definition for the CPU and the GPU: [`unary_formulas!`] takes each formula once, written
//! in a small expression language that is both Rust (with the generic helpers of [`dsl`]) and
//! WGSL (with the helpers of [`WGSL_PRELUDE`]): `let` bindings, then one expression of
//! arithmetic, comparisons, `select(if_false, if_true, condition)` (WGSL's, no branches),
//! `lit(constant)` and the helper functions. It emits the Rust [`UnaryFormula`] impl and, through
//! `stringify!`, the WGSL text of the same formula ([`WGSL_FORMULAS`]), from which the GPU's unary
//! kernel (`backend/wgpu/families.rs`) builds its `switch`, each case's index being the formula's
//! position in that list (no hand-kept table).

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

unit_formulas!(Neg, Exp, Log, Sqrt, Reciprocal, Tanh, Sigmoid, Erf, Abs, Sin, Cos, Softplus, Floor, Ceil, Round, Sign);

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

/// The helper functions of the formula language, on the Rust side (each has a same-named
/// counterpart (`lit(constant)`, a constant of the formula's float type, is bound in each
/// generated function) in [`WGSL_PRELUDE`] or is a WGSL builtin of the same meaning: `exp`, `sqrt`, `abs`,
/// `sin`, `cos`, `max`, `select`).
pub mod dsl {
    use super::Float;

    /// WGSL's `select`: `t` where `c`, else `f` (both sides are evaluated).
    pub fn select<T>(f: T, t: T, c: bool) -> T {
        if c {
            t
        } else {
            f
        }
    }
    pub fn exp<T: Float>(x: T) -> T {
        x.exp()
    }
    pub fn ln<T: Float>(x: T) -> T {
        x.ln()
    }
    pub fn sqrt<T: Float>(x: T) -> T {
        x.sqrt()
    }
    pub fn recip<T: Float>(x: T) -> T {
        x.recip()
    }
    /// `tanh`; on the device its argument is clamped to [-15, 15] first (beyond which the f32
    /// tanh is already +-1), as some drivers' `tanh` overflows to NaN for large arguments.
    pub fn safe_tanh<T: Float>(x: T) -> T {
        x.tanh()
    }
    /// `libm`'s erf. WGSL has none: the device's `erf` (in [`super::WGSL_PRELUDE`]) is
    /// Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), the one formula that cannot
    /// share a definition (the CPU keeps the correctly rounded one).
    pub fn erf<T: Float>(x: T) -> T {
        Float::erf(x)
    }
    pub fn abs<T: Float>(x: T) -> T {
        x.abs()
    }
    pub fn sin<T: Float>(x: T) -> T {
        x.sin()
    }
    pub fn cos<T: Float>(x: T) -> T {
        x.cos()
    }
    /// The larger of the two, the non-NaN one if one is NaN.
    pub fn max<T: Float>(a: T, b: T) -> T {
        a.max(b)
    }
    /// `e^x - 1` (the device's switches to its cubic Taylor polynomial below 1e-3).
    pub fn exp_m1<T: Float>(x: T) -> T {
        x.exp_m1()
    }
    /// `ln(1 + x)` (the device's switches to `x - x^2 / 2` below 1e-4).
    pub fn ln_1p<T: Float>(x: T) -> T {
        x.ln_1p()
    }
    pub fn floor<T: Float>(x: T) -> T {
        x.floor()
    }
    pub fn ceil<T: Float>(x: T) -> T {
        x.ceil()
    }
    /// The nearest integer, halves to the even one (WGSL's `round`, ONNX's `Round`).
    pub fn round<T: Float>(x: T) -> T {
        let two = T::one() + T::one();
        if (x - x.trunc()).abs() == T::one() / two {
            // x / 2 is exact, and k + 1/2 halved rounds to the half of the even neighbour.
            two * (x / two).round()
        } else {
            x.round()
        }
    }
    /// -1, 0 or 1 by the sign of `x`; a zero or NaN is returned as it is (ONNX's `Sign`).
    pub fn sgn<T: Float>(x: T) -> T {
        select(select(x, -T::one(), x < T::zero()), T::one(), x > T::zero())
    }
}

/// The device side of [`dsl`]: the helpers that are not WGSL builtins. WGSL lacks `erf`,
/// `expm1` and `log1p`: these are approximations (see each Rust helper's doc).
pub const WGSL_PRELUDE: &str = r#"
fn lit(v: f32) -> f32 { return v; }
fn ln(x: f32) -> f32 { return log(x); }
fn recip(x: f32) -> f32 { return 1.0 / x; }
fn safe_tanh(x: f32) -> f32 { return tanh(clamp(x, -15.0, 15.0)); }
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}
fn exp_m1(x: f32) -> f32 {
    if (abs(x) < 1e-3) { return x + x * x * 0.5 + x * x * x / 6.0; }
    return exp(x) - 1.0;
}
fn ln_1p(x: f32) -> f32 {
    if (abs(x) < 1e-4) { return x - x * x * 0.5; }
    return log(1.0 + x);
}
fn sgn(x: f32) -> f32 { return select(select(x, -1.0, x < 0.0), 1.0, x > 0.0); }
"#;

/// One formula as WGSL statements: `apply` ends in `return f(x);`, `derivative` in
/// `return f'(s);` (`s` the saved value), both with `alpha` and `beta` (the attributes) in scope.
pub struct WgslFormula {
    pub name: &'static str,
    pub apply: &'static str,
    pub derivative: &'static str,
}

/// A formula's attributes as the device reads them: `[alpha, beta]`, 0 where it has none.
pub trait Attributes {
    fn attributes(&self) -> [f32; 2];
}

/// Emits, for each formula, its [`UnaryFormula`] and [`Attributes`] impls, and [`WGSL_FORMULAS`]
/// in list order. First `constants lit;` (the name of the constant helper, `lit(1.0)`, which
/// the macro binds to the formula's float type), then per formula: `Type(fields) NAME GRAD_NAME SAVES`, then
/// `apply(x) lets { expression }` and `derivative(s) lets { expression }`, written once (the
/// `let` bindings sit before the braces so that the macro need not tell them from an expression).
macro_rules! unary_formulas {
    (constants $lit:ident; $(
        $(#[doc = $doc:literal])*
        $ty:ident ($($field:ident),*) $name:literal $grad:literal $saves:ident
        apply($x:ident) $(let $av:ident = $ae:expr;)* { $apply:expr }
        derivative($s:ident) $(let $dv:ident = $de:expr;)* { $deriv:expr }
    )*) => {
        $(
            impl UnaryFormula for $ty {
                const NAME: &'static str = $name;
                const GRAD_NAME: &'static str = $grad;
                const SAVES: Saves = Saves::$saves;
                $(#[doc = $doc])*
                #[allow(unused_variables)]
                fn apply<T: Float>(&self, $x: T) -> T {
                    #[allow(unused_imports)]
                    use dsl::*;
                    let $lit = |v: f64| -> T { T::from_f64(v) };
                    $(let $field: T = T::from_f32(self.$field);)*
                    $(let $av = $ae;)*
                    $apply
                }
                // Constants are literals (WGSL text too), not `core::f64::consts`.
                #[allow(unused_variables, clippy::approx_constant)]
                fn derivative<T: Float>(&self, $s: T) -> T {
                    #[allow(unused_imports)]
                    use dsl::*;
                    let $lit = |v: f64| -> T { T::from_f64(v) };
                    $(let $field: T = T::from_f32(self.$field);)*
                    $(let $dv = $de;)*
                    $deriv
                }
            }
            impl Attributes for $ty {
                fn attributes(&self) -> [f32; 2] {
                    let given: &[f32] = &[$(self.$field),*];
                    let mut a = [0.0; 2];
                    a[..given.len()].copy_from_slice(given);
                    a
                }
            }
        )*
        /// Every formula's WGSL, in the order of [`unary_formulas!`]'s list: a formula's index
        /// here is its case in the GPU kernel's `switch`.
        pub const WGSL_FORMULAS: &[WgslFormula] = &[$(
            WgslFormula {
                name: $name,
                apply: concat!($("let ", stringify!($av), " = ", stringify!($ae), "; ",)* "return ", stringify!($apply), ";"),
                derivative: concat!($("let ", stringify!($dv), " = ", stringify!($de), "; ",)* "return ", stringify!($deriv), ";"),
            },
        )*];
    };
}

unary_formulas! {
    constants lit;
    Neg() "Neg" "NegGrad" Nothing
        apply(x) { -x }
        derivative(s) { -lit(1.0) }
    Exp() "Exp" "ExpGrad" Output
        apply(x) { exp(x) }
        derivative(s) { s }
    Log() "Log" "LogGrad" Input
        apply(x) { ln(x) }
        derivative(s) { recip(s) }
    /// The derivative `1 / (2 sqrt(x))` is infinite at 0, as in PyTorch.
    Sqrt() "Sqrt" "SqrtGrad" Output
        apply(x) { sqrt(x) }
        derivative(s) { recip(s + s) }
    /// The derivative `-1 / x^2 = -y^2`.
    Reciprocal() "Reciprocal" "ReciprocalGrad" Output
        apply(x) { recip(x) }
        derivative(s) { -(s * s) }
    Tanh() "Tanh" "TanhGrad" Output
        apply(x) { safe_tanh(x) }
        derivative(s) { lit(1.0) - s * s }
    /// Written so that `exp` never overflows: `1 / (1 + e^-x)` for `x >= 0`, `e^x / (1 + e^x)`
    /// below.
    Sigmoid() "Sigmoid" "SigmoidGrad" Output
        apply(x) let e = exp(x); { select(e / (lit(1.0) + e), recip(lit(1.0) + exp(-x)), x >= lit(0.0)) }
        derivative(s) { s * (lit(1.0) - s) }
    /// The derivative `2 / sqrt(pi) * e^(-x^2)`.
    Erf() "Erf" "ErfGrad" Input
        apply(x) { erf(x) }
        derivative(s) { lit(1.1283791670955126) * exp(-(s * s)) }
    /// The derivative is the sign of `x`, 0 at 0 (PyTorch's `sgn`).
    Abs() "Abs" "AbsGrad" Input
        apply(x) { abs(x) }
        derivative(s) { select(select(lit(0.0), -lit(1.0), s < lit(0.0)), lit(1.0), s > lit(0.0)) }
    Sin() "Sin" "SinGrad" Input
        apply(x) { sin(x) }
        derivative(s) { cos(s) }
    Cos() "Cos" "CosGrad" Input
        apply(x) { cos(x) }
        derivative(s) { -sin(s) }
    /// `ln(1 + e^x)`, as `max(x, 0) + ln(1 + e^-|x|)` so that it neither overflows for large `x`
    /// nor loses the small values of very negative `x`. The derivative `sigmoid(x) = 1 - e^-y`
    /// is computed as `-expm1(-y)`, accurate for small `y` too.
    Softplus() "Softplus" "SoftplusGrad" Output
        apply(x) { max(x, lit(0.0)) + ln_1p(exp(-abs(x))) }
        derivative(s) { -exp_m1(-s) }
    /// The derivative is 1 for `x > 0`, else `alpha` (PyTorch's `leaky_relu_backward`: `alpha`
    /// at 0).
    LeakyRelu(alpha) "LeakyRelu" "LeakyReluGrad" Input
        apply(x) { select(x * alpha, x, x > lit(0.0)) }
        derivative(s) { select(alpha, lit(1.0), s > lit(0.0)) }
    /// The derivative is 1 for `x > 0`, else `alpha * e^x`: written in terms of the input
    /// because the output does not tell the two sides apart when `alpha <= 0`.
    Elu(alpha) "Elu" "EluGrad" Input
        apply(x) { select(alpha * exp_m1(x), x, x > lit(0.0)) }
        derivative(s) { select(alpha * exp(s), lit(1.0), s > lit(0.0)) }
    /// Clamped in this order so that a NaN input stays NaN. The derivative is `alpha` where the
    /// output lies strictly inside (0, 1), else 0 (PyTorch's `hardsigmoid_backward`: no
    /// gradient at the two kinks).
    HardSigmoid(alpha, beta) "HardSigmoid" "HardSigmoidGrad" Output
        apply(x) let v = alpha * x + beta; let raised = select(v, lit(0.0), v < lit(0.0)); { select(raised, lit(1.0), raised > lit(1.0)) }
        derivative(s) { select(lit(0.0), alpha, lit(0.0) < s && s < lit(1.0)) }
    /// The four step functions have a zero derivative (PyTorch's `floor`, `ceil`, `round` and
    /// `sign` backward): gradients do not flow through them, as in stochastic depth's
    /// `floor(keep_prob + uniform)` mask.
    Floor() "Floor" "FloorGrad" Nothing
        apply(x) { floor(x) }
        derivative(s) { lit(0.0) }
    Ceil() "Ceil" "CeilGrad" Nothing
        apply(x) { ceil(x) }
        derivative(s) { lit(0.0) }
    /// Halves go to the even integer.
    Round() "Round" "RoundGrad" Nothing
        apply(x) { round(x) }
        derivative(s) { lit(0.0) }
    Sign() "Sign" "SignGrad" Nothing
        apply(x) { sgn(x) }
        derivative(s) { lit(0.0) }
}
