//! Dtype conversion kernels (the `Cast` op). Every function writes all of `y`, reading the element
//! of `x` at the same index; the shape rule makes the two the same length.

use crate::kernels::Float;

/// Truncates toward zero, saturating at the `i64` range, with NaN as 0: Rust's `as`, which is
/// also what PyTorch's `.to(torch.int64)` gives for every finite in-range value.
pub fn float_to_int<T: Float>(x: &[T], y: &mut [i64]) {
    for (y, &x) in y.iter_mut().zip(x) {
        // The float type converts to f64 exactly (f32 or f64), so the truncation sees the value.
        *y = x.to_f64() as i64;
    }
}

/// Rounds to the nearest representable float.
pub fn int_to_float<T: Float>(x: &[i64], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = T::from_i64(x);
    }
}

/// `y = (x != zero)` as 0 or 1; a float NaN is not equal to zero, so it is true (as in numpy).
pub fn to_bool<X: PartialEq + Copy>(x: &[X], y: &mut [u8], zero: X) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = u8::from(x != zero);
    }
}

/// `y = if x { one } else { zero }`, where any non-zero byte is true.
pub fn bool_to<Y: Copy>(x: &[u8], y: &mut [Y], zero: Y, one: Y) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x != 0 { one } else { zero };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_int_truncates_toward_zero_and_saturates() {
        let x = [2.9f32, -2.9, 0.5, -0.0, f32::NAN, 1e30, -1e30, f32::INFINITY];
        let mut y = [7i64; 8];
        float_to_int(&x, &mut y);
        assert_eq!(y, [2, -2, 0, 0, 0, i64::MAX, i64::MIN, i64::MAX]);
        let mut y = [7i64; 2];
        float_to_int(&[-3.75f64, 9.007199254740993e15], &mut y);
        assert_eq!(y, [-3, 9007199254740992]);
    }

    #[test]
    fn int_to_float_rounds_to_nearest() {
        let mut y = [0f32; 4];
        // 2^24 + 1 is not representable in f32: it rounds to 2^24 (ties to even).
        int_to_float(&[3, -5, (1 << 24) + 1, i64::MIN], &mut y);
        assert_eq!(y, [3.0, -5.0, 16777216.0, -9.223372e18]);
    }

    #[test]
    fn bools_are_zero_or_one() {
        let mut y = [9u8; 5];
        to_bool(&[0.0f32, -0.0, 0.25, f32::NAN, -3.0], &mut y, 0.0);
        assert_eq!(y, [0, 0, 1, 1, 1]);
        to_bool(&[0i64, 1, -1, i64::MIN, 0], &mut y, 0);
        assert_eq!(y, [0, 1, 1, 1, 0]);
        // Any non-zero byte read from a file or a feed counts as true.
        let mut f = [9f64; 4];
        bool_to(&[0u8, 1, 2, 255], &mut f, 0.0, 1.0);
        assert_eq!(f, [0.0, 1.0, 1.0, 1.0]);
    }
}
