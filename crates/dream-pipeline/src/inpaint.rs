//! Inpainting: img2img that repaints only the masked part of the init image.
//!
//! A request is a [`Txt2Img`] with `init` and `inpaint` set. Two kinds of model:
//! - a 9-channel inpainting UNet sees, besides the latents, the mask at latent resolution and
//!   the latents of the init image with the masked part blanked out, as diffusers'
//!   `StableDiffusionInpaintPipeline` feeds it (same draws from the seed's generator);
//! - an ordinary 4-channel UNet repaints freely, and every model call has its estimate of the
//!   clean latents outside the mask replaced by the init image's latents (A1111's
//!   `denoised = init·mask + nmask·denoised`), which works for every sampler.
//!
//! Either way the decoded image is pasted over the original through the blurred mask, so that
//! pixels outside it are the original's exactly. "Only masked" (A1111's inpaint at full
//! resolution) crops around the mask, renders the crop at the request's size, and pastes it
//! back.

use std::str::FromStr;

use candle_core::Tensor;
use dream_core::rng::TorchGenerator;
use dream_core::schedule::{NoiseSchedule, PredictionType};

use crate::image::RgbImage;
use crate::img2img::{InitImage, Start};
use crate::mask::{gaussian_blur, Mask, Rect};
use crate::model::StableDiffusion;
use crate::resize::resize_lanczos;
use crate::sampling::{Predictor, StepInfo};
use crate::txt2img::{Generated, Txt2Img};
use crate::DreamError;

/// What the masked area holds before sampling (A1111's "Masked content").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskedContent {
    /// The surrounding colours, blurred into the hole ([`fill`]).
    Fill,
    /// The init image as it is.
    Original,
    /// The seed's noise in place of the init latents.
    LatentNoise,
    /// Zero latents.
    LatentNothing,
}

impl FromStr for MaskedContent {
    type Err = DreamError;

    fn from_str(name: &str) -> Result<Self, DreamError> {
        match name.to_ascii_lowercase().replace(['_', '-'], " ").as_str() {
            "fill" => Ok(MaskedContent::Fill),
            "original" => Ok(MaskedContent::Original),
            "latent noise" => Ok(MaskedContent::LatentNoise),
            "latent nothing" => Ok(MaskedContent::LatentNothing),
            _ => Err(DreamError::InvalidRequest(format!(
                "unknown masked content {name:?}: expected fill, original, latent noise or \
                 latent nothing"
            ))),
        }
    }
}

/// How an img2img request inpaints.
#[derive(Debug, Clone, PartialEq)]
pub struct Inpaint {
    /// At the init image's size: 1 repaints, 0 keeps.
    pub mask: Mask,
    /// A1111's "Mask blur": the Gaussian radius in pixels by which the mask's edge is softened
    /// before it is used (A1111's default 4).
    pub mask_blur: f64,
    pub masked_content: MaskedContent,
    /// InvokeAI's `-r/--inpaint_replace`, 0 to 1: that share of the init latents under the mask
    /// is replaced with fresh noise before sampling.
    pub inpaint_replace: f64,
    /// A1111's "Only masked" with this padding in pixels: the area around the mask is cropped,
    /// rendered at the request's width × height, and pasted back. `None` renders the whole
    /// image.
    pub only_masked_padding: Option<usize>,
}

impl Inpaint {
    /// A1111's defaults: mask blur 4, the original content under the mask, whole picture.
    pub fn new(mask: Mask) -> Self {
        Inpaint {
            mask,
            mask_blur: 4.0,
            masked_content: MaskedContent::Original,
            inpaint_replace: 0.0,
            only_masked_padding: None,
        }
    }

    pub(crate) fn validate(&self, init: &InitImage) -> Result<(), DreamError> {
        let invalid = |message: String| Err(DreamError::InvalidRequest(message));
        if (self.mask.width, self.mask.height) != (init.image.width, init.image.height) {
            return invalid(format!(
                "the mask is {}x{} but the init image is {}x{}",
                self.mask.width, self.mask.height, init.image.width, init.image.height
            ));
        }
        if self.mask.values.len() != self.mask.width * self.mask.height {
            return invalid("the mask's values do not fill its width × height".into());
        }
        if !(self.mask_blur.is_finite() && self.mask_blur >= 0.0) {
            return invalid(format!(
                "mask blur must be a number of at least 0, got {}",
                self.mask_blur
            ));
        }
        if !(0.0..=1.0).contains(&self.inpaint_replace) {
            return invalid(format!(
                "inpaint_replace must be between 0 and 1, got {}",
                self.inpaint_replace
            ));
        }
        Ok(())
    }

