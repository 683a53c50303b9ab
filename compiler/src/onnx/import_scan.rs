//! The importer's arms for IsNaN, IsInf, CumSum, GatherElements and GatherND, composed from primitives pock already has
//! (so autodiff, the planner, the CPU kernels and the GPU backend cover them through those
//! nodes, as in `import_composite.rs`):
//! - `IsNaN(x)` is `Not(x == x)`: the compare kernels follow IEEE 754 on both backends, so a NaN
//!   is the one value unequal to itself. torch's dynamo exporter writes it after every
//!   attention softmax (`Where(IsNaN(p), 0, p)`), so HF transformers need it.
//! - `IsInf(x)` is `|x| == inf`, or `x == +inf` / `x == -inf` with `detect_negative` /
//!   `detect_positive` 0.
//! - `CumSum(x, axis)` is a Hillis-Steele scan: `ceil(log2 L)` rounds of `y += shift(y, 2^k)`
//!   along the axis, each shift a Slice and a Concat with zeros. It is exact on integers (RoBERTa
//!   numbers its positions with a cumulative sum of the non-padding mask), differentiable on
//!   floats (Slice, Concat and Add have gradients), and `exclusive` / `reverse` are one more
//!   shift and the mirrored shift direction.
//! - `GatherElements(data, indices, axis)` on run-time indices (constant ones fold) is one
//!   `Gather` from the flattened data at `index * stride(axis) + base`, `base` a compile-time
//!   table of the other coordinates' offsets. Any dtype Gather takes, and the data's gradient is
//!   Gather's scatter-add. An index outside the axis is sent past the end, so the Gather kernel
//!   reports it instead of reading a neighbouring row. RoBERTa gathers its token types this way.
//! - `GatherND(data, indices, batch_dims)` likewise: one Gather of the rows of the data with its
//!   batch and indexed axes flattened, the row the sum of each index component times its
//!   stride plus a compile-time table of the batch offsets (HF BERT's dynamo export picks its
//!   attention mask's entries this way).

use pock_engine::ops::{BroadcastOp, DenseOp, MoveOp, Slice, UnaryOp};

use super::{Ctx, Importer, Value};
use crate::ir::{DType, TensorId, Values};
use crate::onnx::fold::strides;
use crate::onnx::ImportError;

