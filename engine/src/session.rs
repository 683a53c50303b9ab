//! The `Session` API that applications use: load a plan, train, evaluate, infer, checkpoint.
//!
//! All memory a session needs is allocated when it is created; `train_step`, `eval_batch` and
//! `infer` copy the caller's batch into the arena, run a program and copy results out, without
//! allocating.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::exec::{Backend, CpuBackend, CpuKernels, ExecError, ProgramKind};
use crate::format::{decode_plan, FormatError};
use crate::kernels::cpu::CpuConfig;
use crate::plan::{DType, Loss, Plan, Role, RuntimeScalar, TensorId};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot open plan {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Input(String),
}

#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Threads for the fast CPU kernels (gemm). Default 1: only gemm is parallel so far, and on
    /// the 2-core reference machine two threads made every zoo model's step slower (BENCHMARKS.md).
    pub threads: usize,
    /// Run the portable reference kernels instead of the fast ones (for debugging and tests).
    pub reference_kernels: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { threads: 1, reference_kernels: false }
    }
}

/// Targets for one batch: class labels or regression values.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    Labels(&'a [i64]),
    Values(&'a [f32]),
}

/// Plan file bytes: a read-only memory map, or an 8-byte-aligned owned copy.
pub enum PlanBytes {
    Mapped(memmap2::Mmap),
    Owned { words: Vec<u64>, len: usize },
}

impl AsRef<[u8]> for PlanBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            PlanBytes::Mapped(m) => m,
            // SAFETY: `words` holds at least `len` initialised bytes.
            PlanBytes::Owned { words, len } => unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, *len) },
        }
    }
}

impl PlanBytes {
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` has room for `bytes.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, bytes.len()) };
        PlanBytes::Owned { words, len: bytes.len() }
    }
}

/// Tensor ids the session uses every step, resolved once.
struct Interface {
    train_input: TensorId,
    train_target: TensorId,
    train_loss: TensorId,
    eval_input: TensorId,
    eval_target: TensorId,
    eval_output: TensorId,
    eval_loss: TensorId,
    lr: Option<TensorId>,
    step: Option<TensorId>,
}

pub struct Session {
    backend: Box<dyn Backend>,
    io: Interface,
    learning_rate: f32,
    optimizer_steps: u64,
    micro_steps: u64,
    /// [`checkpoint::plan_identity`] of the plan, computed once at load.
    plan_id: u64,
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32 and i64 have no padding and every byte pattern of them is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

impl Session {
    /// Maps a plan file and starts a session on the CPU.
    pub fn load(path: &Path, options: SessionOptions) -> Result<Self, SessionError> {
        Self::load_with_budget(path, options, None)
    }

    /// [`Session::load`] that refuses, before allocating the arena, a plan whose arena exceeds
    /// `budget` bytes (default: the machine's physical memory, where it can be read).
    pub fn load_with_budget(path: &Path, options: SessionOptions, budget: Option<u64>) -> Result<Self, SessionError> {
        let file = std::fs::File::open(path).map_err(|source| SessionError::Open { path: path.into(), source })?;
        // SAFETY: the map is read only; pock never writes plan files in place (it writes and
        // renames), so the mapped bytes do not change under the session.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| SessionError::Open { path: path.into(), source })?;
        Self::from_plan_bytes_within(PlanBytes::Mapped(map), options, budget).map_err(|e| match e {
            SessionError::Format { source, .. } => SessionError::Format { path: path.into(), source },
            e => e,
        })
    }

    /// Starts a session from plan bytes held in memory.
    pub fn from_bytes(bytes: &[u8], options: SessionOptions) -> Result<Self, SessionError> {
        Self::from_plan_bytes(PlanBytes::copy_of(bytes), options)
    }

    fn from_plan_bytes(bytes: PlanBytes, options: SessionOptions) -> Result<Self, SessionError> {
        Self::from_plan_bytes_within(bytes, options, None)
    }

