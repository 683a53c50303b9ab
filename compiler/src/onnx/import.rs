//! The op importer: an [`OnnxModel`] becomes a [`ForwardGraph`].
//!
//! Float initializers become trainable parameters under their ONNX names (BatchNorm running
//! means and variances become running statistics); graph inputs become data inputs with the
//! dimensions fixed by `--batch` / `--input-shape`. Each ONNX op type maps through one table
//! ([`Importer::import_node`], one arm per op type) onto pock's primitives; composite ops (Gemm,
//! Flatten, Conv with a bias, ...) expand there. Values computed only from shapes and constants
//! never reach the graph: [`super::fold`] evaluates them at compile time.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use pock_engine::ops::{BatchNorm, Clip, Conv2d, ConvOp, DenseOp, MatMul, NormOp, Op, Pool2d, PoolOp};

use super::error::ImportError;
use super::fold::{self, Const, ConstData};
use super::training;
use super::{resolve_input_shapes, Attribute, DataType, Node, OnnxModel, ShapeOverrides};
use crate::ir::{DType, Graph, Phase, Program, Role, TensorDef, TensorId};
use crate::stages::ForwardGraph;

// The arms for elementwise maths, reductions, normalisation and Cast.
#[path = "import_math.rs"]
mod math;

#[path = "import_move.rs"]
mod import_move;

// Ops composed exactly from existing primitives (PRelu, Mish, the norms, ...).
#[path = "import_composite.rs"]
mod composite;

// Resize and ConvTranspose.
#[path = "import_resize.rs"]
mod resize;

#[path = "forward.rs"]
mod forward;

#[path = "import_1d.rs"]
mod import_1d;

// Conv, MaxPool, BatchNormalization and global pooling on volumes, from 2-D ops.
#[path = "import_3d.rs"]
mod import_3d;

#[path = "import_rnn.rs"]
mod import_rnn;

// IsNaN, IsInf, CumSum, GatherElements and GatherND.
#[path = "import_scan.rs"]
mod import_scan;

// DepthToSpace, SpaceToDepth, Einsum, OneHot, ReduceMin and the small activations and norms.
#[path = "import_more.rs"]
mod import_more;
pub use forward::{import_forward, ForwardModel, OutputValue};

/// The op types imported onto graph nodes, whatever their inputs.
pub const GRAPH_OPS: &[&str] = &[
    "GRU",
    "LSTM",
    "LRN",
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Cos",
    "CumSum",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GroupNormalization",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "If",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mul",
    "Neg",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "RandomUniformLike",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Round",
    "Selu",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// Every op type pock imports, sorted: the graph ops and the ops it folds on constants.
pub fn supported_ops() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = GRAPH_OPS.iter().chain(fold::FOLDABLE).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

pub use super::training::LossKind;

/// What `pock compile model.onnx` decides besides the training options.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub shapes: ShapeOverrides,
    /// The graph output to train (`--output NAME`); `None` takes the model's only output.
    pub output: Option<String>,
    pub loss: LossKind,
    /// Whether training-mode Dropout draws masks (`--dropout on`, the default) or runs as the
    /// identity (`--dropout off`).
    pub dropout: DropoutMode,
    /// The seed of the dropout masks (`--seed`), fixed in the plan.
    pub seed: u64,
}

/// What training-mode Dropout nodes do in the train program (eval and infer never drop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropoutMode {
    /// Seeded inverted dropout with a fresh mask each step, as PyTorch's `train()`.
    #[default]
    On,
    /// The identity, as in `eval()`.
    Off,
}

/// An imported model and what the user should know about the import.
#[derive(Clone, Debug)]
pub struct Imported {
    pub forward: ForwardGraph,
    /// Behaviours that differ from the ONNX graph's, one sentence each (printed by the CLI).
    pub notes: Vec<String>,
}

/// Reads an ONNX file and imports it; the graph's name is the file name.
pub fn import_file(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let model = super::load_model(path)?;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().to_string());
    import_model(&model, &name, options)
}

/// Imports a loaded model.
pub fn import_model(model: &OnnxModel, name: &str, options: &ImportOptions) -> Result<Imported, ImportError> {
    let output_name = training::chosen_output(model, options.output.as_deref(), |n| training::produced(model, n))?;
    let loss_node = training::find_loss_node(model, &output_name, options.loss)?;
    let skip = loss_node.as_ref().map_or(&[][..], |l| &l.skip[..]);
    // A loss node's labels are the plan's target, not a data input.
    let labels = loss_node.as_ref().map(|l| l.labels.as_str());
    let Run { importer: mut im, inputs, label_shape } = Importer::run(model, options, skip, labels)?;

    let trained = loss_node.as_ref().map_or(output_name.as_str(), |l| l.scores.as_str());
    let output = match im.values.get(trained) {
        Some(Value::Tensor(t)) => *t,
        _ => return Err(ImportError::ConstantOutput { name: trained.to_string() }),
    };
    let (output, task) =
        training::attach_loss(&mut im.graph, output, &output_name, options.loss, loss_node.as_ref(), label_shape.as_deref())?;
    let forward = ForwardGraph { name: name.to_string(), graph: im.graph, inputs, output, task };
    Ok(Imported { forward, notes: im.notes })
}

/// Refuses a model with op types pock does not import, naming all of them at once so that one
/// run lists everything missing. An op that pock only folds counts as missing where it reads a
/// value computed at run time; which values are constants is decided here as the importer will
/// decide it (integer initializers, Constant outputs, Shape, and folded ops over constants).
/// Nodes at the indices in `skip` (a loss node the training set-up takes over) are not checked.
/// `initializers` holds the names of `model`'s initializers.
fn check_op_types(model: &OnnxModel, initializers: &HashSet<&str>, skip: &[usize]) -> Result<(), ImportError> {
    let supported = supported_ops();
    let mut constant: HashSet<&str> = model.initializers.iter().filter(|t| is_constant_initializer(t)).map(|t| t.name.as_str()).collect();
    let mut missing: Vec<String> = Vec::new();
    let mut first: Option<&Node> = None;
    for (_, n) in model.nodes.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
        let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        let op = n.op_type.as_str();
        // A compile-time-only op folds float initializers too (see `Importer::try_fold`).
        let fold_only = !GRAPH_OPS.contains(&op);
        let all_constant =
            n.inputs.iter().all(|i| i.is_empty() || constant.contains(i.as_str()) || (fold_only && initializers.contains(i.as_str())));
        let folds = default_domain && (op == "Shape" || op == "Size" || (fold::FOLDABLE.contains(&op) && all_constant));
        if folds {
            constant.extend(n.outputs.iter().map(String::as_str));
        }
        if folds || (default_domain && GRAPH_OPS.contains(&op)) {
            continue;
        }
        let mut key = if default_domain { n.op_type.clone() } else { format!("{}::{}", n.domain, n.op_type) };
        if supported.contains(&op) && default_domain {
            key.push_str(" (on run-time tensors)");
        }
        if !missing.contains(&key) {
            missing.push(key);
        }
        first.get_or_insert(n);
    }
    match first {
        None => Ok(()),
        Some(n) => Err(ImportError::UnsupportedOps {
            node: n.name.clone(),
            op_type: n.op_type.clone(),
            opset: model.opset_of(&n.domain),
            missing,
            supported: supported.join(", "),
        }),
    }
}

