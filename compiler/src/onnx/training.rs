//! The training set-up of an imported model: which output is trained, and with which loss.
//!
//! The loss is `--loss cross-entropy|mse` on the output chosen with `--output NAME` (default: the
//! model's only output). Cross-entropy is over the output's last axis, of any rank (`[batch,
//! classes]` for a classifier, `[batch, time, vocab]` for a language model), with int64 labels of
//! the output's shape without that axis and PyTorch's `ignore_index` -100.
//!
//! A graph whose chosen output is already a loss, a `SoftmaxCrossEntropyLoss` node or a
//! `NegativeLogLikelihoodLoss` node reading a `LogSoftmax` (opset 13+), is accepted as it is: the
//! loss node (and that `LogSoftmax`) are not imported, their scores become the trained output,
//! their labels input becomes the plan's target rather than a data input, and their
//! `ignore_index` and `reduction` (only `mean`) carry over. ONNX puts the class axis at 1
//! (`[N, C, d1, ...]`, labels `[N, d1, ...]`); pock's loss reads it last, so a Transpose moves it
//! there when the scores have more than two axes.

use pock_engine::ops::{CrossEntropy, MoveOp};

use super::error::ImportError;
use super::{Attribute, DataType, Node, OnnxModel};
use crate::ir::{Graph, Phase, Program, TensorId};
use crate::stages::Task;

/// The loss the training set-up attaches to the chosen output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossKind {
    /// Softmax cross-entropy over the output's last axis with int64 labels (ignore index -100).
    #[default]
    CrossEntropy,
    /// Mean squared error against float targets of the output's shape.
    Mse,
}

/// A loss node that the chosen output is the result of, to be used as the loss itself.
#[derive(Clone, Debug)]
pub(crate) struct LossNode {
    /// Indices into `model.nodes` that are not imported: the loss node, and the `LogSoftmax` that
    /// feeds a `NegativeLogLikelihoodLoss`.
    pub skip: Vec<usize>,
    /// The value holding the scores (logits), class axis 1.
    pub scores: String,
    /// The graph input holding the labels.
    pub labels: String,
    pub ignore_index: i64,
    /// For messages: the loss node's name and op type, and the opset.
    node: String,
    op_type: String,
    opset: i64,
}

/// The name of the output to train: `--output NAME`, or the model's only output.
pub(crate) fn chosen_output(model: &OnnxModel, output: Option<&str>, is_value: impl Fn(&str) -> bool) -> Result<String, ImportError> {
    let known = || model.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ");
    match (output, model.outputs.as_slice()) {
        (Some(name), _) => {
            if !model.outputs.iter().any(|o| o.name == name) && !is_value(name) {
                return Err(ImportError::UnknownOutput { name: name.to_string(), known: known() });
            }
            Ok(name.to_string())
        }
        (None, [only]) => Ok(only.name.clone()),
        (None, _) => Err(ImportError::ChooseOutput { known: known() }),
    }
}

/// Whether `name` is a value of the model (the outputs a user can choose beyond the graph's).
pub(crate) fn produced(model: &OnnxModel, name: &str) -> bool {
    model.nodes.iter().any(|n| n.outputs.iter().any(|o| o == name))
        || model.inputs.iter().any(|i| i.name == name)
        || model.initializer(name).is_some()
}

