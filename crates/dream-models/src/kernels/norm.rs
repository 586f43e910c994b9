//! GroupNorm (Wu & He 2018) with the SiLU that follows it in every resnet fused in: two passes
//! for the statistics of a group, which stays in cache, and one that normalises, applies the
//! per-channel affine map and the activation while writing the output.

use rayon::prelude::*;

use super::math::{dispatch, silu};

/// Sizes of a `[batch, channels, spatial]` GroupNorm input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupNormGeometry {
    pub batch: usize,
    pub channels: usize,
    /// Elements per channel (height × width).
    pub spatial: usize,
    pub groups: usize,
}

/// `out = act(γ·(x − μ_g)/√(σ²_g + eps) + β)` with mean and (biased) variance over each group of
/// `channels / groups` consecutive channels, `act` SiLU when `with_silu`, else the identity.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    g: &GroupNormGeometry,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    with_silu: bool,
    out: &mut [f32],
) {
    assert!(
        g.groups > 0 && g.channels.is_multiple_of(g.groups),
        "group norm: {} channels in {} groups",
        g.channels,
        g.groups
    );
    assert_eq!(
        x.len(),
        g.batch * g.channels * g.spatial,
        "group norm input size"
    );
    assert_eq!(out.len(), x.len(), "group norm output size");
    assert!(
        gamma.len() == g.channels && beta.len() == g.channels,
        "group norm affine size"
    );
    let group_channels = g.channels / g.groups;
    let group_len = group_channels * g.spatial;
    if group_len == 0 {
        return;
    }
    out.par_chunks_mut(group_len)
        .zip(x.par_chunks(group_len))
        .enumerate()
        .for_each(|(i, (out, x))| {
            let (mean, var) = moments(x);
            let inv_std = 1.0 / (var + eps as f64).sqrt();
            let c0 = (i % g.groups) * group_channels;
            for (c, (out, x)) in out
                .chunks_exact_mut(g.spatial)
                .zip(x.chunks_exact(g.spatial))
                .enumerate()
            {
                let scale = gamma[c0 + c] as f64 * inv_std;
                affine(x, mean as f32, scale as f32, beta[c0 + c], with_silu, out);
            }
        });
}

/// Mean and biased variance, the latter around the mean (two passes) for accuracy.
fn moments(x: &[f32]) -> (f64, f64) {
    let mean = sum(x) / x.len() as f64;
    let var = squared_deviation_sum(x, mean as f32) / x.len() as f64;
    (mean, var)
}

// The loops below are written without closures: a closure is a function of its own, compiled
// without the target features of the `dispatch!` copy that calls it unless it is inlined.

/// Sums in f32 lanes over blocks short enough that their rounding stays negligible, in f64
/// across blocks.
#[inline(always)]
fn sum_impl(x: &[f32]) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(4096) {
        let mut lanes = [0f32; 16];
        let mut chunks = block.chunks_exact(16);
        for chunk in &mut chunks {
            for (s, v) in lanes.iter_mut().zip(chunk) {
                *s += v;
            }
        }
        for v in chunks.remainder() {
            lanes[0] += v;
        }
        total += lanes.iter().sum::<f32>() as f64;
    }
    total
}

#[inline(always)]
fn squared_deviation_sum_impl(x: &[f32], mean: f32) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(4096) {
        let mut lanes = [0f32; 16];
        let mut chunks = block.chunks_exact(16);
        for chunk in &mut chunks {
            for (s, v) in lanes.iter_mut().zip(chunk) {
                let d = v - mean;
                *s = d.mul_add(d, *s);
            }
        }
        for v in chunks.remainder() {
            let d = v - mean;
            lanes[0] = d.mul_add(d, lanes[0]);
        }
        total += lanes.iter().sum::<f32>() as f64;
    }
    total
}

/// `(x − mean)·scale + shift`, then SiLU if asked. Subtracting the mean first rather than
/// folding it into the shift avoids cancellation when the mean is large against the spread.
#[inline(always)]
fn affine_impl(x: &[f32], mean: f32, scale: f32, shift: f32, with_silu: bool, out: &mut [f32]) {
    if with_silu {
        for (o, v) in out.iter_mut().zip(x) {
            *o = silu((v - mean).mul_add(scale, shift));
        }
    } else {
        for (o, v) in out.iter_mut().zip(x) {
            *o = (v - mean).mul_add(scale, shift);
        }
    }
}

dispatch! {
    fn sum(x: &[f32]) -> f64 = sum_impl
}

dispatch! {
    fn squared_deviation_sum(x: &[f32], mean: f32) -> f64 = squared_deviation_sum_impl
}

dispatch! {
    fn affine(x: &[f32], mean: f32, scale: f32, shift: f32, with_silu: bool, out: &mut [f32]) = affine_impl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::pseudo_random;

    fn naive(x: &[f32], g: &GroupNormGeometry, gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
        let per_group = g.channels / g.groups * g.spatial;
        let mut out = Vec::with_capacity(x.len());
        for (i, group) in x.chunks(per_group).enumerate() {
            let n = group.len() as f64;
            let mean = group.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = group
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            for (j, &v) in group.iter().enumerate() {
                let c = (i % g.groups) * (g.channels / g.groups) + j / g.spatial;
                out.push((v as f64 - mean) / (var + eps).sqrt() * gamma[c] as f64 + beta[c] as f64);
            }
        }
        out
    }

    #[test]
    fn matches_definition_with_and_without_silu() {
        for (n, &(batch, channels, spatial, groups)) in [
            (1, 1, 1, 1),
            (2, 6, 7, 3),
            (1, 32, 33, 32),
            (3, 12, 100, 4),
            (1, 8, 5000, 2),
        ]
        .iter()
        .enumerate()
        {
            let g = GroupNormGeometry {
                batch,
                channels,
                spatial,
                groups,
            };
            // An offset mean, as real activations have, tests the two-pass variance.
            let x: Vec<f32> = pseudo_random(batch * channels * spatial, n as u32)
                .iter()
                .map(|v| 3.0 * v + 10.0)
                .collect();
            let gamma = pseudo_random(channels, 50 + n as u32);
            let beta = pseudo_random(channels, 60 + n as u32);
            let expected = naive(&x, &g, &gamma, &beta, 1e-5);
            for with_silu in [false, true] {
                let mut out = vec![f32::NAN; x.len()];
                group_norm(&x, &g, &gamma, &beta, 1e-5, with_silu, &mut out);
                for (o, e) in out.iter().zip(&expected) {
                    let e = if with_silu {
                        e / (1.0 + (-e).exp())
                    } else {
                        *e
                    };
                    assert!(
                        (*o as f64 - e).abs() < 1e-5,
                        "{g:?} silu {with_silu}: {o} vs {e}"
                    );
                }
            }
        }
    }
}
