//! The UNet's spatial transformer: latent pixels become tokens that attend to each other and to
//! the text embedding (Rombach et al. 2022, §3.3), as diffusers' `Transformer2DModel` with
//! `BasicTransformerBlock`s.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};

use crate::layers::{
    conv2d, geglu, group_norm, linear, linear_no_bias, scaled_dot_product_attention, Conv2d,
    ConvConfig, GroupNorm, Linear,
};

/// LayerNorm epsilon of the transformer blocks (diffusers' `norm_eps` default, which SD keeps).
const LAYER_NORM_EPS: f64 = 1e-5;
/// GroupNorm epsilon in front of the transformer, fixed in diffusers rather than configurable.
const GROUP_NORM_EPS: f64 = 1e-6;
/// Hidden width of the feed-forward network relative to the model width.
const FF_MULT: usize = 4;

/// Multi-head attention with bias-free q/k/v projections. Without a context it is
/// self-attention; with one, the keys and values come from the context (cross-attention).
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    /// diffusers' `upcast_attention` (SD 2.1): the attention runs in float32 in a half-precision
    /// network, whose query-key products would overflow (NaN images).
    upcast: bool,
}

impl Attention {
    /// `context_dim` is the width of the context tokens (`None`: the same as `query_dim`).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        upcast: bool,
    ) -> Result<Self> {
        let inner_dim = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner_dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner_dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner_dim, vb.pp("to_v"))?,
            // `to_out.1` is a dropout, a no-op at inference.
            to_out: linear(inner_dim, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (dim_head as f64).sqrt(),
            upcast,
        })
    }

    /// `xs` is `[batch, tokens, query_dim]`, `context` `[batch, context_tokens, context_dim]`.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        self.to_out.forward(&self.attend(xs, context)?)
    }

    /// `self.forward(xs, context) + residual`, with the addition fused into `to_out`.
    pub fn forward_add(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.to_out
            .forward_add(&self.attend(xs, context)?, residual)
    }

    /// The attended values of all heads, merged back to `[batch, tokens, heads·dim_head]`.
    fn attend(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let dtype = q.dtype();
        let attended = if self.upcast && dtype != DType::F32 {
            let [q, k, v] = [q, k, v].map(|t| t.to_dtype(DType::F32));
            scaled_dot_product_attention(&q?, &k?, &v?, self.scale)?.to_dtype(dtype)?
        } else {
            scaled_dot_product_attention(&q, &k, &v, self.scale)?
        };
        let (batch, _, tokens, _) = attended.dims4()?;
        attended.transpose(1, 2)?.reshape((batch, tokens, ()))
    }

    /// `[batch, tokens, heads·dim_head]` → `[batch, heads, tokens, dim_head]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = xs.dims3()?;
        xs.reshape((batch, tokens, self.heads, ()))?.transpose(1, 2)
    }
}

/// The gated-GELU feed-forward network (Shazeer 2020): `proj` yields a value half and a gate
/// half, the value is multiplied by the exact (erf) GELU of the gate, then projected back.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner_dim = dim * FF_MULT;
        Ok(Self {
            // `net.1` is a dropout.
            proj: linear(dim, inner_dim * 2, vb.pp("net.0.proj"))?,
            out: linear(inner_dim, dim, vb.pp("net.2"))?,
        })
    }
}

impl FeedForward {
    /// `self.forward(xs) + residual`, with the addition fused into the output projection.
    pub fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.out
            .forward_add(&geglu(&self.proj.forward(xs)?)?, residual)
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.out.forward(&geglu(&self.proj.forward(xs)?)?)
    }
}

