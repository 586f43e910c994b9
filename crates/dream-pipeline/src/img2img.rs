//! Image to image (SDEdit, Meng et al. 2021): encode the init image, noise its latents to the
//! strength's starting step, and denoise the remaining steps.
//!
//! A request is a [`Txt2Img`](crate::Txt2Img) with `init` set; `generate` runs it. Its
//! `strength_rule` says how many steps run: by default diffusers' and InvokeAI's
//! ([`StrengthRule::InvokeAi`]: of a `steps`-step schedule the last `int(steps × strength)`),
//! or A1111's ([`StrengthRule::A1111`]: one more, at strength capped at 0.999). The seed's
//! generator draws the VAE posterior sample first and the latent noise second, as diffusers'
//! img2img pipeline does.

use std::path::Path;

use candle_core::Tensor;
use dream_core::rng::TorchGenerator;

use crate::image::RgbImage;
use crate::model::StableDiffusion;
use crate::sampling::{strength_steps, StrengthRule, StrengthSteps};
use crate::DreamError;

/// The image an img2img request starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// Its size must be the request's width × height.
    pub image: RgbImage,
    /// How much of the image is repainted: 0 keeps it, 1 starts from pure noise.
    pub strength: f64,
}

impl InitImage {
    /// Reads the init image from a PNG, JPEG, WebP or BMP file (see [`RgbImage::open`]).
    pub fn open(path: impl AsRef<Path>, strength: f64) -> Result<Self, DreamError> {
        Ok(InitImage {
            image: RgbImage::open(path.as_ref())?,
            strength,
        })
    }

    /// The steps that run of a `steps`-step request under `rule`.
    pub fn steps(&self, steps: usize, rule: StrengthRule) -> Result<StrengthSteps, DreamError> {
        let steps = strength_steps(steps, self.strength, rule)?;
        if rule == StrengthRule::FixedSteps {
            // It stretches the schedule, which only hires fix's second pass builds.
            return Err(DreamError::NotSupported(
                "img2img with a fixed step count (A1111's img2img_fix_steps)".into(),
            ));
        }
        Ok(steps)
    }

    pub(crate) fn validate(&self, width: usize, height: usize) -> Result<(), DreamError> {
        if (self.image.width, self.image.height) != (width, height) {
            return Err(DreamError::NotSupported(format!(
                "resizing init images ({}x{} to {width}x{height})",
                self.image.width, self.image.height
            )));
        }
        Ok(())
    }
}

/// The encoded init image and where sampling starts.
pub(crate) struct Start {
    /// The posterior sample of the init image, × the VAE's scaling factor.
    pub latents: Tensor,
    /// The first step of the schedule that runs.
    pub first_step: usize,
}

impl StableDiffusion {
    /// The VAE posterior sample of `image`, × the scaling factor, as diffusers'
    /// `retrieve_latents(vae.encode(x), generator)`: mean + std·n with n drawn from `generator`.
    pub fn encode_image(
        &self,
        image: &RgbImage,
        generator: &mut TorchGenerator,
    ) -> Result<Tensor, DreamError> {
        self.encode_pixels(&self.image_tensor(image)?, generator)
    }

    /// `image` as the VAE's input: `[1, 3, H, W]` in [-1, 1].
    pub(crate) fn image_tensor(&self, image: &RgbImage) -> Result<Tensor, DreamError> {
        Ok(Tensor::from_vec(
            image.pixels.clone(),
            (image.height, image.width, 3),
            &self.device,
        )?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .to_dtype(candle_core::DType::F32)?
        .affine(1.0 / 127.5, -1.0)?)
    }

    /// The posterior sample of VAE input `pixels` (`[1, 3, H, W]` in [-1, 1]), × the scaling
    /// factor.
    pub(crate) fn encode_pixels(
        &self,
        pixels: &Tensor,
        generator: &mut TorchGenerator,
    ) -> Result<Tensor, DreamError> {
        let (_, _, height, width) = pixels.dims4()?;
        let posterior = self.encode(pixels)?;
        let noise = self.latent_noise(generator, width, height)?;
        Ok((posterior.sample(&noise)? * self.vae_config.scaling_factor)?)
    }

    /// Encodes the request's init image; the posterior draw comes first from the seed's
    /// generator.
    pub(crate) fn img2img_start(
        &self,
        init: &InitImage,
        steps: usize,
        rule: StrengthRule,
        generator: &mut TorchGenerator,
    ) -> Result<Start, DreamError> {
        let first_step = init.steps(steps, rule)?.first_step;
        Ok(Start {
            latents: self.encode_image(&init.image, generator)?,
            first_step,
        })
    }
}
