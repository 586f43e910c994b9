//! The discrete noise schedule of Stable Diffusion and the step schedules samplers walk.
//!
//! SD is trained on 1000 noise levels: timestep `t` mixes a clean latent `x0` with noise as
//! `sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε`, where `ᾱ_t` (`alphas_cumprod`) comes from a beta schedule.
//! Samplers visit a few of those levels: DDIM picks integer timesteps, k-diffusion style samplers
//! (Euler and friends) walk noise levels `σ = sqrt((1-ᾱ)/ᾱ)` down to 0.
//!
//! Everything here reproduces diffusers 0.42.1 number for number: the betas as
//! `torch.linspace` makes them in f32, `ᾱ` as `torch.cumprod` (f32 values, f64 running
//! product), the timestep spacings with numpy's f64 `linspace`/`arange` and half-to-even
//! rounding, and Euler's sigmas interpolated in f64 (`np.interp`) then rounded to f32.
//!
//! [`sigma_schedule`] builds the σ schedules of k-diffusion, A1111 and ComfyUI over the same
//! training sigmas, in the precision each computes in (k-diffusion's in f32 like torch).

use serde::Deserialize;

use crate::sampler::ScheduleKind;

/// How the betas grow over the training timesteps (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Betas evenly spaced from `beta_start` to `beta_end`.
    Linear,
    /// Square roots evenly spaced, then squared: the latent diffusion (SD 1.x/2.x) schedule.
    ScaledLinear,
}

/// What the UNet predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε (SD 1.x, SD 2.x base).
    Epsilon,
    /// v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 (SD 2.x 768-v models).
    VPrediction,
}

/// Where a sampler's timesteps sit among the training timesteps (diffusers' `timestep_spacing`,
/// Table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly spaced from the last training timestep down to 0, rounded.
    Linspace,
    /// Multiples of `num_train_timesteps / steps` counted up from 0, plus `steps_offset`.
    Leading,
    /// Multiples of `num_train_timesteps / steps` counted down from the last timestep.
    Trailing,
}

impl std::fmt::Display for TimestepSpacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Linspace => "linspace",
            Self::Leading => "leading",
            Self::Trailing => "trailing",
        })
    }
}

/// A diffusers `scheduler/scheduler_config.json`, reduced to the fields that shape the schedule.
///
/// Missing fields take diffusers' constructor defaults, as `Scheduler.from_config` does; other
/// keys (`_class_name`, `skip_prk_steps`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas that replace `beta_start`/`beta_end`/`beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    /// Added to every "leading" timestep (SD 1.x uses 1).
    pub steps_offset: usize,
    /// DDIM's last step lands on ᾱ = 1 when true, on ᾱ of timestep 0 when false.
    pub set_alpha_to_one: bool,
    /// `None` when the file does not say: each scheduler then uses its own default
    /// (DDIM/PNDM "leading", Euler and the other k-diffusion samplers "linspace").
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Clipping of the predicted x0 to ±`clip_sample_range` (DDIM, DDPM, LCM). `None` when the
    /// file does not say: each scheduler's default then (DDIM and DDPM clip, LCM does not;
    /// clipping is wrong for latents, so SD files set it to false).
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    /// Dynamic thresholding of x0 (Imagen's, for pixel-space models); parsed only to refuse it.
    pub thresholding: bool,
    /// Zero-terminal-SNR rescaling of the betas; parsed only to refuse it.
    pub rescale_betas_zero_snr: bool,
    /// UniPC's `solver_order`, `solver_type`, `predict_x0` and `lower_order_final` (see
    /// [`UniPcOptions`]); `solver_type` is kept as written, DPM-Solver's names included.
    pub solver_order: usize,
    pub solver_type: Option<String>,
    pub predict_x0: bool,
    pub lower_order_final: bool,
    /// The schedule an LCM model was distilled on ([`LCM_ORIGINAL_STEPS`] by default).
    pub original_inference_steps: usize,
}

impl Default for SchedulerConfig {
    /// The defaults of diffusers' `DDIMScheduler.__init__` (Euler shares the common ones).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 0,
            set_alpha_to_one: true,
            timestep_spacing: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            thresholding: false,
            rescale_betas_zero_snr: false,
            solver_order: 2,
            solver_type: None,
            predict_x0: true,
            lower_order_final: true,
            original_inference_steps: LCM_ORIGINAL_STEPS,
        }
    }
}

impl SchedulerConfig {
    /// The scheduler config shipped with Stable Diffusion 1.x (runwayml/stable-diffusion-v1-5).
    pub fn sd1() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: Some(false),
            ..Self::default()
        }
    }

    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json_str(json: &str) -> Result<Self, ScheduleError> {
        Ok(serde_json::from_str(json)?)
    }

    /// The range x0 estimates are clipped to, if they are, for a scheduler that clips by
    /// default when `clips_by_default` (diffusers' DDIM and DDPM) or not (LCM).
    pub fn clip_range(&self, clips_by_default: bool) -> Option<f64> {
        self.clip_sample
            .unwrap_or(clips_by_default)
            .then_some(self.clip_sample_range)
    }

    /// How diffusers' `UniPCMultistepScheduler.from_config` would run UniPC: DPM-Solver's
    /// `solver_type` names (`midpoint`, `heun`, `logrho`) become bh2, as diffusers does.
    pub fn unipc_options(&self) -> Result<UniPcOptions, ScheduleError> {
        let variant = match self.solver_type.as_deref() {
            Some("bh1") => UniPcVariant::Bh1,
            None | Some("bh2" | "midpoint" | "heun" | "logrho") => UniPcVariant::Bh2,
            Some(other) => return Err(ScheduleError::UnknownSolverType(other.to_string())),
        };
        if !(1..=3).contains(&self.solver_order) {
            return Err(ScheduleError::SolverOrder(self.solver_order));
        }
        Ok(UniPcOptions {
            order: self.solver_order,
            variant,
            predict_x0: self.predict_x0,
            lower_order_final: self.lower_order_final,
        })
    }
}

/// How UniPC runs: diffusers' `UniPCMultistepScheduler` options of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniPcOptions {
    /// `solver_order`: how many past model outputs a step uses, 1 to 3.
    pub order: usize,
    /// `solver_type`: the B(h) of the update.
    pub variant: UniPcVariant,
    /// `predict_x0`: the multistep works on x₀ estimates (data prediction, as DPM-Solver++)
    /// rather than on ε.
    pub predict_x0: bool,
    /// `lower_order_final`: the last steps drop to lower orders. Without it the step to σ = 0
    /// has no finite coefficients (diffusers fails there too), so it is refused.
    pub lower_order_final: bool,
}

