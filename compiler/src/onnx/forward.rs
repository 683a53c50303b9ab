//! Forward-only import: every graph output of a model, with no loss attached.
//!
//! Training needs one chosen output and a loss ([`super::import_model`]); the ONNX backend node
//! tests (`tests/onnx_conformance.rs`) and other inference-only uses need every output as the
//! model declares it, including outputs that fold to compile-time constants (a `Shape` node's
//! output never reaches the graph). The set-up mirrors `import_model`'s and the nodes go through
//! the same op table. BatchNormalization nodes exported in inference mode (`training_mode` 0, the
//! default) run with their running statistics here, as ONNX defines them, where training
//! imports them in their training form.

use std::collections::HashSet;

use pock_engine::ops::{NormOp, Op};

use super::super::{Attribute, OnnxModel};
use super::{ImportError, ImportOptions, Importer, Value};
use crate::ir::{Graph, TensorId};
use crate::onnx::fold::Const;

/// A graph output after import.
#[derive(Clone, Debug)]
pub enum OutputValue {
    /// A tensor the graph computes (or a data input passed through).
    Tensor(TensorId),
    /// A value known at compile time, which no graph node computes.
    Const(Const),
}

/// A model imported for inference: its graph, data inputs and every declared output.
#[derive(Clone, Debug)]
pub struct ForwardModel {
    pub graph: Graph,
    /// The data inputs in the model's order, as `Role::Input` tensors of the graph.
    pub inputs: Vec<TensorId>,
    /// Every graph output, by name, in the model's order.
    pub outputs: Vec<(String, OutputValue)>,
    /// Behaviours that differ from the ONNX graph's, one sentence each.
    pub notes: Vec<String>,
}

/// Imports every node of `model` and returns all its outputs, attaching no loss.
/// Of `options`, only the input shapes apply (there is no output to choose and no loss).
pub fn import_forward(model: &OnnxModel, options: &ImportOptions) -> Result<ForwardModel, ImportError> {
    let super::Run { importer: mut im, inputs, .. } = Importer::run(model, options, &[], None)?;
    freeze_inference_batch_norms(model, &mut im.graph);
    let mut outputs = Vec::with_capacity(model.outputs.len());
    for o in &model.outputs {
        let value = match im.values.get(&o.name) {
            Some(Value::Tensor(t)) => OutputValue::Tensor(*t),
            Some(Value::Const(c)) => OutputValue::Const(c.clone()),
            Some(Value::Initializer(i)) => OutputValue::Const(Const::from_tensor(&model.initializers[*i])),
            None => {
                // load_model checks that every graph output is a node output or an input.
                let node = model.nodes.iter().find(|n| n.outputs.contains(&o.name));
                return Err(ImportError::OutputNotComputed {
                    name: o.name.clone(),
                    node: node.map_or_else(String::new, |n| n.name.clone()),
                    op_type: node.map_or_else(String::new, |n| n.op_type.clone()),
                });
            }
        };
        outputs.push((o.name.clone(), value));
    }
    Ok(ForwardModel { graph: im.graph, inputs, outputs, notes: im.notes })
}

/// Turns the BatchNorm of every ONNX BatchNormalization node in inference mode into its frozen
/// form (running statistics, not updated), the way the eval program does.
fn freeze_inference_batch_norms(model: &OnnxModel, graph: &mut Graph) {
    let inference: HashSet<&str> = model
        .nodes
        .iter()
        .filter(|n| n.op_type == "BatchNormalization" && !matches!(n.attribute("training_mode"), Some(Attribute::Int(m)) if *m != 0))
        .map(|n| n.name.as_str())
        .collect();
    for node in &mut graph.nodes {
        if let Op::Norm(NormOp::BatchNormTrain(bn)) = node.op {
            if inference.contains(node.name.as_str()) {
                node.op = NormOp::BatchNormInfer(bn).into();
                // Inputs [x, gamma, beta] and the running statistics, its in-place outputs 3 and 4.
                node.inputs.extend_from_slice(&node.outputs[3..5]);
                node.outputs.truncate(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::Interpreter;
    use crate::onnx::fold::ConstData;
    use crate::onnx::{DataType, Dim, Node, Tensor, TensorValues, ValueInfo};

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<(&str, Attribute)>) -> Node {
        Node::new(op, inputs, outputs, attributes)
    }

    fn value(name: &str, dims: &[usize]) -> ValueInfo {
        ValueInfo { name: name.into(), dtype: Some(DataType::F32), shape: Some(dims.iter().map(|&d| Dim::Fixed(d)).collect()) }
    }

    fn model(initializers: Vec<Tensor>, nodes: Vec<Node>, outputs: &[&str]) -> OnnxModel {
        OnnxModel {
            ir_version: 8,
            opset: 17,
            opset_imports: vec![(String::new(), 17)],
            producer: String::new(),
            graph_name: String::new(),
            initializers,
            inputs: vec![value("x", &[2, 1, 1, 2])],
            outputs: outputs.iter().map(|o| ValueInfo { name: o.to_string(), dtype: None, shape: None }).collect(),
            value_info: vec![],
            nodes,
        }
    }

    fn f32s(name: &str, v: Vec<f32>) -> Tensor {
        Tensor { name: name.into(), dims: vec![v.len()], values: TensorValues::F32(v) }
    }

    #[test]
    fn every_output_is_returned_and_a_folded_one_as_a_constant() {
        let nodes = vec![node("Relu", &["x"], &["y"], vec![]), node("Shape", &["x"], &["s"], vec![])];
        let f = import_forward(&model(vec![], nodes, &["y", "s"]), &ImportOptions::default()).unwrap();
        let names: Vec<&str> = f.outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["y", "s"]);
        assert!(matches!(f.outputs[0].1, OutputValue::Tensor(_)));
        let OutputValue::Const(c) = &f.outputs[1].1 else { panic!("Shape's output is not folded: {:?}", f.outputs[1].1) };
        assert_eq!(c.data, ConstData::I64(vec![2, 1, 1, 2]));
    }

    #[test]
    fn inference_mode_batch_norm_uses_running_statistics_and_an_unimported_output_is_an_error() {
        let inits = vec![f32s("g", vec![2.0]), f32s("b", vec![1.0]), f32s("mean", vec![10.0]), f32s("var", vec![4.0])];
        let bn = node("BatchNormalization", &["x", "g", "b", "mean", "var"], &["y"], vec![("epsilon", Attribute::Float(0.0))]);
        let f = import_forward(&model(inits.clone(), vec![bn], &["y"]), &ImportOptions::default()).unwrap();
        let mut it = Interpreter::<f64>::new(&f.graph);
        it.set(f.inputs[0], vec![12.0, 8.0, 14.0, 10.0]);
        it.run(&f.graph.nodes).unwrap();
        let OutputValue::Tensor(y) = f.outputs[0].1 else { panic!("y is a constant") };
        // (x - 10) / sqrt(4) * 2 + 1, from the running statistics rather than the batch's.
        assert_eq!(it.get(y).unwrap(), &[3.0, -1.0, 5.0, 1.0]);

        let dropout = node("Dropout", &["x"], &["y", "mask"], vec![]);
        let e = import_forward(&model(vec![], vec![dropout], &["y", "mask"]), &ImportOptions::default()).unwrap_err();
        assert!(matches!(e, ImportError::OutputNotComputed { .. }) && e.to_string().contains("'mask' of node 'Dropout_node'"), "{e}");
    }
}
