//! Board descriptions (ISA, cores, memory, throughput) and a roofline cost model, as plain data.
//!
//! The compiler records the name of the target a plan is built for (`pock compile --target`); the
//! engine looks the name up here to warn when a plan runs on another ISA; the memory budget check
//! and `pock inspect`'s step-time estimate read the memory and throughput figures.
//!
//! Figures are nominal: peak numbers come from vendor datasheets (cited next to each board), and
//! the sustained figures the cost model uses are stated fractions of them, to be replaced by
//! measurements as boards are benchmarked. They are good to a factor of two, no better.
//!
//! This crate has no dependencies and builds without `std` (with `alloc`), so the engine core can use it on any
//! target.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;

/// An instruction set a plan can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Whatever machine runs the plan (the `host` target): no ISA is assumed.
    Native,
    /// 64-bit Arm (Armv8-A and later, NEON always present).
    Aarch64,
    /// 32-bit Arm A-profile with NEON (Raspberry Pi OS 32-bit).
    Armv7,
    /// 32-bit Arm M-profile with a single-precision FPU (Cortex-M4F/M7), bare metal.
    Thumbv7em,
}

impl Isa {
    /// The name shown to users (`aarch64`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Native => "native",
            Isa::Aarch64 => "aarch64",
            Isa::Armv7 => "armv7",
            Isa::Thumbv7em => "thumbv7em",
        }
    }

    /// Rust's `target_arch` for this ISA (`std::env::consts::ARCH` of a binary built for it);
    /// `None` for [`Isa::Native`]. Armv7 and Thumbv7em are both `arm`.
    pub fn arch(self) -> Option<&'static str> {
        match self {
            Isa::Native => None,
            Isa::Aarch64 => Some("aarch64"),
            Isa::Armv7 | Isa::Thumbv7em => Some("arm"),
        }
    }

    /// Whether a binary whose `target_arch` is `arch` runs code for this ISA natively. A plan
    /// itself is portable (the same file trains anywhere); what differs on another ISA is the speed
    /// and memory the plan was sized for.
    pub fn runs_on(self, arch: &str) -> bool {
        self.arch().is_none_or(|a| a == arch)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Short name used on the command line (`--target rpi4`) and recorded in the plan.
    pub name: &'static str,
    pub description: &'static str,
    pub isa: Isa,
    /// The Rust target triple to build `pock` (or the engine core, bare metal) for this board;
    /// `None` for the host.
    pub rust_target: Option<&'static str>,
    /// Cores the engine can use.
    pub cores: u32,
    /// Memory available to a training process, bytes (less than the board's RAM: the operating
    /// system and other processes keep the rest).
    pub memory_bytes: u64,
    /// Sustained f32 throughput across all cores, GFLOP/s.
    pub gflops: f64,
    /// Sustained memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    /// The board's GPU, where pock can run nodes through its `wgpu` backend; `None`: CPU only.
    pub gpu: Option<Gpu>,
}

/// A GPU next to a target's CPU, as the placement pass (`pock compile --placement`) sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    pub description: &'static str,
    /// Sustained f32 throughput, GFLOP/s.
    pub gflops: f64,
    /// Sustained bandwidth of the GPU's memory, GB/s.
    pub bandwidth_gbs: f64,
    /// Host-device copy bandwidth, GB/s; `None` on a unified-memory board (the CPU and the GPU
    /// share the memory: the cost model counts a transfer's bytes as free, only its wait costs).
    pub link_gbs: Option<f64>,
    /// One wait of the host for the device (submit, fence, map), µs.
    pub sync_us: f64,
    /// The fixed cost of one node's dispatch, µs.
    pub dispatch_us: f64,
}

impl Gpu {
    /// The roofline time of one op on the GPU (and its dispatch), ms.
    pub fn op_ms(&self, work: OpWork) -> f64 {
        let compute = work.flops as f64 / (self.gflops * 1e9);
        let memory = work.bytes as f64 / (self.bandwidth_gbs * 1e9);
        compute.max(memory) * 1e3 + self.dispatch_us * 1e-3
    }

