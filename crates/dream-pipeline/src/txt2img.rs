//! Text to image: encode the prompts, draw the seed's noise, sample, decode.

use std::cell::Cell;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use dream_core::metadata::{
    invokeai, python_float, A1111Parameters, GenerationInfo, MetadataFormat,
};
use dream_core::prompt::{PromptOptions, Syntax};
use dream_core::rng::TorchGenerator;
use dream_core::sampler::{Sampler, ScheduleKind};
use dream_core::schedule::{
    ddim_timesteps, lcm_timesteps, sigma_schedule, unipc_schedule, NoiseSchedule,
};
use dream_models::layers::PaddingMode;

use crate::conditioning::{ConditioningOptions, Emphasis};
#[cfg(doc)]
use crate::guidance::rescale_guidance;
use crate::guidance::LatentThreshold;
use crate::hires::HiresFix;
use crate::image::{PngCompression, RgbImage};
use crate::img2img::{InitImage, Start};
use crate::inpaint::Inpaint;
use crate::model::StableDiffusion;
use crate::resize::{size_init_image, InitSizing};
use crate::sampling::{
    noise_to_sigma, noise_to_timestep, noise_to_vp_sigma, sample_ddim, sample_ddpm, sample_k,
    sample_lcm, sample_plms, sample_unipc, schedule_from, BrownianNoise, Denoiser, DiscreteModel,
    GeneratorNoise, Noise, NoiseSource, Predictor, StepCallback, StepInfo, StrengthRule,
};
use crate::sdxl::{HandOff, RefinerSwitch};
use crate::variation::{initial_noise, Variation};
use crate::DreamError;

/// Everything that determines a txt2img image.
#[derive(Debug, Clone, PartialEq)]
pub struct Txt2Img {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u32,
    pub sampler: Sampler,
    /// The noise levels the sampler walks; `Normal` is the model's own schedule.
    pub schedule: ScheduleKind,
    /// How much fresh noise the ancestral and SDE samplers and DDIM add per step, 0 to 1;
    /// `None` takes each sampler's usual value (1, and 0 for DDIM).
    pub eta: Option<f64>,
    /// Scale of that fresh noise (k-diffusion's `s_noise`), usually 1.
    pub s_noise: f64,
    /// InvokeAI's `--threshold` for the k-diffusion samplers: clamp the guided x₀ estimate
    /// towards [−t, t] (see [`LatentThreshold`]); `None` or 0 is off.
    pub threshold: Option<f64>,
    /// CFG rescale φ (`guidance_rescale`, see [`rescale_guidance`]), 0 to 1; 0 is off.
    pub guidance_rescale: f64,
    /// A1111's "discard penultimate sigma": the k-diffusion schedule is built for one step
    /// more and loses its next-to-last σ. A1111 does it for DPM2, DPM2 a and DPM++ 3M SDE
    /// (`SamplerChoice::discards_next_to_last_sigma`).
    pub discard_penultimate_sigma: bool,
    /// How the prompts are read (A1111's syntax by default).
    pub syntax: Syntax,
    /// InvokeAI's `-x`: a legacy `a:0.25 b:0.75` blend uses its weights as written.
    pub skip_normalize: bool,
    /// A1111's "Clip skip": 1 uses the text encoder's output, 2 the layer before, …
    pub clip_skip: usize,
    pub emphasis: Emphasis,
    /// img2img: the image to start from instead of pure noise.
    pub init: Option<InitImage>,
    /// How many of the steps img2img runs at the init image's strength: InvokeAI's rule by
    /// default, A1111's for requests in A1111's terms.
    pub strength_rule: StrengthRule,
    /// Inpainting: which part of the init image to repaint, and how.
    pub inpaint: Option<Inpaint>,
    /// InvokeAI's variation chain (`-V seed:weight,…`): the seed's noise slerped towards each
    /// variation seed's noise in turn. InvokeAI's `-v AMOUNT` appends a new random seed.
    pub variations: Vec<Variation>,
    /// A1111's "Variation seed" and "Variation seed strength".
    pub subseed: Option<Variation>,
    /// The share of the initial noise that is Perlin noise (InvokeAI's `--perlin`), 0 to 1.
    pub perlin: f64,
    /// The axes along which the image tiles with itself (`--seamless`, `--seamless_axes`).
    pub seamless: Seamless,
    /// Render smaller first, enlarge and refine (`--hires_fix`, A1111's "Hires. fix").
    pub hires: Option<HiresFix>,
    /// Hand the sampling over to a refiner part-way (`--refiner`, A1111's "Refiner"); the
    /// refiner itself goes to [`StableDiffusion::generate_refined`].
    pub refiner: Option<RefinerSwitch>,
}

