//! Network configurations, read from the `config.json` files diffusers and transformers write,
//! or inferred from a checkpoint's tensor shapes. Field names follow those files so that serde
//! reads them directly; defaults are the SD 1.x values diffusers uses when a field is absent.

use serde::Deserialize;

/// A config value that diffusers allows either once for all blocks or once per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    Same(T),
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    /// The value for block `index`; a list too short for the index is a config error the
    /// model constructor reports, so this returns `None` rather than guessing.
    pub fn get(&self, index: usize) -> Option<T> {
        match self {
            PerBlock::Same(v) => Some(*v),
            PerBlock::Each(vs) => vs.get(index).copied(),
        }
    }
}

/// `unet/config.json` of a diffusers `UNet2DConditionModel`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Despite its name, in SD 1.x configs this is the number of heads (a long-standing diffusers
    /// misnomer); `num_attention_heads`, when present, takes precedence.
    #[serde(default = "eight_per_block")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub cross_attention_dim: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "transformer_layers")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// `null` means no mid block, which no SD 1.x/2.x model has.
    #[serde(default = "cross_attn_mid_block")]
    pub mid_block_type: Option<String>,
    /// `"text_time"` in SDXL: the pooled text embedding and the size/crop micro-conditioning
    /// are added to the timestep embedding.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of the sinusoidal embedding of each SDXL micro-conditioning number.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of SDXL's `add_embedding`: pooled text width + numbers × their embedding width.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    // The conditioning extensions of class-conditional and LCM-distilled UNets. They are read
    // only so that the UNet can refuse them by name instead of silently ignoring weights it
    // does not use.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
}

/// `vae/config.json` of a diffusers `AutoencoderKL`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding and divided by it before decoding.
    #[serde(default = "sd1_scaling_factor")]
    pub scaling_factor: f64,
}

/// `text_encoder/config.json` of a transformers `CLIPTextModel`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "seventy_seven")]
    pub max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "norm_eps")]
    pub layer_norm_eps: f64,
    /// Output width of `text_projection`, which only `CLIPTextModelWithProjection` (SDXL's
    /// second encoder) has; plain `CLIPTextModel` configs carry the field unused.
    #[serde(default = "five_hundred_twelve")]
    pub projection_dim: usize,
    /// Decides where the pooled output is read (see `ClipTextTransformer::eos_positions`): the
    /// legacy value 2, which SD and SDXL configs still carry, means "the highest token id".
    #[serde(default = "clip_eos_token")]
    pub eos_token_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// OpenAI CLIP (SD 1.x): x·σ(1.702x).
    QuickGelu,
    /// OpenCLIP (SD 2.x): the exact erf GELU.
    Gelu,
}

fn one() -> usize {
    1
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
fn thirty_two() -> usize {
    32
}
fn seventy_seven() -> usize {
    77
}
fn five_hundred_twelve() -> usize {
    512
}
fn clip_eos_token() -> u32 {
    49407
}
fn yes() -> bool {
    true
}
fn norm_eps() -> f64 {
    1e-5
}
fn sd1_scaling_factor() -> f64 {
    0.18215
}
fn eight_per_block() -> PerBlock<usize> {
    PerBlock::Same(8)
}
fn cross_attn_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".to_string())
}
fn transformer_layers() -> PerBlock<usize> {
    PerBlock::Same(1)
}
fn quick_gelu() -> Activation {
    Activation::QuickGelu
}
