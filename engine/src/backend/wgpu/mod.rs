//! The GPU backend: the plan's arena as one device buffer, WGSL kernels, through `wgpu` (Vulkan,
//! Metal, DX12).
//!
//! At load [`WgpuBackend::new`] allocates one storage buffer holding the arena followed by the
//! weight section (uploaded once), lowers every node of every program to its dispatches, one for
//! most ops ([`kernels::lower`]; a node without a GPU kernel makes the load fail with its op's
//! name), compiles the pipelines the plan uses, writes every dispatch's parameter block into one
//! buffer and creates one bind group per dispatch. Running a program then records that fixed list of
//! dispatches into a command encoder and submits it: no buffer, bind group or pipeline is created
//! during a step ([`WgpuBackend::creations`] counts them; `tests/wgpu.rs` checks it).
//!
//! Tensors are addressed by word offsets inside the one buffer, bound whole at offset 0, so a
//! plan's 8-byte-aligned offsets need no 256-byte storage-offset alignment. The buffer must fit
//! the device's largest storage binding (`maxStorageBufferBindingSize`); a plan that does not is
//! refused at load with the sizes and what to do.
//!
//! WGSL has no 64-bit integers: `i64` tensors are stored as `i32` in the first half of their
//! tensor's bytes (one word per element), checked when written by the host and when the weight
//! section is uploaded (each must fit `i32`; labels must lie in `[0, classes)` of every loss that
//! reads them, or be cross-entropy's `ignore_index`; Gather indices in `[-len, len)` of the axis
//! they index); reading them back widens them again. Integer values computed on the device
//! (arithmetic, casts from float) that leave the `i32` range wrap or saturate there, where the
//! CPU's `i64` would not: that is the one documented difference. Bool tensors are one byte per
//! element, as on the CPU (`typed.rs`).

pub mod hybrid;
pub use super::kernels;
use super::wide;

use std::collections::HashMap;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

use crate::exec::{Backend, ExecError, ProgramKind, ValidatedPlan};
use crate::format::WeightRange;
use crate::kernels::KernelError;
use crate::ops::{LossOp, MoveOp, Op};
use crate::plan::{DType, Init, Location, Plan, TensorId};

use kernels::{Addresses, KERNELS, WORKGROUP};

/// Bytes of one node's parameter block (a multiple of every device's storage-offset alignment
/// this backend accepts).
const PARAM_SLOT: u64 = 256;
/// The most workgroups in one dimension of a dispatch (WebGPU's default limit).
const MAX_GROUPS: u32 = 65535;

/// How many buffers, bind groups and pipelines the backend has created since it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creations {
    pub buffers: u64,
    pub bind_groups: u64,
    pub pipelines: u64,
}

/// The device and queue, with every creation call the backend makes going through here so that
/// [`WgpuBackend::creations`] can count them.
struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    buffers: AtomicU64,
    bind_groups: AtomicU64,
    pipelines: AtomicU64,
    /// Waits for the device (each read back is one).
    syncs: AtomicU64,
}

impl Gpu {
    fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.buffers.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
    }

    fn bind_group(&self, desc: &wgpu::BindGroupDescriptor<'_>) -> wgpu::BindGroup {
        self.bind_groups.fetch_add(1, Ordering::Relaxed);
        self.device.create_bind_group(desc)
    }

    fn pipeline(&self, desc: &wgpu::ComputePipelineDescriptor<'_>) -> wgpu::ComputePipeline {
        self.pipelines.fetch_add(1, Ordering::Relaxed);
        self.device.create_compute_pipeline(desc)
    }
}

/// One recorded dispatch.
struct Dispatch {
    /// The node's index in its program.
    node: usize,
    pipeline: usize,
    bind_group: wgpu::BindGroup,
    groups: [u32; 2],
}

/// A label tensor's consumers: the fewest classes among them and the op that has them.
#[derive(Clone, Copy)]
struct LabelRange {
    classes: usize,
    op: &'static str,
    /// A label value that the loss skips (cross-entropy's `ignore_index`).
    ignore: Option<i64>,
}

