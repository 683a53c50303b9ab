//! The errors of ONNX import. Each message names what was wrong and says what to do next.

use std::path::PathBuf;

/// The IR versions pock reads (ONNX 1.7 to 1.16 write these).
pub const IR_VERSIONS: std::ops::RangeInclusive<i64> = 7..=10;
/// The default-domain opsets pock reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Advice shared by the version errors: how to get a model pock reads.
const REEXPORT: &str = "re-export it with torch.onnx.export(..., opset_version=17) (or any opset 13-21), \
or convert it with onnx.version_converter.convert_version(model, 17)";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read ONNX model {path}: {source}; check the path and the file's permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} is not a valid ONNX model: {detail}; check that the file is complete (not truncated or a Git LFS pointer) and re-export it if it is")]
    Malformed { what: String, detail: String },

    #[error("ONNX IR version {found} is not supported (pock reads IR versions 7 to 10); {REEXPORT}")]
    UnsupportedIrVersion { found: i64 },

    #[error("the model imports opset {found} of the default ONNX domain; pock reads opsets 13 to 21: {REEXPORT}")]
    UnsupportedOpset { found: i64 },

    #[error("the model imports no opset of the default ONNX domain; {REEXPORT}")]
    MissingOpset,

    #[error("initializer '{tensor}' has data type {dtype}, which pock does not read (it reads float32, float16, float64, int64, int32 and bool); cast it in the exporting framework")]
    UnsupportedDtype { tensor: String, dtype: String },

    #[error("initializer '{tensor}' stores its data in a form pock does not read ({what}); re-export with plain (raw_data or typed) tensor data")]
    UnsupportedTensorStorage { tensor: String, what: String },

    #[error("tensor '{tensor}' ({dtype}, shape {shape:?}) holds {found} where {expected} are needed; the model or its data file is damaged, re-export it")]
    TensorDataSize { tensor: String, shape: Vec<i64>, dtype: String, expected: String, found: String },

    #[error("--batch 0 is not a batch size; pass --batch N with N >= 1")]
    InvalidBatch,

    #[error("initializer '{tensor}' refers to external data '{location}', which is not a file beside the model ({path}); copy the data file next to the .onnx file, or re-export with the weights inside the model")]
    MissingExternalData {
        tensor: String,
        location: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("initializer '{tensor}' refers to external data '{location}', but the model was given as bytes with no directory to find it in; load it from its file with load_model instead")]
    NoModelDirectory { tensor: String, location: String },

    #[error("initializer '{tensor}' names external data location '{location}', which leaves the model's directory; ONNX external data must be a relative path below the model, so re-save the model with onnx.save(..., location=\"weights.bin\")")]
    ExternalDataPath { tensor: String, location: String },

    #[error("initializer '{tensor}' reads bytes {offset}..{end} of external data '{location}', but that file has only {file_len} bytes; the data file does not belong to this model or is truncated, re-export both together")]
    ExternalDataOutOfRange { tensor: String, location: String, offset: u64, end: u64, file_len: u64 },

    #[error("initializer '{tensor}' has a malformed external_data entry '{key}' = '{value}'; re-save the model with onnx.save")]
    ExternalDataEntry { tensor: String, key: String, value: String },

    #[error("node '{node}' ({op_type}, opset {opset}): attribute '{attribute}' is a {kind}, which pock does not import; {hint}")]
    UnsupportedAttribute { node: String, op_type: String, opset: i64, attribute: String, kind: &'static str, hint: &'static str },

    #[error("node '{node}' ({op_type}, opset {opset}): attribute '{attribute}' is malformed: {detail}; re-export the model")]
    MalformedAttribute { node: String, op_type: String, opset: i64, attribute: String, detail: String },

    #[error("node '{node}' ({op_type}, opset {opset}) reads '{value}', which no graph input, initializer or earlier node defines; the graph is incomplete or not topologically sorted: re-export it, or sort it with onnx's tools")]
    UndefinedValue { node: String, op_type: String, opset: i64, value: String },

    #[error("'{value}' is defined twice (second time by {by}); ONNX graphs assign each value once, so the model is damaged: re-export it")]
    DuplicateValue { value: String, by: String },

    #[error("graph output '{value}' is not defined by any input, initializer or node; the model is damaged: re-export it")]
    UndefinedOutput { value: String },

    #[error("input '{input}' has a dynamic dimension {axis} ({name}) and no size was given; pass --batch N for the batch axis or --input-shape {input}={example}")]
    UnresolvedDim { input: String, axis: usize, name: String, example: String },

    #[error("--input-shape '{spec}' is not of the form NAME=AxBxC (for example input_ids=8x128): {reason}")]
    InvalidShapeSpec { spec: String, reason: String },

    #[error("--input-shape names '{name}', which is not a data input of the model; its data inputs are: {known}")]
    UnknownInput { name: String, known: String },

    #[error("input '{input}' has {expected} dimensions {dims}, but {given} gives {found}; give one size per dimension")]
    ShapeRankMismatch { input: String, expected: usize, dims: String, found: usize, given: String },

    #[error("input '{input}' dimension {axis} is {fixed} in the model, but {given} asks for {asked}; the exported graph fixes that size, so re-export it with a dynamic axis (dynamic_axes / dynamic_shapes) to change it")]
    ShapeConflict { input: String, axis: usize, fixed: usize, asked: usize, given: String },

    #[error(
        "dimension '{name}' is {first} in one input and {second} in another ({given}); inputs that share a named dimension must agree"
    )]
    NamedDimConflict { name: String, first: usize, second: usize, given: String },

    #[error("node '{node}' ({op_type}, opset {opset}) is of an op type pock cannot import yet; the model needs these unsupported op types: {}. pock imports: {supported}. Re-export without them, or file an issue naming them", missing.join(", "))]
    UnsupportedOps { node: String, op_type: String, opset: i64, missing: Vec<String>, supported: String },

    #[error("node '{node}' ({op_type}, opset {opset}): {detail}")]
    NodeImport { node: String, op_type: String, opset: i64, detail: String },

    #[error("node '{node}' ({op_type}, opset {opset}) does not fit pock's op rules: {source}; the graph's shapes disagree with the op, re-export the model")]
    Graph {
        node: String,
        op_type: String,
        opset: i64,
        #[source]
        source: Box<crate::CompileError>,
    },

    #[error("input '{input}' is {dtype}; pock feeds float32, int64 and bool inputs, so cast it in the exporting framework")]
    UnsupportedInputType { input: String, dtype: String },

    #[error("--output names '{name}', which is not a value of the model; its outputs are: {known}")]
    UnknownOutput { name: String, known: String },

    #[error("the model has several outputs ({known}); choose the one to train with --output NAME")]
    ChooseOutput { known: String },

    #[error("graph output '{name}' of node '{node}' ({op_type}) is not computed by pock, which imports that node without this output")]
    OutputNotComputed { name: String, node: String, op_type: String },

    #[error("output '{name}' is a constant (it does not depend on any input or parameter), so there is nothing to train; choose another with --output NAME")]
    ConstantOutput { name: String },

    #[error("output '{output}' has shape {shape:?}, but --loss cross-entropy needs [batch, ..., classes] logits (classes on the last axis); choose another output with --output NAME or use --loss mse")]
    LossShape { output: String, shape: Vec<usize> },
}
