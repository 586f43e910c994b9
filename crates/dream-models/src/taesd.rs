//! TAESD, madebyollin's tiny autoencoder: a decoder of Stable Diffusion latents about a hundred
//! times cheaper than the VAE's, for previews and fast drafts (diffusers' `AutoencoderTiny`,
//! its `DecoderTiny`). Only the decoder is built: nothing in Dream encodes with TAESD.
//!
//! Weights come from a diffusers `AutoencoderTiny` folder (`config.json` and
//! `diffusion_pytorch_model.safetensors`) or from madebyollin's `taesd_decoder.safetensors`,
//! whose `nn.Sequential` starts with the clamp diffusers applies in `forward`, so its layer
//! indices are one more than diffusers'.

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::layers::{conv2d, conv2d_no_bias, upsample_nearest, Conv2d, ConvConfig};
use crate::weights::{read_config, Component, Weights, WeightsError};

/// The decoder half of `AutoencoderTiny`'s `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TinyDecoderConfig {
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "sixty_four_each")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    /// Latents are divided by this before decoding: 1 for TAESD, which decodes the UNet's
    /// (already scaled) latents directly.
    #[serde(default = "one")]
    pub scaling_factor: f64,
}

impl Default for TinyDecoderConfig {
    /// madebyollin's TAESD for SD 1.x/2.x (and TAESDXL, which has the same shape).
    fn default() -> Self {
        TinyDecoderConfig {
            latent_channels: four(),
            out_channels: three(),
            decoder_block_out_channels: sixty_four_each(),
            num_decoder_blocks: decoder_blocks(),
            upsampling_scaling_factor: two(),
            scaling_factor: 1.0,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn sixty_four_each() -> Vec<usize> {
    vec![64; 4]
}
fn decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}

const SAME: ConvConfig = ConvConfig {
    stride: 1,
    padding: 1,
};

/// `relu(conv(relu(conv(relu(conv(x))))) + x)` (diffusers' `AutoencoderTinyBlock`; the
/// decoder's blocks keep their width, so their skip connection is the identity).
#[derive(Debug, Clone)]
struct Block {
    convs: [Conv2d; 3],
}

impl Block {
    fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let conv = vb.pp("conv");
        Ok(Block {
            convs: [
                conv2d(channels, channels, 3, SAME, conv.pp("0"))?,
                conv2d(channels, channels, 3, SAME, conv.pp("2"))?,
                conv2d(channels, channels, 3, SAME, conv.pp("4"))?,
            ],
        })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.convs[0].forward(x)?.relu()?;
        let h = self.convs[1].forward(&h)?.relu()?;
        self.convs[2].forward_add(&h, x)?.relu()
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Relu,
    Block(Block),
    Upsample(usize),
}

/// TAESD's decoder: latents `[B, 4, h, w]` to images `[B, 3, 8h, 8w]` in [-1, 1].
#[derive(Debug, Clone)]
pub struct TinyDecoder {
    layers: Vec<Layer>,
    config: TinyDecoderConfig,
}

impl TinyDecoder {
    /// `vb` holds diffusers' names (`decoder.layers.N.…`).
    pub fn new(vb: VarBuilder, config: &TinyDecoderConfig) -> Result<Self> {
        let channels = &config.decoder_block_out_channels;
        if channels.len() != config.num_decoder_blocks.len() || channels.is_empty() {
            candle_core::bail!(
                "TAESD config: {} decoder_block_out_channels for {} num_decoder_blocks",
                channels.len(),
                config.num_decoder_blocks.len()
            );
        }
        // Each level's last convolution keeps its width, so the next level must have it too
        // (as in diffusers, whose DecoderTiny fails on such configs).
        if channels.windows(2).any(|pair| pair[0] != pair[1]) {
            candle_core::bail!("TAESD config: decoder_block_out_channels {channels:?} differ");
        }
        let vb = vb.pp("decoder").pp("layers");
        let conv_in = conv2d(config.latent_channels, channels[0], 3, SAME, vb.pp("0"))?;
        let mut layers = vec![Layer::Conv(conv_in), Layer::Relu];
        let last = channels.len() - 1;
        for (i, (&width, &blocks)) in channels.iter().zip(&config.num_decoder_blocks).enumerate() {
            for _ in 0..blocks {
                layers.push(Layer::Block(Block::new(vb.pp(layers.len()), width)?));
            }
            if i != last {
                layers.push(Layer::Upsample(config.upsampling_scaling_factor));
            }
            let here = vb.pp(layers.len());
            layers.push(Layer::Conv(if i == last {
                conv2d(width, config.out_channels, 3, SAME, here)?
            } else {
                conv2d_no_bias(width, width, 3, SAME, here)?
            }));
        }
        Ok(TinyDecoder {
            layers,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &TinyDecoderConfig {
        &self.config
    }

    /// Images in [-1, 1] from latents already divided by `scaling_factor`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        // TAESD's soft clamp of the latents to ±3.
        let mut x = ((z / 3.0)?.tanh()? * 3.0)?;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(&x)?,
                Layer::Relu => x.relu()?,
                Layer::Block(block) => block.forward(&x)?,
                Layer::Upsample(factor) => {
                    let (_, _, h, w) = x.dims4()?;
                    upsample_nearest(&x, h * factor, w * factor)?
                }
            };
        }
        // TAESD's images are in [0, 1].
        x.affine(2.0, -1.0)
    }
}

/// Opens TAESD's decoder: a diffusers `AutoencoderTiny` folder (`config.json`,
/// `diffusion_pytorch_model.safetensors`) or madebyollin's `taesd_decoder.safetensors`, whose
/// layer `N` (after the clamp at 0) is diffusers' `decoder.layers.{N-1}`.
pub fn open(path: &Path) -> std::result::Result<Component<TinyDecoderConfig>, WeightsError> {
    if path.is_dir() {
        return Ok(Component {
            config: read_config(&path.join("config.json"))?,
            weights: Weights::open(&path.join("diffusion_pytorch_model.safetensors"))?,
        });
    }
    let weights = Weights::open_renamed(path, |name| {
        let (index, rest) = name.split_once('.')?;
        let index = index.parse::<usize>().ok()?.checked_sub(1)?;
        Some(format!("decoder.layers.{index}.{rest}"))
    })?;
    Ok(Component {
        config: TinyDecoderConfig::default(),
        weights,
    })
}