/// Whether an initializer is a constant of the graph rather than a parameter. ONNX does not mark
/// which initializers train, so pock decides: integer and bool ones (index tables, shapes, masks)
/// and float scalars of rank 0 are constants; every other float initializer is a parameter. The
/// dynamo exporter stores constants of the model's code (`x ** 2`, `/ sqrt(d)`, a masked fill's
/// value) as rank-0 float initializers, which PyTorch never trains; a PyTorch parameter is never
/// of rank 0 in the layers pock imports (biases and norm weights are at least rank 1).
fn is_constant_initializer(t: &super::Tensor) -> bool {
    t.dtype() != DataType::F32 || t.dims.is_empty()
}

/// A BatchNormalization running statistic (input 3 or 4) whose initializer something else
/// reads too: the dynamo exporter stores equal initializers once, so a fresh layer's running mean
/// can be the very initializer of its bias (zeros), and its running variance that of its scale.
/// The importer gives such a statistic its own tensor, `name`, and `pock export` writes it back
/// as a new initializer that the node reads instead of `source`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StatCopy {
    /// The node's index in the graph.
    pub node: usize,
    /// 0 for the running mean, 1 for the running variance.
    pub slot: usize,
    /// The copy's name: PyTorch's state-dict name (`<layer>.running_mean`, from the scale's
    /// `<layer>.weight`) where the scale is so named, else `<source>.<statistic>.<node>`; made
    /// unique against the initializers and earlier copies by trailing underscores.
    pub name: String,
    /// The shared initializer.
    pub source: String,
}

/// The statistics [`StatCopy`] describes, from the graph's nodes (op type and inputs, in graph
/// order) and initializer names. The importer and the exporter both call it, so they agree.
pub(crate) fn running_stat_copies<'a>(
    nodes: impl Iterator<Item = (&'a str, &'a [String])> + Clone,
    initializers: &HashSet<&str>,
) -> Vec<StatCopy> {
    let mut reads: HashMap<&str, usize> = HashMap::new();
    for name in nodes.clone().flat_map(|(_, inputs)| inputs).filter(|n| !n.is_empty()) {
        *reads.entry(name.as_str()).or_default() += 1;
    }
    let mut taken: HashSet<String> = initializers.iter().map(|s| s.to_string()).collect();
    let mut copies = Vec::new();
    for (node, (op, inputs)) in nodes.enumerate() {
        if op != "BatchNormalization" {
            continue;
        }
        for (slot, source) in inputs.iter().enumerate().skip(3).take(2).map(|(k, s)| (k - 3, s)) {
            if !initializers.contains(source.as_str()) || reads.get(source.as_str()).copied().unwrap_or(0) <= 1 {
                continue;
            }
            let what = if slot == 0 { "running_mean" } else { "running_var" };
            let mut name = match inputs.get(1).and_then(|w| w.strip_suffix(".weight")) {
                Some(layer) => format!("{layer}.{what}"),
                None => format!("{source}.{what}.{node}"),
            };
            while taken.contains(&name) {
                name.push('_');
            }
            taken.insert(name.clone());
            copies.push(StatCopy { node, slot, name, source: source.clone() });
        }
    }
    copies
}

/// What an ONNX value name stands for during import.
#[derive(Clone, Debug)]
enum Value {
    /// A graph tensor.
    Tensor(TensorId),
    /// A value known at compile time.
    Const(Const),
    /// An initializer not yet used by a graph node (index into `model.initializers`); it becomes a
    /// parameter or running statistic when a node first reads it as a tensor.
    Initializer(usize),
}

struct Importer<'m> {
    model: &'m OnnxModel,
    graph: Graph,
    values: HashMap<String, Value>,
    /// The graph tensors of constants read as tensors. The constant stays in `values`, so a later
    /// node can still read it as a compile-time value (a Slice's starts after a Concat used it).
    const_tensors: HashMap<String, TensorId>,
    /// Initializer names read as BatchNorm running mean or variance (by one BatchNorm input and
    /// nothing else).
    running_stats: HashSet<String>,
    /// BatchNorm running statistics whose initializer something else reads too
    /// ([`running_stat_copies`]): (node index, 0 for the mean or 1 for the variance) -> the name
    /// of the statistic's own copy, made when the node is imported, and the initializer's index.
    stat_copies: HashMap<(usize, usize), (String, usize)>,
    /// The index in `model.nodes` of the node being imported.
    node_index: usize,
    notes: Vec<String>,
    dropout_noted: bool,
    options: &'m ImportOptions,
    /// The step counter of seeded dropout, made when the first such node is imported.
    rng_counter: Option<TensorId>,
}

/// The node being imported, for error messages.
struct Ctx<'a> {
    node: &'a Node,
    opset: i64,
}

impl Ctx<'_> {
    fn err(&self, detail: impl Into<String>) -> ImportError {
        ImportError::NodeImport {
            node: self.node.name.clone(),
            op_type: self.node.op_type.clone(),
            opset: self.opset,
            detail: detail.into(),
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        match self.node.attribute(name) {
            None => Ok(default),
            Some(Attribute::Int(v)) => Ok(*v),
            Some(_) => Err(self.err(format!("attribute '{name}' is not an integer"))),
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        match self.node.attribute(name) {
            None => Ok(default),
            Some(Attribute::Float(v)) => Ok(*v),
            Some(_) => Err(self.err(format!("attribute '{name}' is not a float"))),
        }
    }

    fn string(&self, name: &str, default: &str) -> Result<String, ImportError> {
        match self.node.attribute(name) {
            None => Ok(default.to_string()),
            Some(Attribute::String(v)) => Ok(String::from_utf8_lossy(v).to_string()),
            Some(_) => Err(self.err(format!("attribute '{name}' is not a string"))),
        }
    }

    /// A list of sizes (kernel, strides, pads): non-negative, `len` of them.
    fn sizes(&self, name: &str, len: usize, default: usize) -> Result<Vec<usize>, ImportError> {
        match self.node.attribute(name) {
            None => Ok(vec![default; len]),
            Some(Attribute::Ints(v)) if v.len() == len => v
                .iter()
                .map(|&x| usize::try_from(x).map_err(|_| self.err(format!("attribute '{name}' has a negative value {x}"))))
                .collect(),
            Some(_) => Err(self.err(format!("attribute '{name}' must be a list of {len} integers"))),
        }
    }

    /// A 2-D convolution's (or transposed convolution's) `strides`, `dilations` and dilated
    /// kernel extent, checked against its weight `ws` (`[_, _, kH, kW]`): `kernel_shape`, when
    /// given, must match the weight, and every size must be at least 1.
    fn conv_window(&self, ws: &[usize]) -> Result<[[usize; 2]; 3], ImportError> {
        if let Some(Attribute::Ints(k)) = self.node.attribute("kernel_shape") {
            if k.iter().map(|&d| d as usize).ne(ws[2..].iter().copied()) {
                return Err(self.err(format!("attribute 'kernel_shape' {k:?} differs from the weight's shape {ws:?}")));
            }
        }
        let stride = self.sizes("strides", 2, 1)?;
        let dilation = self.sizes("dilations", 2, 1)?;
        if ws[2..].contains(&0) || stride.contains(&0) || dilation.contains(&0) {
            return Err(self.err(format!("kernel {ws:?}, strides {stride:?} and dilations {dilation:?} must be at least 1")));
        }
        let kernel = [(ws[2] - 1) * dilation[0] + 1, (ws[3] - 1) * dilation[1] + 1];
        Ok([[stride[0], stride[1]], [dilation[0], dilation[1]], kernel])
    }

    /// The name of input `i`, which must be present.
    fn input(&self, i: usize) -> Result<&str, ImportError> {
        match self.node.inputs.get(i) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.err(format!("input {i} is missing"))),
        }
    }

    fn optional_input(&self, i: usize) -> Option<&str> {
        self.node.inputs.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }
}

