//! The denoising network of SD 1.x/2.x and SDXL: diffusers' `UNet2DConditionModel` (Rombach et
//! al. 2022; Podell et al. 2023 for SDXL), built from its `config.json`. A U-shaped stack of
//! resnet blocks, with spatial transformers attending to the text embedding at the resolutions
//! the config names, conditioned on the timestep through every resnet. SDXL adds its pooled text
//! embedding and its size and crop numbers to the timestep embedding ("micro-conditioning").

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::{Transformer2DConfig, Transformer2DModel};
use crate::config::{PerBlock, UNetConfig};
use crate::embeddings::{timestep_embedding, TimestepEmbedding};
use crate::layers::{conv2d, group_norm, Conv2d, ConvConfig, GroupNorm, PaddingMode};
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};

/// How a down or up block is built, by its diffusers type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Resnets only.
    Plain,
    /// A spatial transformer after every resnet.
    CrossAttn,
}

impl BlockKind {
    fn down(name: &str) -> Result<Self> {
        match name {
            "DownBlock2D" => Ok(Self::Plain),
            "CrossAttnDownBlock2D" => Ok(Self::CrossAttn),
            other => bail!("UNet down block type {other:?} is not supported yet"),
        }
    }

    fn up(name: &str) -> Result<Self> {
        match name {
            "UpBlock2D" => Ok(Self::Plain),
            "CrossAttnUpBlock2D" => Ok(Self::CrossAttn),
            other => bail!("UNet up block type {other:?} is not supported yet"),
        }
    }
}

/// The per-resolution settings shared by the blocks' resnets and transformers.
#[derive(Debug, Clone, Copy)]
struct BlockSettings {
    temb_channels: usize,
    groups: usize,
    eps: f64,
    context_dim: usize,
    use_linear_projection: bool,
    upcast_attention: bool,
    /// Heads and transformer depth at this resolution; `None` for a [`BlockKind::Plain`] block.
    attention: Option<(usize, usize)>,
}

impl BlockSettings {
    fn resnet(
        &self,
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<ResnetBlock2D> {
        let config = ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
        };
        ResnetBlock2D::new(vb, &config)
    }

    fn transformer(&self, vb: VarBuilder, channels: usize) -> Result<Option<Transformer2DModel>> {
        let Some((heads, num_layers)) = self.attention else {
            return Ok(None);
        };
        let config = Transformer2DConfig {
            channels,
            heads,
            dim_head: channels / heads,
            num_layers,
            context_dim: self.context_dim,
            norm_num_groups: self.groups,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
        };
        Transformer2DModel::new(vb, &config).map(Some)
    }
}

/// One resnet, followed by a spatial transformer in cross-attention blocks.
#[derive(Debug, Clone)]
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2DModel>,
}

impl Layer {
    fn new(
        vb: &VarBuilder,
        index: usize,
        settings: &BlockSettings,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        Ok(Self {
            resnet: settings.resnet(
                vb.pp(format!("resnets.{index}")),
                in_channels,
                out_channels,
            )?,
            attention: settings.transformer(vb.pp(format!("attentions.{index}")), out_channels)?,
        })
    }

    fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.resnet.forward(xs, Some(temb))?;
        match &self.attention {
            Some(attention) => attention.forward(&xs, context),
            None => Ok(xs),
        }
    }
}

/// `DownBlock2D` / `CrossAttnDownBlock2D`: layers at one resolution, then a stride-2 downsampler
/// (except in the deepest block). Every layer's output and the downsampler's are skip
/// connections for the up path.
#[derive(Debug, Clone)]
struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, temb, context)?;
            skips.push(xs.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            xs = downsampler.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// `UpBlock2D` / `CrossAttnUpBlock2D`: each layer takes the previous output concatenated on
/// channels with the latest unused skip connection; then a nearest-neighbour upsampler (except in
/// the last block).
#[derive(Debug, Clone)]
struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            let Some(skip) = skips.pop() else {
                bail!("UNet up path ran out of skip connections");
            };
            xs = layer.forward(&Tensor::cat(&[&xs, &skip], 1)?, temb, context)?;
        }
        if let Some(upsampler) = &self.upsampler {
            // Back to the size of the skip connection this output will be joined with: twice the
            // current size, except when a downsampler rounded an odd size up.
            let Some(skip) = skips.last() else {
                bail!("UNet up path ran out of skip connections");
            };
            let (_, _, height, width) = skip.dims4()?;
            xs = upsampler.forward_to(&xs, height, width)?;
        }
        Ok(xs)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, transformer, resnet at the deepest resolution.