/// A Gather index tensor's consumers: the shortest axis they index and the op.
#[derive(Clone, Copy)]
struct IndexRange {
    len: usize,
    op: &'static str,
}

/// Executes plans on a GPU through `wgpu`.
pub struct WgpuBackend {
    plan: Plan,
    /// The weight section, kept on the host to reset state and answer reads of frozen tensors.
    weights: Vec<u8>,
    gpu: Gpu,
    memory: wgpu::Buffer,
    staging: wgpu::Buffer,
    pipelines: Vec<Option<wgpu::ComputePipeline>>,
    /// The dispatches of train, apply, eval and infer.
    programs: [Vec<Dispatch>; 4],
    labels: HashMap<usize, LabelRange>,
    indices: HashMap<usize, IndexRange>,
    adapter: String,
    /// [`Backend::record`]'s slots in device memory (made by `reserve_records`, at load).
    records: Option<(wgpu::Buffer, usize)>,
    /// Per-node time of the train program while profiling, and the number of profiled runs.
    profile: Option<(Vec<u64>, u64)>,
}

fn unsupported(message: impl Into<String>) -> ExecError {
    ExecError::Unsupported(message.into())
}

fn program_index(kind: ProgramKind) -> usize {
    match kind {
        ProgramKind::Train => 0,
        ProgramKind::Apply => 1,
        ProgramKind::Eval => 2,
        ProgramKind::Infer => 3,
    }
}

/// The first adapter `wgpu` offers (any backend compiled in), or why there is none.
fn adapter() -> Result<wgpu::Adapter, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).map_err(|e| e.to_string())
}

/// A description of the GPU adapter this machine offers (`name (backend, device type)`), or why
/// there is none. Tests use it to skip when no GPU (or software Vulkan) is installed.
pub fn adapter_description() -> Result<String, String> {
    adapter().map(|a| {
        let info = a.get_info();
        alloc::format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
    })
}

impl WgpuBackend {
    /// Starts the backend on the first adapter `wgpu` finds. `bytes` and `weights` are what
    /// [`crate::format::decode_plan`] returned, as for [`crate::exec::CpuBackend::new`].
    pub fn new(plan: ValidatedPlan, bytes: &[u8], weights: WeightRange) -> Result<Self, ExecError> {
        Self::with_nodes(plan, bytes, weights, |_, _| true)
    }

