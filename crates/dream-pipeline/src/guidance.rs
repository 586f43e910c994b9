//! Classifier-free guidance: the UNet as a [`Predictor`] that combines the conditioned and
//! unconditioned predictions of each step.

use std::cell::Cell;

use candle_core::Tensor;

use crate::conditioning::PromptConditioning;
use crate::model::StableDiffusion;
use crate::sampling::Predictor;

/// Classifier-free guidance: the UNet sees the negative prompt's and every `AND` part's
/// conditioning of the current step as one batch, and `PromptConditioning::guide` combines the
/// predictions with the CFG scale.
pub struct Guided<'a> {
    model: &'a StableDiffusion,
    conditioning: &'a PromptConditioning,
    cfg_scale: f64,
    /// The sampling step the next prediction belongs to (prompt editing and alternation change
    /// the conditioning by step, and some samplers call the model more than once a step).
    step: &'a Cell<usize>,
}

impl Predictor for Guided<'_> {
    fn predict(&mut self, latents: &Tensor, timestep: f64) -> candle_core::Result<Tensor> {
        let context = self.conditioning.context_at(self.step.get())?;
        let batch = latents.repeat((context.dim(0)?, 1, 1, 1))?;
        let predictions = self.model.unet.forward(&batch, timestep, &context)?;
        self.conditioning.guide(&predictions, self.cfg_scale)
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
            step,
        }
    }
}
