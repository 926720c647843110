//! Continuous batching: which sequences run in the next step and how many of their tokens.
//! Running sequences decode one token each; prompts are prefilled in chunks under a token
//! budget; waiting sequences are admitted by priority class, and inside a class by weighted fair
//! share between tenants (least service per unit of weight first, FIFO within a tenant). KV
//! blocks are allocated as sequences grow; when none is left, the lowest-priority sequence is
//! preempted: its blocks are freed and it waits to be recomputed from its tokens.

use std::collections::HashMap;

use crate::request::Priority;

/// Free KV blocks.
pub struct BlockPool {
    free: Vec<u32>,
    total: usize,
}

impl BlockPool {
    pub fn new(total: usize) -> BlockPool {
        // Handed out lowest id first.
        BlockPool {
            free: (0..total as u32).rev().collect(),
            total,
        }
    }
    pub fn free(&self) -> usize {
        self.free.len()
    }
    pub fn used(&self) -> usize {
        self.total - self.free.len()
    }
    pub fn total(&self) -> usize {
        self.total
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }
    fn give_back(&mut self, blocks: &mut Vec<u32>) {
        self.free.append(blocks);
    }
}

pub struct Seq<T> {
    pub id: u64,
    pub priority: Priority,
    pub tenant: String,
    /// Prompt, then every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    pub blocks: Vec<u32>,
    pub preemptions: u32,
    /// Set once the sequence has been admitted for the first time.
    pub started: bool,
    arrival: u64,
    pub state: T,
}

impl<T> Seq<T> {
    /// The logits after the last token are due once everything before it is computed.
    fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }
}

#[derive(Default)]
struct Tenant {
    /// Tokens processed divided by weight: who is owed service.
    vtime: f64,
    weight: u32,
    active: usize,
}

pub struct Limits {
    /// Sequences in one step.
    pub max_running: usize,
    /// Tokens in one step (prefill chunks plus one per decoding sequence).
    pub step_tokens: usize,
}

/// One sequence's part in the planned step: its index in `running` and how many tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub index: usize,
    pub tokens: usize,
}

pub struct Scheduler<T> {
    pub limits: Limits,
    block_size: usize,
    pub blocks: BlockPool,
    pub waiting: Vec<Seq<T>>,
    pub running: Vec<Seq<T>>,
    tenants: HashMap<String, Tenant>,
    arrivals: u64,
    /// Preemptions since the start, for the counters.
    pub preemptions: u64,
}

