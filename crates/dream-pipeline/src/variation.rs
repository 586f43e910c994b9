//! Variations: initial noise spherically interpolated towards other seeds' noise.
//!
//! InvokeAI 2.x (`ldm/invoke/generator/base.py`) draws the seed's noise, then slerps it
//! towards each `-V seed:weight` seed's noise in turn, over the whole latent tensor; `-v
//! AMOUNT` is one more such step towards a new random seed, which the image then records as
//! the last pair of its chain. A1111's "Variation seed" and "Variation seed strength"
//! (`subseed`, `subseed_strength` in `modules/rng.py`) slerp the seed's noise towards the
//! variation seed's with a different grouping: one slerp per channel and column, over the
//! latent's rows (its `slerp` normalises along dim 1 of a `[C, H, W]` tensor).

use std::fmt;

use dream_core::rng::TorchGenerator;

use crate::perlin::{mix_perlin, perlin_noise};
use crate::txt2img::Txt2Img;
use crate::DreamError;

/// One step of a variation chain: the noise moves `weight` of the way towards `seed`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variation {
    pub seed: u32,
    pub weight: f64,
}

impl Variation {
    pub(crate) fn validate(&self) -> Result<(), DreamError> {
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(DreamError::InvalidRequest(format!(
                "variation weights must be between 0 and 1, got {} for seed {}",
                self.weight, self.seed
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Variation {
    /// InvokeAI's `seed:weight`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seed, self.weight)
    }
}

/// `seed:weight,seed:weight` as InvokeAI's `-V` takes it and its `Dream` chunk writes it.
pub fn parse_variations(text: &str) -> Result<Vec<Variation>, DreamError> {
    text.split(',')
        .map(|pair| {
            let invalid = || {
                DreamError::InvalidRequest(format!(
                    "variations are seed:weight pairs separated by commas, got {pair:?} in {text:?}"
                ))
            };
            let (seed, weight) = pair.trim().split_once(':').ok_or_else(invalid)?;
            let variation = Variation {
                seed: seed.trim().parse().map_err(|_| invalid())?,
                weight: weight.trim().parse().map_err(|_| invalid())?,
            };
            variation.validate()?;
            Ok(variation)
        })
        .collect()
}

/// The `-V` text of a chain.
pub fn format_variations(chain: &[Variation]) -> String {
    chain
        .iter()
        .map(Variation::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A request's starting noise, `[channels, height, width]` latents flattened: `generator`'s next
/// draw with the request's share of Perlin noise, slerped along its variation chain (each
/// seed's noise drawn the same way from a fresh generator), then towards A1111's variation
/// seed.
pub fn initial_noise(
    generator: &mut TorchGenerator,
    shape: (usize, usize, usize),
    request: &Txt2Img,
) -> Result<Vec<f32>, DreamError> {
    let (channels, height, width) = shape;
    let seed_noise = |generator: &mut TorchGenerator| -> Result<Vec<f32>, DreamError> {
        let mut noise = generator.randn(channels * height * width);
        if request.perlin > 0.0 {
            let perlin = perlin_noise(generator, channels, height, width)?;
            mix_perlin(&mut noise, &perlin, request.perlin);
        }
        Ok(noise)
    };
    let mut noise = seed_noise(generator)?;
    for variation in &request.variations {
        let target = seed_noise(&mut TorchGenerator::seeded(variation.seed.into()))?;
        noise = slerp(variation.weight, &noise, &target);
    }
    if let Some(subseed) = &request.subseed {
        // A1111 draws the variation seed's noise plainly (it has no Perlin noise).
        let target = TorchGenerator::seeded(subseed.seed.into()).randn(noise.len());
        noise = a1111_slerp(subseed.weight, &noise, &target, shape);
    }
    Ok(noise)
}

/// Vectors closer to parallel than this are interpolated linearly, where slerp's
/// `sin θ` denominator loses precision (both InvokeAI and A1111 use this threshold).
const PARALLEL_DOT: f64 = 0.9995;

/// InvokeAI's slerp of two whole noise tensors: `t = 0` gives `v0`, `t = 1` gives `v1`, and
/// in between the point at that fraction of the angle between them.
pub fn slerp(t: f64, v0: &[f32], v1: &[f32]) -> Vec<f32> {
    let dot = cosine(v0.iter().zip(v1));
    let (s0, s1) = if dot.abs() > PARALLEL_DOT {
        (1.0 - t, t)
    } else {
        slerp_weights(t, dot)
    };
    combine(v0, v1, s0, s1)
}

/// A1111's slerp of `[channels, height, width]` noise: each (channel, column) vector of
/// `height` values is interpolated on its own, unless the mean cosine says the tensors are
/// near parallel, when A1111 mixes linearly with the weights swapped (`low·t + high·(1 − t)`,
/// as its code does).
pub fn a1111_slerp(
    t: f64,
    low: &[f32],
    high: &[f32],
    (channels, height, width): (usize, usize, usize),
) -> Vec<f32> {
    let column = |data: &[f32], c: usize, x: usize| -> Vec<f32> {
        (0..height)
            .map(|y| data[(c * height + y) * width + x])
            .collect()
    };
    let mut dots = Vec::with_capacity(channels * width);
    for c in 0..channels {
        for x in 0..width {
            let (l, h) = (column(low, c, x), column(high, c, x));
            dots.push(cosine(l.iter().zip(&h)));
        }
    }
    if dots.iter().sum::<f64>() / dots.len() as f64 > PARALLEL_DOT {
        return combine(low, high, t, 1.0 - t);
    }
    let mut out = vec![0f32; low.len()];
    for c in 0..channels {
        for x in 0..width {
            let (s0, s1) = slerp_weights(t, dots[c * width + x]);
            for y in 0..height {
                let i = (c * height + y) * width + x;
                out[i] = (s0 * f64::from(low[i]) + s1 * f64::from(high[i])) as f32;
            }
        }
    }
    out
}

/// The cosine of the angle between two vectors given as pairs of their elements.
fn cosine<'a>(pairs: impl Iterator<Item = (&'a f32, &'a f32)>) -> f64 {
    let (mut dot, mut norm0, mut norm1) = (0f64, 0f64, 0f64);
    for (&a, &b) in pairs {
        let (a, b) = (f64::from(a), f64::from(b));
        dot += a * b;
        norm0 += a * a;
        norm1 += b * b;
    }
    dot / (norm0.sqrt() * norm1.sqrt())
}

/// Slerp's weights `sin((1 − t)θ) / sin θ` and `sin(tθ) / sin θ` for `cos θ = dot`.
fn slerp_weights(t: f64, dot: f64) -> (f64, f64) {
    let theta = dot.clamp(-1.0, 1.0).acos();
    let sin_theta = theta.sin();
    (
        (theta - theta * t).sin() / sin_theta,
        (theta * t).sin() / sin_theta,
    )
}

fn combine(v0: &[f32], v1: &[f32], s0: f64, s1: f64) -> Vec<f32> {
    v0.iter()
        .zip(v1)
        .map(|(&a, &b)| (s0 * f64::from(a) + s1 * f64::from(b)) as f32)
        .collect()
}
