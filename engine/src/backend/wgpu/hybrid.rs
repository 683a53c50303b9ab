//! The hybrid backend: a plan whose nodes the compiler placed on both sides
//! ([`crate::placement`]) runs its GPU nodes on a [`WgpuBackend`] and its CPU nodes on a
//! [`CpuBackend`] whose arena mirrors the device's (same offsets, so twice the arena in all).
//!
//! At load the GPU side lowers only its own nodes (pipelines, parameter blocks and bind groups
//! made once, as for a whole-GPU plan) and one staging buffer is made for the largest set of
//! values a CPU segment needs from the device. A run walks the program's segments
//! ([`crate::placement::schedule`]):
//! - a GPU segment: the values it needs from the host are written into device memory (queued
//!   writes, no wait), then its dispatches are recorded and submitted;
//! - a CPU segment that needs values from the device: one copy of all of them into the staging
//!   buffer, one wait (counted by [`Backend::syncs`]), then the bytes go into the host arena; then
//!   the CPU kernels run its nodes in the host arena;
//! - at the end, the persistent tensors and fetches written on the CPU are written back to the
//!   device, the home of every value that outlives a run (reads, records and checkpoints read
//!   the device).
//!
//! `i64` values are narrowed to `i32` on the way to the device and widened on the way back, as
//! [`WgpuBackend`] stores them. Nothing is created on the device during a step; host-to-device
//! writes go through `Queue::write_buffer`, as the session's feeds do.

use std::vec::Vec;

use super::{program_index, unsupported, WgpuBackend};
use crate::exec::{Backend, CpuBackend, CpuKernels, ExecError, ProgramKind, ValidatedPlan};
use crate::format::WeightRange;
use crate::placement::{schedule, Schedule, Side};
use crate::plan::{DType, Location, Plan, TensorId};
use crate::session::PlanBytes;

/// One tensor copied between the arenas.
#[derive(Clone, Copy, Debug)]
struct Copy {
    tensor: TensorId,
    /// Arena offset (the same on both sides).
    offset: u64,
    /// Bytes on the host.
    bytes: u64,
    /// Bytes copied on the device: half for `i64` (held as `i32`), rounded up to 4.
    stored: u64,
    /// Where it lands in the staging buffer (device to host copies).
    staging: u64,
    wide: bool,
}

/// One segment of a program, with its copies worked out at load.
struct Run {
    side: Side,
    nodes: core::ops::Range<usize>,
    incoming: Vec<Copy>,
}

/// Runs a placed plan on the CPU and the GPU together (see the module documentation).
pub struct HybridBackend {
    cpu: CpuBackend<PlanBytes>,
    gpu: WgpuBackend,
    /// Segments and copy-backs of train, apply, eval and infer.
    runs: [(Vec<Run>, Vec<Copy>); 4],
    /// Device-to-host copies land here (made at load, the largest any CPU segment needs).
    staging: wgpu::Buffer,
    /// Host-to-device copies are assembled here (padded, `i64` narrowed); sized at load.
    scratch: Vec<u8>,
}

fn copies(plan: &Plan, tensors: &[TensorId]) -> Vec<Copy> {
    let mut at = 0;
    tensors
        .iter()
        .filter_map(|&t| {
            let info = plan.tensor(t);
            let Location::Arena { offset } = info.location else { return None };
            let wide = info.dtype == DType::I64;
            let bytes = info.bytes();
            let stored = (if wide { bytes / 2 } else { bytes }).div_ceil(4) * 4;
            let c = Copy { tensor: t, offset, bytes, stored, staging: at, wide };
            at += stored;
            (bytes > 0).then_some(c)
        })
        .collect()
}