impl Default for UniPcOptions {
    /// diffusers' defaults: order 2, bh2, data prediction, lower order at the end.
    fn default() -> Self {
        Self {
            order: 2,
            variant: UniPcVariant::Bh2,
            predict_x0: true,
            lower_order_final: true,
        }
    }
}

/// UniPC's B(h), the function of the step size h (in log-SNR) its update is expanded over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcVariant {
    /// B(h) = h (the paper recommends it for unconditional sampling).
    Bh1,
    /// B(h) = eʰ − 1 (for guided sampling).
    Bh2,
}

/// Why a schedule cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid scheduler config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("num_train_timesteps must be at least 2, got {0}")]
    TooFewTrainTimesteps(usize),
    #[error("trained_betas has {got} entries but num_train_timesteps is {expected}")]
    TrainedBetasLength { got: usize, expected: usize },
    #[error("rescale_betas_zero_snr = true is not supported")]
    ZeroSnrUnsupported,
    #[error("the number of sampling steps must be at least 1")]
    ZeroSteps,
    #[error("{steps} DDIM steps exceed the {train} training timesteps")]
    TooManySteps { steps: usize, train: usize },
    #[error(
        "{spacing} spacing with {steps} steps gives timestep {timestep}, \
         outside the training range 0..{train}"
    )]
    TimestepOutOfRange {
        spacing: TimestepSpacing,
        steps: usize,
        timestep: i64,
        train: usize,
    },
    #[error("LCM takes at most {original} steps (the schedule it was distilled on), got {steps}")]
    TooManyLcmSteps { steps: usize, original: usize },
    #[error("unknown solver_type {0:?} for UniPC; valid: bh1, bh2")]
    UnknownSolverType(String),
    #[error("UniPC solver_order must be 1, 2 or 3, got {0}")]
    SolverOrder(usize),
}

/// The training noise schedule: ᾱ for every training timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// ᾱ_t = ∏_{s≤t} (1 − β_s), for t in 0..num_train_timesteps; decreasing.
    pub alphas_cumprod: Vec<f32>,
    /// The ᾱ DDIM uses after its last step (diffusers' `final_alpha_cumprod`).
    pub final_alpha_cumprod: f32,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> Result<Self, ScheduleError> {
        let betas = betas(config)?;
        // torch.cumprod keeps the running product in double and rounds each output to float.
        let mut product = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&beta| {
                product *= f64::from(1.0 - beta);
                product as f32
            })
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
        })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), the noise level of training timestep `t` in the
    /// variance-exploding view k-diffusion samplers use.
    ///
    /// # Panics
    /// If `t >= num_train_timesteps`.
    pub fn sigma(&self, t: usize) -> f32 {
        let alpha = self.alphas_cumprod[t];
        ((1.0 - alpha) / alpha).sqrt()
    }

    /// σ_t for every training timestep, increasing with t.
    pub fn sigmas(&self) -> Vec<f32> {
        (0..self.num_train_timesteps())
            .map(|t| self.sigma(t))
            .collect()
    }

    /// σ of timestep 0, the smallest noise level the model was trained on.
    pub fn sigma_min(&self) -> f32 {
        self.sigma(0)
    }

    /// σ of the last training timestep, the largest.
    pub fn sigma_max(&self) -> f32 {
        self.sigma(self.num_train_timesteps() - 1)
    }

    /// ln σ_t, rounded to f32 as k-diffusion's `log_sigmas` buffer (and diffusers' `np.log` of
    /// its f32 sigmas) holds it.
    fn log_sigma(&self, t: usize) -> f64 {
        f64::from(self.sigma(t).ln())
    }

    /// The fractional training timestep of noise level `sigma`: ln σ interpolated linearly
    /// between the two training timesteps around it, clamped to `[0, T − 1]`
    /// (k-diffusion's `DiscreteSchedule.sigma_to_t`; diffusers' `_sigma_to_t` is the same in
    /// f64). This is the timestep a k-diffusion sampler tells the UNet at σ.
    ///
    /// Computed in f32 throughout, as k-diffusion does: a training σ then lands exactly on its
    /// own timestep, and the result has k-diffusion's rounding, which matters because a UNet
    /// can be sensitive to 1e-5 in its timestep (the tiny test model moves its 10-step latents
    /// by 5e-4 for the f64 result).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigmas: Vec<f32> = (0..self.num_train_timesteps())
            .map(|t| self.sigma(t).ln())
            .collect();
        let log_sigma = (sigma as f32).ln();
        // The last training timestep at or below σ (0 if none), one short of the end so that
        // it has a successor: k-diffusion's `dists.ge(0).cumsum().argmax().clamp(max=T-2)`.
        let low = log_sigmas
            .partition_point(|&l| l <= log_sigma)
            .saturating_sub(1)
            .min(log_sigmas.len() - 2);
        let (below, above) = (log_sigmas[low], log_sigmas[low + 1]);
        let w = ((below - log_sigma) / (below - above)).clamp(0.0, 1.0);
        f64::from((1.0 - w) * low as f32 + w * (low + 1) as f32)
    }

    /// The noise level of a fractional training timestep: ln σ interpolated linearly between
    /// the training timesteps either side (k-diffusion's `DiscreteSchedule.t_to_sigma`), with
    /// `t` clamped to `[0, T − 1]` as ComfyUI does.
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.num_train_timesteps() - 1) as f64);
        let w = t.fract();
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        ((1.0 - w) * self.log_sigma(low) + w * self.log_sigma(high)).exp()
    }

    /// The ᾱ a DDIM step from timestep `t` moves to, with diffusers' rule: the previous
    /// timestep is `t − num_train_timesteps / steps` whatever the spacing, and past 0 it is
    /// `final_alpha_cumprod`.
    ///
    /// # Panics
    /// If `t >= num_train_timesteps`.
    pub fn ddim_prev_alpha_cumprod(&self, t: usize, steps: usize) -> f32 {
        let stride = self.num_train_timesteps() / steps.max(1);
        match t.checked_sub(stride) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        }
    }
}

