//! Reference kernels of the random family, and the counter-based generator they draw from.

use crate::kernels::Float;

/// The splitmix64 output function: a bijective mix of 64 bits with full avalanche.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The key of a dropout node: the compile-time seed mixed with a number that identifies the node.
pub fn key(seed: u64, stream: u64) -> u64 {
    mix(seed.wrapping_add(GOLDEN) ^ mix(stream.wrapping_add(GOLDEN.wrapping_mul(2))))
}

/// A uniform value in `[0, 1)` with 24 random bits (exact in f32) for element `index` at step
/// `counter`: splitmix64's sequence from a state that mixes the key and the counter, read at
/// position `index`. Being a pure function of its arguments, it needs no state beyond the counter.
pub fn uniform(key: u64, counter: i64, index: u64) -> f32 {
    let state = mix(key ^ mix((counter as u64).wrapping_add(GOLDEN)));
    let bits = mix(state.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)));
    (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Inverted dropout: `mask[i]` is `1 / (1 - ratio)` where `uniform(key, counter, i) >= ratio`,
/// else 0, and `y = x * mask`.
pub fn dropout<T: Float>(ratio: f32, key: u64, counter: i64, x: &[T], y: &mut [T], mask: &mut [T]) {
    let scale = T::one() / (T::one() - T::from_f32(ratio));
    for (i, ((&x, y), m)) in x.iter().zip(y.iter_mut()).zip(mask.iter_mut()).enumerate() {
        let keep = uniform(key, counter, i as u64) >= ratio;
        *m = if keep { scale } else { T::zero() };
        *y = x * *m;
    }
}

/// `y[i] = low + (high - low) * uniform(key, counter, i)`.
pub fn uniform_fill<T: Float>(low: f32, high: f32, key: u64, counter: i64, y: &mut [T]) {
    let (low, span) = (T::from_f32(low), T::from_f32(high) - T::from_f32(low));
    for (i, y) in y.iter_mut().enumerate() {
        *y = low + span * T::from_f32(uniform(key, counter, i as u64));
    }
}

/// Adds 1 to the step counter.
pub fn advance(counter: &mut [i64]) {
    for c in counter {
        *c = c.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keep_rate_and_scale_match_the_ratio_and_masks_differ_per_counter_and_key() {
        let n = 20_000;
        let x = alloc::vec![2.0f64; n];
        let (mut y, mut m0, mut m1, mut m2) = (alloc::vec![0.0; n], alloc::vec![0.0; n], alloc::vec![0.0; n], alloc::vec![0.0; n]);
        dropout(0.25, key(7, 1), 0, &x, &mut y, &mut m0);
        let kept = m0.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
        // 3 standard deviations of a binomial(20000, 0.75) proportion is about 0.009.
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(m0.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
        assert!(y.iter().zip(&m0).all(|(&y, &m)| y == 2.0 * m));
        dropout(0.25, key(7, 1), 1, &x, &mut y, &mut m1);
        dropout(0.25, key(7, 2), 0, &x, &mut y, &mut m2);
        let same = |a: &[f64], b: &[f64]| a.iter().zip(b).filter(|(p, q)| p == q).count() as f64 / n as f64;
        // Independent masks agree where both keep or both drop: 0.75^2 + 0.25^2 = 0.625.
        assert!((same(&m0, &m1) - 0.625).abs() < 0.02, "{}", same(&m0, &m1));
        assert!((same(&m0, &m2) - 0.625).abs() < 0.02, "{}", same(&m0, &m2));
        let mut again = alloc::vec![0.0; n];
        dropout(0.25, key(7, 1), 0, &x, &mut y, &mut again);
        assert_eq!(m0, again, "the mask is a pure function of key, counter and index");
        let mut c = [i64::MAX];
        advance(&mut c);
        assert_eq!(c, [i64::MIN]);
    }
}
