//! CLIP's text transformer (transformers `CLIPTextModel`), the prompt encoder of Stable Diffusion.
//!
//! A GPT-like stack of pre-LayerNorm transformer layers with causal self-attention over the
//! token and learned position embeddings. SD 1.x uses OpenAI's ViT-L/14 text tower (QuickGELU),
//! SD 2.x OpenCLIP's ViT-H/14 (exact GELU); the weights use transformers' names under
//! `text_model.`.

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use crate::config::{Activation, ClipTextConfig};
use crate::layers::{linear, Linear};

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

#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    max_position_embeddings: usize,
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
        })
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
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, seq_len, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q_proj.forward(x)?)?;
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let logits = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let attended = candle_nn::ops::softmax_last_dim(&logits)?.matmul(&v)?;
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
        let x = self.fc1.forward(x)?;
        let x = match self.activation {
            Activation::QuickGelu => (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?,
            Activation::Gelu => x.gelu_erf()?,
        };
        self.fc2.forward_add(&x, residual)
    }
}
