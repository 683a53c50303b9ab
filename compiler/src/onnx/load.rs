//! Decoding a ModelProto into an [`OnnxModel`], with every length, offset and reference checked.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::error::{ImportError, IR_VERSIONS, OPSETS};
use super::proto;
use super::{Attribute, DataType, Dim, Node, OnnxModel, Subgraph, Tensor, TensorValues, ValueInfo};

/// Reads an ONNX model from `path`. External data files are looked up relative to the model's
/// directory, as the ONNX specification says.
pub fn load_model(path: impl AsRef<Path>) -> Result<OnnxModel, ImportError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    decode(&bytes, &path.display().to_string(), Some(&dir))
}

/// Reads an ONNX model from its bytes. `dir` is where its external data files lie; with `None`,
/// a model that has external data is an error.
pub fn load_model_bytes(bytes: &[u8], dir: Option<&Path>) -> Result<OnnxModel, ImportError> {
    decode(bytes, "the given bytes", dir)
}

/// Reads one serialized TensorProto (as the ONNX backend tests store their inputs and expected
/// outputs in `input_0.pb`). Data in external files is refused, since there is no model
/// directory to find them in.
pub fn load_tensor_bytes(bytes: &[u8]) -> Result<Tensor, ImportError> {
    let t = proto::TensorProto::decode(bytes)
        .map_err(|e| ImportError::Malformed { what: "a TensorProto".into(), detail: format!("protobuf decoding failed ({e})") })?;
    let name = t.name.clone().unwrap_or_default();
    read_tensor(&t, name, &mut ExternalData { dir: None, files: HashMap::new() })
}

fn decode(bytes: &[u8], what: &str, dir: Option<&Path>) -> Result<OnnxModel, ImportError> {
    let malformed = |detail: String| ImportError::Malformed { what: what.to_string(), detail };
    let model = proto::ModelProto::decode(bytes).map_err(|e| malformed(format!("protobuf decoding failed ({e})")))?;

    let ir_version = model.ir_version.ok_or_else(|| malformed("it has no ir_version field".into()))?;
    if !IR_VERSIONS.contains(&ir_version) {
        return Err(ImportError::UnsupportedIrVersion { found: ir_version });
    }
    let opset_imports: Vec<(String, i64)> =
        model.opset_import.iter().map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0))).collect();
    let opset = opset_imports.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map(|&(_, v)| v).ok_or(ImportError::MissingOpset)?;
    if !OPSETS.contains(&opset) {
        return Err(ImportError::UnsupportedOpset { found: opset });
    }
    let graph = model.graph.as_ref().ok_or_else(|| malformed("it has no graph".into()))?;
    if !graph.sparse_initializer.is_empty() {
        let name = graph.sparse_initializer[0].values.as_ref().and_then(|v| v.name.clone()).unwrap_or_default();
        return Err(ImportError::UnsupportedTensorStorage { tensor: name, what: "a sparse initializer".into() });
    }

    let mut external = ExternalData::new(dir);
    let mut initializers = Vec::with_capacity(graph.initializer.len());
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(malformed("an initializer has no name".into()));
        }
        initializers.push(read_tensor(t, name, &mut external)?);
    }
    let init_names: HashSet<&str> = initializers.iter().map(|t| t.name.as_str()).collect();

    let mut inputs = Vec::new();
    for vi in &graph.input {
        let info = value_info(vi, what)?;
        if !init_names.contains(info.name.as_str()) {
            inputs.push(info);
        }
    }
    let outputs = graph.output.iter().map(|vi| value_info(vi, what)).collect::<Result<Vec<_>, _>>()?;
    let value_info = graph.value_info.iter().map(|vi| value_info(vi, what)).collect::<Result<Vec<_>, _>>()?;

    let opset_of = |domain: &str| opset_of(&opset_imports, opset, domain);
    let mut nodes = Vec::with_capacity(graph.node.len());
    for (index, n) in graph.node.iter().enumerate() {
        let op_type = n.op_type.clone().unwrap_or_default();
        if op_type.is_empty() {
            return Err(malformed(format!("node {index} has no op_type")));
        }
        let domain = n.domain.clone().unwrap_or_default();
        let name = match &n.name {
            Some(s) if !s.is_empty() => s.clone(),
            _ => format!("{op_type}_{index}"),
        };
        let ctx = NodeCtx { node: &name, op_type: &op_type, opset: opset_of(&domain) };
        let mut attributes = Vec::with_capacity(n.attribute.len());
        for a in &n.attribute {
            attributes.push(attribute(a, &ctx, &mut external)?);
        }
        nodes.push(Node { name, op_type, domain, inputs: n.input.clone(), outputs: n.output.clone(), attributes });
    }

    let out = OnnxModel {
        ir_version,
        opset,
        opset_imports,
        producer: model.producer_name.clone().unwrap_or_default(),
        graph_name: graph.name.clone().unwrap_or_default(),
        initializers,
        inputs,
        outputs,
        value_info,
        nodes,
    };
    check_references(&out)?;
    Ok(out)
}

