//! Checkpoints as safetensors files: every checkpointed tensor of a plan (trainable parameters,
//! running statistics, optimizer state, gradient accumulators) under its plan name, plus the
//! session's counters, learning rate and the plan's identity in the metadata.
//!
//! Writes are atomic ([`crate::atomic`]). Restores are all or nothing: every tensor is checked
//! (present, dtype, shape, finite) before the first byte of the session is changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::exec::Backend;
use crate::plan::{DType, Plan, Role, TensorId};

/// The format this engine writes. Version 2 added the plan identity and the learning rate.
pub const FORMAT: &str = "pock-checkpoint-2";
/// Formats that still load as weights (`Session::load_weights`) but cannot be resumed from,
/// because they do not say which plan they belong to.
const WEIGHTS_ONLY_FORMATS: &[&str] = &["pock-checkpoint-1"];

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
    #[error(
        "{path} was written for a different plan ({differences}); resume with the plan it was trained with, or load only its parameters with --weights"
    )]
    OtherPlan { path: PathBuf, differences: String },
    #[error("{path} holds {what} in tensor '{tensor}' (element {index}): it was saved from a run that had diverged; resume from an earlier checkpoint")]
    NonFinite { path: PathBuf, tensor: String, index: usize, what: &'static str },
}

/// The tensors a checkpoint holds for `plan`.
pub fn checkpointed(plan: &Plan) -> impl Iterator<Item = TensorId> + '_ {
    plan.tensors.iter().enumerate().filter(|(_, t)| t.role.is_checkpointed()).map(|(i, _)| TensorId(i as u32))
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::I8 => Dtype::I8,
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
    }
}