/// The timesteps DDIM visits, from the noisiest down, as `DDIMScheduler.set_timesteps`
/// computes them (spacing defaults to "leading").
pub fn ddim_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<usize>, ScheduleError> {
    let train = config.num_train_timesteps;
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    if steps > train {
        return Err(ScheduleError::TooManySteps { steps, train });
    }
    let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
    let timesteps: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, steps)
            .iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => trailing_from(train, steps)
            .iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    };
    in_training_range(timesteps, spacing, steps, train)
}

/// The timesteps as indices into the training schedule, or the first that is not one.
fn in_training_range(
    timesteps: Vec<i64>,
    spacing: TimestepSpacing,
    steps: usize,
    train: usize,
) -> Result<Vec<usize>, ScheduleError> {
    timesteps
        .into_iter()
        .map(|t| {
            usize::try_from(t).ok().filter(|&t| t < train).ok_or(
                ScheduleError::TimestepOutOfRange {
                    spacing,
                    steps,
                    timestep: t,
                    train,
                },
            )
        })
        .collect()
}

/// `UniPCMultistepScheduler.set_timesteps(steps)` with a final σ of 0. For
/// [`ScheduleKind::Normal`] the timesteps come by `timestep_spacing` (default "linspace", over
/// `steps + 1` points of which the last, timestep 0, is dropped), each with its training σ.
/// Other kinds take the σ of [`sigma_schedule`] with their timesteps rounded, as diffusers
/// does for `use_karras_sigmas`. UniPC's latents start at unit variance.
pub fn unipc_schedule(
    config: &SchedulerConfig,
    kind: ScheduleKind,
    steps: usize,
) -> Result<SigmaSchedule, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    let noise = NoiseSchedule::new(config)?;
    if kind != ScheduleKind::Normal {
        let schedule = sigma_schedule(&noise, kind, steps)?;
        return Ok(SigmaSchedule {
            timesteps: schedule
                .timesteps
                .iter()
                .map(|t| t.round_ties_even())
                .collect(),
            init_noise_sigma: 1.0,
            ..schedule
        });
    }
    let train = config.num_train_timesteps;
    let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
    let timesteps: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, steps + 1)
            .iter()
            .rev()
            .take(steps)
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => trailing_from(train, steps)
            .iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    };
    let timesteps = in_training_range(timesteps, spacing, steps, train)?;
    Ok(SigmaSchedule {
        sigmas: timesteps
            .iter()
            .map(|&t| noise.sigma(t))
            .chain([0.0])
            .collect(),
        timesteps: timesteps.iter().map(|&t| t as f32).collect(),
        init_noise_sigma: 1.0,
    })
}

/// The length of the schedule LCM models are distilled on (`LCMScheduler`'s
/// `original_inference_steps` default).
pub const LCM_ORIGINAL_STEPS: usize = 50;

/// `LCMScheduler.set_timesteps(steps)`: `steps` timesteps picked evenly, from the noisiest,
/// out of the N = `original_inference_steps` timesteps k·⌊T/N⌋ − 1 (k = 1…N) the model was
/// distilled on.
pub fn lcm_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<usize>, ScheduleError> {
    let original = config.original_inference_steps;
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    if steps > original {
        return Err(ScheduleError::TooManyLcmSteps { steps, original });
    }
    let train = config.num_train_timesteps;
    if train < original {
        return Err(ScheduleError::TooManySteps {
            steps: original,
            train,
        });
    }
    let stride = train / original;
    let stride_in_original = original as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| {
            let k = original - (i as f64 * stride_in_original).floor() as usize;
            k * stride - 1
        })
        .collect())
}

/// The noise levels a k-diffusion style sampler walks, each with its UNet timestep.
///
/// Samplers take `sigmas[i] → sigmas[i + 1]` steps; `timesteps[i]` is what the UNet is told
/// while denoising at `sigmas[i]`. [`euler_schedule`] builds it as diffusers' Euler does,
/// [`sigma_schedule`] for every [`ScheduleKind`] as k-diffusion, A1111 and ComfyUI do.
#[derive(Debug, Clone, PartialEq)]
pub struct SigmaSchedule {
    /// Noise levels from the first (largest) down to a final 0; one longer than `timesteps`.
    pub sigmas: Vec<f32>,
    /// Training timestep of each sigma but the last; fractional where a sigma falls between
    /// two training timesteps.
    pub timesteps: Vec<f32>,
    /// What the unit-variance starting noise is scaled by (diffusers' `init_noise_sigma`).
    pub init_noise_sigma: f32,
}

/// `EulerDiscreteScheduler.set_timesteps(steps)`: the timesteps by `timestep_spacing` (default
/// "linspace"), each timestep's sigma interpolated linearly between training sigmas.
///
/// Like diffusers, "trailing" spacing can produce one step more than asked (numpy's `arange`
/// overshoots for some step counts, e.g. 61), with a last timestep of −1.
pub fn euler_schedule(
    config: &SchedulerConfig,
    steps: usize,
) -> Result<SigmaSchedule, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    let schedule = NoiseSchedule::new(config)?;
    let train = config.num_train_timesteps;
    let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
    let timesteps: Vec<f32> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, steps)
            .iter()
            .rev()
            .map(|&t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f32 + config.steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => trailing_from(train, steps)
            .iter()
            .map(|t| t.round_ties_even() as f32 - 1.0)
            .collect(),
    };
    let train_sigmas: Vec<f64> = schedule.sigmas().into_iter().map(f64::from).collect();
    let mut sigmas: Vec<f32> = timesteps
        .iter()
        .map(|&t| interp_unit_grid(f64::from(t), &train_sigmas) as f32)
        .collect();
    sigmas.push(0.0);
    let max_sigma = sigmas.iter().copied().fold(0.0, f32::max);
    let init_noise_sigma = match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    };
    Ok(SigmaSchedule {
        sigmas,
        timesteps,
        init_noise_sigma,
    })
}

impl SigmaSchedule {
    /// A schedule over noise levels that end in 0, as k-diffusion samplers run it: each σ's
    /// timestep is [`NoiseSchedule::sigma_to_t`], and the starting noise is scaled by the first
    /// σ.
    fn from_sigmas(noise: &NoiseSchedule, sigmas: Vec<f32>) -> Self {
        let timesteps = sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&sigma| noise.sigma_to_t(f64::from(sigma)) as f32)
            .collect();
        Self {
            init_noise_sigma: sigmas[0],
            sigmas,
            timesteps,
        }
    }

    /// A1111's `discard_next_to_last_sigma` (DPM2, DPM2 a, DPM++ 3M SDE): drops the σ just
    /// before the final 0, so that the last step goes straight to 0. A1111 builds the schedule
    /// for one step more, so the step count stays. Schedules of one step are left as they are.
    pub fn discard_next_to_last_sigma(mut self) -> Self {
        if self.sigmas.len() >= 3 {
            let next_to_last = self.sigmas.len() - 2;
            self.sigmas.remove(next_to_last);
            self.timesteps.remove(next_to_last);
        }
        self
    }
}

