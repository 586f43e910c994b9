//! 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of output pixels is
//! computed from a 4×4 input tile with 16 multiplications per channel pair instead of 36, so the
//! matrix products, nearly all of a convolution's time, shrink 2.25×. The transforms only add,
//! subtract and halve, so the rounding stays close to that of the direct sum.
//!
//! With `d` a 4×4 input tile, `g` a 3×3 kernel and `Y` the 2×2 output:
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, and the sum over input channels of the element-wise
//! products is, for each of the 16 tile positions, a matrix product
//! `M[p] = U[p] · V[p]` of the transformed weights `U[p]` `[c_out, c_in]` and the transformed
//! input tiles `V[p]` `[c_in, tiles]`.

use rayon::prelude::*;

use super::conv::ConvGeometry;
use super::math::dispatch;
use super::SharedMut;

/// Positions in a transformed 4×4 tile.
const POSITIONS: usize = 16;

/// Target size of one block's transformed tiles, input and output together (floats, 16 MiB).
const BLOCK_FLOATS: usize = 1 << 22;

/// Fewest tiles in one block (gemm width). Below it, at SD's 8×8 level, transforming the weights
/// and streaming the 16 transformed matrices costs more than the multiplications saved.
const MIN_BLOCK_TILES: usize = 64;

/// Whether `g` is a convolution this algorithm computes: 3×3, stride 1, padding 1 (the "same"
/// convolutions) or 0 (those of seamless mode, which pads beforehand).
fn supports(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding <= 1
}

/// Tile rows and columns: one tile per 2×2 block of output pixels.
fn tile_grid(g: &ConvGeometry) -> (usize, usize) {
    (g.out_height().div_ceil(2), g.out_width().div_ceil(2))
}

/// Whether the Winograd path is worth taking for `g`: a supported geometry with enough tiles for
/// efficient matrix products and enough channels for the transforms to be negligible.
pub fn applies(g: &ConvGeometry) -> bool {
    let (tile_rows, tile_cols) = tile_grid(g);
    let tiles = g.batch * tile_rows * tile_cols;
    supports(g) && tiles >= MIN_BLOCK_TILES && g.c_in >= 16 && g.c_out >= 16
}

/// `out += conv2d(x, weight)` for a 3×3, stride-1 geometry with padding 0 or 1; layouts as
/// [`super::conv::conv2d_accumulate`].
pub fn conv3x3_accumulate(x: &[f32], weight: &[f32], g: &ConvGeometry, out: &mut [f32]) {
    assert!(supports(g), "Winograd F(2x2, 3x3) called for {g:?}");
    let (c_in, c_out) = (g.c_in, g.c_out);
    assert_eq!(
        x.len(),
        g.batch * c_in * g.height * g.width,
        "conv input size"
    );
    assert_eq!(weight.len(), c_out * c_in * 9, "conv weight size");
    assert_eq!(
        out.len(),
        g.batch * c_out * g.out_height() * g.out_width(),
        "conv output size"
    );
    let (tile_rows, tile_cols) = tile_grid(g);

    let u = transform_weights(weight, c_out, c_in);
    // Blocks of whole tile rows, counted across the batch.
    let total_rows = g.batch * tile_rows;
    let rows_per_block = (BLOCK_FLOATS / (POSITIONS * (c_in + c_out) * tile_cols))
        .max(MIN_BLOCK_TILES.div_ceil(tile_cols))
        .clamp(1, total_rows);
    let mut v = Vec::new();
    let mut m = Vec::new();
    for row0 in (0..total_rows).step_by(rows_per_block) {
        let rows = rows_per_block.min(total_rows - row0);
        let tiles = rows * tile_cols;
        v.resize(POSITIONS * c_in * tiles, 0.0);
        m.resize(POSITIONS * c_out * tiles, 0.0);
        transform_input(x, g, row0, rows, &mut v);
        multiply(&u, &v, &mut m, c_out, c_in, tiles);
        transform_output(&m, g, row0, rows, out);
    }
}

/// `U[co][p][ci] = (G g Gᵀ)[p]` with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0f32; POSITIONS * c_out * c_in];
    u.par_chunks_exact_mut(POSITIONS * c_in)
        .zip(weight.par_chunks_exact(c_in * 9))
        .for_each(|(u, kernels)| transform_kernels(kernels, u));
    u
}

