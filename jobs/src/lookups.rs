//! What admission and settlement read on every request but operators change rarely: list
//! prices, factories, an organisation's allocation, a factory's revenue account, whether a
//! wallet account belongs to a grant. Kept in memory and read again when this process changed
//! any of them (the compute handle counts changes) or after [`TTL`] (changes made by another
//! portal instance show within that time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use compute::{Allocation, Factory, ModelPrice};

use crate::{JobError, Jobs};

pub const TTL: Duration = Duration::from_secs(2);

/// Entries kept per table before the expired ones are dropped.
const PRUNE_AT: usize = 10_000;

#[derive(Default)]
pub(crate) struct Lookups {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    changes: u64,
    prices: Option<(Instant, Arc<Vec<ModelPrice>>)>,
    factories: Option<(Instant, Arc<Vec<Factory>>)>,
    allocations: HashMap<(String, String), (Instant, Option<Allocation>)>,
    /// Never change once made: kept for the life of the process.
    revenue_accounts: HashMap<String, String>,
    /// Wallet account id → the grant (id, program) it holds, or `None` for paid credit.
    grant_accounts: HashMap<String, Option<(String, String)>>,
}

fn fresh(at: Instant) -> bool {
    at.elapsed() < TTL
}

impl Lookups {
    fn lock(&self, changes: u64) -> MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.changes != changes {
            s.changes = changes;
            s.prices = None;
            s.factories = None;
            s.allocations.clear();
        }
        s
    }
}

impl Jobs {
    fn lookups(&self) -> MutexGuard<'_, State> {
        self.inner.lookups.lock(self.inner.compute.changes())
    }

    pub(crate) async fn prices_cached(&self) -> Result<Arc<Vec<ModelPrice>>, JobError> {
        if let Some((at, p)) = &self.lookups().prices
            && fresh(*at)
        {
            return Ok(p.clone());
        }
        let changes = self.inner.compute.changes();
        let p = Arc::new(
            self.inner
                .compute
                .prices()
                .await
                .map_err(JobError::storage)?,
        );
        let mut s = self.lookups();
        if s.changes == changes {
            s.prices = Some((Instant::now(), p.clone()));
        }
        Ok(p)
    }

    pub(crate) async fn factories_cached(&self) -> Result<Arc<Vec<Factory>>, JobError> {
        if let Some((at, f)) = &self.lookups().factories
            && fresh(*at)
        {
            return Ok(f.clone());
        }
        let changes = self.inner.compute.changes();
        let f = Arc::new(
            self.inner
                .compute
                .factories()
                .await
                .map_err(JobError::storage)?,
        );
        let mut s = self.lookups();
        if s.changes == changes {
            s.factories = Some((Instant::now(), f.clone()));
        }
        Ok(f)
    }

    pub(crate) async fn allocation_cached(
        &self,
        org_id: &str,
        model: &str,
        now_ms: i64,
    ) -> Result<Option<Allocation>, JobError> {
        let key = (org_id.to_string(), model.to_string());
        if let Some((at, a)) = self.lookups().allocations.get(&key)
            && fresh(*at)
        {
            return Ok(a.clone());
        }
        let changes = self.inner.compute.changes();
        let a = self
            .inner
            .compute
            .allocation(org_id, model, now_ms)
            .await
            .map_err(JobError::storage)?;
        let mut s = self.lookups();
        if s.changes == changes {
            if s.allocations.len() >= PRUNE_AT {
                s.allocations.retain(|_, (at, _)| fresh(*at));
            }
            s.allocations.insert(key, (Instant::now(), a.clone()));
        }
        Ok(a)
    }

    pub(crate) fn revenue_account_cached(&self, factory_id: &str) -> Option<String> {
        self.lookups().revenue_accounts.get(factory_id).cloned()
    }

    pub(crate) fn remember_revenue_account(&self, factory_id: &str, account_id: &str) {
        let mut s = self.lookups();
        if s.revenue_accounts.len() >= PRUNE_AT {
            s.revenue_accounts.clear();
        }
        s.revenue_accounts
            .insert(factory_id.to_string(), account_id.to_string());
    }

    /// `Some(grant)` when known: the grant (id, program) the account holds, or `None` for
    /// paid credit.
    pub(crate) fn grant_of_account(&self, account_id: &str) -> Option<Option<(String, String)>> {
        self.lookups().grant_accounts.get(account_id).cloned()
    }

    pub(crate) fn remember_grant_of_account(
        &self,
        account_id: &str,
        grant: Option<(String, String)>,
    ) {
        let mut s = self.lookups();
        if s.grant_accounts.len() >= PRUNE_AT {
            s.grant_accounts.clear();
        }
        s.grant_accounts.insert(account_id.to_string(), grant);
    }
}