    /// [`WgpuBackend::new`] that lowers only the nodes `on_gpu(program, node)` accepts (the
    /// hybrid backend's GPU side, [`hybrid`]); running a program then runs those nodes only.
    pub fn with_nodes(
        plan: ValidatedPlan,
        bytes: &[u8],
        weights: WeightRange,
        on_gpu: impl Fn(ProgramKind, usize) -> bool,
    ) -> Result<Self, ExecError> {
        let plan = plan.into_plan();
        let section = weights.offset.checked_add(weights.len).and_then(|end| bytes.get(weights.offset..end));
        let Some(section) = section.filter(|s| s.len() as u64 == plan.weight_bytes) else {
            return Err(ExecError::WeightRange {
                offset: weights.offset,
                len: weights.len,
                expected: plan.weight_bytes,
                available: bytes.len(),
            });
        };
        let adapter = adapter().map_err(|e| {
            unsupported(alloc::format!(
                "no GPU adapter for --backend wgpu ({e}); install a Vulkan driver (on Debian: mesa-vulkan-drivers libvulkan1) or use --backend cpu"
            ))
        })?;
        let info = adapter.get_info();
        let adapter_name = alloc::format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
        let limits = adapter.limits();

        // One buffer: the arena, then the weight section at an 8-byte boundary, then one word:
        // the optimizer's finite-check flag (`Addresses::flag`).
        let weights_at = plan.arena_bytes.div_ceil(8) * 8;
        let total = (weights_at + plan.weight_bytes).div_ceil(4) * 4 + 4;
        let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        if total > binding {
            return Err(unsupported(alloc::format!(
                "the plan's arena and weights take {total} bytes, more than this GPU binds as one storage buffer ({binding} bytes, {adapter_name}); compile it with a smaller --batch or model, or use --backend cpu"
            )));
        }
        // The strided kernels compute word offsets in i32.
        if total / 4 > i32::MAX as u64 {
            return Err(unsupported(
                "the plan's memory has more than 2^31 words, which pock's WGSL kernels cannot index; use --backend cpu",
            ));
        }
        if limits.min_storage_buffer_offset_alignment as u64 > PARAM_SLOT {
            return Err(unsupported(alloc::format!(
                "{adapter_name} needs storage bindings aligned to {} bytes, more than the {PARAM_SLOT} this backend uses; use --backend cpu",
                limits.min_storage_buffer_offset_alignment
            )));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("pock"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unsupported(alloc::format!("cannot open {adapter_name}: {e}; use --backend cpu")))?;
        let gpu = Gpu {
            device,
            queue,
            buffers: AtomicU64::new(0),
            bind_groups: AtomicU64::new(0),
            pipelines: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        };

        // Lower every node of every program before anything is allocated on the device.
        // Only a software Vulkan (lavapipe, a `Cpu` device) stops long loops.
        let loop_limit = if info.device_type == wgpu::DeviceType::Cpu { wide::LOOP_LIMIT } else { u64::MAX };
        let at = Addresses { plan: &plan, weights_at, loop_limit };
        let mut lowered: [Vec<(usize, kernels::Lowered)>; 4] = Default::default();
        for kind in [ProgramKind::Train, ProgramKind::Apply, ProgramKind::Eval, ProgramKind::Infer] {
            let Some(program) = kind.of(&plan) else { continue };
            for (n, node) in program.nodes.iter().enumerate().filter(|&(n, _)| on_gpu(kind, n)) {
                let list = kernels::lower(node, &at).map_err(|e| unsupported(alloc::format!("{} program: {e}", kind.name())))?;
                lowered[program_index(kind)].extend(list.into_iter().filter(|l| l.params[0] > 0).map(|l| (n, l)));
            }
        }
        // The split reductions' scratch words after the flag word (`wide.rs`).
        let scratch = lowered.iter().flatten().map(|(_, l)| wide::scratch_words(l)).max().unwrap_or(0);
        let total = total + 4 * scratch;
        if total > binding || total / 4 > i32::MAX as u64 {
            return Err(unsupported(alloc::format!(
                "the plan's arena and weights with {scratch} words of scratch for the GPU's reductions take {total} bytes, more than this GPU binds as one storage buffer ({binding} bytes, {adapter_name}); compile it with a smaller --batch or model, or use --backend cpu"
            )));
        }
        let labels = label_ranges(&plan);
        let indices = index_ranges(&plan);
        // The weight section as the device holds it: `i64` constants narrowed to `i32`.
        let mut padded = section.to_vec();
        for t in &plan.tensors {
            let Location::Weights { offset } = t.location else { continue };
            if t.dtype != DType::I64 {
                continue;
            }
            let at = offset as usize;
            for k in 0..t.numel() {
                let v = i64::from_le_bytes(section[at + 8 * k..at + 8 * k + 8].try_into().expect("8 bytes"));
                let Ok(v) = i32::try_from(v) else {
                    return Err(unsupported(alloc::format!(
                        "constant '{}' element {k} is {v}, outside the 32-bit range the GPU holds integers in; use --backend cpu",
                        t.name
                    )));
                };
                padded[at + 4 * k..at + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        padded.resize(section.len().div_ceil(4) * 4, 0);

        let memory =
            gpu.buffer("pock arena", total, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC);
        let largest = plan.tensors.iter().map(|t| t.bytes()).max().unwrap_or(0);
        let staging_bytes = largest.div_ceil(4).max(1) * 4;
        let staging = gpu.buffer("pock readback", staging_bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let count: usize = lowered.iter().map(Vec::len).sum();
        let params = gpu.buffer(
            "pock node parameters",
            (count as u64).max(1) * PARAM_SLOT,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );

        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = gpu.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("pock kernel bindings"),
            entries: &[storage(0, false), storage(1, true)],
        });
        let pipeline_layout = gpu.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("pock kernels"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });

        // Pipelines for the kernels the plan uses, compiled under an error scope so that a
        // kernel the driver rejects is an error here rather than a panic later.
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut pipelines: Vec<Option<wgpu::ComputePipeline>> = KERNELS.iter().map(|_| None).collect();
        for (_, l) in lowered.iter().flatten() {
            let k = l.kernel as usize;
            if pipelines[k].is_none() {
                let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(l.kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(l.kernel.source().into()),
                });
                pipelines[k] = Some(gpu.pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(l.kernel.name()),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                }));
            }
        }

