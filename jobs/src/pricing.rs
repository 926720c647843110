//! What a job costs: list prices are nano-dollars per million tokens; a job's cost is the exact
//! sum over its input and output tokens, divided by a million and rounded up to the next
//! nano-dollar (never down, so the platform never serves a token for free by rounding). The
//! rule is monotone in both counts, which is what lets a hold for the largest possible size
//! always cover the final charge.

use compute::ModelPrice;
use ledger::Nanos;

/// Prices copied at admission (a later price change does not touch a running job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input_nanos_per_mtok: i64,
    pub output_nanos_per_mtok: i64,
}

impl From<&ModelPrice> for Rates {
    fn from(p: &ModelPrice) -> Rates {
        Rates {
            input_nanos_per_mtok: p.input_per_mtok.get(),
            output_nanos_per_mtok: p.output_per_mtok.get(),
        }
    }
}

impl Rates {
    /// The cost of `input` prompt tokens and `output` generated tokens; `None` only if it would
    /// not fit an i64 (more than nine billion dollars).
    pub fn cost(self, input: u64, output: u64) -> Option<Nanos> {
        let total = i128::from(input)
            .checked_mul(i128::from(self.input_nanos_per_mtok))?
            .checked_add(i128::from(output).checked_mul(i128::from(self.output_nanos_per_mtok))?)?
            .checked_add(999_999)?;
        let nanos = total.div_euclid(1_000_000);
        i64::try_from(nanos).ok().map(Nanos::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: Rates = Rates {
        // $0.20 and $0.60 per million tokens.
        input_nanos_per_mtok: 200_000_000,
        output_nanos_per_mtok: 600_000_000,
    };

    #[test]
    fn exact_costs() {
        assert_eq!(RATES.cost(0, 0), Some(Nanos::new(0)));
        // 1000 input tokens at $0.20/M = $0.0002 = 200 000 nano-dollars.
        assert_eq!(RATES.cost(1000, 0), Some(Nanos::new(200_000)));
        assert_eq!(RATES.cost(1000, 500), Some(Nanos::new(500_000)));
    }

    #[test]
    fn fractions_round_up() {
        let odd = Rates {
            input_nanos_per_mtok: 1,
            output_nanos_per_mtok: 3,
        };
        assert_eq!(odd.cost(1, 0), Some(Nanos::new(1)));
        assert_eq!(odd.cost(1_000_000, 0), Some(Nanos::new(1)));
        assert_eq!(odd.cost(1_000_001, 0), Some(Nanos::new(2)));
        // Rounded once on the sum, not per part.
        assert_eq!(odd.cost(500_000, 166_667), Some(Nanos::new(2)));
        assert_eq!(odd.cost(500_000, 166_666), Some(Nanos::new(1)));
    }

    #[test]
    fn monotone_so_a_hold_covers_the_charge() {
        for i in 0..50u64 {
            for o in 0..50u64 {
                let c = RATES.cost(i * 37, o * 91).unwrap();
                assert!(c <= RATES.cost(i * 37 + 1, o * 91).unwrap());
                assert!(c <= RATES.cost(i * 37, o * 91 + 1).unwrap());
            }
        }
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        let dear = Rates {
            input_nanos_per_mtok: i64::MAX,
            output_nanos_per_mtok: i64::MAX,
        };
        assert_eq!(dear.cost(u64::MAX, u64::MAX), None);
    }
}
