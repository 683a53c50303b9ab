//! The importer's arms for movement ops and MatMul on run-time tensors: Transpose, Concat, Split,
//! Slice, Gather, Expand, Tile, Trilu, Pad and MatMul of any rank. They map onto the movement and
//! batched-matmul families; the compile-time arguments (perms, axes, sizes, pads) must be
//! constants, which the exporters' shape arithmetic always folds to. Also Dropout, which in a
//! training-mode graph becomes the random family's seeded dropout.

use pock_engine::kernels::reference::random;
use pock_engine::ops::{DenseOp, Dropout, MatMul, MatMulOp, MoveOp, RandomOp, Slice};

use super::fold;
use super::{Ctx, DropoutMode, Importer, Value};
use crate::ir::{DType, Phase, Program, Role, TensorDef, TensorId};
use crate::onnx::error::ImportError;
use crate::onnx::Attribute;

impl Importer<'_> {
    /// The list of integers an input holds, which must be a compile-time constant.
    pub(super) fn const_ints(&self, ctx: &Ctx, name: &str, what: &str) -> Result<Vec<i64>, ImportError> {
        self.constant(ctx, name, what)?.as_i64().map_err(|e| ctx.err(format!("its {what}: {e}")))
    }

    /// An integer-list attribute, if present.
    pub(super) fn ints_attr(&self, ctx: &Ctx, name: &str) -> Result<Option<Vec<i64>>, ImportError> {
        match ctx.node.attribute(name) {
            None => Ok(None),
            Some(Attribute::Ints(v)) => Ok(Some(v.clone())),
            Some(_) => Err(ctx.err(format!("attribute '{name}' is not a list of integers"))),
        }
    }

    /// The rank of a graph tensor, for normalising negative axes.
    fn rank_of(&self, x: TensorId) -> usize {
        self.graph.shape(x).len()
    }

    /// Transpose: `perm` defaults to reversing the axes; the identity permutation emits nothing.
    pub(super) fn transpose(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let rank = self.rank_of(x);
        let perm: Vec<usize> = match self.ints_attr(ctx, "perm")? {
            Some(p) => p.iter().map(|&a| fold::axis(a, rank)).collect::<Result<_, _>>().map_err(|e| ctx.err(format!("its perm: {e}")))?,
            None => (0..rank).rev().collect(),
        };
        let y = if perm.iter().enumerate().all(|(k, &p)| k == p) && perm.len() == rank {
            x
        } else {
            self.emit(ctx, &ctx.node.name, MoveOp::Transpose { perm }, &[x])?
        };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Concat along a (possibly negative) axis; constants among the inputs become graph
    /// constants.
    pub(super) fn concat(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let mut parts = Vec::with_capacity(ctx.node.inputs.len());
        for name in ctx.node.inputs.iter().filter(|s| !s.is_empty()) {
            parts.push(self.tensor(ctx, name)?);
        }
        let Some(&first) = parts.first() else { return Err(ctx.err("it has no inputs")) };
        let rank = self.rank_of(first);
        let axis_attr = match ctx.node.attribute("axis") {
            Some(Attribute::Int(a)) => *a,
            _ => return Err(ctx.err("its 'axis' attribute is missing (it is required)")),
        };
        let axis = fold::axis(axis_attr, rank).map_err(|e| ctx.err(e))?;
        let y = if parts.len() == 1 { first } else { self.emit(ctx, &ctx.node.name, MoveOp::Concat { axis }, &parts)? };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Split: the sizes come from the `split` attribute (before opset 13), the `split` input
    /// (from 13), `num_outputs` (from 18: pieces of ceil(n / num_outputs), the last smaller), or
    /// else an equal split into as many pieces as the node has outputs.
    pub(super) fn split(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let axis = fold::axis(ctx.int("axis", 0)?, xs.len()).map_err(|e| ctx.err(e))?;
        let n = xs[axis];
        let outputs = ctx.node.outputs.len();
        let explicit = match ctx.optional_input(1) {
            Some(s) => Some(self.const_ints(ctx, s, "split")?),
            None => self.ints_attr(ctx, "split")?,
        };
        let sizes: Vec<usize> = if let Some(s) = explicit {
            s.iter()
                .map(|&v| usize::try_from(v).map_err(|_| ctx.err(format!("its split {s:?} has a negative size"))))
                .collect::<Result<_, _>>()?
        } else if let Some(Attribute::Int(k)) = ctx.node.attribute("num_outputs") {
            let k = usize::try_from(*k).ok().filter(|&k| k > 0).ok_or_else(|| ctx.err(format!("num_outputs {k} must be positive")))?;
            let piece = n.div_ceil(k);
            (0..k).map(|i| piece.min(n.saturating_sub(i * piece))).collect()
        } else {
            if outputs == 0 || !n.is_multiple_of(outputs) {
                return Err(ctx.err(format!("axis {axis} of {xs:?} does not split evenly into {outputs} outputs; give 'split' sizes")));
            }
            vec![n / outputs; outputs]
        };
        if sizes.len() != outputs {
            return Err(ctx.err(format!("it has {outputs} outputs but {} split sizes {sizes:?}", sizes.len())));
        }
        if sizes.iter().sum::<usize>() != n {
            return Err(ctx.err(format!("split sizes {sizes:?} do not add up to {n}, axis {axis} of {xs:?}")));
        }
        let ys = self
            .graph
            .emit(&ctx.node.name, MoveOp::Split { axis, sizes }, &[x], Phase::Forward, Program::Train)
            .map_err(|e| self.compile_error(ctx, e))?;
        for (i, y) in ys.into_iter().enumerate() {
            self.set(ctx, i, Value::Tensor(y))?;
        }
        Ok(())
    }

    /// Slice with constant starts, ends, axes (negative ones count from the end) and steps; the
    /// engine's rule clamps the indices as ONNX does.
    pub(super) fn slice(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let starts = self.const_ints(ctx, ctx.input(1)?, "starts")?;
        let ends = self.const_ints(ctx, ctx.input(2)?, "ends")?;
        let axes: Vec<usize> = match ctx.optional_input(3) {
            Some(a) => self
                .const_ints(ctx, a, "axes")?
                .iter()
                .map(|&a| fold::axis(a, xs.len()))
                .collect::<Result<_, _>>()
                .map_err(|e| ctx.err(format!("its axes: {e}")))?,
            None => (0..starts.len()).collect(),
        };
        let steps = match ctx.optional_input(4) {
            Some(s) => self.const_ints(ctx, s, "steps")?,
            None => vec![1; starts.len()],
        };
        let slice = Slice { axes, starts, ends, steps };
        let y = self.emit(ctx, &ctx.node.name, MoveOp::Slice(slice), &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Gather along any axis; the data may be a parameter (an embedding table) or a run-time
    /// tensor, the indices a run-time int64 tensor or a constant (negative ones count from the
    /// end, checked by the kernel at run time).
    pub(super) fn gather(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let data = self.tensor(ctx, ctx.input(0)?)?;
        let indices = self.tensor(ctx, ctx.input(1)?)?;
        let rank = self.rank_of(data);
        let axis = fold::axis(ctx.int("axis", 0)?, rank).map_err(|e| ctx.err(e))?;
        let y = self.emit(ctx, &ctx.node.name, MoveOp::Gather { axis }, &[data, indices])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// The non-negative sizes of a constant shape input.
    fn const_shape(&self, ctx: &Ctx, name: &str, what: &str) -> Result<Vec<usize>, ImportError> {
        let v = self.const_ints(ctx, name, what)?;
        v.iter().map(|&d| usize::try_from(d).map_err(|_| ctx.err(format!("its {what} {v:?} has a negative value")))).collect()
    }

    /// Expand to a constant shape, with numpy broadcasting (the result may have more axes).
    pub(super) fn expand(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let shape = self.const_shape(ctx, ctx.input(1)?, "shape")?;
        let y = self.emit(ctx, &ctx.node.name, MoveOp::Expand { shape }, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Tile with constant repeats: `x` of shape `[d0, d1, ...]` is reshaped to `[1, d0, 1, d1,
    /// ...]`, expanded to `[r0, d0, r1, d1, ...]` and reshaped to `[r0 * d0, r1 * d1, ...]`,
    /// which repeats whole blocks along each axis as Tile does. The gradient follows from
    /// Expand's.
    pub(super) fn tile(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let repeats = self.const_shape(ctx, ctx.input(1)?, "repeats")?;
        if repeats.len() != xs.len() {
            return Err(ctx.err(format!("repeats {repeats:?} must have one value per axis of {xs:?}")));
        }
        if repeats.iter().all(|&r| r == 1) {
            return self.set(ctx, 0, Value::Tensor(x));
        }
        let name = ctx.node.name.clone();
        let spread: Vec<usize> = xs.iter().flat_map(|&d| [1, d]).collect();
        let expanded: Vec<usize> = xs.iter().zip(&repeats).flat_map(|(&d, &r)| [r, d]).collect();
        let mut out = Vec::with_capacity(xs.len());
        for (&d, &r) in xs.iter().zip(&repeats) {
            out.push(d.checked_mul(r).ok_or_else(|| ctx.err(format!("repeating {xs:?} by {repeats:?} overflows")))?);
        }
        let a = self.emit(ctx, &format!("{name}.spread"), DenseOp::Reshape { shape: spread }, &[x])?;
        let b = self.emit(ctx, &format!("{name}.expand"), MoveOp::Expand { shape: expanded }, &[a])?;
        let y = self.emit(ctx, &name, DenseOp::Reshape { shape: out }, &[b])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Trilu over the last two axes: `upper` (default 1) and the constant diagonal offset `k`.
    pub(super) fn trilu(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let k = match ctx.optional_input(1) {
            Some(k) => match self.const_ints(ctx, k, "k")?.as_slice() {
                [k] => *k,
                other => return Err(ctx.err(format!("its k must be one integer, got {other:?}"))),
            },
            None => 0,
        };
        let upper = ctx.int("upper", 1)? != 0;
        let y = self.emit(ctx, &ctx.node.name, MoveOp::Trilu { upper, k }, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Pad in constant mode, with constant `pads` (negative ones crop, as a Slice before the
    /// padding), an optional constant value and (opset 18) optional axes.
    pub(super) fn pad(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let rank = xs.len();
        let mode = ctx.string("mode", "constant")?;
        if mode != "constant" {
            return Err(ctx.err(format!("mode '{mode}' is not supported; pock pads with a constant only")));
        }
        let given = self.const_ints(ctx, ctx.input(1)?, "pads")?;
        let axes: Vec<usize> = match ctx.optional_input(3) {
            Some(a) => self
                .const_ints(ctx, a, "axes")?
                .iter()
                .map(|&a| fold::axis(a, rank))
                .collect::<Result<_, _>>()
                .map_err(|e| ctx.err(format!("its axes: {e}")))?,
            None => (0..rank).collect(),
        };
        if given.len() != 2 * axes.len() {
            return Err(ctx.err(format!("pads {given:?} must hold 2 values per padded axis ({} axes)", axes.len())));
        }
        let mut pads = vec![0i64; 2 * rank];
        for (p, &a) in axes.iter().enumerate() {
            pads[a] = given[p];
            pads[a + rank] = given[p + axes.len()];
        }
        let value = match ctx.optional_input(2) {
            Some(v) => self.constant(ctx, v, "constant_value")?.scalar_f32().map_err(|e| ctx.err(format!("its constant_value: {e}")))?,
            None => 0.0,
        };
        let name = ctx.node.name.clone();
        let mut y = x;
        if pads.iter().any(|&p| p < 0) {
            // Negative pads remove elements: crop first, then pad with the positive ones.
            let crop = Slice {
                axes: (0..rank).collect(),
                starts: (0..rank).map(|k| (-pads[k]).max(0)).collect(),
                ends: (0..rank).map(|k| xs[k] as i64 + pads[k + rank].min(0)).collect(),
                steps: vec![1; rank],
            };
            y = self.emit(ctx, &format!("{name}.crop"), MoveOp::Slice(crop), &[y])?;
        }
        let pads: Vec<usize> = pads.iter().map(|&p| p.max(0) as usize).collect();
        if pads.iter().any(|&p| p > 0) {
            y = self.emit(ctx, &name, MoveOp::Pad { pads, value }, &[y])?;
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// MatMul of any ranks >= 1. Two matrices use the dense MatMul; `[..., K]` times a `[K, N]`
    /// matrix (a Linear layer on `[B, T, H]`) is one dense MatMul on the rows flattened to `[B *
    /// T, K]` between two Reshapes, which moves no data; everything else is a BatchMatMul with
    /// broadcast batch axes.
    pub(super) fn matmul(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let a = self.tensor(ctx, ctx.input(0)?)?;
        let b = self.tensor(ctx, ctx.input(1)?)?;
        let (sa, sb) = (self.graph.shape(a).to_vec(), self.graph.shape(b).to_vec());
        let plain = MatMul { trans_a: false, trans_b: false };
        let name = ctx.node.name.clone();
        let y = match (sa.len(), sb.len()) {
            (2, 2) => self.emit(ctx, &name, DenseOp::MatMul(plain), &[a, b])?,
            (ra, 2) if ra > 2 && sa[ra - 1] == sb[0] => {
                let rows: usize = sa[..ra - 1].iter().product();
                let flat = self.emit(ctx, &format!("{name}.rows"), DenseOp::Reshape { shape: vec![rows, sa[ra - 1]] }, &[a])?;
                let mm = self.emit(ctx, &format!("{name}.matmul"), DenseOp::MatMul(plain), &[flat, b])?;
                let mut out = sa[..ra - 1].to_vec();
                out.push(sb[1]);
                self.emit(ctx, &name, DenseOp::Reshape { shape: out }, &[mm])?
            }
            _ => self.emit(ctx, &name, MatMulOp::BatchMatMul(plain), &[a, b])?,
        };
        self.set(ctx, 0, Value::Tensor(y))
    }
}

impl Importer<'_> {
    /// Dropout. In training mode (the opset-12 `training_mode` input is a true constant) with a
    /// ratio above 0 it is seeded inverted dropout ([`RandomOp::Dropout`]): the train program draws
    /// a mask per step from the compile-time seed, the node's name and the checkpointed step
    /// counter; the eval and infer programs run it as the identity. Otherwise, or with
    /// `--dropout off` (noted), it is the identity, as in PyTorch's `eval()`.
    pub(super) fn dropout(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        if ctx.node.outputs.get(1).is_some_and(|m| !m.is_empty())
            && self.model.nodes.iter().any(|n| n.inputs.contains(&ctx.node.outputs[1]))
        {
            return Err(ctx.err("its mask output is read by another node, which pock does not support"));
        }
        let ratio = match ctx.optional_input(1) {
            Some(r) => self.constant(ctx, r, "ratio")?.scalar_f32().map_err(|e| ctx.err(format!("its ratio: {e}")))?,
            None => 0.5,
        };
        let training = match ctx.optional_input(2) {
            Some(t) => self.constant(ctx, t, "training_mode")?.scalar_f32().map_err(|e| ctx.err(format!("its training_mode: {e}")))? != 0.0,
            None => false,
        };
        if !training || ratio == 0.0 {
            let v = self.values.get(ctx.input(0)?).cloned().ok_or_else(|| self.undefined(ctx, &ctx.node.inputs[0]))?;
            return self.set(ctx, 0, v);
        }
        if !(0.0..1.0).contains(&ratio) {
            return Err(ctx.err(format!("its ratio {ratio} is outside [0, 1)")));
        }
        if self.options.dropout == DropoutMode::Off {
            if !self.dropout_noted {
                self.dropout_noted = true;
                self.notes.push(format!(
                    "--dropout off: training-mode Dropout (first node '{}', ratio {ratio}) runs as the identity, as in PyTorch's eval()",
                    ctx.node.name
                ));
            }
            let v = self.values.get(ctx.input(0)?).cloned().ok_or_else(|| self.undefined(ctx, &ctx.node.inputs[0]))?;
            return self.set(ctx, 0, v);
        }
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let counter = self.step_counter();
        let key = random::key(self.options.seed, fnv1a(ctx.node.name.as_bytes()));
        let op = RandomOp::Dropout(Dropout { ratio, key });
        let outs =
            self.graph.emit(&ctx.node.name, op, &[x, counter], Phase::Forward, Program::Train).map_err(|e| self.compile_error(ctx, e))?;
        self.set(ctx, 0, Value::Tensor(outs[0]))
    }

    /// The step counter random ops draw from, made the first time one is imported.
    fn step_counter(&mut self) -> TensorId {
        *self.rng_counter.get_or_insert_with(|| {
            self.graph.add_tensor(TensorDef {
                name: "random.step_counter".into(),
                shape: vec![],
                dtype: DType::I64,
                role: Role::RngCounter,
                init: Some(crate::ir::Values::I64(vec![0])),
            })
        })
    }

    /// RandomUniformLike (how torchvision's stochastic depth is exported): values uniform in
    /// `[low, high)` of the input's shape, drawn per step like dropout's masks (the node's
    /// `seed`, when given, is mixed into `--seed`). The eval program draws from the counter
    /// without advancing it, so evaluation is repeatable but still random where the graph is.
    pub(super) fn random_uniform_like(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let shape = match self.values.get(ctx.input(0)?) {
            Some(Value::Tensor(t)) => self.graph.shape(*t).to_vec(),
            Some(Value::Const(c)) => c.dims.clone(),
            Some(Value::Initializer(i)) => self.model.initializers[*i].dims.clone(),
            None => return Err(self.undefined(ctx, ctx.input(0)?)),
        };
        if let Some(Attribute::Int(d)) = ctx.node.attribute("dtype") {
            // 1 is float32; float16 and float64 run as float32 too, as everywhere in pock.
            if ![1, 10, 11].contains(d) {
                return Err(ctx.err(format!("dtype {d} is not a float type")));
            }
        }
        let (low, high) = (ctx.float("low", 0.0)?, ctx.float("high", 1.0)?);
        let seed = match ctx.node.attribute("seed") {
            Some(Attribute::Float(s)) => self.options.seed ^ u64::from(s.to_bits()).rotate_left(32),
            _ => self.options.seed,
        };
        if !self.notes.iter().any(|n| n.contains("RandomUniformLike")) {
            self.notes.push(format!(
                "RandomUniformLike (first node '{}') draws new values each training step from --seed {}; the eval program draws \
                 too (repeatably), so stochastic depth is not switched off in evaluation as PyTorch's eval() does",
                ctx.node.name, self.options.seed
            ));
        }
        let counter = self.step_counter();
        let key = random::key(seed, fnv1a(ctx.node.name.as_bytes()));
        let y = self.emit(ctx, &ctx.node.name, RandomOp::Uniform { low, high, key, shape }, &[counter])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Appends the node that advances the dropout step counter, after every node that reads it,
    /// so each run of the train program draws new masks.
    pub(super) fn finish_dropout(&mut self) -> Result<(), ImportError> {
        if let Some(counter) = self.rng_counter {
            self.graph
                .emit_inplace("random.advance_step_counter", RandomOp::Advance, &[], &[counter], Phase::Forward, Program::Train)
                .map_err(|source| ImportError::Graph {
                    node: "random.advance_step_counter".into(),
                    op_type: "Dropout or RandomUniformLike".into(),
                    opset: self.model.opset,
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }
}

/// FNV-1a of a node's name: the stream that tells one dropout node's masks from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use crate::interp::Interpreter;
    use crate::onnx::{
        import_model, Attribute, DataType, Dim, DropoutMode, ImportError, ImportOptions, LossKind, Node, OnnxModel, Tensor, TensorValues,
        ValueInfo,
    };

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<(&str, Attribute)>) -> Node {
        Node::new(op, inputs, outputs, attributes)
    }

    fn ints(name: &str, v: &[i64]) -> Tensor {
        Tensor { name: name.into(), dims: vec![v.len()], values: TensorValues::I64(v.to_vec()) }
    }

    fn floats(name: &str, dims: &[usize], v: Vec<f32>) -> Tensor {
        Tensor { name: name.into(), dims: dims.to_vec(), values: TensorValues::F32(v) }
    }

    /// A model at `opset` with data inputs `(name, dtype, dims)`.
    fn model(opset: i64, inputs: &[(&str, DataType, &[usize])], initializers: Vec<Tensor>, nodes: Vec<Node>, output: &str) -> OnnxModel {
        OnnxModel {
            ir_version: 8,
            opset,
            opset_imports: vec![(String::new(), opset)],
            producer: String::new(),
            graph_name: String::new(),
            initializers,
            inputs: inputs
                .iter()
                .map(|(n, d, s)| ValueInfo {
                    name: n.to_string(),
                    dtype: Some(*d),
                    shape: Some(s.iter().map(|&d| Dim::Fixed(d)).collect()),
                })
                .collect(),
            outputs: vec![ValueInfo { name: output.into(), dtype: Some(DataType::F32), shape: None }],
            value_info: vec![],
            nodes,
        }
    }

    fn x_model(opset: i64, dims: &[usize], initializers: Vec<Tensor>, nodes: Vec<Node>) -> OnnxModel {
        model(opset, &[("x", DataType::F32, dims)], initializers, nodes, "y")
    }

    /// Imports with MSE, feeds `x` (and int64 `ids` when given) and returns the output `name`'s
    /// shape and values, with the op names of the graph.
    fn run_named(m: &OnnxModel, x: &[f64], ids: Option<&[i64]>, name: &str) -> (Vec<usize>, Vec<f64>, Vec<&'static str>) {
        let mut m = m.clone();
        m.outputs[0].name = name.into();
        let f = import_model(&m, "t", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).unwrap().forward;
        let mut it = Interpreter::<f64>::new(&f.graph);
        it.set(f.inputs[0], x.to_vec());
        if let Some(ids) = ids {
            it.set_int(f.inputs[1], ids.to_vec());
        }
        it.run(&f.graph.nodes).unwrap();
        let ops = f.graph.nodes.iter().map(|n| n.op.name()).collect();
        (f.graph.shape(f.output).to_vec(), it.get(f.output).unwrap().to_vec(), ops)
    }

    fn run(m: &OnnxModel, x: &[f64]) -> (Vec<usize>, Vec<f64>) {
        let (s, v, _) = run_named(m, x, None, "y");
        (s, v)
    }

    fn iota(n: usize) -> Vec<f64> {
        (0..n).map(|i| i as f64).collect()
    }

    /// The row-major multi-index of flat index `i` in `shape`.
    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            idx[k] = i % shape[k];
            i /= shape[k];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }

    fn import_err(m: &OnnxModel) -> String {
        let e = import_model(m, "t", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).unwrap_err();
        assert!(matches!(e, ImportError::NodeImport { .. } | ImportError::Graph { .. }), "{e:?}");
        e.to_string()
    }

    #[test]
    fn transpose_reverses_by_default_and_follows_perm() {
        let xs = [2, 3, 4];
        let x = iota(24);
        for perm in [None, Some(vec![1i64, 2, 0]), Some(vec![0, -1, 1])] {
            let attrs = perm.clone().map(|p| vec![("perm", Attribute::Ints(p))]).unwrap_or_default();
            let (shape, y) = run(&x_model(17, &xs, vec![], vec![node("Transpose", &["x"], &["y"], attrs)]), &x);
            let p: Vec<usize> =
                perm.map_or(vec![2, 1, 0], |p| p.iter().map(|&a| if a < 0 { (a + 3) as usize } else { a as usize }).collect());
            assert_eq!(shape, p.iter().map(|&a| xs[a]).collect::<Vec<_>>());
            for (i, v) in y.iter().enumerate() {
                let out = unravel(i, &shape);
                let mut src = [0; 3];
                for k in 0..3 {
                    src[p[k]] = out[k];
                }
                assert_eq!(*v, x[ravel(&src, &xs)], "perm {p:?} at {out:?}");
            }
        }
    }

    #[test]
    fn concat_joins_run_time_tensors_and_constants_along_a_negative_axis() {
        let c = floats("c", &[2, 1], vec![10., 20.]);
        let nodes = vec![
            node("Relu", &["x"], &["r"], vec![]),
            node("Constant", &[], &["k"], vec![("value", Attribute::Tensor(c))]),
            node("Concat", &["x", "k", "r"], &["y"], vec![("axis", Attribute::Int(-1))]),
        ];
        let (shape, y) = run(&x_model(17, &[2, 2], vec![], nodes), &[1., -2., -3., 4.]);
        assert_eq!(shape, vec![2, 5]);
        assert_eq!(y, vec![1., -2., 10., 1., 0., -3., 4., 20., 0., 4.]);
    }

    #[test]
    fn split_takes_sizes_from_the_input_num_outputs_or_an_equal_division() {
        let x = iota(14);
        // Opset 13: sizes as an input, along axis 1 of [2, 7].
        let m = x_model(
            13,
            &[2, 7],
            vec![ints("s", &[2, 5])],
            vec![node("Split", &["x", "s"], &["a", "b"], vec![("axis", Attribute::Int(1))])],
        );
        assert_eq!(run_named(&m, &x, None, "a").1, vec![0., 1., 7., 8.]);
        assert_eq!(run_named(&m, &x, None, "b").1, vec![2., 3., 4., 5., 6., 9., 10., 11., 12., 13.]);
        // Opset 18: num_outputs 3 over 7 gives 3, 3 and 1.
        let m = x_model(
            18,
            &[2, 7],
            vec![],
            vec![node("Split", &["x"], &["a", "b", "c"], vec![("axis", Attribute::Int(-1)), ("num_outputs", Attribute::Int(3))])],
        );
        let (shape, c, _) = run_named(&m, &x, None, "c");
        assert_eq!((shape, c), (vec![2, 1], vec![6., 13.]));
        assert_eq!(run_named(&m, &x, None, "b").1, vec![3., 4., 5., 10., 11., 12.]);
        // No sizes: equal pieces along axis 0.
        let m = x_model(17, &[2, 7], vec![], vec![node("Split", &["x"], &["a", "b"], vec![])]);
        assert_eq!(run_named(&m, &x, None, "b").1, iota(14)[7..].to_vec());
        // Sizes that do not add up are refused, naming the node.
        let m = x_model(
            13,
            &[2, 7],
            vec![ints("s", &[2, 4])],
            vec![node("Split", &["x", "s"], &["a", "b"], vec![("axis", Attribute::Int(1))])],
        );
        let e = import_err(&m);
        assert!(e.contains("Split_node") && e.contains("do not add up to 7"), "{e}");
        let m = x_model(17, &[2, 7], vec![], vec![node("Split", &["x"], &["a", "b"], vec![("axis", Attribute::Int(1))])]);
        assert!(import_err(&m).contains("does not split evenly"));
    }

    /// ONNX Slice on one axis, written from the specification.
    fn slice_1d(n: i64, start: i64, end: i64, step: i64) -> Vec<i64> {
        let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + n } else { v }).clamp(lo, hi);
        let mut out = vec![];
        if step > 0 {
            let (s, e) = (fix(start, 0, n), fix(end, 0, n));
            let mut i = s;
            while i < e {
                out.push(i);
                i += step;
            }
        } else {
            let (s, e) = (fix(start, 0, n - 1), fix(end, -1, n - 1));
            let mut i = s;
            while i > e {
                out.push(i);
                i += step;
            }
        }
        out
    }

    #[test]
    fn slice_clamps_counts_from_the_end_and_walks_backwards() {
        let xs = [3, 5];
        let x = iota(15);
        // (starts, ends, axes, steps) per case; axis -1 is axis 1.
        type Case = (Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>);
        let cases: Vec<Case> = vec![
            (vec![1, -4], vec![i64::MAX, -1], None, None),
            (vec![-1], vec![-100], Some(vec![-1]), Some(vec![-2])),
            (vec![4, 0], vec![0, 99], Some(vec![1, 0]), Some(vec![-1, 2])),
            (vec![2], vec![2], Some(vec![0]), None),
        ];
        for (starts, ends, axes, steps) in cases {
            let mut inits = vec![ints("st", &starts), ints("en", &ends)];
            let mut inputs = vec!["x", "st", "en"];
            if let Some(a) = &axes {
                inits.push(ints("ax", a));
                inputs.push("ax");
            }
            if let Some(s) = &steps {
                if axes.is_none() {
                    inputs.push("");
                }
                inits.push(ints("sp", s));
                inputs.push("sp");
            }
            let m = x_model(17, &xs, inits, vec![node("Slice", &inputs, &["y"], vec![])]);
            let (shape, y) = run(&m, &x);
            let axes: Vec<usize> =
                axes.unwrap_or_else(|| (0..starts.len() as i64).collect()).iter().map(|&a| a.rem_euclid(2) as usize).collect();
            let steps = steps.unwrap_or(vec![1; starts.len()]);
            let picks: Vec<Vec<i64>> = (0..2)
                .map(|k| match axes.iter().position(|&a| a == k) {
                    Some(p) => slice_1d(xs[k] as i64, starts[p], ends[p], steps[p]),
                    None => (0..xs[k] as i64).collect(),
                })
                .collect();
            assert_eq!(shape, vec![picks[0].len(), picks[1].len()]);
            let want: Vec<f64> = picks[0].iter().flat_map(|&r| picks[1].iter().map(move |&c| (r * 5 + c) as f64)).collect();
            assert_eq!(y, want, "starts {starts:?} ends {ends:?} axes {axes:?} steps {steps:?}");
        }
        // Starts computed at run time are refused with the node's name.
        let m = model(
            17,
            &[("x", DataType::F32, &xs), ("ids", DataType::I64, &[1])],
            vec![ints("en", &[3])],
            vec![node("Slice", &["x", "ids", "en"], &["y"], vec![])],
            "y",
        );
        let e = import_err(&m);
        assert!(e.contains("Slice_node") && e.contains("starts") && e.contains("computed at run time"), "{e}");
    }

    #[test]
    fn gather_reads_a_parameter_with_run_time_ids_and_a_tensor_with_constant_indices() {
        // An embedding table [4, 3] indexed by int64 ids [2, 2], one negative.
        let table: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        let m = model(
            17,
            &[("x", DataType::F32, &[2, 3]), ("ids", DataType::I64, &[2, 2])],
            vec![floats("emb", &[4, 3], table.clone())],
            vec![node("Gather", &["emb", "ids"], &["e"], vec![]), node("Concat", &["e", "e"], &["y"], vec![("axis", Attribute::Int(0))])],
            "e",
        );
        let ids = [3, 0, -1, 1];
        let (shape, y, ops) = run_named(&m, &iota(6), Some(&ids), "e");
        assert_eq!(shape, vec![2, 2, 3]);
        let table = &table;
        let want: Vec<f64> = ids.iter().flat_map(|&i| (0..3).map(move |c| f64::from(table[(i.rem_euclid(4) * 3 + c) as usize]))).collect();
        assert_eq!(y, want);
        assert_eq!(ops[0], "Gather");
        // Axis -1 of a run-time [2, 3] tensor with constant scalar and vector indices.
        let nodes = vec![
            node("Gather", &["x", "i"], &["g"], vec![("axis", Attribute::Int(-1))]),
            node("Gather", &["x", "j"], &["y"], vec![("axis", Attribute::Int(1))]),
        ];
        let m = x_model(
            17,
            &[2, 3],
            vec![Tensor { name: "i".into(), dims: vec![], values: TensorValues::I64(vec![-1]) }, ints("j", &[2, 0, 2])],
            nodes,
        );
        let x = [1., 2., 3., 4., 5., 6.];
        assert_eq!(run_named(&m, &x, None, "g").0, vec![2]);
        assert_eq!(run_named(&m, &x, None, "g").1, vec![3., 6.]);
        assert_eq!(run(&m, &x), (vec![2, 3], vec![3., 1., 3., 6., 4., 6.]));
    }

    #[test]
    fn expand_and_tile_repeat_values_by_numpy_and_tile_rules() {
        let x = [1., 2., 3.];
        let m = x_model(17, &[3, 1], vec![ints("s", &[2, 1, 4])], vec![node("Expand", &["x", "s"], &["y"], vec![])]);
        let (shape, y) = run(&m, &x);
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(y, (0..24).map(|i| x[(i / 4) % 3]).collect::<Vec<_>>());
        // Tile [2, 3] by [2, 3]: y[i][j] = x[i % 2][j % 3].
        let x = iota(6);
        let m = x_model(17, &[2, 3], vec![ints("r", &[2, 3])], vec![node("Tile", &["x", "r"], &["y"], vec![])]);
        let (shape, y) = run(&m, &x);
        assert_eq!(shape, vec![4, 9]);
        assert_eq!(y, (0..36).map(|i| x[((i / 9) % 2) * 3 + (i % 9) % 3]).collect::<Vec<_>>());
        let m = x_model(17, &[3, 1], vec![ints("s", &[2, -1])], vec![node("Expand", &["x", "s"], &["y"], vec![])]);
        assert!(import_err(&m).contains("negative"));
    }

    #[test]
    fn trilu_keeps_a_band_above_or_below_diagonal_k() {
        let x: Vec<f64> = (1..=12).map(f64::from).collect();
        for (upper, k) in [(1, 0), (1, 1), (0, 0), (0, -1), (1, -2)] {
            let m = x_model(
                17,
                &[3, 4],
                vec![Tensor { name: "k".into(), dims: vec![], values: TensorValues::I64(vec![k]) }],
                vec![node("Trilu", &["x", "k"], &["y"], vec![("upper", Attribute::Int(upper))])],
            );
            let y = run(&m, &x).1;
            for (i, v) in y.iter().enumerate() {
                let (r, c) = ((i / 4) as i64, (i % 4) as i64);
                let keep = if upper == 1 { c - r >= k } else { c - r <= k };
                assert_eq!(*v, if keep { x[i] } else { 0. }, "upper {upper} k {k} at ({r}, {c})");
            }
        }
    }

    #[test]
    fn pad_adds_a_constant_border_and_crops_with_negative_pads() {
        // [2, 3] padded by 1 row on top, cropped by 1 column on the left and padded 2 on the right.
        let m = x_model(
            17,
            &[2, 3],
            vec![ints("p", &[1, -1, 0, 2]), floats("v", &[], vec![9.])],
            vec![node("Pad", &["x", "p", "v"], &["y"], vec![])],
        );
        let (shape, y) = run(&m, &iota(6));
        assert_eq!(shape, vec![3, 4]);
        assert_eq!(y, vec![9., 9., 9., 9., 1., 2., 9., 9., 4., 5., 9., 9.]);
        // Opset 18 axes: pad only the last axis.
        let m = model(
            18,
            &[("x", DataType::F32, &[2, 3])],
            vec![ints("p", &[1, 0]), ints("a", &[-1])],
            vec![node("Pad", &["x", "p", "", "a"], &["y"], vec![])],
            "y",
        );
        assert_eq!(run(&m, &iota(6)), (vec![2, 4], vec![0., 0., 1., 2., 0., 3., 4., 5.]));
        let m = x_model(
            17,
            &[2, 3],
            vec![ints("p", &[1, 1, 1, 1])],
            vec![node("Pad", &["x", "p"], &["y"], vec![("mode", Attribute::String(b"reflect".to_vec()))])],
        );
        assert!(import_err(&m).contains("mode 'reflect'"));
    }

    /// `a @ b` for row-major `[m, k]` and `[k, n]` matrices.
    fn mm(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        (0..m * n).map(|i| (0..k).map(|p| a[(i / n) * k + p] * b[p * n + i % n]).sum()).collect()
    }

    #[test]
    fn matmul_of_any_rank_broadcasts_batches_and_flattens_rows_against_a_weight() {
        let w: Vec<f32> = (0..8).map(|v| v as f32 - 3.5).collect();
        let wd: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let x = iota(12);
        // [2, 3, 2] x [2, 4]: a Linear layer on a sequence, one dense MatMul between reshapes.
        let m = x_model(17, &[2, 3, 2], vec![floats("w", &[2, 4], w.clone())], vec![node("MatMul", &["x", "w"], &["y"], vec![])]);
        let (shape, y, ops) = run_named(&m, &x, None, "y");
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(y, mm(&x, &wd, 6, 2, 4));
        assert_eq!(ops, ["Reshape", "MatMul", "Reshape"]);
        // [2, 3, 2] x [1, 2, 4]: a batched product, b broadcast over the batch.
        let m = x_model(17, &[2, 3, 2], vec![floats("w", &[1, 2, 4], w.clone())], vec![node("MatMul", &["x", "w"], &["y"], vec![])]);
        let (shape, y, ops) = run_named(&m, &x, None, "y");
        assert_eq!((shape, ops), (vec![2, 3, 4], vec!["BatchMatMul"]));
        assert_eq!(y, mm(&x, &wd, 6, 2, 4));
        // A 1-D row [4] times a batch of one [4, 2] matrix: the row's axis is dropped.
        let m = x_model(17, &[4], vec![floats("w", &[1, 4, 2], w)], vec![node("MatMul", &["x", "w"], &["y"], vec![])]);
        let (shape, y) = run(&m, &[1., 2., 3., 4.]);
        assert_eq!(shape, vec![1, 2]);
        assert_eq!(y, mm(&[1., 2., 3., 4.], &wd, 1, 4, 2));
        // Inner sizes that differ are refused with the node's name.
        let m = x_model(17, &[2, 3, 2], vec![floats("w", &[3, 4], vec![0.; 12])], vec![node("MatMul", &["x", "w"], &["y"], vec![])]);
        let e = import_err(&m);
        assert!(e.contains("MatMul_node") && e.contains("inner dimensions"), "{e}");
    }

    /// `x [16, 64] * p` (a same-shape trainable factor, so the dropout's input needs a gradient),
    /// then Dropout(0.25) in training mode, then a `[64, 2]` weight.
    fn dropout_model() -> OnnxModel {
        let nodes = vec![
            node("Mul", &["x", "p"], &["h"], vec![]),
            node("Dropout", &["h", "ratio", "training"], &["d"], vec![]),
            node("MatMul", &["d", "w"], &["y"], vec![]),
        ];
        let inits = vec![
            floats("p", &[16, 64], (0..1024).map(|i| 1.0 + (i % 7) as f32 * 0.125).collect()),
            floats("ratio", &[], vec![0.25]),
            Tensor { name: "training".into(), dims: vec![], values: TensorValues::Bool(vec![true]) },
            floats("w", &[64, 2], (0..128).map(|i| ((i % 11) as f32 - 5.0) * 0.0625).collect()),
        ];
        x_model(17, &[16, 64], inits, nodes)
    }

    fn dropout_training(mode: DropoutMode, seed: u64) -> (crate::stages::TrainingGraph, Vec<String>) {
        let options = ImportOptions { loss: LossKind::Mse, dropout: mode, seed, ..Default::default() };
        let imported = import_model(&dropout_model(), "t", &options).unwrap();
        (imported.forward.into_training(crate::CompileOptions::default()).unwrap(), imported.notes)
    }

    #[test]
    fn training_mode_dropout_draws_a_new_seeded_mask_each_step_and_masks_the_gradient() {
        use crate::ir::{Program, Role};
        use pock_engine::ops::{Op, RandomOp};
        use pock_engine::plan::RuntimeScalar;
        let (tg, notes) = dropout_training(DropoutMode::On, 3);
        assert!(notes.is_empty(), "{notes:?}");
        let g = &tg.graph;
        let train: Vec<_> = g.nodes.iter().filter(|n| n.program == Program::Train).cloned().collect();
        let drop = train.iter().find(|n| matches!(n.op, Op::Random(RandomOp::Dropout(_)))).expect("a dropout node");
        let (mask, counter) = (drop.outputs[1], drop.inputs[1]);
        assert_eq!(g.tensor(counter).role, Role::RngCounter);
        // The eval program neither drops nor advances the counter.
        assert!(g.nodes.iter().filter(|n| n.program == Program::Eval).all(|n| !matches!(n.op, Op::Random(_))));
        let p = g.tensors.iter().position(|t| t.name == "p").map(|i| crate::ir::TensorId(i as u32)).unwrap();
        let lr = g.tensors.iter().position(|t| t.role == Role::RuntimeScalar(RuntimeScalar::LearningRate)).unwrap();
        let x: Vec<f64> = (0..1024).map(|i| 0.5 + (i % 5) as f64 * 0.25).collect();

        let mut it = Interpreter::<f64>::new(g);
        it.set(crate::ir::TensorId(lr as u32), vec![1.0]);
        let mut masks = vec![];
        for step in 0..3 {
            let before = it.get(p).unwrap().to_vec();
            it.set(tg.train_input, x.clone());
            it.set(tg.train_target, vec![0.0; 32]);
            it.run(&train).unwrap();
            let m = it.get(mask).unwrap().to_vec();
            let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / 1024.0;
            // Four standard deviations of a binomial(1024, 0.75) proportion is about 0.054.
            assert!((kept - 0.75).abs() < 0.054, "step {step}: kept {kept}");
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75), "kept values are scaled by 1 / (1 - ratio)");
            // The gradient of p passes through the mask: a dropped element's factor does not move.
            let after = it.get(p).unwrap();
            for i in 0..1024 {
                assert_eq!(m[i] == 0.0, after[i] == before[i], "step {step}, element {i}: mask {} moved {}", m[i], after[i] - before[i]);
            }
            assert_eq!(it.get_int(counter).unwrap(), &[step + 1]);
            masks.push(m);
        }
        assert_ne!(masks[0], masks[1]);
        assert_ne!(masks[1], masks[2]);
        // Restoring the counter (as a checkpoint does) draws step 2's mask again.
        let mut fresh = Interpreter::<f64>::new(g);
        fresh.set(crate::ir::TensorId(lr as u32), vec![1.0]);
        fresh.set_int(counter, vec![1]);
        fresh.set(tg.train_input, x.clone());
        fresh.set(tg.train_target, vec![0.0; 32]);
        fresh.run(&train).unwrap();
        assert_eq!(fresh.get(mask).unwrap(), masks[1].as_slice());
        // Another seed draws other masks.
        let (other, _) = dropout_training(DropoutMode::On, 4);
        let mut it = Interpreter::<f64>::new(&other.graph);
        it.set(crate::ir::TensorId(lr as u32), vec![1.0]);
        it.set(other.train_input, x.clone());
        it.set(other.train_target, vec![0.0; 32]);
        let train: Vec<_> = other.graph.nodes.iter().filter(|n| n.program == Program::Train).cloned().collect();
        it.run(&train).unwrap();
        assert_ne!(it.get(mask).unwrap(), masks[0].as_slice());
    }

    #[test]
    fn dropout_is_the_identity_in_eval_with_dropout_off_and_outside_training_mode() {
        use crate::ir::Program;
        use pock_engine::ops::Op;
        let x: Vec<f64> = (0..1024).map(|i| 0.5 + (i % 5) as f64 * 0.25).collect();
        let m = dropout_model();
        let (p, w) = (&m.initializers[0], &m.initializers[3]);
        let (TensorValues::F32(p), TensorValues::F32(w)) = (&p.values, &w.values) else { unreachable!() };
        let h: Vec<f64> = x.iter().zip(p).map(|(&x, &p)| x * f64::from(p)).collect();
        let want = mm(&h, &w.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), 16, 64, 2);
        let (tg, _) = dropout_training(DropoutMode::On, 0);
        let mut it = Interpreter::<f64>::new(&tg.graph);
        it.set(tg.eval_input, x.clone());
        it.set(tg.eval_target, vec![0.0; 32]);
        let eval: Vec<_> = tg.graph.nodes.iter().filter(|n| n.program == Program::Eval).cloned().collect();
        it.run(&eval).unwrap();
        let got = it.get(tg.eval_output).unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12), "{got:?} vs {want:?}");
        // --dropout off: no random op anywhere, and a note says so.
        let (off, notes) = dropout_training(DropoutMode::Off, 0);
        assert!(off.graph.nodes.iter().all(|n| !matches!(n.op, Op::Random(_))));
        assert!(notes.len() == 1 && notes[0].contains("--dropout off"), "{notes:?}");
        // Inference-mode Dropout (no training_mode input) is the identity without a note.
        let mut m = dropout_model();
        m.nodes[1].inputs.truncate(2);
        let f = import_model(&m, "t", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).unwrap();
        assert!(f.notes.is_empty() && f.forward.graph.nodes.iter().all(|n| !matches!(n.op, Op::Random(_))));
        // A ratio of 1 has no finite scale.
        let mut m = dropout_model();
        m.initializers[1] = floats("ratio", &[], vec![1.0]);
        assert!(import_err(&m).contains("outside [0, 1)"));
    }

    #[test]
    fn random_uniform_like_draws_in_its_range_with_the_input_shape_and_anew_each_step() {
        let attrs = vec![("low", Attribute::Float(-1.0)), ("high", Attribute::Float(2.0))];
        let m = x_model(17, &[40, 50], vec![], vec![node("RandomUniformLike", &["x"], &["y"], attrs)]);
        let f = import_model(&m, "t", &ImportOptions { loss: LossKind::Mse, seed: 9, ..Default::default() }).unwrap();
        assert!(f.notes.iter().any(|n| n.contains("RandomUniformLike")), "{:?}", f.notes);
        let g = &f.forward.graph;
        assert_eq!(g.shape(f.forward.output), &[40, 50]);
        let mut it = Interpreter::<f64>::new(g);
        it.set(f.forward.inputs[0], vec![0.0; 2000]);
        let mut draws = vec![];
        for _ in 0..2 {
            it.run(&g.nodes).unwrap();
            let y = it.get(f.forward.output).unwrap().to_vec();
            assert!(y.iter().all(|&v| (-1.0..2.0).contains(&v)));
            let mean = y.iter().sum::<f64>() / 2000.0;
            // The standard error of the mean of 2000 uniform values over a width of 3 is about 0.019.
            assert!((mean - 0.5).abs() < 0.08, "mean {mean}");
            draws.push(y);
        }
        assert_ne!(draws[0], draws[1], "the step counter advanced");
    }
}
