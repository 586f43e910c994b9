//! Fused CPU kernels for the operations that dominate SD's running time in f32: convolution,
//! attention, fully connected layers and normalisation. Each works on plain slices (and is tested there against
//! the textbook definition); the functions here adapt them to candle tensors. Other devices and
//! dtypes keep candle's own operations, chosen by the callers in `layers`.

pub mod attention;
pub mod conv;
pub mod linear;
mod math;
pub mod norm;
pub mod winograd;

use candle_core::{bail, DType, Device, Result, Storage, Tensor};

/// Whether the fused kernels can run on all of `tensors`: f32 on the CPU.
pub fn supported(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Runs `f` on the data of a CPU f32 tensor, made contiguous first if it is a strided view.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused CPU kernel called on a {:?} tensor", t.device());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused CPU kernel: tensor is not contiguous after `contiguous()`");
    };
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}

/// The data of a CPU f32 tensor as an owned, contiguous vector.
fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    with_data(t, |data| data.to_vec())
}

fn from_vec(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)
}

/// `conv2d(x, weight) + bias + addend` for `x` `[B, C_in, H, W]`, `weight`
/// `[C_out, C_in, k, k]`, `bias` `[C_out]`, and `addend` `[B, C_out, H_out, W_out]` or
/// `[B, C_out, 1, 1]`, with zero padding.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    addend: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (batch, c_in, height, width) = x.dims4()?;
    let (c_out, w_in, kernel, kernel_w) = weight.dims4()?;
    if w_in != c_in || kernel != kernel_w || stride == 0 {
        bail!(
            "conv2d: input {:?} does not fit weight {:?} with stride {stride}",
            x.dims(),
            weight.dims()
        );
    }
    if height + 2 * padding < kernel || width + 2 * padding < kernel {
        bail!("conv2d: input {:?} is smaller than the kernel", x.dims());
    }
    let geometry = conv::ConvGeometry {
        batch,
        c_in,
        height,
        width,
        c_out,
        kernel,
        stride,
        padding,
    };
    let out_dims = [batch, c_out, geometry.out_height(), geometry.out_width()];
    let plane = out_dims[2] * out_dims[3];
    // The accumulation starts from bias + addend, one value per output plane or per element.
    let bias = to_vec(bias)?;
    let mut out = match addend {
        Some(addend) if addend.dims() == out_dims => {
            let mut out = to_vec(addend)?;
            for (channel, b) in out.chunks_exact_mut(plane).zip(bias.iter().cycle()) {
                channel.iter_mut().for_each(|v| *v += b);
            }
            out
        }
        Some(addend) if addend.dims() == [batch, c_out, 1, 1] => {
            let offsets = to_vec(addend)?;
            let mut out = Vec::with_capacity(batch * c_out * plane);
            for (offset, b) in offsets.iter().zip(bias.iter().cycle()) {
                out.extend(std::iter::repeat_n(offset + b, plane));
            }
            out
        }
        Some(addend) => bail!(
            "conv2d: cannot add a {:?} tensor to the output {out_dims:?}",
            addend.dims()
        ),
        None => {
            let mut out = Vec::with_capacity(batch * c_out * plane);
            for &b in bias.iter().cycle().take(batch * c_out) {
                out.extend(std::iter::repeat_n(b, plane));
            }
            out
        }
    };
    let [_, _, sh, sw] = *x.stride() else {
        bail!("conv2d: input is not four-dimensional");
    };
    if kernel == 1 && stride == 1 && padding == 0 && sh == width * sw {
        // A matrix product that reads any layout whose pixels are evenly spaced, such as the
        // channels-last tokens of a transformer, in place.
        with_strided(x, |x, s| {
            with_data(weight, |w| {
                conv::pointwise_accumulate(x, [s[0], s[1], sw], w, &geometry, &mut out)
            })
        })??;
    } else {
        with_data(x, |x| {
            with_data(weight, |w| {
                conv::conv2d_accumulate(x, w, &geometry, &mut out)
            })
        })??;
    }
    from_vec(out, &out_dims)
}

