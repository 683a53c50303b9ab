//! The ONNX loader on crafted models: every typed attribute and tensor storage it reads, and every
//! error it gives, with the message a user sees.

mod onnx_support;

use onnx_support::{node_proto as node, value_info as value, TempDir};
use pock_compiler::onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, GraphProto, ModelProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto,
};
use pock_compiler::onnx::{
    load_model, load_model_bytes, resolve_input_shapes, Attribute, DataType, Dim, ImportError, ShapeOverrides, TensorValues,
};
use prost::Message;

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn external(name: &str, dims: &[i64], entries: &[(&str, &str)]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: entries
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.to_string()), value: Some(v.to_string()) })
            .collect(),
        ..Default::default()
    }
}

fn attr(name: &str, kind: AttributeType, fill: impl FnOnce(&mut AttributeProto)) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.into()), r#type: Some(kind as i32), ..Default::default() };
    fill(&mut a);
    a
}

/// y = MatMul(x, w) with x [batch, 4] dynamic in its first dimension.
fn tiny() -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        producer_name: Some("pock-test".into()),
        graph: Some(GraphProto {
            name: Some("tiny".into()),
            node: vec![node("mm", "MatMul", &["x", "w"], &["y"], vec![])],
            initializer: vec![f32_tensor("w", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])],
            input: vec![value("x", 1, &[Err("batch"), Ok(4)]), value("w", 1, &[Ok(4), Ok(2)])],
            output: vec![value("y", 1, &[Err("batch"), Ok(2)])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn graph(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn load(m: &ModelProto) -> Result<pock_compiler::onnx::OnnxModel, ImportError> {
    load_model_bytes(&m.encode_to_vec(), None)
}

fn err(m: &ModelProto) -> (ImportError, String) {
    let e = load(m).expect_err("the crafted model must be rejected");
    let msg = e.to_string();
    (e, msg)
}

#[test]
fn reads_inputs_outputs_initializers_and_nodes() {
    let m = load(&tiny()).unwrap();
    assert_eq!((m.ir_version, m.opset, m.producer.as_str(), m.graph_name.as_str()), (8, 17, "pock-test", "tiny"));
    assert_eq!(m.inputs.len(), 1, "an initializer listed as a graph input is not a data input");
    assert_eq!(m.inputs[0].name, "x");
    assert_eq!(m.inputs[0].dtype, Some(DataType::F32));
    assert_eq!(m.inputs[0].shape, Some(vec![Dim::Named("batch".into()), Dim::Fixed(4)]));
    assert_eq!(m.outputs[0].name, "y");
    let w = m.initializer("w").unwrap();
    assert_eq!(w.dims, vec![4, 2]);
    assert_eq!(w.values, TensorValues::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]));
    assert_eq!(m.nodes[0].op_type, "MatMul");
    assert_eq!(m.nodes[0].inputs, vec!["x", "w"]);
}

#[test]
fn reads_every_attribute_type_and_tensor_dtype() {
    let mut m = tiny();
    let t_i64 =
        TensorProto { name: Some("shape".into()), dims: vec![2], data_type: Some(7), int64_data: vec![-1, 2], ..Default::default() };
    let attrs = vec![
        attr("alpha", AttributeType::Float, |a| a.f = Some(0.5)),
        attr("axis", AttributeType::Int, |a| a.i = Some(-1)),
        attr("mode", AttributeType::String, |a| a.s = Some(b"constant".to_vec())),
        attr("value", AttributeType::Tensor, |a| a.t = Some(t_i64)),
        attr("scales", AttributeType::Floats, |a| a.floats = vec![1.0, 2.5]),
        attr("perm", AttributeType::Ints, |a| a.ints = vec![0, 2, 1]),
        attr("names", AttributeType::Strings, |a| a.strings = vec![b"a".to_vec(), b"b".to_vec()]),
    ];
    graph(&mut m).node.push(node("", "Custom", &["y"], &["z"], attrs));
    // One initializer per other dtype, raw and typed: int32, bool, float16, float64, and int64 raw.
    let g = graph(&mut m);
    g.initializer.push(TensorProto {
        name: Some("i32".into()),
        dims: vec![3],
        data_type: Some(6),
        int32_data: vec![1, -2, 3],
        ..Default::default()
    });
    g.initializer.push(TensorProto {
        name: Some("b".into()),
        dims: vec![3],
        data_type: Some(9),
        raw_data: Some(vec![1, 0, 1]),
        ..Default::default()
    });
    g.initializer.push(TensorProto {
        name: Some("h".into()),
        dims: vec![1],
        data_type: Some(10),
        int32_data: vec![0x3c00],
        ..Default::default()
    });
    g.initializer.push(TensorProto {
        name: Some("d".into()),
        dims: vec![],
        data_type: Some(11),
        double_data: vec![0.25],
        ..Default::default()
    });
    g.initializer.push(TensorProto {
        name: Some("l".into()),
        dims: vec![2],
        data_type: Some(7),
        raw_data: Some([7i64, -7].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    });
    let m = load(&m).unwrap();
    let n = &m.nodes[1];
    assert_eq!(n.name, "Custom_1", "an unnamed node is named after its op type and index");
    assert_eq!(n.attribute("alpha"), Some(&Attribute::Float(0.5)));
    assert_eq!(n.attribute("axis"), Some(&Attribute::Int(-1)));
    assert_eq!(n.attribute("mode"), Some(&Attribute::String(b"constant".to_vec())));
    let Some(Attribute::Tensor(t)) = n.attribute("value") else { panic!("value is a tensor") };
    assert_eq!((t.dims.clone(), t.values.clone()), (vec![2], TensorValues::I64(vec![-1, 2])));
    assert_eq!(n.attribute("scales"), Some(&Attribute::Floats(vec![1.0, 2.5])));
    assert_eq!(n.attribute("perm"), Some(&Attribute::Ints(vec![0, 2, 1])));
    assert_eq!(n.attribute("names"), Some(&Attribute::Strings(vec![b"a".to_vec(), b"b".to_vec()])));
    assert_eq!(m.initializer("i32").unwrap().values, TensorValues::I32(vec![1, -2, 3]));
    assert_eq!(m.initializer("b").unwrap().values, TensorValues::Bool(vec![true, false, true]));
    assert_eq!(m.initializer("h").unwrap().values, TensorValues::F16(vec![0x3c00]));
    let d = m.initializer("d").unwrap();
    assert_eq!((d.dims.len(), d.values.clone()), (0, TensorValues::F64(vec![0.25])));
    assert_eq!(m.initializer("l").unwrap().values, TensorValues::I64(vec![7, -7]));
}

#[test]
fn reads_external_data_at_its_offset() {
    let dir = TempDir::new("ext-ok");
    let mut data = vec![0u8; 16];
    data.extend([1.5f32, -2.0, 3.25].iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("weights.bin"), &data).unwrap();
    let mut m = tiny();
    graph(&mut m).initializer.push(external("e", &[3], &[("location", "weights.bin"), ("offset", "16"), ("length", "12")]));
    // Without a length the tensor runs to the end of the file.
    graph(&mut m).initializer.push(external("f", &[1], &[("location", "./weights.bin"), ("offset", "24")]));
    std::fs::write(dir.path().join("m.onnx"), m.encode_to_vec()).unwrap();
    let model = load_model(dir.path().join("m.onnx")).unwrap();
    assert_eq!(model.initializer("e").unwrap().values, TensorValues::F32(vec![1.5, -2.0, 3.25]));
    assert_eq!(model.initializer("f").unwrap().values, TensorValues::F32(vec![3.25]));
}

#[test]
fn malformed_protobuf_is_a_clear_error() {
    let bytes = tiny().encode_to_vec();
    let e = load_model_bytes(&bytes[..bytes.len() / 2], None).unwrap_err();
    assert!(matches!(e, ImportError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("not a valid ONNX model") && e.to_string().contains("truncated"), "{e}");
    // Bytes that decode as an empty message still lack what every model has.
    let e = load_model_bytes(&[], None).unwrap_err();
    assert!(e.to_string().contains("no ir_version"), "{e}");
    let mut m = tiny();
    m.graph = None;
    assert!(err(&m).1.contains("no graph"));
}

#[test]
fn unreadable_file_names_its_path() {
    let e = load_model("/nonexistent/pock/model.onnx").unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }) && e.to_string().contains("/nonexistent/pock/model.onnx"), "{e}");
}

