//! Building blocks shared by the UNet and the VAE.
//!
//! Every convolution of both networks is a [`Conv2d`] from here rather than candle's, because
//! seamless (tileable) generation needs to switch the padding of all of them to wrap-around;
//! every attention calls [`scaled_dot_product_attention`], and the GroupNorms, fully connected
//! layers and gated GELUs of both are the ones here. On the CPU in f32 they run Dream's fused
//! kernels ([`crate::kernels`]); elsewhere they are candle's operations.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{bail, Result, Tensor, D};
use candle_nn::{Module, VarBuilder};

use crate::config::Activation;
use crate::kernels;

/// How a convolution fills the border it pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingMode {
    /// Zeros, as PyTorch's default `padding_mode="zeros"`.
    #[default]
    Zeros,
    /// Wrap-around along the axes that are `true` (`x` = width, `y` = height), zeros along the
    /// others: an image made with it tiles seamlessly along those axes.
    Circular { x: bool, y: bool },
}

impl PaddingMode {
    fn to_bits(self) -> u8 {
        match self {
            PaddingMode::Zeros => 0,
            PaddingMode::Circular { x, y } => 1 | u8::from(x) << 1 | u8::from(y) << 2,
        }
    }

    fn from_bits(bits: u8) -> Self {
        match bits {
            0 => PaddingMode::Zeros,
            _ => PaddingMode::Circular {
                x: bits & 2 != 0,
                y: bits & 4 != 0,
            },
        }
    }
}

/// A padding mode switched through a shared reference, so that one loaded model renders
/// seamless and ordinary images in turn. Generations running at once on one model must agree
/// on it.
#[derive(Debug, Default)]
struct SharedPaddingMode(AtomicU8);

impl SharedPaddingMode {
    fn get(&self) -> PaddingMode {
        PaddingMode::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, mode: PaddingMode) {
        self.0.store(mode.to_bits(), Ordering::Relaxed);
    }
}

impl Clone for SharedPaddingMode {
    fn clone(&self) -> Self {
        SharedPaddingMode(AtomicU8::new(self.0.load(Ordering::Relaxed)))
    }
}

/// Stride and symmetric padding of a square-kernel convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig {
    pub stride: usize,
    pub padding: usize,
}

impl Default for ConvConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
        }
    }
}

/// A 2-D convolution with bias, like `torch.nn.Conv2d`, whose padding mode can be changed after
/// loading.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    config: ConvConfig,
    padding_mode: SharedPaddingMode,
}

/// Reads `weight` `[out, in, kernel, kernel]` and `bias` `[out]` from `vb`.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: ConvConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let bias = vb.get(out_channels, "bias")?;
    let conv = conv2d_no_bias(in_channels, out_channels, kernel_size, config, vb)?;
    Ok(Conv2d { bias, ..conv })
}

/// Reads `weight` only, for convolutions made with `bias=False` (their bias is zero).
pub fn conv2d_no_bias(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: ConvConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get(
        (out_channels, in_channels, kernel_size, kernel_size),
        "weight",
    )?;
    let bias = Tensor::zeros(out_channels, weight.dtype(), weight.device())?;
    Ok(Conv2d {
        weight,
        bias,
        config,
        padding_mode: SharedPaddingMode::default(),
    })
}

impl Conv2d {
    pub fn set_padding_mode(&self, mode: PaddingMode) {
        self.padding_mode.set(mode);
    }

    /// `self(x) + addend`, where `addend` is `[B, C_out, H_out, W_out]` (a residual) or
    /// `[B, C_out, 1, 1]` (a per-channel offset such as the resnets' time embedding). The fused
    /// kernel starts its accumulation from the addend instead of adding it in another pass.
    pub fn forward_add(&self, x: &Tensor, addend: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, Some(addend))
    }

    fn forward_impl(&self, x: &Tensor, addend: Option<&Tensor>) -> Result<Tensor> {
        let ConvConfig { stride, padding } = self.config;
        let (x, padding) = match self.padding_mode.get() {
            PaddingMode::Zeros => (x.clone(), padding),
            PaddingMode::Circular {
                x: wrap_x,
                y: wrap_y,
            } => {
                let x = pad(x, D::Minus1, padding, wrap_x)?;
                (pad(&x, D::Minus2, padding, wrap_y)?, 0)
            }
        };
        if kernels::supported(&[&x, &self.weight, &self.bias]) {
            return kernels::conv2d(&x, &self.weight, &self.bias, addend, stride, padding);
        }
        let y = x
            .conv2d(&self.weight, padding, stride, 1, 1)?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        match addend {
            Some(addend) => y.broadcast_add(addend),
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, None)
    }
}

