//! Plan validation, the backend interface and the CPU backend.
//!
//! [`validate`] runs once when a plan is loaded and establishes what the executor relies on:
//! every tensor lies inside the arena or the weight section, every node's shapes satisfy its
//! op's shape rule, nothing writes into the weight section, and no output overlaps another
//! argument of its node. After that, running a program only resolves offsets to slices and calls
//! kernels; it allocates nothing.
//!
//! The executor's pointer arithmetic is sound only for a validated plan, so the type system
//! carries that fact: only [`ValidatedPlan::new`], which runs [`validate`], makes a [`ValidatedPlan`], and
//! [`CpuBackend::new`] accepts nothing else. It then checks what `validate` cannot see (the
//! weight section's place, length and alignment in the caller's buffer).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::format::WeightRange;
use crate::kernels::{reference, KernelError, NodeArgs, View, ViewMut};
use crate::ops::{DenseOp, Op};
use crate::plan::{DType, Init, Location, Plan, Program, Role, TensorId};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("node '{node}': {source}")]
    Kernel { node: String, source: KernelError },
    #[error("tensor '{name}' takes {expected} bytes, {given} were given")]
    Size { name: String, expected: usize, given: usize },
    #[error("the plan has no {0} program")]
    NoProgram(&'static str),
    #[error("cannot allocate the {bytes}-byte arena")]
    OutOfMemory { bytes: u64 },
    #[error("the plan needs a {needed}-byte arena, the caller's buffer holds {given} bytes; give a buffer of at least {needed} bytes or compile a smaller plan (smaller --batch, fewer trained layers)")]
    ArenaTooSmall { needed: u64, given: u64 },
    #[error("the weight section is not 8-byte aligned in memory; load the plan from a file or an 8-byte aligned buffer")]
    MisalignedWeights,
    #[error("the weight range ({len} bytes at {offset}) does not hold the plan's {expected}-byte weight section in a {available}-byte buffer; pass the bytes and the range that decode_plan returned for them")]
    WeightRange { offset: usize, len: usize, expected: u64, available: usize },
    #[error("{0}")]
    Unsupported(String),
}

/// Why a decoded plan cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

macro_rules! bail {
    ($($t:tt)*) => { return Err(ValidationError(alloc::format!($($t)*))) };
}

/// A plan that has passed [`validate`].
///
/// The executor's unsafe code relies on what `validate` checks, so only [`ValidatedPlan::new`]
/// (which runs it) makes one, and it hands out the plan only by shared reference: nothing can
/// change a validated plan. [`crate::format::decode_plan`] returns one.
///
/// A plan that has not been validated cannot start a backend; this does not compile:
///
/// ```compile_fail
/// use pock_engine::exec::{CpuBackend, CpuKernels};
/// fn start(plan: pock_engine::Plan, bytes: Vec<u8>, range: pock_engine::format::WeightRange) {
///     let _ = CpuBackend::new(plan, bytes, range, CpuKernels::Reference);
/// }
/// ```
///
/// while the same code with a validated plan does:
///
/// ```
/// use pock_engine::exec::{CpuBackend, CpuKernels, ValidatedPlan};
/// fn start(plan: ValidatedPlan, bytes: Vec<u8>, range: pock_engine::format::WeightRange) {
///     let _ = CpuBackend::new(plan, bytes, range, CpuKernels::Reference);
/// }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedPlan(Plan);

impl ValidatedPlan {
    /// Validates `plan` (see [`validate`]).
    pub fn new(plan: Plan) -> Result<Self, ValidationError> {
        validate(&plan)?;
        Ok(ValidatedPlan(plan))
    }

    pub fn plan(&self) -> &Plan {
        &self.0
    }

    /// Gives the plan back, for example to change it and validate it again.
    pub fn into_plan(self) -> Plan {
        self.0
    }
}

impl core::ops::Deref for ValidatedPlan {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.0
    }
}

impl PartialEq<Plan> for ValidatedPlan {
    fn eq(&self, other: &Plan) -> bool {
        self.0 == *other
    }
}

/// Byte range of a tensor in its region. Only called on tensors whose sizes `validate` has
/// already checked, so the sum cannot overflow.
fn range(plan: &Plan, t: TensorId) -> (bool, u64, u64) {
    let info = plan.tensor(t);
    match info.location {
        Location::Arena { offset } => (true, offset, offset + info.bytes()),
        Location::Weights { offset } => (false, offset, offset + info.bytes()),
    }
}

/// Whether a region size read from a file can be addressed on this machine: every offset below it
/// must convert to `usize` and stay within `isize::MAX`, which pointer offsets and slices require
/// (on a 32-bit target a `u64` size could otherwise be truncated).
fn addressable(bytes: u64) -> bool {
    usize::try_from(bytes).is_ok_and(|b| b <= isize::MAX as usize)
}

fn overlaps(a: (bool, u64, u64), b: (bool, u64, u64)) -> bool {
    a.0 == b.0 && a.1 < b.2 && b.1 < a.2
}

