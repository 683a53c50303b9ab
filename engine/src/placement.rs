//! Per-node placement: which side (the host CPU or the GPU) runs each node of each program, and
//! the copies between the host arena and the device arena that this placement needs.
//!
//! The compiler chooses the sides (`pock_compiler::placement`, `pock compile --placement`) and
//! records them in the plan file after the plan's description (see [`crate::format`]): a plan
//! without them (an older file, or one compiled for a target without a GPU) runs wholly on the
//! backend chosen at load. The copies are not stored: [`segments`] derives them from the sides,
//! the one definition that the compiler's cost, the hybrid backend and `pock inspect` share.
//!
//! Memory: both sides keep a whole arena at the plan's offsets (the host arena mirrors the
//! device's), so memory planning does not change with placement, at the cost of a second arena.
//! A copy moves one tensor's bytes between the two arenas at its own offset. The device arena is
//! the home of every value that outlives a program: at the start of a program only the device
//! holds the persistent state, the host holds the program's feeds too (the session writes them to
//! both sides) and the weight section is on both; at the end, every persistent tensor and every
//! fetch written on the CPU is copied back to the device.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::exec::ProgramKind;
use crate::plan::{Location, Plan, Program, TensorId};

/// Where a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Cpu,
    Gpu,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Cpu => "cpu",
            Side::Gpu => "gpu",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Side::Cpu => 1,
            Side::Gpu => 2,
        }
    }
}

/// The compiler's estimate of one training step on the plan's target (the roofline of
/// `pock_targets`, with the host-device link), recorded so that `pock inspect` can show what
/// placement gained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementEstimate {
    /// The placed step, transfers and syncs included, ms.
    pub placed_ms: f64,
    /// Every node on the CPU, ms.
    pub all_cpu_ms: f64,
    /// Every node on the GPU, ms; `None` when some node has no GPU kernel.
    pub all_gpu_ms: Option<f64>,
    /// Of `placed_ms`, the time spent moving bytes and waiting for the device, ms.
    pub transfer_ms: f64,
}

/// The side of every node of every program, in program order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// How it was chosen (`auto`, `gpu`, `cpu`, with the nodes forced onto the CPU), for reports.
    pub mode: String,
    pub train: Vec<Side>,
    pub apply: Vec<Side>,
    pub eval: Vec<Side>,
    pub infer: Vec<Side>,
    pub estimate: PlacementEstimate,
}

impl Placement {
    pub fn sides(&self, kind: ProgramKind) -> &[Side] {
        match kind {
            ProgramKind::Train => &self.train,
            ProgramKind::Apply => &self.apply,
            ProgramKind::Eval => &self.eval,
            ProgramKind::Infer => &self.infer,
        }
    }

    pub fn sides_mut(&mut self, kind: ProgramKind) -> &mut Vec<Side> {
        match kind {
            ProgramKind::Train => &mut self.train,
            ProgramKind::Apply => &mut self.apply,
            ProgramKind::Eval => &mut self.eval,
            ProgramKind::Infer => &mut self.infer,
        }
    }

    /// Whether any node of any program runs on the CPU.
    pub fn any_cpu(&self) -> bool {
        [&self.train, &self.apply, &self.eval, &self.infer].iter().any(|s| s.contains(&Side::Cpu))
    }

    /// Checks that there is one side per node of each program (what a file could get wrong).
    pub fn check(&self, plan: &Plan) -> Result<(), String> {
        for kind in ProgramKind::ALL {
            let nodes = kind.of(plan).map_or(0, |p| p.nodes.len());
            let sides = self.sides(kind).len();
            if sides != nodes {
                return Err(alloc::format!("the placement has {sides} sides for the {} program's {nodes} nodes", kind.name()));
            }
        }
        Ok(())
    }
}

/// A run of consecutive nodes on one side, with the tensors copied to that side before it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub side: Side,
    pub nodes: core::ops::Range<usize>,
    /// Tensors copied onto `side` before the segment runs (from the other side's arena).
    pub incoming: Vec<TensorId>,
}

/// A program's segments and the tensors copied back to the device after its last node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub segments: Vec<Segment>,
    /// Persistent tensors and fetches written on the CPU, copied to the device at the end.
    pub copy_back: Vec<TensorId>,
}

impl Schedule {
    /// Host waits for the device each run: one per CPU segment that needs a value from the GPU.
    pub fn syncs(&self) -> usize {
        self.segments.iter().filter(|s| s.side == Side::Cpu && !s.incoming.is_empty()).count()
    }

    /// Bytes copied each run, device to host and host to device.
    pub fn bytes(&self, plan: &Plan) -> (u64, u64) {
        let sum = |ts: &mut dyn Iterator<Item = &TensorId>| ts.map(|&t| plan.tensor(t).bytes()).sum::<u64>();
        let down = sum(&mut self.segments.iter().filter(|s| s.side == Side::Cpu).flat_map(|s| &s.incoming));
        let up = sum(&mut self.segments.iter().filter(|s| s.side == Side::Gpu).flat_map(|s| &s.incoming).chain(&self.copy_back));
        (down, up)
    }
}

/// Splits `program` into same-side segments and works out which tensors each one needs copied in.
///
/// Every tensor carries the set of sides holding its current value. Weight-section tensors are on
/// both; arena tensors start on the device, feeds on both. A node needs its inputs (and its
/// in-place outputs, which it reads) on its side; an input that is not there is copied at the
/// start of the node's segment (a value that is live at a node is live, and owns its bytes, for
/// the whole segment before it, so the copy can be moved to the segment's start). A node's outputs
/// are then on its side only. `sides` must have one side per node ([`Placement::check`]).
pub fn schedule(plan: &Plan, program: &Program, sides: &[Side]) -> Schedule {
    let mut held: Vec<u8> = plan
        .tensors
        .iter()
        .map(|t| match t.location {
            Location::Weights { .. } => 3,
            Location::Arena { .. } => Side::Gpu.bit(),
        })
        .collect();
    for &t in &program.feeds {
        held[t.index()] = 3;
    }
    let mut out = Schedule::default();
    for (i, (node, &side)) in program.nodes.iter().zip(sides).enumerate() {
        if out.segments.last().is_none_or(|s| s.side != side) {
            out.segments.push(Segment { side, nodes: i..i, incoming: Vec::new() });
        }
        let segment = out.segments.last_mut().expect("pushed above");
        segment.nodes.end = i + 1;
        let inplace = node.op.inplace_outputs();
        let read = node.inputs.iter().chain(node.outputs.iter().enumerate().filter(|(k, _)| inplace.contains(k)).map(|(_, t)| t));
        for &t in read {
            if held[t.index()] & side.bit() == 0 {
                held[t.index()] |= side.bit();
                if !segment.incoming.contains(&t) {
                    segment.incoming.push(t);
                }
            }
        }
        for &t in &node.outputs {
            held[t.index()] = side.bit();
        }
    }
    for (i, t) in plan.tensors.iter().enumerate() {
        let Location::Arena { offset } = t.location else { continue };
        let id = TensorId(i as u32);
        let keep = offset < plan.persistent_bytes || program.fetches.contains(&id);
        if keep && held[i] == Side::Cpu.bit() {
            out.copy_back.push(id);
        }
    }
    out
}
