//! CLIP's text transformer (transformers `CLIPTextModel`), the prompt encoder of Stable Diffusion.
//!
//! A GPT-like stack of pre-LayerNorm transformer layers with causal self-attention over the
//! token and learned position embeddings. SD 1.x uses OpenAI's ViT-L/14 text tower (QuickGELU),
//! SD 2.x OpenCLIP's ViT-H/14 (exact GELU); the weights use transformers' names under
//! `text_model.`. SDXL adds a second encoder, OpenCLIP's ViT-bigG/14 as transformers'
//! `CLIPTextModelWithProjection`: the same transformer, whose output at the end-of-text token
//! is projected into the pooled prompt embedding the SDXL UNet takes besides the sequence.

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use crate::config::{Activation, ClipTextConfig};
use crate::layers::{
    activation, linear, linear_no_bias, masked_scaled_dot_product_attention, Linear,
};

/// The `eos_token_id` of CLIP configs written before transformers corrected it to 49407. SD's
/// and SDXL's configs still carry it, and transformers keeps their pooling rule for it.
const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// What the text transformer computes for a batch of prompts.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// The input embeddings, then the output of each layer (`num_hidden_layers + 1` tensors of
    /// `[batch, seq, hidden]`), as transformers' `output_hidden_states`. Clip skip N takes entry
    /// `len - 1 - N` through [`ClipTextTransformer::final_layer_norm`].
    pub hidden_states: Vec<Tensor>,
    /// `final_layer_norm` of the last layer's output: the embeddings SD conditions on.
    pub last_hidden_state: Tensor,
}

impl ClipTextOutput {
    /// `last_hidden_state` at each sequence's end-of-text token, `[batch, hidden]`:
    /// transformers' `pooler_output`, the one vector that summarizes a whole prompt (causal
    /// attention lets only the last token see all the others). `eos_positions` has one
    /// position per sequence, from [`ClipTextTransformer::eos_positions`].
    pub fn pooled(&self, eos_positions: &[usize]) -> Result<Tensor> {
        let (batch, seq_len, _) = self.last_hidden_state.dims3()?;
        if eos_positions.len() != batch {
            bail!(
                "pooling needs one end-of-text position per prompt: got {} for a batch of {batch}",
                eos_positions.len()
            );
        }
        let rows = eos_positions
            .iter()
            .enumerate()
            .map(|(i, &position)| {
                if position >= seq_len {
                    bail!("end-of-text position {position} is past the {seq_len} tokens of prompt {i}");
                }
                self.last_hidden_state.get(i)?.get(position)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }
}

#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    max_position_embeddings: usize,
    eos_token_id: u32,
}

impl ClipTextTransformer {
    /// `vb` is at the root of a `text_encoder/model.safetensors`, where the weights live under
    /// `text_model.`.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let vb = vb.pp("text_model");
        let vb_embeddings = vb.pp("embeddings");
        let token_embedding = embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            vb_embeddings.pp("token_embedding"),
        )?;
        let position_embedding = embedding(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            vb_embeddings.pp("position_embedding"),
        )?;
        let vb_layers = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb_layers.pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            max_position_embeddings: cfg.max_position_embeddings,
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// The position of each sequence's end-of-text token in `input_ids` `[batch, seq]` (any
    /// integer dtype), where [`ClipTextOutput::pooled`] reads, by transformers' rule: with the
    /// legacy `eos_token_id` 2 the first position of the highest id (CLIP's end-of-text token,
    /// 49407, is the last of its vocabulary), otherwise the first position holding
    /// `eos_token_id`. Callers that encode embeddings rather than ids (textual inversion) pass
    /// the ids their embeddings stand for.
    pub fn eos_positions(&self, input_ids: &Tensor) -> Result<Vec<usize>> {
        let ids = input_ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        ids.iter()
            .enumerate()
            .map(|(i, row)| {
                let position = if self.eos_token_id == LEGACY_EOS_TOKEN_ID {
                    let highest = row.iter().max();
                    row.iter().position(|id| Some(id) == highest)
                } else {
                    row.iter()
                        .position(|&id| id == i64::from(self.eos_token_id))
                };
                position.ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "prompt {i} has no end-of-text token (id {}) to pool at",
                        self.eos_token_id
                    ))
                })
            })
            .collect()
    }

    /// Encodes `input_ids`, integer token ids `[batch, seq]` with `seq` at most
    /// `max_position_embeddings` (77).
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        self.forward_embeddings(&self.token_embedding.forward(input_ids)?, None)
    }

    /// Encodes token embeddings `[batch, seq, hidden]` (rows of [`Self::token_embedding`], or
    /// vectors of the caller's own such as textual-inversion embeddings). `attention_mask`
    /// `[batch, seq]` holds 1 for the tokens to attend to and 0 for those every token must
    /// ignore, as transformers' `attention_mask`.
    pub fn forward_embeddings(
        &self,
        token_embeddings: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<ClipTextOutput> {
        let (batch, seq_len, _) = token_embeddings.dims3()?;
        if seq_len > self.max_position_embeddings {
            bail!(
                "CLIP takes at most {} tokens per prompt, got {seq_len}",
                self.max_position_embeddings
            );
        }
        let positions = Tensor::arange(0u32, seq_len as u32, token_embeddings.device())?;
        let mut x =
            token_embeddings.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mut mask = causal_mask(seq_len, x.dtype(), x.device())?;
        if let Some(keep) = attention_mask {
            // [batch, 1 head, 1 query, seq keys]: -inf where a key is masked out.
            let ignored = keep
                .to_dtype(DType::F32)?
                .eq(0.0)?
                .where_cond(
                    &Tensor::full(f32::NEG_INFINITY, (batch, seq_len), x.device())?,
                    &Tensor::zeros((batch, seq_len), DType::F32, x.device())?,
                )?
                .to_dtype(x.dtype())?
                .reshape((batch, 1, 1, seq_len))?;
            mask = ignored.broadcast_add(&mask)?;
        }
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            let next = layer.forward(&x, &mask)?;
            hidden_states.push(x);
            x = next;
        }
        let last_hidden_state = self.final_layer_norm(&x)?;
        hidden_states.push(x);
        Ok(ClipTextOutput {
            hidden_states,
            last_hidden_state,
        })
    }

    /// The LayerNorm after the last layer; SD applies it to an earlier layer's output too when
    /// it skips the last CLIP layers.
    pub fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(x)
    }

    /// The `[vocab_size, hidden_size]` token embedding table.
    pub fn token_embedding(&self) -> &Tensor {
        self.token_embedding.embeddings()
    }
}

