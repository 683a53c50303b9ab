//! Synthetic datasets made in code, for the demo and for tests. Each one is a pure function of
//! its arguments: the same seed gives the same bytes on every machine.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Dataset, Targets};

/// Labels of the [`shapes`] dataset, in class order.
pub const SHAPE_CLASSES: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// `n` grayscale images `[n, 1, size, size]` of four classes: 0 filled circle, 1 filled square,
/// 2 filled triangle, 3 cross (a plus sign). Sample `i` has class `i % 4`, so every prefix of the
/// dataset is balanced.
///
/// Each shape gets a random area (6% to 20% of the image), centre, rotation (up to 15 degrees
/// either way), foreground and background level, and Gaussian pixel noise (standard deviation
/// 0.05); values are clipped to `[0, 1]`. The area is drawn from the same range for every
/// class and the shape's size is derived from it, so the brightness of an image says nothing
/// about its class: a model has to look at the outline. Edges are anti-aliased so that small
/// images still show the shapes' geometry. Sizes from about 16 pixels up work well; 28 is the
/// demo's.
pub fn shapes(n: usize, size: usize, seed: u64) -> Dataset {
    let style = ShapeStyle {
        classes: [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0)],
        background: (0.0, 0.2),
        foreground: (0.6, 1.0),
        noise: 0.05,
        tag: b"shapes",
    };
    draw_shapes(n, size, seed, &style)
}

/// Labels of the [`shifted_shapes`] dataset, in class order.
pub const SHIFTED_SHAPE_CLASSES: [&str; 4] = ["diamond", "x", "ring", "down-triangle"];

/// The distribution [`shapes`] shifts to in a transfer task: `n` grayscale images of four new
/// classes made of the same strokes, at lower contrast and with twice the noise. Class 0 is a
/// diamond (a square turned 45 degrees), 1 an X (the cross turned 45 degrees), 2 a ring (a
/// circle's outline, a fifth of its radius thick), 3 a triangle pointing down. Sample `i` has
/// class `i % 4`.
///
/// The labels are chosen so that none coincides with the [`shapes`] class its shape resembles
/// (a diamond is labelled 0, the circle's label; the square's label 1 goes to the X): a model
/// trained on [`shapes`] is near 0% accurate here before fine-tuning, although the features it
/// learned (edges, corners, strokes) still apply. Backgrounds are brighter (0.25 to 0.45) and
/// foregrounds dimmer (0.55 to 0.85) than in [`shapes`], with noise of standard deviation 0.1.
pub fn shifted_shapes(n: usize, size: usize, seed: u64) -> Dataset {
    use std::f64::consts::{FRAC_PI_4, PI};
    let style = ShapeStyle {
        classes: [(1, FRAC_PI_4), (3, FRAC_PI_4), (4, 0.0), (2, PI)],
        background: (0.25, 0.45),
        foreground: (0.55, 0.85),
        noise: 0.1,
        tag: b"shifted shapes",
    };
    draw_shapes(n, size, seed, &style)
}

/// How a shapes dataset draws its images.
struct ShapeStyle {
    /// Per class: the shape (see [`Shape::with_area`]) and a fixed rotation in radians, added to
    /// the random one.
    classes: [(usize, f64); 4],
    background: (f64, f64),
    foreground: (f64, f64),
    /// Standard deviation of the Gaussian pixel noise.
    noise: f64,
    /// Names the random stream, so that two datasets drawn with one seed are independent.
    tag: &'static [u8],
}