/// Checks everything the executor relies on (see the module documentation).
pub fn validate(plan: &Plan) -> Result<(), ValidationError> {
    let n = plan.tensors.len();
    if !addressable(plan.arena_bytes) || !addressable(plan.weight_bytes) {
        bail!(
            "the arena ({} bytes) or weight section ({} bytes) is larger than this machine can address",
            plan.arena_bytes,
            plan.weight_bytes
        );
    }
    if let Some(placement) = &plan.placement {
        if let Err(e) = placement.check(plan) {
            bail!("{e}");
        }
    }
    if plan.persistent_bytes > plan.arena_bytes {
        bail!("persistent region ({} bytes) is larger than the arena ({} bytes)", plan.persistent_bytes, plan.arena_bytes);
    }
    for t in &plan.tensors {
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = numel.and_then(|e| e.checked_mul(t.dtype.size())).map(|b| b as u64);
        let Some(bytes) = bytes else { bail!("tensor '{}' has an impossible shape {:?}", t.name, t.shape) };
        if !matches!(t.dtype, DType::F32 | DType::I64 | DType::Bool | DType::U8 | DType::I8) {
            bail!("tensor '{}' has dtype {}, which this engine does not run yet", t.name, t.dtype.name());
        }
        let persistent = !matches!(t.role, Role::Transient | Role::Input | Role::Target);
        match t.location {
            Location::Arena { offset } => {
                let end = offset.checked_add(bytes);
                if end.is_none_or(|e| e > plan.arena_bytes) || !offset.is_multiple_of(8) {
                    bail!("tensor '{}' ({} bytes at {offset}) does not fit the {}-byte arena", t.name, bytes, plan.arena_bytes);
                }
                if persistent && end.is_some_and(|e| e > plan.persistent_bytes) {
                    bail!("persistent tensor '{}' lies outside the persistent region", t.name);
                }
                // Values computed or fed during a step must not overwrite what survives between
                // steps (parameters, optimizer state, statistics).
                if !persistent && bytes > 0 && offset < plan.persistent_bytes {
                    bail!(
                        "{} tensor '{}' ({} bytes at {offset}) overlaps the persistent region (the first {} bytes of the arena)",
                        role_name(&t.role),
                        t.name,
                        bytes,
                        plan.persistent_bytes
                    );
                }
            }
            Location::Weights { offset } => {
                if offset.checked_add(bytes).is_none_or(|e| e > plan.weight_bytes) || !offset.is_multiple_of(t.dtype.size() as u64) {
                    bail!("tensor '{}' ({} bytes at {offset}) does not fit the {}-byte weight section", t.name, bytes, plan.weight_bytes);
                }
            }
        }
        if let Init::FromWeights { offset } = t.init {
            if offset.checked_add(bytes).is_none_or(|e| e > plan.weight_bytes) || !offset.is_multiple_of(4) {
                bail!("initial value of '{}' does not fit the weight section", t.name);
            }
        }
        match &t.role {
            Role::OptimizerState { param, .. } | Role::GradAccumulator { param } if param.index() >= n => {
                bail!("tensor '{}' refers to a missing parameter", t.name)
            }
            _ => {}
        }
    }
    for (pname, program) in plan.all_programs() {
        for &t in program.feeds.iter().chain(&program.fetches) {
            if t.index() >= n {
                bail!("{pname} program refers to missing tensor {}", t.0);
            }
        }
        for node in &program.nodes {
            validate_node(plan, node).map_err(|ValidationError(m)| {
                ValidationError(alloc::format!("{pname} program, node '{}' ({}): {m}", node.name, node.op.name()))
            })?;
        }
    }
    Ok(())
}

fn validate_node(plan: &Plan, node: &crate::plan::Node) -> Result<(), ValidationError> {
    let n = plan.tensors.len();
    if let Some(arity) = node.op.input_arity() {
        if node.inputs.len() != arity {
            bail!("expects {arity} inputs, has {}", node.inputs.len());
        }
    } else if node.inputs.is_empty() {
        bail!("expects at least one input");
    }
    if node.inputs.iter().chain(&node.outputs).any(|t| t.index() >= n) {
        bail!("refers to a missing tensor");
    }
    let dtypes: Vec<DType> = node.inputs.iter().map(|&t| plan.tensor(t).dtype).collect();
    let out_dtypes = node.op.output_dtypes(&dtypes).map_err(|e| ValidationError(e.to_string()))?;
    let shapes: Vec<&[usize]> = node.inputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
    let expected = node.op.output_shapes(&shapes).map_err(|e| ValidationError(e.to_string()))?;
    let inplace = node.op.inplace_outputs();
    let count = if expected.is_empty() { inplace.end } else { expected.len() };
    if node.outputs.len() != count || out_dtypes.len() != count {
        bail!("expects {count} outputs, has {}", node.outputs.len());
    }
    for (i, (&t, &want)) in node.outputs.iter().zip(&out_dtypes).enumerate() {
        let info = plan.tensor(t);
        if info.dtype != want {
            bail!("output {i} is {}, expected {}", info.dtype.name(), want.name());
        }
        if let Some(s) = expected.get(i) {
            if info.shape != *s {
                bail!("output {i} '{}' has shape {:?}, the op produces {s:?}", info.name, info.shape);
            }
        }
        match info.location {
            Location::Weights { .. } => bail!("writes into the read-only weight section ('{}')", info.name),
            Location::Arena { offset } if inplace.contains(&i) && offset.saturating_add(info.bytes()) > plan.persistent_bytes => {
                bail!("in-place output '{}' is not persistent", info.name)
            }
            _ => {}
        }
    }
    let aliasing_reshape = matches!(node.op, Op::Dense(DenseOp::Reshape { .. }))
        && plan.tensor(node.inputs[0]).location == plan.tensor(node.outputs[0]).location;
    let workspace = node.workspace.map(|w| (true, w.offset, w.offset.saturating_add(w.elems.saturating_mul(4))));
    if let Some(w) = workspace {
        if w.2 > plan.arena_bytes || !w.1.is_multiple_of(4) {
            bail!("workspace does not fit the arena");
        }
        // Scratch memory is overwritten by the kernel, so it must stay out of the persistent
        // region like every other value computed during a step.
        if w.2 > w.1 && w.1 < plan.persistent_bytes {
            bail!(
                "workspace ({} bytes at {}) overlaps the persistent region (the first {} bytes of the arena)",
                w.2 - w.1,
                w.1,
                plan.persistent_bytes
            );
        }
    }
    for (i, &o) in node.outputs.iter().enumerate() {
        let ro = range(plan, o);
        let clash_out = node.outputs.iter().enumerate().any(|(j, &p)| j != i && overlaps(ro, range(plan, p)));
        let clash_in = !aliasing_reshape && node.inputs.iter().any(|&p| overlaps(ro, range(plan, p)));
        let clash_ws = workspace.is_some_and(|w| overlaps(ro, w));
        if clash_out || clash_in || clash_ws {
            bail!("output '{}' overlaps another argument of the node", plan.tensor(o).name);
        }
    }
    if let Some(w) = workspace {
        if node.inputs.iter().any(|&p| overlaps(w, range(plan, p))) {
            bail!("workspace overlaps an input");
        }
    }
    Ok(())
}

fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Input => "input",
        Role::Target => "target",
        _ => "transient",
    }
}

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    Train,
    Apply,
    Eval,
    Infer,
}

impl ProgramKind {
    pub const ALL: [ProgramKind; 4] = [ProgramKind::Train, ProgramKind::Apply, ProgramKind::Eval, ProgramKind::Infer];

    pub fn of(self, plan: &Plan) -> Option<&Program> {
        match self {
            ProgramKind::Train => Some(&plan.programs.train),
            ProgramKind::Apply => plan.programs.apply.as_ref(),
            ProgramKind::Eval => Some(&plan.programs.eval),
            ProgramKind::Infer => Some(&plan.programs.infer),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ProgramKind::Train => "train",
            ProgramKind::Apply => "apply",
            ProgramKind::Eval => "eval",
            ProgramKind::Infer => "infer",
        }
    }
}

/// What a backend offers the session: tensors in, programs run, tensors out. A backend owns its
/// arena (host memory for the CPU, one device buffer for a GPU).
pub trait Backend {
    fn name(&self) -> &'static str;
    fn plan(&self) -> &Plan;
    /// Copies `bytes` into an arena tensor (feeds, runtime scalars, restored state).
    fn write(&mut self, t: TensorId, bytes: &[u8]) -> Result<(), ExecError>;
    /// Copies a tensor's bytes out (arena or weight section).
    fn read(&self, t: TensorId, out: &mut [u8]) -> Result<(), ExecError>;
    fn run(&mut self, program: ProgramKind) -> Result<(), ExecError>;
    /// Sets every persistent tensor to its initial value (parameters from the weight section,
    /// optimizer state and counters to their fills).
    fn reset_state(&mut self) -> Result<(), ExecError>;
    /// Makes room for `slots` recorded `f32` values ([`Backend::record`]); called once, at load,
    /// so that recording allocates nothing during a step. A device backend keeps them in device
    /// memory.
    fn reserve_records(&mut self, slots: usize) -> Result<(), ExecError>;
    /// Copies the one-element `f32` tensor `t` (a loss, a counter) into record slot `slot`,
    /// without waiting for a device: batched loss reads record each step's loss and read them all
    /// back with one [`Backend::read_records`].
    fn record(&mut self, t: TensorId, slot: usize) -> Result<(), ExecError>;
    /// Reads record slots `0..out.len()` back: one host-device synchronisation on a device.
    fn read_records(&mut self, out: &mut [f32]) -> Result<(), ExecError>;
    /// How many times the host has waited for a device so far (each read is one wait); 0 for a
    /// backend that runs on the host.
    fn syncs(&self) -> u64 {
        0
    }
    /// Starts (`true`, from zero) or stops timing each node of the train program. Backends that
    /// cannot time nodes ignore it and [`Backend::node_nanos`] stays `None`.
    fn set_profiling(&mut self, _on: bool) {}
    /// Nanoseconds spent in each node of the train program (in program order) since profiling
    /// started, and how many times the program ran; `None` when profiling is off.
    fn node_nanos(&self) -> Option<(&[u64], u64)> {
        None
    }
    /// How [`Backend::node_nanos`] is measured, for reports.
    fn profile_timing(&self) -> &'static str {
        "the host clock around each kernel call"
    }
    /// GFLOP/s of this backend's own gemm on a large square product, on the threads its kernels
    /// use (`pock bench`'s ceiling); `None` for a backend that has no such measurement.
    fn gemm_ceiling(&mut self) -> Option<f64> {
        None
    }
}

/// Tensor `t`'s description, after checking that a buffer of `len` bytes is its size: the check
/// every backend's [`Backend::read`] and [`Backend::write`] make first.
pub fn sized_tensor(plan: &Plan, t: TensorId, len: usize) -> Result<&crate::plan::TensorInfo, ExecError> {
    let info = plan.tensor(t);
    let expected = info.bytes() as usize;
    if len != expected {
        return Err(ExecError::Size { name: info.name.clone(), expected, given: len });
    }
    Ok(info)
}

/// Where [`Backend::write`] puts `len` bytes for tensor `t`: its arena offset, after checking that
/// `len` is the tensor's size and that the tensor is in the arena (the weight section is
/// read-only). Shared by every backend.
pub fn arena_destination(plan: &Plan, t: TensorId, len: usize) -> Result<u64, ExecError> {
    let info = sized_tensor(plan, t, len)?;
    let Location::Arena { offset } = info.location else {
        return Err(ExecError::Unsupported(alloc::format!("tensor '{}' is in the read-only weight section", info.name)));
    };
    Ok(offset)
}

/// Which CPU kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuKernels {
    /// The portable reference kernels (no_std, slow, allocation-free).
    Reference,
    /// gemm-based matmul and convolution, reference kernels elsewhere.
    #[cfg(feature = "std")]
    Fast(crate::kernels::cpu::CpuConfig),
}

