//! `zoo:mlp`: a stack of `nn.Linear` and `nn.ReLU` in an `nn.Sequential` named `layers`.

use pock_compiler::{ForwardGraph, Task};

use crate::builder::{Builder, WeightInit};
use crate::{ModelError, Params};

/// `depth` hidden layers of `hidden` units: `layers.0` Linear, `layers.1` ReLU, `layers.2`
/// Linear, ..., and the output Linear at `layers.{2 * depth}`, with PyTorch's default init.
pub fn build(params: &Params, batch: usize, seed: u64) -> Result<ForwardGraph, ModelError> {
    let inputs = params.usize_in("inputs", 1, usize::MAX)?;
    let hidden = params.usize_in("hidden", 1, usize::MAX)?;
    let depth = params.usize_in("depth", 0, 1000)?;
    let task_name = params.choice("task", &["classification", "regression"])?;
    let (outputs, task) = if task_name == "classification" {
        params.reject_if_set("outputs", "outputs applies only to task=regression; a classifier has `classes` outputs")?;
        let classes = params.usize_in("classes", 2, usize::MAX)?;
        (classes, Task::Classification { classes })
    } else {
        params.reject_if_set("classes", "classes applies only to task=classification; a regressor has `outputs` outputs")?;
        (params.usize_in("outputs", 1, usize::MAX)?, Task::Regression)
    };

    let mut b = Builder::new(seed);
    let input = b.input(vec![batch, inputs]);
    let mut x = input;
    for i in 0..depth {
        x = b.linear(&format!("layers.{}", 2 * i), x, hidden, WeightInit::TorchDefault)?;
        x = b.relu(&format!("layers.{}", 2 * i + 1), x)?;
    }
    let output = b.linear(&format!("layers.{}", 2 * depth), x, outputs, WeightInit::TorchDefault)?;
    Ok(ForwardGraph { name: String::new(), graph: b.graph, inputs: vec![input], output, task })
}
