//! `export_model` on crafted models: trained values replace their initializers, everything else is
//! written back as it was (external data inlined), `inference` switches BatchNormalization and
//! Dropout, and each refusal names the tensor or node.

mod onnx_support;

use onnx_support::{node_proto as node, TempDir};
use pock_compiler::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, GraphProto, ModelProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, ValueInfoProto,
};
use pock_compiler::onnx::{export_model, load_model_bytes, ExportError, ExportOptions, TensorValues, TrainedValue};
use prost::Message;

fn raw(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn external(name: &str, dims: &[i64], location: &str, offset: usize, length: usize) -> TensorProto {
    let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![entry("location", location.into()), entry("offset", offset.to_string()), entry("length", length.to_string())],
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(i), ..Default::default() }
}

fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.into()), ..Default::default() }
}

/// x [2, 2] -> BatchNormalization (training mode, statistics in `w.bin`) -> Mul by `w` -> Dropout
/// (training mode) -> y. `reads_stat` makes a node read the BatchNormalization's running-mean
/// output.
fn model(reads_stat: bool) -> ModelProto {
    let bool_true =
        TensorProto { name: Some("train".into()), dims: vec![], data_type: Some(9), raw_data: Some(vec![1]), ..Default::default() };
    let mut nodes = vec![
        node(
            "bn",
            "BatchNormalization",
            &["x", "gamma", "beta", "mean", "var"],
            &["h", "mean_out", "var_out"],
            vec![int_attr("training_mode", 1)],
        ),
        node("mul", "Mul", &["h", "w"], &["m"], vec![]),
        node("drop", "Dropout", &["m", "", "train"], &["y", "mask"], vec![]),
        node("drop2", "Dropout", &["y", "", "train2"], &["y2"], vec![]),
    ];
    // The second Dropout's flag is a Constant node's output, as the TorchScript exporter writes it.
    let flag = TensorProto { dims: vec![], data_type: Some(9), raw_data: Some(vec![1]), ..Default::default() };
    let constant =
        AttributeProto { name: Some("value".into()), r#type: Some(AttributeType::Tensor as i32), t: Some(flag), ..Default::default() };
    nodes.insert(2, node("flag", "Constant", &[], &["train2"], vec![constant]));
    if reads_stat {
        nodes.push(node("use_stat", "Identity", &["mean_out"], &["z"], vec![]));
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        producer_name: Some("test".into()),
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: vec![
                raw("gamma", &[2], &[1.0, 1.0]),
                raw("beta", &[2], &[0.0, 0.0]),
                external("mean", &[2], "w.bin", 0, 8),
                external("var", &[2], "w.bin", 8, 8),
                raw("w", &[2], &[3.0, 4.0]),
                bool_true,
            ],
            input: vec![value("x")],
            output: vec![value("y2")],
            value_info: vec![value("mean_out"), value("h")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn write_stats(dir: &TempDir) {
    let bytes: Vec<u8> = [0.5f32, -0.5, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.0.join("w.bin"), bytes).unwrap();
}

#[test]
fn trained_values_replace_their_initializers_and_the_rest_is_kept() {
    let dir = TempDir::new("export-replace");
    write_stats(&dir);
    let source = model(false).encode_to_vec();
    let trained =
        [TrainedValue { name: "w", shape: &[2], values: &[7.0, 8.0] }, TrainedValue { name: "mean", shape: &[2], values: &[0.25, 0.75] }];
    let e = export_model(&source, Some(&dir.0), &trained, ExportOptions::default()).unwrap();
    assert_eq!((e.replaced, e.inlined, e.switched), (2, 1, 0));
    // One self-contained file: it loads without a directory for external data.
    let m = load_model_bytes(&e.bytes, None).unwrap();
    let values = |name: &str| m.initializer(name).unwrap().values.clone();
    assert_eq!(values("w"), TensorValues::F32(vec![7.0, 8.0]));
    assert_eq!(values("mean"), TensorValues::F32(vec![0.25, 0.75]));
    assert_eq!(values("var"), TensorValues::F32(vec![2.0, 3.0]), "the untrained external tensor keeps its file's values");
    assert_eq!(values("gamma"), TensorValues::F32(vec![1.0, 1.0]));
    let original = load_model_bytes(&source, Some(&dir.0)).unwrap();
    assert_eq!(m.nodes, original.nodes);
    assert_eq!((m.inputs, m.outputs, m.value_info.len()), (original.inputs, original.outputs, original.value_info.len()));
}

#[test]
fn inference_switches_batchnorm_and_dropout_off() {
    let dir = TempDir::new("export-inference");
    write_stats(&dir);
    let e = export_model(&model(false).encode_to_vec(), Some(&dir.0), &[], ExportOptions { inference: true }).unwrap();
    assert_eq!(e.switched, 3);
    load_model_bytes(&e.bytes, None).expect("the inference export is a valid model");
    let m = ModelProto::decode(e.bytes.as_slice()).unwrap();
    let g = m.graph.unwrap();
    let bn = &g.node[0];
    assert_eq!(bn.output, vec!["h".to_string()]);
    assert_eq!(bn.attribute[0].i, Some(0));
    let ops: Vec<&str> = g.node.iter().map(|n| n.name.as_deref().unwrap()).collect();
    assert_eq!(ops, ["bn", "mul", "drop", "drop2"], "the Constant only a Dropout flag read is removed with it");
    assert_eq!(g.node[2].input, vec!["m".to_string(), String::new()]);
    assert_eq!(g.node[3].input, vec!["y".to_string(), String::new()]);
    assert!(g.initializer.iter().all(|t| t.name.as_deref() != Some("train")), "the flag only Dropout read is removed with it");
    assert_eq!(g.value_info.iter().map(|v| v.name.clone().unwrap()).collect::<Vec<_>>(), vec!["h".to_string()]);

    // A graph that reads a running-statistic output cannot drop it.
    let err = export_model(&model(true).encode_to_vec(), Some(&dir.0), &[], ExportOptions { inference: true }).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ExportError::Inference { .. }) && msg.contains("'bn'") && msg.contains("mean_out"), "{msg}");
}

#[test]
fn export_refuses_what_does_not_match_the_graph() {
    let dir = TempDir::new("export-refuse");
    write_stats(&dir);
    let source = model(false).encode_to_vec();
    let run = |t: &[TrainedValue]| export_model(&source, Some(&dir.0), t, ExportOptions::default()).unwrap_err();

    let err = run(&[TrainedValue { name: "nope", shape: &[2], values: &[0.0, 0.0] }]);
    assert!(matches!(&err, ExportError::NotAnInitializer { name } if name == "nope"), "{err}");
    // A bool initializer is not a float parameter.
    let err = run(&[TrainedValue { name: "train", shape: &[], values: &[1.0] }]);
    assert!(matches!(&err, ExportError::NotAnInitializer { name } if name == "train"), "{err}");
    let err = run(&[TrainedValue { name: "w", shape: &[1, 2], values: &[0.0, 0.0] }]);
    assert!(matches!(&err, ExportError::Shape { name, .. } if name == "w") && err.to_string().contains("[1, 2]"), "{err}");

    let err = export_model(b"\xff\xff\xff", None, &[], ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Decode(_)), "{err}");

    // The external data file is gone: the error names the tensor and the file.
    std::fs::remove_file(dir.0.join("w.bin")).unwrap();
    let err = run(&[]);
    assert!(matches!(err, ExportError::ExternalData(_)) && err.to_string().contains("w.bin"), "{err}");
}
