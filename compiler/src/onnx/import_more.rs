//! The importer's arms for DepthToSpace, SpaceToDepth, Einsum, OneHot, ReduceMin, Celu,
//! ThresholdedRelu, Shrink, LpNormalization, MeanVarianceNormalization, Hardmax and LRN, composed
//! from primitives pock already has (as in `import_composite.rs`, so autodiff, the CPU kernels
//! and the GPU backend cover them through those nodes):
//! - `DepthToSpace` (modes DCR and CRD) and `SpaceToDepth` are Reshape, Transpose, Reshape.
//! - `Einsum` of one operand is a ReduceSum over the letters the output drops and a Transpose;
//!   of two, each operand first sums the letters only it has and the output drops, is
//!   transposed to `[batch, kept, contracted]` / `[batch, contracted, kept]` and flattened to
//!   3-D, and one (Batch)MatMul and a Reshape and Transpose give the output. That covers the
//!   exporters' batched matmuls (`bhqd,bhkd->bhqk`, `...ij,...jk->...ik`), transposes,
//!   reductions and outer products (a contraction of length 1). A letter repeated within one
//!   operand (a diagonal), broadcast `...` axes of different sizes and three or more operands
//!   are refused.
//! - `OneHot` is `Where(unsqueeze(indices) == range(depth), on, off)`, negative indices
//!   counting from `depth` first; indices outside `[-depth, depth)` give a row of `off`.
//! - `ReduceMin` is `-ReduceMax(-x)` (on bools, no false value); `Celu` is `alpha * elu(x / alpha)`; `ThresholdedRelu` and
//!   `Shrink` are Wheres; `LpNormalization` divides by the kept L1 or L2 norm (a zero norm gives 0);
//!   `MeanVarianceNormalization` is ONNX's function body, `(x - E x) / (sqrt(E x² - (E x)²) +
//!   1e-9)`; `Hardmax` (forward only) is 1 at the first maximum, found as ArgMax finds it.
//! - `LRN` is the window sum of squares over channels as shifted Slices of the zero-padded
//!   squares, then `x / (bias + alpha / size * sum)^beta`.
//! - `If` with a condition known at compile time imports its taken branch in place.

use pock_engine::kernels::unary::{Abs, Elu, Neg, Sqrt};
use pock_engine::ops::{BroadcastOp, CastOp, DenseOp, MatMul, MatMulOp, MoveOp, Reduce, ReduceOp, Slice, UnaryFn, UnaryOp};

use super::{Ctx, Importer, Value};
use crate::ir::{DType, TensorId, Values};
use crate::onnx::{fold, Attribute, ImportError};