fn draw_shapes(n: usize, size: usize, seed: u64, style: &ShapeStyle) -> Dataset {
    let mut rng = stream(seed, style.tag);
    let s = size as f64;
    let pixels = size * size;
    let mut x = vec![0f32; n * pixels];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % 4;
        let (kind, rotation) = style.classes[class];
        let area = rng.random_range(0.06..0.20) * s * s;
        let shape = Shape::with_area(kind, area);
        let theta: f64 = rotation + rng.random_range(-0.26..0.26);
        let extent = shape.extent() + 1.0;
        let mut centre = || if s > 2.0 * extent { rng.random_range(extent..s - extent) } else { s / 2.0 };
        let (cx, cy) = (centre(), centre());
        let background: f64 = rng.random_range(style.background.0..style.background.1);
        let foreground: f64 = rng.random_range(style.foreground.0..style.foreground.1);
        let noise = normals(&mut rng, pixels);
        let image = &mut x[i * pixels..(i + 1) * pixels];
        let (sin, cos) = theta.sin_cos();
        for (p, px) in image.iter_mut().enumerate() {
            // Pixel centre relative to the shape's centre, rotated into the shape's own frame.
            let (dx, dy) = ((p % size) as f64 + 0.5 - cx, (p / size) as f64 + 0.5 - cy);
            let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
            // Coverage of a one-pixel box by the shape, from the signed distance to its edge.
            let coverage = (0.5 - shape.signed_distance(u, v)).clamp(0.0, 1.0);
            let value = background + (foreground - background) * coverage + style.noise * noise[p];
            *px = value.clamp(0.0, 1.0) as f32;
        }
        labels.push(class as i64);
    }
    Dataset { x, x_shape: vec![n, 1, size, size], y: Some(Targets::Labels(labels)), inputs: Vec::new() }
}

/// One of the shapes, sized in pixels.
enum Shape {
    Circle {
        radius: f64,
    },
    /// Axis-aligned (before rotation) square of half side `half`.
    Square {
        half: f64,
    },
    /// Equilateral triangle pointing up, centred on its centroid, with circumradius `radius`.
    Triangle {
        radius: f64,
    },
    /// Plus sign with arms of half length `half` and half thickness `0.3 * half`.
    Cross {
        half: f64,
    },
    /// A circle's outline: radius `radius` to the middle of the stroke, half thickness `0.1 * radius`.
    Ring {
        radius: f64,
    },
}

impl Shape {
    /// Shape `kind` (0 circle, 1 square, 2 triangle, 3 cross, 4 ring) covering `area` pixels.
    fn with_area(kind: usize, area: f64) -> Shape {
        match kind {
            0 => Shape::Circle { radius: (area / std::f64::consts::PI).sqrt() },
            1 => Shape::Square { half: area.sqrt() / 2.0 },
            // Area of an equilateral triangle with circumradius R: (3 sqrt(3) / 4) R^2.
            2 => Shape::Triangle { radius: (area * 4.0 / (3.0 * 3f64.sqrt())).sqrt() },
            // Two 2L x 0.6L bars overlapping in a 0.6L square: 2.04 L^2.
            3 => Shape::Cross { half: (area / 2.04).sqrt() },
            // An annulus of mean radius R and thickness 0.2 R: 0.4 pi R^2.
            _ => Shape::Ring { radius: (area / (0.4 * std::f64::consts::PI)).sqrt() },
        }
    }

    /// Distance from the centre that contains the whole shape at any rotation.
    fn extent(&self) -> f64 {
        match *self {
            Shape::Circle { radius } | Shape::Triangle { radius } => radius,
            Shape::Ring { radius } => radius * 1.1,
            Shape::Square { half } => half * std::f64::consts::SQRT_2,
            Shape::Cross { half } => half * 1.05,
        }
    }

