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

/// Positions in a transformed 4×4 tile.
const POSITIONS: usize = 16;

/// Target size of one block's transformed tiles, input and output together (floats, 16 MiB).
const BLOCK_FLOATS: usize = 1 << 22;

/// Fewest tiles in one block (gemm width) for the products to run at full speed.
const MIN_BLOCK_TILES: usize = 256;

/// Whether `g` is a convolution this algorithm computes: 3×3, stride 1, padding 1.
fn supports(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == 1
}

/// Whether the Winograd path is worth taking for `g`: a supported geometry with enough tiles for
/// efficient matrix products and enough channels for the transforms to be negligible.
pub fn applies(g: &ConvGeometry) -> bool {
    let tiles = g.batch * g.height.div_ceil(2) * g.width.div_ceil(2);
    supports(g) && tiles >= MIN_BLOCK_TILES && g.c_in >= 16 && g.c_out >= 16
}

/// `out += conv2d(x, weight)` for a 3×3, stride-1, padding-1 geometry; layouts as
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
        g.batch * c_out * g.height * g.width,
        "conv output size"
    );
    let (tile_rows, tile_cols) = (g.height.div_ceil(2), g.width.div_ceil(2));

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

/// `U[p][co][ci] = (G g Gᵀ)[p]` with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let pairs = c_out * c_in;
    let mut u = vec![0f32; POSITIONS * pairs];
    // Position-major output, filled one kernel at a time: parallel over output channels.
    let u_ptr = SharedMut(u.as_mut_ptr());
    weight
        .par_chunks_exact(c_in * 9)
        .enumerate()
        .for_each(|(co, kernels)| {
            for (ci, g) in kernels.chunks_exact(9).enumerate() {
                // Rows of G·g, then G applied to each row.
                let mut gg = [[0f32; 3]; 4];
                for c in 0..3 {
                    let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                    gg[0][c] = g0;
                    gg[1][c] = 0.5 * (g0 + g1 + g2);
                    gg[2][c] = 0.5 * (g0 - g1 + g2);
                    gg[3][c] = g2;
                }
                for (a, [h0, h1, h2]) in gg.iter().enumerate() {
                    let row = [*h0, 0.5 * (h0 + h1 + h2), 0.5 * (h0 - h1 + h2), *h2];
                    for (b, value) in row.into_iter().enumerate() {
                        // SAFETY: each (co, ci) pair writes its own 16 elements, in bounds.
                        unsafe {
                            *u_ptr.get().add((a * 4 + b) * pairs + co * c_in + ci) = value;
                        }
                    }
                }
            }
        });
    u
}

/// `V[ci][p][t] = (Bᵀ d B)[p]` for the tiles of tile rows `row0..row0+rows` (counted across the
/// batch), with `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. Tile `(i, j)`
/// reads input rows `2i−1 .. 2i+2` and columns `2j−1 .. 2j+2`, zero outside the image.
fn transform_input(x: &[f32], g: &ConvGeometry, row0: usize, rows: usize, v: &mut [f32]) {
    let (h, w) = (g.height, g.width);
    let (tile_rows, tile_cols) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = rows * tile_cols;
    // Padded input columns: index c holds input column c − 1.
    let padded = 2 * tile_cols + 2;
    v.par_chunks_exact_mut(POSITIONS * tiles)
        .enumerate()
        .for_each_init(
            || vec![0f32; 5 * padded + POSITIONS * tile_cols],
            |scratch, (ci, v)| {
                let (padded_rows, rest) = scratch.split_at_mut(4 * padded);
                let (combo, transformed) = rest.split_at_mut(padded);
                for r in 0..rows {
                    let (b, i) = ((row0 + r) / tile_rows, (row0 + r) % tile_rows);
                    let channel = &x[(b * g.c_in + ci) * h * w..][..h * w];
                    for (k, dst) in padded_rows.chunks_exact_mut(padded).enumerate() {
                        dst.fill(0.0);
                        let y = (2 * i + k) as isize - 1;
                        if (0..h as isize).contains(&y) {
                            dst[1..=w].copy_from_slice(&channel[y as usize * w..][..w]);
                        }
                    }
                    input_tile_row(padded_rows, combo, transformed);
                    for (p, values) in transformed.chunks_exact(tile_cols).enumerate() {
                        v[p * tiles + r * tile_cols..][..tile_cols].copy_from_slice(values);
                    }
                }
            },
        );
}

/// The 16 transformed values of every tile in one tile row: `rows` holds the four padded input
/// rows the tiles read (`2·tile_cols + 2` floats each), `combo` is scratch of one padded row, and
/// `out` receives `[16][tile_cols]`.
#[inline(always)]
fn input_tile_row_impl(rows: &[f32], combo: &mut [f32], out: &mut [f32]) {
    let padded = combo.len();
    let tile_cols = out.len() / POSITIONS;
    let (p0, rest) = rows.split_at(padded);
    let (p1, rest) = rest.split_at(padded);
    let (p2, p3) = rest.split_at(padded);
    for (a, out) in out.chunks_exact_mut(4 * tile_cols).enumerate() {
        // Row `a` of Bᵀ d, for all columns at once.
        let (x, y, sign) = match a {
            0 => (p0, p2, -1.0),
            1 => (p1, p2, 1.0),
            2 => (p2, p1, -1.0),
            _ => (p1, p3, -1.0),
        };
        for ((c, x), y) in combo.iter_mut().zip(x).zip(y) {
            *c = y.mul_add(sign, *x);
        }
        // Times B: the same combinations of columns 2j .. 2j+3.
        let (o0, rest) = out.split_at_mut(tile_cols);
        let (o1, rest) = rest.split_at_mut(tile_cols);
        let (o2, o3) = rest.split_at_mut(tile_cols);
        for j in 0..tile_cols {
            let t = &combo[2 * j..2 * j + 4];
            o0[j] = t[0] - t[2];
            o1[j] = t[1] + t[2];
            o2[j] = t[2] - t[1];
            o3[j] = t[1] - t[3];
        }
    }
}