/// Pre-norm transformer block: self-attention, cross-attention to the context, feed-forward,
/// each added back onto its input.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
        upcast_attention: bool,
    ) -> Result<Self> {
        let attention = |name, context_dim| {
            Attention::new(
                vb.pp(name),
                dim,
                context_dim,
                heads,
                dim_head,
                upcast_attention,
            )
        };
        Ok(Self {
            norm1: layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm1"))?,
            attn1: attention("attn1", None)?,
            norm2: layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm2"))?,
            attn2: attention("attn2", Some(context_dim))?,
            norm3: layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `xs` is `[batch, tokens, dim]`, `context` `[batch, context_tokens, context_dim]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.attn1.forward_add(&self.norm1.forward(xs)?, None, xs)?;
        let xs = self
            .attn2
            .forward_add(&self.norm2.forward(&xs)?, Some(context), &xs)?;
        self.ff.forward_add(&self.norm3.forward(&xs)?, &xs)
    }
}

/// How the transformer maps between the channels of the feature map and its token width: SD 1.x
/// uses 1×1 convolutions, SD 2.x linear layers (`use_linear_projection`). The two are the same
/// map; only the stored weight shapes and the order relative to the reshape differ.
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, use_linear: bool) -> Result<Self> {
        Ok(if use_linear {
            Projection::Linear(linear(in_dim, out_dim, vb)?)
        } else {
            // Padding 0, so the convolution's padding mode (seamless tiling) never matters here.
            Projection::Conv(conv2d(in_dim, out_dim, 1, ConvConfig::default(), vb)?)
        })
    }
}

/// Configuration of one [`Transformer2DModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub num_layers: usize,
    pub context_dim: usize,
    pub norm_num_groups: usize,
    pub use_linear_projection: bool,
    /// SD 2.1's `upcast_attention` (see [`Attention`]).
    pub upcast_attention: bool,
}

/// GroupNorm, projection to tokens, transformer blocks, projection back, plus the input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, cfg: &Transformer2DConfig) -> Result<Self> {
        let inner_dim = cfg.heads * cfg.dim_head;
        let linear = cfg.use_linear_projection;
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    inner_dim,
                    cfg.heads,
                    cfg.dim_head,
                    cfg.context_dim,
                    cfg.upcast_attention,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: group_norm(
                cfg.norm_num_groups,
                cfg.channels,
                GROUP_NORM_EPS,
                vb.pp("norm"),
            )?,
            proj_in: Projection::new(vb.pp("proj_in"), cfg.channels, inner_dim, linear)?,
            transformer_blocks,
            proj_out: Projection::new(vb.pp("proj_out"), inner_dim, cfg.channels, linear)?,
        })
    }

    /// `xs` is `[batch, channels, height, width]`, `context` `[batch, context_tokens, context_dim]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, _, height, width) = xs.dims4()?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let channels = t.dim(1)?;
            t.permute((0, 2, 3, 1))?
                .reshape((batch, height * width, channels))
        };
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let channels = t.dim(2)?;
            t.reshape((batch, height, width, channels))?
                .permute((0, 3, 1, 2))
        };

        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context)?;
        }
        match &self.proj_out {
            Projection::Conv(conv) => conv.forward_add(&to_map(&tokens)?, xs),
            Projection::Linear(lin) => to_map(&lin.forward(&tokens)?)? + xs,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;

    /// One head of width 4 whose query and key projections scale by 300: two equal tokens give
    /// a query-key product of 4·300² = 360 000, beyond float16's 65 504, and a logit of 180 000
    /// after the 1/√4 scale.
    fn overflowing_attention(dtype: DType, upcast: bool) -> Attention {
        let eye = Tensor::eye(4, DType::F32, &Device::Cpu).unwrap();
        let big = (&eye * 300.0).unwrap();
        let tensors = HashMap::from([
            ("to_q.weight".to_string(), big.clone()),
            ("to_k.weight".to_string(), big),
            ("to_v.weight".to_string(), eye.clone()),
            ("to_out.0.weight".to_string(), eye),
            (
                "to_out.0.bias".to_string(),
                Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, dtype, &Device::Cpu);
        Attention::new(vb, 4, None, 1, 4, upcast).unwrap()
    }

    #[test]
    fn upcast_attention_keeps_float16_logits_from_overflowing() {
        // Tokens (1,1,1,1) and (1,1,1,0.5): softmax over logits 180 000 and 157 500 is (1, 0),
        // so both attend to the first token's value.
        let xs = Tensor::new(&[[[1f32, 1., 1., 1.], [1., 1., 1., 0.5]]], &Device::Cpu).unwrap();
        let run = |upcast| {
            let half = xs.to_dtype(DType::F16).unwrap();
            overflowing_attention(DType::F16, upcast)
                .forward(&half, None)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap()
        };
        let expected = vec![vec![vec![1f32, 1., 1., 1.]; 2]];
        assert_eq!(run(true), expected);
        // Without upcasting, float16 turns the logits into infinities and the softmax into NaN.
        assert!(run(false)[0].iter().flatten().any(|v| v.is_nan()));
        // In float32 the flag changes nothing.
        let full = overflowing_attention(DType::F32, true)
            .forward(&xs, None)
            .unwrap();
        let plain = overflowing_attention(DType::F32, false)
            .forward(&xs, None)
            .unwrap();
        assert_eq!(
            full.to_vec3::<f32>().unwrap(),
            plain.to_vec3::<f32>().unwrap()
        );
    }
}
