//! Network configurations inferred from tensor shapes, for single-file checkpoints, which carry
//! no config.
//!
//! The shapes fix most of a config: channel counts, levels, layers per block, which levels have
//! attention, the conditioning width, whether the transformers project linearly. They cannot
//! show three things, and for those this module applies Stable Diffusion's own values:
//!
//! * **GroupNorm groups**: 32, as in every SD 1.x/2.x/XL UNet and VAE.
//! * **Attention heads**: in the UNet, 8 heads (SD 1.x) or, with a 1024-wide (OpenCLIP ViT-H)
//!   conditioning or SDXL's added conditioning, 64-channel heads (SD 2.x: 5/10/20/20 heads per
//!   level, SDXL 5/10/20); in the text encoders, 64-channel heads (ViT-L/14: 12, ViT-H/14: 16,
//!   ViT-bigG/14: 20).
//! * **SDXL's micro-conditioning**: six numbers (original size, crop offset, target size) for
//!   the base model, five (original size, crop offset, aesthetic score) for the refiner
//!   ([`sdxl_unet_config`]).
//! * **VAE scaling factor**: SD's 0.18215, SDXL's [`SDXL_VAE_SCALING_FACTOR`].
//! * **Prediction type** ([`default_prediction`]).
//! * **fp16 attention upcasting** (`upcast_attention`): on for SD 2.x (1024-wide conditioning),
//!   as in SD 2.1's diffusers config, which diffusers' `from_single_file` gives SD 2.x files (SD
//!   2.1's attention overflows float16 without it); off otherwise. It changes nothing in f32.
//!
//! A model that departs from these (the tiny test model has 8 groups and 2 heads) needs its
//! diffusers configs: `weights::load_single_file(path, Some(config_dir))`.

use std::path::Path;

use serde_json::json;

use crate::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::weights::{Weights, WeightsError};
use dream_core::keymap::TextEncoderLayout;

/// Which Stable Diffusion a checkpoint is, as far as a pipeline needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelKind {
    pub version: SdVersion,
    /// A 9-channel UNet (latents + mask + masked-image latents).
    pub inpainting: bool,
    pub prediction: Prediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdVersion {
    /// CLIP ViT-L/14 conditioning, 768 wide.
    V1,
    /// OpenCLIP ViT-H/14 conditioning, 1024 wide.
    V2,
    /// SDXL: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 side by side (2048 wide), plus the pooled
    /// text embedding and size/crop numbers added to the timestep embedding (`text_time`).
    Xl,
}

/// What the UNet was trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise ε.
    Epsilon,
    /// v = α·ε − σ·x₀ (SD 2.x 768-v models).
    VPrediction,
}

/// SDXL is the UNet with `text_time` added conditioning; otherwise the version follows the
/// conditioning width. Inpainting follows the UNet's 9 input channels.
pub fn model_kind(unet: &UNetConfig, prediction: Prediction) -> ModelKind {
    ModelKind {
        version: if unet.addition_embed_type.as_deref() == Some("text_time") {
            SdVersion::Xl
        } else if unet.cross_attention_dim == 1024 {
            SdVersion::V2
        } else {
            SdVersion::V1
        },
        inpainting: unet.in_channels == 9,
        prediction,
    }
}

/// The prediction type of a single file without a config. Shapes cannot tell: SD 2.0/2.1's
/// 768-v models predict v, their 512-base models ε, with identical tensors. Like diffusers'
/// `from_single_file`, this follows what most SD 2.x files are, the 768-v models: SD 2.x (an
/// OpenCLIP text encoder) means v-prediction, except for inpainting UNets (Stability's only
/// SD 2.x inpainting model predicts ε); SD 1.x means ε. A 512-base SD 2.x file needs its
/// diffusers config folder or a [`sibling_config_prediction`] file. (A1111 instead runs the
/// UNet once on a test input and compares its output with what ε- and v-prediction would give.)
pub fn default_prediction(open_clip_text_encoder: bool, inpainting: bool) -> Prediction {
    if open_clip_text_encoder && !inpainting {
        Prediction::VPrediction
    } else {
        Prediction::Epsilon
    }
}

