//! Fixing the dynamic dimensions of a model's data inputs from `--batch N` and
//! `--input-shape name=AxB`, since pock plans memory for static shapes.

use std::collections::HashMap;

use super::error::ImportError;
use super::{DataType, Dim, OnnxModel};

/// The sizes a user gave for dynamic dimensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShapeOverrides {
    /// The size of the first dimension of every data input whose first dimension is dynamic.
    pub batch: Option<usize>,
    /// Full shapes of named inputs, in the order given.
    pub shapes: Vec<(String, Vec<usize>)>,
}

impl ShapeOverrides {
    /// Parses `--batch` and the `--input-shape NAME=AxBxC` strings. An empty shape (`NAME=`) is a
    /// scalar.
    pub fn parse<S: AsRef<str>>(batch: Option<usize>, input_shapes: &[S]) -> Result<Self, ImportError> {
        if batch == Some(0) {
            return Err(ImportError::InvalidBatch);
        }
        let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
        for spec in input_shapes {
            let spec = spec.as_ref();
            let invalid = |reason: &str| ImportError::InvalidShapeSpec { spec: spec.to_string(), reason: reason.to_string() };
            let (name, dims) = spec.rsplit_once('=').ok_or_else(|| invalid("there is no '='"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(invalid("the input name before '=' is empty"));
            }
            let dims = dims.trim();
            let dims = if dims.is_empty() {
                Vec::new()
            } else {
                dims.split(['x', 'X'])
                    .map(|d| match d.trim().parse::<usize>() {
                        Ok(0) => Err(invalid("sizes must be at least 1")),
                        Ok(n) => Ok(n),
                        Err(_) => Err(invalid(&format!("'{d}' is not a size"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            if shapes.iter().any(|(n, _)| n == name) {
                return Err(invalid("this input is given twice"));
            }
            shapes.push((name.to_string(), dims));
        }
        Ok(ShapeOverrides { batch, shapes })
    }
}

/// A data input with every dimension fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputShape {
    pub name: String,
    pub dtype: Option<DataType>,
    pub dims: Vec<usize>,
}

/// Fixes every dimension of every data input. Explicit `--input-shape`s come first and also fix
/// the named dimensions they cover (an `input_ids=8x128` fixes "batch" and "seq" for the attention
/// mask too); `--batch` then fixes dynamic first dimensions; any dimension still unknown is an
/// error that says which flag to pass.
pub fn resolve_input_shapes(model: &OnnxModel, overrides: &ShapeOverrides) -> Result<Vec<InputShape>, ImportError> {
    for (name, _) in &overrides.shapes {
        if !model.inputs.iter().any(|i| &i.name == name) {
            let known = model.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(ImportError::UnknownInput { name: name.clone(), known: if known.is_empty() { "(none)".into() } else { known } });
        }
    }
    // Named dimension -> (size, which flag fixed it).
    let mut named: HashMap<String, (usize, String)> = HashMap::new();
    let bind = |name: &str, size: usize, given: String, named: &mut HashMap<String, (usize, String)>| match named.get(name) {
        Some((first, by)) if *first != size => {
            Err(ImportError::NamedDimConflict { name: name.to_string(), first: *first, second: size, given: format!("{by}; {given}") })
        }
        Some(_) => Ok(()),
        None => {
            named.insert(name.to_string(), (size, given));
            Ok(())
        }
    };

    let mut fixed: Vec<Option<Vec<usize>>> = vec![None; model.inputs.len()];
    for (slot, input) in fixed.iter_mut().zip(&model.inputs) {
        let Some((_, dims)) = overrides.shapes.iter().find(|(n, _)| n == &input.name) else { continue };
        let given = format!("--input-shape {}={}", input.name, join_dims(dims));
        if let Some(shape) = &input.shape {
            if shape.len() != dims.len() {
                return Err(ImportError::ShapeRankMismatch {
                    input: input.name.clone(),
                    expected: shape.len(),
                    dims: format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
                    found: dims.len(),
                    given,
                });
            }
            for (axis, (d, &asked)) in shape.iter().zip(dims).enumerate() {
                match d {
                    Dim::Fixed(n) if *n != asked => {
                        return Err(ImportError::ShapeConflict { input: input.name.clone(), axis, fixed: *n, asked, given })
                    }
                    Dim::Named(p) => bind(p, asked, given.clone(), &mut named)?,
                    _ => {}
                }
            }
        }
        *slot = Some(dims.clone());
    }

    if let Some(batch) = overrides.batch {
        let given = format!("--batch {batch}");
        for (slot, input) in fixed.iter().zip(&model.inputs) {
            if slot.is_some() {
                continue;
            }
            match input.shape.as_deref() {
                Some([Dim::Named(p), ..]) => bind(p, batch, given.clone(), &mut named)?,
                Some([Dim::Fixed(n), ..]) if *n != batch => {
                    return Err(ImportError::ShapeConflict { input: input.name.clone(), axis: 0, fixed: *n, asked: batch, given })
                }
                _ => {}
            }
        }
    }

    let mut out = Vec::with_capacity(model.inputs.len());
    for (slot, input) in fixed.into_iter().zip(&model.inputs) {
        let dims = match slot {
            Some(dims) => dims,
            None => {
                let Some(shape) = &input.shape else {
                    return Err(ImportError::UnresolvedDim {
                        input: input.name.clone(),
                        axis: 0,
                        name: "the model declares no shape for it".into(),
                        example: "8x128".into(),
                    });
                };
                let known: Vec<Option<usize>> = shape
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match d {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Named(p) => named.get(p).map(|(n, _)| *n),
                        Dim::Unknown if axis == 0 => overrides.batch,
                        Dim::Unknown => None,
                    })
                    .collect();
                if let Some(axis) = known.iter().position(Option::is_none) {
                    let example = known.iter().map(|k| k.unwrap_or(8).to_string()).collect::<Vec<_>>().join("x");
                    let name = match &shape[axis] {
                        Dim::Named(p) => format!("'{p}'"),
                        _ => "unnamed".into(),
                    };
                    return Err(ImportError::UnresolvedDim { input: input.name.clone(), axis, name, example });
                }
                known.into_iter().flatten().collect()
            }
        };
        out.push(InputShape { name: input.name.clone(), dtype: input.dtype, dims });
    }
    Ok(out)
}

fn join_dims(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::ValueInfo;

    fn model(inputs: &[(&str, Vec<Dim>)]) -> OnnxModel {
        OnnxModel {
            ir_version: 8,
            opset: 17,
            opset_imports: vec![(String::new(), 17)],
            producer: String::new(),
            graph_name: String::new(),
            initializers: vec![],
            inputs: inputs
                .iter()
                .map(|(n, d)| ValueInfo { name: n.to_string(), dtype: Some(DataType::I64), shape: Some(d.clone()) })
                .collect(),
            outputs: vec![],
            value_info: vec![],
            nodes: vec![],
        }
    }

    fn named(s: &str) -> Dim {
        Dim::Named(s.into())
    }

    #[test]
    fn parse_accepts_names_sizes_and_scalars() {
        let o = ShapeOverrides::parse(Some(4), &["input_ids=8x128", "t="]).unwrap();
        assert_eq!(o.batch, Some(4));
        assert_eq!(o.shapes, vec![("input_ids".to_string(), vec![8, 128]), ("t".to_string(), vec![])]);
    }

    #[test]
    fn parse_rejects_bad_specs() {
        for bad in ["x", "=8x3", "x=8xx3", "x=8x0", "x=eight"] {
            let e = ShapeOverrides::parse(None, &[bad]).unwrap_err();
            assert!(matches!(e, ImportError::InvalidShapeSpec { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("NAME=AxBxC"), "{e}");
        }
        assert!(matches!(ShapeOverrides::parse(None, &["x=1", "x=2"]), Err(ImportError::InvalidShapeSpec { .. })));
        assert!(matches!(ShapeOverrides::parse::<&str>(Some(0), &[]), Err(ImportError::InvalidBatch)));
    }

    #[test]
    fn batch_fixes_dynamic_first_dims_and_named_dims_are_shared() {
        let m = model(&[("ids", vec![named("batch"), named("seq")]), ("mask", vec![named("batch"), named("seq")])]);
        let o = ShapeOverrides::parse(Some(2), &["ids=2x16"]).unwrap();
        let r = resolve_input_shapes(&m, &o).unwrap();
        assert_eq!(r[0].dims, vec![2, 16]);
        assert_eq!(r[1].dims, vec![2, 16], "the mask takes 'seq' from the ids' shape");

        let m = model(&[("x", vec![Dim::Unknown, Dim::Fixed(3), Dim::Fixed(64), Dim::Fixed(64)])]);
        let r = resolve_input_shapes(&m, &ShapeOverrides::parse::<&str>(Some(8), &[]).unwrap()).unwrap();
        assert_eq!(r[0].dims, vec![8, 3, 64, 64]);
    }

    #[test]
    fn unresolved_dims_name_the_flag_to_pass() {
        let m = model(&[("ids", vec![named("batch"), named("seq")])]);
        let e = resolve_input_shapes(&m, &ShapeOverrides::parse::<&str>(Some(2), &[]).unwrap()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImportError::UnresolvedDim { axis: 1, .. }), "{msg}");
        assert!(msg.contains("'seq'") && msg.contains("--input-shape ids=2x8") && msg.contains("--batch N"), "{msg}");

        let e = resolve_input_shapes(&m, &ShapeOverrides::default()).unwrap_err();
        assert!(matches!(e, ImportError::UnresolvedDim { axis: 0, .. }), "{e}");
    }

    #[test]
    fn conflicts_are_errors() {
        let m = model(&[
            ("x", vec![Dim::Fixed(2), Dim::Fixed(3)]),
            ("ids", vec![named("b"), named("s")]),
            ("mask", vec![named("b"), named("s")]),
        ]);
        let e = resolve_input_shapes(&m, &ShapeOverrides::parse(None, &["x=4x3"]).unwrap()).unwrap_err();
        assert!(matches!(e, ImportError::ShapeConflict { axis: 0, fixed: 2, asked: 4, .. }), "{e}");
        let e = resolve_input_shapes(&m, &ShapeOverrides::parse(None, &["x=2x3x1"]).unwrap()).unwrap_err();
        assert!(matches!(e, ImportError::ShapeRankMismatch { expected: 2, found: 3, .. }), "{e}");
        let e = resolve_input_shapes(&m, &ShapeOverrides::parse(None, &["x=2x3", "ids=2x5", "mask=2x6"]).unwrap()).unwrap_err();
        assert!(matches!(e, ImportError::NamedDimConflict { first: 5, second: 6, .. }), "{e}");
        let e = resolve_input_shapes(&m, &ShapeOverrides::parse(None, &["y=1"]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("x, ids, mask"), "{e}");
        let e = resolve_input_shapes(&m, &ShapeOverrides::parse::<&str>(Some(8), &[]).unwrap()).unwrap_err();
        assert!(matches!(e, ImportError::ShapeConflict { fixed: 2, asked: 8, .. }), "{e}");
    }
}
