//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (`diffusers/models/resnet.py`,
//! `downsampling.py`, `upsampling.py`), in the configuration SD's UNet and VAE use them:
//! GroupNorm + SiLU, an additive time embedding, and output scale factor 1.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use crate::layers::{
    conv2d, group_norm, upsample_nearest, Conv2d, ConvConfig, GroupNorm, PaddingMode,
};

/// Shape of a [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding the block adds after `conv1`; `None` for the VAE's blocks,
    /// which have no `time_emb_proj`.
    pub temb_channels: Option<usize>,
    /// GroupNorm groups of both norms.
    pub groups: usize,
    pub eps: f64,
}

/// Two 3×3 convolutions with pre-activation GroupNorm/SiLU and a residual connection, which is
/// a 1×1 `conv_shortcut` when the channel count changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, config: &ResnetBlock2DConfig) -> Result<Self> {
        let &ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels,
            groups,
            eps,
        } = config;
        let same = ConvConfig {
            stride: 1,
            padding: 1,
        };
        let conv_shortcut = if in_channels != out_channels {
            let one_by_one = ConvConfig::default();
            Some(conv2d(
                in_channels,
                out_channels,
                1,
                one_by_one,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let time_emb_proj = temb_channels
            .map(|t| linear(t, out_channels, vb.pp("time_emb_proj")))
            .transpose()?;
        Ok(Self {
            norm1: group_norm(groups, in_channels, eps, vb.pp("norm1"))?,
            conv1: conv2d(in_channels, out_channels, 3, same, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: group_norm(groups, out_channels, eps, vb.pp("norm2"))?,
            conv2: conv2d(out_channels, out_channels, 3, same, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }

    /// `x` is `[B, in, H, W]`; `temb` is `[B, temb_channels]`, and must be given exactly when
    /// the block was built with `temb_channels`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_silu(x)?;
        // The time embedding is one offset per channel, added to conv1's output.
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let temb = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
                self.conv1.forward_add(&h, &temb)?
            }
            (None, None) => self.conv1.forward(&h)?,
            (Some(_), None) => bail!("this ResnetBlock2D needs a time embedding"),
            (None, Some(_)) => bail!("this ResnetBlock2D takes no time embedding"),
        };
        // Dropout would go between the SiLU and conv2; it is the identity at inference.
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        self.conv2
            .forward_add(&self.norm2.forward_silu(&h)?, &shortcut)
    }

    pub fn set_padding_mode(&self, mode: PaddingMode) {
        for conv in [&self.conv1, &self.conv2] {
            conv.set_padding_mode(mode);
        }
        if let Some(conv) = &self.conv_shortcut {
            conv.set_padding_mode(mode);
        }
    }
}

/// Halves the resolution with a stride-2 3×3 `conv`.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    /// diffusers' `padding=0` case (the VAE encoder): pad one zero row and column at the
    /// bottom/right instead, as the original LDM code did, so even sizes halve exactly.
    pad_bottom_right: bool,
}

impl Downsample2D {
    /// `padding` is diffusers' `downsample_padding`: 1 for the UNet, 0 for the VAE encoder.
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let config = ConvConfig { stride: 2, padding };
        Ok(Self {
            conv: conv2d(channels, channels, 3, config, vb.pp("conv"))?,
            pad_bottom_right: padding == 0,
        })
    }

    pub fn set_padding_mode(&self, mode: PaddingMode) {
        self.conv.set_padding_mode(mode);
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_bottom_right {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Doubles the resolution by nearest-neighbour interpolation, then a 3×3 `conv`.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let same = ConvConfig {
            stride: 1,
            padding: 1,
        };
        Ok(Self {
            conv: conv2d(channels, channels, 3, same, vb.pp("conv"))?,
        })
    }

    /// Interpolates to exactly `height`×`width` instead of doubling: the UNet's `upsample_size`,
    /// used when its input size is not a multiple of its total downsampling factor.
    pub fn forward_to(&self, x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest(x, height, width)?)
    }

    pub fn set_padding_mode(&self, mode: PaddingMode) {
        self.conv.set_padding_mode(mode);
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.forward_to(x, 2 * h, 2 * w)
    }
}