#[test]
fn unsupported_versions_say_how_to_reexport() {
    for ir in [6, 11] {
        let mut m = tiny();
        m.ir_version = Some(ir);
        let (e, msg) = err(&m);
        assert!(matches!(e, ImportError::UnsupportedIrVersion { found } if found == ir), "{msg}");
        assert!(msg.contains("opset_version=17") && msg.contains("7 to 10"), "{msg}");
    }
    for opset in [12, 22] {
        let mut m = tiny();
        m.opset_import[0].version = Some(opset);
        let (e, msg) = err(&m);
        assert!(matches!(e, ImportError::UnsupportedOpset { found } if found == opset), "{msg}");
        assert!(msg.contains(&format!("opset {opset}")) && msg.contains("convert_version"), "{msg}");
    }
    let mut m = tiny();
    m.opset_import[0].domain = Some("com.microsoft".into());
    assert!(matches!(err(&m).0, ImportError::MissingOpset));
    // "ai.onnx" is the default domain's other spelling.
    m.opset_import.push(OperatorSetIdProto { domain: Some("ai.onnx".into()), version: Some(13) });
    assert_eq!(load(&m).unwrap().opset, 13);
}

#[test]
fn missing_external_data_file_is_a_clear_error() {
    let dir = TempDir::new("ext-missing");
    let mut m = tiny();
    graph(&mut m).initializer.push(external("big", &[3], &[("location", "weights.bin")]));
    std::fs::write(dir.path().join("m.onnx"), m.encode_to_vec()).unwrap();
    let e = load_model(dir.path().join("m.onnx")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImportError::MissingExternalData { .. }), "{msg}");
    assert!(msg.contains("'big'") && msg.contains("'weights.bin'") && msg.contains("copy the data file"), "{msg}");
    // From bytes with no directory, the error says to load from the file.
    let e = load(&m).unwrap_err();
    assert!(matches!(e, ImportError::NoModelDirectory { .. }) && e.to_string().contains("load_model"), "{e}");
}

