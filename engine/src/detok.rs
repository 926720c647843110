//! Turning a growing list of token ids into text deltas. A byte-level tokenizer can split one
//! UTF-8 character over several tokens; decoding a sliding window and holding back text that
//! ends in a replacement character means a delta never carries half a character. Stop strings
//! are matched across token boundaries, and text that could still become a stop string is held
//! back until it cannot, so the caller never receives part of one.
//!
//! A byte-level tokenizer's text is the lossy UTF-8 of its tokens' bytes; given those bytes,
//! the text is decoded from them directly, so that invalid bytes become exactly the
//! replacement characters that decoding all the ids at once gives.

use std::sync::Arc;

use tokenizers::Tokenizer;

pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// Start of the window decoded for context (so spacing and merges come out right).
    prefix: usize,
    /// Tokens before this one have been turned into text.
    read: usize,
    stop: Vec<String>,
    /// All text produced, and how much of it has been handed to the caller.
    text: String,
    sent: usize,
    /// A byte-level vocabulary's bytes (special tokens marked, and skipped), and the bytes
    /// of a character not yet complete.
    bytes: Option<Arc<Vec<Vec<u8>>>>,
    pending: Vec<u8>,
}

/// What a step of detokenization yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Delta {
    /// Text that is final (possibly empty while a character or a stop string is incomplete).
    Text(String),
    /// A stop string appeared: the text before it, which ends the output.
    Stopped(String),
}

impl Detokenizer {
    /// `context` are the prompt's ids: the window starts in them so the first generated token
    /// decodes with its left context (a leading space is kept, as the model meant it).
    pub fn new(tokenizer: Arc<Tokenizer>, context: &[u32], stop: Vec<String>) -> Detokenizer {
        let keep = context.len().min(5);
        let ids = context[context.len() - keep..].to_vec();
        Detokenizer {
            tokenizer,
            prefix: 0,
            read: ids.len(),
            ids,
            stop,
            text: String::new(),
            sent: 0,
            bytes: None,
            pending: Vec::new(),
        }
    }

    /// Decodes from the tokens' bytes (a byte-level vocabulary, as
    /// `ModelInfo::byte_level_vocab` gives it) rather than from windows of ids.
    pub fn with_bytes(mut self, vocab: Option<Arc<Vec<Vec<u8>>>>) -> Detokenizer {
        self.bytes = vocab;
        self
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    pub fn push(&mut self, id: u32) -> Delta {
        match &self.bytes {
            Some(vocab) => {
                let word = vocab.get(id as usize).map_or(&[][..], Vec::as_slice);
                if !crate::constraint::is_special(word) {
                    self.pending.extend_from_slice(word);
                }
                self.decode_bytes(false);
            }
            None => {
                self.ids.push(id);
                self.advance(false);
            }
        }
        self.release()
    }

    /// Moves the complete characters of `pending` into `text`, each invalid sequence as one
    /// U+FFFD (as `String::from_utf8_lossy` does on the whole); an incomplete character at
    /// the end waits for more bytes, or, at the `end`, is one U+FFFD.
    fn decode_bytes(&mut self, end: bool) {
        loop {
            let (valid, invalid) = match std::str::from_utf8(&self.pending) {
                Ok(_) => (self.pending.len(), None),
                Err(e) => (e.valid_up_to(), Some(e.error_len())),
            };
            self.text
                .push_str(&String::from_utf8_lossy(&self.pending[..valid]));
            match invalid {
                None => {
                    self.pending.clear();
                    return;
                }
                Some(Some(n)) => {
                    self.text.push('\u{FFFD}');
                    self.pending.drain(..valid + n);
                }
                Some(None) => {
                    self.pending.drain(..valid);
                    if end {
                        self.text.push('\u{FFFD}');
                        self.pending.clear();
                    }
                    return;
                }
            }
        }
    }

    /// Moves newly decoded text into `text`. A trailing replacement character means a
    /// character is still incomplete, so it waits, but for at most 4 tokens (the longest UTF-8
    /// character): after that the bytes are invalid and come out as replacement characters.
    fn advance(&mut self, force: bool) {
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let after = self.decode(&self.ids[self.prefix..]);
        let complete = !after.ends_with('\u{FFFD}') || self.ids.len() - self.read >= 4;
        if after.len() > before.len() && (complete || force) {
            // The new text is what follows the window's earlier text; should that decode
            // differently now (rare), cut at a character boundary rather than inside one.
            let common = if after.is_char_boundary(before.len()) {
                before.len()
            } else {
                common_prefix(&before, &after)
            };
            self.text.push_str(&after[common..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
    }

    /// The text produced so far, including any held back.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Flushes what is held back for a possible stop string or an incomplete character (the
    /// sequence ended otherwise).
    pub fn finish(&mut self) -> String {
        if self.bytes.is_some() {
            self.decode_bytes(true);
        } else {
            self.advance(true);
        }
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }

    fn release(&mut self) -> Delta {
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        // A stop string can only start where it would overlap the unsent text.
        let mut from = self.sent.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = found {
            let out = self.text[self.sent..at.max(self.sent)].to_string();
            self.sent = self.text.len();
            return Delta::Stopped(out);
        }
        // Hold back the longest tail that is the beginning of some stop string.
        let mut keep = 0;
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.text.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let end = (self.text.len() - keep).max(self.sent);
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        Delta::Text(out)
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = 0;
    for ((i, x), y) in a.char_indices().zip(b.chars()) {
        if x != y {
            return i;
        }
        n = i + x.len_utf8();
    }
    n
}
