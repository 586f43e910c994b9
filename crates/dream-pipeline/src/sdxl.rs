//! What SDXL adds to the pipeline (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models
//! for High-Resolution Image Synthesis"): a second text encoder whose pooled, projected output
//! conditions the UNet besides the two encoders' token sequences (§2.1), and the image-size
//! micro-conditioning numbers (§2.2); and its refiner (§2.5), a second UNet conditioned on the
//! second encoder alone and an aesthetic score, which denoises the last, low-noise steps.

use candle_core::{Device, Tensor};
use dream_core::schedule::NoiseSchedule;
use dream_core::tokenizer::ClipTokenizer;
use dream_models::clip::ClipTextModelWithProjection;
use dream_models::config::UNetConfig;

use crate::conditioning::TextualInversions;
use crate::guidance::Guided;
use crate::model::StableDiffusion;
use crate::offload::Staged;
use crate::sampling::Predictor;
use crate::txt2img::Txt2Img;
use crate::DreamError;

/// SDXL's second text encoder (OpenCLIP ViT-bigG/14 with its projection) and its tokenizer,
/// which pads with `!` where the first pads with end-of-text.
pub(crate) struct SecondTextEncoder {
    pub(crate) tokenizer: ClipTokenizer,
    pub(crate) text_encoder: Staged<ClipTextModelWithProjection>,
    /// The `clip_g` halves of SDXL textual-inversion embeddings, under the same names and ids
    /// as their `clip_l` halves in the first encoder's table.
    pub(crate) embeddings: TextualInversions,
    /// diffusers' `force_zeros_for_empty_prompt` (`model_index.json`, true for SDXL base and
    /// what A1111 always does): an empty negative prompt conditions with zeros, sequence and
    /// pooled embedding alike, rather than with the encoding of "".
    pub(crate) zeros_for_empty_negative: bool,
    /// The numbers the UNet reads beside the pooled embedding.
    pub(crate) micro_conditioning: MicroConditioning,
}

/// The aesthetic scores the SDXL refiner is told (§2.5: it was trained on them): a high one for
/// the prompt, a low one for the negative prompt, diffusers' and A1111's defaults.
pub(crate) const AESTHETIC_SCORE: f32 = 6.0;
pub(crate) const NEGATIVE_AESTHETIC_SCORE: f32 = 2.5;

/// What the numbers beside SDXL's pooled text embedding say (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MicroConditioning {
    /// The base model's six: the original size, the crop's top-left corner and the target size.
    Size,
    /// The refiner's five (diffusers' `requires_aesthetics_score`): the original size, the
    /// crop's corner and an aesthetic score.
    Aesthetic,
}

impl MicroConditioning {
    /// Which numbers a `text_time` UNet reads, from its added-conditioning width: the pooled
    /// embedding (`pooled_width`) plus six or five numbers, each embedded
    /// `addition_time_embed_dim` wide.
    pub(crate) fn of(unet: &UNetConfig, pooled_width: usize) -> Result<Self, String> {
        let input = unet.projection_class_embeddings_input_dim.unwrap_or(0);
        let width = unet.addition_time_embed_dim.unwrap_or(0);
        let numbers = match width {
            0 => None,
            width => Some(input.saturating_sub(pooled_width) / width),
        };
        match numbers {
            Some(6) => Ok(MicroConditioning::Size),
            Some(5) => Ok(MicroConditioning::Aesthetic),
            _ => Err(format!(
                "its UNet's added conditioning reads {input} values, which is neither SDXL \
                 base's nor the refiner's: the {pooled_width}-wide pooled text embedding plus \
                 6 or 5 numbers {width} wide"
            )),
        }
    }

    /// The numbers for a guidance batch of `batch` rows, the negative prompt's first, for an
    /// image of `height` × `width` pixels, `[batch, 6 or 5]`. Like diffusers' and A1111's
    /// defaults, the original and target sizes are the image's own and the crop is (0, 0): "an
    /// uncropped image of this size"; the refiner's negative row gets the low aesthetic score.
    pub(crate) fn time_ids(
        self,
        height: usize,
        width: usize,
        batch: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (h, w) = (height as f32, width as f32);
        match self {
            MicroConditioning::Size => {
                Tensor::new(&[[h, w, 0.0, 0.0, h, w]], device)?.repeat((batch, 1))
            }
            MicroConditioning::Aesthetic => {
                let rows: Vec<f32> = (0..batch)
                    .flat_map(|row| {
                        let score = match row {
                            0 => NEGATIVE_AESTHETIC_SCORE,
                            _ => AESTHETIC_SCORE,
                        };
                        [h, w, 0.0, 0.0, score]
                    })
                    .collect();
                Tensor::from_vec(rows, (batch, 5), device)
            }
        }
    }
}

impl StableDiffusion {
    /// The numbers an SDXL UNet reads beside the pooled embedding; `None` for SD 1.x/2.x.
    pub(crate) fn micro_conditioning(&self) -> Option<MicroConditioning> {
        let second = self.text_encoder_2.as_ref()?;
        Some(second.micro_conditioning)
    }
}

