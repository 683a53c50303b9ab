//! Tensor movement: Transpose, Concat, Split, Slice, Expand, Gather, Pad, Trilu, and the gradient
//! ops of those that need one. Ops that only move or zero values (all but Pad) run on float,
//! `i64` and bool tensors alike, so that index and mask arithmetic can use them (a causal mask is
//! often a Trilu of an integer or bool tensor).

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::movement as kernel;
use crate::kernels::{Float, KernelError, NodeArgs, View, ViewMut};
use crate::plan::DType;

/// ONNX `Slice` with static arguments: along each of `axes`, indices `starts[i]`, `starts[i] +
/// steps[i]`, ... up to `ends[i]` excluded. Negative starts and ends count from the end; both are
/// clamped to the axis as ONNX specifies (so `i64::MAX` means "to the end"); a negative step walks
/// backwards. Axes not listed are kept whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Distinct, each below the input's rank.
    pub axes: Vec<usize>,
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    /// Non-zero.
    pub steps: Vec<i64>,
}

impl Slice {
    /// The first index, length and step of the slice along axis `axis` of an input of shape `x`.
    pub fn range(&self, x: &[usize], axis: usize) -> (usize, usize, i64) {
        match self.axes.iter().position(|&a| a == axis) {
            Some(p) => slice_range(x[axis], self.starts[p], self.ends[p], self.steps[p]),
            None => (0, x[axis], 1),
        }
    }

    fn output_shape(&self, check: Check, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
        let n = self.axes.len();
        if self.starts.len() != n || self.ends.len() != n || self.steps.len() != n {
            return Err(check.err(alloc::format!(
                "axes, starts, ends and steps must have the same length, got {}, {}, {} and {}",
                n,
                self.starts.len(),
                self.ends.len(),
                self.steps.len()
            )));
        }
        for (p, &a) in self.axes.iter().enumerate() {
            if a >= x.len() {
                return Err(check.err(alloc::format!("axis {a} is out of range for input {x:?}")));
            }
            if self.axes[..p].contains(&a) {
                return Err(check.err(alloc::format!("axis {a} is listed twice")));
            }
            if self.steps[p] == 0 {
                return Err(check.err(alloc::format!("the step along axis {a} is 0")));
            }
        }
        Ok((0..x.len()).map(|k| self.range(x, k).1).collect())
    }
}

/// ONNX Slice's rule for one axis of size `dim`: the first index, the number of elements and the
/// step. `step` must not be 0. Computed in `i128`, so no input can overflow it.
pub fn slice_range(dim: usize, start: i64, end: i64, step: i64) -> (usize, usize, i64) {
    let d = dim as i128;
    let (mut s, mut e, st) = (start as i128, end as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    if dim == 0 {
        return (0, 0, step);
    }
    let (s, len) = if st > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (s, if e > s { (e - s + st - 1) / st } else { 0 })
    } else {
        let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
        (s, if s > e { (s - e - st - 1) / -st } else { 0 })
    };
    // Both are at most `dim`, so they fit in usize.
    (s as usize, len as usize, step)
}

