//! Device backends, and what the GPU can run.
//!
//! The WGSL kernels and the lowering of a node to them (`kernels`, `families`, `typed`, `conv_gemm`, `wide`) build with `std`
//! alone, without the `wgpu` feature, so that the compiler (built without a GPU) asks the same
//! lowering that the GPU backend runs whether a node has a GPU kernel: [`gpu_supports`], one
//! list that cannot drift from the backend's.
#[path = "wgpu/conv_gemm.rs"]
mod conv_gemm;
#[path = "wgpu/families.rs"]
mod families;
#[path = "wgpu/kernels.rs"]
pub mod kernels;
#[path = "wgpu/quant.rs"]
mod quant;
#[path = "wgpu/typed.rs"]
mod typed;
#[cfg(feature = "wgpu")]
pub mod wgpu;
#[path = "wgpu/wide.rs"]
pub mod wide;

use crate::plan::{Node, Plan};

/// Whether the GPU backend has kernels for `node` of `plan` (its op and its tensors' dtypes),
/// or why not: the error the GPU backend's load would give for it.
pub fn gpu_supports(plan: &Plan, node: &Node) -> Result<(), alloc::string::String> {
    // No device here: the limit of the most restrictive one pock supports (lavapipe's), so a
    // plan placed for a generic GPU runs on every Vulkan.
    let at = kernels::Addresses { plan, weights_at: plan.arena_bytes.div_ceil(8) * 8, loop_limit: wide::LOOP_LIMIT };
    kernels::lower(node, &at).map(|_| ())
}