impl Txt2Img {
    /// InvokeAI's defaults (50 steps, CFG 7.5, 512×512) with the given prompt and seed.
    pub fn new(prompt: &str, seed: u32) -> Self {
        Txt2Img {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            steps: 50,
            cfg_scale: 7.5,
            width: 512,
            height: 512,
            seed,
            sampler: Sampler::Euler,
            schedule: ScheduleKind::Normal,
            eta: None,
            s_noise: 1.0,
            threshold: None,
            guidance_rescale: 0.0,
            discard_penultimate_sigma: false,
            syntax: Syntax::A1111,
            skip_normalize: false,
            clip_skip: 1,
            emphasis: Emphasis::Original,
            init: None,
            strength_rule: StrengthRule::InvokeAi,
            inpaint: None,
            variations: Vec::new(),
            subseed: None,
            perlin: 0.0,
            seamless: Seamless::NONE,
            hires: None,
            refiner: None,
        }
    }

    /// Brings the init image to the size `sizing` gives it (Lanczos), and an inpainting mask
    /// with it, and makes that the request's size, as InvokeAI sizes img2img by its init
    /// image. Without an init image nothing changes.
    pub fn size_to_init(&mut self, sizing: InitSizing) -> Result<(), DreamError> {
        if let Some(init) = &mut self.init {
            init.image = size_init_image(&init.image, sizing)?;
            (self.width, self.height) = (init.image.width, init.image.height);
            if let Some(inpaint) = &mut self.inpaint {
                inpaint.mask = inpaint.mask.resized(self.width, self.height)?;
            }
        }
        Ok(())
    }

    /// The name of an img2img request's strength rule where it is not `usual`, the rule of
    /// the tool whose metadata records it.
    fn strength_rule_unlike(&self, usual: StrengthRule) -> Option<String> {
        let name = match self.strength_rule {
            StrengthRule::InvokeAi => "invokeai",
            StrengthRule::A1111 => "a1111",
            StrengthRule::FixedSteps => "fixed_steps",
        };
        (self.init.is_some() && self.strength_rule != usual).then(|| name.to_string())
    }

    pub(crate) fn conditioning_options(&self) -> ConditioningOptions {
        ConditioningOptions {
            prompt: PromptOptions {
                skip_normalize: self.skip_normalize,
                ..PromptOptions::new(self.syntax, self.steps)
            },
            clip_skip: self.clip_skip,
            emphasis: self.emphasis,
        }
    }