fn st_name(d: Dtype) -> String {
    match d {
        Dtype::F32 => "float32".into(),
        Dtype::I64 => "int64".into(),
        Dtype::F16 => "float16".into(),
        Dtype::I8 => "int8".into(),
        Dtype::BOOL => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Writes the checkpointed tensors of `backend`'s plan with `metadata`, atomically.
pub fn save(path: &Path, backend: &dyn Backend, metadata: HashMap<String, String>) -> Result<(), CheckpointError> {
    let plan = backend.plan();
    let fail = |message: String| CheckpointError::Write { path: path.into(), message };
    let mut buffers = Vec::new();
    for t in checkpointed(plan) {
        let info = plan.tensor(t);
        let mut bytes = vec![0u8; info.bytes() as usize];
        backend.read(t, &mut bytes).map_err(|e| fail(e.to_string()))?;
        buffers.push((info.name.clone(), st_dtype(info.dtype), info.shape.clone(), bytes));
    }
    let mut views: Vec<(String, TensorView)> = Vec::with_capacity(buffers.len());
    for (name, dtype, shape, bytes) in &buffers {
        let view = TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| fail(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    let mut meta = metadata;
    meta.insert("format".into(), FORMAT.into());
    meta.insert("model".into(), plan.model.clone());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| fail(e.to_string()))?;
    crate::atomic::write_bytes(path, &bytes).map_err(|e| fail(e.to_string()))
}

/// A checkpoint file read into memory, its metadata parsed, nothing restored yet.
pub struct Checkpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Reads a checkpoint and checks that it is a pock checkpoint.
    pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.into(), source })?;
        let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt { path: path.into(), message: e.to_string() };
        SafeTensors::deserialize(&bytes).map_err(corrupt)?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let format = metadata.get("format").map(String::as_str);
        if format != Some(FORMAT) && !WEIGHTS_ONLY_FORMATS.iter().any(|f| Some(*f) == format) {
            return Err(CheckpointError::Mismatch {
                path: path.into(),
                message: format!("it is not a pock checkpoint (expected metadata format = {FORMAT})"),
            });
        }
        Ok(Checkpoint { path: path.into(), bytes, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Whether the checkpoint records enough to resume training from (its plan identity).
    pub fn is_resumable(&self) -> bool {
        self.metadata.get("format").map(String::as_str) == Some(FORMAT)
    }

    /// Restores the tensors `which` selects into `backend`. Each must be present with the plan's
    /// dtype and shape, and float tensors must be finite; all of that is checked for every
    /// tensor before the first one is written, so a failure leaves the backend untouched.
    pub fn restore(&self, backend: &mut dyn Backend, which: &dyn Fn(&Role) -> bool) -> Result<(), CheckpointError> {
        let path = self.path.as_path();
        let st =
            SafeTensors::deserialize(&self.bytes).map_err(|e| CheckpointError::Corrupt { path: path.into(), message: e.to_string() })?;
        let wanted: Vec<TensorId> = checkpointed(backend.plan()).filter(|&t| which(&backend.plan().tensor(t).role)).collect();
        let mut checked = Vec::with_capacity(wanted.len());
        for t in wanted {
            let info = backend.plan().tensor(t);
            let view = st
                .tensor(&info.name)
                .map_err(|_| CheckpointError::Mismatch { path: path.into(), message: format!("tensor '{}' is missing", info.name) })?;
            if view.dtype() != st_dtype(info.dtype) || view.shape() != info.shape.as_slice() {
                return Err(CheckpointError::Mismatch {
                    path: path.into(),
                    message: format!(
                        "tensor '{}' is {} {:?}, the plan has {} {:?}",
                        info.name,
                        st_name(view.dtype()),
                        view.shape(),
                        info.dtype.name(),
                        info.shape
                    ),
                });
            }
            if info.dtype == DType::F32 {
                let bad = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).position(|v| !v.is_finite());
                if let Some(index) = bad {
                    let c = &view.data()[index * 4..index * 4 + 4];
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    let what = if v.is_nan() { "NaN" } else { "an infinite value" };
                    return Err(CheckpointError::NonFinite { path: path.into(), tensor: info.name.clone(), index, what });
                }
            }
            checked.push((t, view));
        }
        // Every write below has been checked to be a whole tensor of the right size, which is
        // the only way `Backend::write` fails; nothing can stop the restore halfway.
        for (t, view) in checked {
            backend.write(t, view.data()).map_err(|e| CheckpointError::Mismatch { path: path.into(), message: e.to_string() })?;
        }
        Ok(())
    }

    /// Checks that every frozen parameter of `backend`'s plan that the checkpoint also holds has
    /// the same bytes in both. A frozen parameter lives in the plan's read-only weight section,
    /// so loading weights cannot change it: a checkpoint that disagrees (one of a plan that
    /// trained that parameter, loaded into a plan that freezes it) would otherwise be applied
    /// only in part, without a word.
    pub fn check_frozen(&self, backend: &dyn Backend) -> Result<(), CheckpointError> {
        let path = self.path.as_path();
        let st =
            SafeTensors::deserialize(&self.bytes).map_err(|e| CheckpointError::Corrupt { path: path.into(), message: e.to_string() })?;
        let plan = backend.plan();
        let mut frozen = Vec::new();
        for (i, info) in plan.tensors.iter().enumerate() {
            if info.role != (Role::Parameter { trainable: false }) {
                continue;
            }
            let Ok(view) = st.tensor(&info.name) else { continue };
            frozen.resize(info.bytes() as usize, 0);
            let same = backend.read(TensorId(i as u32), &mut frozen).is_ok() && view.data() == frozen.as_slice();
            if !same {
                return Err(CheckpointError::Mismatch {
                    path: path.into(),
                    message: format!(
                        "tensor '{}' is frozen in this plan (stored in the plan file) and the checkpoint holds other values for it; to start from the checkpoint's values, compile the plan with `pock compile --init-weights {}`",
                        info.name,
                        path.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Restores tensors from a checkpoint into `backend` (see [`Checkpoint::restore`]). Returns the
/// checkpoint's metadata.
pub fn load(path: &Path, backend: &mut dyn Backend, which: &dyn Fn(&Role) -> bool) -> Result<HashMap<String, String>, CheckpointError> {
    let c = Checkpoint::read(path)?;
    c.restore(backend, which)?;
    Ok(c.metadata)
}

/// A 64-bit FNV-1a hash: enough to tell plans apart by accident (it is not meant to resist
/// forgery), and small enough to live in the engine without another dependency.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The identity of a plan for resuming: a hash of its description (tensors, programs, training
/// settings) with the default learning rate, the producer and the model file's path left out,
/// since none changes what a checkpoint means (the same ONNX file compiled from another directory
/// is the same plan; its hash stays in). Computed from the decoded plan, so the engine needs no
/// compiler.
pub fn plan_identity(plan: &Plan) -> u64 {
    let mut p = plan.clone();
    p.training.learning_rate = 0.0;
    p.producer.clear();
    if let crate::plan::ModelSource::Onnx { path, .. } = &mut p.source {
        path.clear();
    }
    fnv1a64(&postcard::to_allocvec(&p).expect("a plan always serialises"))
}

/// The settings a user chose at compile time, by name, so a mismatch can be named.
pub fn plan_settings(plan: &Plan) -> Vec<(&'static str, String)> {
    let t = &plan.training;
    vec![
        ("model", plan.model.clone()),
        ("batch", t.batch.to_string()),
        ("loss", t.loss.to_string()),
        ("optimizer", t.optimizer.to_string()),
        ("accumulate", t.accumulate.to_string()),
        ("clip_grad_norm", t.clip_grad_norm.map(|c| c.to_string()).unwrap_or_else(|| "none".into())),
    ]
}
