//! The hires fix: render at the size the model was trained for, enlarge, and refine the
//! enlargement with img2img, so large images keep one composition instead of repeating it.
//!
//! InvokeAI 2.x (`--hires_fix`, its `txt2img2img.py`) picks a first pass of the model's area
//! with the requested aspect ratio, enlarges the latents bilinearly and runs img2img over the
//! same number of steps. A1111 renders the first pass at the given size, enlarges it by "Hires
//! upscale" in latent space or in pixels (Lanczos) and runs "Hires steps" of img2img at
//! "Denoising strength". Both are a [`HiresFix`] on the request, whose size is the final one.
//! The second pass starts from the seed's noise at the final size, as A1111 draws it.

use std::cell::Cell;

use candle_core::Tensor;
use dream_core::rng::TorchGenerator;

use crate::img2img::Start;
use crate::model::StableDiffusion;
use crate::resize::resize_lanczos;
use crate::sampling::{strength_steps, StepInfo, StrengthRule};
use crate::txt2img::{Generated, Txt2Img};
use crate::DreamError;

/// How the first pass is enlarged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upscaler {
    /// The latents, bilinearly (InvokeAI; A1111's "Latent").
    Latent,
    /// The decoded image, with Lanczos, then encoded again (A1111's "Lanczos").
    Lanczos,
}

impl Upscaler {
    /// A1111's name for it in "Hires upscaler".
    pub fn a1111_name(self) -> &'static str {
        match self {
            Upscaler::Latent => "Latent",
            Upscaler::Lanczos => "Lanczos",
        }
    }
}

/// A two-pass render; the request's width and height are the final size.
#[derive(Debug, Clone, PartialEq)]
pub struct HiresFix {
    /// The first pass's size.
    pub first_width: usize,
    pub first_height: usize,
    pub upscaler: Upscaler,
    /// The second pass's steps; `None` uses the request's.
    pub steps: Option<usize>,
    /// The second pass's img2img strength.
    pub strength: f64,
    /// Which steps of the second pass run for that strength.
    pub rule: StrengthRule,
}

/// Sizes are multiples of this (InvokeAI's `trim_to_multiple_of`, the latent grid).
const SIZE_STEP: usize = 8;

impl HiresFix {
    /// InvokeAI 2.x's `--hires_fix` for a `width` × `height` image from a model trained at
    /// `resolution`² (512 for SD 1.x): a first pass of that area and the same aspect ratio, no
    /// side under half the resolution; latent upscaling; every step again at `strength`
    /// (InvokeAI's `-f`, 0.75 by default).
    pub fn invokeai(width: usize, height: usize, resolution: usize, strength: f64) -> Self {
        let aspect = width as f64 / height as f64;
        let min_side = (resolution as f64 * 0.5).floor();
        let area = (resolution * resolution) as f64;
        let (w, h) = if aspect > 1.0 {
            let h = min_side.max((area / aspect).sqrt());
            (h * aspect, h)
        } else {
            let w = min_side.max((area * aspect).sqrt());
            (w, w / aspect)
        };
        let trim = |x: f64| {
            let x = x.floor() as usize;
            x - x % SIZE_STEP
        };
        HiresFix {
            first_width: trim(w),
            first_height: trim(h),
            upscaler: Upscaler::Latent,
            steps: None,
            strength,
            rule: StrengthRule::InvokeAi,
        }
    }

    /// A1111's "Hires. fix" of a `width` × `height` first pass enlarged `scale` times: the final
    /// size (A1111's `int(width × scale)` floored to the latent grid) and the fix.
    pub fn a1111(
        width: usize,
        height: usize,
        scale: f64,
        upscaler: Upscaler,
        steps: Option<usize>,
        strength: f64,
    ) -> ((usize, usize), Self) {
        let enlarge = |x: usize| {
            let x = (x as f64 * scale) as usize;
            x - x % SIZE_STEP
        };
        let fix = HiresFix {
            first_width: width,
            first_height: height,
            upscaler,
            steps,
            strength,
            rule: StrengthRule::A1111,
        };
        ((enlarge(width), enlarge(height)), fix)
    }

