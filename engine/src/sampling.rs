//! Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, a seeded
//! random draw per sequence, and log-probabilities of the model's own distribution (before any
//! penalty or temperature, as vLLM reports them by default).

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::constraint::SeqConstraint;
use crate::request::InvalidRequest;

/// How one request samples. `temperature == 0` is greedy decoding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// Hugging Face's multiplicative penalty on every token seen in prompt or output (1 = none).
    pub repetition_penalty: f32,
    /// OpenAI's additive penalties on output tokens: by count and by presence.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Same seed and request, same tokens. `None` draws a seed.
    pub seed: Option<u64>,
    /// Log-probabilities: `None` none; `Some(n)` the chosen token's and the `n` most likely.
    pub logprobs: Option<usize>,
    /// OpenAI's `logit_bias`: added to a token's logit after the penalties, before
    /// temperature (−100 bans a token, +100 all but forces it). Sorted by token, each once.
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

/// The most tokens one request may bias (OpenAI documents no limit; this keeps a request's
/// per-step work small).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// Temperatures below this are greedy decoding (as vLLM treats them): dividing by them would
/// overflow to infinity.
const GREEDY_BELOW: f32 = 1e-5;

/// The most alternatives a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let bad = |param: &'static str, message: String| Err(InvalidRequest { param, message });
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", "temperature must be between 0 and 2".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "top_p must be greater than 0 and at most 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "min_p must be between 0 and 1".into());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 2.0) {
            return bad(
                "repetition_penalty",
                "repetition_penalty must be greater than 0 and at most 2".into(),
            );
        }
        for (param, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(param, format!("{param} must be between -2 and 2"));
            }
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return bad(
                "logit_bias",
                format!("logit_bias takes at most {MAX_LOGIT_BIAS} tokens"),
            );
        }
        if let Some((t, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return bad(
                "logit_bias",
                format!("logit_bias of token {t} is {b}; biases must be between -100 and 100"),
            );
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return bad(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"),
            );
        }
        Ok(())
    }

    fn penalised(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One sequence's sampling state: its random stream and what it has produced so far.
pub struct SeqSampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Output token counts (frequency and presence penalties).
    counts: HashMap<u32, u32>,
    /// Prompt tokens (repetition penalty applies to them too).
    prompt: Vec<u32>,
    /// The grammar the output must match, if any.
    constraint: Option<SeqConstraint>,
}

impl SeqSampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> SeqSampler {
        let seed = params.seed.unwrap_or_else(rand::random);
        let penalised = params.penalised();
        let mut prompt = if penalised {
            prompt.to_vec()
        } else {
            Vec::new()
        };
        prompt.sort_unstable();
        prompt.dedup();
        SeqSampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: HashMap::new(),
            prompt,
            constraint: None,
        }
    }

    /// Samples only what `constraint` allows from here on.
    pub fn with_constraint(mut self, constraint: Option<SeqConstraint>) -> SeqSampler {
        self.constraint = constraint;
        self
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Counts a produced token and moves the grammar past it; `Ok(true)` once the grammar
    /// is complete (nothing may follow). A sequence recomputed after preemption keeps its
    /// sampler, so its counts, grammar and random stream go on where they were.
    pub fn record(&mut self, token: u32) -> Result<bool, String> {
        if self.params.penalised() {
            *self.counts.entry(token).or_default() += 1;
        }
        match &mut self.constraint {
            Some(c) => c.advance(token),
            None => Ok(false),
        }
    }

    /// Picks the next token from `logits` (modified in place). Log-probabilities are the
    /// model's own, before penalties, bias and grammar. Fails only when the grammar fails.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<(u32, Option<TokenLogprob>), String> {
        let want = self.params.logprobs;
        if want.is_some() {
            scratch.raw.clear();
            scratch.raw.extend_from_slice(logits);
        }
        self.apply_penalties(logits);
        if let Some(c) = &mut self.constraint {
            c.mask(logits)?;
            if !logits.iter().any(|l| l.is_finite()) {
                return Err("the grammar allows no token here".into());
            }
        }
        let token = if self.params.temperature < GREEDY_BELOW {
            argmax(logits)
        } else {
            self.draw(logits, &mut scratch.cand)
        };
        let lp = want.map(|n| logprobs(&scratch.raw, token, n, &mut scratch.cand));
        Ok((token, lp))
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            // Each token seen once, whether in the prompt, the output or both.
            let seen = self.prompt.iter().chain(
                self.counts
                    .keys()
                    .filter(|t| self.prompt.binary_search(t).is_err()),
            );
            for &t in seen {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                logits[t as usize] -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
        // Token ids are checked against the vocabulary when the request is prepared.
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
    }

    fn draw(&mut self, logits: &[f32], cand: &mut Vec<(f32, u32)>) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (((l - max) * inv_t).exp(), i as u32)),
        );
        // min-p: drop tokens less likely than min_p times the most likely one (whose weight is 1).
        if p.min_p > 0.0 {
            cand.retain(|c| c.0 >= p.min_p);
        }
        let by_weight = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_weight);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            // The smallest most-likely set whose mass reaches top_p: sort only as much of the
            // candidates as needed, widening the sorted head until it holds that mass.
            let total: f32 = cand.iter().map(|c| c.0).sum();
            let goal = p.top_p * total;
            let mut head = 64.min(cand.len());
            loop {
                if head < cand.len() {
                    cand.select_nth_unstable_by(head - 1, by_weight);
                }
                cand[..head].sort_unstable_by(by_weight);
                let mut acc = 0.0;
                let cut = cand[..head].iter().position(|c| {
                    acc += c.0;
                    acc >= goal
                });
                match cut {
                    Some(i) => {
                        cand.truncate(i + 1);
                        break;
                    }
                    None if head == cand.len() => break,
                    None => head = (head * 16).min(cand.len()),
                }
            }
        } else {
            // A fixed order, so the same seed draws the same token whatever order selection left.
            cand.sort_unstable_by_key(|c| c.1);
        }
        // Running sums, then the first candidate whose sum exceeds the draw: one rounding
        // path, so a draw near 1 cannot fall past the end onto an arbitrary token, and a
        // zero-weight candidate is never chosen.
        let mut sum = 0.0f32;
        for c in cand.iter_mut() {
            sum += c.0;
            c.0 = sum;
        }
        let r = self.rng.random::<f32>() * sum;
        cand.iter()
            .find(|c| c.0 > r)
            .or_else(|| cand.iter().rev().find(|c| c.0 > 0.0))
            .map_or(0, |c| c.1)
    }
}