    fn validate(&self) -> Result<(), DreamError> {
        let invalid = |message: String| Err(DreamError::InvalidRequest(message));
        if self.width == 0
            || self.height == 0
            || !self.width.is_multiple_of(8)
            || !self.height.is_multiple_of(8)
        {
            return invalid(format!(
                "width and height must be positive multiples of 8, got {}x{}",
                self.width, self.height
            ));
        }
        if self.steps == 0 {
            return invalid("steps must be at least 1".into());
        }
        if !self.cfg_scale.is_finite() {
            return invalid(format!(
                "CFG scale must be a finite number, got {}",
                self.cfg_scale
            ));
        }
        if let Some(eta) = self.eta {
            if !(0.0..=1.0).contains(&eta) {
                return invalid(format!("eta must be between 0 and 1, got {eta}"));
            }
        }
        if !self.s_noise.is_finite() {
            return invalid(format!(
                "s_noise must be a finite number, got {}",
                self.s_noise
            ));
        }
        for variation in self.variations.iter().chain(&self.subseed) {
            variation.validate()?;
        }
        if !(0.0..=1.0).contains(&self.perlin) {
            return invalid(format!(
                "perlin must be between 0 and 1, got {}",
                self.perlin
            ));
        }
        if let Some(threshold) = self.threshold {
            if !(threshold.is_finite() && threshold >= 0.0) {
                return invalid(format!(
                    "threshold must be a number of at least 0, got {threshold}"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            return invalid(format!(
                "guidance rescale must be between 0 and 1, got {}",
                self.guidance_rescale
            ));
        }
        if let Some(init) = &self.init {
            init.validate(self.width, self.height)?;
            init.steps(self.steps, self.strength_rule)?;
        }
        if let Some(inpaint) = &self.inpaint {
            match &self.init {
                Some(init) => inpaint.validate(init)?,
                None => return invalid("inpainting needs an init image".into()),
            }
        }
        Ok(())
    }
}

/// The axes along which an image tiles with itself: every convolution of the UNet and the VAE
/// pads circularly along them (InvokeAI's `--seamless` and `--seamless_axes`, A1111's
/// "Tiling").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seamless {
    pub x: bool,
    pub y: bool,
}

impl Seamless {
    pub const NONE: Seamless = Seamless { x: false, y: false };
    pub const BOTH: Seamless = Seamless { x: true, y: true };

    pub fn is_none(self) -> bool {
        self == Seamless::NONE
    }

    fn padding_mode(self) -> PaddingMode {
        match self {
            Seamless::NONE => PaddingMode::Zeros,
            Seamless { x, y } => PaddingMode::Circular { x, y },
        }
    }

    /// `--seamless_axes`' spelling: `x,y`, `x` or `y`.
    fn axes(self) -> Option<String> {
        let axes: Vec<&str> = [(self.x, "x"), (self.y, "y")]
            .into_iter()
            .filter_map(|(on, axis)| on.then_some(axis))
            .collect();
        (!axes.is_empty()).then(|| axes.join(","))
    }
}

impl FromStr for Seamless {
    type Err = DreamError;

    /// InvokeAI's `--seamless_axes`: `x`, `y`, `x,y` (or `xy`).
    fn from_str(text: &str) -> Result<Self, DreamError> {
        let mut seamless = Seamless::NONE;
        for axis in text.chars().filter(|c| *c != ',' && !c.is_whitespace()) {
            match axis.to_ascii_lowercase() {
                'x' => seamless.x = true,
                'y' => seamless.y = true,
                _ => {
                    return Err(DreamError::InvalidRequest(format!(
                        "seamless axes are x, y or x,y, got {text:?}"
                    )))
                }
            }
        }
        if seamless.is_none() {
            return Err(DreamError::InvalidRequest(
                "seamless axes are x, y or x,y, got none".into(),
            ));
        }
        Ok(seamless)
    }
}

/// A finished image and what made it.
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: RgbImage,
    pub request: Txt2Img,
    /// The sampler's final latents, before VAE decoding.
    pub latents: Tensor,
}

impl Generated {
    /// What made this image, with the sampler and schedule named as A1111 names them.
    fn generation_info(&self, model: ModelStamp<'_>) -> GenerationInfo {
        let r = &self.request;
        let mut info = GenerationInfo::new(MetadataFormat::A1111);
        info.prompt = r.prompt.clone();
        info.negative_prompt = r.negative_prompt.clone();
        info.steps = Some(r.steps);
        info.sampler = Some(r.sampler.a1111_name().to_string());
        // Always written: A1111 would otherwise apply its own per-sampler default.
        info.schedule = Some(r.schedule.a1111_name().to_string());
        info.cfg_scale = Some(r.cfg_scale);
        info.seed = Some(u64::from(r.seed));
        info.width = Some(r.width);
        info.height = Some(r.height);
        info.model = Some(model.name.to_string());
        // A1111's short hash: the first 10 hex digits.
        info.model_hash = model.sha256.map(|h| h.chars().take(10).collect());
        info.strength = r.init.as_ref().map(|init| init.strength);
        info.strength_rule = r.strength_rule_unlike(StrengthRule::A1111);
        info.syntax = (r.syntax != Syntax::A1111).then_some(r.syntax);
        // A1111 writes clip skip only when it is not the default.
        info.clip_skip = (r.clip_skip > 1).then_some(r.clip_skip);
        info.threshold = r.threshold.filter(|&t| t > 0.0);
        info.guidance_rescale = (r.guidance_rescale > 0.0).then_some(r.guidance_rescale);
        // Like A1111: η and s_noise only where the sampler uses them and they are not its
        // defaults, the discarded σ only where A1111 would not discard it by itself.
        info.eta = r
            .eta
            .filter(|&eta| r.sampler.takes_eta() && eta != r.sampler.default_eta());
        info.s_noise = (r.sampler.needs_noise() && r.s_noise != 1.0).then_some(r.s_noise);
        if r.discard_penultimate_sigma && !r.sampler.a1111_discards_next_to_last_sigma() {
            let field = ("Discard penultimate sigma".to_string(), "True".to_string());
            info.extra.push(field);
        }
        info.variations = r
            .variations
            .iter()
            .map(|v| (u64::from(v.seed), v.weight))
            .collect();
        info.perlin = (r.perlin > 0.0).then_some(r.perlin);
        info.seamless = r.seamless.axes();
        if let Some(subseed) = &r.subseed {
            info.extra.extend([
                ("Variation seed".to_string(), subseed.seed.to_string()),
                (
                    "Variation seed strength".to_string(),
                    python_float(subseed.weight),
                ),
            ]);
        }
        if r.seamless == Seamless::BOTH {
            info.extra.push(("Tiling".to_string(), "True".to_string()));
        }
        if let Some(hires) = &r.hires {
            // A1111's layout: Size is the first pass, the final size is "Hires resize".
            info.width = Some(hires.first_width);
            info.height = Some(hires.first_height);
            info.strength = Some(hires.strength);
            info.hires_fix = true;
            let mut field = |key: &str, value: String| info.extra.push((key.to_string(), value));
            field("Hires resize", format!("{}x{}", r.width, r.height));
            if let Some(steps) = hires.steps {
                field("Hires steps", steps.to_string());
            }
            field("Hires upscaler", hires.upscaler.a1111_name().to_string());
        }
        if let Some(refiner) = &r.refiner {
            let mut field = |key: &str, value: String| info.extra.push((key.to_string(), value));
            field("Refiner", refiner.name.clone());
            field("Refiner switch at", python_float(refiner.switch_at));
        }
        if let Some(inpaint) = &r.inpaint {
            // A1111 records these for every inpainting.
            let mut field = |key: &str, value: String| info.extra.push((key.to_string(), value));
            field("Mask blur", inpaint.mask_blur.to_string());
            if let Some(padding) = inpaint.only_masked_padding {
                field("Inpaint area", "Only masked".to_string());
                field("Masked area padding", padding.to_string());
            }
        }
        info.generator = Some(format!("{APP_ID} {}", env!("CARGO_PKG_VERSION")));
        info
    }

