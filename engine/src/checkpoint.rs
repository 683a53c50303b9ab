//! Checkpoints as safetensors files: every checkpointed tensor of a plan (trainable parameters,
//! running statistics, optimizer state, gradient accumulators) under its plan name, plus the
//! session's counters in the metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::exec::Backend;
use crate::plan::{Plan, Role, TensorId};

pub const FORMAT: &str = "pock-checkpoint-1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write checkpoint {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path} is not a valid safetensors checkpoint ({message}); it may be truncated or corrupted")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} does not match this plan: {message}")]
    Mismatch { path: PathBuf, message: String },
}

/// The tensors a checkpoint holds for `plan`.
pub fn checkpointed(plan: &Plan) -> impl Iterator<Item = TensorId> + '_ {
    plan.tensors.iter().enumerate().filter(|(_, t)| t.role.is_checkpointed()).map(|(i, _)| TensorId(i as u32))
}

/// Writes the checkpointed tensors of `backend`'s plan with `metadata`.
pub fn save(path: &Path, backend: &dyn Backend, metadata: HashMap<String, String>) -> Result<(), CheckpointError> {
    let plan = backend.plan();
    let mut buffers = Vec::new();
    for t in checkpointed(plan) {
        let info = plan.tensor(t);
        let mut bytes = vec![0u8; info.bytes() as usize];
        backend.read(t, &mut bytes).map_err(|e| CheckpointError::Write { path: path.into(), message: e.to_string() })?;
        buffers.push((info.name.clone(), info.shape.clone(), bytes));
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("f32 bytes match their shape")))
        .collect();
    let mut meta = metadata;
    meta.insert("format".into(), FORMAT.into());
    meta.insert("model".into(), plan.model.clone());
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| CheckpointError::Write { path: path.into(), message: e.to_string() })?;
    // Write to a temporary file and rename, so an interrupted save never leaves a torn checkpoint.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| CheckpointError::Write { path: path.into(), message: e.to_string() })
}

/// Restores tensors from a checkpoint into `backend`. `which` selects the tensors to restore;
/// each must be present with the plan's shape. Returns the checkpoint's metadata.
pub fn load(path: &Path, backend: &mut dyn Backend, which: &dyn Fn(&Role) -> bool) -> Result<HashMap<String, String>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.into(), source })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Corrupt { path: path.into(), message: e.to_string() })?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| CheckpointError::Corrupt { path: path.into(), message: e.to_string() })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(CheckpointError::Mismatch {
            path: path.into(),
            message: format!("it is not a pock checkpoint (expected metadata format = {FORMAT})"),
        });
    }
    let wanted: Vec<TensorId> = checkpointed(backend.plan()).filter(|&t| which(&backend.plan().tensor(t).role)).collect();
    for t in wanted {
        let info = backend.plan().tensor(t).clone();
        let view = st
            .tensor(&info.name)
            .map_err(|_| CheckpointError::Mismatch { path: path.into(), message: format!("tensor '{}' is missing", info.name) })?;
        if view.dtype() != Dtype::F32 || view.shape() != info.shape.as_slice() {
            return Err(CheckpointError::Mismatch {
                path: path.into(),
                message: format!("tensor '{}' is {:?} {:?}, the plan has F32 {:?}", info.name, view.dtype(), view.shape(), info.shape),
            });
        }
        backend.write(t, view.data()).map_err(|e| CheckpointError::Mismatch { path: path.into(), message: e.to_string() })?;
    }
    Ok(metadata)
}
