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
use rayon::prelude::*;

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
    let mut offsets: Vec<f32> = bias.iter().cycle().take(batch * c_out).copied().collect();
    let residual = match addend {
        Some(addend) if addend.dims() == out_dims => Some(addend),
        Some(addend) if addend.dims() == [batch, c_out, 1, 1] => {
            let per_plane = to_vec(addend)?;
            offsets.iter_mut().zip(per_plane).for_each(|(o, a)| *o += a);
            None
        }
        Some(addend) => bail!(
            "conv2d: cannot add a {:?} tensor to the output {out_dims:?}",
            addend.dims()
        ),
        None => None,
    };
    let mut out = offset_planes(&offsets, plane, residual)?;
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

/// The starting values of an accumulating kernel: `offsets` repeated cyclically, each over
/// `plane` consecutive elements, plus `residual` (of the full output size) when given; filled in
/// parallel, since on the main thread this memory pass would hold up the next kernel.
fn offset_planes(offsets: &[f32], plane: usize, residual: Option<&Tensor>) -> Result<Vec<f32>> {
    let len = match residual {
        Some(residual) => residual.elem_count(),
        None => offsets.len() * plane,
    };
    if plane == 0 || offsets.is_empty() || !len.is_multiple_of(plane) {
        bail!(
            "accumulator of {len} elements cannot start from {} offsets",
            offsets.len()
        );
    }
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    // Chunks of whole planes, large enough to amortise the task overhead.
    let planes_per_task = (1usize << 14).div_ceil(plane);
    let offset = |i: usize| offsets[i % offsets.len()];
    match residual {
        Some(residual) => with_data(residual, |residual| {
            spare
                .par_chunks_mut(planes_per_task * plane)
                .zip(residual.par_chunks(planes_per_task * plane))
                .enumerate()
                .for_each(|(task, (dst, src))| {
                    let planes = dst.chunks_mut(plane).zip(src.chunks(plane));
                    for (i, (dst, src)) in planes.enumerate() {
                        let o = offset(task * planes_per_task + i);
                        dst.iter_mut().zip(src).for_each(|(d, s)| {
                            d.write(s + o);
                        });
                    }
                })
        })?,
        None => spare
            .par_chunks_mut(planes_per_task * plane)
            .enumerate()
            .for_each(|(task, dst)| {
                for (i, dst) in dst.chunks_mut(plane).enumerate() {
                    let o = offset(task * planes_per_task + i);
                    dst.iter_mut().for_each(|d| {
                        d.write(o);
                    });
                }
            }),
    }
    // SAFETY: every element of the first `len` was written above.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// `rows` copies of `row`, plus `residual` (`rows × row.len()`) when given, filled in parallel.
fn offset_rows(row: &[f32], rows: usize, residual: Option<&Tensor>) -> Result<Vec<f32>> {
    let len = rows * row.len();
    if residual.is_some_and(|r| r.elem_count() != len) || row.is_empty() {
        bail!(
            "accumulator of {rows} rows of {} cannot start from the residual",
            row.len()
        );
    }
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let rows_per_task = (1usize << 14).div_ceil(row.len());
    let chunk = rows_per_task * row.len();
    match residual {
        Some(residual) => with_data(residual, |residual| {
            spare
                .par_chunks_mut(chunk)
                .zip(residual.par_chunks(chunk))
                .for_each(|(dst, src)| {
                    for (dst, src) in dst.chunks_mut(row.len()).zip(src.chunks(row.len())) {
                        for ((d, s), b) in dst.iter_mut().zip(src).zip(row) {
                            d.write(s + b);
                        }
                    }
                })
        })?,
        None => spare.par_chunks_mut(chunk).for_each(|dst| {
            for dst in dst.chunks_mut(row.len()) {
                for (d, b) in dst.iter_mut().zip(row) {
                    d.write(*b);
                }
            }
        }),
    }
    // SAFETY: every element of the first `len` was written above.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Nearest-neighbour resize of `x` `[B, C, H, W]` to `height × width`, with the source index
/// of candle's (and PyTorch's "nearest") `floor(i · H / height)`; one plane per task.
pub fn upsample_nearest(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (batch, channels, src_h, src_w) = x.dims4()?;
    if src_h == 0 || src_w == 0 {
        bail!("upsample: empty input {:?}", x.dims());
    }
    // For each output row (column), the input row (column) it copies.
    let source = |src: usize, len: usize| -> Vec<usize> {
        let scale = src as f64 / len as f64;
        (0..len)
            .map(|i| ((i as f64 * scale) as usize).min(src - 1))
            .collect()
    };
    let (rows, cols) = (source(src_h, height), source(src_w, width));
    let mut out = vec![0f32; batch * channels * height * width];
    if !out.is_empty() {
        with_data(x, |x| {
            out.par_chunks_mut(height * width)
                .zip(x.par_chunks(src_h * src_w))
                .for_each(|(dst, src)| {
                    for (dst, &y) in dst.chunks_exact_mut(width).zip(&rows) {
                        let src = &src[y * src_w..][..src_w];
                        for (d, &c) in dst.iter_mut().zip(&cols) {
                            *d = src[c];
                        }
                    }
                })
        })?;
    }
    from_vec(out, &[batch, channels, height, width])
}

/// `softmax(q·kᵀ·scale + mask)·v` for `[batch, seq, d]` or `[batch, heads, seq, d]` tensors
/// whose last dimension is contiguous (others are made so), and an additive `mask` that
/// broadcasts to `[batch, heads, seq_q, seq_k]`. The result has the shape of `q` (with `v`'s
/// width) and is a transposed view of `[batch, seq_q, heads, d_v]` memory.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
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
    let mask = mask
        .map(|m| m.broadcast_as((batch, heads, q_len, kv_len)))
        .transpose()?;
    let mut out = vec![0f32; batch * q_len * heads * v_dim];
    // With no keys the weighted sum is empty: zeros, as candle's and PyTorch's attention give.
    if kv_len > 0 {
        with_optional_view(mask.as_ref(), |mask| {
            with_view(&q4, |q| {
                with_view(&k4, |k| {
                    with_view(&v4, |v| {
                        attention::attention(q, k, v, mask, &geometry, scale as f32, &mut out)
                    })
                })
            })
        })????;
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

/// [`with_view`] of `t` when there is one, else `f(None)`.
fn with_optional_view<R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<attention::View>) -> R,
) -> Result<R> {
    match t {
        Some(t) => with_view(t, |view| f(Some(view))),
        None => Ok(f(None)),
    }
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
    if residual.is_some_and(|r| r.dims() != out_dims) {
        bail!("linear: residual does not match the output {out_dims:?}");
    }
    let (mut out, accumulate) = match (&bias, residual) {
        (None, None) => (vec![0f32; rows * out_features], false),
        (Some(bias), residual) => (offset_rows(bias, rows, residual)?, true),
        (None, Some(residual)) => (to_vec(residual)?, true),
    };
    if in_features > 0 {
        // A transposed view of `[in, out]` memory (how `layers::Linear` keeps its weights) is
        // read in place; any other layout is copied to `[out, in]`.
        let (weight, layout) = if weight.t()?.is_contiguous() && !weight.is_contiguous() {
            (weight.t()?, linear::WeightLayout::InOut)
        } else {
            (weight.clone(), linear::WeightLayout::OutIn)
        };
        with_data(x, |x| {
            with_data(&weight, |w| {
                linear::linear_accumulate(x, w, layout, in_features, &mut out, accumulate)
            })
        })??;
    }
    from_vec(out, &out_dims)
}

/// `weight` `[out, in]` as a transposed view of `[in, out]` memory, the layout
/// [`linear`] reads fastest.
pub fn in_major(weight: &Tensor) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    let mut out = vec![0f32; rows * cols];
    with_data(weight, |w| linear::transpose(w, rows, cols, &mut out))?;
    from_vec(out, &[cols, rows])?.t()
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

/// `activation(x)` element-wise, for a feed-forward network's hidden layer.
pub fn activation(x: &Tensor, activation: crate::config::Activation) -> Result<Tensor> {
    let mut out = vec![0f32; x.elem_count()];
    with_data(x, |x| linear::activation(x, activation, &mut out))?;
    from_vec(out, x.dims())
}

/// A pointer shared by parallel tasks that write disjoint elements of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// A method, so that closures capture the `Sync` wrapper rather than the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: every user writes disjoint elements (see each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

#[cfg(test)]
mod tests {
    //! The tensor-level entry points against candle's own operations, including the starting
    //! values (bias, residual, per-channel offsets) they accumulate onto.
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn conv2d_adds_bias_and_addends_like_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (3, 5, 9, 7), &dev)?;
        for (kernel, stride, padding) in [(3, 1, 1), (3, 2, 0), (1, 1, 0), (3, 1, 0)] {
            let w = Tensor::randn(0f32, 1., (6, 5, kernel, kernel), &dev)?;
            let b = Tensor::randn(0f32, 1., 6, &dev)?;
            let plain = x
                .conv2d(&w, padding, stride, 1, 1)?
                .broadcast_add(&b.reshape((1, 6, 1, 1))?)?;
            let per_channel = Tensor::randn(0f32, 1., (3, 6, 1, 1), &dev)?;
            let residual = Tensor::randn(0f32, 1., plain.dims(), &dev)?;
            let cases = [
                (None, plain.clone()),
                (Some(&per_channel), plain.broadcast_add(&per_channel)?),
                (Some(&residual), (&plain + &residual)?),
            ];
            for (addend, expected) in cases {
                let got = conv2d(&x, &w, &b, addend, stride, padding)?;
                let diff = max_diff(&got, &expected)?;
                assert!(diff < 1e-4, "k{kernel}/s{stride}/p{padding}: {diff}");
            }
        }
        // Strided (channels-last) input to a pointwise convolution.
        let w = Tensor::randn(0f32, 1., (6, 5, 1, 1), &dev)?;
        let b = Tensor::randn(0f32, 1., 6, &dev)?;
        let channels_last = x
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .permute((0, 3, 1, 2))?;
        let diff = max_diff(
            &conv2d(&channels_last, &w, &b, None, 1, 0)?,
            &conv2d(&x, &w, &b, None, 1, 0)?,
        )?;
        assert!(diff < 1e-5, "channels-last input: {diff}");
        let bad = Tensor::zeros((3, 6, 2, 2), DType::F32, &dev)?;
        assert!(conv2d(&x, &w, &b, Some(&bad), 1, 0).is_err());
        Ok(())
    }

    #[test]
    fn activations_match_candle() -> Result<()> {
        use crate::config::Activation;
        let x = (Tensor::randn(0f32, 1., (2, 7, 37), &Device::Cpu)? * 4.0)?;
        let quick = (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?;
        for (kind, expected) in [
            (Activation::Gelu, x.gelu_erf()?),
            (Activation::QuickGelu, quick),
        ] {
            let diff = max_diff(&activation(&x, kind)?, &expected)?;
            assert!(diff < 1e-5, "{kind:?}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn linear_adds_bias_and_residual_like_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 7, 5), &dev)?;
        let w = Tensor::randn(0f32, 1., (3, 5), &dev)?;
        let b = Tensor::randn(0f32, 1., 3, &dev)?;
        let r = Tensor::randn(0f32, 1., (2, 7, 3), &dev)?;
        let product = x.broadcast_matmul(&w.t()?)?;
        let with_bias = product.broadcast_add(&b)?;
        let cases = [
            (None, None, product.clone()),
            (Some(&b), None, with_bias.clone()),
            (None, Some(&r), (&product + &r)?),
            (Some(&b), Some(&r), (&with_bias + &r)?),
        ];
        // The weight as `[out, in]` memory and as a transposed view of `[in, out]` memory.
        let w_in_out = w.t()?.contiguous()?.t()?;
        for (bias, residual, expected) in cases {
            for weight in [&w, &w_in_out] {
                let diff = max_diff(&linear(&x, weight, bias, residual)?, &expected)?;
                assert!(
                    diff < 1e-5,
                    "bias {} residual {} weight strides {:?}: {diff}",
                    bias.is_some(),
                    residual.is_some(),
                    weight.stride()
                );
            }
        }
        // A transposed (non-contiguous) input is read correctly too.
        let xt = Tensor::randn(0f32, 1., (2, 5, 7), &dev)?.transpose(1, 2)?;
        let diff = max_diff(
            &linear(&xt, &w, Some(&b), None)?,
            &xt.contiguous()?
                .broadcast_matmul(&w.t()?)?
                .broadcast_add(&b)?,
        )?;
        assert!(diff < 1e-5, "transposed input: {diff}");
        Ok(())
    }

    #[test]
    fn upsample_matches_candle_for_integer_and_odd_factors() -> Result<()> {
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 7), &Device::Cpu)?;
        for (h, w) in [(10, 14), (11, 13), (5, 7), (3, 4)] {
            let got = upsample_nearest(&x, h, w)?;
            assert_eq!(
                max_diff(&got, &x.upsample_nearest2d(h, w)?)?,
                0.0,
                "{h}x{w}"
            );
        }
        Ok(())
    }

    #[test]
    fn group_norm_and_geglu_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 6, 5, 3), &dev)?;
        let w = Tensor::randn(0f32, 1., 6, &dev)?;
        let b = Tensor::randn(0f32, 1., 6, &dev)?;
        let reference = candle_nn::GroupNorm::new(w.clone(), b.clone(), 6, 3, 1e-5)?;
        let expected = candle_nn::Module::forward(&reference, &x)?;
        let diff = max_diff(&group_norm(&x, &w, &b, 3, 1e-5, false)?, &expected)?;
        assert!(diff < 1e-5, "group norm: {diff}");
        let diff = max_diff(&group_norm(&x, &w, &b, 3, 1e-5, true)?, &expected.silu()?)?;
        assert!(diff < 1e-5, "group norm + silu: {diff}");

        let projected = Tensor::randn(0f32, 2., (3, 4, 10), &dev)?;
        let expected = (projected.narrow(2, 0, 5)? * projected.narrow(2, 5, 5)?.gelu_erf()?)?;
        let diff = max_diff(&geglu(&projected)?, &expected)?;
        assert!(diff < 1e-5, "geglu: {diff}");
        Ok(())
    }
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