impl HybridBackend {
    /// Starts both sides of a plan that carries a placement. `bytes` and `weights` are what
    /// [`crate::format::decode_plan`] returned; `kernels` are the CPU side's.
    pub fn new(plan: ValidatedPlan, bytes: PlanBytes, weights: WeightRange, kernels: CpuKernels) -> Result<Self, ExecError> {
        let Some(placement) = plan.placement.clone() else {
            return Err(unsupported("the plan has no placement; compile it with --placement auto for a target with a GPU"));
        };
        let mut runs: [(Vec<Run>, Vec<Copy>); 4] = Default::default();
        let mut largest = 4u64;
        for kind in ProgramKind::ALL {
            let Some(program) = kind.of(&plan) else { continue };
            let Schedule { segments, copy_back } = schedule(&plan, program, placement.sides(kind));
            let list: Vec<Run> =
                segments.into_iter().map(|s| Run { side: s.side, incoming: copies(&plan, &s.incoming), nodes: s.nodes }).collect();
            for r in list.iter().filter(|r| r.side == Side::Cpu) {
                largest = largest.max(r.incoming.iter().map(|c| c.stored).sum());
            }
            runs[program_index(kind)] = (list, copies(&plan, &copy_back));
        }
        let host_bytes = plan.tensors.iter().map(|t| t.bytes()).max().unwrap_or(0).div_ceil(4) * 4;
        let gpu = WgpuBackend::with_nodes(plan.clone(), bytes.as_ref(), weights, |kind, n| placement.sides(kind)[n] == Side::Gpu)?;
        let cpu = CpuBackend::new(plan, bytes, weights, kernels)?;
        let staging = gpu.gpu.buffer("pock transfers", largest, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        Ok(HybridBackend { cpu, gpu, runs, staging, scratch: std::vec![0; host_bytes as usize] })
    }

    /// The GPU side (its adapter, its creation counts).
    pub fn gpu(&self) -> &WgpuBackend {
        &self.gpu
    }

    /// Writes host-arena values into device memory (queued: no wait).
    fn upload(gpu: &WgpuBackend, host: &[u8], scratch: &mut [u8], list: &[Copy]) -> Result<(), ExecError> {
        for c in list {
            let (o, n, s) = (c.offset as usize, c.bytes as usize, c.stored as usize);
            let src = &host[o..o + n];
            let buf = &mut scratch[..s];
            if c.wide {
                for (row, (out, v)) in buf.chunks_exact_mut(4).zip(src.chunks_exact(8)).enumerate() {
                    let v = i64::from_le_bytes(v.try_into().expect("8-byte chunks"));
                    let Ok(v) = i32::try_from(v) else {
                        return Err(unsupported(std::format!(
                            "tensor '{}' element {row} is {v}, outside the 32-bit range the GPU holds integers in; place its reader on the CPU or use --backend cpu",
                            gpu.plan.tensor(c.tensor).name
                        )));
                    };
                    out.copy_from_slice(&v.to_le_bytes());
                }
            } else {
                buf[..n].copy_from_slice(src);
                buf[n..].fill(0);
            }
            gpu.gpu.queue.write_buffer(&gpu.memory, c.offset, buf);
        }
        Ok(())
    }

    /// Copies device values into the host arena: one submit and one wait for the whole list.
    fn download(&mut self, kind: usize, segment: usize) -> Result<(), ExecError> {
        let list = &self.runs[kind].0[segment].incoming;
        let total: u64 = list.iter().map(|c| c.stored).sum();
        if total == 0 {
            return Ok(());
        }
        let gpu = &self.gpu.gpu;
        let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pock to host") });
        for c in list {
            encoder.copy_buffer_to_buffer(&self.gpu.memory, c.offset, &self.staging, c.staging, c.stored);
        }
        gpu.queue.submit([encoder.finish()]);
        let (send, receive) = std::sync::mpsc::channel();
        self.staging.map_async(wgpu::MapMode::Read, 0..total, move |r| {
            let _ = send.send(r);
        });
        gpu.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| unsupported(std::format!("the GPU did not finish: {e}")))?;
        match receive.try_recv() {
            Ok(Ok(())) => {}
            _ => return Err(unsupported("cannot read the GPU's memory back (the device may have been lost)")),
        }
        {
            let view =
                self.staging.get_mapped_range(0..total).map_err(|e| unsupported(std::format!("cannot read the GPU's memory back: {e}")))?;
            let host = self.cpu.arena_mut();
            for c in list {
                let (o, n, st) = (c.offset as usize, c.bytes as usize, c.staging as usize);
                if c.wide {
                    for (out, v) in host[o..o + n].chunks_exact_mut(8).zip(view[st..].chunks_exact(4)) {
                        out.copy_from_slice(&(i32::from_le_bytes(v.try_into().expect("4-byte chunks")) as i64).to_le_bytes());
                    }
                } else {
                    host[o..o + n].copy_from_slice(&view[st..st + n]);
                }
            }
        }
        self.staging.unmap();
        Ok(())
    }

    /// Records and submits the dispatches of nodes `nodes` of program `kind`.
    fn dispatch(&self, kind: ProgramKind, nodes: &core::ops::Range<usize>) {
        let all = &self.gpu.programs[program_index(kind)];
        let first = all.partition_point(|d| d.node < nodes.start);
        let last = all.partition_point(|d| d.node < nodes.end);
        if first == last {
            return;
        }
        let gpu = &self.gpu.gpu;
        let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(kind.name()) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kind.name()), timestamp_writes: None });
            for d in &all[first..last] {
                pass.set_pipeline(self.gpu.pipelines[d.pipeline].as_ref().expect("created at load for every lowered node"));
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], 1);
            }
        }
        gpu.queue.submit([encoder.finish()]);
    }
}

impl Backend for HybridBackend {
    fn name(&self) -> &'static str {
        "wgpu+cpu"
    }

    fn plan(&self) -> &Plan {
        self.cpu.plan()
    }

    /// Feeds and restored state go to both sides.
    fn write(&mut self, t: TensorId, bytes: &[u8]) -> Result<(), ExecError> {
        self.gpu.write(t, bytes)?;
        self.cpu.write(t, bytes)
    }

    /// From the device, where every value that outlives a run is (the module documentation).
    fn read(&self, t: TensorId, out: &mut [u8]) -> Result<(), ExecError> {
        self.gpu.read(t, out)
    }

    fn run(&mut self, program: ProgramKind) -> Result<(), ExecError> {
        if program.of(self.cpu.plan()).is_none() {
            return Err(ExecError::NoProgram(program.name()));
        }
        let p = program_index(program);
        for i in 0..self.runs[p].0.len() {
            let run = &self.runs[p].0[i];
            let nodes = run.nodes.clone();
            match run.side {
                Side::Gpu => {
                    Self::upload(&self.gpu, self.cpu.arena(), &mut self.scratch, &run.incoming)?;
                    self.dispatch(program, &nodes);
                }
                Side::Cpu => {
                    self.download(p, i)?;
                    self.cpu.run_nodes(program, nodes)?;
                }
            }
        }
        Self::upload(&self.gpu, self.cpu.arena(), &mut self.scratch, &self.runs[p].1)
    }

    fn reset_state(&mut self) -> Result<(), ExecError> {
        self.cpu.reset_state()?;
        self.gpu.reset_state()
    }

    fn reserve_records(&mut self, slots: usize) -> Result<(), ExecError> {
        self.gpu.reserve_records(slots)
    }

    fn record(&mut self, t: TensorId, slot: usize) -> Result<(), ExecError> {
        self.gpu.record(t, slot)
    }

    fn read_records(&mut self, out: &mut [f32]) -> Result<(), ExecError> {
        self.gpu.read_records(out)
    }

    fn syncs(&self) -> u64 {
        self.gpu.syncs()
    }
}