/// The opset version a node of `domain` is read under (0 for a domain the model does not import).
pub(super) fn opset_of(imports: &[(String, i64)], default: i64, domain: &str) -> i64 {
    if domain.is_empty() || domain == "ai.onnx" {
        default
    } else {
        imports.iter().find(|(d, _)| d == domain).map_or(0, |&(_, v)| v)
    }
}

/// Checks that every value a node reads is defined before it (by a data input, an initializer or
/// an earlier node), that no value is defined twice, and that every graph output is defined.
fn check_references(model: &OnnxModel) -> Result<(), ImportError> {
    let mut defined: HashSet<&str> = HashSet::new();
    for t in &model.initializers {
        if !defined.insert(&t.name) {
            return Err(ImportError::DuplicateValue { value: t.name.clone(), by: "a second initializer".into() });
        }
    }
    for i in &model.inputs {
        if !defined.insert(&i.name) {
            return Err(ImportError::DuplicateValue { value: i.name.clone(), by: "a second graph input".into() });
        }
    }
    for n in &model.nodes {
        for v in &n.inputs {
            if !v.is_empty() && !defined.contains(v.as_str()) {
                return Err(ImportError::UndefinedValue {
                    node: n.name.clone(),
                    op_type: n.op_type.clone(),
                    opset: model.opset_of(&n.domain),
                    value: v.clone(),
                });
            }
        }
        for v in &n.outputs {
            if !v.is_empty() && !defined.insert(v) {
                return Err(ImportError::DuplicateValue { value: v.clone(), by: format!("node '{}' ({})", n.name, n.op_type) });
            }
        }
    }
    for o in &model.outputs {
        if !defined.contains(o.name.as_str()) {
            return Err(ImportError::UndefinedOutput { value: o.name.clone() });
        }
    }
    Ok(())
}

fn value_info(vi: &proto::ValueInfoProto, what: &str) -> Result<ValueInfo, ImportError> {
    let name = vi.name.clone().unwrap_or_default();
    let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(proto::type_proto::Value::TensorType(t)) => t,
        _ => return Ok(ValueInfo { name, dtype: None, shape: None }),
    };
    let dtype = tensor.elem_type.filter(|&c| c != 0).map(DataType::from_onnx);
    let shape = match &tensor.shape {
        None => None,
        Some(s) => {
            let mut dims = Vec::with_capacity(s.dim.len());
            for d in &s.dim {
                use proto::tensor_shape_proto::dimension::Value;
                dims.push(match &d.value {
                    Some(Value::DimValue(v)) => match usize::try_from(*v) {
                        Ok(v) => Dim::Fixed(v),
                        Err(_) => {
                            return Err(ImportError::Malformed {
                                what: what.to_string(),
                                detail: format!("value '{name}' has a negative dimension {v}"),
                            })
                        }
                    },
                    Some(Value::DimParam(p)) if !p.is_empty() => Dim::Named(p.clone()),
                    _ => Dim::Unknown,
                });
            }
            Some(dims)
        }
    };
    Ok(ValueInfo { name, dtype, shape })
}

/// Where a node-level error happened, for its message.
struct NodeCtx<'a> {
    node: &'a str,
    op_type: &'a str,
    opset: i64,
}

