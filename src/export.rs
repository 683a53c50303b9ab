//! `pock export`: a trained session's weights written back as the ONNX graph the plan was compiled
//! from, or alone as safetensors.

use std::collections::HashMap;
use std::path::Path;

use pock_compiler::onnx::{export_model, ExportError, ExportOptions, Exported, TrainedValue};
use pock_engine::checkpoint::fnv1a64;
use pock_engine::plan::{DType, ModelSource, Role};
use pock_engine::Session;
use safetensors::tensor::{Dtype, TensorView};

use crate::inspect::source_text;
use crate::PockError;

/// The `format` metadata of a weights file written by `pock export --safetensors`.
pub const WEIGHTS_FORMAT: &str = "pock-weights-1";

/// One trained tensor: its plan name (the ONNX initializer's or the zoo's), shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The session's trained state that makes up the model: every float parameter (trainable or
/// frozen) and every running statistic, in plan order. Optimizer state and counters are left out:
/// they belong to a checkpoint, not to a model.
pub fn trained_tensors(session: &Session, include_frozen: bool) -> Result<Vec<TrainedTensor>, PockError> {
    let plan = session.plan();
    if plan.programs.train.nodes.iter().any(|n| matches!(n.op, pock_engine::ops::Op::Quant(_))) {
        return Err(PockError::Usage(
            "pock export does not write int8 plans (compiled with --quantize int8) yet: their weights and biases are integer-domain \
             values with per-channel scales, not the model's float tensors; export a float plan instead"
                .into(),
        ));
    }
    let mut out = Vec::new();
    for t in &plan.tensors {
        let wanted = match t.role {
            Role::Parameter { trainable } => trainable || include_frozen,
            Role::RunningStat => true,
            _ => false,
        };
        if wanted && t.dtype == DType::F32 {
            out.push(TrainedTensor { name: t.name.clone(), shape: t.shape.clone(), values: session.read_tensor(&t.name)? });
        }
    }
    Ok(out)
}

/// The model's tensors in its original form: for each BatchNorm the compiler folded into a
/// convolution (`--batch-norm fold`, [`pock_engine::plan::Plan::folded_norms`]), the conv weight
/// `W = W'/s` and the BatchNorm's shift `beta = b' - (b - mean) * s` replace the folded values
/// under the same names (see `pock_compiler::fold_norm::unfold`), and with `recorded` the
/// tensors the fold took out of the plan (gamma, the running statistics, the conv's own bias,
/// unchanged by training) are appended. The result computes what the trained plan computes.
pub fn unfold_norms(session: &Session, tensors: &mut Vec<TrainedTensor>, recorded: bool) -> Result<(), PockError> {
    for fold in &session.plan().folded_norms {
        let find = |tensors: &[TrainedTensor], name: &str| tensors.iter().position(|t| t.name == name);
        let (w, b) = (find(tensors, &fold.conv_weight), find(tensors, &fold.beta));
        let (weight, bias) =
            pock_compiler::fold_norm::unfold(fold, w.map(|i| &tensors[i].values[..]), b.map(|i| &tensors[i].values[..]))
                .map_err(|e| PockError::Usage(format!("{e}: the plan's record of the fold is damaged; recompile the model")))?;
        if let (Some(i), Some(values)) = (w, weight) {
            tensors[i].values = values;
        }
        if let (Some(i), Some(values)) = (b, bias) {
            tensors[i].values = values;
        }
        if recorded {
            let originals = [Some(&fold.gamma), Some(&fold.running_mean), Some(&fold.running_var), fold.conv_bias.as_ref()];
            for v in originals.into_iter().flatten() {
                if find(tensors, &v.name).is_none() {
                    tensors.push(TrainedTensor { name: v.name.clone(), shape: vec![v.values.len()], values: v.values.clone() });
                }
            }
        }
    }
    Ok(())
}

/// Writes the model's weights (parameters and running statistics) as a safetensors file,
/// atomically, with the model and its source in the metadata, in the model's original form
/// (folded BatchNorms unfolded, [`unfold_norms`]). Returns how many tensors it wrote.
pub fn write_safetensors(session: &Session, path: &Path) -> Result<usize, PockError> {
    let mut tensors = trained_tensors(session, true)?;
    unfold_norms(session, &mut tensors, true)?;
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        // Cannot fail: the byte length is the shape's element count times 4 by construction.
        let view = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| PockError::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) })?;
        views.push((t.name.clone(), view));
    }
    let plan = session.plan();
    let meta = HashMap::from([
        ("format".to_string(), WEIGHTS_FORMAT.to_string()),
        ("model".to_string(), plan.model.clone()),
        ("source".to_string(), source_text(&plan.source)),
    ]);
    let encoded = safetensors::serialize(views, Some(meta))
        .map_err(|e| PockError::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) })?;
    pock_engine::atomic::write_bytes(path, &encoded).map_err(|source| PockError::Io { path: path.display().to_string(), source })?;
    Ok(tensors.len())
}

/// Reads the ONNX model a plan was compiled from (`model`, or the path the plan records) and
/// checks it is the same file: its length and FNV-1a 64 hash must be those recorded at compile
/// time. Returns the path read and its bytes.
pub fn source_model(session: &Session, model: Option<&Path>) -> Result<(std::path::PathBuf, Vec<u8>), PockError> {
    let plan = session.plan();
    let ModelSource::Onnx { path: recorded_path, fnv1a64: recorded_hash, bytes: recorded_bytes } = &plan.source else {
        return Err(ExportError::NoOnnxSource { model: source_text(&plan.source) }.into());
    };
    let path = model.map(Path::to_path_buf).unwrap_or_else(|| recorded_path.into());
    let bytes = std::fs::read(&path).map_err(|source| ExportError::MissingSource { path: path.display().to_string(), source })?;
    let found_hash = fnv1a64(&bytes);
    if found_hash != *recorded_hash || bytes.len() as u64 != *recorded_bytes {
        return Err(ExportError::SourceChanged {
            path: path.display().to_string(),
            found_bytes: bytes.len() as u64,
            found_hash,
            recorded_path: recorded_path.clone(),
            recorded_bytes: *recorded_bytes,
            recorded_hash: *recorded_hash,
        }
        .into());
    }
    Ok((path, bytes))
}

/// Writes the session's model as ONNX to `out`, atomically: the source graph (see
/// [`source_model`]) with its trained initializers replaced and its external data inlined.
pub fn write_onnx(session: &Session, model: Option<&Path>, out: &Path, options: ExportOptions) -> Result<Exported, PockError> {
    let (path, source) = source_model(session, model)?;
    // Frozen parameters hold the source's own values; only what training changed is replaced.
    // Folded BatchNorms go back to the source's form; gamma and the statistics are the source's.
    let mut tensors = trained_tensors(session, false)?;
    unfold_norms(session, &mut tensors, false)?;
    let trained: Vec<TrainedValue> = tensors.iter().map(|t| TrainedValue { name: &t.name, shape: &t.shape, values: &t.values }).collect();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    let exported = export_model(&source, Some(&dir), &trained, options)?;
    pock_engine::atomic::write_bytes(out, &exported.bytes).map_err(|source| PockError::Io { path: out.display().to_string(), source })?;
    Ok(exported)
}