    /// The mask as sampling and paste-back use it: blurred by `mask_blur`.
    fn blurred(&self) -> Mask {
        self.mask.blurred(self.mask_blur)
    }
}

/// The inpainting state of one generation.
pub(crate) struct Inpainting {
    /// The init image as given, for the paste-back.
    original: RgbImage,
    /// The blurred mask: how much of the generated image each pixel takes.
    overlay: Mask,
    model: ModelInput,
}

enum ModelInput {
    /// 9-channel UNets: the mask and the masked image's latents, `[1, 5, h, w]`, appended to
    /// the latents of every call.
    Conditioning(Tensor),
    /// 4-channel UNets: the clean latents outside the mask come from the init image.
    KnownLatents {
        init: Tensor,
        /// 1 where repainted, at latent resolution.
        mask: Tensor,
        schedule: NoiseSchedule,
        prediction: PredictionType,
    },
}

impl StableDiffusion {
    fn is_inpainting_model(&self) -> bool {
        self.unet_in_channels == 2 * self.latent_channels() + 1
    }

    /// Where an img2img or inpainting request starts: the init latents (the seed generator's
    /// first draw is the VAE posterior sample), or `None` for a 9-channel model at strength 1,
    /// which starts from pure noise and, as diffusers, encodes no init image for it. Masked
    /// content "fill" fills the hole before encoding.
    pub(crate) fn request_start(
        &self,
        request: &Txt2Img,
        generator: &mut TorchGenerator,
    ) -> Result<Option<Start>, DreamError> {
        let Some(init) = &request.init else {
            return Ok(None);
        };
        let Some(inpaint) = &request.inpaint else {
            return Ok(Some(self.img2img_start(
                init,
                request.steps,
                request.strength_rule,
                generator,
            )?));
        };
        if self.is_inpainting_model() && init.strength == 1.0 {
            return Ok(None);
        }
        let filled;
        let init = match inpaint.masked_content {
            MaskedContent::Fill => {
                filled = InitImage {
                    image: fill(&init.image, &inpaint.blurred()),
                    strength: init.strength,
                };
                &filled
            }
            _ => init,
        };
        Ok(Some(self.img2img_start(
            init,
            request.steps,
            request.strength_rule,
            generator,
        )?))
    }

    /// Prepares inpainting after the seed's noise is drawn: a 9-channel model's masked-image
    /// latents (the generator's next draw, as in diffusers), the masked content and
    /// `inpaint_replace` (fresh noise, drawn last) applied to the start latents.
    pub(crate) fn inpainting(
        &self,
        request: &Txt2Img,
        start: Option<&mut Start>,
        noise: &Tensor,
        generator: &mut TorchGenerator,
    ) -> Result<Option<Inpainting>, DreamError> {
        let (Some(init), Some(inpaint)) = (&request.init, &request.inpaint) else {
            return Ok(None);
        };
        let overlay = inpaint.blurred();
        let model = if self.is_inpainting_model() {
            let mask = overlay.binarized();
            let latent_mask = mask.latent_nearest(&self.device)?;
            let masked = self.masked_image_latents(&init.image, &mask, generator)?;
            ModelInput::Conditioning(Tensor::cat(&[&latent_mask, &masked], 1)?)
        } else {
            let Some(start) = &start else {
                return Err(DreamError::InvalidRequest(
                    "inpainting needs the init image's latents".into(),
                ));
            };
            ModelInput::KnownLatents {
                init: start.latents.clone(),
                mask: overlay.latent_rounded(&self.device)?,
                schedule: NoiseSchedule::new(&self.scheduler)?,
                prediction: self.scheduler.prediction_type,
            }
        };
        if let Some(start) = start {
            let repaint = match &model {
                ModelInput::Conditioning(extra) => extra.narrow(1, 0, 1)?,
                ModelInput::KnownLatents { mask, .. } => mask.clone(),
            };
            let replaced = match inpaint.masked_content {
                MaskedContent::LatentNoise => Some(noise.clone()),
                MaskedContent::LatentNothing => Some(noise.zeros_like()?),
                MaskedContent::Fill | MaskedContent::Original => None,
            };
            if let Some(replaced) = replaced {
                start.latents = blend(&start.latents, &replaced, &repaint)?;
            }
            if inpaint.inpaint_replace > 0.0 {
                let fresh = self.latent_noise(generator, request.width, request.height)?;
                let mixed = ((&start.latents * (1.0 - inpaint.inpaint_replace))?
                    + (fresh * inpaint.inpaint_replace)?)?;
                start.latents = blend(&start.latents, &mixed, &repaint)?;
            }
        }
        Ok(Some(Inpainting {
            original: init.image.clone(),
            overlay,
            model,
        }))
    }

