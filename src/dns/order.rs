//! The order of records in an answer: RFC 2782's weighted random selection, drawn afresh for
//! every answer, so that clients which take the first address (getaddrinfo, curl, nginx
//! without SRV) spread their load by the instances' weights, as SRV-aware clients do.
//!
//! Picking the first record with probability weight / total, then the next among the rest the
//! same way, and so on, is the same distribution as sorting by the keys `-ln(u) / weight` with
//! `u` uniform in (0, 1) (Efraimidis and Spirakis): one draw per record and a sort, rather than
//! a quadratic sequence of draws. A weight of 0 comes after every positive weight, in random
//! order among its kind (RFC 2782 gives it "a very small chance"; here none while another
//! record is left).

use std::cell::Cell;

thread_local! {
    /// A xorshift64* state per thread: cheap enough for every answer of the hot path, and an
    /// answer's order needs no cryptographic quality, only independence between answers.
    static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A uniform draw in (0, 1).
fn uniform() -> f64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        let bits = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    })
}

/// Orders `items` by weighted random selection on `weight`, drawn now.
pub fn weighted_order<T>(items: &mut Vec<T>, weight: impl Fn(&T) -> u16) {
    if items.len() < 2 {
        return;
    }
    let first = weight(&items[0]);
    if items.iter().all(|i| weight(i) == first) {
        // Equal weights (the common case: every instance at the default 1): the same
        // distribution is a uniform shuffle, which needs no logarithms and no sort.
        for i in (1..items.len()).rev() {
            let j = (uniform() * (i + 1) as f64) as usize;
            items.swap(i, j.min(i));
        }
        return;
    }
    let mut keyed: Vec<(f64, T)> = items
        .drain(..)
        .map(|item| {
            let w = weight(&item);
            let key = if w == 0 {
                // After every positive weight; random among the zeros.
                f64::MAX * uniform()
            } else {
                -uniform().ln() / f64::from(w)
            };
            (key, item)
        })
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    items.extend(keyed.into_iter().map(|(_, item)| item));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_follows_the_weights() {
        let mut first_heavy = 0;
        let rounds = 20_000;
        for _ in 0..rounds {
            let mut items = vec![("light", 1u16), ("heavy", 9u16)];
            weighted_order(&mut items, |i| i.1);
            if items[0].0 == "heavy" {
                first_heavy += 1;
            }
        }
        let share = first_heavy as f64 / rounds as f64;
        assert!((0.88..0.92).contains(&share), "heavy first in {share}");
    }

    #[test]
    fn equal_weights_put_each_first_alike() {
        let mut firsts = [0u32; 4];
        for _ in 0..20_000 {
            let mut items = vec![0usize, 1, 2, 3];
            weighted_order(&mut items, |_| 5);
            firsts[items[0]] += 1;
        }
        assert!(
            firsts.iter().all(|n| (4_500..5_500).contains(n)),
            "{firsts:?}"
        );
    }

    #[test]
    fn zero_weights_come_last_and_everything_stays() {
        for _ in 0..1000 {
            let mut items = vec![(0, 0u16), (1, 5), (2, 0), (3, 1)];
            weighted_order(&mut items, |i| i.1);
            assert!(items[..2].iter().all(|i| i.1 > 0), "{items:?}");
            let mut ids: Vec<i32> = items.iter().map(|i| i.0).collect();
            ids.sort();
            assert_eq!(ids, [0, 1, 2, 3]);
        }
    }
}