/// Finds the loss node whose first output is `output`, if any, and checks that pock can train it
/// as it is.
pub(crate) fn find_loss_node(model: &OnnxModel, output: &str, loss: LossKind) -> Result<Option<LossNode>, ImportError> {
    let default_domain = |n: &Node| n.domain.is_empty() || n.domain == "ai.onnx";
    let Some(index) = model.nodes.iter().position(|n| {
        default_domain(n)
            && matches!(n.op_type.as_str(), "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss")
            && n.outputs.first().is_some_and(|o| o == output)
    }) else {
        return Ok(None);
    };
    let node = &model.nodes[index];
    let opset = model.opset_of(&node.domain);
    let refuse = |detail: String| ImportError::NodeImport { node: node.name.clone(), op_type: node.op_type.clone(), opset, detail };
    if loss == LossKind::Mse {
        return Err(refuse(format!(
            "the chosen output '{output}' is already a loss, so --loss mse cannot be attached to it; leave --loss out to train this loss, \
             or choose the model's logits with --output NAME"
        )));
    }
    match node.attribute("reduction") {
        None => {}
        Some(Attribute::String(s)) if s == b"mean" => {}
        Some(other) => {
            let shown = match other {
                Attribute::String(s) => String::from_utf8_lossy(s).into_owned(),
                other => format!("{other:?}"),
            };
            return Err(refuse(format!(
                "reduction '{shown}' is not supported: pock trains the mean loss; re-export with reduction='mean' (PyTorch's default)"
            )));
        }
    }
    let ignore_index = match node.attribute("ignore_index") {
        Some(Attribute::Int(i)) => *i,
        Some(other) => return Err(refuse(format!("attribute ignore_index is {other:?}, not an integer; the model is malformed"))),
        // Without the attribute every label must be a class. No label equals i64::MIN (the
        // kernel would refuse it as out of range otherwise, which is then the only difference).
        None => i64::MIN,
    };
    if node.inputs.get(2).is_some_and(|w| !w.is_empty()) {
        return Err(refuse(
            "class weights (the third input) are not supported: pock trains the unweighted mean; re-export without weight=".into(),
        ));
    }
    // SoftmaxCrossEntropyLoss's optional second output (the log-probabilities) must not be read.
    if let Some(log_prob) = node.outputs.get(1).filter(|o| !o.is_empty()) {
        let read = model.nodes.iter().any(|n| n.inputs.contains(log_prob)) || model.outputs.iter().any(|o| &o.name == log_prob);
        if read {
            return Err(refuse(format!(
                "its log-probability output '{log_prob}' is used, which pock cannot keep once the loss node becomes the plan's loss"
            )));
        }
    }
    let (Some(scores), Some(labels)) = (node.inputs.first(), node.inputs.get(1)) else {
        return Err(refuse("it needs scores and labels inputs; the model is malformed".into()));
    };
    let Some(label_input) = model.inputs.iter().find(|i| &i.name == labels) else {
        return Err(refuse(format!(
            "its labels '{labels}' are computed inside the graph; pock feeds labels as the target, so they must be a graph input"
        )));
    };
    if label_input.dtype.is_some_and(|d| d != DataType::I64) {
        return Err(refuse(format!(
            "its labels '{labels}' are {}; pock's labels are int64, so re-export them as torch.long",
            label_input.dtype.map_or_else(|| "untyped".to_string(), DataType::name)
        )));
    }
    let mut skip = vec![index];
    let mut scores = scores.clone();
    if node.op_type == "NegativeLogLikelihoodLoss" {
        // NLL of LogSoftmax over the class axis is softmax cross-entropy of the LogSoftmax's input.
        let producer = model.nodes.iter().position(|n| n.outputs.first() == Some(&scores));
        let log_softmax = producer.filter(|&p| {
            let n = &model.nodes[p];
            default_domain(n) && n.op_type == "LogSoftmax" && matches!(n.attribute("axis"), Some(Attribute::Int(1)))
        });
        let Some(p) = log_softmax else {
            return Err(refuse(format!(
                "its input '{scores}' is not a LogSoftmax over axis 1; pock trains NegativeLogLikelihoodLoss only as the cross-entropy \
                 of LogSoftmax(x, axis=1), so export F.cross_entropy(x, y) or F.nll_loss(F.log_softmax(x, 1), y)"
            )));
        };
        let others_read = model.nodes.iter().enumerate().any(|(i, n)| i != index && n.inputs.contains(&scores))
            || model.outputs.iter().any(|o| o.name == scores);
        if others_read {
            return Err(refuse(format!(
                "its LogSoftmax output '{scores}' is also used elsewhere; pock would have to keep it as a second loss"
            )));
        }
        skip.push(p);
        scores = model.nodes[p].inputs.first().cloned().unwrap_or_default();
    }
    Ok(Some(LossNode { skip, scores, labels: labels.clone(), ignore_index, node: node.name.clone(), op_type: node.op_type.clone(), opset }))
}

/// The trained output and its task for the chosen `output` (the output value itself, or the
/// scores of the loss node it is the result of).
pub(crate) fn attach_loss(
    graph: &mut Graph,
    output: TensorId,
    output_name: &str,
    loss: LossKind,
    loss_node: Option<&LossNode>,
    label_shape: Option<&[usize]>,
) -> Result<(TensorId, Task), ImportError> {
    let shape = graph.shape(output).to_vec();
    let Some(node) = loss_node else {
        return match loss {
            LossKind::Mse => Ok((output, Task::Regression)),
            LossKind::CrossEntropy => match shape[..] {
                [_, .., classes] => Ok((output, Task::CrossEntropy { classes, ignore_index: CrossEntropy::DEFAULT_IGNORE_INDEX })),
                _ => Err(ImportError::LossShape { output: output_name.to_string(), shape }),
            },
        };
    };
    let refuse =
        |detail: String| ImportError::NodeImport { node: node.node.clone(), op_type: node.op_type.clone(), opset: node.opset, detail };
    if shape.len() < 2 {
        return Err(refuse(format!("its scores '{}' have shape {shape:?}; they need [batch, classes, ...]", node.scores)));
    }
    // ONNX's class axis is 1; pock's loss reads the last one.
    let logits = if shape.len() == 2 {
        output
    } else {
        let perm: Vec<usize> = [0].into_iter().chain(2..shape.len()).chain([1]).collect();
        let name = format!("{}.classes_last", node.scores);
        graph.emit(name, MoveOp::Transpose { perm }, &[output], Phase::Forward, Program::Train).map_err(|e| refuse(e.to_string()))?[0]
    };
    let classes = shape[1];
    let want: Vec<usize> = [shape[0]].into_iter().chain(shape[2..].iter().copied()).collect();
    if let Some(labels) = label_shape.filter(|l| *l != want.as_slice()) {
        return Err(refuse(format!(
            "its labels '{}' have shape {labels:?}, but scores {shape:?} need labels {want:?}; fix the labels' shape with --input-shape {}=...",
            node.labels, node.labels
        )));
    }
    Ok((logits, Task::CrossEntropy { classes, ignore_index: node.ignore_index }))
}
