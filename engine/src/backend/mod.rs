//! GPU backends.
#[cfg(feature = "wgpu")]
pub mod wgpu;