fn attribute(a: &proto::AttributeProto, ctx: &NodeCtx, external: &mut ExternalData) -> Result<(String, Attribute), ImportError> {
    use proto::attribute_proto::AttributeType as T;
    let name = a.name.clone().unwrap_or_default();
    let unsupported = |kind: &'static str, hint: &'static str| ImportError::UnsupportedAttribute {
        node: ctx.node.to_string(),
        op_type: ctx.op_type.to_string(),
        opset: ctx.opset,
        attribute: name.clone(),
        kind,
        hint,
    };
    let malformed = |detail: &str| ImportError::MalformedAttribute {
        node: ctx.node.to_string(),
        op_type: ctx.op_type.to_string(),
        opset: ctx.opset,
        attribute: name.clone(),
        detail: detail.to_string(),
    };
    if name.is_empty() {
        return Err(malformed("it has no name"));
    }
    let kind = a.r#type.and_then(|t| T::try_from(t).ok()).unwrap_or(T::Undefined);
    let value = match kind {
        T::Float => Attribute::Float(a.f.unwrap_or_default()),
        T::Int => Attribute::Int(a.i.unwrap_or_default()),
        T::String => Attribute::String(a.s.clone().unwrap_or_default()),
        T::Tensor => {
            let t = a.t.as_ref().ok_or_else(|| malformed("it is of type TENSOR but holds no tensor"))?;
            let tensor_name = t.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("{}.{}", ctx.node, name));
            Attribute::Tensor(read_tensor(t, tensor_name, external)?)
        }
        T::Floats => Attribute::Floats(a.floats.clone()),
        T::Ints => Attribute::Ints(a.ints.clone()),
        T::Strings => Attribute::Strings(a.strings.clone()),
        // `If`'s branches: imported when the condition is known at compile time (an exporter's
        // check of a static shape); Loop and Scan are refused by the importer.
        T::Graph => {
            let g = a.g.as_ref().ok_or_else(|| malformed("it is of type GRAPH but holds no graph"))?;
            Attribute::Graph(Box::new(subgraph(g, ctx, external)?))
        }
        T::Graphs => {
            return Err(unsupported(
                "list of graphs",
                "no standard op of opsets 13-21 but Scan's variants takes one; control flow over data is not supported",
            ))
        }
        T::SparseTensor | T::SparseTensors => return Err(unsupported("sparse tensor", "store the constant as a dense tensor")),
        T::Tensors => return Err(unsupported("list of tensors", "no standard op of opsets 13-21 takes one")),
        T::TypeProto | T::TypeProtos => return Err(unsupported("type", "no standard op of opsets 13-21 takes one")),
        T::Undefined if a.ref_attr_name.is_some() => {
            return Err(unsupported("reference to a function attribute", "inline the model's local functions before export"))
        }
        T::Undefined => return Err(malformed("it has no type (ONNX IR 7 and later require one)")),
    };
    Ok((name, value))
}

/// A subgraph attribute's nodes (named `<op_type>_<index>` where unnamed), initializers and
/// output names; its nodes' own subgraphs are read the same way.
fn subgraph(g: &proto::GraphProto, ctx: &NodeCtx, external: &mut ExternalData) -> Result<Subgraph, ImportError> {
    let mut initializers = Vec::with_capacity(g.initializer.len());
    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        initializers.push(read_tensor(t, name, external)?);
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for (index, n) in g.node.iter().enumerate() {
        let op_type = n.op_type.clone().unwrap_or_default();
        let name = match &n.name {
            Some(s) if !s.is_empty() => s.clone(),
            _ => format!("{}/{op_type}_{index}", ctx.node),
        };
        let inner = NodeCtx { node: &name, op_type: &op_type, opset: ctx.opset };
        let mut attributes = Vec::with_capacity(n.attribute.len());
        for a in &n.attribute {
            attributes.push(attribute(a, &inner, external)?);
        }
        nodes.push(Node {
            name,
            op_type,
            domain: n.domain.clone().unwrap_or_default(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attributes,
        });
    }
    let outputs = g.output.iter().map(|o| o.name.clone().unwrap_or_default()).collect();
    Ok(Subgraph { nodes, initializers, outputs })
}

/// The external data files of one model, each mapped once.
pub(super) struct ExternalData<'a> {
    dir: Option<&'a Path>,
    files: HashMap<String, Mapped>,
}

enum Mapped {
    Map(memmap2::Mmap),
    Empty,
}