    /// diffusers' `masked_image_latents`: the init image in [-1, 1] with the masked pixels set
    /// to 0, encoded (a posterior sample from `generator`) and scaled.
    fn masked_image_latents(
        &self,
        image: &RgbImage,
        mask: &Mask,
        generator: &mut TorchGenerator,
    ) -> Result<Tensor, DreamError> {
        let pixels = self.image_tensor(image)?;
        let keep: Vec<f32> = mask.values.iter().map(|&m| 1.0 - m).collect();
        let keep = Tensor::from_vec(keep, (1, 1, image.height, image.width), &self.device)?;
        self.encode_pixels(&pixels.broadcast_mul(&keep)?, generator)
    }
}

/// `a` where `mask` is 0, `b` where it is 1.
fn blend(a: &Tensor, b: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    a.broadcast_mul(&mask.affine(-1.0, 1.0)?)? + b.broadcast_mul(mask)?
}

impl Inpainting {
    /// The model inpainting runs: `inner` (the guided UNet) with the mask applied.
    pub(crate) fn predictor<'a>(&'a self, inner: &'a mut dyn Predictor) -> impl Predictor + 'a {
        InpaintPredictor {
            inner,
            inpainting: self,
        }
    }

    /// The final latents: outside the mask, the init latents (A1111 blends them once more
    /// after sampling, which removes the last step's leftover noise there).
    pub(crate) fn final_latents(&self, latents: Tensor) -> Result<Tensor, DreamError> {
        Ok(match &self.model {
            ModelInput::KnownLatents { init, mask, .. } => blend(init, &latents, mask)?,
            ModelInput::Conditioning(_) => latents,
        })
    }

    /// The generated image over the original through the blurred mask.
    pub(crate) fn paste_back(&self, generated: &RgbImage) -> RgbImage {
        paste(&self.original, generated, &self.overlay)
    }
}

struct InpaintPredictor<'a> {
    inner: &'a mut dyn Predictor,
    inpainting: &'a Inpainting,
}

impl Predictor for InpaintPredictor<'_> {
    /// Latents x = α·x₀ + s·n at timestep t (α² + s² = 1), as both the k-diffusion and the
    /// DDPM-family samplers hand them over.
    fn predict(&mut self, latents: &Tensor, timestep: f64) -> candle_core::Result<Tensor> {
        match &self.inpainting.model {
            ModelInput::Conditioning(extra) => self
                .inner
                .predict(&Tensor::cat(&[latents, extra], 1)?, timestep),
            ModelInput::KnownLatents {
                init,
                mask,
                schedule,
                prediction,
            } => {
                let output = self.inner.predict(latents, timestep)?;
                // The ε that makes the x₀ estimate the init latents: (x − α·x₀)/s.
                let sigma = schedule.t_to_sigma(timestep);
                let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
                let known_eps = ((latents - (init * alpha)?)? / (sigma * alpha))?;
                let known = match prediction {
                    PredictionType::Epsilon => known_eps,
                    // v = α·ε − s·x₀ for that ε and x₀ = the init latents.
                    PredictionType::VPrediction => {
                        ((known_eps * alpha)? - (init * (sigma * alpha))?)?
                    }
                };
                blend(&known, &output, mask)
            }
        }
    }
}

/// `generated` over `original`, each pixel taking `mask` of the generated one, rounded. Where
/// the mask is 0 the original pixel stays exactly.
pub fn paste(original: &RgbImage, generated: &RgbImage, mask: &Mask) -> RgbImage {
    let pixels = original
        .pixels
        .iter()
        .zip(&generated.pixels)
        .enumerate()
        .map(|(i, (&o, &g))| {
            let m = mask.values[i / 3];
            if m <= 0.0 {
                o
            } else {
                (o as f32 * (1.0 - m) + g as f32 * m)
                    .round()
                    .clamp(0.0, 255.0) as u8
            }
        })
        .collect();
    RgbImage {
        pixels,
        ..original.clone()
    }
}