    fn from_plan_bytes_within(bytes: PlanBytes, options: SessionOptions, budget: Option<u64>) -> Result<Self, SessionError> {
        let (plan, range) =
            decode_plan(bytes.as_ref()).map_err(|source| SessionError::Format { path: PathBuf::from("<memory>"), source })?;
        let (limit, source) = match budget {
            Some(b) => (Some(b), "the memory budget"),
            None => (physical_memory(), "this machine's physical memory"),
        };
        if let Some(limit) = limit.filter(|&l| plan.arena_bytes > l) {
            return Err(SessionError::Input(format!(
                "the plan's arena needs {} bytes, more than {source} of {limit} bytes; compile it with a smaller --batch or model",
                plan.arena_bytes
            )));
        }
        let kernels =
            if options.reference_kernels { CpuKernels::Reference } else { CpuKernels::Fast(CpuConfig { threads: options.threads.max(1) }) };
        let io = interface(&plan)?;
        let learning_rate = plan.training.learning_rate;
        log::info!(
            "plan '{}' for {}: arena {} bytes ({} persistent), weights {} bytes, {:?} kernels",
            plan.model,
            plan.target,
            plan.arena_bytes,
            plan.persistent_bytes,
            plan.weight_bytes,
            kernels
        );
        let plan_id = checkpoint::plan_identity(&plan);
        let backend = CpuBackend::new(plan, bytes, range, kernels)?;
        Ok(Session { backend: Box::new(backend), io, learning_rate, optimizer_steps: 0, micro_steps: 0, plan_id })
    }

