//! Writing a trained model back as ONNX: the source graph, decoded with the same generated protobuf
//! types that read it, with the trained values of its float initializers put back under their
//! names. Every other field of the model (nodes, attributes, other initializers, metadata) is
//! written back as it was read, except that external data is inlined (the output is one file) and,
//! for `inference`, the training-mode switches of BatchNormalization and Dropout are turned off.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;

use super::error::ImportError;
use super::import::running_stat_copies;
use super::load::ExternalData;
use super::proto;

/// Protobuf cannot encode a message of 2 GiB or more, and onnxruntime refuses to parse one.
pub const MAX_MODEL_BYTES: u64 = (1 << 31) - 1;

/// The trained value of one float initializer, under its ONNX name.
#[derive(Clone, Copy, Debug)]
pub struct TrainedValue<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub values: &'a [f32],
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Write the graph for inference: BatchNormalization nodes use their running statistics
    /// (`training_mode` 0, no running-statistic outputs) and Dropout nodes lose their
    /// `training_mode` input, so that they are the identity.
    pub inference: bool,
}

/// An exported model and what was changed.
#[derive(Clone, Debug)]
pub struct Exported {
    pub bytes: Vec<u8>,
    /// Initializers whose values were replaced by trained ones.
    pub replaced: usize,
    /// Tensors whose external data was copied into the model.
    pub inlined: usize,
    /// Nodes switched from training to inference mode.
    pub switched: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the plan was compiled from {model}, which has no ONNX graph to write; export its weights with --safetensors")]
    NoOnnxSource { model: String },
    #[error("cannot read the ONNX model {path} that the plan was compiled from ({source}); a relative path is relative to the directory `pock compile` ran in: pass --model PATH.onnx")]
    MissingSource { path: String, source: std::io::Error },
    #[error("{path} ({found_bytes} bytes, FNV-1a 64 {found_hash:016x}) is not the ONNX model the plan was compiled from ({recorded_path}, {recorded_bytes} bytes, FNV-1a 64 {recorded_hash:016x}); pass --model with that file, or compile the plan again from this one")]
    SourceChanged { path: String, found_bytes: u64, found_hash: u64, recorded_path: String, recorded_bytes: u64, recorded_hash: u64 },
    #[error("the source ONNX model cannot be decoded ({0}); export with the .onnx file the plan was compiled from (--model)")]
    Decode(String),
    #[error("the plan's tensor '{name}' is not a float initializer of the source ONNX model; export with the .onnx file the plan was compiled from (--model)")]
    NotAnInitializer { name: String },
    #[error("the plan's tensor '{name}' has shape {plan:?} but the source ONNX initializer has dims {graph:?}; export with the .onnx file the plan was compiled from (--model)")]
    Shape { name: String, plan: Vec<usize>, graph: Vec<i64> },
    #[error("{0}")]
    ExternalData(#[from] ImportError),
    #[error("the exported model would be {bytes} bytes; a single ONNX file must stay under 2 GiB (a protobuf limit) and pock does not write external data files yet; export the weights with --safetensors instead")]
    TooLarge { bytes: u64 },
    #[error("cannot write node '{node}' ({op_type}) for inference: {message}; export without --inference")]
    Inference { node: String, op_type: String, message: String },
}

/// Writes `source` (the bytes of an ONNX model whose external data files lie in `dir`) with the
/// values of `trained` in place of the initializers of the same names. Every trained value must
/// name a float initializer of the same number of elements and dims, or nothing is written.
pub fn export_model(source: &[u8], dir: Option<&Path>, trained: &[TrainedValue], options: ExportOptions) -> Result<Exported, ExportError> {
    let mut model = proto::ModelProto::decode(source).map_err(|e| ExportError::Decode(e.to_string()))?;
    let graph = model.graph.as_mut().ok_or_else(|| ExportError::Decode("it has no graph".into()))?;
    let mut external = ExternalData::new(dir);
    let mut inlined = 0;

    let by_name: HashMap<String, usize> =
        graph.initializer.iter().enumerate().filter_map(|(i, t)| t.name.clone().map(|n| (n, i))).collect();
    // Running statistics the importer copied out of a shared initializer become initializers of
    // their own, which their BatchNormalization reads instead (`running_stat_copies`).
    let names: HashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let copies = running_stat_copies(graph.node.iter().map(|n| (n.op_type.as_deref().unwrap_or(""), n.input.as_slice())), &names);
    let mut by_name = by_name;
    for c in copies.iter().filter(|c| trained.iter().any(|v| v.name == c.name)) {
        let mut t = graph.initializer[by_name[&c.source]].clone();
        t.name = Some(c.name.clone());
        by_name.insert(c.name.clone(), graph.initializer.len());
        graph.initializer.push(t);
        graph.node[c.node].input[3 + c.slot] = c.name.clone();
    }
    let mut replaced = vec![false; graph.initializer.len()];
    for v in trained {
        let i = *by_name.get(v.name).ok_or_else(|| ExportError::NotAnInitializer { name: v.name.into() })?;
        let t = &mut graph.initializer[i];
        if t.data_type != Some(proto::tensor_proto::DataType::Float as i32) {
            return Err(ExportError::NotAnInitializer { name: v.name.into() });
        }
        let same_dims = t.dims.len() == v.shape.len() && t.dims.iter().zip(v.shape).all(|(&g, &p)| u64::try_from(g) == Ok(p as u64));
        if !same_dims || v.values.len() != v.shape.iter().product::<usize>() {
            return Err(ExportError::Shape { name: v.name.into(), plan: v.shape.to_vec(), graph: t.dims.clone() });
        }
        set_raw(t, v.values.iter().flat_map(|x| x.to_le_bytes()).collect());
        replaced[i] = true;
    }
    // Initializers that were not trained keep their values; those in external files are copied in
    // so that the export is one self-contained file.
    for (t, _) in graph.initializer.iter_mut().zip(&replaced).filter(|(_, &r)| !r) {
        if is_external(t) {
            let name = t.name.clone().unwrap_or_default();
            let bytes = external.read(&name, &t.external_data)?.to_vec();
            set_raw(t, bytes);
            inlined += 1;
        }
    }
    for node in &mut graph.node {
        for a in &mut node.attribute {
            if let Some(t) = a.t.as_mut().filter(|t| is_external(t)) {
                let name = t.name.clone().or_else(|| a.name.clone()).unwrap_or_default();
                let bytes = external.read(&name, &t.external_data)?.to_vec();
                set_raw(t, bytes);
                inlined += 1;
            }
        }
    }
    let switched = if options.inference { for_inference(graph)? } else { 0 };

    let len = model.encoded_len() as u64;
    if len > MAX_MODEL_BYTES {
        return Err(ExportError::TooLarge { bytes: len });
    }
    Ok(Exported { bytes: model.encode_to_vec(), replaced: replaced.iter().filter(|&&r| r).count(), inlined, switched })
}

fn is_external(t: &proto::TensorProto) -> bool {
    t.data_location == Some(proto::tensor_proto::DataLocation::External as i32)
}

/// Stores a tensor's values as `raw_data` (little-endian, as ONNX specifies), removing any other
/// storage of them.
fn set_raw(t: &mut proto::TensorProto, bytes: Vec<u8>) {
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = None;
    t.raw_data = Some(bytes);
}

/// Turns BatchNormalization and Dropout nodes into their inference form; returns how many changed.
fn for_inference(graph: &mut proto::GraphProto) -> Result<usize, ExportError> {
    let mut read: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *read.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *read.entry(o.name.clone().unwrap_or_default()).or_default() += 1;
    }
    let mut dropped: Vec<String> = Vec::new();
    let mut dropped_inputs: Vec<String> = Vec::new();
    let mut switched = 0;
    for n in &mut graph.node {
        let domain = n.domain.as_deref().unwrap_or("");
        if !(domain.is_empty() || domain == "ai.onnx") {
            continue;
        }
        let fail = |n: &proto::NodeProto, message: String| ExportError::Inference {
            node: n.name.clone().unwrap_or_default(),
            op_type: n.op_type.clone().unwrap_or_default(),
            message,
        };
        match n.op_type.as_deref() {
            Some("BatchNormalization") => {
                let mode = n.attribute.iter_mut().find(|a| a.name.as_deref() == Some("training_mode"));
                let training = mode.as_ref().is_some_and(|a| a.i.unwrap_or(0) != 0);
                if !training {
                    continue;
                }
                // In inference mode the node may only have its normalised output.
                if let Some(o) = n.output.iter().skip(1).find(|o| !o.is_empty() && read.contains_key(*o)) {
                    return Err(fail(n, format!("its running-statistic output '{o}' is read by the graph")));
                }
                if let Some(a) = n.attribute.iter_mut().find(|a| a.name.as_deref() == Some("training_mode")) {
                    a.i = Some(0);
                }
                dropped.extend(n.output.drain(1..).filter(|o| !o.is_empty()));
                switched += 1;
            }
            // Without its third input Dropout is not in training mode (the input's default),
            // whatever the ratio: the identity, and a mask output of all true.
            Some("Dropout") if n.input.len() > 2 => {
                dropped_inputs.extend(n.input.drain(2..).filter(|i| !i.is_empty()));
                switched += 1;
            }
            _ => {}
        }
    }
    // Declared types of the removed outputs would describe values that no longer exist.
    graph.value_info.retain(|vi| !dropped.iter().any(|d| vi.name.as_deref() == Some(d.as_str())));
    // A training-mode flag that only the removed Dropout inputs read (an initializer or a Constant
    // node) is removed with them, since onnxruntime warns about constants that nothing reads.
    let still_read: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().filter_map(|o| o.name.as_deref()))
        .collect();
    let unused: Vec<String> = dropped_inputs.into_iter().filter(|i| !still_read.contains(i.as_str())).collect();
    let is_unused = |name: Option<&str>| name.is_some_and(|n| unused.iter().any(|u| u == n));
    graph.initializer.retain(|t| !is_unused(t.name.as_deref()));
    graph.input.retain(|vi| !is_unused(vi.name.as_deref()));
    graph
        .node
        .retain(|n| !(n.op_type.as_deref() == Some("Constant") && !n.output.is_empty() && n.output.iter().all(|o| is_unused(Some(o)))));
    Ok(switched)
}