/// The prediction type a latent-diffusion `.yaml` config says (A1111 reads `NAME.yaml` beside
/// `NAME.safetensors`, InvokeAI 2.x its `models.yaml` entry's `config:`): `parameterization:
/// "v"` (Stability's `v2-inference-v.yaml`) means v-prediction; a config without the key
/// (`v2-inference.yaml`, `v1-inference.yaml`) means ε, latent diffusion's default. The file is
/// scanned for that one key rather than parsed: nothing else in it matters here.
pub fn ldm_config_prediction(config: &Path) -> Result<Prediction, WeightsError> {
    let text = std::fs::read_to_string(config).map_err(|source| WeightsError::Io {
        path: config.to_path_buf(),
        source,
    })?;
    let value = text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let value = line.strip_prefix("parameterization:")?;
        Some(
            value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string(),
        )
    });
    match value.as_deref() {
        None | Some("eps") => Ok(Prediction::Epsilon),
        Some("v") => Ok(Prediction::VPrediction),
        Some(other) => Err(WeightsError::Unsupported {
            path: config.to_path_buf(),
            problem: format!("parameterization {other:?} is not supported (eps or v)"),
        }),
    }
}

/// [`ldm_config_prediction`] of the `NAME.yaml` beside a single file `NAME.*`, as A1111 reads
/// it; `None` when there is no such file.
pub fn sibling_config_prediction(checkpoint: &Path) -> Result<Option<Prediction>, WeightsError> {
    let config = checkpoint.with_extension("yaml");
    match config.is_file() {
        true => ldm_config_prediction(&config).map(Some),
        false => Ok(None),
    }
}

fn undetectable(w: &Weights, what: &'static str, why: impl Into<String>) -> WeightsError {
    WeightsError::Undetectable {
        path: w.path().to_path_buf(),
        what,
        why: why.into(),
    }
}

fn dim(w: &Weights, what: &'static str, name: &str, index: usize) -> Result<usize, WeightsError> {
    let shape = w
        .shape(name)
        .ok_or_else(|| undetectable(w, what, format!("no tensor {name}")))?;
    shape
        .get(index)
        .copied()
        .ok_or_else(|| undetectable(w, what, format!("{name} has shape {shape:?}")))
}

/// How many consecutive `{prefix}{i}.` indices exist, from 0.
fn count(w: &Weights, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            let level = format!("{prefix}{i}.");
            w.names().any(|n| n.starts_with(&level))
        })
        .count()
}

fn has_prefix(w: &Weights, prefix: &str) -> bool {
    w.names().any(|n| n.starts_with(prefix))
}

fn build<T: serde::de::DeserializeOwned>(
    w: &Weights,
    what: &'static str,
    value: serde_json::Value,
) -> Result<T, WeightsError> {
    serde_json::from_value(value).map_err(|e| undetectable(w, what, e.to_string()))
}

/// The SDXL VAE's latent scaling (its diffusers config's `scaling_factor`): its latents are
/// spread wider than SD 1.x/2.x's.
pub const SDXL_VAE_SCALING_FACTOR: f64 = 0.13025;

/// The number of micro-conditioning numbers the SDXL base UNet embeds beside the pooled text:
/// original height and width, crop top and left, target height and width.
pub const SDXL_TIME_IDS: usize = 6;
/// The SDXL refiner's: original height and width, crop top and left, aesthetic score.
pub const SDXL_REFINER_TIME_IDS: usize = 5;

/// Where SDXL's added conditioning (`label_emb` in single files) lives.
const ADD_EMBEDDING: &str = "add_embedding.linear_1.weight";

