//! The importer's arms for ONNX ops that pock composes exactly from primitives it already has:
//! PRelu, Mish, Selu, Softsign, GlobalMaxPool, the variadic Sum and Mean, ReduceL2,
//! ReduceSumSquare, ReduceLogSumExp, ArgMax, InstanceNormalization and GroupNormalization
//! (Resize and ConvTranspose are in `import_resize.rs`).
//!
//! No engine op is added for them: each expands into nodes of the unary, broadcast, reduce,
//! movement and cast families, so autodiff, fusion, the memory planner, the CPU fast kernels and
//! the GPU backend all cover them through those nodes, and their gradients are the primitives'.

use pock_engine::kernels::unary::{Abs, Elu, Log, Neg, Softplus, Sqrt, Tanh};
use pock_engine::ops::{BroadcastOp, CastOp, DenseOp, Reduce, ReduceOp, UnaryFn, UnaryOp};

use super::{Ctx, Importer, Value};
use crate::ir::{DType, TensorId};
use crate::onnx::{fold, DataType, ImportError};

impl Importer<'_> {
    fn map(&mut self, ctx: &Ctx, name: &str, f: UnaryFn, x: TensorId) -> Result<TensorId, ImportError> {
        self.emit(ctx, name, UnaryOp::Map(f), &[x])
    }

    /// PRelu: `slope * x` where `x < 0`, else `x`, the slope broadcast to `x` (a PyTorch export's
    /// `[C, 1, 1]`): `Where(x < 0, x * slope, x)`, so the slope's gradient is the sum of
    /// `dy * x` over the negative inputs, as PyTorch's.
    pub(super) fn prelu(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let slope = self.tensor(ctx, ctx.input(1)?)?;
        let name = ctx.node.name.clone();
        let zero = self.scalar(&format!("{name}.zero"), 0.0);
        let negative = self.emit(ctx, &format!("{name}.negative"), BroadcastOp::Less, &[x, zero])?;
        let scaled = self.broadcast(ctx, &format!("{name}.scaled"), BroadcastOp::Mul, x, slope)?;
        let y = self.emit(ctx, &name, BroadcastOp::Where, &[negative, scaled, x])?;
        if self.graph.shape(y) != self.graph.shape(x) {
            return Err(ctx.err(format!(
                "its slope {:?} does not broadcast to the input {:?} (PRelu's slope must be unidirectionally broadcastable to X)",
                self.graph.shape(slope),
                self.graph.shape(x)
            )));
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Mish `x * tanh(softplus(x))`, Selu `gamma * elu_alpha(x)` and Softsign `x / (1 + |x|)`.
    pub(super) fn activation(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let y = match ctx.node.op_type.as_str() {
            "Mish" => {
                let sp = self.map(ctx, &n("softplus"), UnaryFn::Softplus(Softplus), x)?;
                let t = self.map(ctx, &n("tanh"), UnaryFn::Tanh(Tanh), sp)?;
                self.emit(ctx, &name, DenseOp::Mul, &[x, t])?
            }
            "Selu" => {
                let alpha = ctx.float("alpha", 1.673_263_2)?;
                let gamma = ctx.float("gamma", 1.050_701)?;
                let e = self.map(ctx, &n("elu"), UnaryFn::Elu(Elu { alpha }), x)?;
                let g = self.scalar(&n("gamma"), gamma);
                self.broadcast(ctx, &name, BroadcastOp::Mul, e, g)?
            }
            "Softsign" => {
                let a = self.map(ctx, &n("abs"), UnaryFn::Abs(Abs), x)?;
                let one = self.scalar(&n("one"), 1.0);
                let d = self.broadcast(ctx, &n("denominator"), BroadcastOp::Add, a, one)?;
                self.broadcast(ctx, &name, BroadcastOp::Div, x, d)?
            }
            other => return Err(ctx.err(format!("{other} is not a composed activation"))),
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// GlobalMaxPool: ReduceMax over every axis after the channels, kept.
    pub(super) fn global_max_pool(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let rank = self.graph.shape(x).len();
        if rank < 3 {
            return Err(ctx.err(format!("its input {:?} has no spatial axis (GlobalMaxPool reads [N, C, ...])", self.graph.shape(x))));
        }
        let r = Reduce { axes: (2..rank).collect(), keepdims: true };
        let y = self.emit(ctx, &ctx.node.name, ReduceOp::ReduceMax(r), &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Sum and Mean of any number of inputs, broadcast: an Add chain (divided by the count for
    /// Mean). One input is the identity.
    pub(super) fn variadic(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let names: Vec<&str> = ctx.node.inputs.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        if names.is_empty() {
            return Err(ctx.err("it has no inputs"));
        }
        let mean = ctx.node.op_type == "Mean";
        let name = ctx.node.name.clone();
        let mut y = self.tensor(ctx, names[0])?;
        if mean && self.dtype(y) != DType::F32 {
            return Err(ctx.err(format!("Mean of {} tensors is not supported: pock's Mean takes float32", self.dtype(y).name())));
        }
        for (k, b) in names.iter().enumerate().skip(1) {
            let b = self.tensor(ctx, b)?;
            let step = if k + 1 == names.len() && !mean { name.clone() } else { format!("{name}.{k}") };
            y = self.broadcast(ctx, &step, BroadcastOp::Add, y, b)?;
        }
        if mean && names.len() > 1 {
            let count = self.scalar(&format!("{name}.count"), names.len() as f32);
            y = self.broadcast(ctx, &name, BroadcastOp::Div, y, count)?;
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// ReduceL2 `sqrt(sum(x * x))`, ReduceSumSquare `sum(x * x)`, ReduceL1 `sum(|x|)`,
    /// ReduceLogSum `log(sum(x))` and ReduceLogSumExp `m + log(sum(exp(x - m)))` with `m` the
    /// kept maximum over the same axes (stable for large inputs). With `noop_with_empty_axes` and
    /// no axes, the reduction is skipped and the elementwise part stays (`|x|`, `x * x`, `|x|`,
    /// `log(x)`, `x`), as ONNX's reference computes.
    pub(super) fn reduce_composite(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        if self.dtype(x) != DType::F32 {
            return Err(ctx.err(format!(
                "{} of {} tensors is not supported: pock computes it in float32",
                ctx.node.op_type,
                self.dtype(x).name()
            )));
        }
        let axes = self.reduce_axes(ctx, xs.len())?;
        let keepdims = ctx.int("keepdims", 1)? != 0;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let op = ctx.node.op_type.clone();
        let Some(axes) = axes else {
            let y = match op.as_str() {
                "ReduceL2" | "ReduceL1" => self.map(ctx, &name, UnaryFn::Abs(Abs), x)?,
                "ReduceSumSquare" => self.emit(ctx, &name, DenseOp::Mul, &[x, x])?,
                "ReduceLogSum" => self.map(ctx, &name, UnaryFn::Log(Log), x)?,
                _ => x,
            };
            return self.set(ctx, 0, Value::Tensor(y));
        };
        let r = Reduce { axes, keepdims };
        let y = match op.as_str() {
            "ReduceL2" | "ReduceSumSquare" => {
                let sq = self.emit(ctx, &n("square"), DenseOp::Mul, &[x, x])?;
                let sum_name = if op == "ReduceL2" { n("sum") } else { name.clone() };
                let s = self.emit(ctx, &sum_name, ReduceOp::ReduceSum(r), &[sq])?;
                if op == "ReduceL2" {
                    self.map(ctx, &name, UnaryFn::Sqrt(Sqrt), s)?
                } else {
                    s
                }
            }
            "ReduceL1" => {
                let a = self.map(ctx, &n("abs"), UnaryFn::Abs(Abs), x)?;
                self.emit(ctx, &name, ReduceOp::ReduceSum(r), &[a])?
            }
            "ReduceLogSum" => {
                let s = self.emit(ctx, &n("sum"), ReduceOp::ReduceSum(r), &[x])?;
                self.map(ctx, &name, UnaryFn::Log(Log), s)?
            }
            "ReduceLogSumExp" => {
                let kept = Reduce { keepdims: true, ..r.clone() };
                let m = self.emit(ctx, &n("max"), ReduceOp::ReduceMax(kept), &[x])?;
                let d = self.broadcast(ctx, &n("shifted"), BroadcastOp::Sub, x, m)?;
                let e = self.map(ctx, &n("exp"), UnaryFn::Exp(pock_engine::kernels::unary::Exp), d)?;
                let s = self.emit(ctx, &n("sum"), ReduceOp::ReduceSum(r), &[e])?;
                let l = self.map(ctx, &n("log"), UnaryFn::Log(Log), s)?;
                let m = if keepdims {
                    m
                } else {
                    let shape = self.graph.shape(l).to_vec();
                    self.emit(ctx, &n("max_squeezed"), DenseOp::Reshape { shape }, &[m])?
                };
                self.broadcast(ctx, &name, BroadcastOp::Add, l, m)?
            }
            other => return Err(ctx.err(format!("{other} is not a composed reduction"))),
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// ArgMax (forward only: its int64 output has no gradient): the maximum along the axis, the
    /// positions equal to it, and the smallest (or with `select_last_index` the largest) index
    /// among them, from a constant index ramp: `-max(-where(x == max, i, n))` or
    /// `max(where(x == max, i, -1))`, cast to int64. Indices are exact in float32 up to 2^24.
    pub(super) fn arg_max(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        if self.dtype(x) != DType::F32 {
            return Err(ctx.err(format!(
                "{} of {} tensors is not supported: pock's ArgMax and ArgMin take float32",
                ctx.node.op_type,
                self.dtype(x).name()
            )));
        }
        let axis = fold::axis(ctx.int("axis", 0)?, xs.len()).map_err(|e| ctx.err(e))?;
        let keepdims = ctx.int("keepdims", 1)? != 0;
        let last = ctx.int("select_last_index", 0)? != 0;
        let len = xs[axis];
        if len > 1 << 24 {
            return Err(ctx.err(format!("its axis has {len} elements, more than pock's float32 index ramp holds exactly (2^24)")));
        }
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        // ArgMin is ArgMax of -x (negation is exact, so ties stay ties).
        let x = if ctx.node.op_type == "ArgMin" { self.map(ctx, &n("negated_input"), UnaryFn::Neg(Neg), x)? } else { x };
        let kept = Reduce { axes: vec![axis], keepdims: true };
        let m = self.emit(ctx, &n("max"), ReduceOp::ReduceMax(kept), &[x])?;
        let hit = self.emit(ctx, &n("is_max"), BroadcastOp::Equal, &[x, m])?;
        let mut ramp_shape = vec![1; xs.len()];
        ramp_shape[axis] = len;
        let ramp = self.graph.constant(n("index"), ramp_shape, (0..len).map(|i| i as f32).collect());
        let r = Reduce { axes: vec![axis], keepdims };
        let index = if last {
            let none = self.scalar(&n("none"), -1.0);
            let picked = self.emit(ctx, &n("picked"), BroadcastOp::Where, &[hit, ramp, none])?;
            self.emit(ctx, &n("last"), ReduceOp::ReduceMax(r), &[picked])?
        } else {
            let none = self.scalar(&n("none"), len as f32);
            let picked = self.emit(ctx, &n("picked"), BroadcastOp::Where, &[hit, ramp, none])?;
            let negated = self.map(ctx, &n("negated"), UnaryFn::Neg(Neg), picked)?;
            let first = self.emit(ctx, &n("first_negated"), ReduceOp::ReduceMax(r), &[negated])?;
            self.map(ctx, &n("first"), UnaryFn::Neg(Neg), first)?
        };
        let y = self.emit(ctx, &name, CastOp::Cast { to: DType::I64 }, &[index])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)` over `axes` (kept): LayerNormalization's
    /// expansion, shared by the instance and group norms. Returns `[mean, std, normalized]`.
    pub(super) fn normalize(
        &mut self,
        ctx: &Ctx,
        name: &str,
        x: TensorId,
        axes: Vec<usize>,
        eps: f32,
    ) -> Result<[TensorId; 3], ImportError> {
        let n = |s: &str| format!("{name}.{s}");
        let r = Reduce { axes, keepdims: true };
        let mean = self.emit(ctx, &n("mean"), ReduceOp::ReduceMean(r.clone()), &[x])?;
        let d = self.broadcast(ctx, &n("centered"), BroadcastOp::Sub, x, mean)?;
        let sq = self.emit(ctx, &n("square"), DenseOp::Mul, &[d, d])?;
        let var = self.emit(ctx, &n("variance"), ReduceOp::ReduceMean(r), &[sq])?;
        let e = self.scalar(&n("epsilon"), eps);
        let ve = self.broadcast(ctx, &n("plus_epsilon"), BroadcastOp::Add, var, e)?;
        let std = self.map(ctx, &n("std"), UnaryFn::Sqrt(Sqrt), ve)?;
        Ok([mean, std, self.broadcast(ctx, &n("normalized"), BroadcastOp::Div, d, std)?])
    }

    /// A per-channel (or per-group) vector `[K]` read as `[K, 1, ...]` with `trailing` unit axes,
    /// so that it broadcasts over the axes after the channels.
    fn per_channel(&mut self, ctx: &Ctx, name: &str, v: TensorId, k: usize, trailing: usize, what: &str) -> Result<TensorId, ImportError> {
        let vs = self.graph.shape(v).to_vec();
        if vs != [k] {
            return Err(ctx.err(format!("its {what} has shape {vs:?}, expected [{k}]")));
        }
        let mut shape = vec![k];
        shape.extend(std::iter::repeat_n(1, trailing));
        self.emit(ctx, name, DenseOp::Reshape { shape }, &[v])
    }

    /// `y * scale + bias` with the `[K]` vectors read per channel of `y` (axis 1 of a `[N, K, ...]`).
    fn scale_shift(&mut self, ctx: &Ctx, y: TensorId, k: usize, what: &str) -> Result<TensorId, ImportError> {
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let trailing = self.graph.shape(y).len() - 2;
        let scale = self.tensor(ctx, ctx.input(1)?)?;
        let bias = self.tensor(ctx, ctx.input(2)?)?;
        let scale = self.per_channel(ctx, &n("scale"), scale, k, trailing, &format!("scale ({what})"))?;
        let bias = self.per_channel(ctx, &n("bias"), bias, k, trailing, &format!("bias ({what})"))?;
        let scaled = self.broadcast(ctx, &n("scaled"), BroadcastOp::Mul, y, scale)?;
        self.broadcast(ctx, &n("shifted"), BroadcastOp::Add, scaled, bias)
    }

    /// InstanceNormalization: each (sample, channel) normalised over its spatial axes, then the
    /// per-channel scale and bias.
    pub(super) fn instance_norm(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        if xs.len() < 3 {
            return Err(ctx.err(format!("its input {xs:?} has no spatial axis (InstanceNormalization reads [N, C, ...])")));
        }
        let eps = ctx.float("epsilon", 1e-5)?;
        let name = ctx.node.name.clone();
        let [_, _, normed] = self.normalize(ctx, &name, x, (2..xs.len()).collect(), eps)?;
        let y = self.scale_shift(ctx, normed, xs[1], "one value per channel")?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// GroupNormalization: `[N, C, ...]` viewed as `[N, G, C/G * spatial]`, each group
    /// normalised, then scale and bias: per channel (`[C]`) from opset 21, per group (`[G]`,
    /// applied in the grouped view) in opset 18, as the two versions define them.
    pub(super) fn group_norm(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let groups = ctx.int("num_groups", 0)?;
        let g = usize::try_from(groups).ok().filter(|&g| g > 0 && xs.len() >= 2 && xs[1].is_multiple_of(g)).ok_or_else(|| {
            ctx.err(format!("attribute 'num_groups' ({groups}) must be positive and divide the channels of the input {xs:?}"))
        })?;
        let stash = ctx.int("stash_type", 1)?;
        if stash != 1 {
            return Err(ctx.err(format!(
                "stash_type {stash} ({}) is not supported: pock computes the statistics in float32 (stash_type 1)",
                DataType::from_onnx(stash as i32)
            )));
        }
        let eps = ctx.float("epsilon", 1e-5)?;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let per_group: usize = xs[1..].iter().product::<usize>() / g;
        let grouped = self.emit(ctx, &n("grouped"), DenseOp::Reshape { shape: vec![xs[0], g, per_group] }, &[x])?;
        let [_, _, normed] = self.normalize(ctx, &name, grouped, vec![2], eps)?;
        let y = if ctx.opset >= 21 {
            let back = self.emit(ctx, &n("ungrouped"), DenseOp::Reshape { shape: xs.clone() }, &[normed])?;
            self.scale_shift(ctx, back, xs[1], "one value per channel from opset 21")?
        } else {
            let y = self.scale_shift(ctx, normed, g, "one value per group before opset 21")?;
            self.emit(ctx, &n("ungrouped"), DenseOp::Reshape { shape: xs.clone() }, &[y])?
        };
        self.set(ctx, 0, Value::Tensor(y))
    }
}