impl Mapped {
    fn bytes(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

impl<'a> ExternalData<'a> {
    /// The external data files of a model whose directory is `dir` (none opened yet).
    pub(super) fn new(dir: Option<&'a Path>) -> Self {
        ExternalData { dir, files: HashMap::new() }
    }

    /// The bytes of one tensor's external data, after checking the location stays inside the
    /// model's directory and the range lies inside the file.
    pub(super) fn read(&mut self, tensor: &str, entries: &[proto::StringStringEntryProto]) -> Result<&[u8], ImportError> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in entries {
            let key = e.key.clone().unwrap_or_default();
            let value = e.value.clone().unwrap_or_default();
            let number = || {
                value.parse::<u64>().map_err(|_| ImportError::ExternalDataEntry {
                    tensor: tensor.into(),
                    key: key.clone(),
                    value: value.clone(),
                })
            };
            match key.as_str() {
                "location" => location = Some(value.clone()),
                "offset" => offset = number()?,
                "length" => length = Some(number()?),
                // "checksum" and other keys do not change where the data is.
                _ => {}
            }
        }
        let location = location.ok_or_else(|| ImportError::ExternalDataEntry {
            tensor: tensor.into(),
            key: "location".into(),
            value: "(missing)".into(),
        })?;
        let rel = Path::new(&location);
        if location.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(ImportError::ExternalDataPath { tensor: tensor.into(), location });
        }
        let dir = self.dir.ok_or_else(|| ImportError::NoModelDirectory { tensor: tensor.into(), location: location.clone() })?;
        if !self.files.contains_key(&location) {
            let path = dir.join(rel);
            let missing =
                |source| ImportError::MissingExternalData { tensor: tensor.into(), location: location.clone(), path: path.clone(), source };
            let file = std::fs::File::open(&path).map_err(missing)?;
            let len = file.metadata().map_err(missing)?.len();
            let mapped = if len == 0 {
                Mapped::Empty
            } else {
                // SAFETY: the map is read-only and lives while the model is read. Another process
                // truncating the file meanwhile could fault; ONNX weights are not modified in place,
                // and every value is copied out before this function's caller returns.
                Mapped::Map(unsafe { memmap2::Mmap::map(&file) }.map_err(missing)?)
            };
            self.files.insert(location.clone(), mapped);
        }
        let bytes = self.files[&location].bytes();
        let file_len = bytes.len() as u64;
        let length = match length {
            Some(l) => l,
            None => file_len.saturating_sub(offset),
        };
        let end = offset.checked_add(length).filter(|&e| e <= file_len);
        match end {
            Some(end) => Ok(&bytes[offset as usize..end as usize]),
            None => Err(ImportError::ExternalDataOutOfRange {
                tensor: tensor.into(),
                location,
                offset,
                end: offset.saturating_add(length),
                file_len,
            }),
        }
    }
}

fn read_tensor(t: &proto::TensorProto, name: String, external: &mut ExternalData) -> Result<Tensor, ImportError> {
    let dtype = DataType::from_onnx(t.data_type.unwrap_or(0));
    let elem_size = match dtype {
        DataType::F32 | DataType::I32 => 4,
        DataType::F64 | DataType::I64 => 8,
        DataType::F16 => 2,
        DataType::Bool => 1,
        other => return Err(ImportError::UnsupportedDtype { tensor: name, dtype: other.name() }),
    };
    if t.segment.is_some() {
        return Err(ImportError::UnsupportedTensorStorage { tensor: name, what: "a segment of a larger tensor".into() });
    }
    let size_error = |expected: String, found: String| ImportError::TensorDataSize {
        tensor: name.clone(),
        shape: t.dims.clone(),
        dtype: dtype.name(),
        expected,
        found,
    };
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut count: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| size_error("non-negative dimensions".into(), format!("dimension {d}")))?;
        count =
            count.checked_mul(d).ok_or_else(|| size_error("a shape whose size fits in memory".into(), "an overflowing product".into()))?;
        dims.push(d);
    }
    let byte_len = count
        .checked_mul(elem_size)
        .ok_or_else(|| size_error("a shape whose size fits in memory".into(), "an overflowing product".into()))?;

    let external_location = t.data_location == Some(proto::tensor_proto::DataLocation::External as i32);
    let raw: Option<&[u8]> = if external_location { Some(external.read(&name, &t.external_data)?) } else { t.raw_data.as_deref() };
    let values = if let Some(raw) = raw {
        if raw.len() != byte_len {
            return Err(size_error(format!("{byte_len} bytes"), format!("{} bytes", raw.len())));
        }
        match dtype {
            DataType::F32 => TensorValues::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DataType::I32 => TensorValues::I32(raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DataType::F64 => TensorValues::F64(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()),
            DataType::I64 => TensorValues::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()),
            DataType::F16 => TensorValues::F16(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            _ => TensorValues::Bool(raw.iter().map(|&b| b != 0).collect()),
        }
    } else {
        // Typed fields: float16 and bool are stored widened in int32_data, as the spec says.
        let found = match dtype {
            DataType::F32 => t.float_data.len(),
            DataType::F64 => t.double_data.len(),
            DataType::I64 => t.int64_data.len(),
            _ => t.int32_data.len(),
        };
        if found != count {
            return Err(size_error(format!("{count} values"), format!("{found} values")));
        }
        match dtype {
            DataType::F32 => TensorValues::F32(t.float_data.clone()),
            DataType::F64 => TensorValues::F64(t.double_data.clone()),
            DataType::I64 => TensorValues::I64(t.int64_data.clone()),
            DataType::I32 => TensorValues::I32(t.int32_data.clone()),
            DataType::F16 => TensorValues::F16(t.int32_data.iter().map(|&v| v as u16).collect()),
            _ => TensorValues::Bool(t.int32_data.iter().map(|&v| v != 0).collect()),
        }
    };
    Ok(Tensor { name, dims, values })
}
