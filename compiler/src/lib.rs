//! pock's ahead-of-time training compiler.
//!
//! The pipeline is a chain of stage types, each consumed by the next step:
//! [`ForwardGraph`] (a model: forward nodes, its inputs, the trained output) ->
//! [`ForwardGraph::into_training`] (loss, compile-time autodiff pruned to what trainable
//! parameters need, 1-bit ReLU/ReLU6 masks, optimizer ops, conv + bias + activation fusion, reordering) -> [`TrainingGraph`] ->
//! [`TrainingGraph::into_plan`] (memory planning, weight layout) -> [`pock_engine::Plan`].

pub mod accounting;
pub mod autodiff;
pub mod cost;
pub mod error;
pub mod fold_norm;
pub mod fuse;
pub mod gradcheck;
pub mod interp;
pub mod ir;
pub mod mask;
pub mod memory;
pub mod onnx;
pub mod ops;
pub mod optimizer;
pub mod placement;
pub mod quantize;
pub mod schedule;
pub mod scheme;
pub mod stages;

pub use error::{CompileError, Result};
pub use memory::CompiledPlan;
pub use scheme::{ChannelRule, ChannelSelect, UpdatePreset, UpdateScheme};
pub use stages::{CompileOptions, ForwardGraph, Task, TrainingGraph};
