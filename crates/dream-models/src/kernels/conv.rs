//! 2-D convolution on NCHW f32 data as matrix products: for a tile of output rows, the input
//! patches are laid out as the columns of a matrix (im2col) that the weight, read as
//! `[c_out, c_in·k·k]` in PyTorch's own layout, multiplies in one gemm call. Tiling keeps the
//! patch matrix small, and the output is accumulated onto what the caller put there (the bias,
//! and the residual of a resnet), so nothing is added in a separate pass.

use rayon::prelude::*;

use super::winograd;

/// The geometry of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    /// Square kernel side.
    pub kernel: usize,
    pub stride: usize,
    /// Zeros on every side.
    pub padding: usize,
}

impl ConvGeometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn patch_len(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// A 1×1 stride-1 convolution reads its input as the patch matrix directly.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }
}

/// Target size of one patch matrix (floats, 8 MiB): small enough for the last-level cache.
const PATCH_TILE_FLOATS: usize = 1 << 21;
/// Fewest output pixels per gemm call; below this the gemm runs measurably slower (at SD's
/// shapes on AVX-512: 140 against 200 GFLOP/s for a `[1280, 17280]` weight and 32 pixels).
const MIN_TILE_PIXELS: usize = 512;

/// `out[b, co, :, :] += Σ weight[co, ci, kh, kw] · x[b, ci, ·, ·]`: `x` is `[batch, c_in, height,
/// width]`, `weight` `[c_out, c_in, kernel, kernel]`, `out` `[batch, c_out, out_h, out_w]`, all
/// contiguous. The 3×3 "same" convolutions that make up most of SD go through Winograd's
/// algorithm, the others through im2col.
pub fn conv2d_accumulate(x: &[f32], weight: &[f32], g: &ConvGeometry, out: &mut [f32]) {
    if g.is_pointwise() {
        let plane = g.height * g.width;
        pointwise_accumulate(x, [g.c_in * plane, plane, 1], weight, g, out);
    } else if winograd::applies(g) {
        winograd::conv3x3_accumulate(x, weight, g, out);
    } else {
        im2col_accumulate(x, weight, g, out);
    }
}