        let mut block = Vec::with_capacity(count * PARAM_SLOT as usize);
        let mut programs: [Vec<Dispatch>; 4] = Default::default();
        let mut slot = 0u64;
        for (p, list) in lowered.iter().enumerate() {
            for (node, l) in list {
                let mut words = [0u32; (PARAM_SLOT / 4) as usize];
                words[..l.params.len()].copy_from_slice(&l.params);
                block.extend(words.iter().flat_map(|w| w.to_le_bytes()));
                let bind_group = gpu.bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(l.kernel.name()),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: memory.as_entire_binding() },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params,
                                offset: slot * PARAM_SLOT,
                                size: wgpu::BufferSize::new(PARAM_SLOT),
                            }),
                        },
                    ],
                });
                slot += 1;
                let groups = if l.kernel.blocks() {
                    let x = l.params[0].min(MAX_GROUPS);
                    [x, l.params[0].div_ceil(x)]
                } else if l.kernel.per_channel() {
                    if l.params[0] > MAX_GROUPS {
                        return Err(unsupported(alloc::format!(
                            "a BatchNorm of {} channels: the GPU backend reduces one channel per workgroup, at most {MAX_GROUPS}; use --backend cpu",
                            l.params[0]
                        )));
                    }
                    [l.params[0], 1]
                } else {
                    let total = l.params[0].div_ceil(WORKGROUP);
                    let x = total.min(MAX_GROUPS);
                    [x, total.div_ceil(x)]
                };
                programs[p].push(Dispatch { node: *node, pipeline: l.kernel as usize, bind_group, groups });
            }
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(unsupported(alloc::format!("{adapter_name} rejected pock's kernels: {e}")));
        }
        if !block.is_empty() {
            gpu.queue.write_buffer(&params, 0, &block);
        }
        if !padded.is_empty() {
            gpu.queue.write_buffer(&memory, weights_at, &padded);
        }
        let mut backend = WgpuBackend {
            plan,
            weights: section.to_vec(),
            gpu,
            memory,
            staging,
            pipelines,
            programs,
            labels,
            indices,
            adapter: adapter_name,
            records: None,
            profile: None,
        };
        backend.reset_state()?;
        Ok(backend)
    }

    /// The adapter the backend runs on (`name (backend, device type)`).
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// Copies `len` bytes at `offset` of `src` to the staging buffer, waits for the device (one
    /// sync) and hands the bytes to `f`.
    fn download(&self, src: &wgpu::Buffer, offset: u64, len: u64, f: impl FnOnce(&[u8])) -> Result<(), ExecError> {
        let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pock read") });
        encoder.copy_buffer_to_buffer(src, offset, &self.staging, 0, len);
        self.gpu.queue.submit([encoder.finish()]);
        let (send, receive) = std::sync::mpsc::channel();
        self.staging.map_async(wgpu::MapMode::Read, 0..len, move |r| {
            let _ = send.send(r);
        });
        self.gpu.syncs.fetch_add(1, Ordering::Relaxed);
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| unsupported(alloc::format!("the GPU did not finish: {e}")))?;
        match receive.try_recv() {
            Ok(Ok(())) => {}
            _ => return Err(unsupported("cannot read the GPU's memory back (the device may have been lost)")),
        }
        {
            let view =
                self.staging.get_mapped_range(0..len).map_err(|e| unsupported(alloc::format!("cannot read the GPU's memory back: {e}")))?;
            f(&view);
        }
        self.staging.unmap();
        Ok(())
    }

    /// The train program one node at a time: each node's dispatches submitted alone and waited
    /// for, timed on the host clock.
    fn run_profiled(&mut self) -> Result<(), ExecError> {
        let Some((mut nanos, runs)) = self.profile.take() else { return Ok(()) };
        let dispatches = &self.programs[program_index(ProgramKind::Train)];
        let mut start = 0;
        while start < dispatches.len() {
            let node = dispatches[start].node;
            let end = start + dispatches[start..].iter().take_while(|d| d.node == node).count();
            let began = std::time::Instant::now();
            let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pock profile") });
            {
                let mut pass =
                    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("pock profile"), timestamp_writes: None });
                for d in &dispatches[start..end] {
                    pass.set_pipeline(self.pipelines[d.pipeline].as_ref().expect("created at load for every lowered node"));
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], 1);
                }
            }
            self.gpu.queue.submit([encoder.finish()]);
            self.gpu.syncs.fetch_add(1, Ordering::Relaxed);
            let waited = self.gpu.device.poll(wgpu::PollType::wait_indefinitely());
            nanos[node] += began.elapsed().as_nanos() as u64;
            if let Err(e) = waited {
                self.profile = Some((nanos, runs));
                return Err(unsupported(alloc::format!("the GPU did not finish: {e}")));
            }
            start = end;
        }
        self.profile = Some((nanos, runs + 1));
        Ok(())
    }

    /// How many buffers, bind groups and pipelines the backend has created so far.
    pub fn creations(&self) -> Creations {
        Creations {
            buffers: self.gpu.buffers.load(Ordering::Relaxed),
            bind_groups: self.gpu.bind_groups.load(Ordering::Relaxed),
            pipelines: self.gpu.pipelines.load(Ordering::Relaxed),
        }
    }
}

