//! Per-node placement (PockEngine's backend switching): which side, the CPU or the GPU, runs each
//! node of a plan compiled for a target with a GPU.
//!
//! Runs on the finished plan (after memory planning, which placement does not change: the host
//! keeps a mirror of the device arena, see `pock_engine::placement`). Each node gets a time on
//! each side from the target's roofline ([`crate::cost::node_work`], the CPU's figures and the
//! GPU's, [`pock_targets::Gpu`]); a node without a GPU kernel (the engine's own lowering says so:
//! `pock_engine::backend::gpu_supports`), or whose op is named in `--place-cpu`, can only run on
//! the CPU. A dynamic programme over each program's node order then picks a side per node,
//! minimising the node times plus, at every change of side, the cost of the switch: the bytes of
//! the switching node's inputs over the host-device link (free on a unified-memory board) and,
//! into the CPU, one wait for the device. That switch cost is an estimate (the values that
//! really cross depend on the sides of their producers); the chosen sides are then costed
//! exactly, with the copies `pock_engine::placement::schedule` plans for them, and compared with
//! all-CPU and all-GPU placements, and the cheapest of the three is kept.

use pock_engine::exec::ProgramKind;
use pock_engine::placement::{schedule, Placement, PlacementEstimate, Side};
use pock_engine::plan::{Location, Program};
use pock_engine::Plan;
use pock_targets::{Gpu, Target};

use crate::error::{CompileError, Result};

/// `pock compile --placement`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlacementMode {
    /// The cost model decides, for a target with a GPU; a target without one gets no placement.
    #[default]
    Auto,
    /// Every node on the CPU.
    Cpu,
    /// Every node that has a GPU kernel on the GPU (except the ops named in `force_cpu`); the
    /// others on the CPU.
    Gpu,
}

/// How the compiler places nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementOptions {
    pub mode: PlacementMode,
    /// Op names (`MaxPool2d`, `Gather`) whose nodes run on the CPU whatever the cost model says
    /// (`--place-cpu`; for tests and experiments).
    pub force_cpu: Vec<String>,
}

/// The per-node costs of one program on a target, ms.
struct Costs {
    cpu: Vec<f64>,
    /// `f64::INFINITY` where the node cannot run on the GPU or is forced onto the CPU.
    gpu: Vec<f64>,
    /// The GPU time whether forced or not (`f64::INFINITY` without a GPU kernel): the all-GPU
    /// estimate.
    gpu_kernel: Vec<f64>,
    to_cpu: Vec<f64>,
    to_gpu: Vec<f64>,
}

fn costs(plan: &Plan, program: &Program, target: &Target, gpu: &Gpu, force_cpu: &[String]) -> Costs {
    let mut c = Costs { cpu: vec![], gpu: vec![], gpu_kernel: vec![], to_cpu: vec![], to_gpu: vec![] };
    for node in &program.nodes {
        let work = crate::cost::node_work(plan, node);
        c.cpu.push(target.op_ms(work, target.cores));
        let kernel = if pock_engine::backend::gpu_supports(plan, node).is_ok() { gpu.op_ms(work) } else { f64::INFINITY };
        c.gpu_kernel.push(kernel);
        c.gpu.push(if force_cpu.iter().any(|n| n == node.op.name()) { f64::INFINITY } else { kernel });
        let bytes: u64 = node
            .inputs
            .iter()
            .filter(|&&t| matches!(plan.tensor(t).location, Location::Arena { .. }))
            .map(|&t| plan.tensor(t).bytes())
            .sum();
        c.to_gpu.push(gpu.copy_ms(bytes));
        c.to_cpu.push(gpu.copy_ms(bytes) + gpu.sync_us * 1e-3);
    }
    c
}