impl<'m> Importer<'m> {
    /// Imports every node of `model`: binds the initializers, marks BatchNorm statistics, makes a
    /// graph input per data input (returned in the model's order), then runs the op table.
    /// Nodes at the indices in `skip` (a loss node the training set-up takes over) are not
    /// imported, and the graph input named `labels` (that loss node's) is left to the set-up.
    fn run(model: &'m OnnxModel, options: &'m ImportOptions, skip: &[usize], labels: Option<&str>) -> Result<Run<'m>, ImportError> {
        let initializer_names: HashSet<&str> = model.initializers.iter().map(|t| t.name.as_str()).collect();
        check_op_types(model, &initializer_names, skip)?;
        let shapes = resolve_input_shapes(model, &options.shapes)?;
        let mut im = Importer {
            model,
            graph: Graph::new(),
            values: HashMap::new(),
            const_tensors: HashMap::new(),
            running_stats: HashSet::new(),
            stat_copies: HashMap::new(),
            node_index: 0,
            notes: Vec::new(),
            dropout_noted: false,
            options,
            rng_counter: None,
        };
        for (i, t) in model.initializers.iter().enumerate() {
            im.values.insert(t.name.clone(), Value::Initializer(i));
        }
        let copies = running_stat_copies(model.nodes.iter().map(|n| (n.op_type.as_str(), n.inputs.as_slice())), &initializer_names);
        // A statistic whose initializer is copied is updated in its copy; the shared initializer
        // stays what its other readers make of it.
        let copied: HashSet<&str> = copies.iter().map(|c| c.source.as_str()).collect();
        for n in model.nodes.iter().filter(|n| n.op_type == "BatchNormalization") {
            im.running_stats.extend(n.inputs.iter().skip(3).take(2).filter(|&name| !copied.contains(name.as_str())).cloned());
        }
        for c in copies {
            let Some(&Value::Initializer(i)) = im.values.get(&c.source) else { continue };
            im.stat_copies.insert((c.node, c.slot), (c.name, i));
        }
        let mut inputs = Vec::with_capacity(shapes.len());
        let mut label_shape = None;
        for s in &shapes {
            if labels == Some(s.name.as_str()) {
                label_shape = Some(s.dims.clone());
                continue;
            }
            let dtype = match s.dtype {
                Some(DataType::F32) | None => DType::F32,
                Some(DataType::I64) => DType::I64,
                Some(DataType::Bool) => DType::Bool,
                Some(other) => return Err(ImportError::UnsupportedInputType { input: s.name.clone(), dtype: other.name() }),
            };
            let id = im.graph.input(s.name.clone(), s.dims.clone(), dtype, Role::Input);
            im.values.insert(s.name.clone(), Value::Tensor(id));
            inputs.push(id);
        }
        for (i, node) in model.nodes.iter().enumerate() {
            if !skip.contains(&i) {
                im.node_index = i;
                im.import_node(node)?;
            }
        }
        im.finish_dropout()?;
        Ok(Run { importer: im, inputs, label_shape })
    }
}

/// An import's importer, after every node, with the graph inputs it made (in the model's
/// order) and the shape of the labels input a loss node reads, if any.
struct Run<'m> {
    importer: Importer<'m>,
    inputs: Vec<TensorId>,
    label_shape: Option<Vec<usize>>,
}