/// Karras et al. (2022)'s ρ, the one k-diffusion, A1111 and ComfyUI default to.
pub const KARRAS_RHO: f64 = 7.0;

/// The shape of the Beta distribution the "beta" schedules place their steps by, α = β = 0.6
/// (ComfyUI's `beta_scheduler` defaults, A1111's `beta_dist_alpha`/`beta_dist_beta` options).
const BETA_SCHEDULE_SHAPE: (f64, f64) = (0.6, 0.6);

/// The `steps` noise levels (plus a final 0) that `kind` picks from the model's training
/// schedule, each with its UNet timestep.
///
/// Every kind reproduces its reference: "normal", Karras, exponential and polyexponential are
/// k-diffusion's (`DiscreteSchedule.get_sigmas` and `get_sigmas_*` over the model's σ range);
/// SGM uniform, simple, DDIM uniform and beta are ComfyUI's (`comfy/samplers.py`), A1111 beta
/// is A1111's (`modules/sd_schedulers.py`). Karras equals diffusers' `use_karras_sigmas` too,
/// within f32 rounding.
///
/// The schedule has `steps` steps except where the reference gives another count: beta drops
/// a timestep equal to the one before (1000 steps give 847), and DDIM uniform takes every
/// `T / steps`-th timestep from 1 (30 steps give 31, 1000 give 999).
pub fn sigma_schedule(
    noise: &NoiseSchedule,
    kind: ScheduleKind,
    steps: usize,
) -> Result<SigmaSchedule, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    let (sigma_min, sigma_max) = (f64::from(noise.sigma_min()), f64::from(noise.sigma_max()));
    let last_timestep = (noise.num_train_timesteps() - 1) as f32;
    let (alpha, beta) = BETA_SCHEDULE_SHAPE;
    let sigmas = match kind {
        ScheduleKind::Normal => at_timesteps(noise, &torch_linspace_f32(last_timestep, 0.0, steps)),
        ScheduleKind::Karras => karras_sigmas(sigma_min, sigma_max, steps, KARRAS_RHO),
        ScheduleKind::Exponential => exponential_sigmas(sigma_min, sigma_max, steps),
        ScheduleKind::PolyExponential => polyexponential_sigmas(sigma_min, sigma_max, steps, 1.0),
        ScheduleKind::SgmUniform => at_timesteps(
            noise,
            &torch_linspace_f32(last_timestep, 0.0, steps + 1)[..steps],
        ),
        ScheduleKind::Simple => simple_sigmas(noise, steps),
        ScheduleKind::DdimUniform => ddim_uniform_sigmas(noise, steps),
        ScheduleKind::Beta => beta_sigmas(noise, steps, alpha, beta),
        ScheduleKind::A1111Beta => np_linspace(0.0, 1.0, steps)
            .into_iter()
            .map(|x| {
                let quantile = beta_quantile(1.0 - x, alpha, beta);
                (sigma_min + quantile * (sigma_max - sigma_min)) as f32
            })
            .chain([0.0])
            .collect(),
    };
    Ok(SigmaSchedule::from_sigmas(noise, sigmas))
}

/// Karras et al. (2022) eq. 5: `n` noise levels evenly spaced in σ^(1/ρ) from `sigma_max`
/// down to `sigma_min`, then 0 (k-diffusion's `get_sigmas_karras`). Like k-diffusion, the ramp
/// and the power are f32, the ends σ^(1/ρ) f64.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f32> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let span = (min_inv_rho - max_inv_rho) as f32;
    torch_linspace_f32(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho as f32 + ramp * span).powf(rho as f32))
        .chain([0.0])
        .collect()
}

/// `n` noise levels evenly spaced in ln σ from `sigma_max` down to `sigma_min`, then 0
/// (k-diffusion's `get_sigmas_exponential`, in f32 as it computes).
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f32> {
    torch_linspace_f32(sigma_max.ln() as f32, sigma_min.ln() as f32, n)
        .into_iter()
        .map(f32::exp)
        .chain([0.0])
        .collect()
}

/// `n` noise levels with ln σ a polynomial of degree ρ in the step, from `sigma_max` down to
/// `sigma_min`, then 0 (k-diffusion's `get_sigmas_polyexponential`, in f32 as it computes;
/// ρ = 1 is exponential).
pub fn polyexponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f32> {
    let (log_min, log_max) = (sigma_min.ln(), sigma_max.ln());
    let span = (log_max - log_min) as f32;
    torch_linspace_f32(1.0, 0.0, n)
        .into_iter()
        .map(|ramp| (ramp.powf(rho as f32) * span + log_min as f32).exp())
        .chain([0.0])
        .collect()
}

/// The noise levels of fractional training timesteps, then 0.
fn at_timesteps(noise: &NoiseSchedule, timesteps: &[f32]) -> Vec<f32> {
    timesteps
        .iter()
        .map(|&t| noise.t_to_sigma(f64::from(t)) as f32)
        .chain([0.0])
        .collect()
}

/// ComfyUI's `simple_scheduler`: every `(T / steps)`-th training σ counted down from the last,
/// the index truncated, then 0.
fn simple_sigmas(noise: &NoiseSchedule, steps: usize) -> Vec<f32> {
    let train = noise.num_train_timesteps();
    let stride = train as f64 / steps as f64;
    (0..steps)
        .map(|x| noise.sigma(train - 1 - (x as f64 * stride) as usize))
        .chain([0.0])
        .collect()
}

/// ComfyUI's `ddim_scheduler`: the training σ at timesteps 1, 1 + s, 1 + 2s, … (s = T / steps)
/// from the largest down, then 0. (ComfyUI also handles models whose σ_1 is 0, which a DDPM
/// beta schedule never has.)
fn ddim_uniform_sigmas(noise: &NoiseSchedule, steps: usize) -> Vec<f32> {
    let train = noise.num_train_timesteps();
    let stride = (train / steps).max(1);
    let mut sigmas: Vec<f32> = (1..train).step_by(stride).map(|t| noise.sigma(t)).collect();
    sigmas.reverse();
    sigmas.push(0.0);
    sigmas
}

