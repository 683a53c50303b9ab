//! Plan validation, the backend interface and the CPU backend.
//!
//! [`validate`] runs once when a plan is loaded and establishes what the executor relies on:
//! every tensor lies inside the arena or the weight section, every node's shapes satisfy its
//! op's shape rule, nothing writes into the weight section, and no output overlaps another
//! argument of its node. After that, running a program only resolves offsets to slices and calls
//! kernels; it allocates nothing.

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
    #[error("the weight section is not 8-byte aligned in memory; load the plan from a file or an 8-byte aligned buffer")]
    MisalignedWeights,
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

/// Byte range of a tensor in its region.
fn range(plan: &Plan, t: TensorId) -> (bool, u64, u64) {
    let info = plan.tensor(t);
    match info.location {
        Location::Arena { offset } => (true, offset, offset + info.bytes()),
        Location::Weights { offset } => (false, offset, offset + info.bytes()),
    }
}

fn overlaps(a: (bool, u64, u64), b: (bool, u64, u64)) -> bool {
    a.0 == b.0 && a.1 < b.2 && b.1 < a.2
}

/// Checks everything the executor relies on (see the module documentation).
pub fn validate(plan: &Plan) -> Result<(), ValidationError> {
    let n = plan.tensors.len();
    if plan.persistent_bytes > plan.arena_bytes {
        bail!("persistent region ({} bytes) is larger than the arena ({} bytes)", plan.persistent_bytes, plan.arena_bytes);
    }
    for t in &plan.tensors {
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = numel.and_then(|e| e.checked_mul(t.dtype.size())).map(|b| b as u64);
        let Some(bytes) = bytes else { bail!("tensor '{}' has an impossible shape {:?}", t.name, t.shape) };
        if !matches!(t.dtype, DType::F32 | DType::I64 | DType::Bool) {
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
            Location::Arena { offset } if inplace.contains(&i) && offset + info.bytes() > plan.persistent_bytes => {
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

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    Train,
    Apply,
    Eval,
    Infer,
}

impl ProgramKind {
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

/// Executes plans on the CPU with one arena allocated at construction.
pub struct CpuBackend<W: AsRef<[u8]>> {
    plan: Plan,
    bytes: W,
    weights: WeightRange,
    arena: Vec<u64>,
    kernels: CpuKernels,
    args: ArgViews<'static>,
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
    /// `bytes` holds the plan file (or at least its weight section at `weights`); `plan` must
    /// have passed [`validate`] (as [`crate::format::decode_plan`] ensures).
    pub fn new(plan: Plan, bytes: W, weights: WeightRange, kernels: CpuKernels) -> Result<Self, ExecError> {
        let section = &bytes.as_ref()[weights.offset..weights.offset + weights.len];
        if !(section.as_ptr() as usize).is_multiple_of(8) {
            return Err(ExecError::MisalignedWeights);
        }
        #[cfg(feature = "std")]
        if let CpuKernels::Fast(_) = kernels {
            for (pname, program) in plan.all_programs() {
                for node in &program.nodes {
                    let ins: Vec<&[usize]> = node.inputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
                    let outs: Vec<&[usize]> = node.outputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
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
        let words = plan.arena_bytes.div_ceil(8) as usize;
        let mut arena = Vec::new();
        arena.try_reserve_exact(words).map_err(|_| ExecError::OutOfMemory { bytes: plan.arena_bytes })?;
        arena.resize(words, 0u64);
        let max_in = plan.all_programs().flat_map(|(_, p)| p.nodes.iter().map(|n| n.inputs.len())).max().unwrap_or(0);
        let max_out = plan.all_programs().flat_map(|(_, p)| p.nodes.iter().map(|n| n.outputs.len())).max().unwrap_or(0);
        let mut backend = CpuBackend { plan, bytes, weights, arena, kernels, args: ArgViews::with_capacity(max_in, max_out) };
        backend.reset_state();
        Ok(backend)
    }

    fn weight_section(&self) -> &[u8] {
        &self.bytes.as_ref()[self.weights.offset..self.weights.offset + self.weights.len]
    }

    fn arena_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.plan.arena_bytes as usize;
        // SAFETY: the arena holds at least `arena_bytes` bytes; u64 storage is viewed as bytes.
        unsafe { core::slice::from_raw_parts_mut(self.arena.as_mut_ptr() as *mut u8, len) }
    }

    fn arena_bytes(&self) -> &[u8] {
        // SAFETY: as in `arena_bytes_mut`.
        unsafe { core::slice::from_raw_parts(self.arena.as_ptr() as *const u8, self.plan.arena_bytes as usize) }
    }

    /// Sets every persistent tensor to its initial value (parameters from the weight section,
    /// optimizer state to zero).
    pub fn reset_state(&mut self) {
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
        let plan = &self.plan;
        let program = which.of(plan).ok_or(ExecError::NoProgram(which.name()))?;
        let arena = self.arena.as_mut_ptr() as *mut u8;
        let weights = {
            let b = self.bytes.as_ref();
            b[self.weights.offset..].as_ptr()
        };
        // The scratch vectors keep their capacity between nodes and calls; the views they hold
        // only live while one node runs (they are cleared before the next node).
        // SAFETY: only the lifetime parameter changes, and every vector is empty on return.
        let args: &mut ArgViews<'_> = unsafe { &mut *(&mut self.args as *mut ArgViews<'static>).cast::<ArgViews<'_>>() };
        for node in &program.nodes {
            if matches!(node.op, Op::Dense(DenseOp::Reshape { .. }))
                && plan.tensor(node.inputs[0]).location == plan.tensor(node.outputs[0]).location
            {
                continue;
            }
            args.clear();
            // SAFETY (all pointer arithmetic below): `validate` checked that every tensor and
            // workspace lies inside its region with the alignment of its dtype, that outputs
            // overlap neither each other, nor inputs, nor the workspace, and that nothing writes
            // into the weight section. The arena is exclusively borrowed through `self`.
            for &t in &node.inputs {
                let info = plan.tensor(t);
                let ptr = unsafe {
                    match info.location {
                        Location::Arena { offset } => arena.add(offset as usize) as *const u8,
                        Location::Weights { offset } => weights.add(offset as usize),
                    }
                };
                let (n, shape) = (info.numel(), info.shape.as_slice());
                match info.dtype {
                    DType::F32 => args.floats.push(View { data: unsafe { core::slice::from_raw_parts(ptr as *const f32, n) }, shape }),
                    DType::I64 => args.ints.push(View { data: unsafe { core::slice::from_raw_parts(ptr as *const i64, n) }, shape }),
                    DType::Bool => args.bools.push(View { data: unsafe { core::slice::from_raw_parts(ptr, n) }, shape }),
                    DType::F16 | DType::I8 => return Err(args.unrunnable(info)),
                }
            }
            for &t in &node.outputs {
                let info = plan.tensor(t);
                let Location::Arena { offset } = info.location else { unreachable!("validated: outputs are in the arena") };
                let (ptr, n, shape) = (unsafe { arena.add(offset as usize) }, info.numel(), info.shape.as_slice());
                match info.dtype {
                    DType::F32 => {
                        args.float_outs.push(ViewMut { data: unsafe { core::slice::from_raw_parts_mut(ptr as *mut f32, n) }, shape })
                    }
                    DType::I64 => {
                        args.int_outs.push(ViewMut { data: unsafe { core::slice::from_raw_parts_mut(ptr as *mut i64, n) }, shape })
                    }
                    DType::Bool => args.bool_outs.push(ViewMut { data: unsafe { core::slice::from_raw_parts_mut(ptr, n) }, shape }),
                    DType::F16 | DType::I8 => return Err(args.unrunnable(info)),
                }
            }
            let workspace: &mut [f32] = match node.workspace {
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
                CpuKernels::Fast(cfg) => crate::kernels::cpu::execute(&node.op, node_args, workspace, cfg),
            };
            args.clear();
            result.map_err(|source| ExecError::Kernel { node: node.name.clone(), source })?;
        }
        Ok(())
    }
}

impl<W: AsRef<[u8]>> Backend for CpuBackend<W> {
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
        let info = self.plan.tensor(t);
        let expected = info.bytes() as usize;
        if bytes.len() != expected {
            return Err(ExecError::Size { name: info.name.clone(), expected, given: bytes.len() });
        }
        let Location::Arena { offset } = info.location else {
            return Err(ExecError::Unsupported(alloc::format!("tensor '{}' is in the read-only weight section", info.name)));
        };
        let o = offset as usize;
        self.arena_bytes_mut()[o..o + expected].copy_from_slice(bytes);
        Ok(())
    }

    fn read(&self, t: TensorId, out: &mut [u8]) -> Result<(), ExecError> {
        let info = self.plan.tensor(t);
        let expected = info.bytes() as usize;
        if out.len() != expected {
            return Err(ExecError::Size { name: info.name.clone(), expected, given: out.len() });
        }
        let src = match info.location {
            Location::Arena { offset } => &self.arena_bytes()[offset as usize..offset as usize + expected],
            Location::Weights { offset } => &self.weight_section()[offset as usize..offset as usize + expected],
        };
        out.copy_from_slice(src);
        Ok(())
    }

    fn run(&mut self, program: ProgramKind) -> Result<(), ExecError> {
        self.run_program(program)
    }
}