    /// Signed distance (negative inside) from `(u, v)` to the outline, exact near the edges,
    /// which is all the anti-aliasing needs.
    fn signed_distance(&self, u: f64, v: f64) -> f64 {
        match *self {
            Shape::Circle { radius } => u.hypot(v) - radius,
            Shape::Ring { radius } => (u.hypot(v) - radius).abs() - 0.1 * radius,
            Shape::Square { half } => u.abs().max(v.abs()) - half,
            Shape::Triangle { radius } => {
                // Image rows grow downwards, so the apex is at -v. The outward edge normals point
                // away from the vertices; the inradius is half the circumradius.
                let c = 3f64.sqrt() / 2.0;
                let edges = [v, -c * u - 0.5 * v, c * u - 0.5 * v];
                edges.into_iter().fold(f64::MIN, f64::max) - radius / 2.0
            }
            Shape::Cross { half } => {
                let w = 0.3 * half;
                let horizontal = (u.abs() - half).max(v.abs() - w);
                let vertical = (u.abs() - w).max(v.abs() - half);
                horizontal.min(vertical)
            }
        }
    }
}

/// `n` points in `features` dimensions around `classes` centres (sample `i` has class
/// `i % classes`). Centres are at least 4 apart and points spread with standard deviation 0.5,
/// so the classes are separable with a margin of several standard deviations. `classes` is
/// at least 1.
///
/// The centres depend only on `features` and `classes`, not on the seed: the seed draws the
/// samples, so datasets made with different seeds are independent samples of the same problem
/// (one seed for training data, another for test data).
pub fn blobs(n: usize, features: usize, classes: usize, seed: u64) -> Dataset {
    let classes = classes.max(1);
    let centres = blob_centres(features, classes);
    let mut rng = stream(seed, b"blobs");
    let noise = normals(&mut rng, n * features);
    let x = (0..n * features).map(|k| (centres[(k / features) % classes][k % features] + BLOB_SPREAD * noise[k]) as f32).collect();
    let labels = (0..n).map(|i| (i % classes) as i64).collect();
    Dataset { x, x_shape: vec![n, features], y: Some(Targets::Labels(labels)), inputs: Vec::new() }
}

const BLOB_SPREAD: f64 = 0.5;

/// The class centres of [`blobs`], a function of the problem's size only.
fn blob_centres(features: usize, classes: usize) -> Vec<Vec<f64>> {
    const MIN_DISTANCE: f64 = 4.0;
    let mut rng = problem_stream(b"blob centres", &[features, classes]);
    let mut centres: Vec<Vec<f64>> = Vec::with_capacity(classes);
    // Rejection sampling in a box that grows whenever it looks too crowded, so any number of
    // classes in any dimension ends up placed.
    let mut half_width = 3.0;
    let mut failures = 0;
    while centres.len() < classes {
        let candidate: Vec<f64> = (0..features).map(|_| rng.random_range(-half_width..half_width)).collect();
        let distance = |c: &Vec<f64>| c.iter().zip(&candidate).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        if features > 0 && centres.iter().any(|c| distance(c) < MIN_DISTANCE) {
            failures += 1;
            if failures == 100 {
                half_width *= 1.25;
                failures = 0;
            }
            continue;
        }
        centres.push(candidate);
    }
    centres
}

/// `n` samples of `x ~ N(0, I)` in `features` dimensions with targets `y = W x + b + e`, where
/// `W` (`N(0, 1 / features)` entries) and `b` (`N(0, 0.25)`) are fixed and `e` is noise with
/// standard deviation 0.01. A linear model can fit it to a mean squared error near 1e-4.
///
/// `W` and `b` depend only on `features` and `outputs`; the seed draws `x` and the noise, so
/// datasets made with different seeds are independent samples of the same problem.
pub fn regression(n: usize, features: usize, outputs: usize, seed: u64) -> Dataset {
    let mut problem = problem_stream(b"regression map", &[features, outputs]);
    let scale = 1.0 / (features.max(1) as f64).sqrt();
    let w: Vec<f64> = normals(&mut problem, outputs * features).into_iter().map(|z| z * scale).collect();
    let b: Vec<f64> = normals(&mut problem, outputs).into_iter().map(|z| z * 0.5).collect();
    let mut rng = stream(seed, b"regression");
    let x = normals(&mut rng, n * features);
    let noise = normals(&mut rng, n * outputs);
    let mut y = Vec::with_capacity(n * outputs);
    for i in 0..n {
        let row = &x[i * features..(i + 1) * features];
        for o in 0..outputs {
            let dot: f64 = w[o * features..(o + 1) * features].iter().zip(row).map(|(a, b)| a * b).sum();
            y.push((dot + b[o] + 0.01 * noise[i * outputs + o]) as f32);
        }
    }
    Dataset {
        x: x.into_iter().map(|v| v as f32).collect(),
        x_shape: vec![n, features],
        y: Some(Targets::Values { data: y, shape: vec![n, outputs] }),
        inputs: Vec::new(),
    }
}