/// The dynamic programme: the sides minimising the sum of each node's time on its side plus the
/// switch cost at every change of side (`to_cpu[i]` when node `i` runs on the CPU after a GPU
/// node, `to_gpu[i]` the other way). Programs start on the GPU, where the persistent state lives.
/// On a tie the previous side is kept.
pub fn choose_sides(cpu: &[f64], gpu: &[f64], to_cpu: &[f64], to_gpu: &[f64]) -> Vec<Side> {
    let n = cpu.len();
    // came[i][s]: the side of node i - 1 on the best path that puts node i on side s.
    let mut came = Vec::with_capacity(n);
    let (mut on_cpu, mut on_gpu) = (f64::INFINITY, 0.0f64);
    for i in 0..n {
        let (cpu_from_cpu, cpu_from_gpu) = (on_cpu, on_gpu + to_cpu[i]);
        let (gpu_from_gpu, gpu_from_cpu) = (on_gpu, on_cpu + to_gpu[i]);
        let c = if cpu_from_cpu <= cpu_from_gpu { (cpu_from_cpu, Side::Cpu) } else { (cpu_from_gpu, Side::Gpu) };
        let g = if gpu_from_gpu <= gpu_from_cpu { (gpu_from_gpu, Side::Gpu) } else { (gpu_from_cpu, Side::Cpu) };
        on_cpu = c.0 + cpu[i];
        on_gpu = g.0 + gpu[i];
        came.push([c.1, g.1]);
    }
    let mut sides = vec![Side::Gpu; n];
    let mut side = if on_gpu <= on_cpu { Side::Gpu } else { Side::Cpu };
    for i in (0..n).rev() {
        sides[i] = side;
        side = came[i][if side == Side::Cpu { 0 } else { 1 }];
    }
    sides
}

/// The exact time of a program with `sides`: node times plus the planned copies and waits (ms),
/// and of that, the copies and waits alone.
fn program_ms(plan: &Plan, program: &Program, c: &Costs, gpu: &Gpu, sides: &[Side]) -> (f64, f64) {
    let nodes: f64 = sides.iter().enumerate().map(|(i, s)| if *s == Side::Cpu { c.cpu[i] } else { c.gpu[i] }).sum();
    let s = schedule(plan, program, sides);
    let (down, up) = s.bytes(plan);
    let transfer = gpu.copy_ms(down) + gpu.copy_ms(up) + s.syncs() as f64 * gpu.sync_us * 1e-3;
    (nodes + transfer, transfer)
}

