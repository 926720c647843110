//! A posting that cannot be unbalanced: the only constructors check that the legs sum to zero,
//! touch at least two distinct accounts and carry no zero amounts.

use crate::{LedgerError, Nanos};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub account_id: String,
    /// Positive credits the account, negative debits it.
    pub amount: i64,
}

#[derive(Debug, Clone)]
pub struct Posting {
    key: String,
    kind: String,
    memo: String,
    org_id: Option<String>,
    /// Sorted by account id.
    legs: Vec<Leg>,
}

impl Posting {
    /// A balanced set of legs. `key` makes the posting idempotent.
    pub fn new(
        key: impl Into<String>,
        kind: impl Into<String>,
        memo: impl Into<String>,
        org_id: Option<String>,
        mut legs: Vec<Leg>,
    ) -> Result<Posting, LedgerError> {
        if legs.len() < 2 || legs.iter().any(|l| l.amount == 0) {
            return Err(LedgerError::MalformedPosting);
        }
        legs.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        if legs.windows(2).any(|w| w[0].account_id == w[1].account_id) {
            return Err(LedgerError::MalformedPosting);
        }
        let sum: i128 = legs.iter().map(|l| i128::from(l.amount)).sum();
        if sum != 0 {
            return Err(LedgerError::Unbalanced);
        }
        Ok(Posting {
            key: key.into(),
            kind: kind.into(),
            memo: memo.into(),
            org_id,
            legs,
        })
    }

    /// Moves `amount` (> 0) from one account to another.
    pub fn transfer(
        key: impl Into<String>,
        kind: impl Into<String>,
        memo: impl Into<String>,
        org_id: Option<String>,
        from: &str,
        to: &str,
        amount: Nanos,
    ) -> Result<Posting, LedgerError> {
        if amount.get() <= 0 {
            return Err(LedgerError::NonPositiveAmount);
        }
        Posting::new(
            key,
            kind,
            memo,
            org_id,
            vec![
                Leg {
                    account_id: from.to_string(),
                    amount: -amount.get(),
                },
                Leg {
                    account_id: to.to_string(),
                    amount: amount.get(),
                },
            ],
        )
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn memo(&self) -> &str {
        &self.memo
    }

    pub fn org_id(&self) -> Option<&str> {
        self.org_id.as_deref()
    }

    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(account: &str, amount: i64) -> Leg {
        Leg {
            account_id: account.into(),
            amount,
        }
    }

    #[test]
    fn an_unbalanced_posting_cannot_be_built() {
        let p = Posting::new("k", "t", "m", None, vec![leg("a", -5), leg("b", 4)]);
        assert!(matches!(p, Err(LedgerError::Unbalanced)));
    }

    #[test]
    fn overflowing_legs_are_summed_exactly() {
        let p = Posting::new(
            "k",
            "t",
            "m",
            None,
            vec![leg("a", i64::MAX), leg("b", i64::MAX), leg("c", 2)],
        );
        assert!(matches!(p, Err(LedgerError::Unbalanced)));
    }

    #[test]
    fn single_zero_and_repeated_legs_are_refused() {
        assert!(Posting::new("k", "t", "m", None, vec![leg("a", 0), leg("b", 0)]).is_err());
        assert!(Posting::new("k", "t", "m", None, vec![leg("a", -1), leg("a", 1)]).is_err());
        assert!(Posting::new("k", "t", "m", None, vec![leg("a", 0)]).is_err());
        assert!(Posting::transfer("k", "t", "m", None, "a", "b", Nanos::new(-3)).is_err());
    }

    #[test]
    fn legs_are_kept_in_account_order() {
        let p = Posting::transfer("k", "t", "m", None, "z", "a", Nanos::new(3)).unwrap();
        assert_eq!(p.legs()[0].account_id, "a");
    }
}