/// The 16 transformed weights `u[p][ci]` of the 3×3 `kernels[ci]` of one output channel,
/// computed for a lane of input channels at a time.
#[inline(always)]
fn transform_kernels_impl(kernels: &[f32], u: &mut [f32]) {
    const LANE: usize = 16;
    let c_in = kernels.len() / 9;
    for c0 in (0..c_in).step_by(LANE) {
        let lane = LANE.min(c_in - c0);
        // g[k][l]: tap k of the kernel of input channel c0 + l.
        let mut g = [[0f32; LANE]; 9];
        for (l, kernel) in kernels[c0 * 9..(c0 + lane) * 9].chunks_exact(9).enumerate() {
            for (k, &tap) in kernel.iter().enumerate() {
                g[k][l] = tap;
            }
        }
        // Rows of G·g (4×3), then G applied to each of them.
        let mut gg = [[[0f32; LANE]; 3]; 4];
        for c in 0..3 {
            for l in 0..LANE {
                let (g0, g1, g2) = (g[c][l], g[3 + c][l], g[6 + c][l]);
                gg[0][c][l] = g0;
                gg[1][c][l] = 0.5 * (g0 + g1 + g2);
                gg[2][c][l] = 0.5 * (g0 - g1 + g2);
                gg[3][c][l] = g2;
            }
        }
        for (a, [h0, h1, h2]) in gg.iter().enumerate() {
            for l in 0..lane {
                let row = [
                    h0[l],
                    0.5 * (h0[l] + h1[l] + h2[l]),
                    0.5 * (h0[l] - h1[l] + h2[l]),
                    h2[l],
                ];
                for (b, value) in row.into_iter().enumerate() {
                    u[(a * 4 + b) * c_in + c0 + l] = value;
                }
            }
        }
    }
}

dispatch! {
    fn transform_kernels(kernels: &[f32], u: &mut [f32]) = transform_kernels_impl
}

/// `V[ci][p][t] = (Bᵀ d B)[p]` for the tiles of tile rows `row0..row0+rows` (counted across the
/// batch), with `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. Tile `(i, j)`
/// reads input rows `2i−p .. 2i−p+3` and columns `2j−p .. 2j−p+3` for padding `p`, zero outside
/// the image.
fn transform_input(x: &[f32], g: &ConvGeometry, row0: usize, rows: usize, v: &mut [f32]) {
    let (h, w) = (g.height, g.width);
    let (tile_rows, tile_cols) = tile_grid(g);
    let tiles = rows * tile_cols;
    let zeros = vec![0f32; w];
    v.par_chunks_exact_mut(POSITIONS * tiles)
        .enumerate()
        .for_each_init(
            || vec![0f32; 10 * (tile_cols + 1)],
            |scratch, (ci, v)| {
                for r in 0..rows {
                    let (b, i) = ((row0 + r) / tile_rows, (row0 + r) % tile_rows);
                    let channel = &x[(b * g.c_in + ci) * h * w..][..h * w];
                    let row = |k: usize| match (2 * i + k).checked_sub(g.padding) {
                        Some(y) if y < h => &channel[y * w..][..w],
                        _ => &zeros[..],
                    };
                    let rows = [row(0), row(1), row(2), row(3)];
                    input_tile_row(rows, g.padding, scratch, v, tiles, r * tile_cols);
                }
            },
        );
}

