//! A thin layer over [`Graph::emit`] that creates PyTorch-style modules: the parameters with their
//! PyTorch names and initial values, and the primitive-op nodes that compute the module.
//!
//! Every node is a forward node of the train program; the compiler derives the backward pass,
//! the optimizer and the eval program from them.

use pock_compiler::ir::{DType, Graph, Phase, Program, Role, TensorDef, TensorId};
use pock_compiler::Result;
use pock_engine::ops::{BatchNorm, Clip, Conv2d, ConvOp, DenseOp, MatMul, NormOp, Op, Pool2d, PoolOp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a convolution or linear weight is initialised. The bias, where there is one, follows
/// PyTorch: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` with the layer defaults, zero with torchvision's
/// overrides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightInit {
    /// `nn.Conv2d` / `nn.Linear` defaults: `kaiming_uniform_(a=sqrt(5))`, which is
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    TorchDefault,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, 2/fan_out)`, where fan_out
    /// counts `out_channels * kh * kw` (PyTorch does not divide by groups).
    KaimingNormalFanOut,
    /// `normal_(0, std)`.
    Normal { std: f32 },
}

/// A 2-D convolution module. Padding is `kernel / 2` on every side, which keeps the size for
/// stride 1 and odd kernels; every convolution in the zoo uses it.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub bias: bool,
    pub init: WeightInit,
}

impl Conv {
    /// Stride 1, no groups, no bias, PyTorch's default initialisation.
    pub fn new(out_channels: usize, kernel: usize) -> Self {
        Conv { out_channels, kernel, stride: 1, groups: 1, bias: false, init: WeightInit::TorchDefault }
    }
    pub fn stride(self, stride: usize) -> Self {
        Conv { stride, ..self }
    }
    pub fn groups(self, groups: usize) -> Self {
        Conv { groups, ..self }
    }
    pub fn bias(self, bias: bool) -> Self {
        Conv { bias, ..self }
    }
    pub fn init(self, init: WeightInit) -> Self {
        Conv { init, ..self }
    }
}

/// Builds a graph module by module. Parameters draw their initial values from a stream keyed by
/// the seed and their own name (see the crate documentation).
pub struct Builder {
    pub graph: Graph,
    seed: u64,
}

impl Builder {
    pub fn new(seed: u64) -> Self {
        Builder { graph: Graph::new(), seed }
    }

    /// The model input, named `input`.
    pub fn input(&mut self, shape: Vec<usize>) -> TensorId {
        self.graph.input("input", shape, DType::F32, Role::Input)
    }

    /// The random stream of one parameter: the seed and a hash of the name form the ChaCha key.
    fn rng_for(&self, name: &str) -> ChaCha8Rng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&fnv1a(name.as_bytes()).to_le_bytes());
        ChaCha8Rng::from_seed(key)
    }

    fn uniform(&self, name: &str, n: usize, bound: f32) -> Vec<f32> {
        let mut rng = self.rng_for(name);
        // `random_range` panics on an empty range; a zero bound only arises for empty fans, which
        // the shape checks reject anyway, but keep the draw well defined.
        if bound <= 0.0 {
            return vec![0.0; n];
        }
        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
    }

    fn normal(&self, name: &str, n: usize, std: f32) -> Vec<f32> {
        let mut rng = self.rng_for(name);
        standard_normals(&mut rng, n).into_iter().map(|z| (z * std as f64) as f32).collect()
    }

    /// A trainable parameter initialised as `init` prescribes for a weight with these fans.
    fn weight(&mut self, name: String, shape: Vec<usize>, init: WeightInit, fan_in: usize, fan_out: usize) -> TensorId {
        if !charge_parameters(&name, &shape) {
            return self.graph.parameter(name, vec![0], Vec::new());
        }
        let n = shape.iter().product();
        let values = match init {
            WeightInit::TorchDefault => self.uniform(&name, n, 1.0 / (fan_in as f32).sqrt()),
            WeightInit::KaimingNormalFanOut => self.normal(&name, n, (2.0 / fan_out as f32).sqrt()),
            WeightInit::Normal { std } => self.normal(&name, n, std),
        };
        self.graph.parameter(name, shape, values)
    }

    /// The bias that goes with a weight initialised by `init`.
    fn bias(&mut self, name: String, channels: usize, init: WeightInit, fan_in: usize) -> TensorId {
        if !charge_parameters(&name, &[channels]) {
            return self.graph.parameter(name, vec![0], Vec::new());
        }
        let values = match init {
            WeightInit::TorchDefault => self.uniform(&name, channels, 1.0 / (fan_in as f32).sqrt()),
            WeightInit::KaimingNormalFanOut | WeightInit::Normal { .. } => vec![0.0; channels],
        };
        self.graph.parameter(name, vec![channels], values)
    }

    fn node(&mut self, name: &str, op: impl Into<Op>, inputs: &[TensorId]) -> Result<TensorId> {
        Ok(self.graph.emit(name, op, inputs, Phase::Forward, Program::Train)?[0])
    }

    /// `nn.Conv2d` at `path`: `<path>.weight` `[out, in/groups, k, k]` and, with a bias,
    /// `<path>.bias` added by a `<path>.bias_add` node.
    pub fn conv2d(&mut self, path: &str, x: TensorId, conv: Conv) -> Result<TensorId> {
        let in_channels = self.graph.shape(x).get(1).copied().unwrap_or(0);
        let groups = conv.groups.max(1);
        let k = conv.kernel;
        let shape = vec![conv.out_channels, in_channels / groups, k, k];
        let fan_in = (in_channels / groups) * k * k;
        let fan_out = conv.out_channels * k * k;
        let w = self.weight(format!("{path}.weight"), shape, conv.init, fan_in, fan_out);
        let p = k / 2;
        let op = ConvOp::Conv2d(Conv2d { stride: [conv.stride; 2], padding: [p; 4], dilation: [1, 1], groups: conv.groups });
        let y = self.node(path, op, &[x, w])?;
        if !conv.bias {
            return Ok(y);
        }
        let b = self.bias(format!("{path}.bias"), conv.out_channels, conv.init, fan_in);
        self.node(&format!("{path}.bias_add"), DenseOp::BiasAdd, &[y, b])
    }

    /// `nn.BatchNorm2d` / `nn.BatchNorm1d` at `path` in training mode (eps 1e-5, momentum 0.1):
    /// `<path>.weight` (1), `<path>.bias` (0), and the running statistics
    /// `<path>.running_mean` (0) and `<path>.running_var` (1), which the node updates in place.
    pub fn batch_norm(&mut self, path: &str, x: TensorId) -> Result<TensorId> {
        let c = self.graph.shape(x).get(1).copied().unwrap_or(0);
        let gamma = self.graph.parameter(format!("{path}.weight"), vec![c], vec![1.0; c]);
        let beta = self.graph.parameter(format!("{path}.bias"), vec![c], vec![0.0; c]);
        let mut stat = |name: String, value: f32| {
            self.graph.add_tensor(TensorDef {
                name,
                shape: vec![c],
                dtype: DType::F32,
                role: Role::RunningStat,
                init: Some(vec![value; c].into()),
            })
        };
        let running_mean = stat(format!("{path}.running_mean"), 0.0);
        let running_var = stat(format!("{path}.running_var"), 1.0);
        let op = NormOp::BatchNormTrain(BatchNorm { eps: 1e-5, momentum: 0.1 });
        let outputs = self.graph.emit_inplace(path, op, &[x, gamma, beta], &[running_mean, running_var], Phase::Forward, Program::Train)?;
        Ok(outputs[0])
    }

    pub fn relu(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.node(name, DenseOp::Relu, &[x])
    }

    /// `nn.ReLU6`, which is a clip to `[0, 6]`.
    pub fn relu6(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.node(name, DenseOp::Clip(Clip { min: 0.0, max: 6.0 }), &[x])
    }

    /// `nn.Linear` at `path`: `<path>.weight` `[out, in]` used transposed, and `<path>.bias`
    /// added by a `<path>.bias_add` node.
    pub fn linear(&mut self, path: &str, x: TensorId, out_features: usize, init: WeightInit) -> Result<TensorId> {
        let in_features = self.graph.shape(x).get(1).copied().unwrap_or(0);
        let w = self.weight(format!("{path}.weight"), vec![out_features, in_features], init, in_features, out_features);
        let y = self.node(path, DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[x, w])?;
        let b = self.bias(format!("{path}.bias"), out_features, init, in_features);
        self.node(&format!("{path}.bias_add"), DenseOp::BiasAdd, &[y, b])
    }

    /// `torch.flatten(x, 1)`: `[N, ...] -> [N, prod(...)]`.
    pub fn flatten(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let shape = self.graph.shape(x);
        let n = shape.first().copied().unwrap_or(1);
        let rest = shape.iter().skip(1).product();
        self.node(name, DenseOp::Reshape { shape: vec![n, rest] }, &[x])
    }

    /// `nn.AdaptiveAvgPool2d((1, 1))`: `[N, C, H, W] -> [N, C, 1, 1]`.
    pub fn global_avg_pool(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.node(name, PoolOp::GlobalAvgPool, &[x])
    }

    /// `nn.MaxPool2d(kernel, stride, padding)` (floor mode).
    pub fn max_pool(&mut self, name: &str, x: TensorId, kernel: usize, stride: usize, padding: usize) -> Result<TensorId> {
        let pool = Pool2d { kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 4], count_include_pad: true };
        self.node(name, PoolOp::MaxPool2d(pool), &[x])
    }

    pub fn add(&mut self, name: &str, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.node(name, DenseOp::Add, &[a, b])
    }

    /// Convolution, BatchNorm and an optional activation as torchvision's `Conv2dNormActivation`
    /// names them: `<path>.0`, `<path>.1`, `<path>.2`.
    pub fn conv_bn_act(&mut self, path: &str, x: TensorId, conv: Conv, act: Activation) -> Result<TensorId> {
        let y = self.conv2d(&format!("{path}.0"), x, conv)?;
        let y = self.batch_norm(&format!("{path}.1"), y)?;
        match act {
            Activation::None => Ok(y),
            Activation::Relu => self.relu(&format!("{path}.2"), y),
            Activation::Relu6 => self.relu6(&format!("{path}.2"), y),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Relu6,
}

/// FNV-1a, 64 bits: a stable hash of a parameter name (std's hashers may change between Rust
/// releases, which would change every initial value).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `n` standard normal draws by the Box–Muller transform, two per pair of uniforms.
pub fn standard_normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // `random::<f64>()` is in [0, 1); `1 - u` is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push(r * theta.cos());
        out.push(r * theta.sin());
    }
    out.truncate(n);
    out
}

/// The most parameters a zoo model may have (4 GiB of float32 initial values): beyond it a
/// spec such as `zoo:mlp:hidden=1000000` would exhaust memory while drawing initial values.
pub const MAX_PARAMETERS: u64 = 1 << 30;

std::thread_local! {
    /// Parameters drawn so far by the model being built on this thread, and the first
    /// parameter that went over [`MAX_PARAMETERS`]. A thread-local keeps the budget out of every
    /// builder's signature; `crate::build` resets and reads it around each build.
    static PARAMETER_BUDGET: std::cell::RefCell<(u64, Option<String>)> = const { std::cell::RefCell::new((0, None)) };
}

pub(crate) fn reset_parameter_budget() {
    PARAMETER_BUDGET.with(|b| *b.borrow_mut() = (0, None));
}

pub(crate) fn take_parameter_overflow() -> Option<String> {
    PARAMETER_BUDGET.with(|b| b.borrow_mut().1.take())
}

/// Counts a parameter against the budget; false (and the reason recorded) when it does not fit.
fn charge_parameters(name: &str, shape: &[usize]) -> bool {
    PARAMETER_BUDGET.with(|b| {
        let mut b = b.borrow_mut();
        if b.1.is_some() {
            return false;
        }
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        match n.and_then(|n| b.0.checked_add(n)).filter(|&total| total <= MAX_PARAMETERS) {
            Some(total) => {
                b.0 = total;
                true
            }
            None => {
                b.1 = Some(format!("parameter '{name}' of shape {shape:?} brings the parameter count past {MAX_PARAMETERS}"));
                false
            }
        }
    })
}