dispatch! {
    fn input_tile_row(rows: &[f32], combo: &mut [f32], out: &mut [f32]) = input_tile_row_impl
}

/// `M[p] = U[p] · V[p]` for the 16 positions, one single-threaded gemm per position in
/// parallel; `U` is `[p][co][ci]`, `V` `[ci][p][t]` and `M` `[co][p][t]`.
fn multiply(u: &[f32], v: &[f32], m: &mut [f32], c_out: usize, c_in: usize, tiles: usize) {
    let m_ptr = SharedMut(m.as_mut_ptr());
    u.par_chunks_exact(c_out * c_in)
        .enumerate()
        .for_each(|(p, u)| {
            // SAFETY: `u` is `c_out × c_in` row-major; position `p` of `v` is `c_in × tiles` with
            // rows `16·tiles` apart, and of `m` `c_out × tiles` likewise, which only this task
            // writes; both lie in their buffers, whose sizes the caller set.
            unsafe {
                gemm::gemm(
                    c_out,
                    tiles,
                    c_in,
                    m_ptr.get().add(p * tiles),
                    1,
                    (POSITIONS * tiles) as isize,
                    false,
                    u.as_ptr(),
                    1,
                    c_in as isize,
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
    let (h, w) = (g.height, g.width);
    let (tile_rows, tile_cols) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = rows * tile_cols;
    let out_ptr = SharedMut(out.as_mut_ptr());
    m.par_chunks_exact(POSITIONS * tiles)
        .enumerate()
        .for_each_init(
            || vec![0f32; 4 * tile_cols],
            |pixels, (co, m)| {
                for r in 0..rows {
                    let (b, i) = ((row0 + r) / tile_rows, (row0 + r) % tile_rows);
                    // The two output rows of this tile row, `2·tile_cols` wide.
                    output_tile_row(m, tiles, r * tile_cols, pixels);
                    let plane = (b * g.c_out + co) * h * w;
                    for (dy, values) in pixels.chunks_exact(2 * tile_cols).enumerate() {
                        let y = 2 * i + dy;
                        if y < h {
                            // SAFETY: each output channel's plane is written by one task only.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(out_ptr.get().add(plane + y * w), w)
                            };
                            add(dst, &values[..w]);
                        }
                    }
                }
            },
        );
}

/// The two output rows `[2][2·tile_cols]` of the tiles `first..first+tile_cols` of `m`
/// (`[16][tiles]` for one output channel).
#[inline(always)]
fn output_tile_row_impl(m: &[f32], tiles: usize, first: usize, pixels: &mut [f32]) {
    let tile_cols = pixels.len() / 4;
    let rows: [&[f32]; POSITIONS] = std::array::from_fn(|p| &m[p * tiles + first..][..tile_cols]);
    let (top, bottom) = pixels.split_at_mut(2 * tile_cols);
    for j in 0..tile_cols {
        // Column c of Aᵀ M: rows 0+1+2 and 1−2−3 of the tile's 4×4 values.
        let column = |c: usize| {
            let (m0, m1, m2, m3) = (rows[c][j], rows[4 + c][j], rows[8 + c][j], rows[12 + c][j]);
            [m0 + m1 + m2, m1 - m2 - m3]
        };
        let [c0, c1, c2, c3] = [column(0), column(1), column(2), column(3)];
        // Times A: columns 0+1+2 and 1−2−3.
        top[2 * j] = c0[0] + c1[0] + c2[0];
        top[2 * j + 1] = c1[0] - c2[0] - c3[0];
        bottom[2 * j] = c0[1] + c1[1] + c2[1];
        bottom[2 * j + 1] = c1[1] - c2[1] - c3[1];
    }
}

#[inline(always)]
fn add_impl(dst: &mut [f32], values: &[f32]) {
    for (d, v) in dst.iter_mut().zip(values) {
        *d += v;
    }
}

dispatch! {
    fn output_tile_row(m: &[f32], tiles: usize, first: usize, pixels: &mut [f32]) = output_tile_row_impl
}

dispatch! {
    fn add(dst: &mut [f32], values: &[f32]) = add_impl
}

/// A pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// A method, so that closures capture the `Sync` wrapper rather than the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: users write disjoint elements (see each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col_accumulate;
    use crate::kernels::test_util::pseudo_random;

    #[test]
    fn matches_im2col_convolution_on_odd_shapes() {
        // batch, c_in, height, width, c_out
        for (n, &(batch, c_in, height, width, c_out)) in [
            (1, 1, 1, 1, 1),
            (1, 16, 32, 32, 16),
            (2, 19, 23, 17, 21),
            (1, 33, 45, 7, 16),
            (3, 5, 13, 30, 40),
            // Several blocks, one spanning two images.
            (2, 300, 35, 66, 200),
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
                padding: 1,
            };
            let x = pseudo_random(batch * c_in * height * width, n as u32);
            let w = pseudo_random(c_out * c_in * 9, 40 + n as u32);
            let initial = pseudo_random(batch * c_out * height * width, 80 + n as u32);
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
