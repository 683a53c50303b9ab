//! The IR: a table of statically shaped tensors and an ordered list of primitive-op nodes.
//!
//! Nodes are kept in a valid execution order at all times. Tensors are single-assignment except
//! persistent ones (parameters, optimizer state, running statistics, accumulators), which ops
//! update in place through their [`Op::inplace_outputs`].

use pock_engine::ops::Op;
pub use pock_engine::plan::{DType, Phase, Role, RuntimeScalar, TensorId};

use crate::error::{CompileError, Result};

/// Which program of the plan a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// Forward (training mode), backward, and the optimizer unless gradients are accumulated.
    Train,
    /// The optimizer step after K accumulated micro-batches.
    Apply,
    /// Forward with frozen statistics, outputs and per-sample losses. `infer` is its prefix that
    /// ends at the model output.
    Eval,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorDef {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub role: Role,
    /// Initial value of parameters, running statistics and constants (row-major, of the
    /// tensor's dtype).
    pub init: Option<Values>,
}

/// The values of a tensor known at compile time, in its own dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    /// int8 values (the quant family's frozen weights).
    I8(Vec<i8>),
}

impl Values {
    pub fn dtype(&self) -> DType {
        match self {
            Values::F32(_) => DType::F32,
            Values::I64(_) => DType::I64,
            Values::Bool(_) => DType::Bool,
            Values::I8(_) => DType::I8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::I8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The float values, or `None` for another dtype.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Values::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The values as the engine stores them: little-endian, bools and int8 as one byte each.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            Values::I8(v) => v.iter().map(|&b| b as u8).collect(),
        }
    }
}

impl From<Vec<f32>> for Values {
    fn from(v: Vec<f32>) -> Self {
        Values::F32(v)
    }
}

