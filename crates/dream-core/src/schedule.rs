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

use serde::Deserialize;

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
    /// DDIM clipping of the predicted x0 to [-1, 1]. diffusers defaults it to true, but it is
    /// wrong for latents; SD files set it to false.
    pub clip_sample: bool,
    /// Zero-terminal-SNR rescaling of the betas; parsed only to refuse it.
    pub rescale_betas_zero_snr: bool,
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
            clip_sample: true,
            rescale_betas_zero_snr: false,
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
            clip_sample: false,
            ..Self::default()
        }
    }

    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json_str(json: &str) -> Result<Self, ScheduleError> {
        Ok(serde_json::from_str(json)?)
    }
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
        TimestepSpacing::Linspace => np_linspace((train - 1) as f64, steps)
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

/// The noise levels a k-diffusion style sampler walks, each with its UNet timestep.
///
/// Samplers take `sigmas[i] → sigmas[i + 1]` steps; `timesteps[i]` is what the UNet is told
/// while denoising at `sigmas[i]`. More constructors (Karras, exponential) produce the same
/// struct.
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
        TimestepSpacing::Linspace => np_linspace((train - 1) as f64, steps)
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

/// `np.linspace(0, stop, num)` in f64: `i·step`, with the end point exact.
fn np_linspace(stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![0.0];
    }
    let step = stop / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step).collect();
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
    use safetensors::{Dtype, SafeTensors};
    use serde_json::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

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

    fn f64_tensor(st: &SafeTensors, name: &str) -> Vec<f64> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn f32_tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
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
            let diffusers = f64_tensor(&st, "scheduler.timesteps");
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
            let timesteps = f64_tensor(&st, "scheduler.timesteps");
            let ours = euler_schedule(&config, timesteps.len()).unwrap();
            let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
            assert_eq!(widen(&ours.timesteps), timesteps, "{file} timesteps");
            let sigmas: Vec<f32> = f64_tensor(&st, "scheduler.sigmas")
                .iter()
                .map(|&s| s as f32)
                .collect();
            assert_within_ulps(&format!("{file} sigmas"), &ours.sigmas, &sigmas, SQRT_ULPS);
            // txt2img scales the unit noise by init_noise_sigma to start the loop.
            let noise = f32_tensor(&st, "init_noise");
            let start: Vec<f32> = noise.iter().map(|&x| x * ours.init_noise_sigma).collect();
            assert_same(
                &format!("{file} latents_init"),
                &start,
                &f32_tensor(&st, "latents_init"),
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
}