/// Executes plans on the CPU in one arena: a `Vec` allocated at construction ([`CpuBackend::new`])
/// or a buffer the caller provides ([`CpuBackend::with_arena`], a `static` on a microcontroller).
pub struct CpuBackend<W: AsRef<[u8]>, A: AsRef<[u64]> + AsMut<[u64]> = Vec<u64>> {
    plan: Plan,
    bytes: W,
    weights: WeightRange,
    arena: A,
    kernels: CpuKernels,
    args: ArgViews<'static>,
    /// The persistent worker threads of the fast kernels (`threads > 1`), started once here;
    /// every program runs inside it, so kernels and gemm split work over these threads.
    #[cfg(feature = "std")]
    pool: Option<crate::kernels::cpu::pool::Pool>,
    /// Per-node time of the train program while profiling (allocated when profiling starts, so
    /// a profiled step allocates nothing), and the number of profiled runs.
    #[cfg(feature = "std")]
    profile: Option<(Vec<u64>, u64)>,
    /// The fast kernels' scratch outside the plan (gemm's packing buffers): the largest any node
    /// needs, allocated once here at load and shared by the nodes one after another.
    #[cfg(feature = "std")]
    scratch: Vec<f32>,
    /// [`Backend::record`]'s slots.
    records: Vec<f32>,
}

/// One node's argument views, split by dtype as kernels take them ([`NodeArgs`]). The vectors
/// keep their capacity between nodes and calls, so running a program allocates nothing.
struct ArgViews<'a> {
    floats: Vec<View<'a, f32>>,
    ints: Vec<View<'a, i64>>,
    bools: Vec<View<'a, u8>>,
    float_outs: Vec<ViewMut<'a, f32>>,
    int_outs: Vec<ViewMut<'a, i64>>,
    bool_outs: Vec<ViewMut<'a, u8>>,
}

impl ArgViews<'_> {
    fn with_capacity(inputs: usize, outputs: usize) -> Self {
        ArgViews {
            floats: Vec::with_capacity(inputs),
            ints: Vec::with_capacity(inputs),
            bools: Vec::with_capacity(inputs),
            float_outs: Vec::with_capacity(outputs),
            int_outs: Vec::with_capacity(outputs),
            bool_outs: Vec::with_capacity(outputs),
        }
    }

    /// Empties the views (none may outlive the node) and reports a dtype `validate` refuses.
    fn unrunnable(&mut self, info: &crate::plan::TensorInfo) -> ExecError {
        self.clear();
        ExecError::Unsupported(alloc::format!("tensor '{}' has dtype {}, which this engine does not run", info.name, info.dtype.name()))
    }

    fn clear(&mut self) {
        self.floats.clear();
        self.ints.clear();
        self.bools.clear();
        self.float_outs.clear();
        self.int_outs.clear();
        self.bool_outs.clear();
    }
}

impl<W: AsRef<[u8]>> CpuBackend<W> {
    /// `bytes` holds the plan file (or at least its weight section at `weights`), as
    /// [`crate::format::decode_plan`] returns them. The range is checked against `bytes` and the
    /// plan, so a mismatched pair is an error rather than an out-of-bounds read.
    pub fn new(plan: ValidatedPlan, bytes: W, weights: WeightRange, kernels: CpuKernels) -> Result<Self, ExecError> {
        let words = plan.arena_bytes.div_ceil(8) as usize;
        let mut arena = Vec::new();
        arena.try_reserve_exact(words).map_err(|_| ExecError::OutOfMemory { bytes: plan.arena_bytes })?;
        arena.resize(words, 0u64);
        CpuBackend::with_arena(plan, bytes, weights, kernels, arena)
    }
}

impl<W: AsRef<[u8]>, A: AsRef<[u64]> + AsMut<[u64]>> CpuBackend<W, A> {
    /// [`CpuBackend::new`] in an arena the caller provides (at least `arena_bytes` of the plan,
    /// in 8-byte words; it is zeroed here), so that nothing is allocated for it: a `static` buffer
    /// on a microcontroller without a heap large enough for the arena.
    pub fn with_arena(plan: ValidatedPlan, bytes: W, weights: WeightRange, kernels: CpuKernels, mut arena: A) -> Result<Self, ExecError> {
        let plan = plan.into_plan();
        let available = bytes.as_ref().len();
        let section = weights.offset.checked_add(weights.len).and_then(|end| bytes.as_ref().get(weights.offset..end));
        let Some(section) = section.filter(|s| s.len() as u64 == plan.weight_bytes) else {
            return Err(ExecError::WeightRange { offset: weights.offset, len: weights.len, expected: plan.weight_bytes, available });
        };
        if !(section.as_ptr() as usize).is_multiple_of(8) {
            return Err(ExecError::MisalignedWeights);
        }
        #[cfg(feature = "std")]
        let mut scratch_elems = 0usize;
        #[cfg(feature = "std")]
        if let CpuKernels::Fast(cfg) = kernels {
            for (pname, program) in plan.all_programs() {
                for node in &program.nodes {
                    let ins: Vec<&[usize]> = node.inputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
                    let outs: Vec<&[usize]> = node.outputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
                    scratch_elems = scratch_elems.max(crate::kernels::cpu::scratch_elems(&node.op, &ins, &outs, cfg));
                    let need = crate::kernels::cpu::workspace_elems(&node.op, &ins, &outs) as u64;
                    if need > node.workspace.map_or(0, |w| w.elems) {
                        return Err(ExecError::Unsupported(alloc::format!(
                            "{pname} program, node '{}': the fast kernel needs {need} workspace elements the plan does not provide; recompile the plan with this pock",
                            node.name
                        )));
                    }
                }
            }
        }
        #[cfg(feature = "std")]
        let scratch = {
            let mut scratch = Vec::new();
            scratch
                .try_reserve_exact(scratch_elems)
                .map_err(|_| ExecError::OutOfMemory { bytes: (scratch_elems as u64).saturating_mul(4) })?;
            scratch.resize(scratch_elems, 0.0f32);
            scratch
        };
        let given = arena.as_ref().len() as u64 * 8;
        if given < plan.arena_bytes {
            return Err(ExecError::ArenaTooSmall { needed: plan.arena_bytes, given });
        }
        arena.as_mut().fill(0);
        crate::logging::diag!(debug, "arena: the plan takes {} bytes of a {}-byte buffer", plan.arena_bytes, given);
        let max_in = plan.all_programs().flat_map(|(_, p)| p.nodes.iter().map(|n| n.inputs.len())).max().unwrap_or(0);
        let max_out = plan.all_programs().flat_map(|(_, p)| p.nodes.iter().map(|n| n.outputs.len())).max().unwrap_or(0);
        #[cfg(feature = "std")]
        let pool = match kernels {
            CpuKernels::Fast(cfg) if cfg.threads > 1 => Some(crate::kernels::cpu::pool::Pool::new(cfg.threads).map_err(|e| {
                ExecError::Unsupported(alloc::format!("cannot start {} worker threads ({e}); use fewer threads", cfg.threads - 1))
            })?),
            _ => None,
        };
        let mut backend = CpuBackend {
            plan,
            bytes,
            weights,
            arena,
            kernels,
            args: ArgViews::with_capacity(max_in, max_out),
            #[cfg(feature = "std")]
            pool,
            #[cfg(feature = "std")]
            profile: None,
            #[cfg(feature = "std")]
            scratch,
            records: Vec::new(),
        };
        backend.reset_state_in_place();
        Ok(backend)
    }