/// Writes the 16 transformed values of the tiles of one tile row, which read the four input
/// `rows` with `padding` (0 or 1) zero columns on the left, to `v[p·tiles + first ..]`
/// (`tile_cols` values per position). `scratch` holds `10·(tile_cols + 1)` floats.
#[inline(always)]
fn input_tile_row_impl(
    rows: [&[f32]; 4],
    padding: usize,
    scratch: &mut [f32],
    v: &mut [f32],
    tiles: usize,
    first: usize,
) {
    let n = scratch.len() / 10;
    let tile_cols = n - 1;
    // Each padded row split into even and odd columns (padded column c is input column
    // c − padding), so that the column combinations below are unit-stride.
    let (split, rest) = scratch.split_at_mut(8 * n);
    let (even, odd) = rest.split_at_mut(n);
    for (k, d) in rows.into_iter().enumerate() {
        let (e, o) = split[2 * k * n..2 * (k + 1) * n].split_at_mut(n);
        e.fill(0.0);
        o.fill(0.0);
        // Input column 2m lands in the odd padded columns when one zero column precedes it.
        let (first, second) = if padding == 1 {
            (o, &mut e[1..])
        } else {
            (e, o)
        };
        let mut pairs = d.chunks_exact(2);
        for ((pair, a), b) in (&mut pairs).zip(first.iter_mut()).zip(second.iter_mut()) {
            *a = pair[0];
            *b = pair[1];
        }
        if let [last] = pairs.remainder() {
            first[d.len() / 2] = *last;
        }
    }
    let part = |k: usize, odd: bool| {
        let start = (2 * k + odd as usize) * n;
        &split[start..start + n]
    };
    for a in 0..4 {
        // Row `a` of Bᵀ d, on the even and the odd columns.
        let (x, y, sign) = match a {
            0 => (0, 2, -1.0),
            1 => (1, 2, 1.0),
            2 => (2, 1, -1.0),
            _ => (1, 3, -1.0),
        };
        for (dst, (p, q)) in even
            .iter_mut()
            .zip(part(x, false).iter().zip(part(y, false)))
        {
            *dst = q.mul_add(sign, *p);
        }
        for (dst, (p, q)) in odd.iter_mut().zip(part(x, true).iter().zip(part(y, true))) {
            *dst = q.mul_add(sign, *p);
        }
        // Times B: columns 2j .. 2j+3 are even[j], odd[j], even[j+1], odd[j+1].
        let out = |b: usize| (a * 4 + b) * tiles + first;
        let (e0, e1) = (&even[..tile_cols], &even[1..]);
        let (o0, o1) = (&odd[..tile_cols], &odd[1..]);
        for (dst, (x, y)) in v[out(0)..][..tile_cols].iter_mut().zip(e0.iter().zip(e1)) {
            *dst = x - y;
        }
        for (dst, (x, y)) in v[out(1)..][..tile_cols].iter_mut().zip(o0.iter().zip(e1)) {
            *dst = x + y;
        }
        for (dst, (x, y)) in v[out(2)..][..tile_cols].iter_mut().zip(e1.iter().zip(o0)) {
            *dst = x - y;
        }
        for (dst, (x, y)) in v[out(3)..][..tile_cols].iter_mut().zip(o0.iter().zip(o1)) {
            *dst = x - y;
        }
    }
}

dispatch! {
    fn input_tile_row(
        rows: [&[f32]; 4],
        padding: usize,
        scratch: &mut [f32],
        v: &mut [f32],
        tiles: usize,
        first: usize
    ) = input_tile_row_impl
}

