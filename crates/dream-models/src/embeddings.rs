//! The UNet's timestep conditioning: the sinusoidal embedding of DDPM (Ho et al. 2020, after
//! the Transformer's positional encoding) followed by a two-layer MLP, as diffusers'
//! `Timesteps` + `TimestepEmbedding`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

/// The period of the slowest sinusoid; diffusers' and the original LDM's constant.
const MAX_PERIOD: f64 = 10_000.0;

/// Sinusoidal embeddings `[N, dim]` of the timesteps `[N]`, which may be fractional (Karras-style
/// samplers pass interpolated timesteps such as 946.42).
///
/// Frequency `i` of `half = dim/2` is `exp(-ln(MAX_PERIOD)·i / (half − downscale_freq_shift))`;
/// the first half of the output holds the sines and the second the cosines, swapped when
/// `flip_sin_to_cos` (SD's setting). The arithmetic is f32 in diffusers' order so that the
/// high-frequency terms, whose arguments reach ~1000 radians, round the same way.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = -(MAX_PERIOD.ln() as f32);
    let denominator = half as f32 - downscale_freq_shift as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_period * i as f32 / denominator).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], D::Minus1)?
    } else {
        Tensor::cat(&[sin, cos], D::Minus1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(D::Minus1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// The MLP that lifts the sinusoidal embedding to the width the resnets are conditioned on:
/// `linear_1 → SiLU → linear_2`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_channels, time_embed_dim, vb.pp("linear_1"))?,
            linear_2: linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(xs)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// At t = 0 every sine is 0 and every cosine 1, whatever the frequencies.
    #[test]
    fn zero_timestep_is_cosines_then_sines() -> Result<()> {
        let t = Tensor::new(&[0f32], &Device::Cpu)?;
        let flipped = timestep_embedding(&t, 6, true, 0.0)?.to_vec2::<f32>()?;
        assert_eq!(flipped, [[1., 1., 1., 0., 0., 0.]]);
        let unflipped = timestep_embedding(&t, 7, false, 1.0)?.to_vec2::<f32>()?;
        assert_eq!(unflipped, [[0., 0., 0., 1., 1., 1., 0.]]);
        Ok(())
    }

    /// dim 4, shift 1: frequencies exp(-ln(10⁴)·i/1) = 1 and 10⁻⁴, so t = 2 gives
    /// [cos 2, cos 2e-4, sin 2, sin 2e-4].
    #[test]
    fn frequencies_follow_the_shifted_geometric_series() -> Result<()> {
        let t = Tensor::new(&[2f64], &Device::Cpu)?;
        let emb = timestep_embedding(&t, 4, true, 1.0)?.to_vec2::<f32>()?;
        let expected = [2f32.cos(), 2e-4f32.cos(), 2f32.sin(), 2e-4f32.sin()];
        for (got, want) in emb[0].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{:?} vs {expected:?}", emb[0]);
        }
        Ok(())
    }
}