    /// A1111's `parameters` text for this image.
    pub fn a1111_parameters<'a>(&self, model: impl Into<ModelStamp<'a>>) -> String {
        A1111Parameters::from_info(&self.generation_info(model.into())).to_text()
    }

    /// InvokeAI 2.x's `Dream` command and `sd-metadata` JSON for this image, with InvokeAI's
    /// sampler names; `sd-metadata` also records the schedule and clip skip.
    pub fn invokeai_metadata<'a>(&self, model: impl Into<ModelStamp<'a>>) -> (String, String) {
        let model = model.into();
        let r = &self.request;
        let info = GenerationInfo {
            format: MetadataFormat::InvokeAiJson,
            sampler: Some(r.sampler.invokeai_name().to_string()),
            schedule: Some(r.schedule.name().to_string()),
            clip_skip: Some(r.clip_skip),
            // InvokeAI records the final size, and a strength only for img2img.
            width: Some(r.width),
            height: Some(r.height),
            strength: r.init.as_ref().map(|init| init.strength),
            strength_rule: r.strength_rule_unlike(StrengthRule::InvokeAi),
            // InvokeAI's hash is the whole SHA-256.
            model_hash: model.sha256.map(str::to_string),
            ..self.generation_info(model)
        };
        let app = invokeai::App {
            id: APP_ID,
            version: env!("CARGO_PKG_VERSION"),
        };
        (
            invokeai::dream_command(&info),
            invokeai::sd_metadata(&info, app),
        )
    }

    /// Writes the image as a PNG carrying A1111's `parameters` and InvokeAI's `Dream` and
    /// `sd-metadata` chunks, naming `model` (its name, or a [`ModelStamp`] with its hash).
    pub fn save<'a>(
        &self,
        path: impl AsRef<std::path::Path>,
        model: impl Into<ModelStamp<'a>>,
    ) -> Result<(), DreamError> {
        self.save_compressed(path, model, PngCompression::default())
    }

    /// [`save`](Self::save) at a zlib compression level (InvokeAI's `-z`).
    pub fn save_compressed<'a>(
        &self,
        path: impl AsRef<std::path::Path>,
        model: impl Into<ModelStamp<'a>>,
        compression: PngCompression,
    ) -> Result<(), DreamError> {
        let model = model.into();
        let (dream, sd_metadata) = self.invokeai_metadata(model);
        self.image.save_png_compressed(
            path.as_ref(),
            &[
                ("parameters", &self.a1111_parameters(model)),
                ("Dream", &dream),
                ("sd-metadata", &sd_metadata),
            ],
            compression,
        )
    }
}

