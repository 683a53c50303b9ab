//! The deterministic weight generator shared with `tests/onnx/make_models.py`.
//!
//! The ONNX fixtures keep their large weights out of the repository: each float tensor is
//! described by a key (its PyTorch or ONNX name) and a rule, and both this module and the Python
//! script produce the same values bit for bit from them. The arithmetic is integer except for one
//! f32 multiply per element, so no platform's float rounding can make the two disagree:
//!
//! ```text
//! seed(key)         = FNV-1a 64 of the key's UTF-8 bytes
//! z(i)              = splitmix64 finaliser of seed + (i + 1) * 0x9E3779B97F4A7C15 (mod 2^64)
//! uniform(bound)[i] = f32(2 * (z(i) >> 40) - (2^24 - 1)) * (bound / 2^24)
//! constant(v)[i]    = v
//! randint(n)[i]     = (z(i) >> 32) mod n
//! ```

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a, 64-bit, of the key's bytes: the per-tensor seed.
pub fn fnv1a64(key: &str) -> u64 {
    key.bytes().fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// The `index`-th output of a splitmix64 stream started at `seed`. Stateless, so any element can
/// be computed on its own.
pub fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a float tensor's values are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FloatRule {
    /// Uniform in (-bound, bound), on a grid of 2^24 odd steps.
    Uniform {
        bound: f32,
    },
    Constant {
        value: f32,
    },
}

impl FloatRule {
    /// `count` values for the tensor with this key.
    pub fn generate(self, key: &str, count: usize) -> Vec<f32> {
        match self {
            FloatRule::Constant { value } => vec![value; count],
            FloatRule::Uniform { bound } => {
                let seed = fnv1a64(key);
                // Dividing by a power of two is exact, so this scale is the same wherever computed.
                let scale = bound / 16_777_216.0;
                (0..count as u64)
                    .map(|i| {
                        let k = 2 * (splitmix64(seed, i) >> 40) as i64 - ((1 << 24) - 1);
                        k as f32 * scale
                    })
                    .collect()
            }
        }
    }
}

/// `count` integers in `0..n` for the tensor with this key (token ids, labels). `n` must be at
/// least 1.
pub fn randint(key: &str, n: u64, count: usize) -> Vec<i64> {
    let seed = fnv1a64(key);
    (0..count as u64).map(|i| ((splitmix64(seed, i) >> 32) % n.max(1)) as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values printed by tests/onnx/make_models.py's generator.
    #[test]
    fn matches_the_python_generator() {
        assert_eq!(fnv1a64(""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64("conv1.weight"), 0x69a29a2cee47d254);
        let seed = fnv1a64("conv1.weight");
        assert_eq!(
            [splitmix64(seed, 0), splitmix64(seed, 1), splitmix64(seed, 2)],
            [0x8b8a08a85128a1b0, 0xbec2eba82f6f054f, 0x05de32eeed3c84ab]
        );
        let bound = f32::from_bits(1044713891);
        assert_eq!(bound, (1.0 / 27f64.sqrt()) as f32);
        let v = FloatRule::Uniform { bound }.generate("conv1.weight", 5);
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, [1015947329, 1036075337, 3191605466, 1035612255, 3176004069]);
        assert_eq!(randint("labels", 10, 6), [8, 9, 8, 9, 8, 4]);
    }

    #[test]
    fn uniform_stays_inside_its_bound_and_is_centred() {
        let v = FloatRule::Uniform { bound: 0.5 }.generate("w", 10_000);
        assert!(v.iter().all(|x| x.abs() < 0.5));
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert_eq!(FloatRule::Constant { value: 1.0 }.generate("w", 3), [1.0; 3]);
    }
}