#[test]
fn out_of_range_external_data_is_a_clear_error() {
    let dir = TempDir::new("ext-range");
    std::fs::write(dir.path().join("w.bin"), [0u8; 8]).unwrap();
    for entries in [
        vec![("location", "w.bin"), ("offset", "4"), ("length", "12")],
        vec![("location", "w.bin"), ("offset", "9")],
        vec![("location", "w.bin"), ("offset", "18446744073709551615"), ("length", "2")],
    ] {
        let mut m = tiny();
        graph(&mut m).initializer.push(external("big", &[3], &entries));
        let e = load_model_bytes(&m.encode_to_vec(), Some(dir.path())).unwrap_err();
        assert!(matches!(e, ImportError::ExternalDataOutOfRange { file_len: 8, .. }), "{entries:?}: {e}");
        assert!(e.to_string().contains("only 8 bytes"), "{e}");
    }
    // In range, but the wrong size for the declared shape.
    let mut m = tiny();
    graph(&mut m).initializer.push(external("big", &[3], &[("location", "w.bin")]));
    let e = load_model_bytes(&m.encode_to_vec(), Some(dir.path())).unwrap_err();
    assert!(matches!(e, ImportError::TensorDataSize { .. }) && e.to_string().contains("holds 8 bytes where 12 bytes"), "{e}");
    // Locations outside the model's directory and unparsable numbers are refused.
    for loc in ["../w.bin", "/etc/passwd", ""] {
        let mut m = tiny();
        graph(&mut m).initializer.push(external("big", &[3], &[("location", loc)]));
        let e = load_model_bytes(&m.encode_to_vec(), Some(dir.path())).unwrap_err();
        assert!(matches!(e, ImportError::ExternalDataPath { .. }), "{loc}: {e}");
    }
    let mut m = tiny();
    graph(&mut m).initializer.push(external("big", &[3], &[("location", "w.bin"), ("offset", "-4")]));
    let e = load_model_bytes(&m.encode_to_vec(), Some(dir.path())).unwrap_err();
    assert!(matches!(e, ImportError::ExternalDataEntry { .. }), "{e}");
}

#[test]
fn bad_tensors_are_errors() {
    let mut m = tiny();
    graph(&mut m).initializer[0].raw_data.as_mut().unwrap().pop();
    let (e, msg) = err(&m);
    assert!(matches!(e, ImportError::TensorDataSize { .. }) && msg.contains("'w'"), "{msg}");

    let mut m = tiny();
    graph(&mut m).initializer[0].dims = vec![i64::MAX, 4];
    assert!(matches!(err(&m).0, ImportError::TensorDataSize { .. }));
    graph(&mut m).initializer[0].dims = vec![-1, 4];
    assert!(matches!(err(&m).0, ImportError::TensorDataSize { .. }));

    let mut m = tiny();
    graph(&mut m).initializer.push(TensorProto {
        name: Some("s".into()),
        dims: vec![1],
        data_type: Some(8),
        string_data: vec![b"x".to_vec()],
        ..Default::default()
    });
    let (e, msg) = err(&m);
    assert!(matches!(e, ImportError::UnsupportedDtype { .. }) && msg.contains("'s'") && msg.contains("string"), "{msg}");

    let mut m = tiny();
    graph(&mut m).initializer[0].segment = Some(proto::tensor_proto::Segment { begin: Some(0), end: Some(8) });
    assert!(matches!(err(&m).0, ImportError::UnsupportedTensorStorage { .. }));
}

