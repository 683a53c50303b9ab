//! Compile-time reverse-mode autodiff.

use crate::error::Result;
use crate::stages::{CompileOptions, ForwardGraph, TrainingGraph};

pub fn build_training(forward: ForwardGraph, options: CompileOptions) -> Result<TrainingGraph> {
    todo!()
}