/// A UNet config from diffusers-named SD 1.x/2.x UNet weights (see the module docs for what is
/// assumed). An SDXL UNet needs [`sdxl_unet_config`].
pub fn unet_config(w: &Weights) -> Result<UNetConfig, WeightsError> {
    if w.contains(ADD_EMBEDDING) {
        return Err(undetectable(
            w,
            "UNet config",
            "it has SDXL's added conditioning (add_embedding), whose layout depends on the \
             second text encoder's width",
        ));
    }
    build(w, "UNet config", unet_fields(w)?)
}

/// An SDXL UNet config: [`unet_config`]'s fields plus the `text_time` added conditioning, whose
/// MLP reads the pooled text embedding (`pooled_width` wide: the second text encoder's
/// projection) next to `time_ids` micro-conditioning numbers ([`SDXL_TIME_IDS`] for the base
/// model, [`SDXL_REFINER_TIME_IDS`] for the refiner), each embedded sinusoidally.
pub fn sdxl_unet_config(
    w: &Weights,
    pooled_width: usize,
    time_ids: usize,
) -> Result<UNetConfig, WeightsError> {
    const WHAT: &str = "SDXL UNet config";
    let input = dim(w, WHAT, ADD_EMBEDDING, 1)?;
    let numbers = input.saturating_sub(pooled_width);
    if numbers == 0 || numbers % time_ids != 0 {
        return Err(undetectable(
            w,
            WHAT,
            format!(
                "add_embedding reads {input} values, which is not the {pooled_width}-wide \
                 pooled text plus {time_ids} equally wide numbers"
            ),
        ));
    }
    let mut fields = unet_fields(w)?;
    fields["addition_embed_type"] = json!("text_time");
    fields["addition_time_embed_dim"] = json!(numbers / time_ids);
    fields["projection_class_embeddings_input_dim"] = json!(input);
    build(w, WHAT, fields)
}

