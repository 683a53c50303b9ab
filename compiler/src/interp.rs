//! A plain f64 interpreter over IR nodes, built on the engine's reference kernels.
//!
//! It gives the compiler an independent evaluation of any graph, which the gradient checks use:
//! every gradient rule is tested by evaluating the backward nodes it emits against central finite
//! differences of the forward nodes.

use pock_engine::kernels::{reference, Float, NodeArgs, View, ViewMut};

use crate::error::{CompileError, Result};
use crate::ir::{DType, Graph, Node, TensorId, Values};

/// Evaluates in `T`: f64 for gradient checks, f32 to reproduce the engine's reference kernels
/// exactly. Float tensors hold `T`; `i64` and bool tensors hold their own values, and `u8` tensors
/// (packed masks) and `i8` tensors are bytes kept with the bools, as the engine passes them to kernels.
pub struct Interpreter<'g, T = f64> {
    graph: &'g Graph,
    floats: Vec<Option<Vec<T>>>,
    ints: Vec<Option<Vec<i64>>>,
    bools: Vec<Option<Vec<u8>>>,
}

impl<'g, T: Float> Interpreter<'g, T> {
    /// Starts with every tensor that has an initial value (parameters, constants, statistics).
    pub fn new(graph: &'g Graph) -> Self {
        let floats = graph.tensors.iter().map(|t| t.init_f32().map(|v| v.iter().map(|&x| T::from_f32(x)).collect())).collect();
        let ints = graph.tensors.iter().map(|t| if let Some(Values::I64(v)) = &t.init { Some(v.clone()) } else { None }).collect();
        let bools = graph
            .tensors
            .iter()
            .map(|t| match &t.init {
                Some(Values::Bool(v)) => Some(v.iter().map(|&b| u8::from(b)).collect()),
                Some(Values::I8(v)) => Some(v.iter().map(|&b| b as u8).collect()),
                _ => None,
            })
            .collect();
        Interpreter { graph, floats, ints, bools }
    }

    pub fn set(&mut self, t: TensorId, value: Vec<T>) {
        self.check(t, value.len(), DType::F32);
        self.floats[t.index()] = Some(value);
    }

    pub fn set_int(&mut self, t: TensorId, value: Vec<i64>) {
        self.check(t, value.len(), DType::I64);
        self.ints[t.index()] = Some(value);
    }

    /// Bool values are bytes, 0 or 1.
    pub fn set_bool(&mut self, t: TensorId, value: Vec<u8>) {
        self.check(t, value.len(), DType::Bool);
        self.bools[t.index()] = Some(value);
    }

    fn check(&self, t: TensorId, len: usize, dtype: DType) {
        let def = self.graph.tensor(t);
        assert_eq!(len, def.numel(), "value for '{}'", def.name);
        assert_eq!(def.dtype, dtype, "value for '{}'", def.name);
    }

    pub fn get(&self, t: TensorId) -> Option<&[T]> {
        self.floats[t.index()].as_deref()
    }

    pub fn get_int(&self, t: TensorId) -> Option<&[i64]> {
        self.ints[t.index()].as_deref()
    }

    pub fn get_bool(&self, t: TensorId) -> Option<&[u8]> {
        self.bools[t.index()].as_deref()
    }

    pub fn run<'n>(&mut self, nodes: impl IntoIterator<Item = &'n Node>) -> Result<()> {
        for node in nodes {
            self.run_node(node)?;
        }
        Ok(())
    }

    pub fn run_node(&mut self, node: &Node) -> Result<()> {
        let g = self.graph;
        let error = |message: String| CompileError::Node { node: node.name.clone(), op: node.op.name(), message };
        let missing = |t: TensorId| error(format!("input '{}' has no value", g.tensor(t).name));
        let inplace = node.op.inplace_outputs();
        // Outputs move out of the tensor table while the node runs (in-place ones keep their old
        // value, the others start at zero), so that inputs can be borrowed from it meanwhile.
        fn take<V: Clone>(slot: &mut Option<Vec<V>>, in_place: bool, numel: usize, zero: V) -> Option<Vec<V>> {
            let old = slot.take();
            if in_place {
                old
            } else {
                Some(vec![zero; numel])
            }
        }
        let (mut float_outs, mut int_outs, mut bool_outs) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &t) in node.outputs.iter().enumerate() {
            let (def, in_place) = (g.tensor(t), inplace.contains(&i));
            let taken = match def.dtype {
                DType::F32 => take(&mut self.floats[t.index()], in_place, def.numel(), T::zero()).map(|v| float_outs.push((t, v))),
                DType::I64 => take(&mut self.ints[t.index()], in_place, def.numel(), 0).map(|v| int_outs.push((t, v))),
                DType::Bool | DType::U8 | DType::I8 => {
                    take(&mut self.bools[t.index()], in_place, def.numel(), 0).map(|v| bool_outs.push((t, v)))
                }
                other => {
                    return Err(error(format!("output '{}' has dtype {}, which the interpreter does not run", def.name, other.name())))
                }
            };
            taken.ok_or_else(|| missing(t))?;
        }
        let (mut floats, mut ints, mut bools) = (Vec::new(), Vec::new(), Vec::new());
        for &t in &node.inputs {
            let def = g.tensor(t);
            let shape = def.shape.as_slice();
            match def.dtype {
                DType::F32 => floats.push(View { data: self.floats[t.index()].as_deref().ok_or_else(|| missing(t))?, shape }),
                DType::I64 => ints.push(View { data: self.ints[t.index()].as_deref().ok_or_else(|| missing(t))?, shape }),
                DType::Bool | DType::U8 | DType::I8 => {
                    bools.push(View { data: self.bools[t.index()].as_deref().ok_or_else(|| missing(t))?, shape })
                }
                other => return Err(error(format!("input '{}' has dtype {}, which the interpreter does not run", def.name, other.name()))),
            }
        }
        fn views<'a, V>(g: &'a Graph, outs: &'a mut [(TensorId, Vec<V>)]) -> Vec<ViewMut<'a, V>> {
            outs.iter_mut().map(|(t, d)| ViewMut { data: d.as_mut_slice(), shape: &g.tensor(*t).shape }).collect()
        }
        let (mut fv, mut iv, mut bv) = (views(g, &mut float_outs), views(g, &mut int_outs), views(g, &mut bool_outs));
        let args = NodeArgs {
            inputs: &floats,
            int_inputs: &ints,
            bool_inputs: &bools,
            outputs: &mut fv,
            int_outputs: &mut iv,
            bool_outputs: &mut bv,
        };
        reference::execute(&node.op, args).map_err(|e| error(e.to_string()))?;
        drop((fv, iv, bv, floats, ints, bools));
        for (t, d) in float_outs {
            self.floats[t.index()] = Some(d);
        }
        for (t, d) in int_outs {
            self.ints[t.index()] = Some(d);
        }
        for (t, d) in bool_outs {
            self.bools[t.index()] = Some(d);
        }
        Ok(())
    }
}