/// `M[p] = U[p] · V[p]` for the 16 positions, one single-threaded gemm per position in
/// parallel; `U` is `[co][p][ci]`, `V` `[ci][p][t]` and `M` `[co][p][t]`.
fn multiply(u: &[f32], v: &[f32], m: &mut [f32], c_out: usize, c_in: usize, tiles: usize) {
    let m_ptr = SharedMut(m.as_mut_ptr());
    (0..POSITIONS).into_par_iter().for_each(|p| {
        // SAFETY: position `p` of `u` is `c_out × c_in` with rows `16·c_in` apart, of `v`
        // `c_in × tiles` with rows `16·tiles` apart, and of `m` `c_out × tiles` likewise, which
        // only this task writes; all lie in their buffers, whose sizes the caller set.
        unsafe {
            gemm::gemm(
                c_out,
                tiles,
                c_in,
                m_ptr.get().add(p * tiles),
                1,
                (POSITIONS * tiles) as isize,
                false,
                u[p * c_in..].as_ptr(),
                1,
                (POSITIONS * c_in) as isize,
                v[p * tiles..].as_ptr(),
                1,
                (POSITIONS * tiles) as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// `out += Aᵀ M A` with `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]` for the tiles of tile rows
/// `row0..row0+rows`, from `M[co][p][t]`; output pixels past the image edge (odd sizes) are
/// dropped.
fn transform_output(m: &[f32], g: &ConvGeometry, row0: usize, rows: usize, out: &mut [f32]) {
    let (h, w) = (g.out_height(), g.out_width());
    let (tile_rows, tile_cols) = tile_grid(g);
    let tiles = rows * tile_cols;
    let out_ptr = SharedMut(out.as_mut_ptr());
    m.par_chunks_exact(POSITIONS * tiles)
        .enumerate()
        .for_each_init(
            || vec![0f32; 10 * tile_cols],
            |scratch, (co, m)| {
                for r in 0..rows {
                    let (b, i) = ((row0 + r) / tile_rows, (row0 + r) % tile_rows);
                    let plane = (b * g.c_out + co) * h * w;
                    // SAFETY: each output channel's plane is written by one task only; the rows
                    // lie inside it.
                    let (top, bottom) = unsafe {
                        let row = |y: usize| {
                            std::slice::from_raw_parts_mut(out_ptr.get().add(plane + y * w), w)
                        };
                        // With an odd height the last tile row has no bottom output row.
                        let y = 2 * i;
                        (row(y), if y + 1 < h { row(y + 1) } else { &mut [][..] })
                    };
                    output_tile_row(m, tiles, r * tile_cols, scratch, top, bottom);
                }
            },
        );
}

/// Adds the two output rows of the tiles `first..first+tile_cols` of `m` (`[16][tiles]` for one
/// output channel) onto `top` and `bottom` (empty when past the image). `scratch` holds
/// `10·tile_cols` floats.
#[inline(always)]
fn output_tile_row_impl(
    m: &[f32],
    tiles: usize,
    first: usize,
    scratch: &mut [f32],
    top: &mut [f32],
    bottom: &mut [f32],
) {
    let tile_cols = scratch.len() / 10;
    let position = |p: usize| &m[p * tiles + first..][..tile_cols];
    let (s, rest) = scratch.split_at_mut(8 * tile_cols);
    let (even, odd) = rest.split_at_mut(tile_cols);
    // Aᵀ M: for each column c of the tile, rows 0+1+2 and 1−2−3.
    for c in 0..4 {
        let (m0, m1, m2, m3) = (
            position(c),
            position(4 + c),
            position(8 + c),
            position(12 + c),
        );
        let (upper, lower) = s[2 * c * tile_cols..2 * (c + 1) * tile_cols].split_at_mut(tile_cols);
        for (((u, l), (a, b)), (c, d)) in upper
            .iter_mut()
            .zip(lower.iter_mut())
            .zip(m0.iter().zip(m1))
            .zip(m2.iter().zip(m3))
        {
            *u = a + b + c;
            *l = b - c - d;
        }
    }
    // Times A: columns 0+1+2 (even output pixels) and 1−2−3 (odd ones), for each output row.
    for (half, dst) in [top, bottom].into_iter().enumerate() {
        let column = |c: usize| &s[(2 * c + half) * tile_cols..][..tile_cols];
        let (c0, c1, c2, c3) = (column(0), column(1), column(2), column(3));
        for (((e, o), (a, b)), (c, d)) in even
            .iter_mut()
            .zip(odd.iter_mut())
            .zip(c0.iter().zip(c1))
            .zip(c2.iter().zip(c3))
        {
            *e = a + b + c;
            *o = b - c - d;
        }
        for (pair, (e, o)) in dst.chunks_exact_mut(2).zip(even.iter().zip(odd.iter())) {
            pair[0] += e;
            pair[1] += o;
        }
        if dst.len() % 2 == 1 {
            dst[dst.len() - 1] += even[tile_cols - 1];
        }
    }
}

dispatch! {
    fn output_tile_row(
        m: &[f32],
        tiles: usize,
        first: usize,
        scratch: &mut [f32],
        top: &mut [f32],
        bottom: &mut [f32]
    ) = output_tile_row_impl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col_accumulate;
    use crate::kernels::test_util::pseudo_random;

    #[test]
    fn matches_im2col_convolution_on_odd_shapes() {
        // batch, c_in, height, width, c_out, padding
        for (n, &(batch, c_in, height, width, c_out, padding)) in [
            (1, 1, 1, 1, 1, 1),
            (1, 1, 3, 3, 1, 0),
            (1, 16, 32, 32, 16, 1),
            (2, 19, 23, 17, 21, 1),
            (2, 19, 23, 17, 21, 0),
            (1, 33, 45, 7, 16, 1),
            (3, 5, 13, 30, 40, 1),
            (1, 6, 8, 12, 5, 0),
            // Several blocks, one spanning two images.
            (2, 300, 35, 66, 200, 1),
        ]
        .iter()
        .enumerate()
        {
            let g = ConvGeometry {
                batch,
                c_in,
                height,
                width,
                c_out,
                kernel: 3,
                stride: 1,
                padding,
            };
            let out_len = batch * c_out * g.out_height() * g.out_width();
            let x = pseudo_random(batch * c_in * height * width, n as u32);
            let w = pseudo_random(c_out * c_in * 9, 40 + n as u32);
            let initial = pseudo_random(out_len, 80 + n as u32);
            let mut expected = initial.clone();
            im2col_accumulate(&x, &w, &g, &mut expected);
            let mut out = initial;
            conv3x3_accumulate(&x, &w, &g, &mut out);
            let max_diff = out
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(max_diff < 1e-4, "{g:?}: max abs diff {max_diff}");
        }
    }
}
