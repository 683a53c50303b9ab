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
use crate::ops::{Op, OptimOp};
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
    #[error(transparent)]
    Inputs(#[from] InputError),
}

/// A batch's named inputs do not match the plan's data inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the plan has no input named '{name}'; its inputs are {expected}")]
    Unknown { name: String, expected: String },
    #[error("input '{name}' is given twice; give each of {expected} once")]
    Duplicate { name: String, expected: String },
    #[error("input '{name}' ({dtype} of shape {shape:?}) is missing; the plan's inputs are {expected}")]
    Missing { name: String, dtype: &'static str, shape: Vec<usize>, expected: String },
    #[error("input '{name}' must be {want} of shape {shape:?}, but {given} values were given")]
    WrongType { name: String, want: &'static str, given: &'static str, shape: Vec<usize> },
    #[error("input '{name}' has shape {shape:?} ({expected} values), but {given} values were given")]
    WrongLength { name: String, shape: Vec<usize>, expected: usize, given: usize },
    #[error("this plan has {count} data inputs ({expected}); give them by name with train_step_inputs, eval_batch_inputs or infer_inputs")]
    SeveralInputs { count: usize, expected: String },
}

/// One data input's values for a batch, in the input's own dtype (the plan records it: see
/// [`Session::inputs`]).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
    Bool(&'a [bool]),
}

impl Input<'_> {
    fn dtype(&self) -> DType {
        match self {
            Input::F32(_) => DType::F32,
            Input::I64(_) => DType::I64,
            Input::Bool(_) => DType::Bool,
        }
    }

    fn len(&self) -> usize {
        match self {
            Input::F32(v) => v.len(),
            Input::I64(v) => v.len(),
            Input::Bool(v) => v.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Input::F32(v) => as_bytes(v),
            Input::I64(v) => as_bytes(v),
            Input::Bool(v) => as_bytes(v),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Threads for the fast CPU kernels: with more than 1 the backend starts a pool of that many
    /// workers at load, and convolutions, gemm, BatchNorm and the activations split their work
    /// over it. Default 1 (BENCHMARKS.md "Threads" says why).
    pub threads: usize,
    /// Run the portable reference kernels instead of the fast ones (for debugging and tests).
    pub reference_kernels: bool,
    /// Where the plan runs (`--backend`).
    pub backend: BackendChoice,
    /// Batched loss reads (`--loss-every N`): [`Session::train_step_queued`] keeps each step's
    /// loss where the backend computed it (device memory on a GPU) and reads the last N back
    /// together on every N-th step, one host-device synchronisation per N steps. 0 or 1: every
    /// step (the default).
    pub loss_every: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { threads: 1, reference_kernels: false, backend: BackendChoice::Cpu, loss_every: 1 }
    }
}

/// Where a session runs its plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// [`CpuBackend`]: the fast or reference CPU kernels.
    #[default]
    Cpu,
    /// The GPU through `wgpu` ([`crate::backend::wgpu::WgpuBackend`]); needs the engine's `wgpu`
    /// feature. Every op of the plan must have a GPU kernel (no per-op placement yet).
    Wgpu,
}

/// Targets for one batch: class labels or regression values.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    Labels(&'a [i64]),
    Values(&'a [f32]),
}

/// Plan file bytes: a read-only memory map, or an 8-byte-aligned owned copy.
///
/// The representation is private: the owned copy's length must never exceed its storage, and
/// only [`PlanBytes::copy_of`] and [`PlanBytes::mapped`] build one.
///
/// ```
/// let b = pock_engine::session::PlanBytes::copy_of(&[1, 2, 3]);
/// assert_eq!(b.as_ref(), &[1, 2, 3]);
/// assert_eq!(b.as_ref().as_ptr() as usize % 8, 0);
/// ```
///
/// A length larger than the storage, from which safe code could read out of bounds, cannot be
/// written; this does not compile:
///
/// ```compile_fail
/// let _ = pock_engine::session::PlanBytes::Owned { words: vec![0u64; 1], len: 1 << 20 };
/// ```
pub struct PlanBytes(Repr);