/// The model as image metadata records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelStamp<'a> {
    /// Its file or folder name.
    pub name: &'a str,
    /// The SHA-256 of its weights file in hex: A1111's "Model hash" is its first 10 digits,
    /// InvokeAI's `model_hash` all of it.
    pub sha256: Option<&'a str>,
}

impl<'a> From<&'a str> for ModelStamp<'a> {
    /// A model known by name only.
    fn from(name: &'a str) -> Self {
        ModelStamp { name, sha256: None }
    }
}

/// The program name written into image metadata.
const APP_ID: &str = "dream";

impl StableDiffusion {
    /// The seed's starting noise, [1, 4, h/8, w/8], equal to
    /// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`.
    pub fn initial_noise(
        &self,
        seed: u32,
        width: usize,
        height: usize,
    ) -> Result<Tensor, DreamError> {
        self.latent_noise(&mut TorchGenerator::seeded(seed as u64), width, height)
    }

    /// The next N(0, 1) draw of `generator` in the shape of a width × height image's latents.
    pub(crate) fn latent_noise(
        &self,
        generator: &mut TorchGenerator,
        width: usize,
        height: usize,
    ) -> Result<Tensor, DreamError> {
        let shape = (1, self.latent_channels(), height / 8, width / 8);
        let values = generator.randn(shape.0 * shape.1 * shape.2 * shape.3);
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }

    /// Switches every convolution of the UNet and the VAE to the padding `seamless` needs.
    pub fn set_seamless(&self, seamless: Seamless) {
        let mode = seamless.padding_mode();
        self.unet.set_padding_mode(mode);
        self.vae.set_padding_mode(mode);
    }

    /// The request's starting noise (see [`initial_noise`]), `[1, C, H/8, W/8]`.
    pub(crate) fn request_noise(
        &self,
        request: &Txt2Img,
        generator: &mut TorchGenerator,
    ) -> Result<Tensor, DreamError> {
        let shape = (
            self.latent_channels(),
            request.height / 8,
            request.width / 8,
        );
        let noise = initial_noise(generator, shape, request)?;
        Ok(Tensor::from_vec(
            noise,
            (1, shape.0, shape.1, shape.2),
            &self.device,
        )?)
    }

