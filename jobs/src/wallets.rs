//! What admission last read of each wallet, so that the next hold can be planned without a
//! read of its own (a round trip before the writes; docs/perf.md, "Gateway overhead", says
//! what a round trip costs on each database).
//!
//! What is kept here is never trusted: a hold planned from it goes with a condition that
//! makes its writes refuse unless the plan is still the one a read would give
//! (`Credits::plan_still_holds`), and a refused one is planned again from a read. Only plans
//! that take a hold from one account are made from it: a plan spread over several accounts
//! depends on how much each has, which changes with every settlement.

use std::collections::HashMap;
use std::sync::Mutex;

/// Wallets kept at most; past that the whole cache is dropped (each wallet is read again once).
const MAX_WALLETS: usize = 10_000;

/// Each organisation's wallet sources, (account, available) in burn order, as last read and
/// less what this process reserved since.
#[derive(Default)]
pub(crate) struct Wallets {
    known: Mutex<HashMap<String, Vec<(String, i64)>>>,
}

impl Wallets {
    /// The account a hold of `amount` for `org_id` would come from whole, by what was last
    /// read, with the sources it was planned from; `None` when nothing was read yet or the
    /// plan would take from more than one account.
    pub(crate) fn plan(&self, org_id: &str, amount: i64) -> Option<Vec<(String, i64)>> {
        let known = self.lock();
        let sources = known.get(org_id)?;
        let (_, has) = sources.iter().find(|(_, has)| *has > 0)?;
        (*has >= amount).then(|| sources.clone())
    }

    /// Keeps what a read found, less what the hold just planned from it took.
    pub(crate) fn read(
        &self,
        org_id: &str,
        mut sources: Vec<(String, i64)>,
        taken: &[(String, i64)],
    ) {
        for (account, part) in taken {
            if let Some((_, has)) = sources.iter_mut().find(|(id, _)| id == account) {
                *has -= part;
            }
        }
        let mut known = self.lock();
        if known.len() >= MAX_WALLETS && !known.contains_key(org_id) {
            known.clear();
        }
        known.insert(org_id.to_string(), sources);
    }

    /// Forgets `org_id`'s wallet: what was kept no longer plans its holds.
    pub(crate) fn forget(&self, org_id: &str) {
        self.lock().remove(org_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, i64)>>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
