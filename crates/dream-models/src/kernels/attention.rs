//! Exact softmax attention that never holds more than a block of the score matrix: queries are
//! processed in blocks small enough that their scores `[block, kv_len]` stay in cache, with one
//! gemm for the scores, a vectorised softmax over them, and one gemm for the weighted values.
//! At SD 1.5's 64×64 latents a full score matrix is `[2·8, 4096, 4096]`, 1 GiB of f32.
//!
//! Inputs are strided views, so heads split off a `[batch, tokens, heads·dim]` projection need
//! no copy, and the output is written as `[batch, q_len, heads, v_dim]`, so merging the heads
//! back needs none either.

use rayon::prelude::*;

use super::math::{exp_accumulate, max_in_place};
use super::SharedMut;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionGeometry {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub v_dim: usize,
}

/// A `[batch, heads, tokens, channels]` tensor whose element `(b, h, t, c)` is
/// `data[b·strides[0] + h·strides[1] + t·strides[2] + c]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 3],
}

impl View<'_> {
    /// Panics unless every element of a `[batch, heads, tokens, channels]` view is in `data`.
    fn check(&self, what: &str, batch: usize, heads: usize, tokens: usize, channels: usize) {
        let [sb, sh, st] = self.strides;
        let last = (batch - 1) * sb + (heads - 1) * sh + (tokens - 1) * st + channels;
        assert!(
            last <= self.data.len(),
            "attention {what} view out of bounds"
        );
    }

    fn ptr(&self, b: usize, h: usize, t: usize) -> *const f32 {
        self.data[b * self.strides[0] + h * self.strides[1] + t * self.strides[2]..].as_ptr()
    }
}

/// Queries per block. The block's scores are kept transposed, `[kv_len, block]`, which lets
/// both gemm calls read `k` and `v` in place (a query block up to 128 wide needs no packing of
/// them) and vectorises the softmax across queries.
const QUERY_BLOCK: usize = 64;

/// `out = softmax(q·kᵀ·scale + mask)·v` per batch and head, written as
/// `[batch, q_len, heads, v_dim]`. `mask`, when given, is `[batch, heads, q_len, kv_len]` (a
/// view, so broadcast dimensions cost nothing): added to the scaled logits, `-∞` where a query
/// must not see a key, as CLIP's causal mask.
pub fn attention(
    q: View,
    k: View,
    v: View,
    mask: Option<View>,
    g: &AttentionGeometry,
    scale: f32,
    out: &mut [f32],
) {
    assert_eq!(
        out.len(),
        g.batch * g.q_len * g.heads * g.v_dim,
        "attention output size"
    );
    if out.is_empty() {
        return;
    }
    assert!(g.kv_len > 0, "attention over an empty key sequence");
    q.check("query", g.batch, g.heads, g.q_len, g.head_dim);
    k.check("key", g.batch, g.heads, g.kv_len, g.head_dim);
    v.check("value", g.batch, g.heads, g.kv_len, g.v_dim);
    if let Some(mask) = &mask {
        mask.check("mask", g.batch, g.heads, g.q_len, g.kv_len);
    }

    let blocks_per_head = g.q_len.div_ceil(QUERY_BLOCK);
    let out_row = g.heads * g.v_dim;
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..g.batch * g.heads * blocks_per_head)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, task| {
            let (bh, i) = (task / blocks_per_head, task % blocks_per_head);
            let (b, h) = (bh / g.heads, bh % g.heads);
            let q0 = i * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(g.q_len - q0);
            let Scratch {
                scores,
                max,
                sum,
                block_out,
            } = scratch;
            scores.resize(g.kv_len * rows, 0.0);
            block_out.resize(g.v_dim * rows, 0.0);
            // SAFETY: the views were bounds-checked above, the scratch buffers were sized for
            // this block, and the output rows `(b, q0..q0+rows, h)` of this task are written by
            // no other task and lie in `out`, whose size was checked.
            unsafe {
                // scoresᵀ[j, i] = scale · q[i]·k[j]
                gemm::gemm(
                    rows,
                    g.kv_len,
                    g.head_dim,
                    scores.as_mut_ptr(),
                    rows as isize,
                    1,
                    false,
                    q.ptr(b, h, q0),
                    1,
                    q.strides[2] as isize,
                    k.ptr(b, h, 0),
                    k.strides[2] as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                if let Some(mask) = &mask {
                    for r in 0..rows {
                        let mask_row = std::slice::from_raw_parts(mask.ptr(b, h, q0 + r), g.kv_len);
                        for (j, m) in mask_row.iter().enumerate() {
                            scores[j * rows + r] += m;
                        }
                    }
                }
                softmax_columns(scores, rows, max, sum);
                // block_outᵀ[c, i] = Σ_j e[i, j]·v[j, c]
                gemm::gemm(
                    rows,
                    g.v_dim,
                    g.kv_len,
                    block_out.as_mut_ptr(),
                    rows as isize,
                    1,
                    false,
                    scores.as_ptr(),
                    rows as isize,
                    1,
                    v.ptr(b, h, 0),
                    1,
                    v.strides[2] as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                // Normalising the `v_dim`-wide output rows is cheaper than the score rows.
                let dst = out_ptr
                    .get()
                    .add((b * g.q_len + q0) * out_row + h * g.v_dim);
                for (r, total) in sum.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(dst.add(r * out_row), g.v_dim);
                    let inv = 1.0 / total;
                    for (c, o) in row.iter_mut().enumerate() {
                        *o = block_out[c * rows + r] * inv;
                    }
                }
            }
        });
}