    fn weight_section(&self) -> &[u8] {
        &self.bytes.as_ref()[self.weights.offset..self.weights.offset + self.weights.len]
    }

    fn arena_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.plan.arena_bytes as usize;
        // `A::as_mut` is caller code and need not return the same slice every time: check its
        // length on every use (`with_arena` checked it once, so this fails only for such a type).
        let words = self.arena.as_mut();
        assert!(words.len() * 8 >= len, "the arena buffer shrank below the plan's {len} bytes after the backend was made");
        // SAFETY: the slice holds at least `len` initialised bytes (checked above); any byte of a
        // u64 is a valid u8, and the slice borrows `self` mutably.
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, len) }
    }

    fn arena_bytes(&self) -> &[u8] {
        let len = self.plan.arena_bytes as usize;
        let words = self.arena.as_ref();
        assert!(words.len() * 8 >= len, "the arena buffer shrank below the plan's {len} bytes after the backend was made");
        // SAFETY: as in `arena_bytes_mut`, with a shared borrow of `self`.
        unsafe { core::slice::from_raw_parts(words.as_ptr() as *const u8, len) }
    }

    /// Sets every persistent tensor to its initial value (parameters from the weight section,
    /// optimizer state to zero): [`Backend::reset_state`], which cannot fail on the CPU.
    pub fn reset_state_in_place(&mut self) {
        let inits: Vec<(u64, u64, Init)> = self
            .plan
            .tensors
            .iter()
            .filter_map(|t| match t.location {
                Location::Arena { offset } if t.init != Init::None => Some((offset, t.bytes(), t.init)),
                _ => None,
            })
            .collect();
        for (offset, bytes, init) in inits {
            let (o, b) = (offset as usize, bytes as usize);
            match init {
                Init::FromWeights { offset: w } => {
                    let src = self.weight_section()[w as usize..w as usize + b].to_vec();
                    self.arena_bytes_mut()[o..o + b].copy_from_slice(&src);
                }
                Init::Fill(v) => {
                    for chunk in self.arena_bytes_mut()[o..o + b].chunks_exact_mut(4) {
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                }
                Init::None => {}
            }
        }
    }

    fn run_program(&mut self, which: ProgramKind) -> Result<(), ExecError> {
        let all = which.of(&self.plan).map_or(0, |p| p.nodes.len());
        self.run_range(which, 0..all)
    }

    /// The arena's bytes (the hybrid backend copies tensors between it and the device).
    pub fn arena(&self) -> &[u8] {
        self.arena_bytes()
    }

    /// The arena's bytes, writable.
    pub fn arena_mut(&mut self) -> &mut [u8] {
        self.arena_bytes_mut()
    }

    fn run_range(&mut self, which: ProgramKind, nodes: core::ops::Range<usize>) -> Result<(), ExecError> {
        let plan = &self.plan;
        let program = which.of(plan).ok_or(ExecError::NoProgram(which.name()))?;
        let Some(selected) = program.nodes.get(nodes.clone()) else {
            return Err(ExecError::Unsupported(alloc::format!(
                "nodes {}..{} of the {} program asked for; it has {}",
                nodes.start,
                nodes.end,
                which.name(),
                program.nodes.len()
            )));
        };
        // As in `arena_bytes_mut`: the caller's buffer is checked on every run.
        let words = self.arena.as_mut();
        if (words.len() as u64) * 8 < plan.arena_bytes {
            return Err(ExecError::ArenaTooSmall { needed: plan.arena_bytes, given: words.len() as u64 * 8 });
        }
        let arena = words.as_mut_ptr() as *mut u8;
        // `W::as_ref` is caller code and need not return the same slice every time, so the range
        // and alignment that `new` checked are checked again (slicing panics rather than reading
        // out of bounds) on the slice whose borrow covers this whole run.
        let section = &self.bytes.as_ref()[self.weights.offset..self.weights.offset + self.weights.len];
        if !(section.as_ptr() as usize).is_multiple_of(8) {
            return Err(ExecError::MisalignedWeights);
        }
        let weights = section.as_ptr();
        // The scratch vectors keep their capacity between nodes and calls; the views they hold
        // only live while one node runs (they are cleared before the next node).
        // SAFETY: only the lifetime parameter changes, and every vector is empty on return
        // (`new` creates them empty and every node clears them after it ran), so no view outlives
        // the borrows it was made from.
        let args: &mut ArgViews<'_> = unsafe { &mut *(&mut self.args as *mut ArgViews<'static>).cast::<ArgViews<'_>>() };
        #[cfg(feature = "std")]
        let mut profile = match (which, self.profile.as_mut()) {
            (ProgramKind::Train, Some((nanos, runs))) => {
                *runs += 1;
                Some(nanos.as_mut_slice())
            }
            _ => None,
        };
        for (index, node) in selected.iter().enumerate().map(|(i, n)| (i + nodes.start, n)) {
            #[cfg(feature = "std")]
            let started = profile.is_some().then(std::time::Instant::now);
            #[cfg(not(feature = "std"))]
            let _ = index;
            if matches!(node.op, Op::Dense(DenseOp::Reshape { .. }))
                && plan.tensor(node.inputs[0]).location == plan.tensor(node.outputs[0]).location
            {
                continue;
            }
            args.clear();
            // SAFETY (every unsafe block below): `self.plan` came from a `ValidatedPlan`, so
            // `validate` checked that every tensor and workspace lies inside its region with the
            // alignment of its dtype and a size that fits `usize`, that outputs overlap neither
            // each other, nor inputs, nor the workspace, and that nothing writes into the weight
            // section. The arena holds `arena_bytes` bytes (checked above) and is exclusively borrowed
            // through `self`; the weight section is `plan.weight_bytes` bytes, 8-byte aligned
            // (checked above), borrowed shared for this whole run.
            for &t in &node.inputs {
                let info = plan.tensor(t);
                // SAFETY: see above; the offset lies inside its region.
                let ptr = unsafe {
                    match info.location {
                        Location::Arena { offset } => arena.add(offset as usize) as *const u8,
                        Location::Weights { offset } => weights.add(offset as usize),
                    }
                };
                let (n, shape) = (info.numel(), info.shape.as_slice());
                // SAFETY (each view): see above; `ptr` is aligned for the tensor's dtype.
                match info.dtype {
                    DType::F32 => args.floats.push(View { data: unsafe { core::slice::from_raw_parts(ptr as *const f32, n) }, shape }),
                    DType::I64 => args.ints.push(View { data: unsafe { core::slice::from_raw_parts(ptr as *const i64, n) }, shape }),
                    DType::Bool | DType::U8 | DType::I8 => {
                        args.bools.push(View { data: unsafe { core::slice::from_raw_parts(ptr, n) }, shape })
                    }
                    DType::F16 => return Err(args.unrunnable(info)),
                }
            }
            for &t in &node.outputs {
                let info = plan.tensor(t);
                let Location::Arena { offset } = info.location else { unreachable!("validated: outputs are in the arena") };
                // SAFETY (each view): see above; no other live view overlaps this output.
                let (ptr, n, shape) = (unsafe { arena.add(offset as usize) }, info.numel(), info.shape.as_slice());
                match info.dtype {
                    DType::F32 => {
                        args.float_outs.push(ViewMut { data: unsafe { core::slice::from_raw_parts_mut(ptr as *mut f32, n) }, shape })
                    }
                    DType::I64 => {
                        args.int_outs.push(ViewMut { data: unsafe { core::slice::from_raw_parts_mut(ptr as *mut i64, n) }, shape })
                    }
                    DType::Bool | DType::U8 | DType::I8 => {
                        args.bool_outs.push(ViewMut { data: unsafe { core::slice::from_raw_parts_mut(ptr, n) }, shape })
                    }
                    DType::F16 => return Err(args.unrunnable(info)),
                }
            }
            let workspace: &mut [f32] = match node.workspace {
                // SAFETY: see above; the workspace overlaps no argument of this node.
                Some(w) => unsafe { core::slice::from_raw_parts_mut(arena.add(w.offset as usize) as *mut f32, w.elems as usize) },
                None => &mut [],
            };
            let node_args = NodeArgs {
                inputs: &args.floats,
                int_inputs: &args.ints,
                bool_inputs: &args.bools,
                outputs: &mut args.float_outs,
                int_outputs: &mut args.int_outs,
                bool_outputs: &mut args.bool_outs,
            };
            let result = match self.kernels {
                CpuKernels::Reference => {
                    let _ = workspace;
                    reference::execute(&node.op, node_args)
                }
                #[cfg(feature = "std")]
                CpuKernels::Fast(cfg) => crate::kernels::cpu::execute(&node.op, node_args, workspace, &mut self.scratch, cfg),
            };
            args.clear();
            result.map_err(|source| ExecError::Kernel { node: node.name.clone(), source })?;
            #[cfg(feature = "std")]
            if let (Some(nanos), Some(started)) = (profile.as_deref_mut(), started) {
                nanos[index] += started.elapsed().as_nanos() as u64;
            }
        }
        Ok(())
    }
}