/// A1111's masked content "fill": the kept pixels blurred ever less (radii 256 down to 0) and
/// laid over each other, so the hole takes the colours around it and the kept pixels stay.
pub fn fill(image: &RgbImage, mask: &Mask) -> RgbImage {
    const PASSES: [(f64, usize); 6] = [
        (256.0, 1),
        (64.0, 1),
        (16.0, 2),
        (4.0, 4),
        (2.0, 2),
        (0.0, 1),
    ];
    let (width, height) = (image.width, image.height);
    // Premultiplied RGBA of the kept pixels.
    let known: Vec<f32> = image
        .pixels
        .chunks_exact(3)
        .zip(&mask.values)
        .flat_map(|(p, &m)| {
            let keep = 1.0 - m;
            [
                p[0] as f32 * keep,
                p[1] as f32 * keep,
                p[2] as f32 * keep,
                keep,
            ]
        })
        .collect();
    let mut canvas = vec![0f32; known.len()];
    for (radius, repeats) in PASSES {
        let blurred = gaussian_blur(&known, width, height, 4, radius);
        for _ in 0..repeats {
            for (c, b) in canvas.chunks_exact_mut(4).zip(blurred.chunks_exact(4)) {
                let under = 1.0 - b[3];
                for k in 0..4 {
                    c[k] = b[k] + c[k] * under;
                }
            }
        }
    }
    let pixels = canvas
        .chunks_exact(4)
        .flat_map(|c| {
            let alpha = c[3].max(f32::MIN_POSITIVE);
            [0, 1, 2].map(|k| (c[k] / alpha).round().clamp(0.0, 255.0) as u8)
        })
        .collect();
    RgbImage {
        width,
        height,
        pixels,
    }
}

impl StableDiffusion {
    /// A1111's "Only masked": renders the area around the mask (grown by the padding, then to
    /// the request's aspect ratio) at the request's width × height and pastes it back into the
    /// init image, which may have any size.
    pub(crate) fn generate_only_masked(
        &self,
        request: &Txt2Img,
        padding: usize,
        progress: &mut dyn FnMut(StepInfo<'_>),
    ) -> Result<Generated, DreamError> {
        let (Some(init), Some(inpaint)) = (&request.init, &request.inpaint) else {
            return Err(DreamError::InvalidRequest(
                "only masked needs an init image and a mask".into(),
            ));
        };
        inpaint.validate(init)?;
        let overlay = inpaint.blurred();
        let Some(bounds) = overlay.bounds() else {
            return Err(DreamError::InvalidRequest(
                "the mask repaints nothing".into(),
            ));
        };
        let rect = crop_region(
            bounds,
            padding,
            (request.width, request.height),
            (init.image.width, init.image.height),
        );
        let mut sub = request.clone();
        sub.init = Some(InitImage {
            image: resize_lanczos(&crop(&init.image, rect), request.width, request.height)?,
            strength: init.strength,
        });
        sub.inpaint = Some(Inpaint {
            mask: inpaint
                .mask
                .crop(rect)
                .resized(request.width, request.height)?,
            only_masked_padding: None,
            ..inpaint.clone()
        });
        let generated = self.generate(&sub, progress)?;
        let patch = resize_lanczos(&generated.image, rect.width, rect.height)?;
        let mut full = init.image.clone();
        for y in 0..rect.height {
            let from = y * rect.width * 3;
            let to = ((rect.y + y) * full.width + rect.x) * 3;
            full.pixels[to..to + rect.width * 3]
                .copy_from_slice(&patch.pixels[from..from + rect.width * 3]);
        }
        Ok(Generated {
            image: paste(&init.image, &full, &overlay),
            request: request.clone(),
            latents: generated.latents,
        })
    }
}

/// A1111's `get_crop_region` + `expand_crop_region`: the mask's bounds grown by `padding` on
/// every side, then widened or heightened about its centre to the render's aspect ratio, all
/// inside the image.
fn crop_region(
    bounds: Rect,
    padding: usize,
    render: (usize, usize),
    image: (usize, usize),
) -> Rect {
    let x1 = bounds.x.saturating_sub(padding);
    let y1 = bounds.y.saturating_sub(padding);
    let x2 = (bounds.right() + padding).min(image.0);
    let y2 = (bounds.bottom() + padding).min(image.1);
    let (width, height) = ((x2 - x1) as f64, (y2 - y1) as f64);
    let ratio = render.0 as f64 / render.1 as f64;
    let (want_w, want_h) = if width / height < ratio {
        ((height * ratio).round(), height)
    } else {
        (width, (width / ratio).round())
    };
    let grow = |start: usize, size: f64, want: f64, limit: usize| -> (usize, usize) {
        let want = (want as usize).min(limit);
        let extra = want - size as usize;
        let start = start.saturating_sub(extra / 2).min(limit - want);
        (start, want)
    };
    let (x, w) = grow(x1, width, want_w, image.0);
    let (y, h) = grow(y1, height, want_h, image.1);
    Rect {
        x,
        y,
        width: w,
        height: h,
    }
}

fn crop(image: &RgbImage, rect: Rect) -> RgbImage {
    let pixels = (rect.y..rect.bottom())
        .flat_map(|y| {
            &image.pixels[(y * image.width + rect.x) * 3..(y * image.width + rect.right()) * 3]
        })
        .copied()
        .collect();
    RgbImage {
        width: rect.width,
        height: rect.height,
        pixels,
    }
}