impl<T> Scheduler<T> {
    pub fn new(limits: Limits, block_size: usize, blocks: usize) -> Scheduler<T> {
        Scheduler {
            limits,
            block_size,
            blocks: BlockPool::new(blocks),
            waiting: Vec::new(),
            running: Vec::new(),
            tenants: HashMap::new(),
            arrivals: 0,
            preemptions: 0,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a new sequence.
    pub fn add(
        &mut self,
        id: u64,
        priority: Priority,
        tenant: String,
        weight: u32,
        prompt: Vec<u32>,
        state: T,
    ) {
        // A tenant returning after idling starts level with the busiest, not with banked credit.
        let floor = self
            .tenants
            .values()
            .filter(|t| t.active > 0)
            .map(|t| t.vtime)
            .fold(f64::INFINITY, f64::min);
        let t = self.tenants.entry(tenant.clone()).or_default();
        if t.active == 0 && floor.is_finite() {
            t.vtime = t.vtime.max(floor);
        }
        t.weight = weight.max(1);
        t.active += 1;
        self.arrivals += 1;
        self.waiting.push(Seq {
            id,
            priority,
            tenant,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
            preemptions: 0,
            started: false,
            arrival: self.arrivals,
            state,
        });
    }

    /// Removes the sequences `gone` picks (finished or cancelled), freeing their blocks.
    pub fn remove_where(&mut self, mut gone: impl FnMut(&Seq<T>) -> bool) -> Vec<Seq<T>> {
        let mut out = Vec::new();
        for list in [&mut self.running, &mut self.waiting] {
            let mut i = 0;
            while i < list.len() {
                if gone(&list[i]) {
                    out.push(list.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        for s in &mut out {
            self.blocks.give_back(&mut s.blocks);
            if let Some(t) = self.tenants.get_mut(&s.tenant) {
                t.active -= 1;
            }
        }
        out
    }

    /// Charges a step's tokens to the tenants' fair-share clocks.
    pub fn account(&mut self, plan: &[Planned]) {
        for p in plan {
            let s = &self.running[p.index];
            if let Some(t) = self.tenants.get_mut(&s.tenant) {
                t.vtime += p.tokens as f64 / t.weight as f64;
            }
        }
    }

    fn vtime(&self, tenant: &str) -> f64 {
        self.tenants.get(tenant).map_or(0.0, |t| t.vtime)
    }

    /// Blocks needed to hold `tokens` positions.
    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// The running sequence to give up first: lowest class, then most-served tenant, then the
    /// latest arrival.
    fn victim(&self) -> Option<usize> {
        (0..self.running.len()).max_by(|&a, &b| {
            let (x, y) = (&self.running[a], &self.running[b]);
            x.priority
                .cmp(&y.priority)
                .then(self.vtime(&x.tenant).total_cmp(&self.vtime(&y.tenant)))
                .then(x.arrival.cmp(&y.arrival))
        })
    }

    fn preempt(&mut self, index: usize) {
        let mut s = self.running.remove(index);
        self.blocks.give_back(&mut s.blocks);
        s.computed = 0;
        s.preemptions += 1;
        self.preemptions += 1;
        self.waiting.push(s);
    }

    /// The next waiting sequence to admit: best class, least-served tenant, earliest arrival.
    fn next_waiting(&self) -> Option<usize> {
        (0..self.waiting.len()).min_by(|&a, &b| {
            let (x, y) = (&self.waiting[a], &self.waiting[b]);
            x.priority
                .cmp(&y.priority)
                .then(self.vtime(&x.tenant).total_cmp(&self.vtime(&y.tenant)))
                .then(x.arrival.cmp(&y.arrival))
        })
    }

    /// Plans the next step into `plan`. Sequences admitted or preempted move between the lists
    /// here; the plan indexes `running` as it is after planning.
    pub fn plan(&mut self, plan: &mut Vec<Planned>) {
        plan.clear();
        let mut preempted = false;
        // Every running sequence needs room for the tokens it will compute now.
        let mut i = 0;
        while i < self.running.len() {
            let want =
                self.running[i].computed + self.running[i].pending().min(self.limits.step_tokens);
            let need = self.blocks_for(want);
            let mut preempted_self = false;
            while self.running[i].blocks.len() < need {
                if let Some(b) = self.blocks.take() {
                    self.running[i].blocks.push(b);
                } else {
                    let v = self.victim().unwrap_or(i);
                    self.preempt(v);
                    preempted = true;
                    if v == i {
                        preempted_self = true;
                        break;
                    }
                    if v < i {
                        i -= 1;
                    }
                }
            }
            if !preempted_self {
                i += 1;
            }
        }
        // Decoding sequences first (one token each), then prefill chunks, most urgent first.
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| {
            let s = &self.running[i];
            (s.pending() > 1, s.priority, s.arrival)
        });
        let mut budget = self.limits.step_tokens;
        for i in order {
            if budget == 0 {
                break;
            }
            let n = self.running[i].pending().min(budget);
            plan.push(Planned {
                index: i,
                tokens: n,
            });
            budget -= n;
        }
        // Admit waiting sequences while there is budget, room in the batch and blocks for all
        // their tokens; a sequence that does not fit blocks those behind it (no starvation of
        // long prompts by short ones).
        // Nothing is admitted in a step that had to preempt: memory is short.
        while !preempted && budget > 0 && self.running.len() < self.limits.max_running {
            let Some(w) = self.next_waiting() else { break };
            let need = self.blocks_for(self.waiting[w].tokens.len());
            if need > self.blocks.free() {
                break;
            }
            let mut s = self.waiting.remove(w);
            for _ in 0..need {
                // Checked above: enough blocks are free.
                s.blocks.extend(self.blocks.take());
            }
            let n = s.pending().min(budget);
            budget -= n;
            plan.push(Planned {
                index: self.running.len(),
                tokens: n,
            });
            self.running.push(s);
        }
        plan.sort_by_key(|p| p.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_share_by_weight() {
        let mut s: Scheduler<()> = Scheduler::new(
            Limits {
                max_running: 1,
                step_tokens: 64,
            },
            16,
            64,
        );
        let mut id = 0;
        for (tenant, weight) in [("a", 1), ("b", 3)] {
            for _ in 0..8 {
                id += 1;
                s.add(
                    id,
                    Priority::Playground,
                    tenant.into(),
                    weight,
                    vec![1, 2, 3],
                    (),
                );
            }
        }
        let mut order = String::new();
        let mut plan = Vec::new();
        for _ in 0..8 {
            s.plan(&mut plan);
            s.account(&plan);
            let running = s.running[0].id;
            order.push_str(&s.running[0].tenant);
            s.remove_where(|q| q.id == running);
        }
        assert_eq!(order, "abbbabbb");
        assert_eq!(s.blocks.used(), 0);
    }

    #[test]
    fn a_full_cache_preempts_the_lowest_class_and_recomputes_it() {
        // Two blocks of 4 tokens: a batch sequence holds one, a production one needs both.
        let mut s: Scheduler<()> = Scheduler::new(
            Limits {
                max_running: 4,
                step_tokens: 64,
            },
            4,
            2,
        );
        s.add(1, Priority::Batch, "a".into(), 1, vec![1, 2, 3], ());
        let mut plan = Vec::new();
        s.plan(&mut plan);
        s.running[0].computed = 3;
        s.running[0].tokens.push(9);
        s.add(2, Priority::Production, "b".into(), 1, vec![1, 2, 3, 4], ());
        s.plan(&mut plan);
        // The production prompt fits in the free block; both run.
        assert_eq!(s.running.len(), 2);
        s.running[0].computed = 4;
        s.running[1].computed = 4;
        s.running[0].tokens.push(9);
        s.running[1].tokens.push(9);
        // Both need a second block now; only the production one gets it.
        s.plan(&mut plan);
        assert_eq!(s.running.len(), 1);
        assert_eq!(s.running[0].priority, Priority::Production);
        assert_eq!(s.waiting[0].computed, 0);
        assert_eq!(s.waiting[0].preemptions, 1);
        assert_eq!(s.waiting[0].tokens, vec![1, 2, 3, 9, 9]);
        assert_eq!(s.preemptions, 1);
    }
}
