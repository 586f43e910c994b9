//! Classifier-free guidance and what tools do to its result: the UNet as a [`Predictor`] that
//! combines the conditioned and unconditioned predictions of each step, optionally rescaled
//! (CFG rescale), and InvokeAI's latent thresholding of the guided x₀ estimate.

use std::cell::Cell;

use candle_core::{Result, Tensor};
use dream_models::unet::AddedConditions;

use crate::conditioning::PromptConditioning;
use crate::model::StableDiffusion;
use crate::sampling::Predictor;

/// Classifier-free guidance: the UNet sees the negative prompt's and every `AND` part's
/// conditioning of the current step as one batch (for SDXL with their pooled embeddings and the
/// image size), and `PromptConditioning::guide` combines the predictions with the CFG scale.
pub struct Guided<'a> {
    model: &'a StableDiffusion,
    conditioning: &'a PromptConditioning,
    cfg_scale: f64,
    /// CFG rescale's φ; 0 leaves the guided prediction as it is.
    guidance_rescale: f64,
    /// The sampling step the next prediction belongs to (prompt editing and alternation change
    /// the conditioning by step, and some samplers call the model more than once a step).
    step: &'a Cell<usize>,
}

impl Guided<'_> {
    /// With CFG rescale φ = `guidance_rescale` (see [`rescale_guidance`]); 0 turns it off.
    pub fn with_rescale(self, guidance_rescale: f64) -> Self {
        Self {
            guidance_rescale,
            ..self
        }
    }
}

impl Predictor for Guided<'_> {
    fn predict(&mut self, latents: &Tensor, timestep: f64) -> Result<Tensor> {
        let step = self.step.get();
        let context = self.conditioning.context_at(step)?;
        let batch = latents.repeat((context.dim(0)?, 1, 1, 1))?;
        let predictions = match self.conditioning.pooled_at(step)? {
            // SDXL: the pooled prompt embeddings and the image's size (the refiner: and an
            // aesthetic score) go in beside the text.
            Some(pooled) => {
                let (_, _, height, width) = latents.dims4()?;
                let factor = self.model.vae_factor();
                let micro = self.model.micro_conditioning().ok_or_else(|| {
                    candle_core::Error::Msg("pooled embeddings for a model without them".into())
                })?;
                let time_ids = micro.time_ids(
                    height * factor,
                    width * factor,
                    pooled.dim(0)?,
                    latents.device(),
                )?;
                let added = AddedConditions {
                    text_embeds: &pooled,
                    time_ids: &time_ids,
                };
                self.model
                    .unet
                    .forward_with_added(&batch, timestep, &context, Some(&added))?
            }
            None => self.model.unet.forward(&batch, timestep, &context)?,
        };
        let guided = self.conditioning.guide(&predictions, self.cfg_scale)?;
        if self.guidance_rescale == 0.0 {
            return Ok(guided);
        }
        // The prompt's own prediction: with one part of weight 1 the conditioned output, as
        // diffusers takes it; with `AND` parts their weighted combination without the scale.
        let text = self.conditioning.guide(&predictions, 1.0)?;
        rescale_guidance(&guided, &text, self.guidance_rescale)
    }
}

impl StableDiffusion {
    /// The UNet with classifier-free guidance over `conditioning`, at the sampling step `step`
    /// holds.
    pub fn guided<'a>(
        &'a self,
        conditioning: &'a PromptConditioning,
        cfg_scale: f64,
        step: &'a Cell<usize>,
    ) -> Guided<'a> {
        Guided {
            model: self,
            conditioning,
            cfg_scale,
            guidance_rescale: 0.0,
            step,
        }
    }
}

/// CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are
/// Flawed", §3.4; diffusers' `rescale_noise_cfg`): a large CFG scale inflates the standard
/// deviation of the guided prediction; scaling it back to the prompt prediction's and mixing
/// by φ fixes over-exposure. Standard deviations are per image over all its elements,
/// unbiased, as torch's `std`.
pub fn rescale_guidance(guided: &Tensor, text: &Tensor, phi: f64) -> Result<Tensor> {
    let ratio = per_image_std(text)?.div(&per_image_std(guided)?)?;
    let rescaled = guided.broadcast_mul(&ratio)?;
    (rescaled * phi)? + (guided * (1.0 - phi))?
}

/// The unbiased standard deviation of each image of a [n, c, h, w] batch, as [n, 1, 1, 1].
fn per_image_std(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let flat = x.flatten_from(1)?;
    let count = flat.dim(1)?;
    let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
    let variance = (centred.sqr()?.sum_keepdim(1)? / (count.max(2) - 1) as f64)?;
    variance.sqrt()?.reshape((n, 1, 1, 1))
}

/// InvokeAI 2.x's `--threshold` for its k-diffusion samplers (`CFGDenoiser` and
/// `cfg_apply_threshold` in `ldm/models/diffusion/ksampler.py`): the guided x₀ estimate is
/// clamped when its values leave [−threshold, threshold]. The limit ramps up from 1 over the
/// first model calls (InvokeAI's "warmup", counted in model calls, over max(0.8·S, S − 10)
/// calls for S steps), and each side is clamped at 0.7 × its own extreme, but within
/// [1, limit].
#[derive(Debug, Clone, PartialEq)]
pub struct LatentThreshold {
    threshold: f64,
    /// The model calls so far, counted from InvokeAI's starting point.
    warmup: f64,
    warmup_max: f64,
}

