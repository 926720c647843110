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
