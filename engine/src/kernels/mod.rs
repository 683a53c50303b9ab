//! Kernels. [`reference`] holds a portable, generic (f32 and f64) kernel for every op: it is the
//! definition of what an op computes, the compiler evaluates graphs in f64 with it for gradient
//! checks, and every faster kernel is tested against it. [`cpu`] holds the faster f32 kernels
//! (gemm-based matmul and convolution) that the CPU backend prefers where they exist.

mod conv_geometry;
#[cfg(feature = "std")]
pub mod cpu;
pub mod reference;
pub mod unary;

use core::fmt::Debug;

/// The element types kernels are generic over (`f32` for execution, `f64` for gradient checks).
pub trait Float:
    num_traits::Float
    + Default
    + Debug
    + Send
    + Sync
    + core::iter::Sum
    + core::ops::AddAssign
    + core::ops::SubAssign
    + core::ops::MulAssign
    + 'static
{
    fn from_f32(v: f32) -> Self;
    /// Rounds to the nearest representable value (exact for `f64`).
    fn from_f64(v: f64) -> Self;
    /// The error function, from `libm` (no_std): `erff` for `f32`, `erf` for `f64`.
    fn erf(self) -> Self;
    fn from_usize(v: usize) -> Self;
    /// Rounds to the nearest representable value, as Rust's `as` (and PyTorch's cast) does.
    fn from_i64(v: i64) -> Self;
    fn to_f64(self) -> f64;
}

impl Float for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn from_usize(v: usize) -> Self {
        v as f32
    }
    fn from_i64(v: i64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn from_usize(v: usize) -> Self {
        v as f64
    }
    fn from_i64(v: i64) -> Self {
        v as f64
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// A read-only tensor view.
#[derive(Clone, Copy, Debug)]
pub struct View<'a, T> {
    pub data: &'a [T],
    pub shape: &'a [usize],
}

/// A writable tensor view. For in-place outputs it holds the previous value.
#[derive(Debug)]
pub struct ViewMut<'a, T> {
    pub data: &'a mut [T],
    pub shape: &'a [usize],
}

/// The arguments of one node, already resolved to memory and checked against the op's shape and
/// dtype rules.
///
/// Arguments are split by dtype, each slice keeping the node's order: `inputs` holds the float
/// inputs with the others left out, `int_inputs` the `i64` ones, `bool_inputs` the one-byte ones
/// (bool; the `u8` packed masks of the mask family, the only family whose dtype rule takes `u8`;
/// the `i8` values of the quant family, read back with `as i8`); the outputs likewise. An op's
/// dtype rule (`OpRules::dtype_rule`) says which position goes where, so a float-only kernel
/// indexes `inputs` and `outputs` as before and never looks at the others.
pub struct NodeArgs<'n, 'a, T> {
    pub inputs: &'n [View<'a, T>],
    pub int_inputs: &'n [View<'a, i64>],
    pub bool_inputs: &'n [View<'a, u8>],
    pub outputs: &'n mut [ViewMut<'a, T>],
    pub int_outputs: &'n mut [ViewMut<'a, i64>],
    pub bool_outputs: &'n mut [ViewMut<'a, u8>],
}

impl<'n, 'a, T> NodeArgs<'n, 'a, T> {
    /// The arguments of a node whose inputs and outputs are all float.
    pub fn floats(inputs: &'n [View<'a, T>], outputs: &'n mut [ViewMut<'a, T>]) -> Self {
        NodeArgs { inputs, int_inputs: &[], bool_inputs: &[], outputs, int_outputs: &mut [], bool_outputs: &mut [] }
    }
}

/// Why a kernel refused to run. Shapes are validated when a plan is loaded, so this only reports
/// data-dependent problems, such as a label outside `[0, classes)`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: label {label} at row {row} is outside [0, {classes})")]
    LabelOutOfRange { op: &'static str, row: usize, label: i64, classes: usize },
    #[error("{op}: index {index} is outside [-{len}, {len}); check the indices fed to the model")]
    IndexOutOfRange { op: &'static str, index: i64, len: usize },
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: &'static str },
}
