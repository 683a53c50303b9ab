//! MatMul, BiasAdd, the elementwise ops, the activations, Reshape, and their gradient ops.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Activation, Check, OpRules, ShapeError};
use crate::kernels::reference::dense as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatMul {
    /// `a` is stored `[K, M]` and used transposed.
    pub trans_a: bool,
    /// `b` is stored `[N, K]` and used transposed (a PyTorch `Linear` weight).
    pub trans_b: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub min: f32,
    pub max: f32,
}

/// The dense family. The doc comment of each variant is its argument convention:
/// `inputs -> outputs`. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DenseOp {
    /// `[a, b] -> [y]`, 2-D: `y = op(a) @ op(b)`.
    MatMul(MatMul),
    /// `[x, b] -> [y]`: `y = x + b` broadcast along axis 1 (`x` has rank >= 2, `b` is `[C]`).
    BiasAdd,
    /// `[a, b] -> [y]`, same shapes (named `AddSameShape`; the broadcasting `Add` is
    /// `BroadcastOp::Add`).
    Add,
    /// `[a, b] -> [y]`, same shapes (named `MulSameShape`; see `BroadcastOp::Mul`).
    Mul,
    /// `[x] -> [y]`.
    Relu,
    /// `[x] -> [y]`: `y = min(max(x, min), max)` (ReLU6 is `Clip { 0, 6 }`).
    Clip(Clip),
    /// `[x] -> [y]`: same data, new shape (the planner aliases `y` onto `x` when it can).
    Reshape { shape: Vec<usize> },
    /// `[dy] -> [db]`: sum of `dy` over all axes but 1.
    BiasGrad,
    /// `[dy, x] -> [dx]`.
    ReluGrad,
    /// `[dy, x] -> [dx]`: `dy` where `min < x < max`, else 0.
    ClipGrad(Clip),
    /// `[a, b, bias] -> [y]`: `y = act(op(a) @ op(b) + bias)`, `bias` `[N]` added to each row
    /// after the whole sum, then the activation: `MatMul`, `BiasAdd` and `Relu`/`Clip` (or none)
    /// in one op (a Linear layer). Made by the compiler's fusion pass (`compiler/src/fuse.rs`).
    MatMulBiasAct { mm: MatMul, act: Activation },
}

impl OpRules for DenseOp {
    fn name(&self) -> &'static str {
        match self {
            DenseOp::MatMul(_) => "MatMul",
            DenseOp::BiasAdd => "BiasAdd",
            DenseOp::Add => "AddSameShape",
            DenseOp::Mul => "MulSameShape",
            DenseOp::Relu => "Relu",
            DenseOp::Clip(_) => "Clip",
            DenseOp::Reshape { .. } => "Reshape",
            DenseOp::BiasGrad => "BiasGrad",
            DenseOp::ReluGrad => "ReluGrad",
            DenseOp::ClipGrad(_) => "ClipGrad",
            DenseOp::MatMulBiasAct { .. } => "MatMulBiasAct",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            DenseOp::Relu | DenseOp::Clip(_) | DenseOp::Reshape { .. } | DenseOp::BiasGrad => 1,
            DenseOp::MatMul(_) | DenseOp::BiasAdd | DenseOp::Add | DenseOp::Mul | DenseOp::ReluGrad | DenseOp::ClipGrad(_) => 2,
            DenseOp::MatMulBiasAct { .. } => 3,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match (self, inputs) {
            // Reshape moves index and mask tensors too (an attention mask's Unsqueeze).
            (DenseOp::Reshape { .. }, [d @ (DType::I64 | DType::Bool)]) => Ok(alloc::vec![*d]),
            _ => check.floats(inputs, 1),
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        Ok(match self {
            DenseOp::MatMul(m) => {
                let (a, b) = (inputs[0], inputs[1]);
                check.rank(a, 2, "a")?;
                check.rank(b, 2, "b")?;
                let (mm, ka) = if m.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
                let (kb, nn) = if m.trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
                if ka != kb {
                    return Err(check.err(alloc::format!(
                        "inner dimensions differ: a {a:?}, b {b:?} (trans_a {}, trans_b {})",
                        m.trans_a,
                        m.trans_b
                    )));
                }
                vec![vec![mm, nn]]
            }
            DenseOp::MatMulBiasAct { mm, .. } => {
                let y = DenseOp::MatMul(*mm).shape_rule(check, &inputs[..2])?;
                check.same(inputs[2], &[y[0][1]], "bias vs output columns")?;
                y
            }
            DenseOp::BiasAdd => {
                let c = check.channels(inputs[0])?;
                check.same(inputs[1], &[c], "bias vs channels")?;
                vec![inputs[0].to_vec()]
            }
            DenseOp::Add | DenseOp::Mul => {
                check.same(inputs[0], inputs[1], "operands")?;
                vec![inputs[0].to_vec()]
            }
            DenseOp::Relu | DenseOp::Clip(_) => vec![inputs[0].to_vec()],
            DenseOp::Reshape { shape } => {
                if check.numel(shape)? != check.numel(inputs[0])? {
                    return Err(check.err(alloc::format!("cannot reshape {:?} to {shape:?}", inputs[0])));
                }
                vec![shape.clone()]
            }
            DenseOp::BiasGrad => vec![vec![check.channels(inputs[0])?]],
            DenseOp::ReluGrad | DenseOp::ClipGrad(_) => {
                check.same(inputs[0], inputs[1], "dy vs x")?;
                vec![inputs[0].to_vec()]
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, outputs: o, int_inputs, int_outputs, bool_inputs, bool_outputs } = args;
        match self {
            DenseOp::MatMul(m) => kernel::matmul(m, i[0], i[1], &mut o[0]),
            DenseOp::BiasAdd => kernel::bias_add(i[0], i[1], &mut o[0]),
            DenseOp::Add => kernel::add(i[0], i[1], &mut o[0]),
            DenseOp::Mul => kernel::mul(i[0], i[1], &mut o[0]),
            DenseOp::Relu => kernel::relu(i[0], &mut o[0]),
            DenseOp::Clip(c) => kernel::clip(c, i[0], &mut o[0]),
            // Only reached when the planner could not alias the output onto the input.
            DenseOp::Reshape { .. } => match (int_inputs.first(), int_outputs.first_mut(), bool_inputs.first(), bool_outputs.first_mut()) {
                (Some(x), Some(y), _, _) => y.data.copy_from_slice(x.data),
                (_, _, Some(x), Some(y)) => y.data.copy_from_slice(x.data),
                _ => o[0].data.copy_from_slice(i[0].data),
            },
            DenseOp::BiasGrad => kernel::bias_grad(i[0], &mut o[0]),
            DenseOp::ReluGrad => kernel::relu_grad(i[0], i[1], &mut o[0]),
            DenseOp::ClipGrad(c) => kernel::clip_grad(c, i[0], i[1], &mut o[0]),
            DenseOp::MatMulBiasAct { mm, act } => kernel::matmul_bias_act(mm, act, i[0], i[1], i[2], &mut o[0]),
        }
        Ok(())
    }
}