#[derive(Debug, Clone)]
struct MidBlock {
    /// `resnets.0` + `attentions.0`.
    first: Layer,
    /// `resnets.1`.
    resnet_out: ResnetBlock2D,
}

impl MidBlock {
    fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, temb, context)?;
        self.resnet_out.forward(&xs, Some(temb))
    }
}

/// SDXL's extra conditioning, per batch item: the pooled text embedding and the
/// micro-conditioning numbers (base: original height, width, crop top, left, target height,
/// width; refiner: original size, crop, aesthetic score).
#[derive(Debug, Clone, Copy)]
pub struct AddedConditions<'a> {
    /// `[B, pooled width]`.
    pub text_embeds: &'a Tensor,
    /// `[B, numbers]`.
    pub time_ids: &'a Tensor,
}

/// `addition_embed_type: "text_time"`: every micro-conditioning number gets the timestep's
/// sinusoidal embedding, and those are joined to the pooled text embedding and lifted by an MLP
/// to the timestep embedding's width.
#[derive(Debug, Clone)]
struct TextTimeEmbedding {
    number_channels: usize,
    /// `add_embedding`'s input width: pooled text width + numbers × `number_channels`.
    input_channels: usize,
    add_embedding: TimestepEmbedding,
}

impl TextTimeEmbedding {
    fn forward(
        &self,
        added: &AddedConditions,
        flip_sin_to_cos: bool,
        freq_shift: f64,
        batch: usize,
    ) -> Result<Tensor> {
        let (text_batch, pooled) = added.text_embeds.dims2()?;
        let (ids_batch, numbers) = added.time_ids.dims2()?;
        if text_batch != batch || ids_batch != batch {
            bail!(
                "SDXL's text_embeds ({text_batch} rows) and time_ids ({ids_batch} rows) need \
                 one row per latent ({batch})"
            );
        }
        if pooled + numbers * self.number_channels != self.input_channels {
            bail!(
                "this SDXL UNet takes {} channels of pooled text embedding and micro-conditioning \
                 ({} per number), not {pooled} pooled + {numbers} numbers",
                self.input_channels,
                self.number_channels
            );
        }
        let time_embeds = timestep_embedding(
            &added.time_ids.flatten_all()?,
            self.number_channels,
            flip_sin_to_cos,
            freq_shift,
        )?
        .reshape((batch, numbers * self.number_channels))?;
        let dtype = added.text_embeds.dtype();
        let joined = Tensor::cat(&[added.text_embeds, &time_embeds.to_dtype(dtype)?], 1)?;
        self.add_embedding.forward(&joined)
    }
}

/// The conditional UNet of Stable Diffusion 1.x, 2.x and SDXL, predicting the noise (or v) in a
/// latent.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    text_time_embedding: Option<TextTimeEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    timestep_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