/// ComfyUI's `beta_scheduler`: the training timesteps at the quantiles 1, 1 − 1/steps, …,
/// 1/steps of Beta(α, β), rounded half to even (`numpy.rint`), a timestep equal to the one
/// before skipped, their training σ, then 0. Beta(0.6, 0.6) puts more steps at both ends.
fn beta_sigmas(noise: &NoiseSchedule, steps: usize, alpha: f64, beta: f64) -> Vec<f32> {
    let last = (noise.num_train_timesteps() - 1) as f64;
    let spacing = 1.0 / steps as f64;
    let mut timesteps: Vec<usize> = (0..steps)
        .map(|i| {
            let quantile = beta_quantile(1.0 - i as f64 * spacing, alpha, beta);
            (quantile * last).round_ties_even() as usize
        })
        .collect();
    timesteps.dedup();
    timesteps
        .into_iter()
        .map(|t| noise.sigma(t))
        .chain([0.0])
        .collect()
}

/// The `p`-quantile of the Beta(a, b) distribution (scipy's `beta.ppf`): the x in [0, 1] with
/// I_x(a, b) = p, by bisection, which the monotone I_x allows, down to adjacent f64 values.
fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // A symmetric distribution's median is 1/2 exactly. ComfyUI rounds 999 × the quantile,
    // and 499.5 must not come out as 499.49999….
    if a == b && p == 0.5 {
        return 0.5;
    }
    let (mut low, mut high) = (0.0f64, 1.0f64);
    loop {
        let mid = 0.5 * (low + high);
        if mid <= low || mid >= high {
            return mid;
        }
        if regularized_incomplete_beta(mid, a, b) < p {
            low = mid;
        } else {
            high = mid;
        }
    }
}