/// Pads `x` by `amount` on both sides of `dim`, wrapping around when `wrap`, else with zeros.
fn pad(x: &Tensor, dim: D, amount: usize, wrap: bool) -> Result<Tensor> {
    if amount == 0 {
        return Ok(x.clone());
    }
    if !wrap {
        return x.pad_with_zeros(dim, amount, amount);
    }
    let size = x.dim(dim)?;
    if amount > size {
        bail!("circular padding of {amount} is larger than the dimension it wraps ({size})");
    }
    let before = x.narrow(dim, size - amount, amount)?;
    let after = x.narrow(dim, 0, amount)?;
    Tensor::cat(&[&before, x, &after], dim)
}

/// `softmax(q·kᵀ·scale)·v` over the last two dimensions: `q` is `[..., seq_q, d]`, `k` is
/// `[..., seq_k, d]`, `v` is `[..., seq_k, d_v]`, with equal leading (batch, head) dimensions
/// (`[batch, seq, d]` or `[batch, heads, seq, d]`). Strided views are read in place.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    masked_scaled_dot_product_attention(q, k, v, None, scale)
}

/// [`scaled_dot_product_attention`] with `mask` added to the scaled logits: a tensor that
/// broadcasts to `[..., seq_q, seq_k]`, `-∞` where a query must not see a key.
pub fn masked_scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if kernels::supported(&[q, k, v]) && mask.is_none_or(|m| kernels::supported(&[m])) {
        return kernels::attention(q, k, v, mask, scale);
    }
    let logits = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * scale)?;
    let logits = match mask {
        Some(mask) => logits.broadcast_add(mask)?,
        None => logits,
    };
    candle_nn::ops::softmax_last_dim(&logits)?.matmul(&v.contiguous()?)
}

/// A fully connected layer `x·Wᵀ + b` over the last dimension, like `torch.nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out_features, in_features]`; for the fused kernels a transposed view of
    /// `[in_features, out_features]` memory, the layout their matrix product reads fastest.
    weight: Tensor,
    bias: Option<Tensor>,
}

/// Reads `weight` `[out, in]` and `bias` `[out]` from `vb`.
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        bias: Some(vb.get(out_features, "bias")?),
        ..linear_no_bias(in_features, out_features, vb)?
    })
}

/// Reads `weight` `[out, in]` from `vb`; the layer has no bias.
pub fn linear_no_bias(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_features, in_features), "weight")?;
    let weight = if kernels::supported(&[&weight]) {
        kernels::in_major(&weight)?
    } else {
        weight
    };
    Ok(Linear { weight, bias: None })
}

impl Linear {
    /// `self(x) + residual`, the residual added as the output is accumulated.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, Some(residual))
    }

    fn forward_impl(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let mut tensors = vec![x, &self.weight];
        tensors.extend(self.bias.as_ref());
        tensors.extend(residual);
        if kernels::supported(&tensors) {
            return kernels::linear(x, &self.weight, self.bias.as_ref(), residual);
        }
        let y = candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)?;
        match residual {
            Some(residual) => y + residual,
            None => Ok(y),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, None)
    }
}

/// The gated GELU of Shazeer (2020): the last dimension splits into a value half and a gate
/// half, and the result is `value·gelu(gate)` with the exact (erf) GELU.
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    if kernels::supported(&[projected]) {
        return kernels::geglu(projected);
    }
    let half = projected.dim(D::Minus1)? / 2;
    let value = projected.narrow(D::Minus1, 0, half)?;
    let gate = projected.narrow(D::Minus1, half, half)?;
    value * gate.gelu_erf()?
}

/// `activation(x)` element-wise: the hidden layer of a feed-forward network.
pub fn activation(x: &Tensor, activation: Activation) -> Result<Tensor> {
    if kernels::supported(&[x]) {
        return kernels::activation(x, activation);
    }
    match activation {
        Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        Activation::Gelu => x.gelu_erf(),
    }
}

/// Nearest-neighbour resize of `[B, C, H, W]` to `height × width`, like
/// `torch.nn.functional.interpolate(mode="nearest")`.
pub fn upsample_nearest(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    if kernels::supported(&[x]) {
        return kernels::upsample_nearest(x, height, width);
    }
    x.upsample_nearest2d(height, width)
}