impl TensorDef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// The initial value of a float tensor.
    pub fn init_f32(&self) -> Option<&[f32]> {
        self.init.as_ref().and_then(Values::as_f32)
    }
    /// Whether the tensor lives across steps (it is never planned as scratch).
    pub fn is_persistent(&self) -> bool {
        !matches!(self.role, Role::Transient | Role::Input | Role::Target)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub phase: Phase,
    pub program: Program,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub tensors: Vec<TensorDef>,
    pub nodes: Vec<Node>,
    /// The output-channel rows (axis 0) that a partially trained parameter updates, set by the
    /// update scheme (`scheme.rs`); a trainable parameter absent here trains whole. Autodiff and
    /// the optimizer read it; the plan does not (the row ops carry their rows).
    pub trained_rows: std::collections::BTreeMap<TensorId, std::ops::Range<usize>>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn tensor(&self, id: TensorId) -> &TensorDef {
        &self.tensors[id.index()]
    }

    pub fn tensor_mut(&mut self, id: TensorId) -> &mut TensorDef {
        &mut self.tensors[id.index()]
    }

    pub fn shape(&self, id: TensorId) -> &[usize] {
        &self.tensors[id.index()].shape
    }

    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name).map(|i| TensorId(i as u32))
    }

    pub fn add_tensor(&mut self, def: TensorDef) -> TensorId {
        self.tensors.push(def);
        TensorId(self.tensors.len() as u32 - 1)
    }

    /// A trainable parameter with its initial value.
    pub fn parameter(&mut self, name: impl Into<String>, shape: Vec<usize>, init: Vec<f32>) -> TensorId {
        assert_eq!(shape.iter().product::<usize>(), init.len(), "parameter init length");
        self.add_tensor(TensorDef {
            name: name.into(),
            shape,
            dtype: DType::F32,
            role: Role::Parameter { trainable: true },
            init: Some(Values::F32(init)),
        })
    }

    /// A constant tensor (never trained) with its value.
    pub fn constant(&mut self, name: impl Into<String>, shape: Vec<usize>, value: Vec<f32>) -> TensorId {
        assert_eq!(shape.iter().product::<usize>(), value.len(), "constant length");
        self.add_tensor(TensorDef { name: name.into(), shape, dtype: DType::F32, role: Role::Constant, init: Some(Values::F32(value)) })
    }

    /// A constant tensor of any dtype.
    pub fn typed_constant(&mut self, name: impl Into<String>, shape: Vec<usize>, value: Values) -> TensorId {
        assert_eq!(shape.iter().product::<usize>(), value.len(), "constant length");
        self.add_tensor(TensorDef { name: name.into(), shape, dtype: value.dtype(), role: Role::Constant, init: Some(value) })
    }

    /// A tensor the host feeds (model input or target).
    pub fn input(&mut self, name: impl Into<String>, shape: Vec<usize>, dtype: DType, role: Role) -> TensorId {
        self.add_tensor(TensorDef { name: name.into(), shape, dtype, role, init: None })
    }

    /// Appends a node whose outputs are all new tensors; returns them.
    ///
    /// Outputs are named after the node: `name` for a single output, `name:i` otherwise.
    pub fn emit(
        &mut self,
        name: impl Into<String>,
        op: impl Into<Op>,
        inputs: &[TensorId],
        phase: Phase,
        program: Program,
    ) -> Result<Vec<TensorId>> {
        self.emit_inplace(name, op, inputs, &[], phase, program)
    }

    /// Appends a node. `inplace` names the existing tensors for the op's in-place outputs
    /// (in order); the remaining outputs are created.
    pub fn emit_inplace(
        &mut self,
        name: impl Into<String>,
        op: impl Into<Op>,
        inputs: &[TensorId],
        inplace: &[TensorId],
        phase: Phase,
        program: Program,
    ) -> Result<Vec<TensorId>> {
        let (name, op) = (name.into(), op.into());
        let (shapes, dtypes) = self.infer(&name, &op, inputs)?;
        let range = op.inplace_outputs();
        if inplace.len() != range.len() {
            return Err(CompileError::Node {
                node: name,
                op: op.name(),
                message: format!("expects {} in-place outputs, got {}", range.len(), inplace.len()),
            });
        }
        let n_new = shapes.len().max(range.end) - range.len();
        let mut outputs = Vec::with_capacity(n_new + inplace.len());
        let total = if shapes.is_empty() { range.end } else { shapes.len() };
        for i in 0..total {
            if range.contains(&i) {
                let t = inplace[i - range.start];
                if let Some(s) = shapes.get(i) {
                    if s != self.shape(t) {
                        return Err(CompileError::Node {
                            node: name,
                            op: op.name(),
                            message: format!(
                                "in-place output {} ({}) has shape {:?}, expected {s:?}",
                                i,
                                self.tensor(t).name,
                                self.shape(t)
                            ),
                        });
                    }
                }
                if self.tensor(t).dtype != dtypes[i] {
                    return Err(CompileError::Node {
                        node: name,
                        op: op.name(),
                        message: format!(
                            "in-place output {i} ({}) is {}, expected {}",
                            self.tensor(t).name,
                            self.tensor(t).dtype.name(),
                            dtypes[i].name()
                        ),
                    });
                }
                if !self.tensor(t).is_persistent() {
                    return Err(CompileError::Node {
                        node: name,
                        op: op.name(),
                        message: format!("in-place output '{}' is not a persistent tensor", self.tensor(t).name),
                    });
                }
                outputs.push(t);
            } else {
                let out_name = if total == 1 { name.clone() } else { format!("{name}:{i}") };
                let t = self.add_tensor(TensorDef {
                    name: out_name,
                    shape: shapes[i].clone(),
                    dtype: dtypes[i],
                    role: Role::Transient,
                    init: None,
                });
                outputs.push(t);
            }
        }
        self.nodes.push(Node { name, op, inputs: inputs.to_vec(), outputs: outputs.clone(), phase, program });
        Ok(outputs)
    }

    /// The output shapes and dtypes of `op` on `inputs`, by the op's shape and dtype rules. There is
    /// one dtype per output (in-place ones included), even for `Fill`, which has no shapes.
    fn infer(&self, name: &str, op: &Op, inputs: &[TensorId]) -> Result<(Vec<Vec<usize>>, Vec<DType>)> {
        let shape_error = |source| CompileError::Shape { node: name.to_string(), source };
        let in_dtypes: Vec<DType> = inputs.iter().map(|&t| self.tensor(t).dtype).collect();
        let dtypes = op.output_dtypes(&in_dtypes).map_err(shape_error)?;
        let in_shapes: Vec<&[usize]> = inputs.iter().map(|&t| self.shape(t)).collect();
        let shapes = op.output_shapes(&in_shapes).map_err(shape_error)?;
        let outputs = if shapes.is_empty() { op.inplace_outputs().end } else { shapes.len() };
        if dtypes.len() != outputs {
            return Err(CompileError::Node {
                node: name.to_string(),
                op: op.name(),
                message: format!("the dtype rule gives {} outputs, the shape rule {outputs}", dtypes.len()),
            });
        }
        Ok((shapes, dtypes))
    }

    /// Re-checks every node's shapes and dtypes against its op's rules (run after each pass).
    pub fn validate(&self) -> Result<()> {
        for node in &self.nodes {
            let (shapes, dtypes) = self.infer(&node.name, &node.op, &node.inputs)?;
            for (i, (&t, &dtype)) in node.outputs.iter().zip(&dtypes).enumerate() {
                if self.tensor(t).dtype != dtype {
                    return Err(CompileError::Node {
                        node: node.name.clone(),
                        op: node.op.name(),
                        message: format!("output {i} is {}, rule says {}", self.tensor(t).dtype.name(), dtype.name()),
                    });
                }
            }
            for (i, s) in shapes.iter().enumerate() {
                let t = node.outputs.get(i).ok_or_else(|| CompileError::Node {
                    node: node.name.clone(),
                    op: node.op.name(),
                    message: format!("missing output {i}"),
                })?;
                if self.shape(*t) != s.as_slice() {
                    return Err(CompileError::Node {
                        node: node.name.clone(),
                        op: node.op.name(),
                        message: format!("output {i} has shape {:?}, rule says {s:?}", self.shape(*t)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Nodes of one program, in order.
    pub fn program_nodes(&self, program: Program) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.program == program)
    }

    /// Trainable parameters, in creation order.
    pub fn trainable_parameters(&self) -> Vec<TensorId> {
        (0..self.tensors.len() as u32).map(TensorId).filter(|&t| self.tensor(t).role == Role::Parameter { trainable: true }).collect()
    }
}