/// For each `i64` tensor that a loss reads as labels, the fewest classes among those losses.
fn label_ranges(plan: &Plan) -> HashMap<usize, LabelRange> {
    let mut out: HashMap<usize, LabelRange> = HashMap::new();
    for (_, program) in plan.all_programs() {
        for node in &program.nodes {
            let (logits, labels, ignore) = match node.op {
                Op::Loss(LossOp::SoftmaxCrossEntropy(_)) => (node.inputs[0], node.inputs[1], None),
                Op::Loss(LossOp::SoftmaxCrossEntropyGrad(_)) => (node.inputs[1], node.inputs[2], None),
                Op::Loss(LossOp::CrossEntropy(c)) => (node.inputs[0], node.inputs[1], Some(c.ignore_index)),
                Op::Loss(LossOp::CrossEntropyGrad(c)) => (node.inputs[1], node.inputs[2], Some(c.ignore_index)),
                _ => continue,
            };
            let classes = plan.tensor(logits).shape.last().copied().unwrap_or(0);
            let e = out.entry(labels.index()).or_insert(LabelRange { classes, op: node.op.name(), ignore });
            if classes < e.classes {
                *e = LabelRange { classes, op: node.op.name(), ignore: ignore.or(e.ignore) };
            }
        }
    }
    out
}