impl<W: AsRef<[u8]> + Send, A: AsRef<[u64]> + AsMut<[u64]> + Send> CpuBackend<W, A> {
    /// Runs nodes `nodes` of a program only (the hybrid backend's CPU segments), inside the
    /// worker pool as [`Backend::run`] does.
    pub fn run_nodes(&mut self, which: ProgramKind, nodes: core::ops::Range<usize>) -> Result<(), ExecError> {
        #[cfg(feature = "std")]
        if let Some(pool) = self.pool.take() {
            let result = pool.install(|| self.run_range(which, nodes));
            self.pool = Some(pool);
            return result;
        }
        self.run_range(which, nodes)
    }
}

impl<W: AsRef<[u8]> + Send, A: AsRef<[u64]> + AsMut<[u64]> + Send> Backend for CpuBackend<W, A> {
    fn name(&self) -> &'static str {
        match self.kernels {
            CpuKernels::Reference => "cpu-reference",
            #[cfg(feature = "std")]
            CpuKernels::Fast(_) => "cpu",
        }
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn write(&mut self, t: TensorId, bytes: &[u8]) -> Result<(), ExecError> {
        let offset = arena_destination(&self.plan, t, bytes.len())?;
        let expected = bytes.len();
        let o = offset as usize;
        self.arena_bytes_mut()[o..o + expected].copy_from_slice(bytes);
        Ok(())
    }

