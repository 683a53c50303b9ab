//! Shared by the ONNX tests: the checked-in fixtures under `tests/onnx/` and their weight files,
//! regenerated into a temporary directory from each manifest with the Rust generator.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use pock_compiler::onnx::proto::{tensor_shape_proto, type_proto, AttributeProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto};
use pock_compiler::onnx::weights::FloatRule;
use serde_json::Value;

/// A graph input or output of element type `elem` (ONNX's code); `Err(name)` is a dynamic
/// dimension.
pub fn value_info(name: &str, elem: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Ok(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Err(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(elem), shape: Some(TensorShapeProto { dim }) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node of the default domain.
pub fn node_proto(name: &str, op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/onnx")
}

/// Every `*.manifest.json` fixture, sorted by file name.
pub fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).expect("tests/onnx exists") {
        let path = entry.expect("readable directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".manifest.json") {
            let text = std::fs::read_to_string(&path).expect("readable manifest");
            out.push((stem.to_string(), serde_json::from_str(&text).expect("valid manifest JSON")));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A directory under the system temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pock-onnx-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A manifest's generator rule as the Rust type (the f32 is taken from its recorded bits).
pub fn float_rule(rule: &Value) -> FloatRule {
    let bits = |k: &str| f32::from_bits(rule[k].as_u64().expect("rule bits") as u32);
    match rule["kind"].as_str() {
        Some("uniform") => FloatRule::Uniform { bound: bits("bound_bits") },
        Some("constant") => FloatRule::Constant { value: bits("value_bits") },
        other => panic!("unknown float rule {other:?}"),
    }
}

/// The little-endian bytes of one external tensor of a manifest, from the generator.
pub fn generated_bytes(entry: &Value) -> Vec<u8> {
    let count: usize = entry["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product();
    let values = float_rule(&entry["rule"]).generate(entry["key"].as_str().unwrap(), count);
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the fixture's graph and its regenerated weight file into `dir`; returns the graph path.
pub fn materialise(stem: &str, manifest: &Value, dir: &Path) -> PathBuf {
    let mut data = vec![0u8; manifest["data_length"].as_u64().unwrap() as usize];
    for e in manifest["external"].as_array().unwrap() {
        let bytes = generated_bytes(e);
        let offset = e["offset"].as_u64().unwrap() as usize;
        assert_eq!(bytes.len() as u64, e["length"].as_u64().unwrap(), "{stem}: {}", e["name"]);
        data[offset..offset + bytes.len()].copy_from_slice(&bytes);
    }
    std::fs::write(dir.join(manifest["data_file"].as_str().unwrap()), &data).unwrap();
    let onnx = manifest["onnx_file"].as_str().unwrap();
    let target = dir.join(onnx);
    std::fs::copy(fixtures_dir().join(onnx), &target).unwrap_or_else(|e| panic!("{stem}: copy {onnx}: {e}"));
    target
}
