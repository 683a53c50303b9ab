//! Memory planning and plan emission.

use pock_engine::plan::Plan;

use crate::error::Result;
use crate::stages::TrainingGraph;

pub fn build_plan(training: TrainingGraph) -> Result<Plan> {
    todo!()
}
