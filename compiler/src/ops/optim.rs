//! Costs of gradient bookkeeping and optimizer ops (they have no gradient rules).

use pock_engine::ops::Op;

pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    todo!()
}
