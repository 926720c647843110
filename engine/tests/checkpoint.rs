//! Model directories: the fixture writer's output loads back with the configuration and every
//! tensor the architecture needs; the same seed writes the same bytes; the tokenizer round-trips
//! text exactly; and broken directories fail with the error that names the problem.

use std::path::Path;

use engine::fixture::{FixtureSpec, Shape, write_fixture};
use engine::{Architecture, Checkpoint, DType, EngineError};

fn fixture(dir: &Path, spec: &FixtureSpec) -> Checkpoint {
    write_fixture(dir, spec).unwrap();
    Checkpoint::open(dir).unwrap()
}

#[test]
fn a_tiny_fixture_loads_with_its_configuration_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let ck = fixture(dir.path(), &FixtureSpec::default());
    let c = &ck.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (
            c.hidden_size,
            c.num_layers,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (64, 2, 4, 2, 16)
    );
    assert!(!c.tie_word_embeddings);
    assert_eq!(ck.dtype().unwrap(), DType::F32);
    let embed = ck.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(embed.shape, &[512, 64]);
    assert_eq!(embed.to_f32().len(), 512 * 64);
    assert!(ck.tensor("lm_head.weight").is_ok());
    let norm = ck.tensor("model.norm.weight").unwrap().to_f32();
    assert!(
        norm.iter().all(|v| (0.89..=1.11).contains(v)),
        "norms near one"
    );
    // End-of-sequence ids from generation_config.json, the chat template from tokenizer_config.
    let tok = tokenizers::Tokenizer::from_bytes(ck.tokenizer_json.as_bytes()).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert!(c.eos_token_ids.contains(&im_end));
    assert_eq!(c.bos_token_id, tok.token_to_id("<|begin_of_text|>"));
    assert!(
        ck.chat_template
            .as_deref()
            .unwrap()
            .contains("<|im_start|>")
    );
    assert_eq!(ck.bos_token.as_deref(), Some("<|begin_of_text|>"));
}

#[test]
fn the_same_seed_writes_the_same_model_and_another_seed_another() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_fixture(
        a.path(),
        &FixtureSpec {
            seed: 7,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    write_fixture(
        b.path(),
        &FixtureSpec {
            seed: 7,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    write_fixture(
        c.path(),
        &FixtureSpec {
            seed: 8,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "tokenizer_config.json",
    ] {
        assert_eq!(read(a.path(), f), read(b.path(), f), "{f}");
    }
    assert_ne!(
        read(a.path(), "model.safetensors"),
        read(c.path(), "model.safetensors")
    );
    assert_eq!(
        read(a.path(), "tokenizer.json"),
        read(c.path(), "tokenizer.json")
    );
}

#[test]
fn the_tokenizer_round_trips_any_text_and_splits_multibyte_characters() {
    let trained = engine::fixture::train_tokenizer().unwrap();
    let tok = tokenizers::Tokenizer::from_bytes(trained.json.as_bytes()).unwrap();
    for text in [
        "Hello, world!",
        "Grüße 🙂 日本語 — ok",
        "  spaces\tand\nlines ",
        "zzqx unseen wörds",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert!(ids.iter().all(|&id| (id as usize) < 512), "{ids:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // An emoji is several byte-level tokens: a stream must not cut it in half.
    let ids = tok.encode("🙂", false).unwrap().get_ids().to_vec();
    assert!(ids.len() > 1, "{ids:?}");
    // Special tokens are single ids.
    let ids = tok
        .encode("<|im_start|>user", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], tok.token_to_id("<|im_start|>").unwrap());
}

#[test]
fn architecture_variants_write_and_load() {
    let cases = [
        FixtureSpec {
            architecture: Architecture::Qwen2,
            ..FixtureSpec::default()
        },
        FixtureSpec {
            architecture: Architecture::Mistral,
            tie_embeddings: Some(true),
            ..FixtureSpec::default()
        },
        FixtureSpec {
            llama3_rope: true,
            dtype: DType::BF16,
            ..FixtureSpec::default()
        },
        FixtureSpec {
            dtype: DType::F16,
            ..FixtureSpec::default()
        },
    ];
    for spec in cases {
        let dir = tempfile::tempdir().unwrap();
        let ck = fixture(dir.path(), &spec);
        assert_eq!(ck.config.architecture, spec.architecture);
        assert_eq!(ck.dtype().unwrap(), spec.dtype);
        assert_eq!(
            ck.tensor("model.layers.0.self_attn.q_proj.bias").is_ok(),
            spec.architecture == Architecture::Qwen2
        );
        assert_eq!(
            ck.tensor("lm_head.weight").is_ok(),
            spec.tie_embeddings != Some(true)
        );
        let scaling = ck.config.rope_scaling;
        assert_eq!(scaling.is_some(), spec.llama3_rope);
        if let Some(s) = scaling {
            assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 128));
        }
    }
    assert_eq!(Shape::parse("smollm2-135m"), Some(Shape::SmolLm2_135M));
    assert_eq!(Shape::parse("gpt-5"), None);
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn broken_model_directories_fail_with_the_problem_named() {
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        write_fixture(dir.path(), &FixtureSpec::default()).unwrap();
        dir
    };
    let d = fresh();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert!(
        matches!(Checkpoint::open(d.path()), Err(EngineError::MissingFile(p)) if p.ends_with("config.json"))
    );

    let d = fresh();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert!(
        matches!(Checkpoint::open(d.path()), Err(EngineError::MissingFile(p)) if p.ends_with("model.safetensors"))
    );

    let d = fresh();
    edit_json(&d.path().join("config.json"), |c| {
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let e = Checkpoint::open(d.path()).unwrap_err();
    assert!(matches!(e, EngineError::UnsupportedArchitecture(_)), "{e}");
    assert!(e.to_string().contains("GPT2LMHeadModel"));

    let d = fresh();
    edit_json(&d.path().join("config.json"), |c| {
        c["intermediate_size"] = serde_json::json!(96)
    });
    let e = Checkpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&e, EngineError::WrongShape { expected, found, .. } if expected[0] == 96 && found[0] == 160),
        "{e}"
    );

    let d = fresh();
    edit_json(&d.path().join("config.json"), |c| {
        c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"])
    });
    let e = Checkpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&e, EngineError::MissingTensor(n) if n.ends_with("q_proj.bias")),
        "{e}"
    );

    let d = fresh();
    edit_json(&d.path().join("config.json"), |c| {
        c["num_key_value_heads"] = serde_json::json!(3)
    });
    assert!(matches!(
        Checkpoint::open(d.path()),
        Err(EngineError::Config(_))
    ));

    let d = fresh();
    std::fs::write(
        d.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::open(d.path()),
        Err(EngineError::Safetensors { .. })
    ));
}

#[test]
fn sharded_checkpoints_load_through_their_index() {
    let d = tempfile::tempdir().unwrap();
    write_fixture(d.path(), &FixtureSpec::default()).unwrap();
    // Split the single file into two shards and write the index, as large exports are.
    let bytes = std::fs::read(d.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let views: Vec<_> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &d.path().join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::json!(file));
        }
    }
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    let single = engine::fixture::FixtureSpec::default();
    let other = tempfile::tempdir().unwrap();
    let reference = fixture(other.path(), &single);
    for n in &names {
        assert_eq!(
            ck.tensor(n).unwrap().data,
            reference.tensor(n).unwrap().data,
            "{n}"
        );
    }
}