/// For each `i64` tensor that a Gather or GatherGrad reads as indices, the shortest axis indexed.
fn index_ranges(plan: &Plan) -> HashMap<usize, IndexRange> {
    let mut out: HashMap<usize, IndexRange> = HashMap::new();
    for (_, program) in plan.all_programs() {
        for node in &program.nodes {
            let len = match &node.op {
                Op::Move(MoveOp::Gather { axis }) => plan.tensor(node.inputs[0]).shape[*axis],
                Op::Move(MoveOp::GatherGrad { axis, shape }) => shape[*axis],
                _ => continue,
            };
            let e = out.entry(node.inputs[1].index()).or_insert(IndexRange { len, op: node.op.name() });
            if len < e.len {
                *e = IndexRange { len, op: node.op.name() };
            }
        }
    }
    out
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn write(&mut self, t: TensorId, bytes: &[u8]) -> Result<(), ExecError> {
        let offset = crate::exec::arena_destination(&self.plan, t, bytes.len())?;
        let info = self.plan.tensor(t);
        let expected = bytes.len();
        if expected == 0 {
            return Ok(());
        }
        match info.dtype {
            DType::F32 => self.gpu.queue.write_buffer(&self.memory, offset, bytes),
            DType::I64 => {
                let range = self.labels.get(&t.index()).copied();
                let index = self.indices.get(&t.index()).copied();
                let mut narrow = Vec::with_capacity(bytes.len() / 2);
                for (row, chunk) in bytes.chunks_exact(8).enumerate() {
                    let v = i64::from_le_bytes(chunk.try_into().expect("8-byte chunks"));
                    if let Some(r) = range {
                        if Some(v) != r.ignore && (v < 0 || v as u64 >= r.classes as u64) {
                            return Err(ExecError::Kernel {
                                node: info.name.clone(),
                                source: KernelError::LabelOutOfRange { op: r.op, row, label: v, classes: r.classes },
                            });
                        }
                    }
                    if let Some(r) = index {
                        if v < -(r.len as i64) || v >= r.len as i64 {
                            return Err(ExecError::Kernel {
                                node: info.name.clone(),
                                source: KernelError::IndexOutOfRange { op: r.op, index: v, len: r.len },
                            });
                        }
                    }
                    let Ok(v) = i32::try_from(v) else {
                        return Err(unsupported(alloc::format!(
                            "tensor '{}' element {row} is {v}, outside the 32-bit range the GPU holds integers in; use --backend cpu",
                            info.name
                        )));
                    };
                    narrow.extend_from_slice(&v.to_le_bytes());
                }
                self.gpu.queue.write_buffer(&self.memory, offset, &narrow);
            }
            // Bytes (packed masks, bools, int8): written whole words at a time. The last word's
            // bytes past the tensor belong to no other tensor, since every arena offset is
            // 8-byte aligned.
            DType::U8 | DType::Bool | DType::I8 => {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().div_ceil(4) * 4, 0);
                self.gpu.queue.write_buffer(&self.memory, offset, &padded);
            }
            d => {
                return Err(unsupported(alloc::format!(
                    "tensor '{}' has dtype {}, which the GPU backend does not hold yet; use --backend cpu",
                    info.name,
                    d.name()
                )))
            }
        }
        Ok(())
    }

    fn read(&self, t: TensorId, out: &mut [u8]) -> Result<(), ExecError> {
        let info = crate::exec::sized_tensor(&self.plan, t, out.len())?;
        let expected = out.len();
        let offset = match info.location {
            Location::Weights { offset } => {
                out.copy_from_slice(&self.weights[offset as usize..offset as usize + expected]);
                return Ok(());
            }
            Location::Arena { offset } => offset,
        };
        if expected == 0 {
            return Ok(());
        }
        let stored = if info.dtype == DType::I64 { expected / 2 } else { expected };
        let copy = (stored as u64).div_ceil(4) * 4;
        let wide = info.dtype == DType::I64;
        self.download(&self.memory, offset, copy, |view| {
            if wide {
                for (o, v) in out.chunks_exact_mut(8).zip(view.chunks_exact(4)) {
                    let v = i32::from_le_bytes(v.try_into().expect("4-byte chunks")) as i64;
                    o.copy_from_slice(&v.to_le_bytes());
                }
            } else {
                out.copy_from_slice(&view[..expected]);
            }
        })
    }

    fn reset_state(&mut self) -> Result<(), ExecError> {
        let inits: Vec<(TensorId, u64, Init)> = self
            .plan
            .tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.location {
                Location::Arena { .. } if t.init != Init::None => Some((TensorId(i as u32), t.bytes(), t.init)),
                _ => None,
            })
            .collect();
        for (t, bytes, init) in inits {
            let b = bytes as usize;
            let value = match init {
                Init::FromWeights { offset } => self.weights[offset as usize..offset as usize + b].to_vec(),
                Init::Fill(v) => v.to_le_bytes().repeat(b / 4),
                Init::None => continue,
            };
            self.write(t, &value)?;
        }
        Ok(())
    }

    fn reserve_records(&mut self, slots: usize) -> Result<(), ExecError> {
        let bytes = (slots.max(1) * 4) as u64;
        let buffer = self.gpu.buffer("pock records", bytes, wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        if self.staging.size() < bytes {
            self.staging = self.gpu.buffer("pock readback", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        }
        self.records = Some((buffer, slots));
        Ok(())
    }

    fn record(&mut self, t: TensorId, slot: usize) -> Result<(), ExecError> {
        let info = crate::exec::sized_tensor(&self.plan, t, 4)?;
        let Location::Arena { offset } = info.location else {
            return Err(unsupported(alloc::format!("tensor '{}' is in the weight section; only arena values are recorded", info.name)));
        };
        let Some((buffer, slots)) = &self.records else {
            return Err(unsupported("no record slots reserved; the session reserves them at load for --loss-every"));
        };
        if slot >= *slots {
            return Err(unsupported(alloc::format!("record slot {slot} is past the {slots} reserved")));
        }
        let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pock record") });
        encoder.copy_buffer_to_buffer(&self.memory, offset, buffer, slot as u64 * 4, 4);
        self.gpu.queue.submit([encoder.finish()]);
        Ok(())
    }

    fn read_records(&mut self, out: &mut [f32]) -> Result<(), ExecError> {
        let Some((buffer, slots)) = &self.records else {
            return Err(unsupported("no record slots reserved; the session reserves them at load for --loss-every"));
        };
        if out.len() > *slots {
            return Err(unsupported(alloc::format!("{} records asked for, {slots} reserved", out.len())));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.download(buffer, 0, out.len() as u64 * 4, |view| {
            for (o, v) in out.iter_mut().zip(view.chunks_exact(4)) {
                *o = f32::from_le_bytes(v.try_into().expect("4-byte chunks"));
            }
        })
    }

    fn syncs(&self) -> u64 {
        self.gpu.syncs.load(Ordering::Relaxed)
    }

    fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| (alloc::vec![0; self.plan.programs.train.nodes.len()], 0));
    }

    fn node_nanos(&self) -> Option<(&[u64], u64)> {
        self.profile.as_ref().map(|(n, runs)| (n.as_slice(), *runs))
    }

    fn profile_timing(&self) -> &'static str {
        "submitting each node's dispatches on their own and waiting for the GPU (host clock; no GPU timestamp queries), so small nodes include a submit and a sync each"
    }

    fn run(&mut self, program: ProgramKind) -> Result<(), ExecError> {
        if program.of(&self.plan).is_none() {
            return Err(ExecError::NoProgram(program.name()));
        }
        if program == ProgramKind::Train && self.profile.is_some() {
            return self.run_profiled();
        }
        let dispatches = &self.programs[program_index(program)];
        let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(program.name()) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(program.name()), timestamp_writes: None });
            for d in dispatches {
                let pipeline = self.pipelines[d.pipeline].as_ref().expect("created at load for every lowered node");
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], 1);
            }
        }
        self.gpu.queue.submit([encoder.finish()]);
        Ok(())
    }
}