/// `softmax(q·kᵀ·scale)·v` for `[batch, seq, d]` or `[batch, heads, seq, d]` tensors whose last
/// dimension is contiguous (others are made so). The result has the shape of `q` (with `v`'s
/// width) and is a transposed view of `[batch, seq_q, heads, d_v]` memory.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let four = |t: &Tensor| -> Result<Tensor> {
        match t.rank() {
            3 => t.unsqueeze(1),
            4 => Ok(t.clone()),
            r => bail!("attention: expected 3 or 4 dimensions, got {r}"),
        }
    };
    let (q4, k4, v4) = (four(q)?, four(k)?, four(v)?);
    let (batch, heads, q_len, head_dim) = q4.dims4()?;
    let (kb, kh, kv_len, k_dim) = k4.dims4()?;
    let (vb, vh, v_len, v_dim) = v4.dims4()?;
    if (kb, kh, k_dim) != (batch, heads, head_dim) || (vb, vh, v_len) != (batch, heads, kv_len) {
        bail!(
            "attention: shapes q {:?}, k {:?}, v {:?} do not match",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let geometry = attention::AttentionGeometry {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim,
        v_dim,
    };
    let mut out = vec![0f32; batch * q_len * heads * v_dim];
    // With no keys the weighted sum is empty: zeros, as candle's and PyTorch's attention give.
    if kv_len > 0 {
        with_view(&q4, |q| {
            with_view(&k4, |k| {
                with_view(&v4, |v| {
                    attention::attention(q, k, v, &geometry, scale as f32, &mut out)
                })
            })
        })???;
    }
    let out = from_vec(out, &[batch, q_len, heads, v_dim])?.transpose(1, 2)?;
    if q.rank() == 3 {
        out.squeeze(1)
    } else {
        Ok(out)
    }
}

/// Runs `f` on a `[batch, heads, tokens, channels]` view of a CPU f32 tensor, copying it first
/// only if its channels are not contiguous.
fn with_view<R>(t: &Tensor, f: impl FnOnce(attention::View) -> R) -> Result<R> {
    let t = if t.stride()[3] == 1 || t.dim(3)? == 1 {
        t.clone()
    } else {
        t.contiguous()?
    };
    with_strided(&t, |data, s| {
        f(attention::View {
            data,
            strides: [s[0], s[1], s[2]],
        })
    })
}

/// Runs `f` on the data of a CPU f32 tensor from its first element on, with its strides.
fn with_strided<R>(t: &Tensor, f: impl FnOnce(&[f32], &[usize]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused CPU kernel called on a {:?} tensor", t.device());
    };
    Ok(f(
        &cpu.as_slice::<f32>()?[layout.start_offset()..],
        layout.stride(),
    ))
}

/// GroupNorm of `x` `[B, C, ...]` with `groups` groups and affine `weight`, `bias` `[C]`,
/// followed by SiLU when `with_silu`.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    with_silu: bool,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 || weight.dims() != [dims[1]] || bias.dims() != [dims[1]] {
        bail!(
            "group norm: input {dims:?} does not fit weight {:?} and bias {:?}",
            weight.dims(),
            bias.dims()
        );
    }
    if groups == 0 || !dims[1].is_multiple_of(groups) {
        bail!(
            "group norm: {groups} groups do not divide {} channels",
            dims[1]
        );
    }
    let geometry = norm::GroupNormGeometry {
        batch: dims[0],
        channels: dims[1],
        spatial: dims[2..].iter().product(),
        groups,
    };
    let (gamma, beta) = (to_vec(weight)?, to_vec(bias)?);
    let mut out = vec![0f32; x.elem_count()];
    with_data(x, |x| {
        norm::group_norm(x, &geometry, &gamma, &beta, eps as f32, with_silu, &mut out)
    })?;
    from_vec(out, dims)
}

/// `x·weightᵀ + bias + residual` over the last dimension of `x` (`[..., in]`), for `weight`
/// `[out, in]`, `bias` `[out]` and `residual` of the output's shape `[..., out]`.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2()?;
    let mut out_dims = x.dims().to_vec();
    match out_dims.last_mut() {
        Some(last) if *last == in_features => *last = out_features,
        _ => bail!(
            "linear: input {:?} does not fit weight {:?}",
            x.dims(),
            weight.dims()
        ),
    }
    let bias = bias.map(to_vec).transpose()?;
    if bias.as_ref().is_some_and(|b| b.len() != out_features) {
        bail!("linear: bias does not have {out_features} elements");
    }
    let rows = x.elem_count() / in_features.max(1);
    let (mut out, accumulate) = match residual {
        Some(residual) => {
            if residual.dims() != out_dims {
                bail!(
                    "linear: residual {:?} does not match the output {out_dims:?}",
                    residual.dims()
                );
            }
            let mut out = to_vec(residual)?;
            if let Some(bias) = &bias {
                for row in out.chunks_exact_mut(out_features) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
            (out, true)
        }
        None => match &bias {
            Some(bias) => (bias.repeat(rows), true),
            None => (vec![0f32; rows * out_features], false),
        },
    };
    if in_features > 0 {
        with_data(x, |x| {
            with_data(weight, |w| {
                linear::linear_accumulate(x, w, in_features, &mut out, accumulate)
            })
        })??;
    }
    from_vec(out, &out_dims)
}

/// The gated GELU: the last dimension of `projected` (`[..., 2·w]`) splits into a value and a
/// gate half, and the result `[..., w]` is `value·gelu(gate)`.
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    let mut dims = projected.dims().to_vec();
    let width = match dims.last_mut() {
        Some(last) if *last % 2 == 0 && *last > 0 => {
            *last /= 2;
            *last
        }
        _ => bail!(
            "GEGLU: cannot halve the last dimension of {:?}",
            projected.dims()
        ),
    };
    let mut out = vec![0f32; projected.elem_count() / 2];
    with_data(projected, |p| linear::geglu(p, width, &mut out))?;
    from_vec(out, &dims)
}

#[cfg(test)]
mod test_util {
    /// Deterministic values in [-1, 1] (xorshift), so that kernel tests need no RNG crate.
    pub fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }
}