    pub fn plan(&self) -> &Plan {
        self.backend.plan()
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Samples per step (fixed at compile time).
    pub fn batch(&self) -> usize {
        self.plan().training.batch
    }

    /// The model input's shape, batch axis included.
    pub fn input_shape(&self) -> &[usize] {
        &self.plan().tensor(self.io.train_input).shape
    }

    /// The model output's shape, batch axis included.
    pub fn output_shape(&self) -> &[usize] {
        &self.plan().tensor(self.io.eval_output).shape
    }

    pub fn set_learning_rate(&mut self, lr: f32) {
        self.learning_rate = lr;
    }

    pub fn learning_rate(&self) -> f32 {
        self.learning_rate
    }

    /// Optimizer steps taken (micro-batches / K with gradient accumulation).
    pub fn optimizer_steps(&self) -> u64 {
        self.optimizer_steps
    }

    /// Micro-batches trained on.
    pub fn micro_steps(&self) -> u64 {
        self.micro_steps
    }

    fn write_targets(&mut self, t: TensorId, y: Targets<'_>) -> Result<(), SessionError> {
        let want = self.plan().tensor(t).dtype;
        match (y, want) {
            (Targets::Labels(l), DType::I64) => self.backend.write(t, as_bytes(l))?,
            (Targets::Values(v), DType::F32) => self.backend.write(t, as_bytes(v))?,
            (Targets::Labels(_), _) => {
                return Err(SessionError::Input("this plan is trained with float targets (MSE), labels were given".into()))
            }
            (Targets::Values(_), _) => {
                return Err(SessionError::Input("this plan is a classifier: it needs integer labels, float targets were given".into()))
            }
        }
        Ok(())
    }

    /// Trains on one batch and returns its loss. With gradient accumulation the optimizer step
    /// happens on every K-th call.
    pub fn train_step(&mut self, x: &[f32], y: Targets<'_>) -> Result<f32, SessionError> {
        self.backend.write(self.io.train_input, as_bytes(x))?;
        self.write_targets(self.io.train_target, y)?;
        if let Some(lr) = self.io.lr {
            self.backend.write(lr, &self.learning_rate.to_le_bytes())?;
        }
        if let Some(step) = self.io.step {
            self.backend.write(step, &((self.optimizer_steps + 1) as f32).to_le_bytes())?;
        }
        self.backend.run(ProgramKind::Train)?;
        let mut loss = [0f32];
        self.backend.read(self.io.train_loss, as_bytes_mut(&mut loss))?;
        self.micro_steps += 1;
        let k = self.plan().training.accumulate as u64;
        if k <= 1 {
            self.optimizer_steps += 1;
        } else if self.micro_steps.is_multiple_of(k) {
            self.backend.run(ProgramKind::Apply)?;
            self.optimizer_steps += 1;
        }
        Ok(loss[0])
    }

    /// Evaluates one batch with frozen statistics: writes the model outputs and the per-sample
    /// losses.
    pub fn eval_batch(&mut self, x: &[f32], y: Targets<'_>, outputs: &mut [f32], losses: &mut [f32]) -> Result<(), SessionError> {
        self.backend.write(self.io.eval_input, as_bytes(x))?;
        self.write_targets(self.io.eval_target, y)?;
        self.backend.run(ProgramKind::Eval)?;
        self.backend.read(self.io.eval_output, as_bytes_mut(outputs))?;
        self.backend.read(self.io.eval_loss, as_bytes_mut(losses))?;
        Ok(())
    }

    /// Runs the model on one batch and writes its outputs.
    pub fn infer(&mut self, x: &[f32], outputs: &mut [f32]) -> Result<(), SessionError> {
        self.backend.write(self.io.eval_input, as_bytes(x))?;
        self.backend.run(ProgramKind::Infer)?;
        self.backend.read(self.io.eval_output, as_bytes_mut(outputs))?;
        Ok(())
    }

    /// Saves weights, optimizer state, running statistics, counters, the learning rate and the
    /// plan's identity, atomically.
    pub fn save(&self, path: &Path) -> Result<(), SessionError> {
        self.save_with(path, &[])
    }

    /// [`Session::save`] with extra metadata (the host's schedule and epoch, say), which
    /// [`Session::resume`] hands back.
    pub fn save_with(&self, path: &Path, extra: &[(&str, String)]) -> Result<(), SessionError> {
        if !self.learning_rate.is_finite() {
            return Err(SessionError::Input(format!(
                "the learning rate is {}; refusing to save a checkpoint that could not be resumed",
                self.learning_rate
            )));
        }
        let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        meta.insert("optimizer_steps".into(), self.optimizer_steps.to_string());
        meta.insert("micro_steps".into(), self.micro_steps.to_string());
        meta.insert("learning_rate".into(), self.learning_rate.to_string());
        meta.insert("plan_id".into(), format!("{:016x}", self.plan_id));
        for (k, v) in checkpoint::plan_settings(self.plan()) {
            meta.insert(format!("plan.{k}"), v);
        }
        checkpoint::save(path, self.backend.as_ref(), meta)?;
        Ok(())
    }

    /// Restores everything `save` wrote, so training continues exactly where it stopped: the
    /// tensors, the counters and the learning rate. Returns the checkpoint's metadata (with what
    /// the host added through [`Session::save_with`]).
    ///
    /// All or nothing: the plan identity, the metadata and every tensor are checked before the
    /// session changes, so a failed resume leaves the session as it was.
    pub fn resume(&mut self, path: &Path) -> Result<HashMap<String, String>, SessionError> {
        let ckpt = Checkpoint::read(path)?;
        let meta = ckpt.metadata();
        let mismatch = |message: String| SessionError::Checkpoint(CheckpointError::Mismatch { path: path.into(), message });
        if !ckpt.is_resumable() {
            return Err(mismatch(
                "it was written by an older pock that did not record the plan's identity; it cannot be resumed from, but --weights still loads its parameters".into(),
            ));
        }
        let stored_id = meta.get("plan_id").and_then(|v| u64::from_str_radix(v, 16).ok());
        if stored_id != Some(self.plan_id) {
            let mut differences: Vec<String> = checkpoint::plan_settings(self.plan())
                .into_iter()
                .filter_map(|(k, here)| {
                    let there = meta.get(&format!("plan.{k}"))?;
                    (*there != here).then(|| format!("{k}: checkpoint {there}, this plan {here}"))
                })
                .collect();
            if differences.is_empty() {
                differences.push(format!(
                    "the same settings but another structure or memory layout: plan identity {} in the checkpoint, {:016x} here",
                    meta.get("plan_id").map(String::as_str).unwrap_or("missing"),
                    self.plan_id
                ));
            }
            return Err(SessionError::Checkpoint(CheckpointError::OtherPlan { path: path.into(), differences: differences.join("; ") }));
        }
        let counter = |key: &str| -> Result<u64, SessionError> {
            meta.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| mismatch(format!("metadata '{key}' is missing or not a number")))
        };
        let optimizer_steps = counter("optimizer_steps")?;
        let micro_steps = counter("micro_steps")?;
        let learning_rate: f32 = meta
            .get("learning_rate")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| mismatch("metadata 'learning_rate' is missing or not a number".into()))?;
        if !learning_rate.is_finite() {
            return Err(mismatch(format!(
                "its learning rate is {learning_rate} (not a finite number), so training cannot continue from it; resume from an earlier checkpoint"
            )));
        }
        ckpt.restore(self.backend.as_mut(), &|_| true)?;
        self.optimizer_steps = optimizer_steps;
        self.micro_steps = micro_steps;
        self.learning_rate = learning_rate;
        log::info!("resumed {} from {}", self.plan().model, path.display());
        Ok(ckpt.metadata().clone())
    }

