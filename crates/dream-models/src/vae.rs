//! diffusers' `AutoencoderKL` (`diffusers/models/autoencoders/autoencoder_kl.py` and `vae.py`),
//! the KL-regularised autoencoder of Rombach et al., "High-Resolution Image Synthesis with
//! Latent Diffusion Models" (2022), that maps images to Stable Diffusion's latent space and back.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use crate::config::VaeConfig;
use crate::layers::{
    conv2d, group_norm, scaled_dot_product_attention, Conv2d, ConvConfig, GroupNorm, PaddingMode,
};
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};

/// diffusers hard-codes this epsilon for every GroupNorm of the encoder and decoder; it is not
/// part of the config.
const NORM_EPS: f64 = 1e-6;

const SAME_3X3: ConvConfig = ConvConfig {
    stride: 1,
    padding: 1,
};

/// The encoder's output distribution over latents: a Gaussian with diagonal covariance.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// `mean + std·noise`, for `noise` drawn from N(0, 1) with the shape of `mean`.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        &self.mean + (&self.std * noise)?
    }
}

/// Single-head self-attention over all pixels, with a residual connection: the attention of the
/// VAE's mid blocks (diffusers `Attention` with `_from_deprecated_attn_block`).
#[derive(Debug, Clone)]
struct SpatialSelfAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    scale: f64,
}

impl SpatialSelfAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, NORM_EPS, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp("0"))?,
            // One head as wide as the channels.
            scale: 1.0 / (channels as f64).sqrt(),
        })
    }
}

impl Module for SpatialSelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // Pixels become the sequence: [B, C, H, W] → [B, H·W, C].
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let attended = scaled_dot_product_attention(&q, &k, &v, self.scale)?;
        let out = self
            .to_out
            .forward(&attended)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}

fn resnet(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<ResnetBlock2D> {
    let config = ResnetBlock2DConfig {
        in_channels,
        out_channels,
        temb_channels: None,
        groups,
        eps: NORM_EPS,
    };
    ResnetBlock2D::new(vb, &config)
}

/// diffusers `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    resnet_in: ResnetBlock2D,
    attention: SpatialSelfAttention,
    resnet_out: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            resnet_in: resnet(vb.pp("resnets").pp("0"), channels, channels, groups)?,
            attention: SpatialSelfAttention::new(vb.pp("attentions").pp("0"), channels, groups)?,
            resnet_out: resnet(vb.pp("resnets").pp("1"), channels, channels, groups)?,
        })
    }

    fn set_padding_mode(&self, mode: PaddingMode) {
        self.resnet_in.set_padding_mode(mode);
        self.resnet_out.set_padding_mode(mode);
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.resnet_in.forward(x, None)?;
        let x = self.attention.forward(&x)?;
        self.resnet_out.forward(&x, None)
    }
}

/// The resampler ending a resolution level.
#[derive(Debug, Clone)]
enum Resample {
    Down(Downsample2D),
    Up(Upsample2D),
}

/// A resolution level: resnets, then a down- or upsampler on all levels but the last
/// (diffusers `DownEncoderBlock2D` / `UpDecoderBlock2D`).
#[derive(Debug, Clone)]
struct Level {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<Resample>,
}

impl Level {
    fn new(
        vb: VarBuilder,
        resnet_count: usize,
        (in_channels, out_channels): (usize, usize),
        groups: usize,
        resample: Option<Resample>,
    ) -> Result<Self> {
        let resnets = (0..resnet_count)
            .map(|i| {
                let from = if i == 0 { in_channels } else { out_channels };
                resnet(vb.pp("resnets").pp(i), from, out_channels, groups)
            })
            .collect::<Result<_>>()?;
        Ok(Self { resnets, resample })
    }

    fn set_padding_mode(&self, mode: PaddingMode) {
        self.resnets.iter().for_each(|r| r.set_padding_mode(mode));
        match &self.resample {
            Some(Resample::Down(down)) => down.set_padding_mode(mode),
            Some(Resample::Up(up)) => up.set_padding_mode(mode),
            None => {}
        }
    }
}

impl Module for Level {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x, None)?;
        }
        match &self.resample {
            Some(Resample::Down(down)) => down.forward(&x),
            Some(Resample::Up(up)) => up.forward(&x),
            None => Ok(x),
        }
    }
}

/// Image `[B, in_channels, H, W]` → moments `[B, 2·latent_channels, H/8, W/8]` (for 4 levels).
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<Level>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let (first, last) = match (channels.first(), channels.last()) {
            (Some(&first), Some(&last)) => (first, last),
            _ => bail!("VAE config: block_out_channels is empty"),
        };
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let vb = vb.pp("down_blocks").pp(i);
                let input = if i == 0 { first } else { channels[i - 1] };
                let resample = if i + 1 < channels.len() {
                    // Padding 0 here means the LDM's asymmetric bottom/right padding.
                    let down = Downsample2D::new(vb.pp("downsamplers").pp("0"), out, 0)?;
                    Some(Resample::Down(down))
                } else {
                    None
                };
                Level::new(vb, config.layers_per_block, (input, out), groups, resample)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: conv2d(config.in_channels, first, 3, SAME_3X3, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, groups)?,
            conv_norm_out: group_norm(groups, last, NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(
                last,
                2 * config.latent_channels,
                3,
                SAME_3X3,
                vb.pp("conv_out"),
            )?,
        })
    }

    fn set_padding_mode(&self, mode: PaddingMode) {
        self.conv_in.set_padding_mode(mode);
        for block in &self.down_blocks {
            block.set_padding_mode(mode);
        }
        self.mid_block.set_padding_mode(mode);
        self.conv_out.set_padding_mode(mode);
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            x = block.forward(&x)?;
        }
        let x = self.mid_block.forward(&x)?;
        let x = self.conv_norm_out.forward_silu(&x)?;
        self.conv_out.forward(&x)
    }
}

