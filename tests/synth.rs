//! Synthetic datasets: shapes, determinism, balance, and that each one has the structure it
//! promises (shapes told apart by outline, not brightness; separable blobs; linear targets).

use pock::data::{Dataset, TargetKind, Targets};
use pock::synth::{blobs, regression, shapes, shifted_shapes};

fn labels(ds: &Dataset) -> &[i64] {
    match &ds.y {
        Some(Targets::Labels(l)) => l,
        other => panic!("expected labels, got {other:?}"),
    }
}

fn class_counts(labels: &[i64], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

/// Accuracy of classifying each sample by the nearest class mean of the given features.
fn nearest_mean_accuracy(features: &[Vec<f64>], labels: &[i64], classes: usize) -> f64 {
    let dims = features[0].len();
    let mut means = vec![vec![0.0; dims]; classes];
    let counts = class_counts(labels, classes);
    for (f, &l) in features.iter().zip(labels) {
        for (m, v) in means[l as usize].iter_mut().zip(f) {
            *m += v / counts[l as usize] as f64;
        }
    }
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
    let correct = features
        .iter()
        .zip(labels)
        .filter(|(f, &l)| (0..classes).min_by(|&a, &b| dist(f, &means[a]).total_cmp(&dist(f, &means[b]))) == Some(l as usize))
        .count();
    correct as f64 / labels.len() as f64
}

#[test]
fn shapes_layout_balance_and_range() {
    let ds = shapes(400, 28, 1);
    assert_eq!(ds.x_shape, vec![400, 1, 28, 28]);
    assert_eq!(ds.x.len(), 400 * 28 * 28);
    assert_eq!(class_counts(labels(&ds), 4), vec![100; 4]);
    assert!(ds.x.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(ds.check(&[1, 28, 28], Some(&TargetKind::Labels { classes: 4 })).is_ok());
    // Every prefix is balanced too.
    assert_eq!(class_counts(&labels(&ds)[..12], 4), vec![3; 4]);
}

#[test]
fn shapes_are_deterministic_by_seed() {
    assert_eq!(shapes(40, 16, 5), shapes(40, 16, 5));
    assert_ne!(shapes(40, 16, 5).x, shapes(40, 16, 6).x);
    // A longer dataset starts with the shorter one.
    let long = shapes(60, 16, 5);
    assert_eq!(shapes(40, 16, 5).x[..], long.x[..40 * 256]);
}

#[test]
fn shapes_are_not_told_apart_by_brightness() {
    let ds = shapes(2000, 28, 2);
    let mean_intensity: Vec<Vec<f64>> = ds.x.chunks(784).map(|img| vec![img.iter().map(|&v| v as f64).sum::<f64>() / 784.0]).collect();
    let acc = nearest_mean_accuracy(&mean_intensity, labels(&ds), 4);
    assert!(acc < 0.4, "mean intensity alone classifies {acc:.2} of the shapes");
}

/// Outline features of one image: the fill ratio of the bounding box of its bright pixels, and
/// how far the centroid of those pixels sits from the box centre, vertically (triangles are
/// bottom-heavy, the other shapes symmetric).
fn outline_features(img: &[f32], size: usize) -> Vec<f64> {
    let (lo, hi) = img.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let threshold = (lo + hi) / 2.0;
    let (mut count, mut sum_y) = (0.0, 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (size, 0, size, 0);
    for (p, &v) in img.iter().enumerate() {
        if v > threshold {
            let (x, y) = (p % size, p / size);
            count += 1.0;
            sum_y += y as f64;
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    let (w, h) = ((x1 + 1 - x0) as f64, (y1 + 1 - y0) as f64);
    let centre_y = (y0 + y1) as f64 / 2.0;
    vec![count / (w * h), 4.0 * (sum_y / count - centre_y) / h]
}

#[test]
fn shapes_differ_in_outline() {
    let ds = shapes(2000, 28, 3);
    let features: Vec<Vec<f64>> = ds.x.chunks(784).map(|img| outline_features(img, 28)).collect();
    let acc = nearest_mean_accuracy(&features, labels(&ds), 4);
    assert!(acc > 0.75, "two outline features classify only {acc:.2} of the shapes");
}

#[test]
fn shapes_of_any_size() {
    for size in [0, 1, 8, 64] {
        let ds = shapes(5, size, 0);
        assert_eq!(ds.x.len(), 5 * size * size);
        assert_eq!(labels(&ds), &[0, 1, 2, 3, 0]);
    }
}

#[test]
fn blobs_are_separable() {
    for (features, classes) in [(2, 2), (2, 10), (1, 5), (8, 3)] {
        let ds = blobs(1200, features, classes, 4);
        assert_eq!(ds.x_shape, vec![1200, features]);
        assert_eq!(class_counts(labels(&ds), classes), vec![1200 / classes; classes]);
        let rows: Vec<Vec<f64>> = ds.x.chunks(features).map(|r| r.iter().map(|&v| v as f64).collect()).collect();
        let acc = nearest_mean_accuracy(&rows, labels(&ds), classes);
        assert!(acc > 0.99, "features {features}, classes {classes}: nearest class mean gets {acc}");
    }
    assert_eq!(blobs(50, 3, 4, 9), blobs(50, 3, 4, 9));
    assert_ne!(blobs(50, 3, 4, 9).x, blobs(50, 3, 4, 10).x);
}

#[test]
fn blobs_with_different_seeds_sample_the_same_problem() {
    let (train, test) = (blobs(800, 8, 4, 1), blobs(400, 8, 4, 2));
    let mut means = vec![vec![0.0f64; 8]; 4];
    for (row, &l) in train.x.chunks(8).zip(labels(&train)) {
        for (m, &v) in means[l as usize].iter_mut().zip(row) {
            *m += v as f64 / 200.0;
        }
    }
    let dist = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(&x, y)| (x as f64 - y).powi(2)).sum::<f64>();
    let correct = test
        .x
        .chunks(8)
        .zip(labels(&test))
        .filter(|(row, &l)| (0..4).min_by(|&a, &b| dist(row, &means[a]).total_cmp(&dist(row, &means[b]))) == Some(l as usize))
        .count();
    assert!(correct >= 396, "class means of seed 1 classify {correct} of 400 samples of seed 2");
}

/// Fits `y ~ [x, 1] @ beta` for one output column by least squares (normal equations, fine for a
/// handful of well-conditioned features).
fn linear_fit(x: &[f32], y: &[f32], features: usize, outputs: usize, column: usize) -> Vec<f64> {
    let n = x.len() / features;
    let d = features + 1;
    let mut a = vec![vec![0.0; d + 1]; d];
    for i in 0..n {
        let r = design_row(x, features, i);
        for j in 0..d {
            for k in 0..d {
                a[j][k] += r[j] * r[k];
            }
            a[j][d] += r[j] * y[i * outputs + column] as f64;
        }
    }
    for c in 0..d {
        let pivot = (c..d).max_by(|&p, &q| a[p][c].abs().total_cmp(&a[q][c].abs())).unwrap();
        a.swap(c, pivot);
        for r in 0..d {
            if r != c {
                let f = a[r][c] / a[c][c];
                let pivot_row = a[c].clone();
                for (v, p) in a[r].iter_mut().zip(&pivot_row).skip(c) {
                    *v -= f * p;
                }
            }
        }
    }
    (0..d).map(|j| a[j][d] / a[j][j]).collect()
}

fn design_row(x: &[f32], features: usize, i: usize) -> Vec<f64> {
    x[i * features..(i + 1) * features].iter().map(|&v| v as f64).chain([1.0]).collect()
}

/// Root mean squared error of the linear model `beta` on one output column.
fn rms_error(beta: &[f64], x: &[f32], y: &[f32], features: usize, outputs: usize, column: usize) -> f64 {
    let n = x.len() / features;
    let sq: f64 = (0..n)
        .map(|i| (design_row(x, features, i).iter().zip(beta).map(|(v, b)| v * b).sum::<f64>() - y[i * outputs + column] as f64).powi(2))
        .sum();
    (sq / n as f64).sqrt()
}

#[test]
fn regression_targets_are_linear_plus_small_noise() {
    let (n, features, outputs) = (500, 4, 3);
    let ds = regression(n, features, outputs, 11);
    assert_eq!(ds.x_shape, vec![n, features]);
    let Some(Targets::Values { data, shape }) = &ds.y else { panic!("expected values") };
    assert_eq!(shape, &vec![n, outputs]);
    // A fit on this sample predicts a sample drawn with another seed: the map is the same.
    let other = regression(500, features, outputs, 12);
    let Some(Targets::Values { data: other_y, .. }) = &other.y else { panic!("expected values") };
    for column in 0..outputs {
        let beta = linear_fit(&ds.x, data, features, outputs, column);
        let rms = rms_error(&beta, &ds.x, data, features, outputs, column);
        assert!(rms < 0.02, "output {column}: residual {rms}");
        let rms = rms_error(&beta, &other.x, other_y, features, outputs, column);
        assert!(rms < 0.02, "output {column}: residual {rms} on another seed");
        let mean = (0..n).map(|i| data[i * outputs + column] as f64).sum::<f64>() / n as f64;
        let spread = ((0..n).map(|i| (data[i * outputs + column] as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(spread > 0.3, "output {column} barely varies: {spread}");
    }
    assert!(ds.check(&[features], Some(&TargetKind::Values { shape: vec![outputs] })).is_ok());
    assert_eq!(regression(20, 2, 1, 3), regression(20, 2, 1, 3));
    assert_ne!(regression(20, 2, 1, 3).x, regression(20, 2, 1, 4).x);
}

#[test]
fn synthetic_data_survives_an_npz_round_trip() {
    let dir = std::env::temp_dir().join(format!("pock-test-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, ds) in [("shapes", shapes(8, 12, 0)), ("blobs", blobs(8, 2, 2, 0)), ("regression", regression(8, 3, 2, 0))] {
        let path = dir.join(format!("{name}.npz"));
        ds.save_npz(&path).unwrap();
        assert_eq!(Dataset::load_npz(&path).unwrap(), ds, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shifted_shapes_layout_balance_range_and_determinism() {
    let ds = shifted_shapes(200, 28, 1);
    assert_eq!(ds.x_shape, vec![200, 1, 28, 28]);
    assert_eq!(class_counts(labels(&ds), 4), vec![50; 4]);
    assert!(ds.x.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(ds, shifted_shapes(200, 28, 1));
    assert_ne!(ds.x, shifted_shapes(200, 28, 2).x);
    // Another distribution than shapes': a brighter background on average.
    let mean = |d: &Dataset| d.x.iter().map(|&v| v as f64).sum::<f64>() / d.x.len() as f64;
    assert!(mean(&ds) > mean(&shapes(200, 28, 1)) + 0.1, "{} vs {}", mean(&ds), mean(&shapes(200, 28, 1)));
}
