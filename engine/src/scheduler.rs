//! Continuous batching: which sequences run in the next step and how many of their tokens.
//! Running sequences decode one token each; prompts are prefilled in chunks under a token
//! budget; waiting sequences are admitted by priority class, and inside a class by weighted fair
//! share between tenants (least service per unit of weight first, FIFO within a tenant). KV
//! blocks are allocated as sequences grow; when none is left, the lowest-priority sequence is
//! preempted: its blocks are freed and it waits to be recomputed from its tokens.
//!
//! Sequences added with the same share key and the same prompt (the choices of one request)
//! share the whole KV blocks of that prompt: the first admitted computes them, the others wait
//! until it has, then start from them holding a reference, and compute only the prompt's tail
//! in blocks of their own. A shared block is never written again, so sharing changes no
//! output; a block returns to the free list when its last holder lets it go.

use std::collections::HashMap;

use crate::request::Priority;

/// Free KV blocks, and how many sequences hold each block in use.
pub struct BlockPool {
    free: Vec<u32>,
    holders: Vec<u16>,
    total: usize,
}

impl BlockPool {
    pub fn new(total: usize) -> BlockPool {
        // Handed out lowest id first.
        BlockPool {
            free: (0..total as u32).rev().collect(),
            holders: vec![0; total],
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
        let b = self.free.pop()?;
        self.holders[b as usize] = 1;
        Some(b)
    }
    /// One more holder of a block in use.
    fn share(&mut self, block: u32) {
        self.holders[block as usize] += 1;
    }
    /// Lets the blocks go; each is free once its last holder has let it go.
    fn give_back(&mut self, blocks: &mut Vec<u32>) {
        for b in blocks.drain(..) {
            let holders = &mut self.holders[b as usize];
            *holders -= 1;
            if *holders == 0 {
                self.free.push(b);
            }
        }
    }
}

pub struct Seq<T> {
    pub id: u64,
    pub priority: Priority,
    pub tenant: String,
    /// Sequences with the same key and prompt share the prompt's blocks.
    pub share: Option<u64>,
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

/// Whether a waiting sequence can start from a running sibling's prompt blocks.
enum Sibling {
    /// No running sibling computes the prompt's shared part: compute it alone.
    None,
    /// This running sequence has computed the shared part: take its first blocks.
    Ready(usize),
    /// A running sibling is still computing the shared part: wait for it.
    Computing,
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

    /// Queues a new sequence; `share` is its share key (see the module's comment).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        id: u64,
        priority: Priority,
        tenant: String,
        weight: u32,
        share: Option<u64>,
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
            share,
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

    /// Tokens of a `prompt_len`-token prompt that its siblings can share: the whole blocks
    /// before its last token (each sequence computes at least that one, for its logits, so
    /// none writes into a shared block).
    fn shareable(&self, prompt_len: usize) -> usize {
        prompt_len.saturating_sub(1) / self.block_size * self.block_size
    }

    fn sibling(&self, s: &Seq<T>) -> Sibling {
        let shared = self.shareable(s.prompt_len);
        let Some(key) = s.share.filter(|_| shared > 0) else {
            return Sibling::None;
        };
        let mut computing = false;
        for (i, r) in self.running.iter().enumerate() {
            // The key only finds candidates; the tokens decide.
            if r.share != Some(key)
                || r.prompt_len != s.prompt_len
                || r.tokens[..shared] != s.tokens[..shared]
            {
                continue;
            }
            if r.computed >= shared {
                return Sibling::Ready(i);
            }
            computing = true;
        }
        if computing {
            Sibling::Computing
        } else {
            Sibling::None
        }
    }

    /// The next waiting sequence to admit: best class, least-served tenant, earliest arrival;
    /// not one whose sibling is still computing the prompt they share.
    fn next_waiting(&self) -> Option<usize> {
        (0..self.waiting.len())
            .filter(|&i| !matches!(self.sibling(&self.waiting[i]), Sibling::Computing))
            .min_by(|&a, &b| {
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
            let sibling = self.sibling(&self.waiting[w]);
            let shared = match sibling {
                Sibling::Ready(_) => self.shareable(self.waiting[w].prompt_len),
                Sibling::None | Sibling::Computing => 0,
            };
            let need = self.blocks_for(self.waiting[w].tokens.len()) - shared / self.block_size;
            if need > self.blocks.free() {
                break;
            }
            let mut s = self.waiting.remove(w);
            if let Sibling::Ready(r) = sibling {
                for &b in &self.running[r].blocks[..shared / self.block_size] {
                    self.blocks.share(b);
                    s.blocks.push(b);
                }
                s.computed = shared;
            }
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
                    None,
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
    fn siblings_share_the_prompts_whole_blocks_until_the_last_lets_go() {
        // Blocks of 4 tokens; a 10-token prompt has two whole blocks before its last token.
        let mut s: Scheduler<()> = Scheduler::new(
            Limits {
                max_running: 4,
                step_tokens: 64,
            },
            4,
            16,
        );
        let prompt: Vec<u32> = (0..10).collect();
        for id in 1..=3 {
            s.add(
                id,
                Priority::Production,
                "a".into(),
                1,
                Some(7),
                prompt.clone(),
                (),
            );
        }
        let mut plan = Vec::new();
        s.plan(&mut plan);
        // The first computes the prompt; its siblings wait for it.
        assert_eq!(s.running.len(), 1);
        assert_eq!(
            plan,
            [Planned {
                index: 0,
                tokens: 10
            }]
        );
        s.running[0].computed = 10;
        s.running[0].tokens.push(99);
        s.plan(&mut plan);
        assert_eq!(s.running.len(), 3);
        for sibling in &s.running[1..] {
            assert_eq!(sibling.blocks[..2], s.running[0].blocks[..2]);
            assert_ne!(sibling.blocks[2], s.running[0].blocks[2]);
            assert_eq!(sibling.computed, 8);
        }
        assert_eq!(
            plan,
            [
                Planned {
                    index: 0,
                    tokens: 1
                },
                Planned {
                    index: 1,
                    tokens: 2
                },
                Planned {
                    index: 2,
                    tokens: 2
                }
            ]
        );
        // Three blocks for the first, one more for each sibling.
        assert_eq!(s.blocks.used(), 5);
        s.remove_where(|q| q.id == 1);
        assert_eq!(s.blocks.used(), 4);
        s.remove_where(|_| true);
        assert_eq!(s.blocks.used(), 0);

        // The same key on another prompt shares nothing.
        let mut other = prompt.clone();
        other[0] = 42;
        s.add(5, Priority::Production, "a".into(), 1, Some(7), prompt, ());
        s.add(6, Priority::Production, "a".into(), 1, Some(7), other, ());
        s.plan(&mut plan);
        assert_eq!(s.running.len(), 2);
        assert_eq!(s.blocks.used(), 6);
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
        s.add(1, Priority::Batch, "a".into(), 1, None, vec![1, 2, 3], ());
        let mut plan = Vec::new();
        s.plan(&mut plan);
        s.running[0].computed = 3;
        s.running[0].tokens.push(9);
        s.add(
            2,
            Priority::Production,
            "b".into(),
            1,
            None,
            vec![1, 2, 3, 4],
            (),
        );
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