#[test]
fn graph_attributes_load_and_lists_of_graphs_name_the_node_op_and_opset() {
    // A subgraph (If's branch) is read; the importer decides what to do with it.
    let mut m = tiny();
    let branch = attr("then_branch", AttributeType::Graph, |a| a.g = Some(GraphProto::default()));
    graph(&mut m).node.push(node("cond_1", "If", &["y"], &["z"], vec![branch]));
    let loaded = load(&m).unwrap();
    let if_node = loaded.nodes.last().unwrap();
    assert!(matches!(if_node.attribute("then_branch"), Some(pock_compiler::onnx::Attribute::Graph(_))), "{if_node:?}");
    // A list of graphs is refused, naming the node, op, opset and attribute.
    let mut m = tiny();
    let branches = attr("bodies", AttributeType::Graphs, |a| a.graphs = vec![GraphProto::default()]);
    graph(&mut m).node.push(node("scan_1", "Scan", &["y"], &["z"], vec![branches]));
    let (e, msg) = err(&m);
    assert!(matches!(e, ImportError::UnsupportedAttribute { kind: "list of graphs", .. }), "{msg}");
    assert!(msg.contains("'scan_1'") && msg.contains("Scan") && msg.contains("opset 17") && msg.contains("bodies"), "{msg}");
    // A GRAPH attribute that holds no graph is malformed.
    let mut m = tiny();
    graph(&mut m).node.push(node("cond_2", "If", &["y"], &["z"], vec![attr("then_branch", AttributeType::Graph, |_| {})]));
    assert!(matches!(err(&m).0, ImportError::MalformedAttribute { .. }));

    let mut m = tiny();
    graph(&mut m).node.push(node("c", "Constant", &[], &["z"], vec![attr("value", AttributeType::Tensor, |_| {})]));
    assert!(matches!(err(&m).0, ImportError::MalformedAttribute { .. }));
    let mut m = tiny();
    graph(&mut m).node.push(node("c", "Constant", &[], &["z"], vec![attr("value", AttributeType::Undefined, |_| {})]));
    assert!(err(&m).1.contains("no type"));
}

#[test]
fn topological_check_finds_undefined_and_duplicate_values() {
    let mut m = tiny();
    // A node that reads a value defined only later.
    graph(&mut m).node.insert(0, node("early", "Relu", &["y"], &["r"], vec![]));
    let (e, msg) = err(&m);
    assert!(matches!(e, ImportError::UndefinedValue { .. }), "{msg}");
    assert!(msg.contains("'early'") && msg.contains("Relu") && msg.contains("opset 17") && msg.contains("'y'"), "{msg}");

    let mut m = tiny();
    graph(&mut m).node.push(node("again", "Relu", &["x"], &["y"], vec![]));
    assert!(matches!(err(&m).0, ImportError::DuplicateValue { .. }));

    let mut m = tiny();
    graph(&mut m).output.push(value("ghost", 1, &[Ok(1)]));
    assert!(matches!(err(&m).0, ImportError::UndefinedOutput { .. }));

    // An omitted optional input ("") is not a reference.
    let mut m = tiny();
    graph(&mut m).node.push(node("clip", "Clip", &["y", "", ""], &["c"], vec![]));
    assert!(load(&m).is_ok());
}

#[test]
fn dynamic_dimension_without_a_shape_says_which_flag_to_pass() {
    let m = load(&tiny()).unwrap();
    let e = resolve_input_shapes(&m, &ShapeOverrides::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImportError::UnresolvedDim { axis: 0, .. }), "{msg}");
    assert!(msg.contains("'batch'") && msg.contains("--batch N") && msg.contains("--input-shape x=8x4"), "{msg}");
    let shapes = resolve_input_shapes(&m, &ShapeOverrides::parse::<&str>(Some(3), &[]).unwrap()).unwrap();
    assert_eq!(shapes[0].dims, vec![3, 4]);
    let shapes = resolve_input_shapes(&m, &ShapeOverrides::parse(None, &["x=5x4"]).unwrap()).unwrap();
    assert_eq!(shapes[0].dims, vec![5, 4]);
}
