//! The CPU forward pass against a plain reference written here in f64: the weights are read
//! straight from the safetensors file, attention is recomputed over the whole prefix for every
//! position with no cache, RoPE is applied from its definition. Nothing is shared with the
//! engine's code. Each architecture variant is checked: grouped-query attention, q/k/v bias
//! (Qwen2), tied embeddings, Llama 3 rope scaling, bf16 weights.

use std::collections::HashMap;
use std::path::Path;

use engine::backend::{Backend, SeqStep};
use engine::cpu::{CpuBackend, CpuConfig};
use engine::fixture::{FixtureSpec, write_fixture};
use engine::{Architecture, Checkpoint, DType};
use serde_json::Value;

struct Reference {
    cfg: Value,
    w: HashMap<String, Vec<f64>>,
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap()
}

impl Reference {
    fn load(dir: &Path) -> Reference {
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut w = HashMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => d
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::BF16 => d
                    .chunks(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                safetensors::Dtype::F16 => d
                    .chunks(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                other => panic!("{other:?}"),
            };
            w.insert(name, values);
        }
        Reference { cfg, w }
    }

    fn get(&self, name: &str) -> &[f64] {
        &self.w[name]
    }

    /// y = W x for W stored [out][in].
    fn linear(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let w = self.get(name);
        let n = x.len();
        w.chunks(n)
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn norm(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let eps = num(&self.cfg, "rms_norm_eps");
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + eps).sqrt();
        x.iter()
            .zip(self.get(name))
            .map(|(v, g)| v * r * g)
            .collect()
    }

    fn inv_freq(&self, d: usize) -> Vec<f64> {
        let theta = num(&self.cfg, "rope_theta");
        let base: Vec<f64> = (0..d / 2)
            .map(|i| theta.powf(-(2.0 * i as f64) / d as f64))
            .collect();
        let s = &self.cfg["rope_scaling"];
        if s.is_null() {
            return base;
        }
        let (factor, lo, hi) = (
            num(s, "factor"),
            num(s, "low_freq_factor"),
            num(s, "high_freq_factor"),
        );
        let orig = num(s, "original_max_position_embeddings");
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < orig / hi {
                    f
                } else if wavelen > orig / lo {
                    f / factor
                } else {
                    let smooth = (orig / wavelen - lo) / (hi - lo);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
    }

    fn rotate(&self, v: &[f64], pos: usize) -> Vec<f64> {
        let d = v.len();
        let inv = self.inv_freq(d);
        let mut out = vec![0.0; d];
        for i in 0..d / 2 {
            let a = pos as f64 * inv[i];
            out[i] = v[i] * a.cos() - v[i + d / 2] * a.sin();
            out[i + d / 2] = v[i + d / 2] * a.cos() + v[i] * a.sin();
        }
        out
    }

    /// Logits after every position of `tokens`.
    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let h = c["hidden_size"].as_u64().unwrap() as usize;
        let heads = c["num_attention_heads"].as_u64().unwrap() as usize;
        let kvh = c["num_key_value_heads"].as_u64().unwrap() as usize;
        let d = h / heads;
        let layers = c["num_hidden_layers"].as_u64().unwrap() as usize;
        let emb = self.get("model.embed_tokens.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        for l in 0..layers {
            let p = format!("model.layers.{l}");
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let n = self.norm(&format!("{p}.input_layernorm.weight"), x);
                let proj = |name: &str| {
                    let mut y = self.linear(&format!("{p}.self_attn.{name}_proj.weight"), &n);
                    if let Some(b) = self.w.get(&format!("{p}.self_attn.{name}_proj.bias")) {
                        y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                    }
                    y
                };
                let (q, k, v) = (proj("q"), proj("k"), proj("v"));
                qs.push(
                    q.chunks(d)
                        .flat_map(|hv| self.rotate(hv, pos))
                        .collect::<Vec<_>>(),
                );
                ks.push(
                    k.chunks(d)
                        .flat_map(|hv| self.rotate(hv, pos))
                        .collect::<Vec<_>>(),
                );
                vs.push(v);
            }
            for pos in 0..xs.len() {
                let mut attn = vec![0.0; heads * d];
                for head in 0..heads {
                    let g = head / (heads / kvh);
                    let q = &qs[pos][head * d..(head + 1) * d];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            let k = &ks[j][g * d..(g + 1) * d];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for i in 0..d {
                            attn[head * d + i] += ej / z * vs[j][g * d + i];
                        }
                    }
                }
                let o = self.linear(&format!("{p}.self_attn.o_proj.weight"), &attn);
                let x = &mut xs[pos];
                x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
                let n = self.norm(&format!("{p}.post_attention_layernorm.weight"), x);
                let gate = self.linear(&format!("{p}.mlp.gate_proj.weight"), &n);
                let up = self.linear(&format!("{p}.mlp.up_proj.weight"), &n);
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let down = self.linear(&format!("{p}.mlp.down_proj.weight"), &act);
                x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
            }
        }
        let head = if self.w.contains_key("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        xs.iter()
            .map(|x| self.linear(head, &self.norm("model.norm.weight", x)))
            .collect()
    }
}

fn check(spec: FixtureSpec) {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), &spec).unwrap();
    let reference = Reference::load(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    let mut cpu = CpuBackend::new(
        &ck,
        CpuConfig {
            threads: 2,
            kv_bytes: 1 << 22,
            block_size: 16,
        },
    )
    .unwrap();
    // 40 tokens: a 27-token prefill (crossing a block boundary), then 13 single-token steps.
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 512).collect();
    let want = reference.logits(&tokens);
    let blocks = [7u32, 2, 5];
    let mut got = Vec::new();
    let first = cpu
        .forward(&[SeqStep {
            tokens: &tokens[..27],
            start: 0,
            blocks: &blocks,
            want_logits: true,
        }])
        .unwrap()
        .to_vec();
    got.push((26, first));
    for p in 27..40 {
        let row = cpu
            .forward(&[SeqStep {
                tokens: &tokens[p..p + 1],
                start: p,
                blocks: &blocks,
                want_logits: true,
            }])
            .unwrap()
            .to_vec();
        got.push((p, row));
    }
    let mut worst = 0.0f64;
    for (p, row) in &got {
        let scale = want[*p].iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (g, w) in row.iter().zip(&want[*p]) {
            worst = worst.max((*g as f64 - w).abs() / scale);
        }
    }
    assert!(
        worst < 2e-5,
        "{:?}: largest difference {worst:e} (relative to the largest logit)",
        spec
    );
}

#[test]
fn llama_with_grouped_query_attention() {
    check(FixtureSpec::default());
}

#[test]
fn qwen2_with_qkv_bias() {
    check(FixtureSpec {
        architecture: Architecture::Qwen2,
        seed: 3,
        ..FixtureSpec::default()
    });
}

#[test]
fn mistral_with_tied_embeddings() {
    check(FixtureSpec {
        architecture: Architecture::Mistral,
        tie_embeddings: Some(true),
        seed: 4,
        ..FixtureSpec::default()
    });
}

#[test]
fn llama3_rope_scaling() {
    check(FixtureSpec {
        llama3_rope: true,
        seed: 5,
        ..FixtureSpec::default()
    });
}

#[test]
fn bf16_weights() {
    check(FixtureSpec {
        dtype: DType::BF16,
        seed: 6,
        ..FixtureSpec::default()
    });
}