/// Rejects the config features of later UNets that this implementation does not have, so a
/// checkpoint that needs them fails loudly instead of producing noise.
fn check_supported(cfg: &UNetConfig) -> Result<()> {
    match cfg.addition_embed_type.as_deref() {
        None | Some("text_time") => {}
        Some(other) => bail!("UNet addition_embed_type {other:?} is not supported yet"),
    }
    let unsupported = [
        ("class_embed_type", cfg.class_embed_type.is_some()),
        ("num_class_embeds", cfg.num_class_embeds.is_some()),
        ("encoder_hid_dim_type", cfg.encoder_hid_dim_type.is_some()),
        ("time_cond_proj_dim", cfg.time_cond_proj_dim.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        bail!(
            "UNet config field {field:?} (class-conditional/LCM extensions) is not supported yet"
        );
    }
    match cfg.mid_block_type.as_deref() {
        Some("UNetMidBlock2DCrossAttn") => {}
        other => bail!("UNet mid block type {other:?} is not supported yet"),
    }
    let blocks = cfg.block_out_channels.len();
    if blocks == 0 || cfg.down_block_types.len() != blocks || cfg.up_block_types.len() != blocks {
        bail!(
            "UNet config needs as many down_block_types ({}) and up_block_types ({}) as block_out_channels ({blocks}), at least one",
            cfg.down_block_types.len(),
            cfg.up_block_types.len()
        );
    }
    let per_block = [
        ("attention_head_dim", per_block_len(&cfg.attention_head_dim)),
        (
            "num_attention_heads",
            cfg.num_attention_heads.as_ref().and_then(per_block_len),
        ),
        (
            "transformer_layers_per_block",
            per_block_len(&cfg.transformer_layers_per_block),
        ),
    ];
    for (field, len) in per_block {
        if let Some(len) = len.filter(|&len| len != blocks) {
            bail!("UNet config {field} has {len} entries for {blocks} blocks");
        }
    }
    Ok(())
}

fn per_block_len<T>(value: &PerBlock<T>) -> Option<usize> {
    match value {
        PerBlock::Same(_) => None,
        PerBlock::Each(values) => Some(values.len()),
    }
}

impl UNet2DConditionModel {
    /// `vb` is rooted at the UNet (`conv_in.weight` etc. directly under it).
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        check_supported(cfg)?;
        let channels = &cfg.block_out_channels;
        let blocks = channels.len();
        let time_embed_dim = channels[0] * 4;
        // diffusers' misnomer: `attention_head_dim` is the head count unless `num_attention_heads`
        // is given (see config::UNetConfig).
        let heads = cfg
            .num_attention_heads
            .as_ref()
            .unwrap_or(&cfg.attention_head_dim);
        let settings = |block: usize, kind: BlockKind| -> Result<BlockSettings> {
            let attention = match kind {
                BlockKind::Plain => None,
                BlockKind::CrossAttn => {
                    let Some(heads) = heads.get(block) else {
                        bail!("UNet config gives no attention head count for block {block}");
                    };
                    let Some(layers) = cfg.transformer_layers_per_block.get(block) else {
                        bail!(
                            "UNet config gives no transformer_layers_per_block for block {block}"
                        );
                    };
                    if heads == 0 || !channels[block].is_multiple_of(heads) {
                        bail!("UNet block {block}: {} channels do not split into {heads} attention heads", channels[block]);
                    }
                    Some((heads, layers))
                }
            };
            Ok(BlockSettings {
                temb_channels: time_embed_dim,
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                context_dim: cfg.cross_attention_dim,
                use_linear_projection: cfg.use_linear_projection,
                upcast_attention: cfg.upcast_attention,
                attention,
            })
        };
        let same = ConvConfig {
            stride: 1,
            padding: 1,
        };

        let mut down_blocks = Vec::with_capacity(blocks);
        let mut in_channels = channels[0];
        for (i, block_type) in cfg.down_block_types.iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let settings = settings(i, BlockKind::down(block_type)?)?;
            let out_channels = channels[i];
            let layers = (0..cfg.layers_per_block)
                .map(|j| {
                    let layer_in = if j == 0 { in_channels } else { out_channels };
                    Layer::new(&vb, j, &settings, layer_in, out_channels)
                })
                .collect::<Result<_>>()?;
            let downsampler = (i + 1 < blocks)
                .then(|| {
                    Downsample2D::new(
                        vb.pp("downsamplers.0"),
                        out_channels,
                        cfg.downsample_padding,
                    )
                })
                .transpose()?;
            down_blocks.push(DownBlock {
                layers,
                downsampler,
            });
            in_channels = out_channels;
        }

        let deepest = channels[blocks - 1];
        let mid_settings = settings(blocks - 1, BlockKind::CrossAttn)?;
        let mid = vb.pp("mid_block");
        let mid_block = MidBlock {
            first: Layer::new(&mid, 0, &mid_settings, deepest, deepest)?,
            resnet_out: mid_settings.resnet(mid.pp("resnets.1"), deepest, deepest)?,
        };

        // The up path mirrors the down path: block i works at the resolution of down block
        // `blocks-1-i`, and its layers consume that block's skip connections plus the one from
        // the block above (or from conv_in, for the last).
        let mut up_blocks = Vec::with_capacity(blocks);
        let mut prev_channels = deepest;
        for (i, block_type) in cfg.up_block_types.iter().enumerate() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let level = blocks - 1 - i;
            let settings = settings(level, BlockKind::up(block_type)?)?;
            let out_channels = channels[level];
            let skip_from_above = channels[level.saturating_sub(1)];
            let num_layers = cfg.layers_per_block + 1;
            let layers = (0..num_layers)
                .map(|j| {
                    let layer_in = if j == 0 { prev_channels } else { out_channels };
                    let skip = if j + 1 == num_layers {
                        skip_from_above
                    } else {
                        out_channels
                    };
                    Layer::new(&vb, j, &settings, layer_in + skip, out_channels)
                })
                .collect::<Result<_>>()?;
            let upsampler = (i + 1 < blocks)
                .then(|| Upsample2D::new(vb.pp("upsamplers.0"), out_channels))
                .transpose()?;
            up_blocks.push(UpBlock { layers, upsampler });
            prev_channels = out_channels;
        }

        let text_time_embedding = match cfg.addition_embed_type {
            Some(_) => {
                let (Some(number_channels), Some(input_channels)) = (
                    cfg.addition_time_embed_dim,
                    cfg.projection_class_embeddings_input_dim,
                ) else {
                    bail!("UNet config with addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim");
                };
                Some(TextTimeEmbedding {
                    number_channels,
                    input_channels,
                    add_embedding: TimestepEmbedding::new(
                        vb.pp("add_embedding"),
                        input_channels,
                        time_embed_dim,
                    )?,
                })
            }
            None => None,
        };

        Ok(Self {
            conv_in: conv2d(cfg.in_channels, channels[0], 3, same, vb.pp("conv_in"))?,
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                channels[0],
                time_embed_dim,
            )?,
            text_time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(
                cfg.norm_num_groups,
                channels[0],
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv2d(channels[0], cfg.out_channels, 3, same, vb.pp("conv_out"))?,
            timestep_channels: channels[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
        })
    }

    /// Predicts the model output for the noisy latents `sample` `[B, in_channels, h, w]` at
    /// `timestep` (may be fractional), conditioned on `encoder_hidden_states`
    /// `[B, tokens, cross_attention_dim]`. SDXL UNets need [`Self::forward_with_added`].
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        self.forward_with_added(sample, timestep, encoder_hidden_states, None)
    }

    /// Whether [`Self::forward_with_added`] needs SDXL's [`AddedConditions`].
    pub fn needs_added_conditions(&self) -> bool {
        self.text_time_embedding.is_some()
    }

    /// [`Self::forward`] with SDXL's extra conditioning, which a UNet with
    /// [`Self::needs_added_conditions`] requires and any other refuses.
    pub fn forward_with_added(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let (batch, _, _, _) = sample.dims4()?;
        let timesteps = Tensor::full(timestep as f32, batch, sample.device())?;
        let t_emb = timestep_embedding(
            &timesteps,
            self.timestep_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
        )?;
        let mut temb = self
            .time_embedding
            .forward(&t_emb.to_dtype(sample.dtype())?)?;
        match (&self.text_time_embedding, added) {
            (Some(embedding), Some(added)) => {
                let aug = embedding.forward(added, self.flip_sin_to_cos, self.freq_shift, batch)?;
                temb = (temb + aug)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                bail!("this SDXL UNet needs the pooled text embedding and size conditioning")
            }
            (None, Some(_)) => bail!(
                "this UNet takes no pooled text embedding or size conditioning (not an SDXL model)"
            ),
        }
        let context = encoder_hidden_states;

        let mut xs = self.conv_in.forward(sample)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            xs = block.forward(&xs, &temb, context, &mut skips)?;
        }
        xs = self.mid_block.forward(&xs, &temb, context)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs, &temb, context, &mut skips)?;
        }
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }

    /// Switches every padded convolution (seamless tiling).
    pub fn set_padding_mode(&self, mode: PaddingMode) {
        self.conv_in.set_padding_mode(mode);
        self.conv_out.set_padding_mode(mode);
        let down_layers = self.down_blocks.iter().flat_map(|b| b.layers.iter());
        let up_layers = self.up_blocks.iter().flat_map(|b| b.layers.iter());
        for layer in down_layers.chain(up_layers) {
            layer.resnet.set_padding_mode(mode);
        }
        for block in &self.down_blocks {
            if let Some(downsampler) = &block.downsampler {
                downsampler.set_padding_mode(mode);
            }
        }
        for block in &self.up_blocks {
            if let Some(upsampler) = &block.upsampler {
                upsampler.set_padding_mode(mode);
            }
        }
        self.mid_block.first.resnet.set_padding_mode(mode);
        self.mid_block.resnet_out.set_padding_mode(mode);
    }
}