/// GroupNorm with a learned per-channel affine map, like `torch.nn.GroupNorm`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Reads `weight` and `bias` `[channels]` from `vb`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        bail!("GroupNorm: {groups} groups do not divide {channels} channels");
    }
    Ok(GroupNorm {
        weight: vb.get(channels, "weight")?,
        bias: vb.get(channels, "bias")?,
        groups,
        eps,
    })
}

impl GroupNorm {
    /// `silu(self(x))`, the pre-activation of every resnet convolution, in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, true)
    }

    fn forward_impl(&self, x: &Tensor, with_silu: bool) -> Result<Tensor> {
        if kernels::supported(&[x, &self.weight, &self.bias]) {
            return kernels::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps,
                with_silu,
            );
        }
        let channels = self.weight.dim(0)?;
        let norm = candle_nn::GroupNorm::new(
            self.weight.clone(),
            self.bias.clone(),
            channels,
            self.groups,
            self.eps,
        )?;
        let y = norm.forward(x)?;
        if with_silu {
            y.silu()
        } else {
            Ok(y)
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn conv(kernel: Tensor, padding: usize, mode: PaddingMode) -> Result<Conv2d> {
        let dev = Device::Cpu;
        let k = kernel.dim(0)?;
        let weight = kernel.reshape((1, 1, k, k))?;
        let bias = Tensor::new(&[0.5f32], &dev)?;
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]),
            DType::F32,
            &dev,
        );
        let conv = conv2d(1, 1, k, ConvConfig { stride: 1, padding }, vb)?;
        conv.set_padding_mode(mode);
        Ok(conv)
    }

    /// One input and one output channel, kernel [[1,2,3],[4,5,6],[7,8,9]], bias 0.5.
    fn conv_3x3(mode: PaddingMode) -> Result<Conv2d> {
        conv(
            Tensor::arange(1f32, 10., &Device::Cpu)?.reshape((3, 3))?,
            1,
            mode,
        )
    }

    /// The 2×3 image [[1,2,3],[4,5,6]]. Worked by hand for output pixel (0,0), whose 3×3
    /// window centred on it reads rows (-1,0,1) and columns (-1,0,1):
    /// - wrapping both axes, row -1 is row 1 and column -1 is column 2:
    ///   [[6,4,5],[3,1,2],[6,4,5]]·k = 6+8+15+12+5+12+42+32+45 = 177;
    /// - wrapping x only, row -1 is zeros: [[0,0,0],[3,1,2],[6,4,5]]·k = 12+5+12+42+32+45 = 148;
    /// - zeros: [[0,0,0],[0,1,2],[0,4,5]]·k = 5+12+32+45 = 94.
    #[test]
    fn conv_padding_modes_match_hand_computation() -> Result<()> {
        let image =
            Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?.reshape((1, 1, 2, 3))?;
        let corner = |mode| -> Result<f32> {
            let y = conv_3x3(mode)?.forward(&image)?;
            assert_eq!(y.dims(), &[1, 1, 2, 3]);
            y.flatten_all()?.get(0)?.to_scalar::<f32>()
        };
        assert_eq!(corner(PaddingMode::Circular { x: true, y: true })?, 177.5);
        assert_eq!(corner(PaddingMode::Circular { x: true, y: false })?, 148.5);
        assert_eq!(corner(PaddingMode::Zeros)?, 94.5);
        assert_eq!(corner(PaddingMode::Circular { x: false, y: false })?, 94.5);
        Ok(())
    }

    /// A fully wrapped convolution commutes with rolling the image: shifting the input by one
    /// column shifts the output by one column, including across the border.
    #[test]
    fn circular_conv_is_shift_equivariant() -> Result<()> {
        let image = Tensor::randn(0f32, 1., (1, 1, 4, 5), &Device::Cpu)?;
        let roll = |t: &Tensor| -> Result<Tensor> {
            Tensor::cat(&[&t.narrow(3, 4, 1)?, &t.narrow(3, 0, 4)?], 3)
        };
        let conv = conv_3x3(PaddingMode::Circular { x: true, y: true })?;
        let a = conv.forward(&roll(&image)?)?;
        let b = roll(&conv.forward(&image)?)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");
        Ok(())
    }

    #[test]
    fn circular_padding_wider_than_image_is_an_error() -> Result<()> {
        let kernel = Tensor::ones((1, 1), DType::F32, &Device::Cpu)?;
        let conv = conv(kernel, 2, PaddingMode::Circular { x: true, y: false })?;
        let image = Tensor::zeros((1, 1, 3, 1), DType::F32, &Device::Cpu)?;
        let err = conv.forward(&image).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("circular padding of 2"), "{err}");
        Ok(())
    }

    /// Against the textbook formula, written out element by element on odd sizes.
    #[test]
    fn attention_matches_naive_formula() -> Result<()> {
        let dev = Device::Cpu;
        let (batch, seq_q, seq_k, d, d_v) = (3, 5, 7, 3, 2);
        let q = Tensor::randn(0f32, 1., (batch, seq_q, d), &dev)?;
        let k = Tensor::randn(0f32, 1., (batch, seq_k, d), &dev)?;
        let v = Tensor::randn(0f32, 1., (batch, seq_k, d_v), &dev)?;
        let scale = 0.7;
        let out = scaled_dot_product_attention(&q, &k, &v, scale)?.to_vec3::<f32>()?;
        let (q, k, v) = (
            q.to_vec3::<f32>()?,
            k.to_vec3::<f32>()?,
            v.to_vec3::<f32>()?,
        );
        let mut max_diff = 0f32;
        for b in 0..batch {
            for i in 0..seq_q {
                let logits: Vec<f32> = (0..seq_k)
                    .map(|j| (0..d).map(|c| q[b][i][c] * k[b][j][c]).sum::<f32>() * scale as f32)
                    .collect();
                let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                for c in 0..d_v {
                    let expected: f32 = (0..seq_k).map(|j| weights[j] / total * v[b][j][c]).sum();
                    max_diff = max_diff.max((out[b][i][c] - expected).abs());
                }
            }
        }
        assert!(max_diff < 1e-5, "max abs diff {max_diff}");
        Ok(())
    }

    /// The fused kernel (f32) and candle's operations (f64) agree on a causal mask broadcast
    /// over batch and heads, as CLIP's.
    #[test]
    fn masked_attention_kernel_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let (batch, heads, seq, d) = (2, 3, 9, 5);
        let q = Tensor::randn(0f32, 1., (batch, heads, seq, d), &dev)?;
        let k = Tensor::randn(0f32, 1., (batch, heads, seq, d), &dev)?;
        let v = Tensor::randn(0f32, 1., (batch, heads, seq, d), &dev)?;
        let causal: Vec<f32> = (0..seq * seq)
            .map(|e| {
                if e % seq > e / seq {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(causal, (seq, seq), &dev)?;
        let fused = masked_scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.4)?;
        let f64s = |t: &Tensor| t.to_dtype(DType::F64);
        let plain = masked_scaled_dot_product_attention(
            &f64s(&q)?,
            &f64s(&k)?,
            &f64s(&v)?,
            Some(&f64s(&mask)?),
            0.4,
        )?;
        let diff = (fused.to_dtype(DType::F64)? - plain)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");
        Ok(())
    }

    /// Attending to no keys gives zeros (an empty weighted sum), not a panic.
    #[test]
    fn attention_over_no_keys_is_zero() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let k = Tensor::zeros((2, 0, 4), DType::F32, &dev)?;
        let v = Tensor::zeros((2, 0, 5), DType::F32, &dev)?;
        let out = scaled_dot_product_attention(&q, &k, &v, 0.5)?;
        assert_eq!(out.dims(), &[2, 3, 5]);
        assert_eq!(out.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    /// Four-dimensional `[batch, heads, seq, d]` inputs, as non-contiguous views, give the same
    /// result as the flattened `[batch·heads, seq, d]` form.
    #[test]
    fn attention_accepts_head_dimension_and_strided_views() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 5, 3, 4), &dev)?.transpose(1, 2)?;
        let k = Tensor::randn(0f32, 1., (2, 7, 3, 4), &dev)?.transpose(1, 2)?;
        let v = Tensor::randn(0f32, 1., (2, 7, 3, 4), &dev)?.transpose(1, 2)?;
        let four = scaled_dot_product_attention(&q, &k, &v, 0.5)?.reshape((6, 5, 4))?;
        let flat = |t: &Tensor| t.contiguous()?.reshape((6, (), 4));
        let three = scaled_dot_product_attention(&flat(&q)?, &flat(&k)?, &flat(&v)?, 0.5)?;
        let diff = (four - three)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "max abs diff {diff}");
        Ok(())
    }
}