impl Importer<'_> {
    /// The table: one arm per ONNX op type. Nodes whose inputs are all constants are folded
    /// first, whatever their type.
    fn import_node(&mut self, node: &Node) -> Result<(), ImportError> {
        let ctx = Ctx { node, opset: self.model.opset_of(&node.domain) };
        if self.try_fold(&ctx)? {
            return Ok(());
        }
        if let Some(lifted) = self.lift_1d(&ctx) {
            return lifted;
        }
        if let Some(lifted) = self.lift_3d(&ctx) {
            return lifted;
        }
        match node.op_type.as_str() {
            "Conv" => self.conv(&ctx),
            "BatchNormalization" => self.batch_norm(&ctx),
            "Relu" => self.unary(&ctx, DenseOp::Relu),
            "Clip" => self.clip(&ctx),
            "MaxPool" | "AveragePool" => self.pool(&ctx),
            "GlobalAveragePool" => self.unary(&ctx, PoolOp::GlobalAvgPool),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" => self.binary(&ctx),
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" => self.binary(&ctx),
            "Not" => self.not(&ctx),
            "Where" => self.select(&ctx),
            "Sigmoid" | "Tanh" | "Erf" | "Exp" | "Log" | "Sqrt" | "Neg" | "Reciprocal" | "Abs" | "Sin" | "Cos" => self.unary_math(&ctx),
            "Softplus" | "LeakyRelu" | "Elu" | "HardSigmoid" => self.unary_math(&ctx),
            "Floor" | "Ceil" | "Round" | "Sign" => self.unary_math(&ctx),
            "HardSwish" => self.hard_swish(&ctx),
            "Gelu" => self.gelu(&ctx),
            "ReduceMean" | "ReduceSum" | "ReduceMax" => self.reduce(&ctx),
            "Softmax" | "LogSoftmax" => self.softmax(&ctx),
            "LayerNormalization" => self.layer_norm(&ctx),
            "Cast" => self.cast(&ctx),
            "CastLike" => self.cast_like(&ctx),
            "Identity" => self.alias(&ctx),
            "Dropout" => self.dropout(&ctx),
            "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => self.reshape(&ctx),
            "Gemm" => self.gemm(&ctx),
            "MatMul" => self.matmul(&ctx),
            "Transpose" => self.transpose(&ctx),
            "Concat" => self.concat(&ctx),
            "Split" => self.split(&ctx),
            "Slice" => self.slice(&ctx),
            "Gather" => self.gather(&ctx),
            "Expand" => self.expand(&ctx),
            "Tile" => self.tile(&ctx),
            "Trilu" => self.trilu(&ctx),
            "Pad" => self.pad(&ctx),
            "RandomUniformLike" => self.random_uniform_like(&ctx),
            "LSTM" | "GRU" => self.recurrent(&ctx),
            "PRelu" => self.prelu(&ctx),
            "Mish" | "Selu" | "Softsign" => self.activation(&ctx),
            "GlobalMaxPool" => self.global_max_pool(&ctx),
            "Sum" | "Mean" => self.variadic(&ctx),
            "ReduceL2" | "ReduceSumSquare" | "ReduceLogSumExp" | "ReduceL1" | "ReduceLogSum" => self.reduce_composite(&ctx),
            "ArgMax" | "ArgMin" => self.arg_max(&ctx),
            "InstanceNormalization" => self.instance_norm(&ctx),
            "GroupNormalization" => self.group_norm(&ctx),
            "Resize" => self.resize(&ctx),
            "LRN" => self.lrn(&ctx),
            "If" => self.if_constant(&ctx),
            "ConvTranspose" => self.conv_transpose(&ctx),
            "IsNaN" => self.is_nan(&ctx),
            "IsInf" => self.is_inf(&ctx),
            "CumSum" => self.cum_sum(&ctx),
            "GatherElements" => self.gather_elements(&ctx),
            "GatherND" => self.gather_nd(&ctx),
            "DepthToSpace" | "SpaceToDepth" => self.depth_space(&ctx),
            "Einsum" => self.einsum(&ctx),
            "OneHot" => self.one_hot(&ctx),
            "ReduceMin" => self.reduce_min(&ctx),
            "Celu" | "ThresholdedRelu" | "Shrink" => self.piecewise(&ctx),
            "LpNormalization" => self.lp_normalization(&ctx),
            "MeanVarianceNormalization" => self.mean_variance_normalization(&ctx),
            "Hardmax" => self.hardmax(&ctx),
            // Every other supported op type is evaluated only on constants.
            other => Err(ctx.err(format!(
                "pock evaluates {other} only at compile time, on shapes and constants, and this node reads a tensor computed \
                 at run time; {other} on run-time tensors is not implemented yet"
            ))),
        }
    }

    /// Folds the node if every input it has is a constant (`Shape` and `Size` need only their
    /// input's static shape). Returns whether it did.
    fn try_fold(&mut self, ctx: &Ctx) -> Result<bool, ImportError> {
        let node = ctx.node;
        if node.op_type == "Shape" || node.op_type == "Size" {
            // Both read only the input's static shape.
            let dims = match self.values.get(ctx.input(0)?) {
                Some(Value::Tensor(t)) => self.graph.shape(*t).to_vec(),
                Some(Value::Const(c)) => c.dims.clone(),
                Some(Value::Initializer(i)) => self.model.initializers[*i].dims.clone(),
                None => return Err(self.undefined(ctx, ctx.input(0)?)),
            };
            let value = if node.op_type == "Shape" {
                fold::shape_of(node, &dims)
            } else {
                Const::i64(vec![], vec![dims.iter().product::<usize>() as i64])
            };
            self.set(ctx, 0, Value::Const(value))?;
            return Ok(true);
        }
        if !fold::FOLDABLE.contains(&node.op_type.as_str()) {
            return Ok(false);
        }
        let mut consts: Vec<Option<Const>> = Vec::with_capacity(node.inputs.len());
        for name in &node.inputs {
            if name.is_empty() {
                consts.push(None);
                continue;
            }
            match self.values.get(name) {
                Some(Value::Const(c)) => consts.push(Some(c.clone())),
                // Initializers that feed shape arithmetic are integer tensors; a float
                // initializer is a parameter and must stay one.
                Some(Value::Initializer(i)) if is_constant_initializer(&self.model.initializers[*i]) => {
                    consts.push(Some(Const::from_tensor(&self.model.initializers[*i])))
                }
                // An op pock runs only at compile time folds a float initializer too (the dynamo
                // exporter lifts constants it computed, such as Swin's attention masks, into
                // initializers): the alternative is refusing the model. Said in a note, since
                // such an initializer is then never trained.
                Some(Value::Initializer(i)) if !GRAPH_OPS.contains(&node.op_type.as_str()) => {
                    let t = &self.model.initializers[*i];
                    if !self.notes.iter().any(|n| n.contains(&format!("'{}'", t.name))) {
                        self.notes.push(format!(
                            "float initializer '{}' feeds {} '{}', which pock evaluates at compile time: it is a constant, not a trained parameter",
                            t.name, node.op_type, node.name
                        ));
                    }
                    consts.push(Some(Const::from_tensor(t)))
                }
                Some(_) => return Ok(false),
                None => return Err(self.undefined(ctx, name)),
            }
        }
        let refs: Vec<Option<&Const>> = consts.iter().map(Option::as_ref).collect();
        match fold::evaluate(node, &refs).map_err(|e| ctx.err(format!("cannot evaluate it at compile time: {e}")))? {
            None => Ok(false),
            Some(outs) => {
                for (i, c) in outs.into_iter().enumerate() {
                    self.set(ctx, i, Value::Const(c))?;
                }
                Ok(true)
            }
        }
    }

    fn undefined(&self, ctx: &Ctx, value: &str) -> ImportError {
        ctx.err(format!("it reads '{value}', which pock did not import (an output of an earlier node that pock does not compute)"))
    }

    /// Binds output `i` of the node (if the node names it).
    fn set(&mut self, ctx: &Ctx, i: usize, v: Value) -> Result<(), ImportError> {
        match ctx.node.outputs.get(i) {
            Some(name) if !name.is_empty() => {
                self.values.insert(name.clone(), v);
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(ctx.err(format!("it has no output {i}"))),
        }
    }

    /// The graph tensor for a value, creating the parameter, running statistic or constant the
    /// first time an initializer or constant is read as a tensor.
    fn tensor(&mut self, ctx: &Ctx, name: &str) -> Result<TensorId, ImportError> {
        let value = self.values.get(name).cloned().ok_or_else(|| self.undefined(ctx, name))?;
        let id = match value {
            Value::Tensor(t) => return Ok(t),
            Value::Initializer(i) => {
                let t = &self.model.initializers[i];
                match Const::from_tensor(t).data {
                    ConstData::F32(values) if !is_constant_initializer(t) => {
                        let role = if self.running_stats.contains(name) { Role::RunningStat } else { Role::Parameter { trainable: true } };
                        self.graph.add_tensor(TensorDef {
                            name: name.to_string(),
                            shape: t.dims.clone(),
                            dtype: DType::F32,
                            role,
                            init: Some(values.into()),
                        })
                    }
                    // Integer and bool initializers (index tables, masks) are never trained,
                    // and stay readable at compile time (the dynamo exporter shares one `0`
                    // initializer between a run-time Add and CumSum's axis, say).
                    values => {
                        if let Some(&id) = self.const_tensors.get(name) {
                            return Ok(id);
                        }
                        let id = self.graph.typed_constant(name, t.dims.clone(), values);
                        self.const_tensors.insert(name.to_string(), id);
                        return Ok(id);
                    }
                }
            }
            Value::Const(c) => {
                if let Some(&id) = self.const_tensors.get(name) {
                    return Ok(id);
                }
                let id = self.graph.typed_constant(name, c.dims.clone(), c.data);
                self.const_tensors.insert(name.to_string(), id);
                return Ok(id);
            }
        };
        self.values.insert(name.to_string(), Value::Tensor(id));
        Ok(id)
    }

    /// The compile-time value of an input, which must be a constant.
    fn constant(&self, ctx: &Ctx, name: &str, what: &str) -> Result<Const, ImportError> {
        match self.values.get(name) {
            Some(Value::Const(c)) => Ok(c.clone()),
            Some(Value::Initializer(i)) => Ok(Const::from_tensor(&self.model.initializers[*i])),
            Some(Value::Tensor(_)) => Err(ctx.err(format!("its {what} ('{name}') is computed at run time; pock needs it constant"))),
            None => Err(self.undefined(ctx, name)),
        }
    }

    fn emit(&mut self, ctx: &Ctx, name: &str, op: impl Into<Op>, inputs: &[TensorId]) -> Result<TensorId, ImportError> {
        self.graph.emit(name, op, inputs, Phase::Forward, Program::Train).map(|o| o[0]).map_err(|source| self.compile_error(ctx, source))
    }

    fn compile_error(&self, ctx: &Ctx, source: crate::CompileError) -> ImportError {
        ImportError::Graph { node: ctx.node.name.clone(), op_type: ctx.node.op_type.clone(), opset: ctx.opset, source: Box::new(source) }
    }

    fn unary(&mut self, ctx: &Ctx, op: impl Into<Op>) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let y = self.emit(ctx, &ctx.node.name, op, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    fn alias(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let v = self.values.get(ctx.input(0)?).cloned().ok_or_else(|| self.undefined(ctx, &ctx.node.inputs[0]))?;
        self.set(ctx, 0, v)
    }

    /// Conv (2-D, NCHW), with its optional bias as a BiasAdd.
    fn conv(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let w = self.tensor(ctx, ctx.input(1)?)?;
        let (xs, ws) = (self.graph.shape(x).to_vec(), self.graph.shape(w).to_vec());
        if xs.len() != 4 || ws.len() != 4 {
            return Err(ctx.err(format!("only 1-D and 2-D convolutions are supported (input {xs:?}, weight {ws:?})")));
        }
        let [stride, dilation, kernel] = ctx.conv_window(&ws)?;
        let padding = self.padding(ctx, [xs[2], xs[3]], kernel, [stride[0], stride[1]])?;
        let groups = usize::try_from(ctx.int("group", 1)?).map_err(|_| ctx.err("group must be positive"))?;
        let op = ConvOp::Conv2d(Conv2d { stride: [stride[0], stride[1]], padding, dilation: [dilation[0], dilation[1]], groups });
        let name = ctx.node.name.clone();
        let mut y = self.emit(ctx, &name, op, &[x, w])?;
        if let Some(b) = ctx.optional_input(2) {
            let b = self.tensor(ctx, b)?;
            y = self.emit(ctx, &format!("{name}.bias_add"), DenseOp::BiasAdd, &[y, b])?;
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// `pads` or `auto_pad` as `[top, left, bottom, right]` (ONNX orders pads as all begins then
    /// all ends, which for two spatial axes is the same).
    fn padding(&self, ctx: &Ctx, input: [usize; 2], kernel: [usize; 2], stride: [usize; 2]) -> Result<[usize; 4], ImportError> {
        let auto = ctx.string("auto_pad", "NOTSET")?;
        match auto.as_str() {
            "NOTSET" => {
                let p = ctx.sizes("pads", 4, 0)?;
                Ok([p[0], p[1], p[2], p[3]])
            }
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut pads = [0; 4];
                for a in 0..2 {
                    let out = input[a].div_ceil(stride[a].max(1)).max(1);
                    let total = ((out - 1) * stride[a] + kernel[a]).saturating_sub(input[a]);
                    let small = total / 2;
                    let (begin, end) = if auto == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                    pads[a] = begin;
                    pads[a + 2] = end;
                }
                Ok(pads)
            }
            other => Err(ctx.err(format!("auto_pad '{other}' is not an ONNX value"))),
        }
    }

    /// BatchNormalization is imported in its training form (batch statistics, running statistics
    /// updated in place, as PyTorch's `train()`), whether or not the graph was exported in
    /// training mode; `--batch-norm fold` (the default) or `frozen` then fixes the statistics
    /// (`CompileOptions::batch_norm`). The eval program uses the running statistics.
    fn batch_norm(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let gamma = self.tensor(ctx, ctx.input(1)?)?;
        let beta = self.tensor(ctx, ctx.input(2)?)?;
        let mut stats = [TensorId(0); 2];
        for (k, slot) in stats.iter_mut().enumerate() {
            let name = ctx.input(3 + k)?;
            if let Some((copy, i)) = self.stat_copies.get(&(self.node_index, k)).cloned() {
                let t = &self.model.initializers[i];
                let ConstData::F32(values) = Const::from_tensor(t).data else {
                    return Err(ctx.err(format!("its running statistic '{name}' is not float32")));
                };
                let def =
                    TensorDef { name: copy, shape: t.dims.clone(), dtype: DType::F32, role: Role::RunningStat, init: Some(values.into()) };
                *slot = self.graph.add_tensor(def);
                continue;
            }
            if !matches!(self.values.get(name), Some(Value::Initializer(_))) {
                return Err(
                    ctx.err(format!("its running statistic '{name}' is not an initializer of its own, which pock needs to update it"))
                );
            }
            *slot = self.tensor(ctx, name)?;
        }
        let eps = ctx.float("epsilon", 1e-5)?;
        // ONNX weights the running value by `momentum` (default 0.9); PyTorch and pock weight the
        // batch value, so pock's momentum is ONNX's complement.
        let momentum = (1.0 - f64::from(ctx.float("momentum", 0.9)?)) as f32;
        if ctx.int("training_mode", 0)? == 0 && !self.notes.iter().any(|n| n.contains("BatchNormalization")) {
            self.notes.push(
                "BatchNormalization nodes exported in inference mode keep their running statistics fixed by default (--batch-norm \
                 fold or frozen); compile with --batch-norm train to train them with batch statistics, as PyTorch's train() does"
                    .into(),
            );
        }
        let op = NormOp::BatchNormTrain(BatchNorm { eps, momentum });
        let outs = self
            .graph
            .emit_inplace(&ctx.node.name, op, &[x, gamma, beta], &stats, Phase::Forward, Program::Train)
            .map_err(|e| self.compile_error(ctx, e))?;
        self.set(ctx, 0, Value::Tensor(outs[0]))?;
        // Outputs 1 and 2 of a training-mode node are the updated running statistics.
        for (k, &s) in stats.iter().enumerate() {
            if ctx.node.outputs.len() > k + 1 {
                self.set(ctx, k + 1, Value::Tensor(s))?;
            }
        }
        Ok(())
    }

    fn clip(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let bound = |i: usize, default: f32, what: &str| match ctx.optional_input(i) {
            None => Ok(default),
            Some(name) => self.constant(ctx, name, what)?.scalar_f32().map_err(|e| ctx.err(format!("its {what}: {e}"))),
        };
        let min = bound(1, f32::NEG_INFINITY, "min")?;
        let max = bound(2, f32::INFINITY, "max")?;
        let y = self.emit(ctx, &ctx.node.name, DenseOp::Clip(Clip { min, max }), &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// MaxPool and AveragePool. `ceil_mode` becomes extra bottom/right padding, which max pooling
    /// ignores (padding counts as -inf) as long as every window still covers a real element.
    fn pool(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let max = ctx.node.op_type == "MaxPool";
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        if xs.len() != 4 {
            return Err(ctx.err(format!("only 2-D pooling is supported (input {xs:?})")));
        }
        if ctx.node.outputs.get(1).is_some_and(|s| !s.is_empty()) {
            return Err(ctx.err("its Indices output is not supported"));
        }
        let kernel = ctx.sizes("kernel_shape", 2, 0)?;
        if kernel.contains(&0) {
            return Err(ctx.err("kernel_shape is missing or zero"));
        }
        if ctx.sizes("dilations", 2, 1)? != [1, 1] {
            return Err(ctx.err("dilated pooling is not supported"));
        }
        if ctx.int("storage_order", 0)? != 0 {
            return Err(ctx.err("column-major storage_order is not supported"));
        }
        let stride = ctx.sizes("strides", 2, 1)?;
        if stride.contains(&0) {
            return Err(ctx.err("strides must be at least 1"));
        }
        let (kernel, stride) = ([kernel[0], kernel[1]], [stride[0], stride[1]]);
        let mut padding = self.padding(ctx, [xs[2], xs[3]], kernel, stride)?;
        if ctx.int("ceil_mode", 0)? != 0 {
            for a in 0..2 {
                let span = xs[2 + a] + padding[a] + padding[a + 2];
                if span < kernel[a] {
                    return Err(ctx.err(format!("window {kernel:?} does not fit input {xs:?} with padding {padding:?}")));
                }
                let floor_out = (span - kernel[a]) / stride[a] + 1;
                let mut ceil_out = (span - kernel[a]).div_ceil(stride[a]) + 1;
                // PyTorch (and ONNX since opset 19) drop a last window that would start in the
                // end padding.
                if (ceil_out - 1) * stride[a] >= xs[2 + a] + padding[a] {
                    ceil_out -= 1;
                }
                if ceil_out > floor_out {
                    if !max {
                        return Err(ctx.err(
                            "AveragePool with ceil_mode that adds a window is not supported (its divisor for the partial window \
                             differs from padding's)",
                        ));
                    }
                    let extra = (ceil_out - 1) * stride[a] + kernel[a] - span;
                    // The last window starts at (ceil_out - 1) * stride - begin padding, which the
                    // check above keeps inside the input: it covers at least one real element.
                    debug_assert!((ceil_out - 1) * stride[a] < xs[2 + a] + padding[a]);
                    padding[a + 2] += extra;
                }
            }
        }
        let count_include_pad = ctx.int("count_include_pad", 0)? != 0;
        let p = Pool2d { kernel, stride, padding, count_include_pad };
        let op = if max { PoolOp::MaxPool2d(p) } else { PoolOp::AvgPool2d(p) };
        let y = self.emit(ctx, &ctx.node.name, op, &[x])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// Flatten, Reshape, Squeeze and Unsqueeze of a run-time tensor: one Reshape node (none when
    /// the shape does not change).
    fn reshape(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let dims = match ctx.node.op_type.as_str() {
            "Flatten" => fold::flatten_dims(&xs, ctx.int("axis", 1)?).map(|d| d.to_vec()),
            "Reshape" => {
                let target = self.constant(ctx, ctx.input(1)?, "shape")?.as_i64().map_err(|e| ctx.err(e))?;
                fold::reshape_dims(&xs, &target, ctx.int("allowzero", 0)? != 0)
            }
            "Squeeze" => match ctx.optional_input(1) {
                Some(a) => {
                    let axes = self.constant(ctx, a, "axes")?.as_i64().map_err(|e| ctx.err(e))?;
                    fold::squeeze_dims(&xs, Some(&axes))
                }
                None => fold::squeeze_dims(&xs, None),
            },
            _ => {
                let axes = self.constant(ctx, ctx.input(1)?, "axes")?.as_i64().map_err(|e| ctx.err(e))?;
                fold::unsqueeze_dims(&xs, &axes)
            }
        }
        .map_err(|e| ctx.err(e))?;
        let y = if dims == xs { x } else { self.emit(ctx, &ctx.node.name, DenseOp::Reshape { shape: dims }, &[x])? };
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// A tensor of `shape` filled with `value`, multiplied into `x` (Gemm's alpha and beta).
    fn scale(&mut self, ctx: &Ctx, name: &str, x: TensorId, value: f32) -> Result<TensorId, ImportError> {
        let shape = self.graph.shape(x).to_vec();
        let n = shape.iter().product();
        let c = self.graph.constant(format!("{name}.factor"), shape, vec![value; n]);
        self.emit(ctx, name, DenseOp::Mul, &[x, c])
    }

    /// Gemm: `alpha * op(A) @ op(B) + beta * C` as MatMul (with the transposes as attributes),
    /// scaling where alpha or beta is not 1, and a BiasAdd for a `[N]` or `[1, N]` C or an Add for
    /// an `[M, N]` one.
    fn gemm(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let a = self.tensor(ctx, ctx.input(0)?)?;
        let b = self.tensor(ctx, ctx.input(1)?)?;
        let name = ctx.node.name.clone();
        let mm = MatMul { trans_a: ctx.int("transA", 0)? != 0, trans_b: ctx.int("transB", 0)? != 0 };
        let mut y = self.emit(ctx, &name, DenseOp::MatMul(mm), &[a, b])?;
        let alpha = ctx.float("alpha", 1.0)?;
        if alpha != 1.0 {
            y = self.scale(ctx, &format!("{name}.alpha"), y, alpha)?;
        }
        if let Some(c) = ctx.optional_input(2) {
            let mut c = self.tensor(ctx, c)?;
            let beta = ctx.float("beta", 1.0)?;
            if beta != 1.0 {
                c = self.scale(ctx, &format!("{name}.beta"), c, beta)?;
            }
            let (ys, cs) = (self.graph.shape(y).to_vec(), self.graph.shape(c).to_vec());
            y = match cs.as_slice() {
                [n] if *n == ys[1] => self.emit(ctx, &format!("{name}.bias_add"), DenseOp::BiasAdd, &[y, c])?,
                [1, n] if *n == ys[1] => {
                    let flat = self.emit(ctx, &format!("{name}.bias"), DenseOp::Reshape { shape: vec![*n] }, &[c])?;
                    self.emit(ctx, &format!("{name}.bias_add"), DenseOp::BiasAdd, &[y, flat])?
                }
                s if s == ys.as_slice() => self.emit(ctx, &format!("{name}.add"), DenseOp::Add, &[y, c])?,
                _ => self.broadcast(ctx, &format!("{name}.add"), pock_engine::ops::BroadcastOp::Add, y, c)?,
            };
        }
        self.set(ctx, 0, Value::Tensor(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::Interpreter;
    use crate::onnx::{Dim, Tensor, TensorValues, ValueInfo};
    use crate::stages::Task;

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<(&str, Attribute)>) -> Node {
        Node::new(op, inputs, outputs, attributes)
    }

    fn model(input: &[usize], initializers: Vec<Tensor>, nodes: Vec<Node>, output: &str) -> OnnxModel {
        OnnxModel {
            ir_version: 8,
            opset: 17,
            opset_imports: vec![(String::new(), 17)],
            producer: String::new(),
            graph_name: String::new(),
            initializers,
            inputs: vec![ValueInfo {
                name: "x".into(),
                dtype: Some(DataType::F32),
                shape: Some(input.iter().map(|&d| Dim::Fixed(d)).collect()),
            }],
            outputs: vec![ValueInfo { name: output.into(), dtype: Some(DataType::F32), shape: None }],
            value_info: vec![],
            nodes,
        }
    }

    fn f32s(name: &str, dims: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor { name: name.into(), dims, values: TensorValues::F32(v) }
    }

    /// Imports with MSE (any output shape) and runs the forward nodes on `x`.
    fn run(m: &OnnxModel, x: Vec<f64>) -> (Vec<usize>, Vec<f64>) {
        let options = ImportOptions { loss: LossKind::Mse, ..Default::default() };
        let f = import_model(m, "test", &options).unwrap().forward;
        let mut it = Interpreter::<f64>::new(&f.graph);
        it.set(f.inputs[0], x);
        it.run(&f.graph.nodes).unwrap();
        (f.graph.shape(f.output).to_vec(), it.get(f.output).unwrap().to_vec())
    }

    fn pool(ceil: i64, kernel: i64, stride: i64, pad: i64) -> Node {
        node(
            "MaxPool",
            &["x"],
            &["y"],
            vec![
                ("kernel_shape", Attribute::Ints(vec![kernel; 2])),
                ("strides", Attribute::Ints(vec![stride; 2])),
                ("pads", Attribute::Ints(vec![pad; 4])),
                ("ceil_mode", Attribute::Int(ceil)),
            ],
        )
    }

    #[test]
    fn a_constant_read_as_a_tensor_stays_a_compile_time_value() {
        // `k` is first a Gather's run-time index tensor, then a Slice's starts, which must be
        // known at compile time (Swin's export does this).
        let int = |name: &str, v: Vec<i64>| Tensor { name: name.into(), dims: vec![v.len()], values: TensorValues::I64(v) };
        let nodes = vec![
            node("Constant", &[], &["k"], vec![("value", Attribute::Tensor(int("k", vec![1])))]),
            node("Gather", &["x", "k"], &["g"], vec![("axis", Attribute::Int(1))]),
            node("Slice", &["x", "k", "end", "axis"], &["s"], vec![]),
            node("Add", &["g", "s"], &["y"], vec![]),
        ];
        let m = model(&[1, 3], vec![int("end", vec![2]), int("axis", vec![1])], nodes, "y");
        assert_eq!(run(&m, vec![1., 5., 9.]), (vec![1, 1], vec![10.]));
    }

    #[test]
    fn a_running_statistic_sharing_its_initializer_gets_its_own_copy() {
        // The dynamo exporter stores equal initializers once: a fresh BatchNorm's running mean
        // is the zeros of its bias, and its running variance the ones of its scale. The bias and
        // scale must stay trainable parameters, and the statistics become copies named as
        // PyTorch's state dict names them.
        let bn = node("BatchNormalization", &["x", "bn.weight", "bn.bias", "bn.bias", "bn.weight"], &["y"], vec![]);
        let inits = vec![f32s("bn.weight", vec![2], vec![1.0, 1.0]), f32s("bn.bias", vec![2], vec![0.0, 0.0])];
        let m = model(&[2, 2, 1, 1], inits, vec![bn], "y");
        let f = import_model(&m, "test", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).unwrap().forward;
        let role = |name: &str| {
            f.graph.tensors.iter().find(|t| t.name == name).map(|t| t.role.clone()).unwrap_or_else(|| panic!("no tensor {name}"))
        };
        assert_eq!(role("bn.weight"), Role::Parameter { trainable: true });
        assert_eq!(role("bn.bias"), Role::Parameter { trainable: true });
        assert_eq!(role("bn.running_mean"), Role::RunningStat);
        assert_eq!(role("bn.running_var"), Role::RunningStat);
    }

    #[test]
    fn a_compile_time_only_op_folds_a_float_initializer_and_says_so() {
        // ScatterND runs only at compile time; its float data initializer (a mask the dynamo
        // exporter lifted) folds, with a note that it is not trained.
        let int = |name: &str, dims: Vec<usize>, v: Vec<i64>| Tensor { name: name.into(), dims, values: TensorValues::I64(v) };
        let nodes = vec![node("ScatterND", &["mask", "at", "upd"], &["m"], vec![]), node("Add", &["x", "m"], &["y"], vec![])];
        let inits = vec![f32s("mask", vec![3], vec![1.0, 2.0, 3.0]), int("at", vec![1, 1], vec![1]), f32s("upd", vec![1], vec![-5.0])];
        let m = model(&[1, 3], inits, nodes, "y");
        assert_eq!(run(&m, vec![0.0, 0.0, 0.0]), (vec![1, 3], vec![1.0, -5.0, 3.0]));
        let notes = import_model(&m, "test", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).unwrap().notes;
        assert!(notes.iter().any(|n| n.contains("'mask'") && n.contains("not a trained parameter")), "{notes:?}");
    }

    #[test]
    fn max_pool_ceil_mode_adds_partial_windows() {
        // 5x5 holding 0..25, kernel 2, stride 2: floor mode gives 2x2, ceil mode 3x3 whose last
        // row and column of windows cover one real row/column each.
        let x: Vec<f64> = (0..25).map(f64::from).collect();
        let (shape, y) = run(&model(&[1, 1, 5, 5], vec![], vec![pool(0, 2, 2, 0)], "y"), x.clone());
        assert_eq!((shape, y), (vec![1, 1, 2, 2], vec![6., 8., 16., 18.]));
        let (shape, y) = run(&model(&[1, 1, 5, 5], vec![], vec![pool(1, 2, 2, 0)], "y"), x);
        assert_eq!((shape, y), (vec![1, 1, 3, 3], vec![6., 8., 9., 16., 18., 19., 21., 23., 24.]));
    }

    #[test]
    fn max_pool_ceil_mode_drops_a_window_that_would_start_in_the_padding() {
        // Size 5, padding 1, kernel 2, stride 2: ceil((5 + 2 - 2) / 2) + 1 = 4 windows, but the
        // fourth would start at padded index 6, inside the end padding, so PyTorch keeps 3.
        let x: Vec<f64> = (0..25).map(f64::from).collect();
        let (shape, y) = run(&model(&[1, 1, 5, 5], vec![], vec![pool(1, 2, 2, 1)], "y"), x);
        assert_eq!(shape, vec![1, 1, 3, 3]);
        assert_eq!(y, vec![0., 2., 4., 10., 12., 14., 20., 22., 24.]);
        // Size 6 keeps its fourth window, which starts on the last real row.
        let x: Vec<f64> = (0..36).map(f64::from).collect();
        let (shape, y) = run(&model(&[1, 1, 6, 6], vec![], vec![pool(1, 3, 2, 1)], "y"), x);
        assert_eq!(shape, vec![1, 1, 4, 4]);
        // The last row of windows covers only row 5 (30..35), in columns {0,1}, {1,2,3}, {3,4,5}, {5}.
        assert_eq!(&y[12..], &[31., 33., 35., 35.]);
    }

    #[test]
    fn gemm_scales_transposes_and_adds_a_row_bias() {
        // y = 2 * x @ w^T + 0.5 * c, x [2, 3], w [2, 3], c [1, 2].
        let w = f32s("w", vec![2, 3], vec![1., 0., -1., 2., 1., 0.]);
        let c = f32s("c", vec![1, 2], vec![10., -4.]);
        let gemm = node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![("alpha", Attribute::Float(2.0)), ("beta", Attribute::Float(0.5)), ("transB", Attribute::Int(1))],
        );
        let (shape, y) = run(&model(&[2, 3], vec![w, c], vec![gemm], "y"), vec![1., 2., 3., -1., 0., 1.]);
        assert_eq!(shape, vec![2, 2]);
        // Row 1: x @ w^T = [1 - 3, 2 + 2] = [-2, 4]; row 2: [-1 - 1, -2] = [-2, -2].
        assert_eq!(y, vec![2. * -2. + 5., 2. * 4. - 2., 2. * -2. + 5., 2. * -2. - 2.]);
    }

    #[test]
    fn shape_arithmetic_folds_into_a_reshape_and_clip_reads_constant_bounds() {
        // y = clip(reshape(x, concat(shape(x)[0:1], [-1])), 0, 6) on [2, 3, 2].
        let nodes = vec![
            node("Shape", &["x"], &["s"], vec![]),
            node(
                "Constant",
                &[],
                &["zero"],
                vec![("value", Attribute::Tensor(Tensor { name: String::new(), dims: vec![], values: TensorValues::I64(vec![0]) }))],
            ),
            node("Gather", &["s", "zero"], &["n"], vec![("axis", Attribute::Int(0))]),
            node("Unsqueeze", &["n", "axes"], &["n1"], vec![]),
            node("Concat", &["n1", "minus_one"], &["target"], vec![("axis", Attribute::Int(0))]),
            node("Reshape", &["x", "target"], &["r"], vec![]),
            node("Constant", &[], &["lo"], vec![("value_float", Attribute::Float(0.0))]),
            node("Constant", &[], &["hi"], vec![("value_float", Attribute::Float(6.0))]),
            node("Clip", &["r", "lo", "hi"], &["y"], vec![]),
        ];
        let inits = vec![
            Tensor { name: "axes".into(), dims: vec![1], values: TensorValues::I64(vec![0]) },
            Tensor { name: "minus_one".into(), dims: vec![1], values: TensorValues::I64(vec![-1]) },
        ];
        let m = model(&[2, 3, 2], inits, nodes, "y");
        let f = import_model(&m, "t", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).unwrap().forward;
        let ops: Vec<&str> = f.graph.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(ops, ["Reshape", "Clip"], "the shape arithmetic folds away");
        let (shape, y) = run(&m, vec![-1., 2., 7., 3., 0.5, 9., 1., 1., 1., 1., 1., 1.]);
        assert_eq!(shape, vec![2, 6]);
        assert_eq!(&y[..6], &[0., 2., 6., 3., 0.5, 6.]);
    }

    #[test]
    fn unsupported_ops_are_named_together_with_node_opset_and_the_supported_list() {
        let nodes = vec![
            node("Relu", &["x"], &["a"], vec![]),
            node("Det", &["a"], &["b"], vec![]),
            node("ConstantOfShape", &["b"], &["c"], vec![]),
            node("Det", &["c"], &["y"], vec![]),
        ];
        let e = import_model(&model(&[2, 3], vec![], nodes, "y"), "t", &ImportOptions::default()).unwrap_err();
        let msg = e.to_string();
        let ImportError::UnsupportedOps { node, opset, missing, .. } = &e else { panic!("{msg}") };
        assert_eq!((node.as_str(), *opset), ("Det_node", 17));
        assert_eq!(missing, &["Det", "ConstantOfShape (on run-time tensors)"]);
        assert!(
            msg.contains("Det_node") && msg.contains("opset 17") && msg.contains("BatchNormalization, Cast, CastLike, Ceil, Celu, Clip"),
            "{msg}"
        );
    }

    #[test]
    fn an_if_on_a_run_time_condition_is_refused_and_says_why() {
        use crate::onnx::Subgraph;
        let branch = |op: &str| {
            Attribute::Graph(Box::new(Subgraph {
                nodes: vec![node(op, &["x"], &[&format!("{op}_out")], vec![])],
                initializers: vec![],
                outputs: vec![format!("{op}_out")],
            }))
        };
        let nodes = vec![
            node("ReduceSum", &["x"], &["s"], vec![("keepdims", Attribute::Int(0))]),
            node("Greater", &["s", "zero"], &["c"], vec![]),
            node("If", &["c"], &["y"], vec![("then_branch", branch("Relu")), ("else_branch", branch("Neg"))]),
        ];
        let zero = f32s("zero", vec![], vec![0.0]);
        let e = import_model(&model(&[2, 3], vec![zero], nodes, "y"), "t", &ImportOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("computed at run time") && msg.contains("Where"), "{msg}");
    }

    #[test]
    fn volume_ops_without_a_composition_are_refused_with_what_is_supported() {
        let w = f32s("w", vec![2, 2, 1, 1, 1], vec![1.0; 4]);
        let t = node("ConvTranspose", &["x", "w"], &["y"], vec![]);
        let e = import_model(&model(&[1, 2, 4, 4, 4], vec![w], vec![t], "y"), "t", &ImportOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("3-D ConvTranspose") && msg.contains("3-D Conv, MaxPool"), "{msg}");
        // Average pooling over depth padding left out of the divisor.
        let attrs = vec![("kernel_shape", Attribute::Ints(vec![3, 1, 1])), ("pads", Attribute::Ints(vec![1, 0, 0, 1, 0, 0]))];
        let m = model(&[1, 2, 4, 4, 4], vec![], vec![node("AveragePool", &["x"], &["y"], attrs)], "y");
        let msg = import_model(&m, "t", &ImportOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("count_include_pad = 1"), "{msg}");
        // Depth ceil_mode that would add an output depth.
        let attrs = vec![
            ("kernel_shape", Attribute::Ints(vec![2, 2, 2])),
            ("strides", Attribute::Ints(vec![2, 2, 2])),
            ("ceil_mode", Attribute::Int(1)),
        ];
        let m = model(&[1, 2, 5, 4, 4], vec![], vec![node("MaxPool", &["x"], &["y"], attrs)], "y");
        let msg = import_model(&m, "t", &ImportOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("ceil_mode"), "{msg}");
    }

    #[test]
    fn cross_entropy_needs_a_class_axis_besides_the_batch_and_an_output_must_be_chosen_among_several() {
        let m = model(&[6], vec![], vec![node("Relu", &["x"], &["y"], vec![])], "y");
        let e = import_model(&m, "t", &ImportOptions::default()).unwrap_err();
        assert!(matches!(e, ImportError::LossShape { .. }) && e.to_string().contains("--loss mse"), "{e}");
        // Logits of any rank: cross-entropy over the last axis, labels [2, 3].
        let m = model(&[2, 3, 4], vec![], vec![node("Relu", &["x"], &["y"], vec![])], "y");
        let f = import_model(&m, "t", &ImportOptions::default()).unwrap().forward;
        assert_eq!(f.task, Task::CrossEntropy { classes: 4, ignore_index: -100 });
        let mut m = model(&[2, 3], vec![], vec![node("Relu", &["x"], &["y"], vec![]), node("Relu", &["y"], &["z"], vec![])], "y");
        m.outputs.push(ValueInfo { name: "z".into(), dtype: None, shape: None });
        let e = import_model(&m, "t", &ImportOptions::default()).unwrap_err();
        assert!(matches!(e, ImportError::ChooseOutput { .. }) && e.to_string().contains("y, z"), "{e}");
        let chosen = ImportOptions { output: Some("z".into()), ..Default::default() };
        let f = import_model(&m, "t", &chosen).unwrap().forward;
        assert_eq!(f.task, Task::CrossEntropy { classes: 3, ignore_index: -100 });
    }

    #[test]
    fn several_inputs_stay_in_the_ir_with_their_dtypes_and_training_names_them() {
        let w = f32s("w", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let nodes = vec![node("Mul", &["x", "scale"], &["xs"], vec![]), node("Mul", &["xs", "w"], &["y"], vec![])];
        let mut m = model(&[2, 3], vec![w], nodes, "y");
        m.inputs.push(ValueInfo { name: "scale".into(), dtype: Some(DataType::F32), shape: Some(vec![Dim::Fixed(2), Dim::Fixed(3)]) });
        m.inputs.push(ValueInfo { name: "mask".into(), dtype: Some(DataType::Bool), shape: Some(vec![Dim::Named("batch".into())]) });
        let options = ImportOptions { shapes: ShapeOverrides::parse::<&str>(Some(2), &[]).unwrap(), ..Default::default() };
        let f = import_model(&m, "t", &options).unwrap().forward;
        let inputs: Vec<(&str, DType, &[usize])> =
            f.inputs.iter().map(|&t| (f.graph.tensor(t).name.as_str(), f.graph.tensor(t).dtype, f.graph.shape(t))).collect();
        assert_eq!(inputs, [("x", DType::F32, &[2, 3][..]), ("scale", DType::F32, &[2, 3][..]), ("mask", DType::Bool, &[2][..])]);
        let t = f.into_training(crate::CompileOptions::default()).unwrap();
        assert_eq!(t.train_inputs.len(), 3);
        let plan = t.into_plan().unwrap().plan;
        let fed: Vec<&str> = plan.programs.train.feeds.iter().map(|&id| plan.tensor(id).name.as_str()).collect();
        assert_eq!(fed, ["x", "scale", "mask", "target"], "the data inputs in the model's order, then the target");
    }
}
