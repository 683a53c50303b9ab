//! 1-D convolution, transposed convolution, pooling and batch normalisation (`Conv1d`,
//! `ConvTranspose1d`, `MaxPool1d`, `AvgPool1d`, `BatchNorm1d` on `[N, C, L]`, global pooling over a sequence): a node whose input is `[N, C, L]` is imported as its 2-D form on `[N, C, 1, L]`,
//! with a leading 1 in every spatial attribute, between two reshapes. The weight `[O, C/g, K]` is
//! reshaped to `[O, C/g, 1, K]` on the fly, so it stays the model's parameter (its gradient flows
//! back through the reshape, and `pock export` writes it with its own shape).

use super::{Ctx, Importer, Value};
use crate::onnx::{Attribute, Node};
use pock_engine::ops::DenseOp;

use super::ImportError;

/// The op types lifted from 1-D to 2-D.
const LIFTED: &[&str] = &["Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization"];

impl Importer<'_> {
    /// Imports the node through its 2-D form when it is a 1-D one; `None` for any other node.
    pub(super) fn lift_1d(&mut self, ctx: &Ctx) -> Option<Result<(), ImportError>> {
        let node = ctx.node;
        if !LIFTED.contains(&node.op_type.as_str()) {
            return None;
        }
        let x = node.inputs.first()?;
        let rank = match self.values.get(x.as_str())? {
            Value::Tensor(t) => self.graph.shape(*t).len(),
            _ => return None,
        };
        (rank == 3).then(|| self.import_lifted(ctx))
    }

    fn import_lifted(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let node = ctx.node;
        let name = node.name.clone();
        // The inputs that gain a unit axis before the last: x, and a convolution's weight.
        let lifted_inputs = if matches!(node.op_type.as_str(), "Conv" | "ConvTranspose") { 2 } else { 1 };
        let mut inputs = node.inputs.clone();
        for (i, input) in inputs.iter_mut().enumerate().take(lifted_inputs) {
            let t = self.tensor(ctx, ctx.input(i)?)?;
            let mut shape = self.graph.shape(t).to_vec();
            if shape.len() != 3 {
                return Err(ctx.err(format!("input {i} has shape {shape:?}; a 1-D {} needs rank 3", node.op_type)));
            }
            shape.insert(2, 1);
            let lifted = format!("{name}.lift{i}");
            let t2 = self.emit(ctx, &lifted, DenseOp::Reshape { shape }, &[t])?;
            self.values.insert(lifted.clone(), Value::Tensor(t2));
            *input = lifted;
        }
        let mut attributes = Vec::with_capacity(node.attributes.len());
        for (key, value) in &node.attributes {
            let value = match (key.as_str(), value) {
                ("kernel_shape" | "strides" | "dilations", Attribute::Ints(v)) if v.len() == 1 => Attribute::Ints(vec![1, v[0]]),
                // ConvTranspose's: no extra rows, and one output row.
                ("output_padding", Attribute::Ints(v)) if v.len() == 1 => Attribute::Ints(vec![0, v[0]]),
                ("output_shape", Attribute::Ints(v)) if v.len() == 1 => Attribute::Ints(vec![1, v[0]]),
                // [begin, end] becomes [top, left, bottom, right].
                ("pads", Attribute::Ints(v)) if v.len() == 2 => Attribute::Ints(vec![0, v[0], 0, v[1]]),
                ("kernel_shape" | "strides" | "dilations" | "pads" | "output_padding" | "output_shape", _) => {
                    return Err(ctx.err(format!("attribute '{key}' does not fit a 1-D {} (input of rank 3)", node.op_type)))
                }
                _ => value.clone(),
            };
            attributes.push((key.clone(), value));
        }
        let out = format!("{name}.out2d");
        let lifted = Node {
            name: name.clone(),
            op_type: node.op_type.clone(),
            domain: node.domain.clone(),
            inputs,
            // Other outputs (BatchNormalization's statistics, a pool's indices) keep their
            // names: the 2-D import binds or refuses them.
            outputs: core::iter::once(out.clone()).chain(node.outputs.iter().skip(1).cloned()).collect(),
            attributes,
        };
        self.import_node(&lifted)?;
        let y = self.tensor(ctx, &out)?;
        let mut shape = self.graph.shape(y).to_vec();
        shape.remove(2);
        let y = self.emit(ctx, &format!("{name}.unlift"), DenseOp::Reshape { shape }, &[y])?;
        self.set(ctx, 0, Value::Tensor(y))
    }
}