    /// Generates one image, reporting each sampler step to `progress`.
    pub fn generate(
        &self,
        request: &Txt2Img,
        progress: &mut dyn FnMut(StepInfo<'_>),
    ) -> Result<Generated, DreamError> {
        self.generate_refined(request, None, progress)
    }

    /// [`Self::generate`] with `request.refiner`'s model, `refiner`, taking over part-way.
    pub fn generate_refined(
        &self,
        request: &Txt2Img,
        refiner: Option<&StableDiffusion>,
        progress: &mut dyn FnMut(StepInfo<'_>),
    ) -> Result<Generated, DreamError> {
        self.check_refiner(request, refiner)?;
        if let Some(padding) = request.inpaint.as_ref().and_then(|i| i.only_masked_padding) {
            return self.generate_only_masked(request, padding, progress);
        }
        request.validate()?;
        if let Some(hires) = &request.hires {
            return self.generate_hires(request, hires, progress);
        }
        self.set_seamless(request.seamless);
        if self.unet_in_channels != self.latent_channels() && request.inpaint.is_none() {
            return Err(DreamError::NotSupported(format!(
                "txt2img or img2img without a mask with a {}-channel (inpainting) UNet",
                self.unet_in_channels
            )));
        }
        let conditioning = self.condition(
            &request.prompt,
            &request.negative_prompt,
            &request.conditioning_options(),
        )?;
        let refiner = match refiner.zip(request.refiner.as_ref()) {
            Some((refiner, switch)) => {
                refiner.set_seamless(request.seamless);
                let conditioning = refiner.condition(
                    &request.prompt,
                    &request.negative_prompt,
                    &request.conditioning_options(),
                )?;
                Some((refiner, conditioning, switch.switch_at))
            }
            None => None,
        };
        let mut generator = TorchGenerator::seeded(request.seed as u64);
        let mut start = self.request_start(request, &mut generator)?;
        let noise = self.request_noise(request, &mut generator)?;
        let inpainting = self.inpainting(request, start.as_mut(), &noise, &mut generator)?;
        let step = Cell::new(0);
        let mut guided = self
            .guided(&conditioning, request.cfg_scale, &step)
            .with_rescale(request.guidance_rescale);
        let mut inpainted;
        let mut handed_off;
        let model: &mut dyn Predictor = match (&inpainting, &refiner) {
            (Some(inpainting), _) => {
                inpainted = inpainting.predictor(&mut guided);
                &mut inpainted
            }
            (None, Some((refiner, conditioning, switch_at))) => {
                let refined = refiner
                    .guided(conditioning, request.cfg_scale, &step)
                    .with_rescale(request.guidance_rescale);
                let schedule = NoiseSchedule::new(&self.scheduler)?;
                handed_off = HandOff::new(guided, refined, schedule, *switch_at);
                &mut handed_off
            }
            (None, None) => &mut guided,
        };
        let mut callback = |info: StepInfo<'_>| {
            step.set(info.step + 1);
            progress(info);
            crate::interrupt::check()
        };
        let latents = match start {
            // Strength 0: no step runs, the image comes back through the VAE.
            Some(start) if start.first_step == request.steps => start.latents,
            start => self.sample(
                request,
                model,
                noise,
                generator,
                start.as_ref(),
                &mut callback,
            )?,
        };
        let (latents, image) = match &inpainting {
            Some(inpainting) => {
                let latents = inpainting.final_latents(latents)?;
                let image = inpainting.paste_back(&self.decode_to_image(&latents)?);
                (latents, image)
            }
            None => {
                let image = self.decode_to_image(&latents)?;
                (latents, image)
            }
        };
        Ok(Generated {
            image,
            request: request.clone(),
            latents,
        })
    }

    /// Runs the request's sampler from the seed's noise, or for img2img from the init latents
    /// noised to `start`'s first step. Step noise continues the seed's generator; the SDE
    /// samplers' Brownian motion is seeded with the seed.
    pub(crate) fn sample(
        &self,
        request: &Txt2Img,
        model: &mut dyn Predictor,
        noise: Tensor,
        generator: TorchGenerator,
        start: Option<&Start>,
        callback: &mut StepCallback<'_>,
    ) -> Result<Tensor, DreamError> {
        let config = &self.scheduler;
        let noise_schedule = NoiseSchedule::new(config)?;
        let prediction = config.prediction_type;
        let steps = request.steps;
        let mut image_noise = GeneratorNoise::new(generator);
        let threshold = request.threshold.filter(|&t| t > 0.0);
        if request.sampler.is_k_diffusion() {
            let mut schedule = if request.discard_penultimate_sigma {
                sigma_schedule(&noise_schedule, request.schedule, steps + 1)?
                    .discard_next_to_last_sigma()
            } else {
                sigma_schedule(&noise_schedule, request.schedule, steps)?
            };
            if let Some(start) = start {
                schedule = schedule_from(&schedule, start.first_step);
            }
            let mut brownian;
            let source: &mut dyn NoiseSource = if request.sampler.is_sde() {
                brownian = BrownianNoise::for_schedule(request.seed as u64, &schedule);
                &mut brownian
            } else {
                &mut image_noise
            };
            let mut noise_options = Noise {
                source,
                eta: request.eta.unwrap_or(request.sampler.default_eta()),
                s_noise: request.s_noise,
            };
            let sigma = schedule.sigmas[0] as f64;
            let x = match start {
                Some(start) => noise_to_sigma(&start.latents, &noise, sigma)?,
                None => (noise * sigma)?,
            };
            let mut denoiser = Denoiser::new(model, &noise_schedule, prediction);
            if let Some(threshold) = threshold {
                let steps_run = schedule.timesteps.len();
                denoiser = denoiser.with_threshold(LatentThreshold::new(threshold, steps_run));
            }
            return Ok(sample_k(
                request.sampler,
                &mut denoiser,
                &schedule,
                x,
                &mut noise_options,
                callback,
            )?);
        }
        // InvokeAI thresholds only in its k-diffusion wrapper; A1111 discards σ only there.
        if threshold.is_some() {
            return Err(DreamError::NotSupported(format!(
                "threshold with the {} sampler",
                request.sampler
            )));
        }
        if request.discard_penultimate_sigma {
            return Err(DreamError::NotSupported(format!(
                "discarding the penultimate sigma with the {} sampler",
                request.sampler
            )));
        }
        if config.thresholding && request.sampler != Sampler::Plms {
            return Err(DreamError::NotSupported(
                "dynamic thresholding (thresholding in scheduler_config.json)".into(),
            ));
        }
        // img2img: the DDPM-family samplers walk the tail of their timesteps from the init
        // latents noised to its first timestep, as diffusers' img2img pipeline and `add_noise`
        // (LCM too: its own img2img pipeline picks other timesteps).
        let walked = |timesteps: Vec<usize>| -> Result<(Vec<usize>, Tensor), DreamError> {
            Ok(match start {
                Some(start) => {
                    let tail = timesteps[start.first_step..].to_vec();
                    let x = noise_to_timestep(&noise_schedule, &start.latents, &noise, tail[0])?;
                    (tail, x)
                }
                None => (timesteps, noise.clone()),
            })
        };
        let clip_sample = match request.sampler {
            Sampler::Ddim | Sampler::Ddpm => config.clip_range(true),
            Sampler::Lcm => config.clip_range(false),
            _ => None,
        };
        let mut model = DiscreteModel {
            model,
            schedule: &noise_schedule,
            prediction,
            clip_sample,
        };
        let latents = match request.sampler {
            Sampler::Ddim => {
                let (timesteps, noise) = walked(ddim_timesteps(config, steps)?)?;
                let mut noise_options = Noise {
                    eta: request.eta.unwrap_or(request.sampler.default_eta()),
                    ..Noise::new(&mut image_noise)
                };
                sample_ddim(
                    &mut model,
                    &timesteps,
                    steps,
                    noise,
                    &mut noise_options,
                    callback,
                )?
            }
            Sampler::Plms => {
                let (timesteps, noise) = walked(ddim_timesteps(config, steps)?)?;
                sample_plms(&mut model, &timesteps, steps, noise, callback)?
            }
            Sampler::Ddpm => {
                let (timesteps, noise) = walked(ddim_timesteps(config, steps)?)?;
                sample_ddpm(&mut model, &timesteps, noise, &mut image_noise, callback)?
            }
            Sampler::Lcm => {
                let (timesteps, noise) = walked(lcm_timesteps(config, steps)?)?;
                sample_lcm(&mut model, &timesteps, noise, &mut image_noise, callback)?
            }
            Sampler::UniPc => {
                let options = config.unipc_options()?;
                if !options.lower_order_final {
                    return Err(DreamError::NotSupported(
                        "UniPC without lower_order_final".into(),
                    ));
                }
                let mut schedule = unipc_schedule(config, request.schedule, steps)?;
                // img2img: the tail of the schedule, from the init latents noised to its
                // first σ in UniPC's variance-preserving form, as its `add_noise`.
                let x = match start {
                    Some(start) => {
                        schedule = schedule_from(&schedule, start.first_step);
                        noise_to_vp_sigma(&start.latents, &noise, schedule.sigmas[0] as f64)?
                    }
                    None => noise,
                };
                sample_unipc(&mut model, &schedule, &options, x, callback)?
            }
            other => return Err(DreamError::NotSupported(format!("the {other} sampler"))),
        };
        Ok(latents)
    }

    /// Decodes latents to 8-bit RGB as diffusers does: clamp(x/2 + 0.5, 0, 1), ×255, rounded.
    pub fn decode_to_image(&self, latents: &Tensor) -> Result<RgbImage, DreamError> {
        let raw = self.decode(latents)?;
        let (_, _, height, width) = raw.dims4()?;
        let pixels = (raw.affine(0.5, 0.5)?.clamp(0f32, 1f32)? * 255.0)?
            .round()?
            .squeeze(0)?
            .permute((1, 2, 0))?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }
}