enum Repr {
    Mapped(memmap2::Mmap),
    /// `len` bytes stored in `words`, which are 8-byte aligned (so an f32 or i64 weight section
    /// can be read in place). Invariant: `len <= words.len() * 8`.
    Owned {
        words: Vec<u64>,
        len: usize,
    },
}

impl AsRef<[u8]> for PlanBytes {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Repr::Mapped(m) => m,
            // SAFETY: `copy_of`, the only constructor of `Repr::Owned`, sets `len` to at most
            // `words.len() * 8` bytes, all initialised; any byte of a u64 is a valid u8.
            Repr::Owned { words, len } => unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, *len) },
        }
    }
}

impl PlanBytes {
    /// An 8-byte-aligned copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` was just allocated with room for `bytes.len()` bytes (rounded up to
        // whole words), u64 has no alignment requirement a u8 write could violate, and the two
        // buffers are distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, bytes.len()) };
        PlanBytes(Repr::Owned { words, len: bytes.len() })
    }

    /// A read-only memory map of a plan file.
    pub fn mapped(map: memmap2::Mmap) -> Self {
        PlanBytes(Repr::Mapped(map))
    }
}

/// Tensor ids the session uses every step, resolved once.
struct Interface {
    /// The data inputs of the train and eval programs, in the same (the model's) order.
    train_inputs: Vec<TensorId>,
    train_target: TensorId,
    train_loss: TensorId,
    eval_inputs: Vec<TensorId>,
    eval_target: TensorId,
    eval_output: TensorId,
    eval_loss: TensorId,
    lr: Option<TensorId>,
    step: Option<TensorId>,
    /// The [`Role::SkippedUpdates`] counter, and how much one wholly skipped optimizer step adds
    /// to it (the number of `CountNonFinite` nodes: 1 with a global gradient scale, one per
    /// parameter without).
    skipped: Option<(TensorId, u64)>,
}

pub struct Session {
    // Send, so an app can open a session on one thread and train on another (pock-ffi).
    backend: Box<dyn Backend + Send>,
    io: Interface,
    learning_rate: f32,
    optimizer_steps: u64,
    micro_steps: u64,
    last_step_skipped: u64,
    /// [`checkpoint::plan_identity`] of the plan, computed once at load.
    plan_id: u64,
    /// Batched loss reads ([`SessionOptions::loss_every`]).
    queue: LossQueue,
}

/// The state of batched loss reads: per queued step, record slots `2j` (the loss) and `2j + 1`
/// (the skipped-update counter after the step), whether the step ran the optimizer, and the
/// host buffers the read fills. Everything is allocated at load.
struct LossQueue {
    every: usize,
    pending: usize,
    stepped: Vec<bool>,
    records: Vec<f32>,
    losses: Vec<f32>,
    /// Per step of the last read: the updates it skipped, and the skipped-update counter after it.
    skips: Vec<(u64, u64)>,
    /// The skipped-update counter as of the last read.
    skipped_seen: u64,
}

/// Element types with no padding bytes: every byte of a slice of them is initialised.
trait NoPadding: Copy {}
impl NoPadding for f32 {}
impl NoPadding for i64 {}
impl NoPadding for bool {}