impl Importer<'_> {
    /// IsNaN: `Not(Equal(x, x))`.
    pub(super) fn is_nan(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_input(ctx)?;
        let name = ctx.node.name.clone();
        let same = self.emit(ctx, &format!("{name}.same"), BroadcastOp::Equal, &[x, x])?;
        let y = self.emit(ctx, &name, UnaryOp::Not, &[same])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// IsInf: `|x| == inf`, or one sign of infinity as the attributes ask.
    pub(super) fn is_inf(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_input(ctx)?;
        let name = ctx.node.name.clone();
        let (positive, negative) = (ctx.int("detect_positive", 1)? != 0, ctx.int("detect_negative", 1)? != 0);
        let y = match (positive, negative) {
            (true, true) => {
                let a = self.emit(
                    ctx,
                    &format!("{name}.abs"),
                    UnaryOp::Map(pock_engine::ops::UnaryFn::Abs(pock_engine::kernels::unary::Abs)),
                    &[x],
                )?;
                let inf = self.scalar(&format!("{name}.inf"), f32::INFINITY);
                self.emit(ctx, &name, BroadcastOp::Equal, &[a, inf])?
            }
            (true, false) | (false, true) => {
                let inf = self.scalar(&format!("{name}.inf"), if positive { f32::INFINITY } else { f32::NEG_INFINITY });
                self.emit(ctx, &name, BroadcastOp::Equal, &[x, inf])?
            }
            (false, false) => {
                // Neither sign: every element is false (x == NaN never holds).
                let nan = self.scalar(&format!("{name}.nan"), f32::NAN);
                self.emit(ctx, &name, BroadcastOp::Equal, &[x, nan])?
            }
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    fn float_input(&mut self, ctx: &Ctx) -> Result<TensorId, ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        if self.dtype(x) != DType::F32 {
            return Err(ctx.err(format!("its input is {:?}; pock supports {} on float32 tensors only", self.dtype(x), ctx.node.op_type)));
        }
        Ok(x)
    }

    /// CumSum along a constant axis, by log-step shifted additions (see the module comment).
    pub(super) fn cum_sum(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let axis = self.const_ints(ctx, ctx.input(1)?, "axis")?;
        let shape = self.graph.shape(x).to_vec();
        let rank = shape.len() as i64;
        let axis = match axis.as_slice() {
            [a] if (-rank..rank).contains(a) => a.rem_euclid(rank.max(1)) as usize,
            _ => return Err(ctx.err(format!("its axis {axis:?} is not one integer within the input's rank {rank}"))),
        };
        let dtype = self.dtype(x);
        if !matches!(dtype, DType::F32 | DType::I64) {
            return Err(ctx.err(format!("its input is {dtype:?}; pock's CumSum takes float32 or int64")));
        }
        let (exclusive, reverse) = (ctx.int("exclusive", 0)? != 0, ctx.int("reverse", 0)? != 0);
        let name = ctx.node.name.clone();
        let len = shape[axis];
        let mut y = x;
        let mut k = 1;
        let mut round = 0;
        while k < len {
            let moved = self.shift(ctx, &format!("{name}.shift{round}"), y, axis, k, reverse)?;
            y = self.emit(ctx, &format!("{name}.sum{round}"), BroadcastOp::Add, &[y, moved])?;
            k *= 2;
            round += 1;
        }
        if exclusive {
            y = self.shift(ctx, &format!("{name}.exclusive"), y, axis, 1, reverse)?;
        }
        if y == x {
            // A length-1 axis (or empty): the sum is the input; give the output its own node.
            y = self.emit(ctx, &name, DenseOp::Reshape { shape: shape.clone() }, &[x])?;
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// `t` moved `by` places along `axis` towards higher indices (or lower, `reverse`), zeros
    /// shifted in: `Concat(zeros, t[..len - by])` or `Concat(t[by..], zeros)`.
    fn shift(&mut self, ctx: &Ctx, name: &str, t: TensorId, axis: usize, by: usize, reverse: bool) -> Result<TensorId, ImportError> {
        let shape = self.graph.shape(t).to_vec();
        let len = shape[axis];
        let by = by.min(len);
        let mut zero_shape = shape.clone();
        zero_shape[axis] = by;
        let count = zero_shape.iter().product();
        let values = match self.dtype(t) {
            DType::I64 => Values::I64(vec![0; count]),
            _ => Values::F32(vec![0.0; count]),
        };
        let zeros = self.graph.typed_constant(format!("{name}.zeros"), zero_shape, values);
        if by == len {
            return Ok(zeros);
        }
        let (start, end) = if reverse { (by, len) } else { (0, len - by) };
        let s = Slice { axes: vec![axis], starts: vec![start as i64], ends: vec![end as i64], steps: vec![1] };
        let kept = self.emit(ctx, &format!("{name}.kept"), MoveOp::Slice(s), &[t])?;
        let parts = if reverse { [kept, zeros] } else { [zeros, kept] };
        self.emit(ctx, name, MoveOp::Concat { axis }, &parts)
    }

    /// GatherElements on run-time indices, as one flat Gather (see the module comment).
    pub(super) fn gather_elements(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let data = self.tensor(ctx, ctx.input(0)?)?;
        let idx = self.tensor(ctx, ctx.input(1)?)?;
        let (dims, idims) = (self.graph.shape(data).to_vec(), self.graph.shape(idx).to_vec());
        let rank = dims.len();
        if self.dtype(idx) != DType::I64 {
            return Err(ctx.err(format!("its indices are {:?}; pock takes int64 indices", self.dtype(idx))));
        }
        if idims.len() != rank || rank == 0 {
            return Err(ctx.err(format!("its indices {idims:?} and data {dims:?} differ in rank")));
        }
        let a = crate::onnx::fold::axis(ctx.int("axis", 0)?, rank).map_err(|e| ctx.err(e))?;
        if let Some(d) = (0..rank).find(|&d| d != a && idims[d] > dims[d]) {
            return Err(ctx.err(format!("its indices {idims:?} exceed the data {dims:?} on axis {d}")));
        }
        let strides = strides(&dims);
        let numel: usize = dims.iter().product();
        // Each index element's offset in the data along every axis but `a`.
        let base = offsets(&idims, |d| if d == a { 0 } else { strides[d] });
        let name = ctx.node.name.clone();
        let scaled = self.index_term(ctx, &name, idx, dims[a], strides[a], numel)?;
        let base = self.graph.typed_constant(format!("{name}.base"), idims.clone(), Values::I64(base));
        let flat_index = self.emit(ctx, &format!("{name}.index"), BroadcastOp::Add, &[scaled, base])?;
        let flat = self.emit(ctx, &format!("{name}.flat"), DenseOp::Reshape { shape: vec![numel] }, &[data])?;
        let y = self.emit(ctx, &name, MoveOp::Gather { axis: 0 }, &[flat, flat_index])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// `idx * stride` for indices into an axis of `len`: negative ones count from the end, and
    /// anything still outside `[0, len)` becomes `past * stride`, at or beyond the end of a
    /// flattened tensor of `past` elements, so the Gather reading it reports the bad index.
    fn index_term(
        &mut self,
        ctx: &Ctx,
        name: &str,
        idx: TensorId,
        len: usize,
        stride: usize,
        past: usize,
    ) -> Result<TensorId, ImportError> {
        let n = |s: &str| format!("{name}.{s}");
        let int = |this: &mut Self, what: &str, v: i64| this.graph.typed_constant(n(what), vec![], Values::I64(vec![v]));
        let (zero, len, past) = (int(self, "zero", 0), int(self, "len", len as i64), int(self, "past", past as i64));
        let negative = self.emit(ctx, &n("negative"), BroadcastOp::Less, &[idx, zero])?;
        let wrapped = self.emit(ctx, &n("wrapped"), BroadcastOp::Add, &[idx, len])?;
        let idx = self.emit(ctx, &n("from_end"), BroadcastOp::Where, &[negative, wrapped, idx])?;
        let below = self.emit(ctx, &n("below"), BroadcastOp::Less, &[idx, zero])?;
        let above = self.emit(ctx, &n("above"), BroadcastOp::GreaterOrEqual, &[idx, len])?;
        let outside = self.emit(ctx, &n("outside"), BroadcastOp::Or, &[below, above])?;
        let idx = self.emit(ctx, &n("checked"), BroadcastOp::Where, &[outside, past, idx])?;
        let stride = int(self, "stride", stride as i64);
        self.emit(ctx, &n("scaled"), BroadcastOp::Mul, &[idx, stride])
    }

    /// GatherND (any `batch_dims`), as one Gather from the data with its indexed axes flattened
    /// into one: the row is the sum of each index component times its stride, plus a
    /// compile-time table of the batch coordinates' offsets.
    pub(super) fn gather_nd(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let data = self.tensor(ctx, ctx.input(0)?)?;
        let idx = self.tensor(ctx, ctx.input(1)?)?;
        let (dims, idims) = (self.graph.shape(data).to_vec(), self.graph.shape(idx).to_vec());
        if self.dtype(idx) != DType::I64 {
            return Err(ctx.err(format!("its indices are {:?}; pock takes int64 indices", self.dtype(idx))));
        }
        let b = usize::try_from(ctx.int("batch_dims", 0)?).map_err(|_| ctx.err("batch_dims is negative"))?;
        let k = idims.last().copied().unwrap_or(0);
        if idims.len() < b + 1 || k == 0 || dims.len() < b + k || idims[..b] != dims[..b] {
            return Err(ctx.err(format!(
                "its indices {idims:?} do not index the data {dims:?} with batch_dims {b} (the indices' last axis must be 1 to \
                 rank - batch_dims, and the leading batch_dims axes must agree)"
            )));
        }
        let lead = idims[..idims.len() - 1].to_vec();
        let mut out = lead.clone();
        out.extend_from_slice(&dims[b + k..]);
        let rows: usize = dims[..b + k].iter().product();
        let inner: usize = dims[b + k..].iter().product();
        let strides = strides(&dims[..b + k]);
        // Each index tuple's first row: its batch coordinates' offset.
        let base = offsets(&lead, |d| if d < b { strides[d] } else { 0 });
        let name = ctx.node.name.clone();
        let mut row = self.graph.typed_constant(format!("{name}.base"), lead.clone(), Values::I64(base));
        for j in 0..k {
            let q = format!("{name}.c{j}");
            let axis = lead.len();
            let s = Slice { axes: vec![axis], starts: vec![j as i64], ends: vec![j as i64 + 1], steps: vec![1] };
            let c = self.emit(ctx, &q, MoveOp::Slice(s), &[idx])?;
            let c = self.emit(ctx, &format!("{q}.flat"), DenseOp::Reshape { shape: lead.clone() }, &[c])?;
            let term = self.index_term(ctx, &q, c, dims[b + j], strides[b + j], rows)?;
            row = self.emit(ctx, &format!("{q}.row"), BroadcastOp::Add, &[row, term])?;
        }
        let table = self.emit(ctx, &format!("{name}.rows"), DenseOp::Reshape { shape: vec![rows, inner] }, &[data])?;
        let g = self.emit(ctx, &format!("{name}.gather"), MoveOp::Gather { axis: 0 }, &[table, row])?;
        let y = self.emit(ctx, &name, DenseOp::Reshape { shape: out }, &[g])?;
        self.set(ctx, 0, Value::Tensor(y))
    }
}

/// For each element of a tensor of shape `shape`, in row-major order, the sum over its axes `d`
/// of its coordinate along `d` times `stride(d)` (0 for an axis that does not count).
fn offsets(shape: &[usize], stride: impl Fn(usize) -> usize) -> Vec<i64> {
    let count: usize = shape.iter().product();
    let mut table = Vec::with_capacity(count);
    for k in 0..count {
        let (mut rest, mut offset) = (k, 0usize);
        for d in (0..shape.len()).rev() {
            offset += (rest % shape[d]) * stride(d);
            rest /= shape[d];
        }
        table.push(offset as i64);
    }
    table
}