/// [`conv2d_accumulate`] for a 1×1, stride-1, unpadded convolution, a plain matrix product per
/// image, reading pixel `p` of channel `c` of image `b` at `x[b·strides[0] + c·strides[1] +
/// p·strides[2]]`: channels-last input (a transformer's tokens) needs no copy.
pub fn pointwise_accumulate(
    x: &[f32],
    strides: [usize; 3],
    weight: &[f32],
    g: &ConvGeometry,
    out: &mut [f32],
) {
    assert!(g.is_pointwise(), "pointwise convolution called for {g:?}");
    let pixels = g.height * g.width;
    assert_eq!(weight.len(), g.c_out * g.c_in, "conv weight size");
    assert_eq!(out.len(), g.batch * g.c_out * pixels, "conv output size");
    if out.is_empty() || g.c_in == 0 {
        return;
    }
    let [sb, sc, sp] = strides;
    let last = (g.batch - 1) * sb + (g.c_in - 1) * sc + (pixels - 1) * sp;
    assert!(last < x.len(), "conv input view out of bounds");
    for (b, out_b) in out.chunks_exact_mut(g.c_out * pixels).enumerate() {
        // SAFETY: `weight` is `c_out × c_in` row-major, image `b` of `x` is `c_in × pixels`
        // with the strides checked above, and `out_b` is `c_out × pixels` row-major.
        unsafe {
            gemm::gemm(
                g.c_out,
                pixels,
                g.c_in,
                out_b.as_mut_ptr(),
                1,
                pixels as isize,
                true,
                weight.as_ptr(),
                1,
                g.c_in as isize,
                x[b * sb..].as_ptr(),
                sp as isize,
                sc as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
    }
}

/// [`conv2d_accumulate`] by im2col and gemm, for any geometry.
pub(super) fn im2col_accumulate(x: &[f32], weight: &[f32], g: &ConvGeometry, out: &mut [f32]) {
    let (out_h, out_w) = (g.out_height(), g.out_width());
    let (in_plane, out_plane) = (g.height * g.width, out_h * out_w);
    assert_eq!(x.len(), g.batch * g.c_in * in_plane, "conv input size");
    assert_eq!(weight.len(), g.c_out * g.patch_len(), "conv weight size");
    assert_eq!(out.len(), g.batch * g.c_out * out_plane, "conv output size");
    if out.is_empty() || g.patch_len() == 0 {
        return;
    }
    // Whole output rows per tile: as many as fit the patch budget, but enough pixels for the
    // gemm to run at full speed even when the patch matrix is tall (many input channels).
    let rows_per_tile = (PATCH_TILE_FLOATS / (g.patch_len() * out_w))
        .max(MIN_TILE_PIXELS.div_ceil(out_w))
        .clamp(1, out_h);
    let threads = rayon::current_num_threads();
    let mut patches = Vec::new();
    for b in 0..g.batch {
        let x_b = &x[b * g.c_in * in_plane..][..g.c_in * in_plane];
        let out_b = &mut out[b * g.c_out * out_plane..][..g.c_out * out_plane];
        for row0 in (0..out_h).step_by(rows_per_tile) {
            let rows = rows_per_tile.min(out_h - row0);
            let pixels = rows * out_w;
            patches.resize(g.patch_len() * pixels, 0.0);
            im2col(x_b, g, row0, rows, &mut patches);
            // SAFETY: the operands are in bounds: `weight` is `c_out × patch_len` row-major,
            // `patches` `patch_len × pixels` row-major, and `out_b` from `row0·out_w` holds
            // `c_out` rows of `pixels` floats `out_plane` apart.
            unsafe {
                gemm::gemm(
                    g.c_out,
                    pixels,
                    g.patch_len(),
                    out_b[row0 * out_w..].as_mut_ptr(),
                    1,
                    out_plane as isize,
                    true,
                    weight.as_ptr(),
                    1,
                    g.patch_len() as isize,
                    patches.as_ptr(),
                    1,
                    pixels as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
        }
    }
}

/// Fills `patches` (`[c_in·k·k, rows·out_w]`) with the input pixels that output rows
/// `row0..row0+rows` of one image see; row `(ci·k + kh)·k + kw` of the matrix is input channel
/// `ci` shifted by kernel offset `(kh, kw)`, zeros where that falls in the padding.
fn im2col(x_b: &[f32], g: &ConvGeometry, row0: usize, rows: usize, patches: &mut [f32]) {
    let out_w = g.out_width();
    let pixels = rows * out_w;
    let k = g.kernel;
    let plane = g.height * g.width;
    patches
        .par_chunks_mut(pixels * k * k)
        .zip(x_b.par_chunks(plane))
        .for_each(|(channel_rows, channel)| {
            for (offset, row) in channel_rows.chunks_exact_mut(pixels).enumerate() {
                let (kh, kw) = (offset / k, offset % k);
                for (r, dst) in row.chunks_exact_mut(out_w).enumerate() {
                    let ih = ((row0 + r) * g.stride + kh) as isize - g.padding as isize;
                    if ih < 0 || ih >= g.height as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &channel[ih as usize * g.width..][..g.width];
                    shifted_row(src, dst, kw as isize - g.padding as isize, g.stride);
                }
            }
        });
}

/// `dst[o] = src[o·stride + shift]`, zero where that index is outside `src`.
fn shifted_row(src: &[f32], dst: &mut [f32], shift: isize, stride: usize) {
    if stride == 1 {
        // The valid outputs are a contiguous run.
        let first = (-shift).clamp(0, dst.len() as isize) as usize;
        let end = (src.len() as isize - shift).clamp(first as isize, dst.len() as isize) as usize;
        if first == end {
            dst.fill(0.0);
            return;
        }
        dst[..first].fill(0.0);
        let start = (first as isize + shift) as usize;
        dst[first..end].copy_from_slice(&src[start..start + end - first]);
        dst[end..].fill(0.0);
    } else {
        for (o, d) in dst.iter_mut().enumerate() {
            let i = (o * stride) as isize + shift;
            *d = if i >= 0 && (i as usize) < src.len() {
                src[i as usize]
            } else {
                0.0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::pseudo_random;

    /// The definition, one output element at a time.
    fn naive(x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let (oh, ow, k) = (g.out_height(), g.out_width(), g.kernel);
        let mut out = vec![0f32; g.batch * g.c_out * oh * ow];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut acc = 0f64;
                        for ci in 0..g.c_in {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let iy = (y * g.stride + kh) as isize - g.padding as isize;
                                    let ix = (xo * g.stride + kw) as isize - g.padding as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.height as isize
                                        || ix >= g.width as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((b * g.c_in + ci) * g.height + iy as usize) * g.width
                                        + ix as usize;
                                    let wi = ((co * g.c_in + ci) * k + kh) * k + kw;
                                    acc += x[xi] as f64 * weight[wi] as f64;
                                }
                            }
                        }
                        out[((b * g.c_out + co) * oh + y) * ow + xo] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_definition_on_odd_shapes() {
        let cases = [
            // batch, c_in, h, w, c_out, kernel, stride, padding
            (1, 1, 1, 1, 1, 1, 1, 0),
            (2, 3, 5, 7, 4, 3, 1, 1),
            (1, 5, 9, 6, 3, 3, 2, 1),
            (2, 4, 8, 8, 6, 3, 2, 0),
            (1, 7, 3, 11, 5, 1, 1, 0),
            (3, 2, 4, 5, 3, 3, 1, 2),
            (1, 3, 2, 2, 2, 3, 1, 1),
            (1, 6, 13, 3, 17, 3, 1, 1),
            (1, 2, 6, 5, 3, 1, 2, 0),
            // Padding wider than the output.
            (1, 2, 1, 2, 3, 7, 1, 3),
        ];
        for (i, &(batch, c_in, height, width, c_out, kernel, stride, padding)) in
            cases.iter().enumerate()
        {
            let g = ConvGeometry {
                batch,
                c_in,
                height,
                width,
                c_out,
                kernel,
                stride,
                padding,
            };
            let x = pseudo_random(batch * c_in * height * width, i as u32);
            let w = pseudo_random(c_out * c_in * kernel * kernel, 100 + i as u32);
            let initial = pseudo_random(batch * c_out * g.out_height() * g.out_width(), 7);
            let expected = naive(&x, &w, &g);
            // The dispatcher, and the general path on its own.
            for (path, conv) in [
                ("dispatch", conv2d_accumulate as Conv),
                ("im2col", im2col_accumulate),
            ] {
                let mut out = initial.clone();
                conv(&x, &w, &g, &mut out);
                for (j, ((o, e), init)) in out.iter().zip(&expected).zip(&initial).enumerate() {
                    assert!(
                        (o - init - e).abs() < 1e-5,
                        "{path}, case {g:?} element {j}: {o} - {init} vs {e}"
                    );
                }
            }
        }
    }

    type Conv = fn(&[f32], &[f32], &ConvGeometry, &mut [f32]);

    /// Channels-last input (`[batch, pixels, channels]` memory) read in place.
    #[test]
    fn pointwise_reads_channels_last_input() {
        let g = ConvGeometry {
            batch: 2,
            c_in: 5,
            height: 3,
            width: 7,
            c_out: 4,
            kernel: 1,
            stride: 1,
            padding: 0,
        };
        let pixels = g.height * g.width;
        let nchw = pseudo_random(g.batch * g.c_in * pixels, 5);
        let mut nhwc = vec![0f32; nchw.len()];
        for b in 0..g.batch {
            for c in 0..g.c_in {
                for p in 0..pixels {
                    nhwc[(b * pixels + p) * g.c_in + c] = nchw[(b * g.c_in + c) * pixels + p];
                }
            }
        }
        let w = pseudo_random(g.c_out * g.c_in, 6);
        let mut expected = vec![0f32; g.batch * g.c_out * pixels];
        let mut out = expected.clone();
        im2col_accumulate(&nchw, &w, &g, &mut expected);
        pointwise_accumulate(&nhwc, [pixels * g.c_in, 1, g.c_in], &w, &g, &mut out);
        for (a, b) in out.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// Big enough for several tiles per image.
    #[test]
    fn tiles_cover_every_output_row() {
        let g = ConvGeometry {
            batch: 1,
            c_in: 40,
            height: 250,
            width: 61,
            c_out: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        assert!(g.patch_len() * g.out_width() * g.out_height() > 2 * PATCH_TILE_FLOATS);
        let x = pseudo_random(g.c_in * g.height * g.width, 1);
        let w = pseudo_random(g.c_out * g.patch_len(), 2);
        let mut out = vec![0f32; g.c_out * g.out_height() * g.out_width()];
        conv2d_accumulate(&x, &w, &g, &mut out);
        let expected = naive(&x, &w, &g);
        let max_diff = out
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "max abs diff {max_diff}");
    }
}