/// The stream that defines a problem (cluster centres, a linear map) from its dimensions, kept
/// apart from the per-seed sample streams.
fn problem_stream(tag: &[u8], dims: &[usize]) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, &d) in key.chunks_exact_mut(8).zip(dims) {
        chunk.copy_from_slice(&(d as u64).to_le_bytes());
    }
    let len = tag.len().min(16);
    key[16..16 + len].copy_from_slice(&tag[..len]);
    ChaCha8Rng::from_seed(key)
}

/// A ChaCha8 stream keyed by the seed and the dataset's name, so two generators given the same
/// seed do not share random numbers.
fn stream(seed: u64, tag: &[u8]) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let len = tag.len().min(24);
    key[8..8 + len].copy_from_slice(&tag[..len]);
    ChaCha8Rng::from_seed(key)
}

/// `n` standard normal draws (Box–Muller).
fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // `1 - u` is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        out.push(r * cos);
        out.push(r * sin);
    }
    out.truncate(n);
    out
}

/// Readings per axis in one window.
pub const SENSOR_WINDOW: usize = 16;
const SENSOR_CLASSES: usize = 4;

/// Per activity and axis: cycles per window and amplitude.
const SENSOR_ACTIVITIES: [[(f32, f32); 3]; SENSOR_CLASSES] = [
    [(0.0, 0.05), (0.0, 0.05), (0.0, 0.05)], // still
    [(2.0, 0.6), (1.0, 0.3), (2.0, 0.4)],    // walking
    [(4.0, 1.2), (2.0, 0.8), (4.0, 1.0)],    // running
    [(1.0, 0.2), (5.0, 0.9), (0.5, 0.3)],    // cycling
];

/// `n` windows of a 3-axis accelerometer, [`SENSOR_WINDOW`] readings per axis (`x` is
/// `[n, 3 * SENSOR_WINDOW]`), in four activities (still, walking, running, cycling; sample `i` has
/// class `i % 4`): per axis a sinusoid of the activity's frequency and amplitude with a random
/// phase, a gravity offset on z and noise (standard deviation about 0.1). The sensor-like data of
/// the bare-metal trainer (`examples/mcu_data.rs`) and of the int8 checks (`tests/int8.rs`).
pub fn sensor_windows(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let features = 3 * SENSOR_WINDOW;
    let mut x = Vec::with_capacity(n * features);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % SENSOR_CLASSES;
        for (axis, &(cycles, amplitude)) in SENSOR_ACTIVITIES[class].iter().enumerate() {
            let phase: f32 = rng.random_range(0.0..2.0 * std::f32::consts::PI);
            let gravity = if axis == 2 { 1.0 } else { 0.0 };
            for t in 0..SENSOR_WINDOW {
                let angle = 2.0 * std::f32::consts::PI * cycles * t as f32 / SENSOR_WINDOW as f32 + phase;
                // Noise: the sum of three uniforms, roughly normal with standard deviation 0.1.
                let noise: f32 = (0..3).map(|_| rng.random_range(-0.1f32..0.1)).sum();
                x.push(gravity + amplitude * angle.sin() + noise);
            }
        }
        labels.push(class as i64);
    }
    Dataset { x, x_shape: vec![n, features], y: Some(Targets::Labels(labels)), inputs: Vec::new() }
}
