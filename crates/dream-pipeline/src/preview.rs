//! Fast previews of sampling in progress: the x₀ estimate of a step as a small RGB image
//! without running the VAE, and InvokeAI's `--save_intermediates`.
//!
//! A1111's "Approx cheap" (`sd_vae_approx.cheap_approximation`) maps each latent pixel to
//! RGB with one fixed linear map fitted to SD 1.x/2.x's VAE, giving an image of the latents'
//! size (1/8 of the final one).

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::image::RgbImage;
use crate::sampling::StepInfo;
use crate::DreamError;

/// A1111's "Approx cheap" factors for SD 1.x/2.x latents: row `l` is latent channel `l`'s
/// contribution to (R, G, B) in [-1, 1].
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// A1111's "Approx cheap" preview of the first image of `[B, 4, h, w]` latents: an h × w
/// image, `clamp(rgb / 2 + 0.5, 0, 1) × 255` truncated as A1111's `astype(np.uint8)` does.
pub fn approx_cheap(latents: &Tensor) -> Result<RgbImage, DreamError> {
    let (_, channels, height, width) = latents.dims4()?;
    if channels != LATENT_RGB.len() {
        return Err(DreamError::NotSupported(format!(
            "previews of {channels}-channel latents"
        )));
    }
    let values = latents
        .get(0)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = height * width;
    let mut pixels = Vec::with_capacity(plane * 3);
    for i in 0..plane {
        let rgb = LATENT_RGB
            .iter()
            .enumerate()
            .fold([0f32; 3], |mut rgb, (l, factors)| {
                for (sum, factor) in rgb.iter_mut().zip(factors) {
                    *sum += values[l * plane + i] * factor;
                }
                rgb
            });
        for value in rgb {
            pixels.push(((value * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0) as u8);
        }
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// InvokeAI's `--save_intermediates N`: on every `every`-th step (counting from 0) and the last
/// one, writes the step's x₀ estimate (its latents when the sampler has none) as
/// `dir/{step:04}.png` through [`approx_cheap`]. Returns the path written, if any.
pub fn save_intermediate(
    info: &StepInfo<'_>,
    every: usize,
    dir: &Path,
) -> Result<Option<PathBuf>, DreamError> {
    let due = every > 0 && (info.step.is_multiple_of(every) || info.step + 1 == info.total_steps);
    if !due {
        return Ok(None);
    }
    std::fs::create_dir_all(dir).map_err(|source| DreamError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(format!("{:04}.png", info.step));
    approx_cheap(info.denoised.unwrap_or(info.latents))?.save_png(&path, &[])?;
    Ok(Some(path))
}
