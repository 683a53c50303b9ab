//! A plain f64 interpreter over IR nodes, built on the engine's reference kernels.
//!
//! It gives the compiler an independent evaluation of any graph, which the gradient checks use:
//! every gradient rule is tested by evaluating the backward nodes it emits against central finite
//! differences of the forward nodes.

use pock_engine::kernels::{reference, Float, View, ViewMut};

use crate::error::{CompileError, Result};
use crate::ir::{DType, Graph, Node, TensorId};

/// Evaluates in `T`: f64 for gradient checks, f32 to reproduce the engine's reference kernels
/// exactly.
pub struct Interpreter<'g, T = f64> {
    graph: &'g Graph,
    floats: Vec<Option<Vec<T>>>,
    ints: Vec<Option<Vec<i64>>>,
}

impl<'g, T: Float> Interpreter<'g, T> {
    /// Starts with every tensor that has an initial value (parameters, constants, statistics).
    pub fn new(graph: &'g Graph) -> Self {
        let floats = graph.tensors.iter().map(|t| t.init.as_ref().map(|v| v.iter().map(|&x| T::from_f32(x)).collect())).collect();
        let ints = vec![None; graph.tensors.len()];
        Interpreter { graph, floats, ints }
    }

    pub fn set(&mut self, t: TensorId, value: Vec<T>) {
        assert_eq!(value.len(), self.graph.tensor(t).numel(), "value for '{}'", self.graph.tensor(t).name);
        self.floats[t.index()] = Some(value);
    }

    pub fn set_int(&mut self, t: TensorId, value: Vec<i64>) {
        assert_eq!(value.len(), self.graph.tensor(t).numel(), "value for '{}'", self.graph.tensor(t).name);
        self.ints[t.index()] = Some(value);
    }

    pub fn get(&self, t: TensorId) -> Option<&[T]> {
        self.floats[t.index()].as_deref()
    }

    pub fn run<'n>(&mut self, nodes: impl IntoIterator<Item = &'n Node>) -> Result<()> {
        for node in nodes {
            self.run_node(node)?;
        }
        Ok(())
    }

    pub fn run_node(&mut self, node: &Node) -> Result<()> {
        let g = self.graph;
        let missing = |t: TensorId| CompileError::Node {
            node: node.name.clone(),
            op: node.op.name(),
            message: format!("input '{}' has no value", g.tensor(t).name),
        };
        let inplace = node.op.inplace_outputs();
        let mut outs: Vec<Vec<T>> = Vec::with_capacity(node.outputs.len());
        for (i, &t) in node.outputs.iter().enumerate() {
            let old = self.floats[t.index()].take();
            outs.push(if inplace.contains(&i) { old.ok_or_else(|| missing(t))? } else { vec![T::zero(); g.tensor(t).numel()] });
        }
        let mut inputs = Vec::new();
        let mut labels = None;
        for &t in &node.inputs {
            let def = g.tensor(t);
            if def.dtype == DType::I64 {
                labels = Some(View { data: self.ints[t.index()].as_deref().ok_or_else(|| missing(t))?, shape: &def.shape });
            } else {
                inputs.push(View { data: self.floats[t.index()].as_deref().ok_or_else(|| missing(t))?, shape: &def.shape });
            }
        }
        let mut views: Vec<ViewMut<T>> =
            outs.iter_mut().zip(&node.outputs).map(|(d, &t)| ViewMut { data: d.as_mut_slice(), shape: &g.tensor(t).shape }).collect();
        reference::execute(&node.op, pock_engine::kernels::NodeArgs { inputs: &inputs, labels, outputs: &mut views })
            .map_err(|e| CompileError::Node { node: node.name.clone(), op: node.op.name(), message: e.to_string() })?;
        drop(views);
        for (t, d) in node.outputs.iter().zip(outs) {
            self.floats[t.index()] = Some(d);
        }
        Ok(())
    }
}
