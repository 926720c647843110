//! Text in and out: streamed deltas never split a UTF-8 character, stop strings are matched
//! across tokens and never leak, and chat templates written for Hugging Face render the same.

use std::sync::Arc;

use engine::ChatMessage;
use engine::chat::ChatTemplate;
use engine::detok::{Delta, Detokenizer};
use engine::fixture::train_tokenizer;
use tokenizers::Tokenizer;

fn tokenizer() -> Arc<Tokenizer> {
    let trained = train_tokenizer().unwrap();
    Arc::new(Tokenizer::from_bytes(trained.json.as_bytes()).unwrap())
}

#[test]
fn multi_byte_characters_split_across_tokens_stream_whole() {
    let tok = tokenizer();
    let text = " Grüße, 日本語 and 🎉🚀 ok";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    let mut d = Detokenizer::new(tok.clone(), &[], vec![]);
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        let Delta::Text(t) = d.push(id) else {
            panic!("no stop strings given")
        };
        assert!(!t.contains('\u{FFFD}'), "delta {t:?}");
        if t.is_empty() {
            held += 1;
        }
        out.push_str(&t);
    }
    out.push_str(&d.finish());
    assert_eq!(out, text);
    // The emoji and CJK characters are not in the small vocabulary, so their bytes are separate
    // tokens: some steps must have held text back.
    assert!(
        held >= 3,
        "held back {held} times over {} tokens",
        ids.len()
    );
}

/// Streams `ids` through a detokenizer reading the vocabulary's bytes.
fn stream_bytes(tok: &Arc<Tokenizer>, ids: &[u32]) -> String {
    let vocab = Arc::new(engine::constraint::vocabulary(tok).unwrap());
    let mut d = Detokenizer::new(tok.clone(), &[], vec![]).with_bytes(Some(vocab));
    let mut out = String::new();
    for &id in ids {
        let Delta::Text(t) = d.push(id) else { panic!() };
        out.push_str(&t);
    }
    out + &d.finish()
}

#[test]
fn streamed_text_is_the_decoding_of_the_ids_even_for_invalid_bytes() {
    let tok = tokenizer();
    assert!(matches!(
        tok.get_decoder(),
        Some(tokenizers::DecoderWrapper::ByteLevel(_))
    ));
    let vocab = engine::constraint::vocabulary(&tok).unwrap();
    let byte = |b: u8| vocab.iter().position(|w| w.as_slice() == [b]).unwrap() as u32;
    // Stray continuation bytes, a lead byte cut short, a valid pair, a dangling lead byte.
    let ids: Vec<u32> = [0x92, 0xab, 0xdf, 0xdc, 0xab, 0xa8].map(byte).to_vec();
    let whole = tok.decode(&ids, true).unwrap();
    assert_eq!(whole.chars().filter(|&c| c == '\u{FFFD}').count(), 4);
    assert_eq!(stream_bytes(&tok, &ids), whole);
    // Random ids, special tokens and split characters included.
    let mut x: u64 = 7;
    for _ in 0..200 {
        let ids: Vec<u32> = (0..24)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 33) % tok.get_vocab_size(true) as u64) as u32
            })
            .collect();
        assert_eq!(
            stream_bytes(&tok, &ids),
            tok.decode(&ids, true).unwrap(),
            "{ids:?}"
        );
    }
}

fn tok_decode_all_but_last(text: &str) -> String {
    let tok = tokenizer();
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    tok.decode(&ids[..ids.len() - 1], true).unwrap()
}

#[test]
fn text_of_an_unfinished_character_is_flushed_at_the_end_not_lost() {
    let tok = tokenizer();
    let ids = tok.encode(" 日本", false).unwrap().get_ids().to_vec();
    let mut d = Detokenizer::new(tok, &[], vec![]);
    let mut out = String::new();
    // Everything but the last byte-token: the final character is incomplete and held.
    for &id in &ids[..ids.len() - 1] {
        let Delta::Text(t) = d.push(id) else { panic!() };
        out.push_str(&t);
    }
    assert!(!out.contains('\u{FFFD}'));
    let rest = d.finish();
    assert!(rest.ends_with('\u{FFFD}'), "{out:?} + {rest:?}");
    // What the held tokens decode to, replacement characters included, comes out at the end.
    let held = tok_decode_all_but_last(" 日本");
    assert_eq!(out + &rest, held);
}

fn stream(stop: &[&str], text: &str) -> (String, bool) {
    let tok = tokenizer();
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    let mut d = Detokenizer::new(tok, &[], stop.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for &id in &ids {
        match d.push(id) {
            Delta::Text(t) => out.push_str(&t),
            Delta::Stopped(t) => {
                out.push_str(&t);
                return (out, true);
            }
        }
    }
    out.push_str(&d.finish());
    (out, false)
}

#[test]
fn stop_strings_cut_the_text_and_are_matched_across_tokens() {
    assert_eq!(
        stream(&["brown fox"], "The quick brown fox jumps"),
        ("The quick ".to_string(), true)
    );
    // The earliest of several stop strings wins; one made of many tokens still matches.
    assert_eq!(
        stream(&["jumps", "quick"], "The quick brown fox jumps"),
        ("The ".to_string(), true)
    );
    assert_eq!(
        stream(&["日本"], "Text 日本語"),
        ("Text ".to_string(), true)
    );
    // A prefix of a stop string that never completes is released at the end, not lost.
    assert_eq!(
        stream(&["fox trot"], "The quick brown fox"),
        ("The quick brown fox".to_string(), false)
    );
}

#[test]
fn a_possible_stop_string_is_held_back_until_it_cannot_be_one() {
    let tok = tokenizer();
    let ids = tok.encode("ab ab abc", false).unwrap().get_ids().to_vec();
    let mut d = Detokenizer::new(tok, &[], vec!["abc".into()]);
    let mut sent = String::new();
    for &id in &ids {
        match d.push(id) {
            Delta::Text(t) => {
                sent.push_str(&t);
                // Nothing sent may end in a prefix of the stop string at the end of the text
                // seen so far.
                assert!(
                    !d.text().ends_with("ab") || !sent.ends_with("ab"),
                    "{sent:?}"
                );
            }
            Delta::Stopped(t) => {
                sent.push_str(&t);
                break;
            }
        }
    }
    assert_eq!(sent, "ab ab ");
}

fn m(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

#[test]
fn hugging_face_style_templates_render_with_python_methods_and_errors() {
    // In the style of Llama 3 / Mistral templates: whitespace control by trim_blocks and
    // lstrip_blocks, Python string methods, raise_exception for bad role order.
    let source = r#"{{ bos_token }}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ '[INST] ' + message['content'].strip() + ' [/INST]' }}
    {% else %}
        {{ message['content'] | trim + eos_token }}
    {% endif %}
{% endfor %}
"#;
    let t = ChatTemplate::new(source, Some("<s>"), Some("</s>")).unwrap();
    let out = t
        .render(&[
            m("user", "  Hi "),
            m("assistant", "Hello. "),
            m("user", "Bye"),
        ])
        .unwrap();
    // What Python's jinja2 3.1 renders for this template with Hugging Face's settings.
    assert_eq!(
        out,
        "<s>\n        [INST] Hi [/INST]\n        Hello.</s>\n        [INST] Bye [/INST]\n"
    );
    let err = t.render(&[m("assistant", "first")]).unwrap_err();
    assert_eq!(err.param, "messages");
    assert_eq!(
        err.message,
        "Conversation roles must alternate user/assistant/user/assistant/..."
    );
    assert!(ChatTemplate::new("{% for %}", None, None).is_err());
}
