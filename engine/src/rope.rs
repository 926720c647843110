//! Rotary-embedding tables, shared by both backends: `cos[p][i]` and `sin[p][i]` for position p
//! and frequency i < head_dim/2, including Llama 3's frequency-dependent scaling.

use crate::ModelConfig;

pub struct RopeTables {
    pub half: usize,
    pub positions: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// The inverse frequencies, computed in f64 and scaled as Llama 3 specifies.
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim;
    let mut inv: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    if let Some(s) = config.rope_scaling {
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        for f in &mut inv {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= s.factor;
            } else if wavelen >= high_wavelen {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
            }
        }
    }
    inv
}

impl RopeTables {
    pub fn new(config: &ModelConfig, positions: usize) -> RopeTables {
        let inv = inverse_frequencies(config);
        let half = inv.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in &inv {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTables {
            half,
            positions,
            cos,
            sin,
        }
    }

    pub fn at(&self, position: usize) -> (&[f32], &[f32]) {
        let r = position * self.half..(position + 1) * self.half;
        (&self.cos[r.clone()], &self.sin[r])
    }
}