    /// The time to copy `bytes` between the host and the device (not counting the wait), ms.
    pub fn copy_ms(&self, bytes: u64) -> f64 {
        self.link_gbs.map_or(0.0, |gbs| bytes as f64 / (gbs * 1e9) * 1e3)
    }
}

/// The work of one op in a step: its arithmetic and the bytes it reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpWork {
    pub flops: u64,
    pub bytes: u64,
}

/// A step-time estimate: the sum over ops of the slower of each op's arithmetic and traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepEstimate {
    /// Estimated time of the step, ms.
    pub ms: f64,
    /// Of `ms`, the time spent in ops limited by arithmetic, ms.
    pub compute_bound_ms: f64,
    /// Of `ms`, the time spent in ops limited by memory traffic, ms.
    pub memory_bound_ms: f64,
    /// The ops limited by arithmetic and by traffic.
    pub compute_bound_ops: usize,
    pub memory_bound_ops: usize,
    /// Total arithmetic and traffic of the step.
    pub flops: u64,
    pub bytes: u64,
    /// Cores the estimate assumed.
    pub threads: u32,
}

impl Target {
    /// The roofline time of one op on `threads` cores (at most the board's), ms. Arithmetic scales
    /// with the cores used; bandwidth is shared, so it does not.
    pub fn op_ms(&self, work: OpWork, threads: u32) -> f64 {
        let (compute, memory) = self.op_parts_s(work, threads);
        compute.max(memory) * 1e3
    }

    fn op_parts_s(&self, work: OpWork, threads: u32) -> (f64, f64) {
        let used = threads.clamp(1, self.cores.max(1)) as f64;
        let gflops = self.gflops * used / self.cores.max(1) as f64;
        (work.flops as f64 / (gflops * 1e9), work.bytes as f64 / (self.bandwidth_gbs * 1e9))
    }

    /// Estimates a step from the work of each of its ops, run one after the other on `threads`
    /// cores: each op takes the slower of its arithmetic and its traffic (ops do not overlap).
    pub fn estimate_step(&self, ops: impl IntoIterator<Item = OpWork>, threads: u32) -> StepEstimate {
        let mut e = StepEstimate { threads: threads.clamp(1, self.cores.max(1)), ..StepEstimate::default() };
        for work in ops {
            let (compute, memory) = self.op_parts_s(work, threads);
            e.flops = e.flops.saturating_add(work.flops);
            e.bytes = e.bytes.saturating_add(work.bytes);
            if compute >= memory {
                e.compute_bound_ms += compute * 1e3;
                e.compute_bound_ops += 1;
            } else {
                e.memory_bound_ms += memory * 1e3;
                e.memory_bound_ops += 1;
            }
        }
        e.ms = e.compute_bound_ms + e.memory_bound_ms;
        e
    }

    /// Whether a binary whose `target_arch` is `arch` runs this target's ISA natively.
    pub fn runs_on(&self, arch: &str) -> bool {
        self.isa.runs_on(arch)
    }
}

const GIB: u64 = 1 << 30;

