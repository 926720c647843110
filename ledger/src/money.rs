//! Money as an integer number of nano-dollars (10⁻⁹ USD).
//!
//! Why nano-dollars: list prices are quoted per million tokens, often with cents
//! ($0.15 / 1M tokens = 150 nano-dollars per token), so every per-token price is a whole number
//! of nano-dollars and a job's cost is an exact product. An `i64` holds ±9.2 billion dollars.
//! Nothing is rounded when amounts are stored or added; display shows the exact value.

use serde::{Deserialize, Serialize};

/// An exact amount of US dollars, in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nanos(i64);

pub const NANOS_PER_DOLLAR: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("Enter an amount in dollars, like 25 or 12.50.")]
    Malformed,
    #[error("Amounts have at most 9 decimal places.")]
    TooPrecise,
    #[error("That amount is too large.")]
    TooLarge,
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    pub const fn new(nanos: i64) -> Nanos {
        Nanos(nanos)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn from_dollars(dollars: i64) -> Option<Nanos> {
        dollars.checked_mul(NANOS_PER_DOLLAR).map(Nanos)
    }

    /// Parses a dollar amount such as `25`, `12.5`, `0.000000150` or `-3.25` exactly.
    pub fn parse_dollars(text: &str) -> Result<Nanos, MoneyError> {
        let text = text.trim().trim_start_matches('$');
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if whole.is_empty() && frac.is_empty() || !all_digits(whole) || !all_digits(frac) {
            return Err(MoneyError::Malformed);
        }
        if frac.len() > 9 {
            return Err(MoneyError::TooPrecise);
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| MoneyError::TooLarge)?
        };
        let frac: i64 = format!("{frac:0<9}")
            .parse()
            .map_err(|_| MoneyError::Malformed)?;
        let value = whole
            .checked_mul(NANOS_PER_DOLLAR)
            .and_then(|w| w.checked_add(frac))
            .ok_or(MoneyError::TooLarge)?;
        Ok(Nanos(if negative { -value } else { value }))
    }

    /// The amount as a plain decimal number of dollars (`1234.50`, `-0.00000015`), exact: for
    /// CSV files and other machine-read output.
    pub fn decimal(self) -> String {
        self.to_string().replacen('$', "", 1)
    }

    pub fn checked_add(self, other: Nanos) -> Option<Nanos> {
        self.0.checked_add(other.0).map(Nanos)
    }

    pub fn checked_sub(self, other: Nanos) -> Option<Nanos> {
        self.0.checked_sub(other.0).map(Nanos)
    }
}

/// `$1234.50`, or more decimals when the amount has them (`$0.00000015`): exact, never rounded.
/// A stored amount (see `Account`'s `FromRow`).
impl From<i64> for Nanos {
    fn from(nanos: i64) -> Nanos {
        Nanos(nanos)
    }
}

impl std::fmt::Display for Nanos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_DOLLAR as u64;
        let frac = format!("{:09}", abs % NANOS_PER_DOLLAR as u64);
        let trimmed = frac.trim_end_matches('0');
        let shown = if trimmed.len() <= 2 {
            &frac[..2]
        } else {
            trimmed
        };
        write!(f, "{sign}${whole}.{shown}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_parse_exactly() {
        assert_eq!(Nanos::parse_dollars("25").unwrap().get(), 25_000_000_000);
        assert_eq!(Nanos::parse_dollars("$12.5").unwrap().get(), 12_500_000_000);
        assert_eq!(Nanos::parse_dollars("0.00000015").unwrap().get(), 150);
        assert_eq!(Nanos::parse_dollars("-3.25").unwrap().get(), -3_250_000_000);
        assert_eq!(Nanos::parse_dollars(".5").unwrap().get(), 500_000_000);
    }

    #[test]
    fn bad_amounts_are_refused() {
        assert_eq!(Nanos::parse_dollars(""), Err(MoneyError::Malformed));
        assert_eq!(Nanos::parse_dollars("12,50"), Err(MoneyError::Malformed));
        assert_eq!(Nanos::parse_dollars("1e3"), Err(MoneyError::Malformed));
        assert_eq!(
            Nanos::parse_dollars("0.0000000001"),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(
            Nanos::parse_dollars("99999999999"),
            Err(MoneyError::TooLarge)
        );
    }

    #[test]
    fn display_is_exact_with_at_least_cents() {
        assert_eq!(Nanos::new(1_234_500_000_000).to_string(), "$1234.50");
        assert_eq!(Nanos::new(150).to_string(), "$0.00000015");
        assert_eq!(Nanos::new(-1).to_string(), "-$0.000000001");
        assert_eq!(Nanos::ZERO.to_string(), "$0.00");
        assert_eq!(Nanos::new(-1).decimal(), "-0.000000001");
        assert_eq!(Nanos::new(1_234_500_000_000).decimal(), "1234.50");
    }

    #[test]
    fn a_per_token_price_times_tokens_is_exact() {
        // $0.15 per million tokens, 1,234,567 tokens.
        let per_token = Nanos::parse_dollars("0.15").unwrap().get() / 1_000_000;
        assert_eq!(per_token, 150);
        assert_eq!(Nanos::new(per_token * 1_234_567).to_string(), "$0.18518505");
    }
}