/// transformers' `CLIPTextModelWithProjection`: the text transformer and a bias-free linear map
/// of its pooled output. SDXL conditions on this projection (`text_embeds`) of its second
/// encoder, besides both encoders' token sequences.
#[derive(Debug, Clone)]
pub struct ClipTextModelWithProjection {
    text_model: ClipTextTransformer,
    text_projection: Linear,
}

impl ClipTextModelWithProjection {
    /// `vb` is at the root of a `text_encoder_2/model.safetensors`: the transformer under
    /// `text_model.`, the projection as `text_projection.weight` `[projection_dim, hidden]`.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            text_model: ClipTextTransformer::new(vb.clone(), cfg)?,
            text_projection: linear_no_bias(
                cfg.hidden_size,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?,
        })
    }

    /// The transformer, for its hidden states (SDXL takes the penultimate layer's) and for
    /// encoding embeddings.
    pub fn text_model(&self) -> &ClipTextTransformer {
        &self.text_model
    }

    /// `[batch, projection_dim]`: the projected pooled output, transformers' `text_embeds`.
    pub fn text_embeds(&self, output: &ClipTextOutput, eos_positions: &[usize]) -> Result<Tensor> {
        self.text_projection.forward(&output.pooled(eos_positions)?)
    }

    /// Encodes `input_ids` `[batch, seq]`: the transformer's output and its `text_embeds`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<(ClipTextOutput, Tensor)> {
        let output = self.text_model.forward(input_ids)?;
        let text_embeds = self.text_embeds(&output, &self.text_model.eos_positions(input_ids)?)?;
        Ok((output, text_embeds))
    }
}

/// `[seq, seq]`, added to the attention logits: a token sees only itself and earlier tokens.
fn causal_mask(seq_len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq_len, seq_len), device)?.to_dtype(dtype)
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            layer_norm1: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = self
            .self_attn
            .forward_add(&self.layer_norm1.forward(x)?, mask, x)?;
        self.mlp.forward_add(&self.layer_norm2.forward(&x)?, &x)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let num_heads = cfg.num_attention_heads;
        if num_heads == 0 || !hidden.is_multiple_of(num_heads) {
            bail!("CLIP hidden_size {hidden} does not split into {num_heads} attention heads");
        }
        Ok(Self {
            q_proj: linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: linear(hidden, hidden, vb.pp("v_proj"))?,
            out_proj: linear(hidden, hidden, vb.pp("out_proj"))?,
            num_heads,
            head_dim: hidden / num_heads,
        })
    }

    /// `attention(x) + residual`, the residual added by the output projection.
    fn forward_add(&self, x: &Tensor, mask: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (batch, seq_len, hidden) = x.dims3()?;
        // [batch, heads, seq, head_dim] views of the projections.
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, seq_len, self.num_heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(x)?)?;
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let attended = masked_scaled_dot_product_attention(&q, &k, &v, Some(mask), scale)?;
        let merged = attended
            .transpose(1, 2)?
            .reshape((batch, seq_len, hidden))?;
        self.out_proj.forward_add(&merged, residual)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2"))?,
            activation: cfg.hidden_act,
        })
    }

    /// `mlp(x) + residual`, the residual added by the second projection.
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let x = activation(&self.fc1.forward(x)?, self.activation)?;
        self.fc2.forward_add(&x, residual)
    }
}