/// Buffers reused by every sampling call of a worker.
#[derive(Default)]
pub struct Scratch {
    cand: Vec<(f32, u32)>,
    raw: Vec<f32>,
}

/// The log-probability of `token` and the `n` most likely tokens under `raw`'s softmax.
fn logprobs(raw: &[f32], token: u32, n: usize, cand: &mut Vec<(f32, u32)>) -> TokenLogprob {
    let max = raw.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + raw.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let mut top = Vec::with_capacity(n);
    if n > 0 {
        cand.clear();
        cand.extend(raw.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let n = n.min(cand.len());
        if n < cand.len() {
            cand.select_nth_unstable_by(n - 1, order);
        }
        cand[..n].sort_unstable_by(order);
        top.extend(cand[..n].iter().map(|&(l, t)| (t, l - log_z)));
    }
    TokenLogprob {
        token,
        logprob: raw[token as usize] - log_z,
        top,
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(seed: u64, params: SamplingParams) -> SeqSampler {
        SeqSampler::new(
            SamplingParams {
                seed: Some(seed),
                ..params
            },
            &[],
        )
    }

    #[test]
    fn a_token_without_probability_is_never_drawn() {
        let mut scratch = Scratch::default();
        for seed in 0..2000 {
            // Two equally likely tokens; the last id (where a draw past the end used to land)
            // has no probability at all.
            let mut logits = vec![f32::NEG_INFINITY; 1000];
            logits[3] = 0.5;
            logits[7] = 0.5;
            let (t, _) = sampler(seed, SamplingParams::default())
                .sample(&mut logits, &mut scratch)
                .unwrap();
            assert!(t == 3 || t == 7, "seed {seed}: {t}");
        }
    }

    #[test]
    fn a_vanishing_temperature_is_greedy_and_the_repetition_penalty_applies_once() {
        let mut scratch = Scratch::default();
        let tiny = SamplingParams {
            temperature: 1e-39,
            ..SamplingParams::default()
        };
        assert!(tiny.validate().is_ok());
        let mut logits = vec![0.0, 2.0, 1.0];
        assert_eq!(
            sampler(1, tiny)
                .sample(&mut logits, &mut scratch)
                .unwrap()
                .0,
            1
        );

        // Token 1 is in the prompt and in the output: divided by 2 once, not twice.
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = SeqSampler::new(params, &[1]);
        s.record(1).unwrap();
        let mut logits = vec![0.0, 4.0, 1.9];
        s.apply_penalties(&mut logits);
        assert_eq!(logits[1], 2.0);
    }

    #[test]
    fn logit_bias_forces_and_bans_tokens() {
        let mut scratch = Scratch::default();
        let biased = |bias: Vec<(u32, f32)>| SamplingParams {
            logit_bias: bias,
            ..SamplingParams::greedy()
        };
        let mut logits = vec![0.0, 5.0, 1.0];
        assert_eq!(
            sampler(1, biased(vec![(1, -100.0)]))
                .sample(&mut logits, &mut scratch)
                .unwrap()
                .0,
            2
        );
        let mut logits = vec![0.0, 5.0, 1.0];
        assert_eq!(
            sampler(1, biased(vec![(0, 100.0)]))
                .sample(&mut logits, &mut scratch)
                .unwrap()
                .0,
            0
        );
        // Logprobs stay the model's own, before the bias.
        let mut p = biased(vec![(0, 100.0)]);
        p.logprobs = Some(0);
        let mut logits = vec![0.0, 0.0];
        let (_, lp) = sampler(1, p).sample(&mut logits, &mut scratch).unwrap();
        assert!((lp.unwrap().logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(
            biased(vec![(0, 100.5)]).validate().unwrap_err().param,
            "logit_bias"
        );
    }
}