/// A1111's "Refiner" and "Refiner switch at": another model, usually the SDXL refiner, takes
/// over sampling part-way, on the same latents and the same noise levels.
#[derive(Debug, Clone, PartialEq)]
pub struct RefinerSwitch {
    /// The refiner as image metadata names it (A1111: its title with its short hash).
    pub name: String,
    /// The share of the denoising done before the refiner takes over, in (0, 1]: A1111 hands
    /// over at the first model call whose noise level is the training timestep `t` with
    /// `(999 − t) / 1000 ≥ switch_at` (see [`HandOff`]).
    pub switch_at: f64,
}

/// The base model's guided prediction until the refiner takes over, then the refiner's (A1111's
/// `apply_refiner`, checked before every model call). The noise level of a call is the training
/// timestep whose σ is nearest to it, as A1111 finds it (`argmin |σᵢ − σ|`); for the integer
/// timesteps of DDIM and the other discrete samplers this is diffusers' ensemble of experts,
/// whose base denoises the timesteps `t ≥ round(1000·(1 − switch_at))` (`denoising_end`) and
/// whose refiner the rest (`denoising_start`).
pub(crate) struct HandOff<'a> {
    base: Guided<'a>,
    refiner: Guided<'a>,
    schedule: NoiseSchedule,
    switch_at: f64,
    switched: bool,
}

impl<'a> HandOff<'a> {
    pub(crate) fn new(
        base: Guided<'a>,
        refiner: Guided<'a>,
        schedule: NoiseSchedule,
        switch_at: f64,
    ) -> Self {
        HandOff {
            base,
            refiner,
            schedule,
            switch_at,
            switched: false,
        }
    }

    /// A1111's `completed_ratio` at `timestep`: `(999 − t) / 1000` for the training timestep `t`
    /// whose σ is nearest to the timestep's (with 1000 training timesteps).
    fn completed(&self, timestep: f64) -> f64 {
        let sigma = self.schedule.t_to_sigma(timestep);
        let nearest = (0..self.schedule.num_train_timesteps())
            .min_by(|&a, &b| {
                let distance = |t: usize| (f64::from(self.schedule.sigma(t)) - sigma).abs();
                distance(a).total_cmp(&distance(b))
            })
            .unwrap_or(0);
        let train = self.schedule.num_train_timesteps() as f64;
        (train - 1.0 - nearest as f64) / train
    }
}

impl Predictor for HandOff<'_> {
    fn predict(&mut self, latents: &Tensor, timestep: f64) -> candle_core::Result<Tensor> {
        // Once handed over, the refiner stays (A1111 has swapped the model).
        if !self.switched && self.completed(timestep) >= self.switch_at {
            self.switched = true;
        }
        match self.switched {
            true => self.refiner.predict(latents, timestep),
            false => self.base.predict(latents, timestep),
        }
    }
}

impl StableDiffusion {
    /// Whether `refiner` can take over this model's sampling for `request`.
    pub(crate) fn check_refiner(
        &self,
        request: &Txt2Img,
        refiner: Option<&StableDiffusion>,
    ) -> Result<(), DreamError> {
        let (switch, refiner) = match (&request.refiner, refiner) {
            (None, None) => return Ok(()),
            (Some(switch), Some(refiner)) => (switch, refiner),
            (Some(switch), None) => {
                return Err(DreamError::InvalidRequest(format!(
                    "the request names the refiner {:?}, but none was given to generate with \
                     (generate_refined)",
                    switch.name
                )))
            }
            (None, Some(_)) => {
                return Err(DreamError::InvalidRequest(
                    "a refiner was given, but the request has no refiner switch".into(),
                ))
            }
        };
        if !(switch.switch_at > 0.0 && switch.switch_at <= 1.0) {
            return Err(DreamError::InvalidRequest(format!(
                "the refiner switch must be above 0 and at most 1, got {}",
                switch.switch_at
            )));
        }
        let unsupported =
            |what: &str| Err(DreamError::NotSupported(format!("{what} with a refiner")));
        if request.hires.is_some() {
            return unsupported("the hires fix");
        }
        if request.inpaint.is_some() {
            return unsupported("inpainting");
        }
        if refiner.unet_in_channels != refiner.latent_channels() {
            return Err(DreamError::InvalidRequest(format!(
                "the refiner {:?} has a {}-channel (inpainting) UNet",
                switch.name, refiner.unet_in_channels
            )));
        }
        if refiner.latent_channels() != self.latent_channels()
            || refiner.vae_factor() != self.vae_factor()
        {
            return Err(DreamError::InvalidRequest(format!(
                "the refiner {:?} works on other latents ({} channels) than this model ({})",
                switch.name,
                refiner.latent_channels(),
                self.latent_channels()
            )));
        }
        if NoiseSchedule::new(&refiner.scheduler)? != NoiseSchedule::new(&self.scheduler)?
            || refiner.scheduler.prediction_type != self.scheduler.prediction_type
        {
            return unsupported("another noise schedule or prediction type than the model's");
        }
        Ok(())
    }
}