/// The boards pock knows.
///
/// Peak f32 throughput is cores x clock x f32 FLOP per cycle (a 128-bit NEON FMA is 8 FLOP); the
/// sustained figure is a stated fraction of it (gemm-bound training reaches a third to a half of
/// peak on these cores). Peak bandwidth is the memory bus width x transfer rate; the sustained
/// figure is about half of it, what streaming copies reach on LPDDR4/5 boards.
pub const TARGETS: &[Target] = &[
    Target {
        name: "host",
        description: "the machine running the compiler (x86_64 or aarch64)",
        isa: Isa::Native,
        rust_target: None,
        cores: 2,
        memory_bytes: 8 * GIB,
        gflops: 150.0,
        bandwidth_gbs: 20.0,
        gpu: None,
    },
    // The host's CPU with a discrete GPU on PCIe 4.0 x16 (32 GB/s peak each way, about 25
    // sustained): an RTX 3060-class card, 12.7 TFLOP/s f32 peak (NVIDIA's specification), a
    // third sustained; 360 GB/s GDDR6 peak, 250 sustained. For placing plans on a desktop GPU.
    Target {
        name: "gpu",
        description: "the host's CPU with a discrete GPU over PCIe (RTX 3060 class)",
        isa: Isa::Native,
        rust_target: None,
        cores: 2,
        memory_bytes: 8 * GIB,
        gflops: 150.0,
        bandwidth_gbs: 20.0,
        gpu: Some(Gpu {
            description: "discrete GPU, 12.7 TFLOP/s f32 peak, PCIe 4.0 x16",
            gflops: 4000.0,
            bandwidth_gbs: 250.0,
            link_gbs: Some(25.0),
            sync_us: 20.0,
            dispatch_us: 5.0,
        }),
    },
    // Raspberry Pi 4 Model B product brief: 4x Cortex-A72 at 1.5 GHz (1.8 GHz on later boards),
    // LPDDR4-3200 on a 32-bit bus (12.8 GB/s peak), 1 to 8 GB. A72: one 128-bit FMA per cycle,
    // 8 FLOP -> 48 GFLOP/s peak; HPL reaches about 8-12 GFLOP/s in f64 (feiereisen.net, 2022), so
    // 16 GFLOP/s f32 sustained. The 4 GB board, 3 GiB left to pock.
    Target {
        name: "rpi4",
        description: "Raspberry Pi 4 (4x Cortex-A72 at 1.5 GHz, 4 GB LPDDR4)",
        isa: Isa::Aarch64,
        rust_target: Some("aarch64-unknown-linux-gnu"),
        cores: 4,
        memory_bytes: 3 * GIB,
        gflops: 16.0,
        bandwidth_gbs: 4.0,
        gpu: None,
    },
    // Raspberry Pi 5 product brief: 4x Cortex-A76 at 2.4 GHz, LPDDR4X-4267 on a 32-bit bus
    // (17 GB/s peak), 2 to 16 GB. A76: two 128-bit FMA pipes, 16 FLOP/cycle -> 154 GFLOP/s peak;
    // a third of it sustained. The 8 GB board, 6 GiB left to pock.
    Target {
        name: "rpi5",
        description: "Raspberry Pi 5 (4x Cortex-A76 at 2.4 GHz, 8 GB LPDDR4X)",
        isa: Isa::Aarch64,
        rust_target: Some("aarch64-unknown-linux-gnu"),
        cores: 4,
        memory_bytes: 6 * GIB,
        gflops: 50.0,
        bandwidth_gbs: 8.0,
        gpu: None,
    },
    // NVIDIA Jetson Nano module data sheet: 4x Cortex-A57 at 1.43 GHz, 4 GB LPDDR4 (25.6 GB/s).
    // A57: 8 FLOP/cycle -> 46 GFLOP/s peak. Its Maxwell GPU is not described yet (CPU only).
    Target {
        name: "jetson-nano",
        description: "Jetson Nano CPU (4x Cortex-A57 at 1.43 GHz, 4 GB LPDDR4)",
        isa: Isa::Aarch64,
        rust_target: Some("aarch64-unknown-linux-gnu"),
        cores: 4,
        memory_bytes: 3 * GIB,
        gflops: 12.0,
        bandwidth_gbs: 8.0,
        gpu: None,
    },
    // NVIDIA Jetson Orin Nano series data sheet: 6x Cortex-A78AE at 1.5 GHz (1.7 GHz with the
    // "Super" clocks), 8 GB 128-bit LPDDR5 at 68 GB/s (102 GB/s "Super") shared with the GPU.
    // A78: 16 FLOP/cycle -> 144 GFLOP/s peak, 60 sustained; 30 GB/s of the bus for the CPU.
    // 6 GiB of the shared 8 GB left to pock.
    Target {
        name: "jetson-orin-nano",
        description: "Jetson Orin Nano 8GB (6x Cortex-A78AE at 1.5 GHz, 8 GB LPDDR5)",
        isa: Isa::Aarch64,
        rust_target: Some("aarch64-unknown-linux-gnu"),
        cores: 6,
        memory_bytes: 6 * GIB,
        gflops: 60.0,
        bandwidth_gbs: 30.0,
        // Orin Nano 8GB data sheet: 1024-core Ampere GPU at 625 MHz, 2 FLOP per core per cycle
        // -> 1.28 TFLOP/s f32 peak; a third sustained through Vulkan compute. It shares the
        // LPDDR5 (68 GB/s peak) with the CPU: 40 GB/s for the GPU, and no copy over a bus.
        gpu: Some(Gpu {
            description: "Ampere GPU, 1024 cores at 625 MHz, unified LPDDR5",
            gflops: 400.0,
            bandwidth_gbs: 40.0,
            link_gbs: None,
            sync_us: 50.0,
            dispatch_us: 10.0,
        }),
    },
    // A mid-range 64-bit Android phone: two big cores of the Cortex-A78 class at 2.4 GHz (the
    // little A55 cores are not counted: training runs on the big cluster), LPDDR4X-4266 on 2x16
    // bits (17 GB/s peak). 2 x 2.4 x 16 = 77 GFLOP/s peak, 30 sustained (phones throttle).
    // Android kills an app whose memory grows far past its share; 1 GiB is a safe share of a
    // 6 GB phone for an app in the foreground.
    Target {
        name: "android-arm64",
        description: "mid-range Android phone, 64-bit (2 big Cortex-A78-class cores at 2.4 GHz)",
        isa: Isa::Aarch64,
        rust_target: Some("aarch64-linux-android"),
        cores: 2,
        memory_bytes: GIB,
        gflops: 30.0,
        bandwidth_gbs: 8.0,
        // A mid-range phone GPU of the Mali-G68 / Adreno 642L class: about 0.5 TFLOP/s f32
        // peak (vendors' figures), a quarter sustained in compute shaders (phones throttle);
        // the same LPDDR4X as the CPU (unified memory), 10 GB/s of it for the GPU. Android's
        // Vulkan drivers make a host wait costly: 100 µs.
        gpu: Some(Gpu {
            description: "mid-range mobile GPU (Mali-G68 / Adreno 642L class), unified LPDDR4X",
            gflops: 120.0,
            bandwidth_gbs: 10.0,
            link_gbs: None,
            sync_us: 100.0,
            dispatch_us: 20.0,
        }),
    },
    // STM32F746 data sheet (DS10916): Cortex-M7 at 216 MHz with a single-precision FPU, 320 KB
    // SRAM, of which 256 KB are given to training (the Tiny Training Engine's budget on this
    // chip). One f32 FMA per cycle -> 0.43 GFLOP/s peak, about half sustained (no SIMD for f32);
    // SRAM on the 64-bit AXI bus at 216 MHz (1.7 GB/s peak).
    Target {
        name: "cortex-m7",
        description: "Cortex-M7 microcontroller (STM32F746 at 216 MHz), 256 KB SRAM for training",
        isa: Isa::Thumbv7em,
        rust_target: Some("thumbv7em-none-eabihf"),
        cores: 1,
        memory_bytes: 256 << 10,
        gflops: 0.2,
        bandwidth_gbs: 0.8,
        gpu: None,
    },
];

pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The known targets' names, in [`TARGETS`] order.
pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert_eq!(find(t.name), Some(t));
            assert!(TARGETS[..i].iter().all(|u| u.name != t.name), "{} listed twice", t.name);
        }
        assert_eq!(find("toaster"), None);
    }

    #[test]
    fn the_boards_of_the_issue_are_known() {
        for name in ["rpi4", "rpi5", "jetson-orin-nano", "android-arm64", "cortex-m7"] {
            let t = find(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(t.cores >= 1 && t.memory_bytes > 0 && t.gflops > 0.0 && t.bandwidth_gbs > 0.0, "{name}: {t:?}");
            assert!(t.rust_target.is_some(), "{name} has no Rust target");
        }
        assert_eq!(find("cortex-m7").unwrap().memory_bytes, 256 * 1024);
        assert_eq!(find("cortex-m7").unwrap().isa, Isa::Thumbv7em);
    }

    #[test]
    fn rust_targets_agree_with_isas() {
        for t in TARGETS {
            match (t.isa, t.rust_target) {
                (Isa::Native, None) => {}
                (isa, Some(triple)) => {
                    let arch = triple.split('-').next().unwrap();
                    let arch = if arch.starts_with("thumb") || arch.starts_with("armv7") { "arm" } else { arch };
                    assert_eq!(isa.arch(), Some(arch), "{}: {triple}", t.name);
                }
                (isa, None) => panic!("{}: ISA {isa:?} without a Rust target", t.name),
            }
        }
    }

    #[test]
    fn isa_matching() {
        assert!(Isa::Native.runs_on("x86_64") && Isa::Native.runs_on("aarch64"));
        assert!(Isa::Aarch64.runs_on("aarch64"));
        assert!(!Isa::Aarch64.runs_on("x86_64") && !Isa::Aarch64.runs_on("arm"));
        assert!(Isa::Armv7.runs_on("arm") && !Isa::Armv7.runs_on("aarch64"));
        assert!(Isa::Thumbv7em.runs_on("arm") && !Isa::Thumbv7em.runs_on("x86_64"));
    }

    fn board() -> Target {
        Target {
            name: "test",
            description: "",
            isa: Isa::Aarch64,
            rust_target: None,
            cores: 4,
            memory_bytes: 1 << 20,
            gflops: 8.0,
            bandwidth_gbs: 2.0,
            gpu: None,
        }
    }

    #[test]
    fn an_op_takes_the_slower_of_arithmetic_and_traffic() {
        let t = board();
        // 8e9 FLOP on all 4 cores at 8 GFLOP/s: 1 s; 1e9 bytes at 2 GB/s: 0.5 s.
        assert_eq!(t.op_ms(OpWork { flops: 8_000_000_000, bytes: 1_000_000_000 }, 4), 1000.0);
        // On one core arithmetic is 4x slower; bandwidth is shared, so traffic is not.
        assert_eq!(t.op_ms(OpWork { flops: 8_000_000_000, bytes: 1_000_000_000 }, 1), 4000.0);
        assert_eq!(t.op_ms(OpWork { flops: 0, bytes: 4_000_000_000 }, 1), 2000.0);
        // More threads than cores count as all cores.
        assert_eq!(t.op_ms(OpWork { flops: 8_000_000_000, bytes: 0 }, 64), 1000.0);
    }

    #[test]
    fn a_step_sums_each_op_roofline_not_the_totals() {
        let t = board();
        // A compute-heavy op and a traffic-heavy op: the totals alone (9e9 FLOP, 3e9 bytes on 4
        // cores: max(1.125 s, 1.5 s) = 1.5 s) would hide that they do not overlap.
        let ops = [OpWork { flops: 8_000_000_000, bytes: 1_000_000 }, OpWork { flops: 1_000_000_000, bytes: 3_000_000_000 }];
        let e = t.estimate_step(ops, 4);
        assert_eq!((e.compute_bound_ops, e.memory_bound_ops), (1, 1));
        assert_eq!(e.compute_bound_ms, 1000.0);
        assert_eq!(e.memory_bound_ms, 1500.0);
        assert_eq!(e.ms, 2500.0);
        assert_eq!((e.flops, e.bytes, e.threads), (9_000_000_000, 3_001_000_000, 4));
        assert_eq!(t.estimate_step([], 1), StepEstimate { threads: 1, ..StepEstimate::default() });
    }
}
