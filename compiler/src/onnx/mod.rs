//! Reading ONNX models: protobuf decoding, version checks, typed initializers (inline or in
//! external data files), graph inputs with their static or named dimensions, and nodes with typed
//! attributes.
//!
//! This layer knows nothing of pock's op set: it turns a `.onnx` file into plain, checked data
//! ([`OnnxModel`]) that the op importer maps onto IR nodes. Nothing in the file is trusted; every
//! length, offset, dimension and reference is checked, and no input makes it panic
//! (`compiler/tests/onnx_mutation.rs`).

mod error;
pub mod export;
pub mod fold;
mod import;
mod load;
#[rustfmt::skip]
pub mod proto;
mod shapes;
mod training;
pub mod weights;

pub use error::{ImportError, IR_VERSIONS, OPSETS};
pub use export::{export_model, ExportError, ExportOptions, Exported, TrainedValue};
pub use import::{
    import_file, import_forward, import_model, supported_ops, DropoutMode, ForwardModel, ImportOptions, Imported, LossKind, OutputValue,
    GRAPH_OPS,
};
pub use load::{load_model, load_model_bytes, load_tensor_bytes};
pub use shapes::{resolve_input_shapes, InputShape, ShapeOverrides};

/// An element type of a graph value or tensor, as ONNX numbers them (`TensorProto.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    F32,
    F16,
    Bf16,
    F64,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
    String,
    /// A type code this reader does not name (complex, float8, int4, ...).
    Other(i32),
}

impl DataType {
    pub fn from_onnx(code: i32) -> DataType {
        match code {
            1 => DataType::F32,
            2 => DataType::U8,
            3 => DataType::I8,
            4 => DataType::U16,
            5 => DataType::I16,
            6 => DataType::I32,
            7 => DataType::I64,
            8 => DataType::String,
            9 => DataType::Bool,
            10 => DataType::F16,
            11 => DataType::F64,
            12 => DataType::U32,
            13 => DataType::U64,
            16 => DataType::Bf16,
            other => DataType::Other(other),
        }
    }

    /// The name numpy and the ONNX documentation use (`float32`, `int64`, ...).
    pub fn name(self) -> String {
        match self {
            DataType::F32 => "float32".into(),
            DataType::F16 => "float16".into(),
            DataType::Bf16 => "bfloat16".into(),
            DataType::F64 => "float64".into(),
            DataType::I8 => "int8".into(),
            DataType::U8 => "uint8".into(),
            DataType::I16 => "int16".into(),
            DataType::U16 => "uint16".into(),
            DataType::I32 => "int32".into(),
            DataType::U32 => "uint32".into(),
            DataType::I64 => "int64".into(),
            DataType::U64 => "uint64".into(),
            DataType::Bool => "bool".into(),
            DataType::String => "string".into(),
            DataType::Other(code) => format!("ONNX type {code}"),
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The values of a tensor read from the model, in the element type it declares.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorValues {
    F32(Vec<f32>),
    /// IEEE half floats as their bit patterns.
    F16(Vec<u16>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

impl TensorValues {
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::F16(v) => v.len(),
            TensorValues::F64(v) => v.len(),
            TensorValues::I64(v) => v.len(),
            TensorValues::I32(v) => v.len(),
            TensorValues::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DataType {
        match self {
            TensorValues::F32(_) => DataType::F32,
            TensorValues::F16(_) => DataType::F16,
            TensorValues::F64(_) => DataType::F64,
            TensorValues::I64(_) => DataType::I64,
            TensorValues::I32(_) => DataType::I32,
            TensorValues::Bool(_) => DataType::Bool,
        }
    }
}

/// A constant tensor: an initializer, or the value of a tensor attribute (`Constant`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: TensorValues,
}

impl Tensor {
    pub fn dtype(&self) -> DataType {
        self.values.dtype()
    }
}

/// One dimension of a declared value shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic size (`dim_param`, such as "batch"); values that share the name share the size.
    Named(String),
    /// A dimension with neither a value nor a name.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input, output or intermediate value as the model declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    /// The element type; `None` where the model declares no tensor type.
    pub dtype: Option<DataType>,
    /// The shape; `None` where the model declares none (rank unknown).
    pub shape: Option<Vec<Dim>>,
}

/// A node attribute, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Attribute {
    Float(f32),
    Int(i64),
    /// Bytes as stored; ONNX strings are UTF-8 by convention but not by rule.
    String(Vec<u8>),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    /// A subgraph (`If`'s branches).
    Graph(Box<Subgraph>),
}

/// A subgraph attribute: its nodes (which may read the enclosing graph's values), its own
/// initializers and the names of its outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Subgraph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub outputs: Vec<String>,
}

/// One node of the graph, in file order (which ONNX requires to be topological).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's name; exporters usually give one, otherwise this is `<op_type>_<index>`.
    pub name: String,
    pub op_type: String,
    /// The operator domain; "" is the default ONNX domain.
    pub domain: String,
    /// Input value names; "" marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(String, Attribute)>,
}

impl Node {
    /// A node of the default domain named `<op_type>_node`, for graphs built in code (tests,
    /// tools).
    pub fn new(op_type: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<(&str, Attribute)>) -> Node {
        Node {
            name: format!("{op_type}_node"),
            op_type: op_type.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attributes: attributes.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}

/// A decoded, checked ONNX model.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxModel {
    pub ir_version: i64,
    /// The opset of the default domain ("" / "ai.onnx").
    pub opset: i64,
    /// Every imported opset, as (domain, version).
    pub opset_imports: Vec<(String, i64)>,
    pub producer: String,
    pub graph_name: String,
    /// Constant tensors, under their ONNX names, in file order.
    pub initializers: Vec<Tensor>,
    /// Graph inputs that are not initializers: the data the model is fed.
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Declared types of intermediate values (may be empty).
    pub value_info: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
}

impl OnnxModel {
    /// The opset version a node of `domain` is read under (0 for a domain the model does not
    /// import).
    pub fn opset_of(&self, domain: &str) -> i64 {
        load::opset_of(&self.opset_imports, self.opset, domain)
    }

    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    /// How many nodes of each op type (domain-qualified as `domain::Op` outside the default
    /// domain), sorted by name.
    pub fn op_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for n in &self.nodes {
            let key = if n.domain.is_empty() || n.domain == "ai.onnx" { n.op_type.clone() } else { format!("{}::{}", n.domain, n.op_type) };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}