/// The regularized incomplete beta function I_x(a, b) for x in [0, 1], a, b > 0, from its
/// continued fraction (Numerical Recipes §6.4), using the symmetry
/// I_x(a, b) = 1 − I_{1−x}(b, a) where the fraction converges slowly.
fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (-x).ln_1p()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of I_x(a, b), evaluated by the modified Lentz method.
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let nonzero = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0));
    let mut fraction = d;
    for m in 1..=10_000 {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / nonzero(1.0 + even * d);
        c = nonzero(1.0 + even / c);
        fraction *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / nonzero(1.0 + odd * d);
        c = nonzero(1.0 + odd / c);
        fraction *= d * c;
        if (d * c - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    fraction
}

/// ln Γ(x) for x > 0: the Lanczos approximation (g = 7, 9 terms, relative error ~1e-15), with
/// the reflection formula below 1/2.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let series = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, &c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// β_t for every training timestep, as diffusers' schedulers compute them in `__init__`.
fn betas(config: &SchedulerConfig) -> Result<Vec<f32>, ScheduleError> {
    let n = config.num_train_timesteps;
    if n < 2 {
        return Err(ScheduleError::TooFewTrainTimesteps(n));
    }
    if config.rescale_betas_zero_snr {
        return Err(ScheduleError::ZeroSnrUnsupported);
    }
    Ok(match (&config.trained_betas, config.beta_schedule) {
        (Some(betas), _) if betas.len() != n => {
            return Err(ScheduleError::TrainedBetasLength {
                got: betas.len(),
                expected: n,
            })
        }
        (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
        (None, BetaSchedule::Linear) => {
            torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, n)
        }
        (None, BetaSchedule::ScaledLinear) => torch_linspace_f32(
            config.beta_start.sqrt() as f32,
            config.beta_end.sqrt() as f32,
            n,
        )
        .into_iter()
        .map(|b| b * b)
        .collect(),
    })
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU: the first half counts up from
/// `start`, the second half down from `end`; x86 builds fuse each multiply-add.
fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `np.linspace(start, stop, num)` in f64: `i·step + start`, with the end point exact.
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    values[num - 1] = stop;
    values
}

/// `np.arange(train, 0, -train / steps)`, unrounded, the way numpy fills it: the length is
/// `ceil(train / stride)` and element `i >= 2` is `start + i·(second − start)`.
fn trailing_from(train: usize, steps: usize) -> Vec<f64> {
    let start = train as f64;
    let stride = start / steps as f64;
    let len = (start / stride).ceil() as usize;
    let second = start - stride;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation on the grid 0, 1, 2, …, clamped to
/// the end values outside it.
fn interp_unit_grid(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j];
    }
    (fp[j + 1] - fp[j]) * (x - j as f64) + fp[j]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{f32s, f64s, read};
    use safetensors::SafeTensors;
    use serde_json::Value;

    /// The cases of a fixtures/schedules/*.json file (tools/parity/schedule_fixtures.py).
    fn cases(file: &str) -> Vec<Value> {
        let json: Value = serde_json::from_slice(&read(&format!("schedules/{file}"))).unwrap();
        json["cases"].as_array().unwrap().clone()
    }

    fn config_of(case: &Value) -> SchedulerConfig {
        serde_json::from_value(case["config"].clone()).unwrap()
    }

    /// The fixtures store f32 values as the f64 numbers they equal.
    fn f32_list(value: &Value) -> Vec<f32> {
        let list = value.as_array().unwrap();
        list.iter()
            .map(|v| {
                let x = v.as_f64().unwrap();
                assert_eq!(x as f32 as f64, x, "{x} is not an f32");
                x as f32
            })
            .collect()
    }

    /// torch's CPU `sqrt` goes through MKL's vector math, which is not correctly rounded: for
    /// SD 1.x's 1000 training sigmas it is 1 ulp off the true square root 190 times. We take
    /// the correctly rounded root (it does not depend on the CPU), so sigmas may differ by that.
    const SQRT_ULPS: u32 = 1;

    fn assert_same(what: &str, ours: &[f32], diffusers: &[f32]) {
        assert_within_ulps(what, ours, diffusers, 0);
    }

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn assert_within_ulps(what: &str, ours: &[f32], diffusers: &[f32], max_ulps: u32) {
        assert_eq!(ours.len(), diffusers.len(), "{what}: length");
        if let Some(i) = (0..ours.len()).find(|&i| ulps(ours[i], diffusers[i]) > max_ulps) {
            panic!(
                "{what}: element {i} is {}, diffusers has {}",
                ours[i], diffusers[i]
            );
        }
    }

    fn describe(case: &Value) -> String {
        format!("{} steps={}", case["config"], case["steps"])
    }

    #[test]
    fn sd1_config_file_parses_to_sd1() {
        let text = String::from_utf8(read("tiny/scheduler/scheduler_config.json")).unwrap();
        assert_eq!(
            SchedulerConfig::from_json_str(&text).unwrap(),
            SchedulerConfig::sd1()
        );
    }

    #[test]
    fn noise_schedule_matches_diffusers() {
        let cases = cases("noise.json");
        assert!(!cases.is_empty());
        for case in &cases {
            let config = config_of(case);
            let what = case["config"].to_string();
            assert_same(
                &format!("betas {what}"),
                &betas(&config).unwrap(),
                &f32_list(&case["betas"]),
            );
            let schedule = NoiseSchedule::new(&config).unwrap();
            assert_same(
                &format!("alphas_cumprod {what}"),
                &schedule.alphas_cumprod,
                &f32_list(&case["alphas_cumprod"]),
            );
            assert_within_ulps(
                &format!("sigmas {what}"),
                &schedule.sigmas(),
                &f32_list(&case["sigmas"]),
                SQRT_ULPS,
            );
        }
    }

    #[test]
    fn ddim_timesteps_match_diffusers() {
        let cases = cases("ddim.json");
        assert!(cases.iter().any(|c| !c["valid"].as_bool().unwrap()));
        for case in &cases {
            let config = config_of(case);
            let steps = case["steps"].as_u64().unwrap() as usize;
            let ours = ddim_timesteps(&config, steps);
            if case["valid"].as_bool().unwrap() {
                let diffusers: Vec<usize> = case["timesteps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(ours.unwrap(), diffusers, "{}", describe(case));
            } else {
                assert!(
                    matches!(ours, Err(ScheduleError::TimestepOutOfRange { .. })),
                    "{}: {ours:?}",
                    describe(case)
                );
            }
            let final_alpha = NoiseSchedule::new(&config).unwrap().final_alpha_cumprod;
            assert_eq!(
                f64::from(final_alpha),
                case["final_alpha_cumprod"].as_f64().unwrap(),
                "{}",
                describe(case)
            );
        }
    }

    #[test]
    fn ddim_previous_alpha_follows_the_stride_rule() {
        let schedule = NoiseSchedule::new(&SchedulerConfig::sd1()).unwrap();
        let ac = &schedule.alphas_cumprod;
        // 20 steps: stride 50, so 951 -> 901, and the last step (t=1) goes past 0.
        assert_eq!(schedule.ddim_prev_alpha_cumprod(951, 20), ac[901]);
        assert_eq!(schedule.ddim_prev_alpha_cumprod(50, 20), ac[0]);
        assert_eq!(schedule.ddim_prev_alpha_cumprod(1, 20), ac[0]);
        let to_one = SchedulerConfig {
            set_alpha_to_one: true,
            ..SchedulerConfig::sd1()
        };
        let schedule = NoiseSchedule::new(&to_one).unwrap();
        assert_eq!(schedule.ddim_prev_alpha_cumprod(1, 20), 1.0);
        assert_eq!(schedule.ddim_prev_alpha_cumprod(51, 20), ac[1]);
    }

    #[test]
    fn euler_schedule_matches_diffusers() {
        let cases = cases("euler.json");
        assert!(!cases.is_empty());
        for case in &cases {
            let config = config_of(case);
            let steps = case["steps"].as_u64().unwrap() as usize;
            let what = describe(case);
            let ours = euler_schedule(&config, steps).unwrap();
            assert_same(
                &format!("timesteps {what}"),
                &ours.timesteps,
                &f32_list(&case["timesteps"]),
            );
            assert_within_ulps(
                &format!("sigmas {what}"),
                &ours.sigmas,
                &f32_list(&case["sigmas"]),
                SQRT_ULPS,
            );
            // "leading" takes sqrt(σ_max² + 1): a sigma 1 ulp off, then a second rounding.
            assert_within_ulps(
                &format!("init_noise_sigma {what}"),
                &[ours.init_noise_sigma],
                &f32_list(&Value::from(vec![case["init_noise_sigma"].clone()])),
                2 * SQRT_ULPS,
            );
        }
    }

    /// The schedules the reference pipelines actually ran with (the tiny model's SD 1.x
    /// scheduler config, so DDIM defaults to "leading" and Euler to "linspace").
    #[test]
    fn reference_pipelines_used_these_schedules() {
        let text = String::from_utf8(read("tiny/scheduler/scheduler_config.json")).unwrap();
        let config = SchedulerConfig::from_json_str(&text).unwrap();
        for file in [
            "ref/txt2img_ddim.safetensors",
            "ref/img2img_ddim.safetensors",
        ] {
            let bytes = read(file);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let diffusers = f64s(&st, "scheduler.timesteps");
            let ours: Vec<f64> = ddim_timesteps(&config, diffusers.len())
                .unwrap()
                .into_iter()
                .map(|t| t as f64)
                .collect();
            assert_eq!(ours, diffusers, "{file}");
        }
        for file in [
            "ref/txt2img_euler.safetensors",
            "ref/txt2img_euler_64x48.safetensors",
        ] {
            let bytes = read(file);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let timesteps = f64s(&st, "scheduler.timesteps");
            let ours = euler_schedule(&config, timesteps.len()).unwrap();
            let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
            assert_eq!(widen(&ours.timesteps), timesteps, "{file} timesteps");
            let sigmas: Vec<f32> = f64s(&st, "scheduler.sigmas")
                .iter()
                .map(|&s| s as f32)
                .collect();
            assert_within_ulps(&format!("{file} sigmas"), &ours.sigmas, &sigmas, SQRT_ULPS);
            // txt2img scales the unit noise by init_noise_sigma to start the loop.
            let noise = f32s(&st, "init_noise");
            let start: Vec<f32> = noise.iter().map(|&x| x * ours.init_noise_sigma).collect();
            assert_same(
                &format!("{file} latents_init"),
                &start,
                &f32s(&st, "latents_init"),
            );
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let sd1 = SchedulerConfig::sd1();
        assert!(matches!(
            ddim_timesteps(&sd1, 0),
            Err(ScheduleError::ZeroSteps)
        ));
        assert!(matches!(
            euler_schedule(&sd1, 0),
            Err(ScheduleError::ZeroSteps)
        ));
        assert!(matches!(
            ddim_timesteps(&sd1, 1001),
            Err(ScheduleError::TooManySteps {
                steps: 1001,
                train: 1000
            })
        ));
        let short = SchedulerConfig {
            trained_betas: Some(vec![0.1; 10]),
            ..sd1.clone()
        };
        assert!(matches!(
            NoiseSchedule::new(&short),
            Err(ScheduleError::TrainedBetasLength {
                got: 10,
                expected: 1000
            })
        ));
        let err = SchedulerConfig::from_json_str(r#"{"beta_schedule": "squaredcos_cap_v2"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("squaredcos_cap_v2"), "{err}");
        let zero_snr =
            SchedulerConfig::from_json_str(r#"{"rescale_betas_zero_snr": true}"#).unwrap();
        assert!(matches!(
            NoiseSchedule::new(&zero_snr),
            Err(ScheduleError::ZeroSnrUnsupported)
        ));
    }

    /// The sampler options a `scheduler_config.json` may carry, read as diffusers'
    /// `from_config` reads them (`UniPCMultistepScheduler.__init__` maps DPM-Solver's
    /// `solver_type` names to bh2; DDIM and DDPM clip by default, LCM does not).
    #[test]
    fn sampler_options_come_from_the_config() {
        let config = |json: &str| SchedulerConfig::from_json_str(json).unwrap();
        assert_eq!(
            config("{}").unipc_options().unwrap(),
            UniPcOptions::default()
        );
        let bh1 = config(r#"{"solver_type": "bh1", "solver_order": 3, "predict_x0": false}"#);
        assert_eq!(
            bh1.unipc_options().unwrap(),
            UniPcOptions {
                order: 3,
                variant: UniPcVariant::Bh1,
                predict_x0: false,
                lower_order_final: true,
            }
        );
        let dpm = config(r#"{"solver_type": "midpoint", "lower_order_final": false}"#);
        let options = dpm.unipc_options().unwrap();
        assert_eq!(
            (options.variant, options.lower_order_final),
            (UniPcVariant::Bh2, false)
        );
        let err = config(r#"{"solver_type": "bh3"}"#)
            .unipc_options()
            .unwrap_err();
        assert!(err.to_string().contains("bh3"), "{err}");
        let err = config(r#"{"solver_order": 4}"#)
            .unipc_options()
            .unwrap_err();
        assert!(err.to_string().contains("solver_order"), "{err}");

        let unsaid = config("{}");
        assert_eq!(
            (unsaid.clip_range(true), unsaid.clip_range(false)),
            (Some(1.0), None)
        );
        let clipped = config(r#"{"clip_sample": true, "clip_sample_range": 2.0}"#);
        assert_eq!(clipped.clip_range(false), Some(2.0));
        assert_eq!(SchedulerConfig::sd1().clip_range(true), None);
        assert!(config(r#"{"thresholding": true}"#).thresholding);

        // LCMScheduler.set_timesteps(4) with original_inference_steps 20: every 5th of the
        // timesteps 50·k − 1, k = 20…1.
        let lcm = SchedulerConfig {
            original_inference_steps: 20,
            ..SchedulerConfig::sd1()
        };
        assert_eq!(lcm_timesteps(&lcm, 4).unwrap(), [999, 749, 499, 249]);
        assert!(matches!(
            lcm_timesteps(&lcm, 21),
            Err(ScheduleError::TooManyLcmSteps {
                steps: 21,
                original: 20
            })
        ));
    }

    /// fixtures/schedules/sigmas.json (tools/parity/sigma_fixtures.py): k-diffusion's, ComfyUI's
    /// and A1111's schedules over SD 1.x's sigmas.
    fn sigma_fixture() -> Value {
        serde_json::from_slice(&read("schedules/sigmas.json")).unwrap()
    }

    fn sd1_noise() -> NoiseSchedule {
        NoiseSchedule::new(&SchedulerConfig::sd1()).unwrap()
    }

    /// The largest |ours − reference| / |reference| (0 against 0 counts as equal), asserting
    /// it stays within `rel` and that any difference at a reference of 0 is within `abs`.
    fn assert_close(what: &str, ours: &[f64], reference: &[f64], rel: f64, abs: f64) -> f64 {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        let mut worst = 0.0f64;
        for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
            let diff = (a - b).abs();
            assert!(
                diff <= rel * b.abs() + abs,
                "{what}: element {i} is {a}, the reference has {b}"
            );
            if b != 0.0 {
                worst = worst.max(diff / b.abs());
            }
        }
        worst
    }

    fn max_abs_diff(ours: &[f64], reference: &[f64]) -> f64 {
        ours.iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    fn f64_list(value: &Value) -> Vec<f64> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    fn widen(values: &[f32]) -> Vec<f64> {
        values.iter().map(|&x| f64::from(x)).collect()
    }

    /// Sigmas within 1e-6 relative. The references compute in f32 (torch) where we use f64,
    /// and torch's sqrt is 1 ulp off for some training sigmas.
    const SIGMA_REL: f64 = 1e-6;
    /// Timesteps within 1e-6 relative, or 2e-5 absolute near timestep 0: k-diffusion
    /// interpolates ln σ in f32, where one ulp of ln σ (~3.5) is 2e-5 of the 0.35 between the
    /// first two training timesteps.
    const T_REL: f64 = 1e-6;
    const T_ABS: f64 = 2e-5;

    #[test]
    fn sigma_schedules_match_k_diffusion_comfyui_and_a1111() {
        let fixture = sigma_fixture();
        let config: SchedulerConfig = serde_json::from_value(fixture["config"].clone()).unwrap();
        assert_eq!(config, SchedulerConfig::sd1());
        let noise = NoiseSchedule::new(&config).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), ScheduleKind::ALL.len() * 5);
        let (mut worst_sigma, mut worst_t) = (0.0f64, 0.0f64);
        for case in cases {
            let name = case["schedule"].as_str().unwrap();
            let kind: ScheduleKind = name.parse().unwrap();
            let steps = case["steps"].as_u64().unwrap() as usize;
            let what = format!("{name} {steps} steps");
            let ours = sigma_schedule(&noise, kind, steps).unwrap();
            let sigmas = f64_list(&case["sigmas"]);
            worst_sigma = worst_sigma.max(assert_close(
                &format!("{what} sigmas"),
                &widen(&ours.sigmas),
                &sigmas,
                SIGMA_REL,
                0.0,
            ));
            let timesteps = f64_list(&case["timesteps"]);
            let ours_t = widen(&ours.timesteps);
            assert_close(
                &format!("{what} timesteps"),
                &ours_t,
                &timesteps,
                T_REL,
                T_ABS,
            );
            worst_t = worst_t.max(max_abs_diff(&ours_t, &timesteps));
            assert_eq!(ours.init_noise_sigma, ours.sigmas[0], "{what}");
            assert_eq!(ours.sigmas.last(), Some(&0.0), "{what}");
        }
        eprintln!(
            "sigma schedules: worst sigma rel {worst_sigma:e}, worst timestep abs {worst_t:e}"
        );
    }

    /// diffusers computes Karras sigmas in f64 where k-diffusion (and we) use f32; raised to
    /// the 7th power, f32 rounding leaves up to 1.1e-6 between the two at 1000 steps, in the
    /// sigmas and so in their timesteps.
    const DIFFUSERS_KARRAS_REL: f64 = 2e-6;

    #[test]
    fn karras_matches_diffusers_use_karras_sigmas() {
        let noise = sd1_noise();
        let (mut worst_sigma, mut worst_t) = (0.0f64, 0.0f64);
        for case in sigma_fixture()["diffusers_karras"].as_array().unwrap() {
            let steps = case["steps"].as_u64().unwrap() as usize;
            if steps == 1 {
                // diffusers takes the σ range from its "linspace" timesteps, and one step of
                // those is timestep 0: the range collapses to σ_0.
                continue;
            }
            let ours = sigma_schedule(&noise, ScheduleKind::Karras, steps).unwrap();
            let what = format!("diffusers Karras {steps} steps");
            worst_sigma = worst_sigma.max(assert_close(
                &what,
                &widen(&ours.sigmas),
                &f64_list(&case["sigmas"]),
                DIFFUSERS_KARRAS_REL,
                0.0,
            ));
            let timesteps = f64_list(&case["timesteps"]);
            let ours_t = widen(&ours.timesteps);
            assert_close(&what, &ours_t, &timesteps, DIFFUSERS_KARRAS_REL, T_ABS);
            worst_t = worst_t.max(max_abs_diff(&ours_t, &timesteps));
            let init = case["init_noise_sigma"].as_f64().unwrap();
            assert_close(
                &what,
                &[f64::from(ours.init_noise_sigma)],
                &[init],
                SIGMA_REL,
                0.0,
            );
        }
        eprintln!(
            "Karras against diffusers: worst sigma rel {worst_sigma:e}, timestep abs {worst_t:e}"
        );
    }

    #[test]
    fn sigma_and_timestep_convert_as_k_diffusion_does() {
        let noise = sd1_noise();
        let fixture = sigma_fixture();
        let probes = &fixture["sigma_to_t"];
        let ours: Vec<f64> = f64_list(&probes["sigma"])
            .into_iter()
            .map(|sigma| noise.sigma_to_t(sigma))
            .collect();
        let reference = f64_list(&probes["t"]);
        assert_close("sigma_to_t", &ours, &reference, T_REL, T_ABS);
        let worst = max_abs_diff(&ours, &reference);
        let probes = &fixture["t_to_sigma"];
        let ours: Vec<f64> = f64_list(&probes["t"])
            .into_iter()
            .map(|t| noise.t_to_sigma(t))
            .collect();
        let worst_sigma = assert_close(
            "t_to_sigma",
            &ours,
            &f64_list(&probes["sigma"]),
            SIGMA_REL,
            0.0,
        );
        eprintln!("sigma_to_t worst abs {worst:e}, t_to_sigma worst rel {worst_sigma:e}");
        // Training timesteps map onto themselves both ways.
        for t in [0, 1, 17, 500, 998, 999] {
            let sigma = f64::from(noise.sigma(t));
            assert_eq!(noise.sigma_to_t(sigma), t as f64, "t = {t}");
            assert!(
                (noise.t_to_sigma(t as f64) / sigma - 1.0).abs() < 1e-6,
                "t = {t}"
            );
        }
        // Out of range: clamped, like ComfyUI, rather than indexing past the table.
        assert_eq!(noise.t_to_sigma(-3.0), noise.t_to_sigma(0.0));
        assert_eq!(noise.t_to_sigma(5000.0), noise.t_to_sigma(999.0));
        assert_eq!(noise.sigma_to_t(0.0), 0.0);
    }

    #[test]
    fn beta_quantile_matches_scipy() {
        let mut worst = 0.0f64;
        for case in sigma_fixture()["beta_ppf"].as_array().unwrap() {
            let (a, b) = (case["a"].as_f64().unwrap(), case["b"].as_f64().unwrap());
            let ours: Vec<f64> = f64_list(&case["p"])
                .into_iter()
                .map(|p| beta_quantile(p, a, b))
                .collect();
            let what = format!("Beta({a}, {b}) quantiles");
            worst = worst.max(assert_close(
                &what,
                &ours,
                &f64_list(&case["x"]),
                1e-9,
                1e-15,
            ));
        }
        eprintln!("beta quantile worst rel {worst:e}");
    }

    #[test]
    fn ln_gamma_known_values() {
        let pi = std::f64::consts::PI;
        for (x, expected) in [
            (1.0, 0.0),
            (2.0, 0.0),
            (0.5, 0.5 * pi.ln()),
            (5.0, 24f64.ln()),
            (0.25, 3.625_609_908_221_908_7_f64.ln()),
            (10.5, 1_133_278.388_948_785_4_f64.ln()),
        ] {
            assert!(
                (ln_gamma(x) - expected).abs() < 1e-13,
                "lnΓ({x}) = {}",
                ln_gamma(x)
            );
        }
    }

    #[test]
    fn a1111_drops_the_next_to_last_sigma() {
        let noise = sd1_noise();
        let full = sigma_schedule(&noise, ScheduleKind::Karras, 11).unwrap();
        let dropped = full.clone().discard_next_to_last_sigma();
        assert_eq!(dropped.sigmas.len(), 11);
        assert_eq!(dropped.sigmas[..10], full.sigmas[..10]);
        assert_eq!(dropped.sigmas[10], 0.0);
        assert_eq!(dropped.timesteps[..], full.timesteps[..10]);
        let one = sigma_schedule(&noise, ScheduleKind::Karras, 1).unwrap();
        assert_eq!(one.clone().discard_next_to_last_sigma(), one);
    }

    #[test]
    fn sigma_schedules_refuse_zero_steps() {
        let noise = sd1_noise();
        for kind in ScheduleKind::ALL {
            assert!(matches!(
                sigma_schedule(&noise, kind, 0),
                Err(ScheduleError::ZeroSteps)
            ));
        }
    }
}
