//! Board descriptions: ISA, cores, memory and backends, plus a first-order cost model.
//!
//! The compiler records the target a plan was built for; later issues use the memory figure for
//! memory-budgeted sparse schemes and the throughput figures to estimate step time.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Short name used on the command line (`--target rpi4`).
    pub name: &'static str,
    pub description: &'static str,
    pub isa: &'static str,
    pub cores: u32,
    /// Memory available to a training process, bytes.
    pub memory_bytes: u64,
    /// Sustained f32 matmul throughput across all cores, GFLOP/s (for step-time estimates).
    pub gflops: f64,
    /// Sustained memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
}

impl Target {
    /// A roofline estimate of how long `flops` of arithmetic over `bytes` of traffic take, in ms.
    pub fn estimate_ms(&self, flops: u64, bytes: u64) -> f64 {
        let compute = flops as f64 / (self.gflops * 1e9);
        let memory = bytes as f64 / (self.bandwidth_gbs * 1e9);
        compute.max(memory) * 1e3
    }
}

/// The boards pock knows. Figures are nominal vendor/datasheet values, to be replaced with
/// measurements as board support lands.
pub const TARGETS: &[Target] = &[
    Target {
        name: "host",
        description: "the machine running the compiler (x86_64 or aarch64)",
        isa: "native",
        cores: 2,
        memory_bytes: 8 << 30,
        gflops: 150.0,
        bandwidth_gbs: 20.0,
    },
    Target {
        name: "rpi4",
        description: "Raspberry Pi 4 (Cortex-A72, 4 cores)",
        isa: "aarch64",
        cores: 4,
        memory_bytes: 2 << 30,
        gflops: 20.0,
        bandwidth_gbs: 4.0,
    },
    Target {
        name: "rpi5",
        description: "Raspberry Pi 5 (Cortex-A76, 4 cores)",
        isa: "aarch64",
        cores: 4,
        memory_bytes: 4 << 30,
        gflops: 50.0,
        bandwidth_gbs: 10.0,
    },
    Target {
        name: "jetson-nano",
        description: "Jetson Nano CPU (Cortex-A57, 4 cores)",
        isa: "aarch64",
        cores: 4,
        memory_bytes: 2 << 30,
        gflops: 12.0,
        bandwidth_gbs: 8.0,
    },
    Target {
        name: "cortex-m7",
        description: "Cortex-M7 microcontroller with 256 KB SRAM",
        isa: "thumbv7em",
        cores: 1,
        memory_bytes: 256 << 10,
        gflops: 0.2,
        bandwidth_gbs: 0.4,
    },
];

pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}