impl LatentThreshold {
    /// How far inside its extremes a side is clamped (`cfg_apply_threshold`'s `scale`).
    const SCALE: f64 = 0.7;

    /// For a run of `steps` sampling steps (the steps that actually run, for img2img).
    pub fn new(threshold: f64, steps: usize) -> Self {
        let steps = steps as f64;
        let warmup_max = (0.8 * steps).max(steps - 10.0);
        Self {
            threshold,
            warmup: (warmup_max / 10.0).max(1.0),
            warmup_max,
        }
    }

    /// The limit for the next model call.
    fn next_limit(&mut self) -> f64 {
        let limit = if self.warmup < self.warmup_max {
            let ramped = 1.0 + (self.threshold - 1.0) * (self.warmup / self.warmup_max);
            self.warmup += 1.0;
            ramped.max(1.0)
        } else {
            self.threshold
        };
        limit.min(self.threshold)
    }

    /// The guided x₀ estimate of the next model call, thresholded.
    pub fn apply(&mut self, denoised: &Tensor) -> Result<Tensor> {
        let limit = self.next_limit();
        if self.threshold <= 0.0 {
            return Ok(denoised.clone());
        }
        let flat = denoised.flatten_all()?;
        let max = f64::from(
            flat.max(0)?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?,
        );
        let min = f64::from(
            flat.min(0)?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?,
        );
        if max < limit && min > -limit {
            return Ok(denoised.clone());
        }
        let upper = if max > limit {
            (Self::SCALE * max).max(1.0).min(limit)
        } else {
            max
        };
        let lower = if min < -limit {
            (Self::SCALE * min).min(-1.0).max(-limit)
        } else {
            min
        };
        denoised.clamp(lower, upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, (1, 1, 1, values.len()), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn rescale_matches_the_formula() {
        // text: mean 2.5, unbiased variance 5/3; guided: mean 5, unbiased variance 20/3, so
        // std_text / std_guided = 1/2 and the rescaled prediction is guided / 2.
        let text = tensor(&[1.0, 2.0, 3.0, 4.0]);
        let guided = tensor(&[2.0, 4.0, 6.0, 8.0]);
        let mixed = rescale_guidance(&guided, &text, 0.7).unwrap();
        let expected: Vec<f32> = [2.0f32, 4.0, 6.0, 8.0]
            .iter()
            .map(|g| 0.7 * g / 2.0 + 0.3 * g)
            .collect();
        for (a, b) in values(&mixed).iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let off = rescale_guidance(&guided, &text, 0.0).unwrap();
        assert_eq!(values(&off), values(&guided));
    }

    #[test]
    fn threshold_ramps_up_over_the_warmup() {
        // 20 steps: warmup_max = max(16, 10) = 16, starting at max(1.6, 1) = 1.6, so the limits
        // are 1 + (t − 1)·w/16 for w = 1.6, 2.6, … while w < 16, then t.
        let mut threshold = LatentThreshold::new(5.0, 20);
        let limits: Vec<f64> = (0..18).map(|_| threshold.next_limit()).collect();
        for (k, limit) in limits.iter().enumerate() {
            let w = 1.6 + k as f64;
            let expected = if w < 16.0 { 1.0 + 4.0 * w / 16.0 } else { 5.0 };
            assert!(
                (limit - expected).abs() < 1e-12,
                "call {k}: {limit} vs {expected}"
            );
        }
        // 5 steps: warmup_max = max(4, −5) = 4 from 1: 1 + (t − 1)·w/4 for w = 1, 2, 3.
        let mut threshold = LatentThreshold::new(3.0, 5);
        let limits: Vec<f64> = (0..5).map(|_| threshold.next_limit()).collect();
        assert_eq!(limits, [1.5, 2.0, 2.5, 3.0, 3.0]);
        // A threshold below 1 is never exceeded.
        let mut threshold = LatentThreshold::new(0.5, 20);
        assert_eq!(threshold.next_limit(), 0.5);
    }

    #[test]
    fn threshold_clamps_each_side_as_invokeai() {
        // Past the warmup (1 step: warmup_max = 0.8 ≤ the start 1), the limit is 2.
        let mut threshold = LatentThreshold::new(2.0, 1);
        // max 10 > 2: upper = min(max(1, 7), 2) = 2; min −1.5 inside: lower stays −1.5.
        let out = threshold.apply(&tensor(&[10.0, -1.5, 0.5])).unwrap();
        assert_eq!(values(&out), [2.0, -1.5, 0.5]);
        // min −2.5 < −2: lower = max(min(−1, −1.75), −2) = −1.75; max 1.2 inside.
        let out = threshold.apply(&tensor(&[1.2, -2.5, -1.8])).unwrap();
        assert_eq!(values(&out), [1.2, -1.75, -1.75]);
        // Inside on both sides: untouched.
        let out = threshold.apply(&tensor(&[1.9, -1.9])).unwrap();
        assert_eq!(values(&out), [1.9, -1.9]);
        // A small excess clamps at 1, not below: max(1, 0.7 × 1.2) = 1 with the limit 1.1.
        let mut threshold = LatentThreshold::new(1.1, 1);
        let out = threshold.apply(&tensor(&[1.2, 0.9])).unwrap();
        assert_eq!(values(&out), [1.0, 0.9]);
    }
}
