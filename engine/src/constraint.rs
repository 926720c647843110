//! Constrained decoding: a grammar (a JSON schema, any JSON object, a regex, a Lark grammar or
//! a list of choices) that the output must match. `llguidance` compiles it against the
//! model's vocabulary into a matcher; at each step the matcher gives the tokens that keep the
//! output matchable, and sampling sees only those. The mask is a sequence's own, so it never
//! changes what a batch neighbour samples.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, Tokenizer, normalizers, pre_tokenizers};

/// What the output must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Constraint {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON document valid against `schema`. `strict` refuses schema keywords the compiler
    /// cannot enforce, rather than ignoring them.
    JsonSchema {
        schema: serde_json::Value,
        strict: bool,
    },
    /// The whole output matches this regular expression (Rust syntax, no look-around).
    Regex { pattern: String },
    /// A Lark grammar with a `start` rule.
    Lark { grammar: String },
    /// Exactly one of these strings.
    Choice { choices: Vec<String> },
}

impl Constraint {
    fn grammar(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Constraint::JsonObject => json(serde_json::json!({"type": "object"}), false)?,
            Constraint::JsonSchema { schema, strict } => json(schema.clone(), *strict)?,
            Constraint::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
            Constraint::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
            Constraint::Choice { choices } => {
                if choices.is_empty() {
                    return Err("give at least one choice".into());
                }
                // Lark string literals are JSON strings, except that DEL must be escaped.
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| {
                        serde_json::to_string(c)
                            .unwrap_or_default()
                            .replace('\u{7f}', "\\u007f")
                    })
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
        })
    }
}

fn json(mut schema: serde_json::Value, strict: bool) -> Result<TopLevelGrammar, String> {
    if !schema.is_object() {
        return Err("the schema must be a JSON object".into());
    }
    // One space after separators, no free whitespace: a model cannot pad its answer forever.
    let options = JsonCompileOptions {
        whitespace_flexible: false,
        lenient: !strict,
        ..JsonCompileOptions::default()
    };
    options.apply_to(&mut schema);
    Ok(TopLevelGrammar::from_json_schema(schema))
}

/// Whether an entry of [`vocabulary`] is a special token: its name after a 0xFF byte. (A
/// byte-level vocabulary's token for the byte 0xFF alone is that one byte.)
pub fn is_special(word: &[u8]) -> bool {
    word.len() > 1 && word[0] == TokTrie::SPECIAL_TOKEN_MARKER
}

