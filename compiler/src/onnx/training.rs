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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{import_model, Dim, ImportOptions, Tensor, TensorValues, ValueInfo};

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<(&str, Attribute)>) -> Node {
        Node::new(op, inputs, outputs, attributes)
    }

    fn value(name: &str, dtype: DataType, dims: &[usize]) -> ValueInfo {
        ValueInfo { name: name.into(), dtype: Some(dtype), shape: Some(dims.iter().map(|&d| Dim::Fixed(d)).collect()) }
    }

    /// `scores = x * w` (`x`, `w` of shape `scores`), then `loss` on `(scores, labels)`.
    fn with_loss(scores: &[usize], labels: &[usize], loss: Vec<Node>) -> OnnxModel {
        let n: usize = scores.iter().product();
        let w = Tensor { name: "w".into(), dims: scores.to_vec(), values: TensorValues::F32((0..n).map(|i| i as f32 * 0.1).collect()) };
        let mut nodes = vec![node("Mul", &["x", "w"], &["scores"], vec![])];
        nodes.extend(loss);
        OnnxModel {
            ir_version: 8,
            opset: 17,
            opset_imports: vec![(String::new(), 17)],
            producer: String::new(),
            graph_name: String::new(),
            initializers: vec![w],
            inputs: vec![value("x", DataType::F32, scores), value("labels", DataType::I64, labels)],
            outputs: vec![ValueInfo { name: "loss".into(), dtype: Some(DataType::F32), shape: Some(vec![]) }],
            value_info: vec![],
            nodes,
        }
    }

    fn sce(attributes: Vec<(&str, Attribute)>) -> Node {
        node("SoftmaxCrossEntropyLoss", &["scores", "labels"], &["loss"], attributes)
    }

    #[test]
    fn a_softmax_cross_entropy_loss_output_is_the_loss_with_its_labels_as_target() {
        // Scores [N, C, d] = [2, 3, 4]: the class axis moves last, labels [2, 4] become the target.
        let m = with_loss(
            &[2, 3, 4],
            &[2, 4],
            vec![sce(vec![("ignore_index", Attribute::Int(-1)), ("reduction", Attribute::String(b"mean".to_vec()))])],
        );
        let f = import_model(&m, "t", &ImportOptions::default()).unwrap().forward;
        assert_eq!(f.task, Task::CrossEntropy { classes: 3, ignore_index: -1 });
        assert_eq!(f.graph.shape(f.output), [2, 4, 3]);
        let inputs: Vec<&str> = f.inputs.iter().map(|&t| f.graph.tensor(t).name.as_str()).collect();
        assert_eq!(inputs, ["x"], "the labels are the target, not a data input");
        let t = f.into_training(crate::CompileOptions::default()).unwrap();
        assert_eq!(t.graph.shape(t.train_target), [2, 4]);

        // Without ignore_index every label must be a class.
        let f = import_model(&with_loss(&[2, 3], &[2], vec![sce(vec![])]), "t", &ImportOptions::default()).unwrap().forward;
        assert_eq!(f.task, Task::CrossEntropy { classes: 3, ignore_index: i64::MIN });
        assert_eq!(f.graph.shape(f.output), [2, 3]);
    }

    #[test]
    fn negative_log_likelihood_of_log_softmax_is_cross_entropy_of_its_input() {
        let loss = vec![
            node("LogSoftmax", &["scores"], &["logp"], vec![("axis", Attribute::Int(1))]),
            node("NegativeLogLikelihoodLoss", &["logp", "labels"], &["loss"], vec![("ignore_index", Attribute::Int(-100))]),
        ];
        let f = import_model(&with_loss(&[2, 5], &[2], loss), "t", &ImportOptions::default()).unwrap().forward;
        assert_eq!(f.task, Task::CrossEntropy { classes: 5, ignore_index: -100 });
        assert_eq!(f.graph.nodes.len(), 1, "only the Mul is imported: the loss reads the LogSoftmax's input");

        let nll_alone = vec![node("NegativeLogLikelihoodLoss", &["scores", "labels"], &["loss"], vec![])];
        let e = import_model(&with_loss(&[2, 5], &[2], nll_alone), "t", &ImportOptions::default()).unwrap_err().to_string();
        assert!(e.contains("not a LogSoftmax over axis 1"), "{e}");
    }

    #[test]
    fn loss_nodes_pock_cannot_train_as_they_are_are_refused_with_the_reason() {
        let import = |m: &OnnxModel, options: &ImportOptions| import_model(m, "t", options).unwrap_err().to_string();
        let sum = with_loss(&[2, 3], &[2], vec![sce(vec![("reduction", Attribute::String(b"sum".to_vec()))])]);
        assert!(import(&sum, &ImportOptions::default()).contains("reduction 'sum' is not supported"));
        let weighted = with_loss(&[2, 3], &[2], vec![node("SoftmaxCrossEntropyLoss", &["scores", "labels", "w"], &["loss"], vec![])]);
        assert!(import(&weighted, &ImportOptions::default()).contains("class weights"));
        let mse = ImportOptions { loss: LossKind::Mse, ..Default::default() };
        assert!(import(&with_loss(&[2, 3], &[2], vec![sce(vec![])]), &mse).contains("already a loss"));
        let mut int32 = with_loss(&[2, 3], &[2], vec![sce(vec![])]);
        int32.inputs[1].dtype = Some(DataType::I32);
        assert!(import(&int32, &ImportOptions::default()).contains("pock's labels are int64"));
        let wrong_labels = with_loss(&[2, 3, 4], &[2, 3], vec![sce(vec![])]);
        assert!(import(&wrong_labels, &ImportOptions::default()).contains("need labels [2, 4]"));
    }
}