/// The `config.json` fields a UNet's shapes tell, with SD's assumptions for the rest.
fn unet_fields(w: &Weights) -> Result<serde_json::Value, WeightsError> {
    const WHAT: &str = "UNet config";
    let levels = count(w, "down_blocks.");
    let layers_per_block = count(w, "down_blocks.0.resnets.");
    if levels == 0 || layers_per_block == 0 {
        return Err(undetectable(w, WHAT, "no down_blocks.*.resnets.* tensors"));
    }
    let block_out_channels = (0..levels)
        .map(|i| {
            dim(
                w,
                WHAT,
                &format!("down_blocks.{i}.resnets.0.conv2.weight"),
                0,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let block_type = |blocks: &str, i: usize, with: &str, without: &str| {
        if has_prefix(w, &format!("{blocks}.{i}.attentions.")) {
            with.to_owned()
        } else {
            without.to_owned()
        }
    };
    let down_block_types: Vec<String> = (0..levels)
        .map(|i| block_type("down_blocks", i, "CrossAttnDownBlock2D", "DownBlock2D"))
        .collect();
    let up_block_types: Vec<String> = (0..count(w, "up_blocks."))
        .map(|i| block_type("up_blocks", i, "CrossAttnUpBlock2D", "UpBlock2D"))
        .collect();

    let attention = "mid_block.attentions.0";
    let cross_attention_dim = dim(
        w,
        WHAT,
        &format!("{attention}.transformer_blocks.0.attn2.to_k.weight"),
        1,
    )?;
    let proj_in_rank = w
        .shape(&format!("{attention}.proj_in.weight"))
        .map_or(0, |s| s.len());
    // Levels without attention do not use their entry, except the last, whose entry diffusers
    // gives the mid block.
    let mid_layers = count(w, &format!("{attention}.transformer_blocks."));
    let transformer_layers: Vec<usize> = (0..levels)
        .map(|i| {
            match count(
                w,
                &format!("down_blocks.{i}.attentions.0.transformer_blocks."),
            ) {
                0 if i + 1 == levels => mid_layers,
                0 => 1,
                n => n,
            }
        })
        .collect();
    let transformer_layers = if transformer_layers
        .iter()
        .all(|n| *n == transformer_layers[0])
    {
        json!(transformer_layers[0])
    } else {
        json!(transformer_layers)
    };
    let heads = if cross_attention_dim == 1024 || w.contains(ADD_EMBEDDING) {
        json!(block_out_channels
            .iter()
            .map(|c| c / 64)
            .collect::<Vec<_>>())
    } else {
        json!(8)
    };
    Ok(json!({
            "in_channels": dim(w, WHAT, "conv_in.weight", 1)?,
            "out_channels": dim(w, WHAT, "conv_out.weight", 0)?,
            "block_out_channels": block_out_channels,
            "down_block_types": down_block_types,
            "up_block_types": up_block_types,
            "layers_per_block": layers_per_block,
            "attention_head_dim": heads,
            "cross_attention_dim": cross_attention_dim,
            "use_linear_projection": proj_in_rank == 2,
            "transformer_layers_per_block": transformer_layers,
            "upcast_attention": cross_attention_dim == 1024,
    }))
}

/// A VAE config from diffusers-named VAE weights (32 groups and SD's 0.18215 scaling assumed).
pub fn vae_config(w: &Weights) -> Result<VaeConfig, WeightsError> {
    const WHAT: &str = "VAE config";
    let levels = count(w, "encoder.down_blocks.");
    if levels == 0 {
        return Err(undetectable(w, WHAT, "no encoder.down_blocks.* tensors"));
    }
    let block_out_channels = (0..levels)
        .map(|i| {
            dim(
                w,
                WHAT,
                &format!("encoder.down_blocks.{i}.resnets.0.conv2.weight"),
                0,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    build(
        w,
        WHAT,
        json!({
            "in_channels": dim(w, WHAT, "encoder.conv_in.weight", 1)?,
            "out_channels": dim(w, WHAT, "decoder.conv_out.weight", 0)?,
            "block_out_channels": block_out_channels,
            "layers_per_block": count(w, "encoder.down_blocks.0.resnets."),
            "latent_channels": dim(w, WHAT, "post_quant_conv.weight", 0)?,
        }),
    )
}

/// A CLIP text-model config from transformers-named weights. SD 2.x uses the penultimate layer
/// of OpenCLIP's 24, and diffusers' SD 2.x configs say 23 layers: the same is done here, so the
/// last layer's weights are left unused. SDXL's second encoder (with a `text_projection`) keeps
/// all its layers: the UNet reads its penultimate layer, but the pooled output comes from the
/// last.
pub fn text_encoder_config(
    w: &Weights,
    layout: TextEncoderLayout,
) -> Result<ClipTextConfig, WeightsError> {
    const WHAT: &str = "text encoder config";
    let token_embedding = "text_model.embeddings.token_embedding.weight";
    let hidden = dim(w, WHAT, token_embedding, 1)?;
    if hidden % 64 != 0 {
        return Err(undetectable(
            w,
            "text encoder's attention heads",
            format!(
                "its width {hidden} is not a multiple of the 64-channel heads of CLIP and \
                 OpenCLIP; pass the model's diffusers config folder"
            ),
        ));
    }
    let layers = count(w, "text_model.encoder.layers.");
    let projection = w.shape("text_projection.weight");
    let (layers, activation) = match layout {
        TextEncoderLayout::OpenAiClip => (layers, "quick_gelu"),
        TextEncoderLayout::OpenClip if projection.is_some() => (layers, "gelu"),
        TextEncoderLayout::OpenClip => (layers.saturating_sub(1), "gelu"),
    };
    let mut fields = json!({
            "vocab_size": dim(w, WHAT, token_embedding, 0)?,
            "hidden_size": hidden,
            "intermediate_size": dim(w, WHAT, "text_model.encoder.layers.0.mlp.fc1.weight", 0)?,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden / 64,
            "max_position_embeddings": dim(w, WHAT, "text_model.embeddings.position_embedding.weight", 0)?,
            "hidden_act": activation,
    });
    if let Some(projection) = projection {
        fields["projection_dim"] = json!(projection[0]);
    }
    build(w, WHAT, fields)
}
