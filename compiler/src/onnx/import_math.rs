//! The importer's arms for elementwise maths, comparisons and logic, reductions, Softmax,
//! LayerNormalization, Gelu, HardSwish and Cast on run-time tensors.
//!
//! Every arm maps onto existing primitives: the broadcasting family for binary ops and `Where`,
//! the unary family for functions of one argument, the reduce family for reductions and Softmax,
//! and the cast family. Composites (LayerNormalization, Gelu, HardSwish) expand here into those
//! primitives, so their gradients are the primitives' gradients.

use pock_engine::kernels::unary::{
    Abs, Ceil, Cos, Elu, Erf, Exp, Floor, HardSigmoid, LeakyRelu, Log, Neg, Reciprocal, Round, Sigmoid, Sign, Sin, Softplus, Sqrt, Tanh,
};
use pock_engine::ops::{BroadcastOp, CastOp, DenseOp, Op, PoolOp, Reduce, ReduceOp, UnaryFn, UnaryOp};

use super::{Ctx, Importer, Value};
use crate::ir::{DType, TensorId, Values};
use crate::onnx::ImportError;
use crate::onnx::{fold, Attribute, DataType};

impl Importer<'_> {
    pub(super) fn dtype(&self, t: TensorId) -> DType {
        self.graph.tensor(t).dtype
    }

    /// A float32 scalar constant (shape `[]`, which broadcasts against any shape).
    pub(super) fn scalar(&mut self, name: &str, value: f32) -> TensorId {
        self.graph.constant(name.to_string(), vec![], vec![value])
    }

    /// `a op b` with numpy broadcasting. Float Add and Mul of two tensors of one shape use the
    /// same-shape dense ops the zoo models use, whose kernels skip the broadcasting walker.
    pub(super) fn broadcast(&mut self, ctx: &Ctx, name: &str, op: BroadcastOp, a: TensorId, b: TensorId) -> Result<TensorId, ImportError> {
        let same = self.graph.shape(a) == self.graph.shape(b) && self.dtype(a) == DType::F32 && self.dtype(b) == DType::F32;
        let op: Op = match op {
            BroadcastOp::Add if same => DenseOp::Add.into(),
            BroadcastOp::Mul if same => DenseOp::Mul.into(),
            op => op.into(),
        };
        self.emit(ctx, name, op, &[a, b])
    }

    /// The graph tensor for `name`, where an initializer not yet read becomes a constant rather
    /// than a trainable parameter. Pow's exponent is read this way: the dynamo exporter stores
    /// `x ** 2` with the 2 as a float initializer, which is never a weight, and whose gradient
    /// (`y * ln x`) is NaN wherever the base is negative.
    fn constant_initializer(&mut self, ctx: &Ctx, name: &str) -> Result<TensorId, ImportError> {
        if let Some(Value::Initializer(i)) = self.values.get(name) {
            let t = &self.model.initializers[*i];
            let c = fold::Const::from_tensor(t);
            let id = self.graph.typed_constant(name, c.dims, c.data);
            self.values.insert(name.to_string(), Value::Tensor(id));
            return Ok(id);
        }
        self.tensor(ctx, name)
    }

    /// Add, Sub, Mul, Div, Pow, Max, Min, the comparisons and And/Or/Xor. Max and Min take any
    /// number of inputs (ONNX makes them variadic) and chain pairwise.
    pub(super) fn binary(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        use BroadcastOp::*;
        let op = match ctx.node.op_type.as_str() {
            "Add" => Add,
            "Sub" => Sub,
            "Mul" => Mul,
            "Div" => Div,
            "Pow" => Pow,
            "Max" => Max,
            "Min" => Min,
            "Equal" => Equal,
            "Less" => Less,
            "LessOrEqual" => LessOrEqual,
            "Greater" => Greater,
            "GreaterOrEqual" => GreaterOrEqual,
            "And" => And,
            "Or" => Or,
            "Xor" => Xor,
            other => return Err(ctx.err(format!("{other} is not a binary op"))),
        };
        let variadic = matches!(op, Max | Min);
        let names: Vec<&str> = if variadic {
            ctx.node.inputs.iter().map(String::as_str).filter(|s| !s.is_empty()).collect()
        } else {
            vec![ctx.input(0)?, ctx.input(1)?]
        };
        if names.is_empty() {
            return Err(ctx.err("it has no inputs"));
        }
        let name = ctx.node.name.clone();
        let mut y = self.tensor(ctx, names[0])?;
        if op == Pow && self.dtype(y) != DType::F32 {
            return Err(ctx.err(format!(
                "Pow of a base of type {} is not supported: pock's Pow takes float32 (cast the base to float in the model)",
                self.dtype(y).name()
            )));
        }
        for (k, b) in names.iter().enumerate().skip(1) {
            let mut b = if op == Pow { self.constant_initializer(ctx, b)? } else { self.tensor(ctx, b)? };
            // ONNX lets Pow's exponent have its own type (`x ** 2` with an int64 2); pock's Pow
            // takes floats.
            if op == Pow && self.dtype(b) == DType::I64 {
                b = self.emit(ctx, &format!("{name}.exponent"), CastOp::Cast { to: DType::F32 }, &[b])?;
            }
            let step = if k + 1 == names.len() { name.clone() } else { format!("{name}.{k}") };
            y = if variadic && self.dtype(y) == DType::I64 && self.dtype(b) == DType::I64 {
                // The family's Max and Min are float ops (NaN rules, tie-splitting gradients);
                // on integers they are a comparison and a select, which is exact.
                let cmp = if op == Max { Greater } else { Less };
                let c = self.emit(ctx, &format!("{step}.pick"), cmp, &[y, b])?;
                self.emit(ctx, &step, Where, &[c, y, b])?
            } else {
                self.broadcast(ctx, &step, op.clone(), y, b)?
            };
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// `Where(cond, a, b)`: `a` where `cond`, else `b`, broadcasting all three.
    pub(super) fn select(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let c = self.tensor(ctx, ctx.input(0)?)?;
        let a = self.tensor(ctx, ctx.input(1)?)?;
        let b = self.tensor(ctx, ctx.input(2)?)?;
        let y = self.emit(ctx, &ctx.node.name, BroadcastOp::Where, &[c, a, b])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// The functions of one argument, with their ONNX attributes and defaults.
    pub(super) fn unary_math(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let f = match ctx.node.op_type.as_str() {
            "Sigmoid" => UnaryFn::Sigmoid(Sigmoid),
            "Tanh" => UnaryFn::Tanh(Tanh),
            "Erf" => UnaryFn::Erf(Erf),
            "Exp" => UnaryFn::Exp(Exp),
            "Log" => UnaryFn::Log(Log),
            "Sqrt" => UnaryFn::Sqrt(Sqrt),
            "Neg" => UnaryFn::Neg(Neg),
            "Reciprocal" => UnaryFn::Reciprocal(Reciprocal),
            "Abs" => UnaryFn::Abs(Abs),
            "Sin" => UnaryFn::Sin(Sin),
            "Cos" => UnaryFn::Cos(Cos),
            "Softplus" => UnaryFn::Softplus(Softplus),
            "LeakyRelu" => UnaryFn::LeakyRelu(LeakyRelu { alpha: ctx.float("alpha", 0.01)? }),
            "Elu" => UnaryFn::Elu(Elu { alpha: ctx.float("alpha", 1.0)? }),
            "HardSigmoid" => UnaryFn::HardSigmoid(HardSigmoid { alpha: ctx.float("alpha", 0.2)?, beta: ctx.float("beta", 0.5)? }),
            "Floor" => UnaryFn::Floor(Floor),
            "Ceil" => UnaryFn::Ceil(Ceil),
            "Round" => UnaryFn::Round(Round),
            "Sign" => UnaryFn::Sign(Sign),
            other => return Err(ctx.err(format!("{other} is not a unary function"))),
        };
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let name = ctx.node.name.clone();
        // Integer negation (index arithmetic) is `0 - x`; the unary family is float-only.
        let y = if matches!(f, UnaryFn::Neg(_)) && self.dtype(x) == DType::I64 {
            let zero = self.graph.typed_constant(format!("{name}.zero"), vec![], Values::I64(vec![0]));
            self.emit(ctx, &name, BroadcastOp::Sub, &[zero, x])?
        } else {
            self.emit(ctx, &name, UnaryOp::Map(f), &[x])?
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    pub(super) fn not(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let y = self.emit(ctx, &ctx.node.name, UnaryOp::Not, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// HardSwish: `x * HardSigmoid(x)` with PyTorch's and ONNX's alpha 1/6 and beta 1/2.
    pub(super) fn hard_swish(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let name = ctx.node.name.clone();
        let gate = UnaryFn::HardSigmoid(HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 });
        let g = self.emit(ctx, &format!("{name}.gate"), UnaryOp::Map(gate), &[x])?;
        let y = self.emit(ctx, &name, DenseOp::Mul, &[x, g])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Gelu (opset 20), expanded: `x/2 * (1 + erf(x / sqrt 2))`, or with `approximate="tanh"`
    /// `x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`, as PyTorch's `gelu`.
    pub(super) fn gelu(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let inner = match ctx.string("approximate", "none")?.as_str() {
            "none" => {
                let c = self.scalar(&n("inv_sqrt2"), std::f32::consts::FRAC_1_SQRT_2);
                let t = self.broadcast(ctx, &n("scaled"), BroadcastOp::Mul, x, c)?;
                self.emit(ctx, &n("erf"), UnaryOp::Map(UnaryFn::Erf(Erf)), &[t])?
            }
            "tanh" => {
                let x2 = self.emit(ctx, &n("square"), DenseOp::Mul, &[x, x])?;
                let x3 = self.emit(ctx, &n("cube"), DenseOp::Mul, &[x2, x])?;
                let k = self.scalar(&n("k"), 0.044715);
                let kx3 = self.broadcast(ctx, &n("k_cube"), BroadcastOp::Mul, x3, k)?;
                let s = self.emit(ctx, &n("sum"), DenseOp::Add, &[x, kx3])?;
                let c = self.scalar(&n("sqrt_2_over_pi"), (2.0 / std::f64::consts::PI).sqrt() as f32);
                let u = self.broadcast(ctx, &n("scaled"), BroadcastOp::Mul, s, c)?;
                self.emit(ctx, &n("tanh"), UnaryOp::Map(UnaryFn::Tanh(Tanh)), &[u])?
            }
            other => return Err(ctx.err(format!("approximate='{other}' is not an ONNX value (expected 'none' or 'tanh')"))),
        };
        let one = self.scalar(&n("one"), 1.0);
        let g = self.broadcast(ctx, &n("plus_one"), BroadcastOp::Add, inner, one)?;
        let xg = self.emit(ctx, &n("times_x"), DenseOp::Mul, &[x, g])?;
        let half = self.scalar(&n("half"), 0.5);
        let y = self.broadcast(ctx, &name, BroadcastOp::Mul, xg, half)?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// The sorted axes of a reduction: input 1 (ReduceSum from opset 13, the others from 18) or
    /// the attribute `axes` before; none reduce every axis, or `None` (the node is the identity)
    /// with `noop_with_empty_axes`.
    pub(super) fn reduce_axes(&self, ctx: &Ctx, rank: usize) -> Result<Option<Vec<usize>>, ImportError> {
        let axes = match (ctx.optional_input(1), ctx.node.attribute("axes")) {
            (Some(a), _) => Some(self.constant(ctx, a, "axes")?.as_i64().map_err(|e| ctx.err(e))?),
            (None, Some(Attribute::Ints(a))) => Some(a.clone()),
            (None, Some(_)) => return Err(ctx.err("attribute 'axes' is not a list of integers")),
            (None, None) => None,
        };
        Ok(Some(match axes {
            Some(a) if !a.is_empty() => {
                let mut axes: Vec<usize> = a.iter().map(|&a| fold::axis(a, rank)).collect::<Result<_, _>>().map_err(|e| ctx.err(e))?;
                axes.sort_unstable();
                if axes.windows(2).any(|w| w[0] == w[1]) {
                    return Err(ctx.err(format!("axes {a:?} name one axis twice")));
                }
                axes
            }
            _ if ctx.int("noop_with_empty_axes", 0)? != 0 => return Ok(None),
            _ => (0..rank).collect(),
        }))
    }

    /// ReduceSum, ReduceMean and ReduceMax. The axes are an input from opset 13 (ReduceSum) or
    /// 18 (the others) and an attribute before; either is accepted. No axes reduce everything,
    /// or nothing with `noop_with_empty_axes`.
    pub(super) fn reduce(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let Some(axes) = self.reduce_axes(ctx, xs.len())? else { return self.alias(ctx) };
        let keepdims = ctx.int("keepdims", 1)? != 0;
        let name = ctx.node.name.clone();
        let op_type = ctx.node.op_type.as_str();
        // The spatial mean of an NCHW tensor (how the dynamo exporter writes adaptive average
        // pooling to 1x1) stays GlobalAvgPool, the op the zoo's and the TorchScript exports use.
        if op_type == "ReduceMean" && xs.len() == 4 && axes == [2, 3] && self.dtype(x) == DType::F32 {
            let mut y = self.emit(ctx, &name, PoolOp::GlobalAvgPool, &[x])?;
            if !keepdims {
                y = self.emit(ctx, &format!("{name}.squeeze"), DenseOp::Reshape { shape: vec![xs[0], xs[1]] }, &[y])?;
            }
            return self.set(ctx, 0, Value::Tensor(y));
        }
        let r = Reduce { axes, keepdims };
        if op_type == "ReduceMax" && self.dtype(x) == DType::Bool {
            // The maximum of bools is "any": the count of true values is above zero (which is
            // also right for an empty group, whose maximum is false).
            let f = self.emit(ctx, &format!("{name}.count"), CastOp::Cast { to: DType::F32 }, &[x])?;
            let count = self.emit(ctx, &format!("{name}.sum"), ReduceOp::ReduceSum(r), &[f])?;
            let zero = self.scalar(&format!("{name}.zero"), 0.0);
            let y = self.emit(ctx, &name, BroadcastOp::Greater, &[count, zero])?;
            return self.set(ctx, 0, Value::Tensor(y));
        }
        let op = match op_type {
            "ReduceSum" => ReduceOp::ReduceSum(r),
            "ReduceMean" => ReduceOp::ReduceMean(r),
            "ReduceMax" => ReduceOp::ReduceMax(r),
            other => return Err(ctx.err(format!("{other} is not a reduction pock imports"))),
        };
        let y = self.emit(ctx, &name, op, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Softmax and LogSoftmax. From opset 13 they work along one axis (default -1); before, the
    /// input is read as a matrix `[prod(dims[..axis]), prod(dims[axis..])]` (default axis 1),
    /// which is a reshape around a softmax over the matrix's second axis.
    pub(super) fn softmax(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let log = ctx.node.op_type == "LogSoftmax";
        let op = |axis| if log { ReduceOp::LogSoftmax { axis } } else { ReduceOp::Softmax { axis } };
        let name = ctx.node.name.clone();
        let coerced = ctx.opset < 13;
        let axis = fold::axis(ctx.int("axis", if coerced { 1 } else { -1 })?, xs.len()).map_err(|e| ctx.err(e))?;
        let y = if !coerced || axis + 1 == xs.len() {
            self.emit(ctx, &name, op(axis), &[x])?
        } else {
            let matrix = vec![xs[..axis].iter().product(), xs[axis..].iter().product()];
            let m = self.emit(ctx, &format!("{name}.flatten"), DenseOp::Reshape { shape: matrix }, &[x])?;
            let s = self.emit(ctx, &format!("{name}.matrix"), op(1), &[m])?;
            self.emit(ctx, &name, DenseOp::Reshape { shape: xs }, &[s])?
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// LayerNormalization (opset 17) over the axes from `axis` to the last, expanded:
    /// `d = x - mean(x)`, `std = sqrt(mean(d * d) + epsilon)`, `y = d / std * scale + bias`.
    /// The optional outputs Mean and InvStdDev are the mean and `1 / std`.
    pub(super) fn layer_norm(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let scale = self.tensor(ctx, ctx.input(1)?)?;
        let xs = self.graph.shape(x).to_vec();
        let axis = fold::axis(ctx.int("axis", -1)?, xs.len()).map_err(|e| ctx.err(e))?;
        let eps = ctx.float("epsilon", 1e-5)?;
        let stash = ctx.int("stash_type", 1)?;
        if stash != 1 {
            return Err(ctx.err(format!(
                "stash_type {stash} ({}) is not supported: pock computes the statistics in float32 (stash_type 1)",
                DataType::from_onnx(stash as i32)
            )));
        }
        let name = ctx.node.name.clone();
        let n = |s: &str| format!("{name}.{s}");
        let [mean, std, normed] = self.normalize(ctx, &name, x, (axis..xs.len()).collect(), eps)?;
        let bias = match ctx.optional_input(2) {
            Some(b) => Some(self.tensor(ctx, b)?),
            None => None,
        };
        let scaled_name = if bias.is_some() { n("scaled") } else { name.clone() };
        let mut y = self.broadcast(ctx, &scaled_name, BroadcastOp::Mul, normed, scale)?;
        if let Some(b) = bias {
            y = self.broadcast(ctx, &name, BroadcastOp::Add, y, b)?;
        }
        self.set(ctx, 0, Value::Tensor(y))?;
        if ctx.node.outputs.get(1).is_some_and(|s| !s.is_empty()) {
            self.set(ctx, 1, Value::Tensor(mean))?;
        }
        if ctx.node.outputs.get(2).is_some_and(|s| !s.is_empty()) {
            let inv = self.emit(ctx, &n("inv_std"), UnaryOp::Map(UnaryFn::Reciprocal(Reciprocal)), &[std])?;
            self.set(ctx, 2, Value::Tensor(inv))?;
        }
        Ok(())
    }

    /// CastLike: Cast to the dtype of input 1 (ONNX's function bodies write it to bring a
    /// constant to the input's type). A constant input is converted at compile time.
    pub(super) fn cast_like(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let to = match self.values.get(ctx.input(1)?) {
            Some(Value::Tensor(t)) => self.dtype(*t),
            Some(Value::Const(c)) => c.data.dtype(),
            Some(Value::Initializer(i)) => fold::Const::from_tensor(&self.model.initializers[*i]).data.dtype(),
            None => return Err(self.undefined(ctx, ctx.input(1)?)),
        };
        let code = match to {
            DType::I64 => 7,
            DType::Bool => 9,
            _ => 1,
        };
        if let Some(Value::Const(c)) = self.values.get(ctx.input(0)?) {
            let cast = super::Node { op_type: "Cast".into(), attributes: vec![("to".into(), Attribute::Int(code))], ..ctx.node.clone() };
            let out = fold::evaluate(&cast, &[Some(c)]).map_err(|e| ctx.err(format!("cannot evaluate it at compile time: {e}")))?;
            if let Some(c) = out.and_then(|mut o| o.pop()) {
                return self.set(ctx, 0, Value::Const(c));
            }
        }
        let x = self.tensor(ctx, ctx.input(0)?)?;
        if self.dtype(x) == to {
            return self.set(ctx, 0, Value::Tensor(x));
        }
        let y = self.emit(ctx, &ctx.node.name, CastOp::Cast { to }, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Cast between float32, int64 and bool. float64 targets compute in float32 and int32 targets
    /// in int64 (pock runs no other types); a cast to the input's own dtype adds no node.
    pub(super) fn cast(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let Some(Attribute::Int(code)) = ctx.node.attribute("to").cloned() else {
            return Err(ctx.err("attribute 'to' (the target type) is missing or not an integer"));
        };
        let target = DataType::from_onnx(i32::try_from(code).unwrap_or(-1));
        let to = match target {
            DataType::F32 | DataType::F64 => DType::F32,
            DataType::I32 | DataType::I64 => DType::I64,
            DataType::Bool => DType::Bool,
            other => {
                return Err(ctx.err(format!(
                    "Cast to {other} is not supported: pock runs float32, int64 and bool tensors (export the model without that cast)"
                )))
            }
        };
        let x = self.tensor(ctx, ctx.input(0)?)?;
        if self.dtype(x) == to {
            return self.set(ctx, 0, Value::Tensor(x));
        }
        let y = self.emit(ctx, &ctx.node.name, CastOp::Cast { to }, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }
}