/// Numpy broadcasting of `a` and `b` (aligned on the right; each pair of sizes equal or one of
/// them 1).
pub fn broadcast_shapes(check: Check, a: &[usize], b: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], k: usize| if k + s.len() >= rank { s[k + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|k| match (at(a, k), at(b, k)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(check.err(alloc::format!("shapes {a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

/// The movement family. The doc comment of each variant is its argument convention:
/// `inputs -> outputs`. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MoveOp {
    /// `[x] -> [y]`: `y`'s axis `k` is `x`'s axis `perm[k]`.
    Transpose { perm: Vec<usize> },
    /// `[x0, x1, ...] -> [y]`: the inputs joined along `axis`; the other sizes must agree.
    Concat { axis: usize },
    /// `[x] -> [y0, y1, ...]`: consecutive pieces of `x` along `axis`, of `sizes[i]` each.
    Split { axis: usize, sizes: Vec<usize> },
    /// `[x] -> [y]`: see [`Slice`].
    Slice(Slice),
    /// `[dy] -> [dx]`: `dx` of shape `shape` is 0 except where the slice read, which gets `dy`.
    SliceGrad { slice: Slice, shape: Vec<usize> },
    /// `[x] -> [y]`: `x` broadcast to the numpy broadcast of its shape and `shape` (ONNX
    /// `Expand`, which may also add leading axes).
    Expand { shape: Vec<usize> },
    /// `[data, indices] -> [y]`: ONNX `Gather`, `indices` `i64`, negative ones counting from the
    /// end of `axis`; `y` is `data.shape[..axis] ++ indices.shape ++ data.shape[axis + 1..]`. An
    /// index out of range is a kernel error.
    Gather { axis: usize },
    /// `[dy, indices] -> [ddata]`: scatter-add of `dy` into zeros of shape `shape` (the data's),
    /// so repeated indices accumulate.
    GatherGrad { axis: usize, shape: Vec<usize> },
    /// `[x] -> [y]`: constant padding, `pads` in ONNX layout (`[begin_0, ..., begin_r-1, end_0,
    /// ..., end_r-1]`, none negative), padded elements `value`.
    Pad { pads: Vec<usize>, value: f32 },
    /// `[x] -> [y]`: ONNX `Trilu` over the last two axes: element `(i, j)` is kept where `j - i >=
    /// k` (upper) or `j - i <= k` (lower), else 0 (false for bool).
    Trilu { upper: bool, k: i64 },
}

const RUNNABLE: [DType; 3] = [DType::F32, DType::I64, DType::Bool];

impl OpRules for MoveOp {
    fn name(&self) -> &'static str {
        match self {
            MoveOp::Transpose { .. } => "Transpose",
            MoveOp::Concat { .. } => "Concat",
            MoveOp::Split { .. } => "Split",
            MoveOp::Slice(_) => "Slice",
            MoveOp::SliceGrad { .. } => "SliceGrad",
            MoveOp::Expand { .. } => "Expand",
            MoveOp::Gather { .. } => "Gather",
            MoveOp::GatherGrad { .. } => "GatherGrad",
            MoveOp::Pad { .. } => "Pad",
            MoveOp::Trilu { .. } => "Trilu",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        match self {
            MoveOp::Concat { .. } => None,
            MoveOp::Gather { .. } | MoveOp::GatherGrad { .. } => Some(2),
            _ => Some(1),
        }
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        let any = |d: DType| {
            if RUNNABLE.contains(&d) {
                Ok(d)
            } else {
                Err(check.err(alloc::format!("cannot move {} values: the engine runs float32, int64 and bool", d.name())))
            }
        };
        match self {
            MoveOp::Transpose { .. } | MoveOp::Slice(_) | MoveOp::Expand { .. } | MoveOp::Trilu { .. } => Ok(vec![any(inputs[0])?]),
            MoveOp::Split { sizes, .. } => Ok(vec![any(inputs[0])?; sizes.len()]),
            MoveOp::Concat { .. } => {
                let d = any(inputs[0])?;
                if let Some(pos) = inputs.iter().position(|&i| i != d) {
                    return Err(check.err(alloc::format!("input {pos} is {}, input 0 is {}", inputs[pos].name(), d.name())));
                }
                Ok(vec![d])
            }
            MoveOp::Gather { .. } => {
                check.dtypes(&inputs[1..], &[DType::I64]).map_err(|_| check.err("indices (input 1) must be int64"))?;
                Ok(vec![any(inputs[0])?])
            }
            MoveOp::GatherGrad { .. } => {
                check.dtypes(inputs, &[DType::F32, DType::I64])?;
                Ok(vec![DType::F32])
            }
            MoveOp::SliceGrad { .. } | MoveOp::Pad { .. } => check.floats(inputs, 1),
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        let x = inputs[0];
        Ok(match self {
            MoveOp::Transpose { perm } => {
                let mut seen = vec![false; x.len()];
                if perm.len() != x.len() || !perm.iter().all(|&p| p < x.len() && !core::mem::replace(&mut seen[p], true)) {
                    return Err(check.err(alloc::format!("perm {perm:?} is not a permutation of the axes of {x:?}")));
                }
                vec![perm.iter().map(|&p| x[p]).collect()]
            }
            MoveOp::Concat { axis } => {
                axis_in(check, x, *axis)?;
                let mut y = x.to_vec();
                for (pos, s) in inputs.iter().enumerate().skip(1) {
                    let agrees = s.len() == x.len() && s.iter().zip(x).enumerate().all(|(k, (a, b))| k == *axis || a == b);
                    if !agrees {
                        return Err(check.err(alloc::format!("input {pos} {s:?} does not match input 0 {x:?} outside axis {axis}")));
                    }
                    y[*axis] = y[*axis].checked_add(s[*axis]).ok_or_else(|| check.err("the concatenated size does not fit in usize"))?;
                }
                vec![y]
            }
            MoveOp::Split { axis, sizes } => {
                axis_in(check, x, *axis)?;
                let total = sizes.iter().try_fold(0usize, |acc, &s| acc.checked_add(s));
                if sizes.is_empty() || total != Some(x[*axis]) {
                    return Err(check.err(alloc::format!("sizes {sizes:?} do not add up to axis {axis} of {x:?}")));
                }
                sizes
                    .iter()
                    .map(|&s| {
                        let mut y = x.to_vec();
                        y[*axis] = s;
                        y
                    })
                    .collect()
            }
            MoveOp::Slice(slice) => vec![slice.output_shape(check, x)?],
            MoveOp::SliceGrad { slice, shape } => {
                check.same(x, &slice.output_shape(check, shape)?, "dy vs the sliced shape")?;
                vec![shape.clone()]
            }
            MoveOp::Expand { shape } => vec![broadcast_shapes(check, x, shape)?],
            MoveOp::Gather { axis } => vec![gathered(check, x, inputs[1], *axis)?],
            MoveOp::GatherGrad { axis, shape } => {
                check.same(x, &gathered(check, shape, inputs[1], *axis)?, "dy vs the gathered shape")?;
                vec![shape.clone()]
            }
            MoveOp::Pad { pads, .. } => {
                if pads.len() != 2 * x.len() {
                    return Err(check.err(alloc::format!("pads {pads:?} must hold 2 x rank = {} values", 2 * x.len())));
                }
                let padded = |k: usize| x[k].checked_add(pads[k])?.checked_add(pads[k + x.len()]);
                vec![(0..x.len())
                    .map(|k| padded(k).ok_or_else(|| check.err("the padded size does not fit in usize")))
                    .collect::<Result<_, _>>()?]
            }
            MoveOp::Trilu { .. } => {
                if x.len() < 2 {
                    return Err(check.err(alloc::format!("input must have rank >= 2, got {x:?}")));
                }
                vec![x.to_vec()]
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs, int_inputs, bool_inputs, outputs, int_outputs, bool_outputs } = args;
        match self {
            MoveOp::Gather { axis } => {
                // The indices are the last `i64` input; the data is the one other input.
                let (indices, int_data) = int_inputs.split_last().ok_or_else(|| wrong(self))?;
                match (inputs, int_data, bool_inputs) {
                    ([data], [], []) => kernel::gather(*axis, *data, *indices, one(self, outputs)?),
                    ([], [data], []) => kernel::gather(*axis, *data, *indices, one(self, int_outputs)?),
                    ([], [], [data]) => kernel::gather(*axis, *data, *indices, one(self, bool_outputs)?),
                    _ => Err(wrong(self)),
                }
            }
            MoveOp::GatherGrad { axis, .. } => {
                let (dy, indices) = (inputs.first().ok_or_else(|| wrong(self))?, int_inputs.first().ok_or_else(|| wrong(self))?);
                kernel::gather_grad(*axis, *dy, *indices, one(self, outputs)?)
            }
            MoveOp::SliceGrad { slice, .. } => {
                kernel::slice_grad(slice, inputs[0], &mut outputs[0]);
                Ok(())
            }
            MoveOp::Pad { pads, value } => {
                kernel::pad(pads, T::from_f32(*value), inputs[0], &mut outputs[0]);
                Ok(())
            }
            // The dtype rule puts every argument in the same dtype's slices.
            _ if !inputs.is_empty() => self.relocate(inputs, outputs),
            _ if !int_inputs.is_empty() => self.relocate(int_inputs, int_outputs),
            _ => self.relocate(bool_inputs, bool_outputs),
        }
    }
}

impl MoveOp {
    /// Runs an op that only moves values of one dtype.
    fn relocate<V: Copy + Default>(&self, x: &[View<'_, V>], y: &mut [ViewMut<'_, V>]) -> Result<(), KernelError> {
        let first = x.first().ok_or_else(|| wrong(self))?;
        match self {
            MoveOp::Transpose { perm } => kernel::transpose(perm, *first, one(self, y)?),
            MoveOp::Concat { axis } => kernel::concat(*axis, x, one(self, y)?),
            MoveOp::Split { axis, .. } => kernel::split(*axis, *first, y),
            MoveOp::Slice(slice) => kernel::slice(slice, *first, one(self, y)?),
            MoveOp::Expand { .. } => kernel::expand(*first, one(self, y)?),
            MoveOp::Trilu { upper, k } => kernel::trilu(*upper, *k, *first, one(self, y)?),
            _ => return Err(wrong(self)),
        }
        Ok(())
    }
}

fn one<'s, 'a, V>(op: &MoveOp, outputs: &'s mut [ViewMut<'a, V>]) -> Result<&'s mut ViewMut<'a, V>, KernelError> {
    match outputs {
        [y] => Ok(y),
        _ => Err(wrong(op)),
    }
}

fn wrong(op: &MoveOp) -> KernelError {
    KernelError::Invalid { op: op.name(), message: "arguments are not of the dtypes its dtype rule gives" }
}

fn axis_in(check: Check, x: &[usize], axis: usize) -> Result<(), ShapeError> {
    if axis >= x.len() {
        return Err(check.err(alloc::format!("axis {axis} is out of range for input {x:?}")));
    }
    Ok(())
}

/// The shape Gather gives for `data` and `indices` along `axis`.
fn gathered(check: Check, data: &[usize], indices: &[usize], axis: usize) -> Result<Vec<usize>, ShapeError> {
    axis_in(check, data, axis)?;
    Ok(data[..axis].iter().chain(indices).chain(&data[axis + 1..]).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn shapes(op: impl Into<Op>, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        op.into().output_shapes(inputs)
    }

    #[test]
    fn shape_rules() {
        assert_eq!(shapes(MoveOp::Transpose { perm: vec![2, 0, 1] }, &[&[2, 3, 4]]).unwrap(), [[4, 2, 3]]);
        assert_eq!(shapes(MoveOp::Concat { axis: 1 }, &[&[2, 3], &[2, 1], &[2, 0]]).unwrap(), [[2, 4]]);
        assert_eq!(shapes(MoveOp::Split { axis: 0, sizes: vec![1, 3] }, &[&[4, 2]]).unwrap(), [[1, 2], [3, 2]]);
        assert_eq!(shapes(MoveOp::Expand { shape: vec![3, 1, 4] }, &[&[2, 1]]).unwrap(), [[3, 2, 4]]);
        assert_eq!(shapes(MoveOp::Gather { axis: 1 }, &[&[5, 7, 2], &[3, 4]]).unwrap(), [[5, 3, 4, 2]]);
        assert_eq!(shapes(MoveOp::Pad { pads: vec![1, 0, 2, 3], value: 0.0 }, &[&[2, 3]]).unwrap(), [[5, 6]]);
        let slice = Slice { axes: vec![1, 0], starts: vec![-1, 1], ends: vec![i64::MIN, i64::MAX], steps: vec![-2, 1] };
        // Axis 1 (size 5) walks 4, 2, 0; axis 0 (size 3) keeps 1, 2.
        assert_eq!(shapes(MoveOp::Slice(slice), &[&[3, 5]]).unwrap(), [[2, 3]]);
    }

    #[test]
    fn shape_rules_refuse_what_does_not_fit() {
        let e = shapes(MoveOp::Transpose { perm: vec![0, 0] }, &[&[2, 2]]).unwrap_err();
        assert_eq!(e.to_string(), "Transpose: perm [0, 0] is not a permutation of the axes of [2, 2]");
        let e = shapes(MoveOp::Concat { axis: 0 }, &[&[2, 3], &[2, 4]]).unwrap_err();
        assert!(e.message.contains("does not match"), "{e}");
        assert!(shapes(MoveOp::Split { axis: 0, sizes: vec![1, 1] }, &[&[3]]).is_err());
        let e = shapes(MoveOp::Expand { shape: vec![3] }, &[&[2]]).unwrap_err();
        assert_eq!(e.message, "shapes [2] and [3] do not broadcast");
        let zero_step = Slice { axes: vec![0], starts: vec![0], ends: vec![1], steps: vec![0] };
        assert!(shapes(MoveOp::Slice(zero_step), &[&[3]]).unwrap_err().message.contains("step"));
        assert!(shapes(MoveOp::Trilu { upper: true, k: 0 }, &[&[3]]).is_err());
        let e = Op::from(MoveOp::Gather { axis: 0 }).output_dtypes(&[DType::F32, DType::F32]).unwrap_err();
        assert_eq!(e.message, "indices (input 1) must be int64");
        assert!(shapes(MoveOp::Pad { pads: vec![usize::MAX, 0], value: 0.0 }, &[&[2]]).is_err());
    }

    #[test]
    fn int_and_bool_tensors_move_through_typed_arguments() {
        // Gather of i64 data (shape arithmetic): the indices are the last int input.
        let (data, ids) = ([10i64, 20, 30], [2i64, -3]);
        let mut y = [0i64; 2];
        let args = NodeArgs {
            inputs: &[],
            int_inputs: &[View { data: &data[..], shape: &[3] }, View { data: &ids[..], shape: &[2] }],
            bool_inputs: &[],
            outputs: &mut [],
            int_outputs: &mut [ViewMut { data: &mut y[..], shape: &[2] }],
            bool_outputs: &mut [],
        };
        Op::from(MoveOp::Gather { axis: 0 }).execute::<f32>(args).unwrap();
        assert_eq!(y, [30, 10]);
        // Concat of bool masks.
        let (a, b) = ([1u8, 0], [0u8]);
        let mut y = [9u8; 3];
        let args = NodeArgs {
            inputs: &[],
            int_inputs: &[],
            bool_inputs: &[View { data: &a[..], shape: &[2] }, View { data: &b[..], shape: &[1] }],
            outputs: &mut [],
            int_outputs: &mut [],
            bool_outputs: &mut [ViewMut { data: &mut y[..], shape: &[3] }],
        };
        Op::from(MoveOp::Concat { axis: 0 }).execute::<f64>(args).unwrap();
        assert_eq!(y, [1, 0, 0]);
        assert_eq!(Op::from(MoveOp::Concat { axis: 0 }).output_dtypes(&[DType::Bool, DType::Bool]).unwrap(), [DType::Bool]);
        let e = Op::from(MoveOp::Concat { axis: 0 }).output_dtypes(&[DType::Bool, DType::I64]).unwrap_err();
        assert_eq!(e.message, "input 1 is int64, input 0 is bool");
    }

    #[test]
    fn slice_ranges_follow_onnx_clamping() {
        assert_eq!(slice_range(5, 1, 4, 1), (1, 3, 1));
        assert_eq!(slice_range(5, -2, i64::MAX, 1), (3, 2, 1));
        assert_eq!(slice_range(5, 0, 5, 2), (0, 3, 2));
        assert_eq!(slice_range(5, 10, 20, 1).1, 0);
        assert_eq!(slice_range(5, i64::MAX, i64::MIN, -1), (4, 5, -1));
        assert_eq!(slice_range(5, 3, 0, -2), (3, 2, -2));
        assert_eq!(slice_range(0, i64::MIN, i64::MAX, -3), (0, 0, -3));
    }
}