/// Every token id's bytes as the model writes them, as llguidance reads the vocabulary:
/// special tokens marked with a leading 0xFF byte ([`is_special`]; so that no grammar can
/// spell them), ids the tokenizer does not have empty.
pub fn vocabulary(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>, String> {
    let json = tokenizer
        .to_string(false)
        .map_err(|e| format!("the tokenizer: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("the tokenizer: {e}"))?;
    llguidance::token_bytes_from_tokenizer_json(&value)
        .map_err(|e| format!("the tokenizer's vocabulary: {e}"))
}

/// One model's grammar compiler: its vocabulary as bytes, built once.
pub struct Grammars {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// `vocab` is the model's logit count (its embedding rows, at least the tokenizer's ids);
    /// ids beyond the tokenizer's are never allowed.
    pub fn new(tokenizer: &Tokenizer, vocab: usize, eos: &[u32]) -> Result<Grammars, String> {
        let mut words = vocabulary(tokenizer)?;
        if words.len() > vocab {
            return Err(format!(
                "the tokenizer has {} ids, more than the model's {vocab} logits",
                words.len()
            ));
        }
        words.resize(vocab, Vec::new());
        let eos: Vec<TokenId> = eos
            .iter()
            .copied()
            .filter(|&t| (t as usize) < vocab)
            .collect();
        let Some(&first) = eos.first() else {
            return Err("the model has no end-of-sequence token".into());
        };
        let trie =
            TokTrie::from(&TokRxInfo::new(vocab as u32, first), &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(Env {
            trie,
            tokenizer: plain_tokenizer(tokenizer)?,
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Grammars {
            factory: Arc::new(factory),
        })
    }

    /// Compiles `constraint`; the error says what is wrong with it, for the client.
    pub fn compile(&self, constraint: &Constraint) -> Result<SeqConstraint, String> {
        let grammar = constraint.grammar()?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(SeqConstraint::new(matcher))
    }
}

/// The tokenizer llguidance re-tokenizes forced text with: the model's own, without the
/// leading space SentencePiece vocabularies add to a text's start (forced text is a middle).
fn plain_tokenizer(tokenizer: &Tokenizer) -> Result<Tokenizer, String> {
    let mut t = tokenizer.clone();
    if let Some(n) = t.get_normalizer().cloned() {
        t.with_normalizer(without_prepend(n))
            .map_err(|e| format!("the tokenizer: {e}"))?;
    }
    if let Some(p) = t.get_pre_tokenizer().cloned() {
        t.with_pre_tokenizer(Some(without_metaspace_prefix(p)));
    }
    Ok(t)
}

fn without_prepend(n: NormalizerWrapper) -> Option<NormalizerWrapper> {
    match n {
        NormalizerWrapper::Prepend(_) => None,
        NormalizerWrapper::Sequence(s) => {
            let kept: Vec<NormalizerWrapper> = s
                .as_ref()
                .iter()
                .filter_map(|n| without_prepend(n.clone()))
                .collect();
            (!kept.is_empty())
                .then(|| NormalizerWrapper::Sequence(normalizers::Sequence::new(kept)))
        }
        n => Some(n),
    }
}

fn without_metaspace_prefix(p: PreTokenizerWrapper) -> PreTokenizerWrapper {
    match p {
        PreTokenizerWrapper::Metaspace(mut m) => {
            m.prepend_scheme = pre_tokenizers::metaspace::PrependScheme::Never;
            PreTokenizerWrapper::Metaspace(m)
        }
        PreTokenizerWrapper::Sequence(s) => {
            PreTokenizerWrapper::Sequence(pre_tokenizers::sequence::Sequence::new(
                s.as_ref()
                    .iter()
                    .map(|p| without_metaspace_prefix(p.clone()))
                    .collect(),
            ))
        }
        p => p,
    }
}

struct Env {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie
            .tokenize_with_greedy_fallback(s, |s| match self.tokenizer.encode(s, false) {
                Ok(e) => e.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s.as_bytes()),
            })
    }
}

/// What a mask computed ahead hands back: the matcher and its mask.
/// (A mutex only so that a prepared request stays `Sync`; one thread takes it.)
type Ahead = std::sync::Mutex<std::sync::mpsc::Receiver<(Matcher, Result<SimpleVob, String>)>>;

/// One sequence's matcher. Its next mask is computed as soon as its last token is known, on
/// rayon's global pool, so that it is ready when the step that needs it has run: the step's
/// critical path only waits for it if the grammar is slower than the forward pass.
pub struct SeqConstraint {
    /// Here between a mask and the token it constrains; away while the next mask is computed.
    matcher: Option<Matcher>,
    ahead: Option<Ahead>,
}

impl std::fmt::Debug for SeqConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqConstraint").finish_non_exhaustive()
    }
}

impl SeqConstraint {
    fn new(matcher: Matcher) -> SeqConstraint {
        let mut c = SeqConstraint {
            matcher: Some(matcher),
            ahead: None,
        };
        c.compute_ahead();
        c
    }

    fn compute_ahead(&mut self) {
        let Some(mut matcher) = self.matcher.take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rayon::spawn(move || {
            let mask = matcher.compute_mask().map_err(|e| e.to_string());
            let _ = tx.send((matcher, mask));
        });
        self.ahead = Some(std::sync::Mutex::new(rx));
    }

    /// Sets every logit the grammar does not allow next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let (matcher, mask) = match self.ahead.take() {
            Some(rx) => rx
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recv()
                .map_err(|_| "the grammar's mask was not computed".to_string())?,
            None => {
                let mut m = self.matcher.take().ok_or("the grammar is gone")?;
                let mask = m.compute_mask().map_err(|e| e.to_string());
                (m, mask)
            }
        };
        self.matcher = Some(matcher);
        apply(&mask?, logits);
        Ok(())
    }

    /// Takes the sampled token; `true` once the output is complete (nothing may follow).
    /// Otherwise the next mask starts at once.
    pub fn advance(&mut self, token: u32) -> Result<bool, String> {
        let m = self.matcher.as_mut().ok_or("the grammar is gone")?;
        m.consume_token(token).map_err(|e| e.to_string())?;
        if m.is_stopped() {
            return Ok(true);
        }
        self.compute_ahead();
        Ok(false)
    }
}

fn apply(mask: &SimpleVob, logits: &mut [f32]) {
    let words = mask.as_slice();
    let allowed = mask.len();
    for (i, l) in logits.iter_mut().enumerate() {
        if i >= allowed || (words[i >> 5] >> (i & 31)) & 1 == 0 {
            *l = f32::NEG_INFINITY;
        }
    }
}

// Matchers move with their sequence into the worker thread, and prepared requests are
// shared across awaits.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SeqConstraint>();
};