/// Per-thread buffers of one query block.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    block_out: Vec<f32>,
}

/// Softmax numerators of transposed scores `[kv_len, rows]`: each `x` becomes `e^(x − m)` for
/// the maximum `m` of its query's column, and `sum` receives the column sums.
fn softmax_columns(scores: &mut [f32], rows: usize, max: &mut Vec<f32>, sum: &mut Vec<f32>) {
    max.clear();
    max.resize(rows, f32::NEG_INFINITY);
    for key in scores.chunks_exact(rows) {
        max_in_place(max, key);
    }
    sum.clear();
    sum.resize(rows, 0.0);
    for key in scores.chunks_exact_mut(rows) {
        exp_accumulate(key, max, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::pseudo_random;

    fn naive(
        q: View,
        k: View,
        v: View,
        mask: Option<View>,
        g: &AttentionGeometry,
        scale: f32,
    ) -> Vec<f32> {
        let at = |x: &View, b: usize, h: usize, t: usize, c: usize| {
            x.data[b * x.strides[0] + h * x.strides[1] + t * x.strides[2] + c] as f64
        };
        let mut out = vec![0f32; g.batch * g.q_len * g.heads * g.v_dim];
        for b in 0..g.batch {
            for h in 0..g.heads {
                for i in 0..g.q_len {
                    let logits: Vec<f64> = (0..g.kv_len)
                        .map(|j| {
                            (0..g.head_dim)
                                .map(|c| at(&q, b, h, i, c) * at(&k, b, h, j, c))
                                .sum::<f64>()
                                * scale as f64
                                + mask.as_ref().map_or(0.0, |m| at(m, b, h, i, j))
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for c in 0..g.v_dim {
                        let o: f64 = (0..g.kv_len).map(|j| w[j] * at(&v, b, h, j, c)).sum();
                        out[((b * g.q_len + i) * g.heads + h) * g.v_dim + c] = (o / total) as f32;
                    }
                }
            }
        }
        out
    }

    /// Contiguous `[batch, heads, tokens, channels]` strides.
    fn bhtc(heads: usize, tokens: usize, channels: usize) -> [usize; 3] {
        [heads * tokens * channels, tokens * channels, channels]
    }

    /// `[batch, tokens, heads, channels]` memory seen as `[batch, heads, tokens, channels]`.
    fn bthc(heads: usize, tokens: usize, channels: usize) -> [usize; 3] {
        [tokens * heads * channels, channels, heads * channels]
    }

    #[test]
    fn matches_definition_on_odd_shapes_and_strides() {
        let cases = [
            (1, 1, 1, 1, 1, 1),
            (2, 3, 5, 7, 3, 2),
            (1, 2, 300, 77, 8, 5),
            (3, 1, 33, 1, 4, 4),
            (1, 2, 17, 1100, 6, 3),
        ];
        for (n, &(batch, heads, q_len, kv_len, head_dim, v_dim)) in cases.iter().enumerate() {
            let g = AttentionGeometry {
                batch,
                heads,
                q_len,
                kv_len,
                head_dim,
                v_dim,
            };
            let seed = 10 * n as u32;
            let q_data = pseudo_random(batch * heads * q_len * head_dim, seed);
            let k_data = pseudo_random(batch * heads * kv_len * head_dim, seed + 1);
            let v_data = pseudo_random(batch * heads * kv_len * v_dim, seed + 2);
            let q = View {
                data: &q_data,
                strides: bthc(heads, q_len, head_dim),
            };
            let k = View {
                data: &k_data,
                strides: bhtc(heads, kv_len, head_dim),
            };
            let v = View {
                data: &v_data,
                strides: bthc(heads, kv_len, v_dim),
            };
            // A causal mask (a key after the query is -∞) plus finite offsets that differ per
            // batch, shared by the heads (stride 0) as CLIP's.
            let mask_data: Vec<f32> = (0..batch * q_len * kv_len)
                .map(|e| {
                    let (i, j) = (e / kv_len % q_len, e % kv_len);
                    if j > i {
                        f32::NEG_INFINITY
                    } else {
                        (e % 5) as f32 * 0.3
                    }
                })
                .collect();
            let mask = View {
                data: &mask_data,
                strides: [q_len * kv_len, 0, kv_len],
            };
            // Large logits, to exercise the max subtraction.
            let scale = 3.0;
            for mask in [None, Some(mask)] {
                let mut out = vec![f32::NAN; g.batch * g.q_len * g.heads * g.v_dim];
                attention(q, k, v, mask, &g, scale, &mut out);
                let expected = naive(q, k, v, mask, &g, scale);
                let max_diff = out
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let masked = mask.is_some();
                assert!(
                    max_diff < 1e-5,
                    "{g:?}, mask {masked}: max abs diff {max_diff}"
                );
            }
        }
    }
}