impl Importer<'_> {
    fn float_tensor(&mut self, ctx: &Ctx) -> Result<TensorId, ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        if self.dtype(x) != DType::F32 {
            return Err(ctx.err(format!(
                "its input is {}; pock supports {} on float32 tensors only",
                self.dtype(x).name(),
                ctx.node.op_type
            )));
        }
        Ok(x)
    }

    /// `t` transposed by `perm`, or `t` itself when `perm` is the identity.
    fn permuted(&mut self, ctx: &Ctx, name: &str, t: TensorId, perm: Vec<usize>) -> Result<TensorId, ImportError> {
        if perm.iter().enumerate().all(|(k, &p)| k == p) {
            return Ok(t);
        }
        self.emit(ctx, name, MoveOp::Transpose { perm }, &[t])
    }

    /// `t` reshaped to `shape`, or `t` itself when it has that shape.
    fn reshaped(&mut self, ctx: &Ctx, name: &str, t: TensorId, shape: Vec<usize>) -> Result<TensorId, ImportError> {
        if self.graph.shape(t) == shape.as_slice() {
            return Ok(t);
        }
        self.emit(ctx, name, DenseOp::Reshape { shape }, &[t])
    }

    /// DepthToSpace (DCR or CRD) and SpaceToDepth on `[N, C, H, W]`.
    pub(super) fn depth_space(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let b = ctx.int("blocksize", 0)?;
        let b =
            usize::try_from(b).ok().filter(|&b| b > 0).ok_or_else(|| ctx.err(format!("attribute 'blocksize' ({b}) must be positive")))?;
        let &[n, c, h, w] = xs.as_slice() else {
            return Err(ctx.err(format!("its input {xs:?} is not 4-D ([N, C, H, W])")));
        };
        let name = ctx.node.name.clone();
        let (split, perm, out) = if ctx.node.op_type == "DepthToSpace" {
            if !c.is_multiple_of(b * b) {
                return Err(ctx.err(format!("its channels {c} are not a multiple of blocksize² ({})", b * b)));
            }
            let out = vec![n, c / (b * b), h * b, w * b];
            match ctx.string("mode", "DCR")?.as_str() {
                "DCR" => (vec![n, b, b, c / (b * b), h, w], vec![0, 3, 4, 1, 5, 2], out),
                "CRD" => (vec![n, c / (b * b), b, b, h, w], vec![0, 1, 4, 2, 5, 3], out),
                other => return Err(ctx.err(format!("attribute 'mode' is '{other}'; ONNX defines DCR and CRD"))),
            }
        } else {
            if !h.is_multiple_of(b) || !w.is_multiple_of(b) {
                return Err(ctx.err(format!("its height {h} and width {w} are not multiples of blocksize {b}")));
            }
            // SpaceToDepth's `mode` (opset 28's, DCR before) mirrors DepthToSpace's.
            let perm = match ctx.string("mode", "DCR")?.as_str() {
                "DCR" => vec![0, 3, 5, 1, 2, 4],
                "CRD" => vec![0, 1, 3, 5, 2, 4],
                other => return Err(ctx.err(format!("attribute 'mode' is '{other}'; ONNX defines DCR and CRD"))),
            };
            (vec![n, c, h / b, b, w / b, b], perm, vec![n, c * b * b, h / b, w / b])
        };
        let t = self.emit(ctx, &format!("{name}.blocks"), DenseOp::Reshape { shape: split }, &[x])?;
        let t = self.emit(ctx, &format!("{name}.moved"), MoveOp::Transpose { perm }, &[t])?;
        let y = self.emit(ctx, &name, DenseOp::Reshape { shape: out }, &[t])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Einsum of one or two float operands (see the module comment).
    pub(super) fn einsum(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let names: Vec<&str> = ctx.node.inputs.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        if names.is_empty() || names.len() > 2 {
            return Err(ctx.err(format!(
                "it has {} operands; pock's Einsum takes one or two (write a longer contraction as a chain of two-operand Einsums)",
                names.len()
            )));
        }
        let mut xs = Vec::with_capacity(2);
        for n in &names {
            let t = self.tensor(ctx, n)?;
            if self.dtype(t) != DType::F32 {
                return Err(ctx.err(format!("its operand '{n}' is {}; pock's Einsum takes float32", self.dtype(t).name())));
            }
            xs.push(t);
        }
        let shapes: Vec<Vec<usize>> = xs.iter().map(|&t| self.graph.shape(t).to_vec()).collect();
        let equation = ctx.string("equation", "")?;
        let (terms, out) = parse_einsum(&equation, &shapes).map_err(|e| ctx.err(format!("its equation '{equation}': {e}")))?;
        // Every label's size, the same wherever it appears.
        let mut size = std::collections::BTreeMap::new();
        for (term, shape) in terms.iter().zip(&shapes) {
            for (&l, &d) in term.iter().zip(shape) {
                if *size.entry(l).or_insert(d) != d {
                    return Err(ctx.err(format!(
                        "its equation '{equation}' gives label {} sizes {} and {d}; pock does not broadcast Einsum operands",
                        label_name(l),
                        size[&l]
                    )));
                }
            }
        }
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let dims = |labels: &[u8]| labels.iter().map(|l| size[l]).collect::<Vec<usize>>();
        let pos = |labels: &[u8], l: u8| labels.iter().position(|&m| m == l).unwrap_or(usize::MAX);
        // Sum out what only one operand has and the output drops.
        let mut operands = Vec::with_capacity(2);
        for (k, (&x, term)) in xs.iter().zip(&terms).enumerate() {
            let others: Vec<u8> = terms.iter().enumerate().filter(|&(j, _)| j != k).flat_map(|(_, t)| t.iter().copied()).collect();
            let keep = |l: &u8| out.contains(l) || others.contains(l);
            let axes: Vec<usize> = (0..term.len()).filter(|&a| !keep(&term[a])).collect();
            let kept: Vec<u8> = term.iter().copied().filter(keep).collect();
            let t = if axes.is_empty() {
                x
            } else {
                self.emit(ctx, &n(&format!("sum{k}")), ReduceOp::ReduceSum(Reduce { axes, keepdims: false }), &[x])?
            };
            operands.push((t, kept));
        }
        if let [(t, labels)] = operands.as_slice() {
            let perm = out.iter().map(|&l| pos(labels, l)).collect();
            let y = self.permuted(ctx, &name, *t, perm)?;
            let y = if y == xs[0] { self.emit(ctx, &name, DenseOp::Reshape { shape: dims(&out) }, &[y])? } else { y };
            return self.set(ctx, 0, Value::Tensor(y));
        }
        let [(a, la), (b, lb)] = [operands[0].clone(), operands[1].clone()];
        let batch: Vec<u8> = out.iter().copied().filter(|l| la.contains(l) && lb.contains(l)).collect();
        let left: Vec<u8> = la.iter().copied().filter(|l| !lb.contains(l)).collect();
        let right: Vec<u8> = lb.iter().copied().filter(|l| !la.contains(l)).collect();
        let contracted: Vec<u8> = la.iter().copied().filter(|l| lb.contains(l) && !out.contains(l)).collect();
        let count = |labels: &[u8]| dims(labels).iter().product::<usize>();
        let (nb, nl, nr, nk) = (count(&batch), count(&left), count(&right), count(&contracted));
        let order_a: Vec<u8> = [&batch[..], &left, &contracted].concat();
        let order_b: Vec<u8> = [&batch[..], &contracted, &right].concat();
        let a = self.permuted(ctx, &n("a"), a, order_a.iter().map(|&l| pos(&la, l)).collect())?;
        let b = self.permuted(ctx, &n("b"), b, order_b.iter().map(|&l| pos(&lb, l)).collect())?;
        let plain = MatMul { trans_a: false, trans_b: false };
        let product = if nb == 1 {
            let a = self.reshaped(ctx, &n("a_matrix"), a, vec![nl, nk])?;
            let b = self.reshaped(ctx, &n("b_matrix"), b, vec![nk, nr])?;
            self.emit(ctx, &n("matmul"), DenseOp::MatMul(plain), &[a, b])?
        } else {
            let a = self.reshaped(ctx, &n("a_matrices"), a, vec![nb, nl, nk])?;
            let b = self.reshaped(ctx, &n("b_matrices"), b, vec![nb, nk, nr])?;
            self.emit(ctx, &n("matmul"), MatMulOp::BatchMatMul(plain), &[a, b])?
        };
        let labels: Vec<u8> = [&batch[..], &left, &right].concat();
        let unflat = self.reshaped(ctx, &n("unflattened"), product, dims(&labels))?;
        let y = self.permuted(ctx, &n("ordered"), unflat, out.iter().map(|&l| pos(&labels, l)).collect())?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// OneHot: `indices` (int64, run-time or constant), `depth` and `values` constant.
    pub(super) fn one_hot(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let mut idx = self.tensor(ctx, ctx.input(0)?)?;
        let depth = self.constant(ctx, ctx.input(1)?, "depth")?.scalar_f32().map_err(|e| ctx.err(format!("its depth: {e}")))?;
        if !(depth >= 1.0 && depth.fract() == 0.0) {
            return Err(ctx.err(format!("its depth {depth} is not a positive integer")));
        }
        let depth = depth as usize;
        let values = self.constant(ctx, ctx.input(2)?, "values")?;
        let (off, on) = match &values.data {
            Values::F32(v) if v.len() == 2 => (Values::F32(vec![v[0]]), Values::F32(vec![v[1]])),
            Values::I64(v) if v.len() == 2 => (Values::I64(vec![v[0]]), Values::I64(vec![v[1]])),
            _ => return Err(ctx.err("its values are not two float32 or int64 numbers ([off, on])")),
        };
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        match self.dtype(idx) {
            DType::I64 => {}
            DType::F32 => idx = self.emit(ctx, &n("indices"), CastOp::Cast { to: DType::I64 }, &[idx])?,
            other => return Err(ctx.err(format!("its indices are {}; pock takes int64 or float32 indices", other.name()))),
        }
        let shape = self.graph.shape(idx).to_vec();
        let rank = shape.len() + 1;
        let axis = fold::axis(ctx.int("axis", -1)?, rank).map_err(|e| ctx.err(e))?;
        let int = |this: &mut Self, what: &str, v: i64| this.graph.typed_constant(n(what), vec![], Values::I64(vec![v]));
        let (zero, len) = (int(self, "zero", 0), int(self, "depth", depth as i64));
        let negative = self.emit(ctx, &n("negative"), BroadcastOp::Less, &[idx, zero])?;
        let wrapped = self.emit(ctx, &n("wrapped"), BroadcastOp::Add, &[idx, len])?;
        let idx = self.emit(ctx, &n("from_end"), BroadcastOp::Where, &[negative, wrapped, idx])?;
        let mut unsqueezed = shape.clone();
        unsqueezed.insert(axis, 1);
        let idx = self.emit(ctx, &n("unsqueezed"), DenseOp::Reshape { shape: unsqueezed }, &[idx])?;
        let mut ramp_shape = vec![1; rank - axis];
        ramp_shape[0] = depth;
        let ramp = self.graph.typed_constant(n("range"), ramp_shape, Values::I64((0..depth as i64).collect()));
        let hit = self.emit(ctx, &n("hit"), BroadcastOp::Equal, &[idx, ramp])?;
        let on = self.graph.typed_constant(n("on"), vec![], on);
        let off = self.graph.typed_constant(n("off"), vec![], off);
        let y = self.emit(ctx, &name, BroadcastOp::Where, &[hit, on, off])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// ReduceMin: `-ReduceMax(-x)` over ReduceMax's axes and keepdims (`+inf` on an empty
    /// set, as ONNX's); on bools "all": no false value among them.
    pub(super) fn reduce_min(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let rank = self.graph.shape(x).len();
        let Some(axes) = self.reduce_axes(ctx, rank)? else { return self.alias(ctx) };
        let keepdims = ctx.int("keepdims", 1)? != 0;
        let name = ctx.node.name.clone();
        match self.dtype(x) {
            DType::F32 => {}
            DType::Bool => {
                let false_ = self.emit(ctx, &format!("{name}.not"), UnaryOp::Not, &[x])?;
                let f = self.emit(ctx, &format!("{name}.false"), CastOp::Cast { to: DType::F32 }, &[false_])?;
                let count = self.emit(ctx, &format!("{name}.count"), ReduceOp::ReduceSum(Reduce { axes, keepdims }), &[f])?;
                let zero = self.scalar(&format!("{name}.zero"), 0.0);
                let y = self.emit(ctx, &name, BroadcastOp::Equal, &[count, zero])?;
                return self.set(ctx, 0, Value::Tensor(y));
            }
            other => return Err(ctx.err(format!("its input is {}; pock's ReduceMin takes float32 or bool", other.name()))),
        }
        let negated = self.emit(ctx, &format!("{name}.negated"), UnaryOp::Map(UnaryFn::Neg(Neg)), &[x])?;
        let m = self.emit(ctx, &format!("{name}.max"), ReduceOp::ReduceMax(Reduce { axes, keepdims }), &[negated])?;
        let y = self.emit(ctx, &name, UnaryOp::Map(UnaryFn::Neg(Neg)), &[m])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Celu, ThresholdedRelu and Shrink.
    pub(super) fn piecewise(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_tensor(ctx)?;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let y = match ctx.node.op_type.as_str() {
            "Celu" => {
                let alpha = ctx.float("alpha", 1.0)?;
                if alpha == 0.0 {
                    return Err(ctx.err("attribute 'alpha' is 0; Celu divides by it"));
                }
                let a = self.scalar(&n("alpha"), alpha);
                let scaled = self.broadcast(ctx, &n("scaled"), BroadcastOp::Div, x, a)?;
                let e = self.emit(ctx, &n("elu"), UnaryOp::Map(UnaryFn::Elu(Elu { alpha: 1.0 })), &[scaled])?;
                self.broadcast(ctx, &name, BroadcastOp::Mul, e, a)?
            }
            "ThresholdedRelu" => {
                let alpha = self.scalar(&n("alpha"), ctx.float("alpha", 1.0)?);
                let zero = self.scalar(&n("zero"), 0.0);
                let above = self.emit(ctx, &n("above"), BroadcastOp::Greater, &[x, alpha])?;
                self.emit(ctx, &name, BroadcastOp::Where, &[above, x, zero])?
            }
            "Shrink" => {
                let (lambd, bias) = (ctx.float("lambd", 0.5)?, ctx.float("bias", 0.0)?);
                let (low, high) = (self.scalar(&n("low"), -lambd), self.scalar(&n("high"), lambd));
                let (b, zero) = (self.scalar(&n("bias"), bias), self.scalar(&n("zero"), 0.0));
                let below = self.emit(ctx, &n("below"), BroadcastOp::Less, &[x, low])?;
                let above = self.emit(ctx, &n("above"), BroadcastOp::Greater, &[x, high])?;
                let plus = self.broadcast(ctx, &n("plus_bias"), BroadcastOp::Add, x, b)?;
                let minus = self.broadcast(ctx, &n("minus_bias"), BroadcastOp::Sub, x, b)?;
                let upper = self.emit(ctx, &n("upper"), BroadcastOp::Where, &[above, minus, zero])?;
                self.emit(ctx, &name, BroadcastOp::Where, &[below, plus, upper])?
            }
            other => return Err(ctx.err(format!("{other} is not a composed piecewise function"))),
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// LpNormalization: `x / ||x||_p` along one axis, p 1 or 2.
    pub(super) fn lp_normalization(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_tensor(ctx)?;
        let rank = self.graph.shape(x).len();
        let axis = fold::axis(ctx.int("axis", -1)?, rank).map_err(|e| ctx.err(e))?;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let r = Reduce { axes: vec![axis], keepdims: true };
        let norm = match ctx.int("p", 2)? {
            1 => {
                let a = self.emit(ctx, &n("abs"), UnaryOp::Map(UnaryFn::Abs(Abs)), &[x])?;
                self.emit(ctx, &n("norm"), ReduceOp::ReduceSum(r), &[a])?
            }
            2 => {
                let sq = self.emit(ctx, &n("square"), DenseOp::Mul, &[x, x])?;
                let s = self.emit(ctx, &n("sum"), ReduceOp::ReduceSum(r), &[sq])?;
                self.emit(ctx, &n("norm"), UnaryOp::Map(UnaryFn::Sqrt(Sqrt)), &[s])?
            }
            p => return Err(ctx.err(format!("attribute 'p' is {p}; ONNX defines p 1 and 2"))),
        };
        // A zero norm (the whole slice 0) divides by 1 instead: the output is 0, as ONNX's
        // reference writes `0 / 0 = 0`, and no NaN reaches the gradient.
        let (zero, one) = (self.scalar(&n("zero"), 0.0), self.scalar(&n("one"), 1.0));
        let is_zero = self.emit(ctx, &n("is_zero"), BroadcastOp::Equal, &[norm, zero])?;
        let divisor = self.emit(ctx, &n("divisor"), BroadcastOp::Where, &[is_zero, one, norm])?;
        let y = self.broadcast(ctx, &name, BroadcastOp::Div, x, divisor)?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// MeanVarianceNormalization, as ONNX's function body computes it.
    pub(super) fn mean_variance_normalization(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_tensor(ctx)?;
        let rank = self.graph.shape(x).len();
        let axes = self.ints_attr(ctx, "axes")?.unwrap_or_else(|| vec![0, 2, 3]);
        let mut axes: Vec<usize> =
            axes.iter().map(|&a| fold::axis(a, rank)).collect::<Result<_, _>>().map_err(|e| ctx.err(format!("its axes: {e}")))?;
        axes.sort_unstable();
        axes.dedup();
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let r = Reduce { axes, keepdims: true };
        let mean = self.emit(ctx, &n("mean"), ReduceOp::ReduceMean(r.clone()), &[x])?;
        let mean_sq = self.emit(ctx, &n("mean_squared"), DenseOp::Mul, &[mean, mean])?;
        let sq = self.emit(ctx, &n("square"), DenseOp::Mul, &[x, x])?;
        let sq_mean = self.emit(ctx, &n("square_mean"), ReduceOp::ReduceMean(r), &[sq])?;
        let var = self.emit(ctx, &n("variance"), BroadcastOp::Sub, &[sq_mean, mean_sq])?;
        let std = self.emit(ctx, &n("std"), UnaryOp::Map(UnaryFn::Sqrt(Sqrt)), &[var])?;
        let eps = self.scalar(&n("epsilon"), 1e-9);
        let std = self.broadcast(ctx, &n("plus_epsilon"), BroadcastOp::Add, std, eps)?;
        let centered = self.broadcast(ctx, &n("centered"), BroadcastOp::Sub, x, mean)?;
        let y = self.broadcast(ctx, &name, BroadcastOp::Div, centered, std)?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Hardmax (forward only): 1.0 at the first maximum along the axis (opset 13's), 0.0 elsewhere.
    pub(super) fn hardmax(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_tensor(ctx)?;
        let xs = self.graph.shape(x).to_vec();
        let axis = fold::axis(ctx.int("axis", -1)?, xs.len()).map_err(|e| ctx.err(e))?;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let shape = self.graph.shape(x).to_vec();
        let len = shape[axis];
        if len > 1 << 24 {
            return Err(ctx.err(format!("its axis has {len} elements, more than pock's float32 index ramp holds exactly (2^24)")));
        }
        let kept = Reduce { axes: vec![axis], keepdims: true };
        let m = self.emit(ctx, &n("max"), ReduceOp::ReduceMax(kept.clone()), &[x])?;
        let hit = self.emit(ctx, &n("is_max"), BroadcastOp::Equal, &[x, m])?;
        let mut ramp_shape = vec![1; shape.len() - axis];
        ramp_shape[0] = len;
        let ramp = self.graph.constant(n("index"), ramp_shape, (0..len).map(|i| i as f32).collect());
        let none = self.scalar(&n("none"), len as f32);
        let picked = self.emit(ctx, &n("picked"), BroadcastOp::Where, &[hit, ramp, none])?;
        let negated = self.emit(ctx, &n("negated"), UnaryOp::Map(UnaryFn::Neg(Neg)), &[picked])?;
        let first = self.emit(ctx, &n("first_negated"), ReduceOp::ReduceMax(kept), &[negated])?;
        let first = self.emit(ctx, &n("first"), UnaryOp::Map(UnaryFn::Neg(Neg)), &[first])?;
        let is_first = self.emit(ctx, &n("is_first"), BroadcastOp::Equal, &[ramp, first])?;
        let y = self.emit(ctx, &name, CastOp::Cast { to: DType::F32 }, &[is_first])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// LRN (local response normalisation across channels, AlexNet and GoogLeNet era):
    /// `x / (bias + alpha / size * sum of x² over the size channels around c)^beta`, the window
    /// `floor((size - 1) / 2)` channels before `c` and `ceil((size - 1) / 2)` after, clipped at the
    /// ends. The window sum is `size` shifted Slices of the zero-padded squares.
    pub(super) fn lrn(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.float_tensor(ctx)?;
        let xs = self.graph.shape(x).to_vec();
        if xs.len() < 3 {
            return Err(ctx.err(format!("its input {xs:?} has no channel axis with spatial axes after it (rank 3 or more)")));
        }
        let size = ctx.int("size", 0)?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| ctx.err(format!("attribute 'size' is {size}; it must be positive")))?;
        let (alpha, beta, bias) = (ctx.float("alpha", 1e-4)?, ctx.float("beta", 0.75)?, ctx.float("bias", 1.0)?);
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let squares = self.emit(ctx, &n("square"), DenseOp::Mul, &[x, x])?;
        let (before, after) = ((size - 1) / 2, size / 2);
        let mut pads = vec![0; 2 * xs.len()];
        (pads[1], pads[xs.len() + 1]) = (before, after);
        let padded = self.emit(ctx, &n("padded"), MoveOp::Pad { pads, value: 0.0 }, &[squares])?;
        let mut window = None;
        for i in 0..size {
            let slice = Slice { axes: vec![1], starts: vec![i as i64], ends: vec![(i + xs[1]) as i64], steps: vec![1] };
            let s = self.emit(ctx, &n(&format!("shift{i}")), MoveOp::Slice(slice), &[padded])?;
            window = Some(match window {
                None => s,
                Some(w) => self.emit(ctx, &n(&format!("window{i}")), DenseOp::Add, &[w, s])?,
            });
        }
        let window = window.expect("size is positive");
        let scale = self.scalar(&n("alpha_over_size"), alpha / size as f32);
        let scaled = self.broadcast(ctx, &n("scaled"), BroadcastOp::Mul, window, scale)?;
        let bias = self.scalar(&n("bias"), bias);
        let base = self.broadcast(ctx, &n("base"), BroadcastOp::Add, scaled, bias)?;
        let beta = self.scalar(&n("beta"), beta);
        let divisor = self.broadcast(ctx, &n("divisor"), BroadcastOp::Pow, base, beta)?;
        let y = self.broadcast(ctx, &name, BroadcastOp::Div, x, divisor)?;
        self.set(ctx, 0, Value::Tensor(y))
    }
}

/// A label's name in messages: its letter, or its place in `...`.
fn label_name(l: u8) -> String {
    if l.is_ascii_alphabetic() {
        format!("'{}'", l as char)
    } else {
        format!("'...' axis {l}")
    }
}

/// An Einsum equation's labels per operand and for the output, `...` expanded to labels `0..k`
/// (counted from the right, so operands' ellipses align as numpy's). Without `->` the output is
/// `...` then the letters used once, sorted, as numpy's implicit mode.
fn parse_einsum(equation: &str, shapes: &[Vec<usize>]) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let inputs: Vec<&str> = lhs.split(',').collect();
    if inputs.len() != shapes.len() {
        return Err(format!("it names {} operands, the node has {}", inputs.len(), shapes.len()));
    }
    let mut ellipsis = 0;
    let mut terms = Vec::with_capacity(inputs.len());
    for (term, shape) in inputs.iter().zip(shapes) {
        let letters = term.replace("...", "");
        if !letters.bytes().all(|b| b.is_ascii_alphabetic()) || term.matches("...").count() > 1 {
            return Err(format!("operand term '{term}' is not letters with at most one '...'"));
        }
        let mut labels = Vec::with_capacity(shape.len());
        if let Some((before, _)) = term.split_once("...") {
            let k = shape
                .len()
                .checked_sub(letters.len())
                .ok_or_else(|| format!("term '{term}' has more letters than its operand {shape:?} has axes"))?;
            ellipsis = ellipsis.max(k);
            labels.extend(before.bytes());
            labels.extend((0..k as u8).rev());
            labels.extend(term[before.len() + 3..].bytes());
        } else {
            if letters.len() != shape.len() {
                return Err(format!("term '{term}' names {} axes of an operand {shape:?}", letters.len()));
            }
            labels.extend(letters.bytes());
        }
        if let Some(l) = labels.iter().enumerate().find(|&(k, l)| labels[..k].contains(l)).map(|(_, l)| *l) {
            return Err(format!(
                "label {} appears twice in '{term}' (a diagonal), which pock does not support; take the diagonal with a Mul by an eye \
                 matrix and a ReduceSum",
                label_name(l)
            ));
        }
        terms.push(labels);
    }
    let out: Vec<u8> = match rhs {
        Some(r) => {
            let letters = r.replace("...", "");
            if !letters.bytes().all(|b| b.is_ascii_alphabetic()) || r.matches("...").count() > 1 {
                return Err(format!("output term '{r}' is not letters with at most one '...'"));
            }
            let mut out = Vec::new();
            match r.split_once("...") {
                Some((before, after)) => {
                    out.extend(before.bytes());
                    out.extend((0..ellipsis as u8).rev());
                    out.extend(after.bytes());
                }
                None => out.extend(r.bytes()),
            }
            out
        }
        None => {
            let mut once: Vec<u8> = terms.iter().flatten().copied().filter(|l| l.is_ascii_alphabetic()).collect();
            once.sort_unstable();
            let single: Vec<u8> = once.iter().copied().filter(|l| once.iter().filter(|m| *m == l).count() == 1).collect();
            (0..ellipsis as u8).rev().chain(single).collect()
        }
    };
    for (k, l) in out.iter().enumerate() {
        if out[..k].contains(l) {
            return Err(format!("label {} appears twice in the output", label_name(*l)));
        }
        if !terms.iter().any(|t| t.contains(l)) {
            return Err(format!("output label {} is in no operand", label_name(*l)));
        }
    }
    Ok((terms, out))
}

impl Importer<'_> {
    /// If whose condition is known at compile time (an exporter's test of a static shape, such
    /// as torch's TorchScript export of `LocalResponseNorm` on the input's rank): the taken
    /// branch's initializers and nodes are imported in place, and its outputs become the If's.
    /// A condition computed at run time is refused: a static plan has one program.
    pub(super) fn if_constant(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let name = ctx.input(0)?;
        if let Some(Value::Tensor(_)) = self.values.get(name) {
            return Err(ctx.err(
                "its condition is computed at run time (data-dependent control flow), which a static training plan cannot \
                 hold; compute both branches and choose with Where, or export the model without the branch",
            ));
        }
        let cond = self.constant(ctx, name, "condition")?;
        let taken = match &cond.data {
            fold::ConstData::Bool(v) if v.len() == 1 => v[0],
            fold::ConstData::I64(v) if v.len() == 1 => v[0] != 0,
            _ => return Err(ctx.err(format!("its condition '{name}' is not a one-element bool tensor"))),
        };
        let key = if taken { "then_branch" } else { "else_branch" };
        let Some(Attribute::Graph(branch)) = ctx.node.attribute(key) else {
            return Err(ctx.err(format!("attribute '{key}' is missing or not a graph")));
        };
        if branch.outputs.len() != ctx.node.outputs.len() {
            return Err(ctx.err(format!("its {key} has {} outputs, the node {}", branch.outputs.len(), ctx.node.outputs.len())));
        }
        let branch = branch.clone();
        for t in &branch.initializers {
            self.values.insert(t.name.clone(), Value::Const(fold::Const::from_tensor(t)));
        }
        for node in &branch.nodes {
            self.import_node(node)?;
        }
        for (i, out) in branch.outputs.iter().enumerate() {
            let v = self.values.get(out).cloned().ok_or_else(|| self.undefined(ctx, out))?;
            self.set(ctx, i, v)?;
        }
        Ok(())
    }
}