/// Views f32, i64 or bool values as their bytes (a bool is one byte, 0 or 1, as the plan's
/// [`DType::Bool`]).
fn as_bytes<T: NoPadding>(v: &[T]) -> &[u8] {
    // SAFETY: `T: NoPadding` (f32 or i64) has no padding bytes, so all `size_of_val(v)` bytes
    // are initialised; u8 has no alignment requirement.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: f32 has no padding and every byte pattern is a valid f32, so writes through the
    // byte view cannot make an invalid value; the view borrows `v` mutably for its lifetime.
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
        // SAFETY: memmap2 requires that the file is not modified while mapped. The map is read
        // only and pock never writes plan files in place (it writes and renames), so the mapped
        // bytes do not change under the session. Another process truncating the file is outside
        // what a memory map can guard against (the kernel raises SIGBUS, it does not read stale
        // memory).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| SessionError::Open { path: path.into(), source })?;
        Self::from_plan_bytes_within(PlanBytes::mapped(map), options, budget).map_err(|e| match e {
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
        if let Some(message) = isa_mismatch(&plan.target, std::env::consts::ARCH) {
            log::warn!("plan '{}': {message}", plan.model);
        }
        let plan_id = checkpoint::plan_identity(&plan);
        let backend: Box<dyn Backend + Send> = match options.backend {
            BackendChoice::Cpu => Box::new(CpuBackend::new(plan, bytes, range, kernels)?),
            // A plan the compiler placed partly on the CPU (`pock compile --placement`) runs
            // on both sides; one placed wholly on the GPU (or not placed) on the GPU alone.
            #[cfg(feature = "wgpu")]
            BackendChoice::Wgpu if plan.placement.as_ref().is_some_and(|p| p.any_cpu()) => {
                let hybrid = crate::backend::wgpu::hybrid::HybridBackend::new(plan, bytes, range, kernels)?;
                log::info!("GPU backend on {}, with the nodes placed on the CPU run there", hybrid.gpu().adapter());
                Box::new(hybrid)
            }
            #[cfg(feature = "wgpu")]
            BackendChoice::Wgpu => {
                let gpu = crate::backend::wgpu::WgpuBackend::new(plan, bytes.as_ref(), range)?;
                log::info!("GPU backend on {}", gpu.adapter());
                Box::new(gpu)
            }
            #[cfg(not(feature = "wgpu"))]
            BackendChoice::Wgpu => return Err(SessionError::Input(
                "this build has no GPU backend; rebuild pock with the `wgpu` feature (cargo build --features wgpu) or use --backend cpu"
                    .into(),
            )),
        };
        let every = options.loss_every.max(1);
        let mut backend = backend;
        if every > 1 {
            backend.reserve_records(2 * every)?;
        }
        let queue = LossQueue {
            every,
            pending: 0,
            stepped: vec![false; every],
            records: vec![0.0; 2 * every],
            losses: vec![0.0; every],
            skips: vec![(0, 0); every],
            skipped_seen: 0,
        };
        Ok(Session { backend, io, learning_rate, optimizer_steps: 0, micro_steps: 0, last_step_skipped: 0, plan_id, queue })
    }

    pub fn plan(&self) -> &Plan {
        self.backend.plan()
    }

    /// Starts (`true`, counting from zero) or stops timing every node of the train program, for
    /// `pock bench --profile`. The table is allocated here, so profiled steps allocate nothing;
    /// with profiling off a step pays one branch per node.
    pub fn set_profiling(&mut self, on: bool) {
        self.backend.set_profiling(on);
    }

    /// Nanoseconds spent in each node of the plan's train program (in program order) since
    /// [`Session::set_profiling`] turned profiling on, and how many times the program ran.
    pub fn node_nanos(&self) -> Option<(&[u64], u64)> {
        self.backend.node_nanos()
    }

    /// GFLOP/s of the backend's own gemm on a large square product with the session's threads
    /// (the ceiling `pock bench` compares the matrix kernels with); `None` where the backend has
    /// none (the reference kernels, the GPU). Allocates, so call it between steps.
    pub fn gemm_ceiling(&mut self) -> Option<f64> {
        self.backend.gemm_ceiling()
    }

    /// How [`Session::node_nanos`] measures (the backend's method), for reports.
    pub fn profile_timing(&self) -> &'static str {
        self.backend.profile_timing()
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Samples per step (fixed at compile time).
    pub fn batch(&self) -> usize {
        self.plan().training.batch
    }

    /// The first model input's shape, batch axis included (the only input of a zoo model).
    pub fn input_shape(&self) -> &[usize] {
        &self.plan().tensor(self.io.train_inputs[0]).shape
    }

    /// The model's data inputs in the model's order: name, dtype and shape (batch axis first).
    pub fn inputs(&self) -> impl ExactSizeIterator<Item = &crate::plan::TensorInfo> + '_ {
        self.io.train_inputs.iter().map(|&t| self.plan().tensor(t))
    }

    /// `name (dtype [shape])` for every input, for messages.
    fn describe_inputs(&self) -> String {
        self.inputs().map(|t| format!("'{}' ({} {:?})", t.name, t.dtype.name(), t.shape)).collect::<Vec<_>>().join(", ")
    }

    /// Which data input `name` is: a plan input's name, or `x` for a plan with one input (the
    /// name zoo data files use).
    fn input_index(&self, name: &str) -> Option<usize> {
        let names = &self.io.train_inputs;
        names.iter().position(|&t| self.plan().tensor(t).name == name).or((names.len() == 1 && name == "x").then_some(0))
    }

    /// Writes each named input into the program's input tensors (`program_inputs`, in the
    /// model's order), after checking that every input is given once with its dtype and size.
    /// Allocates only to build an error.
    fn write_inputs(&mut self, eval: bool, given: &[(&str, Input<'_>)]) -> Result<(), SessionError> {
        let count = self.io.train_inputs.len();
        for (k, (name, input)) in given.iter().enumerate() {
            let Some(i) = self.input_index(name) else {
                return Err(InputError::Unknown { name: name.to_string(), expected: self.describe_inputs() }.into());
            };
            if given[..k].iter().any(|(other, _)| self.input_index(other) == Some(i)) {
                return Err(InputError::Duplicate { name: name.to_string(), expected: self.describe_inputs() }.into());
            }
            let info = self.plan().tensor(self.io.train_inputs[i]);
            if input.dtype() != info.dtype {
                let (want, given) = (info.dtype.name(), input.dtype().name());
                return Err(InputError::WrongType { name: name.to_string(), want, given, shape: info.shape.clone() }.into());
            }
            if input.len() != info.numel() {
                let (shape, expected) = (info.shape.clone(), info.numel());
                return Err(InputError::WrongLength { name: name.to_string(), shape, expected, given: input.len() }.into());
            }
        }
        if given.len() != count {
            // No name is unknown or repeated, so fewer were given than the plan has: name one.
            let missing = (0..count).find(|&i| !given.iter().any(|(name, _)| self.input_index(name) == Some(i))).unwrap_or(0);
            let info = self.plan().tensor(self.io.train_inputs[missing]);
            let (name, dtype, shape) = (info.name.clone(), info.dtype.name(), info.shape.clone());
            return Err(InputError::Missing { name, dtype, shape, expected: self.describe_inputs() }.into());
        }
        for (name, input) in given {
            let i = self.input_index(name).unwrap_or(0);
            let t = if eval { self.io.eval_inputs[i] } else { self.io.train_inputs[i] };
            self.backend.write(t, input.bytes())?;
        }
        Ok(())
    }

    /// The one float input of [`Session::train_step`] and friends, named as the plan names it.
    fn single_input<'a>(&self, x: &'a [f32]) -> Result<[(&'a str, Input<'a>); 1], SessionError> {
        if self.io.train_inputs.len() != 1 {
            return Err(InputError::SeveralInputs { count: self.io.train_inputs.len(), expected: self.describe_inputs() }.into());
        }
        Ok([("x", Input::F32(x))])
    }

    /// The target's shape, batch axis included: `[N]` labels for a classifier, the logits'
    /// shape without the class axis for cross-entropy over positions, the output's for MSE.
    pub fn target_shape(&self) -> &[usize] {
        &self.plan().tensor(self.io.train_target).shape
    }

    /// The label that marks a position without one, where the plan's loss has one
    /// ([`crate::ops::CrossEntropy`]).
    pub fn ignore_index(&self) -> Option<i64> {
        self.plan().programs.train.nodes.iter().find_map(|n| match &n.op {
            Op::Loss(crate::ops::LossOp::CrossEntropy(ce)) => Some(ce.ignore_index),
            _ => None,
        })
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
    /// For a plan with one float input; [`Session::train_step_inputs`] takes any inputs.
    pub fn train_step(&mut self, x: &[f32], y: Targets<'_>) -> Result<f32, SessionError> {
        let inputs = self.single_input(x)?;
        self.train_step_inputs(&inputs, y)
    }

    /// [`Session::train_step`] with every data input given by name in its own dtype (see
    /// [`Session::inputs`]), in any order: token ids and an attention mask, say.
    pub fn train_step_inputs(&mut self, inputs: &[(&str, Input<'_>)], y: Targets<'_>) -> Result<f32, SessionError> {
        self.refuse_pending("train_step")?;
        self.write_step(inputs, y)?;
        let skipped_before = self.skipped_updates()?;
        self.backend.run(ProgramKind::Train)?;
        let mut loss = [0f32];
        self.backend.read(self.io.train_loss, as_bytes_mut(&mut loss))?;
        self.micro_steps += 1;
        let k = self.plan().training.accumulate as u64;
        let stepped = if k <= 1 {
            true
        } else if self.micro_steps.is_multiple_of(k) {
            self.backend.run(ProgramKind::Apply)?;
            true
        } else {
            false
        };
        self.last_step_skipped = 0;
        if stepped {
            let skipped = self.skipped_updates()? - skipped_before;
            self.queue.skipped_seen = skipped_before + skipped;
            self.last_step_skipped = skipped;
            // A step whose every update was skipped changed nothing, so it is not counted: the
            // next step's Adam bias correction and SGD's first-step buffer are then those of the
            // step that did not happen, as when PyTorch's GradScaler skips `optimizer.step()`.
            let whole_step = self.io.skipped.is_some_and(|(_, per_step)| skipped >= per_step);
            if !whole_step {
                self.optimizer_steps += 1;
            }
        }
        Ok(loss[0])
    }

    /// Writes what one training step reads: its inputs, its targets, the learning rate and the
    /// number the optimizer step about to run will have.
    fn write_step(&mut self, inputs: &[(&str, Input<'_>)], y: Targets<'_>) -> Result<(), SessionError> {
        self.write_inputs(false, inputs)?;
        self.write_targets(self.io.train_target, y)?;
        if let Some(lr) = self.io.lr {
            self.backend.write(lr, &self.learning_rate.to_le_bytes())?;
        }
        if let Some(step) = self.io.step {
            self.backend.write(step, &((self.optimizer_steps + 1) as f32).to_le_bytes())?;
        }
        Ok(())
    }

    fn refuse_pending(&self, what: &str) -> Result<(), SessionError> {
        if self.queue.pending > 0 {
            return Err(SessionError::Input(format!(
                "{} queued training steps have losses not read yet; call flush_losses before {what}",
                self.queue.pending
            )));
        }
        Ok(())
    }

    /// [`Session::train_step_inputs`] without reading anything back: the loss (and the
    /// skipped-update counter) stay where the backend computed them, and on every
    /// [`SessionOptions::loss_every`]-th call the losses of the queued steps come back together,
    /// one host-device synchronisation (`Ok(Some(losses))`, oldest first); otherwise `Ok(None)`.
    ///
    /// The step counter the optimizer reads is written before the skip counter is read back, so
    /// inside one window a step that follows a wholly skipped step (a non-finite gradient) uses
    /// a step number one higher than [`Session::train_step_inputs`] would; the count of
    /// optimizer steps and [`Session::last_step_skipped`] are exact after each read.
    pub fn train_step_queued(&mut self, inputs: &[(&str, Input<'_>)], y: Targets<'_>) -> Result<Option<&[f32]>, SessionError> {
        if self.queue.every <= 1 {
            let loss = self.train_step_inputs(inputs, y)?;
            self.queue.losses[0] = loss;
            return Ok(Some(&self.queue.losses[..1]));
        }
        self.write_step(inputs, y)?;
        self.backend.run(ProgramKind::Train)?;
        let j = self.queue.pending;
        self.backend.record(self.io.train_loss, 2 * j)?;
        self.micro_steps += 1;
        let k = self.plan().training.accumulate as u64;
        let stepped = k <= 1 || self.micro_steps.is_multiple_of(k);
        if k > 1 && stepped {
            self.backend.run(ProgramKind::Apply)?;
        }
        if let Some((t, _)) = self.io.skipped {
            self.backend.record(t, 2 * j + 1)?;
        }
        if stepped {
            // Counted now; a wholly skipped step is taken back when the counter is read.
            self.optimizer_steps += 1;
        }
        self.queue.stepped[j] = stepped;
        self.queue.pending += 1;
        if self.queue.pending == self.queue.every {
            return self.flush_losses().map(Some);
        }
        Ok(None)
    }

    /// Reads the losses of the steps [`Session::train_step_queued`] has queued since the last
    /// read (oldest first; empty when none), one host-device synchronisation.
    pub fn flush_losses(&mut self) -> Result<&[f32], SessionError> {
        let n = self.queue.pending;
        if n == 0 {
            return Ok(&self.queue.losses[..0]);
        }
        self.backend.read_records(&mut self.queue.records[..2 * n])?;
        self.queue.pending = 0;
        let per_step = self.io.skipped.map(|(_, p)| p);
        for j in 0..n {
            self.queue.losses[j] = self.queue.records[2 * j];
            self.queue.skips[j] = (0, self.queue.skipped_seen);
            if !self.queue.stepped[j] {
                continue;
            }
            self.last_step_skipped = 0;
            if let Some(per_step) = per_step {
                let counter = self.queue.records[2 * j + 1] as u64;
                let skipped = counter.saturating_sub(self.queue.skipped_seen);
                self.queue.skipped_seen = counter;
                self.last_step_skipped = skipped;
                self.queue.skips[j] = (skipped, counter);
                if skipped >= per_step {
                    self.optimizer_steps -= 1;
                }
            }
        }
        Ok(&self.queue.losses[..n])
    }

    /// [`SessionOptions::loss_every`] as the session was opened with (1: every step).
    pub fn loss_every(&self) -> usize {
        self.queue.every
    }

    /// For step `j` of the last [`Session::flush_losses`] (or the read inside
    /// [`Session::train_step_queued`]): the updates it skipped and the skipped-update counter
    /// after it, as [`Session::last_step_skipped`] and [`Session::skipped_updates`] said then.
    pub fn queued_step_skips(&self, j: usize) -> (u64, u64) {
        self.queue.skips.get(j).copied().unwrap_or((0, self.queue.skipped_seen))
    }

    /// How many times the host has waited for the backend's device so far (0 on the CPU): with
    /// [`SessionOptions::loss_every`] N, one per N training steps.
    pub fn syncs(&self) -> u64 {
        self.backend.syncs()
    }

    /// Parameter updates skipped so far (saved in checkpoints) because a gradient was not
    /// finite. With a global gradient scale (`--clip-grad-norm`, `--accumulate`) a skipped step
    /// counts once; without, each update checks its own gradient and counts once per parameter.
    pub fn skipped_updates(&self) -> Result<u64, SessionError> {
        let Some((t, _)) = self.io.skipped else { return Ok(0) };
        let mut count = [0f32];
        self.backend.read(t, as_bytes_mut(&mut count))?;
        Ok(count[0] as u64)
    }

    /// What the last optimizer step added to [`Session::skipped_updates`] (0 when it skipped
    /// nothing, or when the last batch only accumulated).
    pub fn last_step_skipped(&self) -> u64 {
        self.last_step_skipped
    }

    /// Evaluates one batch with frozen statistics: writes the model outputs and the per-sample
    /// losses.
    pub fn eval_batch(&mut self, x: &[f32], y: Targets<'_>, outputs: &mut [f32], losses: &mut [f32]) -> Result<(), SessionError> {
        let inputs = self.single_input(x)?;
        self.eval_batch_inputs(&inputs, y, outputs, losses)
    }

    /// [`Session::eval_batch`] with named inputs, as [`Session::train_step_inputs`].
    pub fn eval_batch_inputs(
        &mut self,
        inputs: &[(&str, Input<'_>)],
        y: Targets<'_>,
        outputs: &mut [f32],
        losses: &mut [f32],
    ) -> Result<(), SessionError> {
        self.write_inputs(true, inputs)?;
        self.write_targets(self.io.eval_target, y)?;
        self.backend.run(ProgramKind::Eval)?;
        self.backend.read(self.io.eval_output, as_bytes_mut(outputs))?;
        self.backend.read(self.io.eval_loss, as_bytes_mut(losses))?;
        Ok(())
    }

    /// Runs the model on one batch and writes its outputs.
    pub fn infer(&mut self, x: &[f32], outputs: &mut [f32]) -> Result<(), SessionError> {
        let inputs = self.single_input(x)?;
        self.infer_inputs(&inputs, outputs)
    }

    /// [`Session::infer`] with named inputs, as [`Session::train_step_inputs`].
    pub fn infer_inputs(&mut self, inputs: &[(&str, Input<'_>)], outputs: &mut [f32]) -> Result<(), SessionError> {
        self.write_inputs(true, inputs)?;
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
        self.refuse_pending("saving")?;
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
        self.refuse_pending("resuming")?;
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
        self.queue.skipped_seen = self.skipped_updates()?;
        self.optimizer_steps = optimizer_steps;
        self.micro_steps = micro_steps;
        self.learning_rate = learning_rate;
        log::info!("resumed {} from {}", self.plan().model, path.display());
        Ok(ckpt.metadata().clone())
    }

    /// Loads trained parameters and running statistics only (for evaluation and inference).
    /// Refuses a checkpoint that holds other values for a parameter this plan freezes (see
    /// [`Checkpoint::check_frozen`]): those cannot be loaded, only compiled in.
    pub fn load_weights(&mut self, path: &Path) -> Result<(), SessionError> {
        let ckpt = Checkpoint::read(path)?;
        ckpt.check_frozen(self.backend.as_ref())?;
        ckpt.restore(self.backend.as_mut(), &|r| matches!(r, Role::Parameter { .. } | Role::RunningStat))?;
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

/// The skipped-updates counter and the number of nodes that count into it per optimizer step.
fn skipped_counter(plan: &Plan) -> Result<Option<(TensorId, u64)>, SessionError> {
    let Some(i) = plan.tensors.iter().position(|t| t.role == Role::SkippedUpdates) else { return Ok(None) };
    let t = TensorId(i as u32);
    if plan.tensor(t).dtype != DType::F32 || !plan.tensor(t).shape.is_empty() {
        return Err(SessionError::Input(
            "the plan's skipped-updates counter is not an f32 scalar; the plan is malformed, compile it again".into(),
        ));
    }
    let programs = [ProgramKind::Train, ProgramKind::Apply];
    let counts = programs
        .iter()
        .filter_map(|p| p.of(plan))
        .flat_map(|p| &p.nodes)
        .filter(|n| matches!(n.op, Op::Optim(OptimOp::CountNonFinite)) && n.outputs.first() == Some(&t))
        .count() as u64;
    Ok(Some((t, counts.max(1))))
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
    // Feeds are the data inputs in the model's order, then the target.
    let Some((&train_target, train_inputs)) = train.feeds.split_last() else { return Err(bad("train program interface")) };
    let Some((&eval_target, eval_inputs)) = eval.feeds.split_last() else { return Err(bad("eval program interface")) };
    if train_inputs.is_empty() || train.fetches.len() != 1 {
        return Err(bad("train program interface"));
    }
    if eval_inputs.len() != train_inputs.len() || eval.fetches.len() != 2 {
        return Err(bad("eval program interface"));
    }
    if plan.programs.infer.feeds[..] != eval_inputs[..] {
        return Err(bad("infer program interface"));
    }
    let io = Interface {
        train_inputs: train_inputs.to_vec(),
        train_target,
        train_loss: train.fetches[0],
        eval_inputs: eval_inputs.to_vec(),
        eval_target,
        eval_output: eval.fetches[0],
        eval_loss: eval.fetches[1],
        lr: plan.runtime_scalar(RuntimeScalar::LearningRate),
        step: plan.runtime_scalar(RuntimeScalar::OptimizerStep),
        skipped: skipped_counter(plan)?,
    };
    let t = |id: TensorId| plan.tensor(id);
    // Everything the host does per sample slices off the batch axis, so the data tensors must
    // have one, of the plan's batch size (a rank-0 input would leave nothing to slice).
    let batch = plan.training.batch;
    let data = io.train_inputs.iter().map(|&id| ("input", id));
    for (what, id) in data.chain([("output", io.eval_output), ("target", io.train_target), ("per-sample loss", io.eval_loss)]) {
        if t(id).shape.first() != Some(&batch) {
            return Err(SessionError::Input(format!(
                "the plan's {what} '{}' has shape {:?}, without a leading batch axis of {batch}; the plan is malformed (this pock's compiler refuses such models), compile it again",
                t(id).name,
                t(id).shape
            )));
        }
    }
    for (&a, &b) in io.train_inputs.iter().zip(&io.eval_inputs) {
        let supported = matches!(t(a).dtype, DType::F32 | DType::I64 | DType::Bool);
        if !supported || t(a).dtype != t(b).dtype || t(a).shape != t(b).shape || t(a).role != Role::Input {
            return Err(bad("input"));
        }
    }
    if t(io.train_loss).numel() != 1 {
        return Err(bad("loss"));
    }
    let labels = matches!(plan.training.loss, Loss::SoftmaxCrossEntropy { .. });
    if (t(io.train_target).dtype == DType::I64) != labels || t(io.eval_target).dtype != t(io.train_target).dtype {
        return Err(bad("target"));
    }
    Ok(io)
}

/// What to tell the user when a plan compiled for `target` runs on a machine whose `target_arch`
/// is `arch` and the target's ISA is another: the plan trains the same (plans are portable), but
/// the memory budget and the cost estimates it was compiled against describe another machine.
/// `None` when the ISA matches, the target is `host`, or the name is not one this engine knows.
pub fn isa_mismatch(target: &str, arch: &str) -> Option<String> {
    let t = pock_targets::find(target)?;
    if t.runs_on(arch) {
        return None;
    }
    Some(format!(
        "built for {} ({}), running on {arch}: it trains the same, but its memory and speed were sized for {}; recompile with --target host (or this board's target) to size it for this machine",
        t.name,
        t.isa.name(),
        t.description
    ))
}

#[cfg(test)]
mod isa_tests {
    use super::isa_mismatch;

    #[test]
    fn a_plan_for_another_isa_is_named() {
        let m = isa_mismatch("rpi4", "x86_64").expect("rpi4 is aarch64");
        assert!(m.contains("built for rpi4 (aarch64), running on x86_64"), "{m}");
        assert!(isa_mismatch("cortex-m7", "aarch64").unwrap().contains("thumbv7em"));
    }

    #[test]
    fn matching_isas_host_plans_and_unknown_targets_are_quiet() {
        assert_eq!(isa_mismatch("rpi4", "aarch64"), None);
        assert_eq!(isa_mismatch("host", "x86_64"), None);
        assert_eq!(isa_mismatch("host", "arm"), None);
        // A name from a newer compiler: nothing is known about it, so nothing is claimed.
        assert_eq!(isa_mismatch("some-future-board", "x86_64"), None);
    }
}