    fn read(&self, t: TensorId, out: &mut [u8]) -> Result<(), ExecError> {
        let info = sized_tensor(&self.plan, t, out.len())?;
        let expected = out.len();
        let src = match info.location {
            Location::Arena { offset } => &self.arena_bytes()[offset as usize..offset as usize + expected],
            Location::Weights { offset } => &self.weight_section()[offset as usize..offset as usize + expected],
        };
        out.copy_from_slice(src);
        Ok(())
    }

    fn reset_state(&mut self) -> Result<(), ExecError> {
        self.reset_state_in_place();
        Ok(())
    }

    fn reserve_records(&mut self, slots: usize) -> Result<(), ExecError> {
        self.records = alloc::vec![0.0; slots];
        Ok(())
    }

    fn record(&mut self, t: TensorId, slot: usize) -> Result<(), ExecError> {
        let mut v = [0u8; 4];
        self.read(t, &mut v)?;
        let Some(r) = self.records.get_mut(slot) else {
            return Err(ExecError::Unsupported(alloc::format!("record slot {slot} is past the {} reserved", self.records.len())));
        };
        *r = f32::from_le_bytes(v);
        Ok(())
    }

    fn read_records(&mut self, out: &mut [f32]) -> Result<(), ExecError> {
        let Some(src) = self.records.get(..out.len()) else {
            return Err(ExecError::Unsupported(alloc::format!("{} records asked for, {} reserved", out.len(), self.records.len())));
        };
        out.copy_from_slice(src);
        Ok(())
    }

    fn run(&mut self, program: ProgramKind) -> Result<(), ExecError> {
        #[cfg(feature = "std")]
        if let Some(pool) = self.pool.take() {
            // The program runs on this thread with the pool installed: each kernel's parallel
            // loops (and gemm's) hand their tasks to this thread and the pool's workers.
            let result = pool.install(|| self.run_program(program));
            self.pool = Some(pool);
            return result;
        }
        self.run_program(program)
    }