/// Places `plan`'s nodes for `target` (see the module documentation); records nothing for a
/// target without a GPU under `Auto`.
pub fn place(plan: &mut Plan, target_name: &str, options: &PlacementOptions) -> Result<()> {
    let target = pock_targets::find(target_name);
    let Some((target, gpu)) = target.and_then(|t| t.gpu.as_ref().map(|g| (t, g))) else {
        if options.mode == PlacementMode::Auto && options.force_cpu.is_empty() {
            return Ok(());
        }
        let with_gpu: Vec<&str> = pock_targets::TARGETS.iter().filter(|t| t.gpu.is_some()).map(|t| t.name).collect();
        return Err(CompileError::Option(format!(
            "--placement and --place-cpu place nodes on a target's GPU, and --target {target_name} has none; use a target with a GPU ({})",
            with_gpu.join(", ")
        )));
    };
    for name in &options.force_cpu {
        let found = plan.all_programs().any(|(_, p)| p.nodes.iter().any(|n| n.op.name() == name));
        if !found {
            let mut ops: Vec<&str> = plan.all_programs().flat_map(|(_, p)| p.nodes.iter().map(|n| n.op.name())).collect();
            ops.sort_unstable();
            ops.dedup();
            return Err(CompileError::Option(format!(
                "--place-cpu {name}: no node of this plan has that op; its ops are {}",
                ops.join(", ")
            )));
        }
    }
    let mode = match options.mode {
        PlacementMode::Auto => "auto",
        PlacementMode::Cpu => "cpu",
        PlacementMode::Gpu => "gpu",
    };
    let mut placement = Placement {
        mode: if options.force_cpu.is_empty() {
            mode.to_string()
        } else {
            format!("{mode}, {} forced onto the CPU", options.force_cpu.join(", "))
        },
        ..Placement::default()
    };
    let (mut placed, mut all_cpu, mut all_gpu, mut transfer) = (0.0, 0.0, Some(0.0), 0.0);
    for kind in ProgramKind::ALL {
        let Some(program) = kind.of(plan) else { continue };
        let weight = if kind == ProgramKind::Apply { 1.0 / plan.training.accumulate.max(1) as f64 } else { 1.0 };
        let counted = matches!(kind, ProgramKind::Train | ProgramKind::Apply);
        let c = costs(plan, program, target, gpu, &options.force_cpu);
        let gpu_only: Vec<Side> = c.gpu.iter().map(|g| if g.is_finite() { Side::Gpu } else { Side::Cpu }).collect();
        let sides = match options.mode {
            PlacementMode::Cpu => vec![Side::Cpu; program.nodes.len()],
            PlacementMode::Gpu => gpu_only.clone(),
            PlacementMode::Auto => {
                let dp = choose_sides(&c.cpu, &c.gpu, &c.to_cpu, &c.to_gpu);
                let mut best = (program_ms(plan, program, &c, gpu, &dp).0, dp);
                for candidate in [vec![Side::Cpu; program.nodes.len()], gpu_only] {
                    let ms = program_ms(plan, program, &c, gpu, &candidate).0;
                    if ms < best.0 {
                        best = (ms, candidate);
                    }
                }
                best.1
            }
        };
        if counted {
            let (ms, t) = program_ms(plan, program, &c, gpu, &sides);
            placed += ms * weight;
            transfer += t * weight;
            all_cpu += c.cpu.iter().sum::<f64>() * weight;
            all_gpu = all_gpu.filter(|_| c.gpu_kernel.iter().all(|g| g.is_finite())).map(|a| a + c.gpu_kernel.iter().sum::<f64>() * weight);
        }
        *placement.sides_mut(kind) = sides;
    }
    placement.estimate = PlacementEstimate { placed_ms: placed, all_cpu_ms: all_cpu, all_gpu_ms: all_gpu, transfer_ms: transfer };
    plan.placement = Some(placement);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn the_programme_stays_on_one_side_when_switching_costs_more_than_it_saves() {
        // Node 2 is 1 ms cheaper on the CPU; going there and back costs 2 x 5 ms.
        let (cpu, gpu) = ([10.0, 10.0, 1.0, 10.0], [1.0, 1.0, 2.0, 1.0]);
        let sides = choose_sides(&cpu, &gpu, &[5.0; 4], &[5.0; 4]);
        assert_eq!(sides, vec![Side::Gpu; 4]);
        // With free switches (a unified-memory board with free waits), it switches.
        let sides = choose_sides(&cpu, &gpu, &[0.0; 4], &[0.0; 4]);
        assert_eq!(sides, vec![Side::Gpu, Side::Gpu, Side::Cpu, Side::Gpu]);
        // Cheap but not free switches: worth it only when the saving exceeds both of them.
        let sides = choose_sides(&cpu, &[1.0, 1.0, 9.0, 1.0], &[3.0; 4], &[3.0; 4]);
        assert_eq!(sides, vec![Side::Gpu, Side::Gpu, Side::Cpu, Side::Gpu]);
    }

    #[test]
    fn a_node_without_a_gpu_kernel_is_on_the_cpu_and_its_neighbours_follow_when_cheaper() {
        let cpu = [2.0, 2.0, 3.0, 2.0];
        let gpu = [1.0, 1.0, INF, 1.0];
        // Expensive switches: the last node stays on the CPU with the pinned one rather than
        // pay for a switch back.
        let sides = choose_sides(&cpu, &gpu, &[10.0; 4], &[10.0; 4]);
        assert_eq!(sides, vec![Side::Gpu, Side::Gpu, Side::Cpu, Side::Cpu]);
        // Free switches: only the pinned node leaves the GPU.
        let sides = choose_sides(&cpu, &gpu, &[0.0; 4], &[0.0; 4]);
        assert_eq!(sides, vec![Side::Gpu, Side::Gpu, Side::Cpu, Side::Gpu]);
    }

    #[test]
    fn an_all_cpu_program_pays_one_switch() {
        let sides = choose_sides(&[1.0, 1.0], &[5.0, 5.0], &[1.0; 2], &[1.0; 2]);
        assert_eq!(sides, vec![Side::Cpu, Side::Cpu]);
    }
}