/// Latents `[B, latent_channels, h, w]` → image `[B, out_channels, 8h, 8w]` (for 4 levels).
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<Level>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let groups = config.norm_num_groups;
        // The decoder walks the encoder's levels backwards, widest first.
        let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let (first, last) = match (channels.first(), channels.last()) {
            (Some(&first), Some(&last)) => (first, last),
            _ => bail!("VAE config: block_out_channels is empty"),
        };
        let up_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let vb = vb.pp("up_blocks").pp(i);
                let input = if i == 0 { first } else { channels[i - 1] };
                let resample = if i + 1 < channels.len() {
                    let up = Upsample2D::new(vb.pp("upsamplers").pp("0"), out)?;
                    Some(Resample::Up(up))
                } else {
                    None
                };
                let count = config.layers_per_block + 1;
                Level::new(vb, count, (input, out), groups, resample)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: conv2d(config.latent_channels, first, 3, SAME_3X3, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(vb.pp("mid_block"), first, groups)?,
            up_blocks,
            conv_norm_out: group_norm(groups, last, NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(last, config.out_channels, 3, SAME_3X3, vb.pp("conv_out"))?,
        })
    }

    fn set_padding_mode(&self, mode: PaddingMode) {
        self.conv_in.set_padding_mode(mode);
        self.mid_block.set_padding_mode(mode);
        for block in &self.up_blocks {
            block.set_padding_mode(mode);
        }
        self.conv_out.set_padding_mode(mode);
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let x = self.conv_in.forward(z)?;
        let mut x = self.mid_block.forward(&x)?;
        for block in &self.up_blocks {
            x = block.forward(&x)?;
        }
        let x = self.conv_norm_out.forward_silu(&x)?;
        self.conv_out.forward(&x)
    }
}

/// Stable Diffusion's VAE. Weight names are diffusers' (`encoder.*`, `quant_conv`,
/// `post_quant_conv`, `decoder.*`, attention `to_q/to_k/to_v/to_out.0`).
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    decoder: Decoder,
    config: VaeConfig,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let moments = 2 * config.latent_channels;
        let latent = config.latent_channels;
        let one_by_one = ConvConfig::default();
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            quant_conv: conv2d(moments, moments, 1, one_by_one, vb.pp("quant_conv"))?,
            post_quant_conv: conv2d(latent, latent, 1, one_by_one, vb.pp("post_quant_conv"))?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The posterior over latents for images `x` `[B, in_channels, H, W]` with values in
    /// [-1, 1]. Its mean and samples are unscaled: multiply by `scaling_factor` for the UNet.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.posterior(&self.encode_moments(x)?)
    }

    /// The encoder's output for images `x`: the posterior's mean and log-variance, concatenated
    /// over channels (what tiled encoding blends).
    pub fn encode_moments(&self, x: &Tensor) -> Result<Tensor> {
        check_channels("encode", x, self.config.in_channels)?;
        self.quant_conv.forward(&self.encoder.forward(x)?)
    }

    /// The posterior for `encode_moments`' output.
    pub fn posterior(&self, moments: &Tensor) -> Result<DiagonalGaussian> {
        let latent = self.config.latent_channels;
        let mean = moments.narrow(1, 0, latent)?;
        // The clamp keeps exp finite for a degenerate encoder output, as in LDM.
        let log_var = moments.narrow(1, latent, latent)?.clamp(-30f32, 20f32)?;
        let std = (log_var * 0.5)?.exp()?;
        Ok(DiagonalGaussian { mean, std })
    }

    /// Images `[B, out_channels, 8h, 8w]`, nominally in [-1, 1] but not clamped, from latents
    /// `z` `[B, latent_channels, h, w]` that are already divided by `scaling_factor`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        check_channels("decode", z, self.config.latent_channels)?;
        self.decoder.forward(&self.post_quant_conv.forward(z)?)
    }

    /// Sets the padding of every convolution; circular padding makes decoded images tile.
    pub fn set_padding_mode(&self, mode: PaddingMode) {
        self.encoder.set_padding_mode(mode);
        self.quant_conv.set_padding_mode(mode);
        self.post_quant_conv.set_padding_mode(mode);
        self.decoder.set_padding_mode(mode);
    }
}

fn check_channels(what: &str, x: &Tensor, channels: usize) -> Result<()> {
    match x.dims() {
        [_, c, _, _] if *c == channels => Ok(()),
        dims => {
            bail!("VAE {what}: expected a [batch, {channels}, height, width] tensor, got {dims:?}")
        }
    }
}