    /// Loads trained parameters and running statistics only (for evaluation and inference).
    pub fn load_weights(&mut self, path: &Path) -> Result<(), SessionError> {
        checkpoint::load(path, self.backend.as_mut(), &|r| matches!(r, Role::Parameter { .. } | Role::RunningStat))?;
        Ok(())
    }

    /// Reads a tensor by plan name (parameters, statistics, optimizer state) as f32 values.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<f32>, SessionError> {
        let t = self.plan().find(name).ok_or_else(|| SessionError::Input(format!("the plan has no tensor named '{name}'")))?;
        let info = self.plan().tensor(t);
        if info.dtype != DType::F32 {
            return Err(SessionError::Input(format!("tensor '{name}' is not float32")));
        }
        let mut out = vec![0f32; info.numel()];
        self.backend.read(t, as_bytes_mut(&mut out))?;
        Ok(out)
    }
}

/// Bytes of physical memory (`MemTotal` of `/proc/meminfo`), where the system says.
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn interface(plan: &Plan) -> Result<Interface, SessionError> {
    let bad = |what: &str| SessionError::Input(format!("the plan's {what} is missing or malformed"));
    let train = &plan.programs.train;
    let eval = &plan.programs.eval;
    if train.feeds.len() != 2 || train.fetches.len() != 1 {
        return Err(bad("train program interface"));
    }
    if eval.feeds.len() != 2 || eval.fetches.len() != 2 {
        return Err(bad("eval program interface"));
    }
    let io = Interface {
        train_input: train.feeds[0],
        train_target: train.feeds[1],
        train_loss: train.fetches[0],
        eval_input: eval.feeds[0],
        eval_target: eval.feeds[1],
        eval_output: eval.fetches[0],
        eval_loss: eval.fetches[1],
        lr: plan.runtime_scalar(RuntimeScalar::LearningRate),
        step: plan.runtime_scalar(RuntimeScalar::OptimizerStep),
    };
    let t = |id: TensorId| plan.tensor(id);
    // Everything the host does per sample slices off the batch axis, so the data tensors must
    // have one, of the plan's batch size (a rank-0 input would leave nothing to slice).
    let batch = plan.training.batch;
    for (what, id) in
        [("input", io.train_input), ("output", io.eval_output), ("target", io.train_target), ("per-sample loss", io.eval_loss)]
    {
        if t(id).shape.first() != Some(&batch) {
            return Err(SessionError::Input(format!(
                "the plan's {what} has shape {:?}, without a leading batch axis of {batch}; the plan is malformed, compile it again",
                t(id).shape
            )));
        }
    }
    if t(io.train_input).dtype != DType::F32 || t(io.eval_input).shape != t(io.train_input).shape || t(io.train_loss).numel() != 1 {
        return Err(bad("input or loss"));
    }
    let labels = matches!(plan.training.loss, Loss::SoftmaxCrossEntropy { .. });
    if (t(io.train_target).dtype == DType::I64) != labels || t(io.eval_target).dtype != t(io.train_target).dtype {
        return Err(bad("target"));
    }
    Ok(io)
}
