//! VAE tiling: decoding (and encoding) large images tile by tile, so that the VAE's memory stays
//! that of one tile whatever the image size. Tiles overlap and are cross-faded where they meet,
//! exactly as diffusers' `AutoencoderKL.enable_tiling()` does (`tiled_decode`,
//! `_tiled_encode`), so a tiled image equals diffusers' tiled image.

use candle_core::{Result, Tensor};

/// How the VAE is tiled, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    /// A tile's edge (diffusers' `tile_sample_min_size`, the VAE config's `sample_size`: 512
    /// for Stable Diffusion 1.x).
    pub tile_size: usize,
    /// The fraction of a tile shared with each neighbour (diffusers' `tile_overlap_factor`).
    pub overlap: f64,
    /// Only images wider or taller than this are tiled. Untiled decoding is what diffusers does
    /// by default, so smaller images decode exactly as there; past it the untiled VAE's
    /// activations dominate memory (a whole SD 1.5 generation at 1024×1024 peaks at 8.5 GiB
    /// untiled, 5.2 GiB tiled), while overlapping tiles cost time (about twice the decode).
    pub above: usize,
}

impl Default for VaeTiling {
    fn default() -> Self {
        VaeTiling {
            tile_size: 512,
            overlap: 0.25,
            above: 1024,
        }
    }
}

impl VaeTiling {
    /// Tiling for every image larger than a tile, as after diffusers' `enable_vae_tiling()`.
    pub fn always() -> Self {
        VaeTiling {
            above: 0,
            ..VaeTiling::default()
        }
    }

    /// Whether an image of `height`×`width` pixels is decoded in tiles.
    pub fn applies(&self, height: usize, width: usize) -> bool {
        height.max(width) > self.above.max(self.tile_size)
    }

    /// Runs `network` over overlapping `input_tile`-sized tiles of `input` `[B, C, H, W]` and
    /// assembles its outputs, which are `scale.0 / scale.1` times the size of their tiles.
    fn run(
        &self,
        input: &Tensor,
        scale: (usize, usize),
        input_tile: usize,
        mut network: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let output_tile = input_tile * scale.0 / scale.1;
        let stride = (input_tile as f64 * (1.0 - self.overlap)) as usize;
        let blend = (output_tile as f64 * self.overlap) as usize;
        let keep = output_tile - blend;
        if stride == 0 || keep == 0 {
            candle_core::bail!(
                "VAE tiling: an overlap of {} leaves nothing of a {input_tile}-pixel tile",
                self.overlap
            );
        }
        let (_, _, height, width) = input.dims4()?;
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for top in (0..height).step_by(stride) {
            let band = input.narrow(2, top, input_tile.min(height - top))?;
            let row = (0..width)
                .step_by(stride)
                .map(|left| network(&band.narrow(3, left, input_tile.min(width - left))?))
                .collect::<Result<Vec<_>>>()?;
            rows.push(row);
        }
        // Each tile is blended with its already-blended upper and left neighbours, then cropped
        // to the part no later tile overlaps.
        let mut kept_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut kept = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = cross_fade(&rows[i - 1][j], &tile, 2, blend)?;
                }
                if j > 0 {
                    tile = cross_fade(&rows[i][j - 1], &tile, 3, blend)?;
                }
                let (_, _, h, w) = tile.dims4()?;
                kept.push(tile.narrow(2, 0, keep.min(h))?.narrow(3, 0, keep.min(w))?);
                rows[i][j] = tile;
            }
            kept_rows.push(Tensor::cat(&kept, 3)?);
        }
        Tensor::cat(&kept_rows, 2)
    }

    /// Decodes latents `z` tile by tile with `decode` (latents → image, 8× larger per side for
    /// Stable Diffusion's VAE: `factor`).
    pub fn decode(
        &self,
        z: &Tensor,
        factor: usize,
        decode: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.run(z, (factor, 1), self.tile_size / factor, decode)
    }

    /// Encodes `image` tile by tile with `encode` (image → latent moments, `factor`× smaller per
    /// side). The moments are blended, as diffusers does, before the posterior is formed.
    pub fn encode(
        &self,
        image: &Tensor,
        factor: usize,
        encode: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.run(image, (1, factor), self.tile_size, encode)
    }
}

/// `next` with its first `extent` rows (`dim` 2) or columns (`dim` 3) faded in from the last
/// ones of `previous`: weight `k/extent` on `next`'s k-th line (diffusers' `blend_v`/`blend_h`).
fn cross_fade(previous: &Tensor, next: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let extent = extent.min(previous.dim(dim)?).min(next.dim(dim)?);
    if extent == 0 {
        return Ok(next.clone());
    }
    let ramp: Vec<f32> = (0..extent)
        .map(|k| (k as f64 / extent as f64) as f32)
        .collect();
    let fade_out: Vec<f32> = (0..extent)
        .map(|k| (1.0 - k as f64 / extent as f64) as f32)
        .collect();
    let mut shape = [1usize; 4];
    shape[dim] = extent;
    let device = next.device();
    let ramp = Tensor::from_vec(ramp, &shape[..], device)?.to_dtype(next.dtype())?;
    let fade_out = Tensor::from_vec(fade_out, &shape[..], device)?.to_dtype(next.dtype())?;
    let tail = previous.narrow(dim, previous.dim(dim)? - extent, extent)?;
    let head = next.narrow(dim, 0, extent)?;
    let blended = (tail.broadcast_mul(&fade_out)? + head.broadcast_mul(&ramp)?)?;
    let rest = next.narrow(dim, extent, next.dim(dim)? - extent)?;
    Tensor::cat(&[&blended, &rest], dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn tiling_an_identity_reassembles_the_input() -> Result<()> {
        // Overlapping tiles of the same image agree where they overlap, so blending them changes
        // nothing: a check of the tile bookkeeping, edges and narrow last tiles included.
        let input =
            Tensor::arange(0f32, 3.0 * 23.0 * 17.0, &Device::Cpu)?.reshape((1, 3, 23, 17))?;
        let tiling = VaeTiling {
            tile_size: 8,
            overlap: 0.25,
            above: 0,
        };
        let out = tiling.run(&input, (1, 1), 8, |tile| Ok(tile.clone()))?;
        let diff = (out - &input)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-3, "max abs diff {diff}");
        Ok(())
    }

    #[test]
    fn tiling_applies_above_the_threshold_and_a_tile() {
        let auto = VaeTiling::default();
        assert!(!auto.applies(1024, 1024));
        assert!(auto.applies(512, 1088));
        let always = VaeTiling::always();
        assert!(!always.applies(512, 512));
        assert!(always.applies(512, 520));
    }
}