    pub(crate) fn validate(&self, request: &Txt2Img) -> Result<(), DreamError> {
        let invalid = |message: String| Err(DreamError::InvalidRequest(message));
        if request.init.is_some() {
            return Err(DreamError::NotSupported(
                "the hires fix with an init image".into(),
            ));
        }
        let multiple = |x: usize| x > 0 && x.is_multiple_of(SIZE_STEP);
        if !multiple(self.first_width) || !multiple(self.first_height) {
            return invalid(format!(
                "the hires fix's first pass must be a positive multiple of 8 on each side, got \
                 {}x{}",
                self.first_width, self.first_height
            ));
        }
        if self.steps == Some(0) {
            return invalid("the hires fix's steps must be at least 1".into());
        }
        strength_steps(self.second_pass_steps(request), self.strength, self.rule)?;
        Ok(())
    }

    fn second_pass_steps(&self, request: &Txt2Img) -> usize {
        self.steps.unwrap_or(request.steps)
    }
}

impl StableDiffusion {
    /// Both passes of `request.hires`; `progress` sees the first pass's steps, then the
    /// second's.
    pub(crate) fn generate_hires(
        &self,
        request: &Txt2Img,
        hires: &HiresFix,
        progress: &mut dyn FnMut(StepInfo<'_>),
    ) -> Result<Generated, DreamError> {
        hires.validate(request)?;
        let first_request = Txt2Img {
            width: hires.first_width,
            height: hires.first_height,
            hires: None,
            ..request.clone()
        };
        let first = self.generate(&first_request, progress)?;

        let (width, height) = (request.width, request.height);
        let mut generator = TorchGenerator::seeded(request.seed.into());
        let latents = match hires.upscaler {
            Upscaler::Latent => upscale_bilinear(&first.latents, height / 8, width / 8)?,
            Upscaler::Lanczos => {
                let enlarged = resize_lanczos(&first.image, width, height)?;
                self.encode_image(&enlarged, &mut generator)?
            }
        };
        let steps = strength_steps(hires.second_pass_steps(request), hires.strength, hires.rule)?;
        let second_request = Txt2Img {
            steps: steps.schedule_steps,
            hires: None,
            ..request.clone()
        };
        let noise = self.request_noise(&second_request, &mut generator)?;
        let latents = if steps.first_step == steps.schedule_steps {
            latents
        } else {
            let conditioning = self.condition(
                &request.prompt,
                &request.negative_prompt,
                &second_request.conditioning_options(),
            )?;
            let step = Cell::new(0);
            let mut guided = self
                .guided(&conditioning, request.cfg_scale, &step)
                .with_rescale(request.guidance_rescale);
            let start = Start {
                latents,
                first_step: steps.first_step,
            };
            self.sample(
                &second_request,
                &mut guided,
                noise,
                generator,
                Some(&start),
                &mut |info: StepInfo<'_>| {
                    step.set(info.step + 1);
                    progress(info);
                    Ok(())
                },
            )?
        };
        Ok(Generated {
            image: self.decode_to_image(&latents)?,
            request: request.clone(),
            latents,
        })
    }
}

/// `torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)` of
/// `[B, C, H, W]` latents.
pub fn upscale_bilinear(x: &Tensor, height: usize, width: usize) -> Result<Tensor, DreamError> {
    let (batch, channels, in_h, in_w) = x.dims4()?;
    let values = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let rows = source_taps(in_h, height);
    let cols = source_taps(in_w, width);
    let mut out = Vec::with_capacity(batch * channels * height * width);
    for plane in values.chunks_exact(in_h * in_w) {
        for &(y0, y1, wy) in &rows {
            for &(x0, x1, wx) in &cols {
                let at = |y: usize, x: usize| plane[y * in_w + x];
                let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
                let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
                out.push(top * (1.0 - wy) + bottom * wy);
            }
        }
    }
    Ok(Tensor::from_vec(
        out,
        (batch, channels, height, width),
        x.device(),
    )?)
}

/// For each output index, the two input indices it blends and the second one's weight, with
/// torch's half-pixel centres (`align_corners=False`) clamped at the start.
fn source_taps(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let source = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let first = (source as usize).min(in_size - 1);
            let second = (first + 1).min(in_size - 1);
            (first, second, source - first as f32)
        })
        .collect()
}