    #[cfg(feature = "std")]
    fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| (alloc::vec![0; self.plan.programs.train.nodes.len()], 0));
    }

    #[cfg(feature = "std")]
    fn node_nanos(&self) -> Option<(&[u64], u64)> {
        self.profile.as_ref().map(|(nanos, runs)| (nanos.as_slice(), *runs))
    }

    #[cfg(feature = "std")]
    fn gemm_ceiling(&mut self) -> Option<f64> {
        let CpuKernels::Fast(cfg) = self.kernels else { return None };
        let measure = || crate::kernels::cpu::gemm_ceiling_gflops(cfg.threads, 3);
        Some(match &self.pool {
            Some(pool) => pool.install(measure),
            None => measure(),
        })
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::format::{decode_plan, encode_plan};
    use crate::plan::Workspace;
    use crate::session::PlanBytes;

    // Small compiled plans, the fuzzing seeds (regenerated by
    // `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`).
    const MLP: &[u8] = include_bytes!("../../fuzz/seeds/plan/mlp-sgd.pock");
    const CNN: &[u8] = include_bytes!("../../fuzz/seeds/plan/cnn.pock");

    fn decoded(file: &[u8]) -> (ValidatedPlan, WeightRange) {
        decode_plan(file).expect("the seed plan decodes")
    }

    /// Runs every program once on zero inputs and zero (valid) labels.
    fn run_all(backend: &mut CpuBackend<PlanBytes>) {
        let plan = backend.plan().clone();
        for which in [ProgramKind::Train, ProgramKind::Eval, ProgramKind::Infer] {
            for &t in &which.of(&plan).unwrap().feeds {
                backend.write(t, &vec![0u8; plan.tensor(t).bytes() as usize]).unwrap();
            }
            backend.run(which).unwrap();
        }
    }

    #[test]
    fn validated_plans_run_with_every_kernel_set() {
        for file in [MLP, CNN] {
            let (plan, range) = decoded(file);
            let mut backend = CpuBackend::new(plan.clone(), PlanBytes::copy_of(file), range, CpuKernels::Reference).unwrap();
            run_all(&mut backend);
            // Miri cannot run the fast kernels' SIMD code in reasonable time.
            #[cfg(not(miri))]
            {
                let fast = CpuKernels::Fast(crate::kernels::cpu::CpuConfig { threads: 1 });
                let mut backend = CpuBackend::new(plan, PlanBytes::copy_of(file), range, fast).unwrap();
                run_all(&mut backend);
            }
        }
    }

    /// Before `new` checked the range, a range shorter than the plan's weight section let the
    /// executor read past it, and one outside the buffer panicked.
    #[test]
    fn new_refuses_a_weight_range_that_does_not_match() {
        let (plan, range) = decoded(MLP);
        let bad = [
            WeightRange { offset: range.offset, len: range.len - 4 },
            WeightRange { offset: range.offset + 8, len: range.len },
            WeightRange { offset: MLP.len() + 64, len: range.len },
            WeightRange { offset: usize::MAX, len: 2 },
        ];
        for r in bad {
            let e = CpuBackend::new(plan.clone(), PlanBytes::copy_of(MLP), r, CpuKernels::Reference).err().unwrap();
            assert!(matches!(e, ExecError::WeightRange { .. }), "{r:?}: {e}");
            assert!(e.to_string().contains("decode_plan"), "{e}");
        }
    }

    /// A caller's arena runs the plan exactly as the backend's own `Vec` does, and one word too
    /// short is refused with the size needed.
    #[test]
    fn with_arena_runs_in_the_callers_buffer() {
        let (plan, range) = decoded(MLP);
        let words = plan.arena_bytes.div_ceil(8) as usize;
        let mut own = CpuBackend::new(plan.clone(), PlanBytes::copy_of(MLP), range, CpuKernels::Reference).unwrap();
        let mut buffer = vec![u64::MAX; words + 3];
        let mut theirs =
            CpuBackend::with_arena(plan.clone(), PlanBytes::copy_of(MLP), range, CpuKernels::Reference, &mut buffer[..]).unwrap();
        let p = plan.plan().clone();
        let loss = p.programs.train.fetches[0];
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        for step in 0..3u8 {
            for &t in &p.programs.train.feeds {
                let info = p.tensor(t);
                // Inputs vary per step; labels stay 0 (a valid class).
                let fill = if info.dtype == DType::F32 { step + 1 } else { 0 };
                let bytes = vec![fill; info.bytes() as usize];
                own.write(t, &bytes).unwrap();
                theirs.write(t, &bytes).unwrap();
            }
            own.run(ProgramKind::Train).unwrap();
            theirs.run(ProgramKind::Train).unwrap();
            own.read(loss, &mut a).unwrap();
            theirs.read(loss, &mut b).unwrap();
            assert_eq!(a, b, "step {step}");
            assert!(f32::from_le_bytes(a).is_finite());
        }
        let mut short = vec![0u64; words - 1];
        let e = CpuBackend::with_arena(plan.clone(), PlanBytes::copy_of(MLP), range, CpuKernels::Reference, &mut short[..]).err().unwrap();
        assert!(
            matches!(e, ExecError::ArenaTooSmall { needed, given } if needed == p.arena_bytes && given == (words as u64 - 1) * 8),
            "{e}"
        );
        assert!(e.to_string().contains("at least"), "{e}");
    }

    /// Plan bytes whose weight section is 4 bytes off 8-byte alignment.
    struct Shifted(PlanBytes);
    impl AsRef<[u8]> for Shifted {
        fn as_ref(&self) -> &[u8] {
            &self.0.as_ref()[4..]
        }
    }

    #[test]
    fn new_refuses_misaligned_weights() {
        let (plan, range) = decoded(MLP);
        let mut shifted = vec![0u8; 4];
        shifted.extend_from_slice(MLP);
        let e = CpuBackend::new(plan, Shifted(PlanBytes::copy_of(&shifted)), range, CpuKernels::Reference).err().unwrap();
        assert!(matches!(e, ExecError::MisalignedWeights), "{e}");
    }

    fn refused(plan: Plan, what: &str) -> String {
        match ValidatedPlan::new(plan) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn values_of_a_step_may_not_overlap_the_persistent_region() {
        let plan = decoded(MLP).0.into_plan();
        assert!(plan.persistent_bytes > 0);
        for role in [Role::Transient, Role::Input, Role::Target] {
            let mut p = plan.clone();
            let t = p.tensors.iter().position(|t| t.role == role && matches!(t.location, Location::Arena { .. }) && t.bytes() > 0).unwrap();
            p.tensors[t].location = Location::Arena { offset: 0 };
            let e = refused(p, &alloc::format!("{role:?} at offset 0"));
            assert!(e.contains("overlaps the persistent region"), "{e}");
        }
        let plan = decoded(CNN).0.into_plan();
        let mut p = plan.clone();
        let node = p.programs.train.nodes.iter_mut().find(|n| n.workspace.is_some()).expect("the cnn plan has a convolution workspace");
        let elems = node.workspace.unwrap().elems;
        node.workspace = Some(Workspace { offset: 0, elems });
        let e = refused(p, "workspace at offset 0");
        assert!(e.contains("workspace") && e.contains("persistent region"), "{e}");
    }

    /// Refused through the file format as well: the edited plan re-encoded is invalid.
    #[test]
    fn a_reencoded_plan_with_a_transient_in_the_persistent_region_does_not_decode() {
        let (plan, range) = decoded(MLP);
        let weights = &MLP[range.offset..range.offset + range.len];
        let mut p = plan.into_plan();
        let t = p.tensors.iter().position(|t| t.role == Role::Transient && t.bytes() > 0).unwrap();
        p.tensors[t].location = Location::Arena { offset: 0 };
        let e = decode_plan(&encode_plan(&p, weights)).unwrap_err();
        assert!(e.to_string().contains("overlaps the persistent region"), "{e}");
    }

    /// Sizes that do not fit `isize` would be truncated by `as usize` on a 32-bit target.
    #[test]
    fn unaddressable_region_sizes_are_refused() {
        let plan = decoded(MLP).0.into_plan();
        for (arena, weights) in [(u64::MAX, plan.weight_bytes), (plan.arena_bytes, 1 << 63)] {
            let mut p = plan.clone();
            (p.arena_bytes, p.weight_bytes) = (arena, weights);
            let e = refused(p, "huge region");
            assert!(e.contains("larger than this machine can address"), "{e}");
        }
    }
}
