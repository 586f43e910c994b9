//! Sampler loops. Each sampler is one short function, in the manner of k-diffusion's
//! `sampling.py`: it gets a model to query, a schedule, and the starting latents, and
//! reports every step to a callback.
//!
//! Two model views exist because the two sampler families think differently:
//! - k-diffusion samplers walk a schedule of noise levels σ and ask for the denoised image
//!   ([`Denoiser`]); latents there are x₀ + σ·n.
//! - DDPM-family samplers (DDIM, PLMS, UniPC, LCM, DDPM) walk discrete timesteps and read the
//!   model output as ε or v ([`DiscreteModel`]); latents there are √ᾱ·x₀ + √(1−ᾱ)·n.
//!
//! Samplers that add noise while they run take it from a [`NoiseSource`]: by default the
//! image's own generator ([`GeneratorNoise`]), for the SDE samplers a Brownian motion
//! ([`BrownianNoise`]).

use std::collections::VecDeque;

use candle_core::{Result, Tensor};
use dream_core::rng::TorchGenerator;
use dream_core::sampler::Sampler;
use dream_core::schedule::{
    NoiseSchedule, PredictionType, SigmaSchedule, UniPcOptions, UniPcVariant,
};

use crate::guidance::LatentThreshold;

/// The model as a function of the latents and the training timestep: its raw output (ε or v,
/// as the model's [`PredictionType`] says), already combined over the guidance batch.
pub trait Predictor {
    fn predict(&mut self, latents: &Tensor, timestep: f64) -> Result<Tensor>;
}

/// What a sampler tells its caller after each step.
pub struct StepInfo<'a> {
    /// Zero-based index of the step just taken.
    pub step: usize,
    pub total_steps: usize,
    /// The latents after this step.
    pub latents: &'a Tensor,
    /// The model's estimate of the clean latents x₀ at the start of this step, for previews.
    pub denoised: Option<&'a Tensor>,
}

/// Called after every step; returning an error (e.g. an interrupt) stops the sampler.
pub type StepCallback<'a> = dyn FnMut(StepInfo<'_>) -> Result<()> + 'a;

fn report(
    callback: &mut StepCallback<'_>,
    step: usize,
    total_steps: usize,
    latents: &Tensor,
    denoised: Option<&Tensor>,
) -> Result<()> {
    callback(StepInfo {
        step,
        total_steps,
        latents,
        denoised,
    })
}

/// k-diffusion's view of a discrete-time diffusion model (`DiscreteEpsDDPMDenoiser`,
/// `DiscreteVDDPMDenoiser`): latents x = x₀ + σ·n go in, the estimate of x₀ comes out.
///
/// The network sees the latents scaled to unit variance, c_in = 1/√(σ²+1), and the training
/// timestep of σ. Then x₀ = c_skip·x + c_out·F with, for ε-prediction, c_skip = 1 and
/// c_out = −σ; for v-prediction, c_skip = 1/(σ²+1) and c_out = −σ/√(σ²+1).
pub struct Denoiser<'a> {
    model: &'a mut dyn Predictor,
    prediction: PredictionType,
    schedule: &'a NoiseSchedule,
    threshold: Option<LatentThreshold>,
}

impl<'a> Denoiser<'a> {
    pub fn new(
        model: &'a mut dyn Predictor,
        schedule: &'a NoiseSchedule,
        prediction: PredictionType,
    ) -> Self {
        Self {
            model,
            prediction,
            schedule,
            threshold: None,
        }
    }

    /// Thresholds every x₀ estimate, as InvokeAI's `--threshold`.
    pub fn with_threshold(self, threshold: LatentThreshold) -> Self {
        Self {
            threshold: Some(threshold),
            ..self
        }
    }

    /// x₀ for latents `x` at noise level `sigma`, telling the network `timestep`.
    pub fn denoise(&mut self, x: &Tensor, sigma: f64, timestep: f64) -> Result<Tensor> {
        let scale = (sigma * sigma + 1.0).sqrt();
        let output = self.model.predict(&(x / scale)?, timestep)?;
        let denoised = match self.prediction {
            PredictionType::Epsilon => (x - (output * sigma)?)?,
            PredictionType::VPrediction => ((x / (scale * scale))? - (output * (sigma / scale))?)?,
        };
        match &mut self.threshold {
            Some(threshold) => threshold.apply(&denoised),
            None => Ok(denoised),
        }
    }

    /// x₀ at a noise level between the schedule's, e.g. a midpoint: the network is told the
    /// fractional training timestep of σ (k-diffusion's `sigma_to_t`).
    pub fn denoise_at(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let timestep = self.schedule.sigma_to_t(sigma);
        self.denoise(x, sigma, timestep)
    }
}

/// Where the fresh noise of ancestral and SDE samplers comes from.
pub trait NoiseSource {
    /// Standard normal noise shaped like `like`, for the step from `sigma` to `sigma_next`.
    fn noise(&mut self, sigma: f64, sigma_next: f64, like: &Tensor) -> Result<Tensor>;
}

/// Noise continuing the image's own torch-compatible generator, the one seeded with the
/// image's seed that drew its starting noise (A1111's CPU RNG mode; diffusers with a CPU
/// `generator`). So an image does not depend on the batch it was made in.
pub struct GeneratorNoise {
    generator: TorchGenerator,
}

impl GeneratorNoise {
    pub fn new(generator: TorchGenerator) -> Self {
        Self { generator }
    }
}

impl NoiseSource for GeneratorNoise {
    fn noise(&mut self, _sigma: f64, _sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        let values = self.generator.randn(like.elem_count());
        Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())
    }
}

/// A Brownian motion W(σ) on [σ_min, σ_max], seeded, for the SDE samplers: the noise for a
/// step is the increment (W(σ_next) − W(σ)) / √|σ_next − σ|, so overlapping steps (DPM++ SDE
/// queries σ→σ_mid and then σ→σ_next) get correlated noise as the SDE requires, and the noise
/// over an interval does not depend on how finely it was cut.
///
/// k-diffusion uses torchsde's `BrownianTree` here; this is not a bit-exact port of it (its
/// numbers come from torch's own seeding of a tree of generators). It is the same process:
/// W is built on a dyadic grid of 2^DEPTH cells by Brownian-bridge bisection, each bisection
/// drawing from a generator seeded by (seed, node), and a query snaps σ to the nearest grid
/// point. On the grid W is an exact Brownian motion (independent Gaussian increments with
/// variance equal to their length); snapping moves σ by at most (σ_max − σ_min)/2^31, far
/// below any step size a schedule makes. Increments are normalised by the snapped length, so
/// each step's noise is exactly N(0, 1).
pub struct BrownianNoise {
    seed: u64,
    sigma_min: f64,
    sigma_max: f64,
}

impl BrownianNoise {
    const DEPTH: u32 = 30;

    /// W over [`sigma_min`, `sigma_max`] (the schedule's smallest nonzero and largest σ, as
    /// k-diffusion's `BrownianTreeNoiseSampler`), from `seed` (the image's seed).
    pub fn new(seed: u64, sigma_min: f64, sigma_max: f64) -> Self {
        Self {
            seed,
            sigma_min: sigma_min.min(sigma_max),
            sigma_max: sigma_max.max(sigma_min),
        }
    }

    /// For a schedule: its smallest nonzero and its largest σ.
    pub fn for_schedule(seed: u64, schedule: &SigmaSchedule) -> Self {
        let positive = schedule
            .sigmas
            .iter()
            .filter(|&&s| s > 0.0)
            .map(|&s| s as f64);
        let sigma_min = positive.clone().fold(f64::INFINITY, f64::min);
        let sigma_max = positive.fold(0.0, f64::max);
        Self::new(seed, sigma_min, sigma_max)
    }

    const CELLS: u64 = 1 << Self::DEPTH;

    /// The width of one grid cell in σ.
    fn cell(&self) -> f64 {
        (self.sigma_max - self.sigma_min) / Self::CELLS as f64
    }

    /// The grid point nearest to σ.
    fn grid_index(&self, sigma: f64) -> u64 {
        if self.cell() <= 0.0 {
            return 0;
        }
        ((sigma - self.sigma_min) / self.cell())
            .round()
            .clamp(0.0, Self::CELLS as f64) as u64
    }

    /// Standard normals for one node of the tree, from its own generator.
    fn node_normals(&self, level: u32, index: u64, n: usize) -> Vec<f32> {
        let node = splitmix64(self.seed ^ splitmix64(((level as u64) << 40) ^ index));
        TorchGenerator::seeded(node).randn(n)
    }

    /// W at grid point `k` (W = 0 at σ_min): the root draws W(σ_max), then each level
    /// bisects the interval holding `k` with a Brownian bridge, N(mean of the ends, length/4).
    fn w_at(&self, k: u64, n: usize) -> Vec<f64> {
        let root_std = (self.sigma_max - self.sigma_min).sqrt();
        let (mut lo, mut hi) = (0, Self::CELLS);
        let mut w_lo = vec![0f64; n];
        let mut w_hi: Vec<f64> = (self.node_normals(0, 0, n).iter())
            .map(|&z| z as f64 * root_std)
            .collect();
        for level in 1..=Self::DEPTH {
            if k == lo {
                return w_lo;
            }
            if k == hi {
                return w_hi;
            }
            let mid = (lo + hi) / 2;
            let std = ((hi - lo) as f64 * self.cell() / 4.0).sqrt();
            let z = self.node_normals(level, mid, n);
            let w_mid: Vec<f64> = (0..n)
                .map(|j| (w_lo[j] + w_hi[j]) / 2.0 + std * z[j] as f64)
                .collect();
            if k < mid {
                (hi, w_hi) = (mid, w_mid);
            } else {
                (lo, w_lo) = (mid, w_mid);
            }
        }
        if k == lo {
            w_lo
        } else {
            w_hi
        }
    }
}

/// Sebastiano Vigna's splitmix64 finaliser: spreads node coordinates into unrelated seeds.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl NoiseSource for BrownianNoise {
    fn noise(&mut self, sigma: f64, sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        let n = like.elem_count();
        let (a, b) = (self.grid_index(sigma), self.grid_index(sigma_next));
        // Two σ on one grid point (only outside [σ_min, σ_max]) have no increment between them.
        let values = if a == b {
            vec![0f32; n]
        } else {
            let length = (a.abs_diff(b) as f64 * self.cell()).sqrt();
            let (w_a, w_b) = (self.w_at(a, n), self.w_at(b, n));
            (0..n)
                .map(|j| ((w_b[j] - w_a[j]) / length) as f32)
                .collect()
        };
        Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())
    }
}

/// Stochastic options of the ancestral and SDE samplers (and DDIM's η), with the source of
/// their noise.
pub struct Noise<'a> {
    pub source: &'a mut dyn NoiseSource,
    /// How much of each step's variance is fresh noise: 1 is the full ancestral/SDE step,
    /// 0 the deterministic one.
    pub eta: f64,
    /// Scale of the fresh noise (Karras et al. 2022, S_noise).
    pub s_noise: f64,
}

impl<'a> Noise<'a> {
    /// η = 1 and s_noise = 1, the defaults of k-diffusion, A1111 and ComfyUI.
    pub fn new(source: &'a mut dyn NoiseSource) -> Self {
        Self {
            source,
            eta: 1.0,
            s_noise: 1.0,
        }
    }

    /// `scale` times fresh noise for the step σ → σ_next.
    fn draw(&mut self, sigma: f64, sigma_next: f64, like: &Tensor, scale: f64) -> Result<Tensor> {
        self.source.noise(sigma, sigma_next, like)? * (scale * self.s_noise)
    }
}

/// The ODE derivative dx/dσ = (x − x₀)/σ.
fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Result<Tensor> {
    (x - denoised)? / sigma
}

/// Splits the step σ → σ_next into a deterministic step down to σ_down and fresh noise of
/// size σ_up, with σ_down² + σ_up² = σ_next².
fn ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_next, 0.0);
    }
    let sigma_up = sigma_next.min(
        eta * (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt(),
    );
    let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// (σ_i, σ_{i+1}, timestep of σ_i) for step `i`.
fn step_of(schedule: &SigmaSchedule, i: usize) -> (f64, f64, f64) {
    (
        schedule.sigmas[i] as f64,
        schedule.sigmas[i + 1] as f64,
        schedule.timesteps[i] as f64,
    )
}

/// Euler's method on the probability-flow ODE (Karras et al. 2022, alg. 2 without churn).
pub fn sample_euler(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let d = to_d(&x, sigma, &denoised)?;
        x = (x + (d * (sigma_next - sigma))?)?;
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// Ancestral sampling with Euler steps: step down to σ_down, then add noise up to σ_next.
pub fn sample_euler_ancestral(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, noise.eta);
        let d = to_d(&x, sigma, &denoised)?;
        x = (x + (d * (sigma_down - sigma))?)?;
        if sigma_next > 0.0 {
            x = (&x + noise.draw(sigma, sigma_next, &x, sigma_up)?)?;
        }
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// Heun's method (Karras et al. 2022, alg. 2 without churn): an Euler step, then the average
/// of the slopes at both ends; the last step, to σ = 0, stays Euler.
pub fn sample_heun(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let d = to_d(&x, sigma, &denoised)?;
        let dt = sigma_next - sigma;
        let x_euler = (&x + (&d * dt)?)?;
        x = if sigma_next == 0.0 {
            x_euler
        } else {
            let denoised_2 = model.denoise_at(&x_euler, sigma_next)?;
            let d_2 = to_d(&x_euler, sigma_next, &denoised_2)?;
            (x + (((d + d_2)? / 2.0)? * dt)?)?
        };
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// σ halfway between two noise levels in log space.
fn log_midpoint(sigma: f64, sigma_next: f64) -> f64 {
    ((sigma.ln() + sigma_next.ln()) / 2.0).exp()
}

/// DPM-Solver-2 in Karras et al.'s form: the slope taken at the log-space midpoint.
pub fn sample_dpm_2(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let d = to_d(&x, sigma, &denoised)?;
        x = if sigma_next == 0.0 {
            (x + (d * (sigma_next - sigma))?)?
        } else {
            dpm_2_step(model, &x, &d, sigma, sigma_next)?
        };
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// One DPM-Solver-2 step from σ to `sigma_to`, given the slope `d` at σ.
fn dpm_2_step(
    model: &mut Denoiser<'_>,
    x: &Tensor,
    d: &Tensor,
    sigma: f64,
    sigma_to: f64,
) -> Result<Tensor> {
    let sigma_mid = log_midpoint(sigma, sigma_to);
    let x_mid = (x + (d * (sigma_mid - sigma))?)?;
    let denoised_mid = model.denoise_at(&x_mid, sigma_mid)?;
    let d_mid = to_d(&x_mid, sigma_mid, &denoised_mid)?;
    x + (d_mid * (sigma_to - sigma))?
}

/// Ancestral sampling with DPM-Solver-2 steps.
pub fn sample_dpm_2_ancestral(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, noise.eta);
        let d = to_d(&x, sigma, &denoised)?;
        x = if sigma_down == 0.0 {
            (x + (d * (sigma_down - sigma))?)?
        } else {
            let x = dpm_2_step(model, &x, &d, sigma, sigma_down)?;
            (&x + noise.draw(sigma, sigma_next, &x, sigma_up)?)?
        };
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// The highest order of k-diffusion's LMS sampler.
pub const LMS_ORDER: usize = 4;

/// Linear multistep: the slopes of the last (up to) four steps, each weighted by the integral
/// over this step of its Lagrange basis polynomial through those steps' σ.
pub fn sample_lms(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    let sigmas: Vec<f64> = schedule.sigmas.iter().map(|&s| s as f64).collect();
    // Newest first.
    let mut slopes: VecDeque<Tensor> = Default::default();
    for i in 0..n {
        let (sigma, _, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        slopes.push_front(to_d(&x, sigma, &denoised)?);
        slopes.truncate(LMS_ORDER);
        let order = slopes.len();
        for (j, d) in slopes.iter().enumerate() {
            x = (x + (d * lms_coefficient(&sigmas, i, order, j))?)?;
        }
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// ∫ from σ_i to σ_{i+1} of the Lagrange basis polynomial that is 1 at σ_{i−j} and 0 at the
/// other σ_{i−k}, k < order. k-diffusion integrates it numerically (`scipy.integrate.quad`,
/// exact for polynomials this small); here it is multiplied out and integrated term by term,
/// in powers of u = σ − σ_i so that the terms stay small.
fn lms_coefficient(sigmas: &[f64], i: usize, order: usize, j: usize) -> f64 {
    // Coefficients of the polynomial in u, lowest power first.
    let mut poly = vec![1.0];
    for k in (0..order).filter(|&k| k != j) {
        let root = sigmas[i - k] - sigmas[i];
        let scale = sigmas[i - j] - sigmas[i - k];
        let mut next = vec![0.0; poly.len() + 1];
        for (power, c) in poly.iter().enumerate() {
            next[power + 1] += c / scale;
            next[power] -= c * root / scale;
        }
        poly = next;
    }
    let h = sigmas[i + 1] - sigmas[i];
    poly.iter()
        .enumerate()
        .map(|(power, c)| c * h.powi(power as i32 + 1) / (power as f64 + 1.0))
        .sum()
}

/// Ancestral sampling with DPM-Solver++(2S) steps: a half step in log σ to an intermediate
/// denoised estimate, then the full step from it.
pub fn sample_dpmpp_2s_ancestral(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, noise.eta);
        x = if sigma_down == 0.0 {
            let d = to_d(&x, sigma, &denoised)?;
            (x + (d * (sigma_down - sigma))?)?
        } else {
            // In λ = −ln σ: h = λ_down − λ, the midpoint at λ + h/2.
            let h = sigma.ln() - sigma_down.ln();
            let sigma_mid = (sigma.ln() - h / 2.0).exp();
            let x_mid = ((&x * (sigma_mid / sigma))? - (&denoised * (-h / 2.0).exp_m1())?)?;
            let denoised_mid = model.denoise_at(&x_mid, sigma_mid)?;
            ((x * (sigma_down / sigma))? - (denoised_mid * (-h).exp_m1())?)?
        };
        if sigma_next > 0.0 {
            x = (&x + noise.draw(sigma, sigma_next, &x, sigma_up)?)?;
        }
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// DPM-Solver++ (stochastic), k-diffusion's `sample_dpmpp_sde` with r = 1/2: a noisy half
/// step to an intermediate estimate, then a noisy full step from the mix of both estimates.
/// Meant for [`BrownianNoise`].
pub fn sample_dpmpp_sde(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    const R: f64 = 0.5;
    let n = schedule.timesteps.len();
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        x = if sigma_next == 0.0 {
            let d = to_d(&x, sigma, &denoised)?;
            (x + (d * (sigma_next - sigma))?)?
        } else {
            // Times are λ = −ln σ.
            let (lambda, lambda_next) = (-sigma.ln(), -sigma_next.ln());
            let h = lambda_next - lambda;
            let sigma_mid = (-(lambda + h * R)).exp();

            let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_mid, noise.eta);
            let lambda_down = -sigma_down.ln();
            let x_mid =
                ((&x * (sigma_down / sigma))? - (&denoised * (lambda - lambda_down).exp_m1())?)?;
            let x_mid = (&x_mid + noise.draw(sigma, sigma_mid, &x_mid, sigma_up)?)?;
            let denoised_mid = model.denoise_at(&x_mid, sigma_mid)?;

            let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, noise.eta);
            let lambda_down = -sigma_down.ln();
            let mix = 1.0 / (2.0 * R);
            let denoised_mixed = ((&denoised * (1.0 - mix))? + (denoised_mid * mix)?)?;
            let x = ((x * (sigma_down / sigma))?
                - (denoised_mixed * (lambda - lambda_down).exp_m1())?)?;
            (&x + noise.draw(sigma, sigma_next, &x, sigma_up)?)?
        };
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// DPM-Solver++(2M): second order from the previous step's denoised estimate, no extra model
/// calls.
pub fn sample_dpmpp_2m(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        let h = sigma.ln() - sigma_next.ln();
        let denoised_d = match &old_denoised {
            Some(old) if sigma_next > 0.0 => {
                let h_last = (schedule.sigmas[i - 1] as f64).ln() - sigma.ln();
                let r = h_last / h;
                ((&denoised * (1.0 + 1.0 / (2.0 * r)))? - (old * (1.0 / (2.0 * r)))?)?
            }
            _ => denoised.clone(),
        };
        x = ((x * (sigma_next / sigma))? - (denoised_d * (-h).exp_m1())?)?;
        report(callback, i, n, &x, Some(&denoised))?;
        old_denoised = Some(denoised);
    }
    Ok(x)
}

/// DPM-Solver++(2M) SDE with the midpoint second-order correction. Meant for
/// [`BrownianNoise`].
pub fn sample_dpmpp_2m_sde(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    let mut previous: Option<(Tensor, f64)> = None;
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        if sigma_next == 0.0 {
            report(callback, i, n, &denoised, Some(&denoised))?;
            return Ok(denoised);
        }
        let h = sigma.ln() - sigma_next.ln();
        let eta_h = noise.eta * h;
        let decay = -(-h - eta_h).exp_m1();
        x = ((x * (sigma_next / sigma * (-eta_h).exp()))? + (&denoised * decay)?)?;
        if let Some((old_denoised, h_last)) = &previous {
            let r = h_last / h;
            x = (x + ((&denoised - old_denoised)? * (0.5 * decay / r))?)?;
        }
        if noise.eta != 0.0 {
            let scale = sigma_next * (-(-2.0 * eta_h).exp_m1()).sqrt();
            x = (&x + noise.draw(sigma, sigma_next, &x, scale)?)?;
        }
        report(callback, i, n, &x, Some(&denoised))?;
        previous = Some((denoised, h));
    }
    Ok(x)
}

/// DPM-Solver++(3M) SDE: third order from the last two denoised estimates. Meant for
/// [`BrownianNoise`].
pub fn sample_dpmpp_3m_sde(
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    // (denoised, h) of the last step and of the one before.
    let mut last: Option<(Tensor, f64)> = None;
    let mut before_last: Option<(Tensor, f64)> = None;
    for i in 0..n {
        let (sigma, sigma_next, t) = step_of(schedule, i);
        let denoised = model.denoise(&x, sigma, t)?;
        if sigma_next == 0.0 {
            report(callback, i, n, &denoised, Some(&denoised))?;
            return Ok(denoised);
        }
        let h = sigma.ln() - sigma_next.ln();
        let h_eta = h * (noise.eta + 1.0);
        x = ((x * (-h_eta).exp())? + (&denoised * -(-h_eta).exp_m1())?)?;
        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match (&last, &before_last) {
            (Some((denoised_1, h_1)), Some((denoised_2, h_2))) => {
                let (r0, r1) = (h_1 / h, h_2 / h);
                let d1_0 = ((&denoised - denoised_1)? / r0)?;
                let d1_1 = ((denoised_1 - denoised_2)? / r1)?;
                let d1 = (&d1_0 + ((&d1_0 - &d1_1)? * (r0 / (r0 + r1)))?)?;
                let d2 = ((d1_0 - d1_1)? / (r0 + r1))?;
                let phi_3 = phi_2 / h_eta - 0.5;
                x = ((x + (d1 * phi_2)?)? - (d2 * phi_3)?)?;
            }
            (Some((denoised_1, h_1)), None) => {
                let d = ((&denoised - denoised_1)? / (h_1 / h))?;
                x = (x + (d * phi_2)?)?;
            }
            _ => {}
        }
        if noise.eta != 0.0 {
            let scale = sigma_next * (-(-2.0 * h * noise.eta).exp_m1()).sqrt();
            x = (&x + noise.draw(sigma, sigma_next, &x, scale)?)?;
        }
        report(callback, i, n, &x, Some(&denoised))?;
        before_last = last.replace((denoised, h));
    }
    Ok(x)
}

/// Runs the k-diffusion sampler `sampler`; deterministic ones ignore `noise`.
pub fn sample_k(
    sampler: Sampler,
    model: &mut Denoiser<'_>,
    schedule: &SigmaSchedule,
    x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    match sampler {
        Sampler::Euler => sample_euler(model, schedule, x, callback),
        Sampler::EulerAncestral => sample_euler_ancestral(model, schedule, x, noise, callback),
        Sampler::Heun => sample_heun(model, schedule, x, callback),
        Sampler::Dpm2 => sample_dpm_2(model, schedule, x, callback),
        Sampler::Dpm2Ancestral => sample_dpm_2_ancestral(model, schedule, x, noise, callback),
        Sampler::Lms => sample_lms(model, schedule, x, callback),
        Sampler::DpmPp2M => sample_dpmpp_2m(model, schedule, x, callback),
        Sampler::DpmPp2SAncestral => sample_dpmpp_2s_ancestral(model, schedule, x, noise, callback),
        Sampler::DpmPpSde => sample_dpmpp_sde(model, schedule, x, noise, callback),
        Sampler::DpmPp2MSde => sample_dpmpp_2m_sde(model, schedule, x, noise, callback),
        Sampler::DpmPp3MSde => sample_dpmpp_3m_sde(model, schedule, x, noise, callback),
        Sampler::Ddim | Sampler::Plms | Sampler::UniPc | Sampler::Lcm | Sampler::Ddpm => {
            Err(candle_core::Error::Msg(format!(
                "{sampler} walks discrete timesteps, not a sigma schedule"
            )))
        }
    }
}

/// The DDPM view of the model: latents √ᾱ_t·x₀ + √(1−ᾱ_t)·n at training timestep t, the
/// network output read as ε or v.
pub struct DiscreteModel<'a> {
    pub model: &'a mut dyn Predictor,
    pub schedule: &'a NoiseSchedule,
    pub prediction: PredictionType,
    /// DDIM, DDPM and LCM clip their x₀ estimates to ±this (`clip_sample`); `None` does not.
    pub clip_sample: Option<f64>,
}

/// What the model says about latents x = α·x₀ + s·n (α = √ᾱ, s = √(1−ᾱ) on the DDPM side).
struct Estimate {
    x0: Tensor,
    eps: Tensor,
}

impl DiscreteModel<'_> {
    /// ᾱ at timestep t, or `before_start` for t < 0 (the step past timestep 0).
    fn alpha_cumprod(&self, t: i64, before_start: f64) -> f64 {
        usize::try_from(t)
            .map(|t| self.schedule.alphas_cumprod[t] as f64)
            .unwrap_or(before_start)
    }

    /// Reads a network output at latents x = alpha·x₀ + sigma·n as (x₀, ε).
    fn estimate(&self, output: &Tensor, x: &Tensor, alpha: f64, sigma: f64) -> Result<Estimate> {
        Ok(match self.prediction {
            PredictionType::Epsilon => Estimate {
                x0: ((x - (output * sigma)?)? / alpha)?,
                eps: output.clone(),
            },
            PredictionType::VPrediction => Estimate {
                x0: ((x * alpha)? - (output * sigma)?)?,
                eps: ((output * alpha)? + (x * sigma)?)?,
            },
        })
    }

    /// Calls the network at timestep t and reads its output, x₀ clipped if `clip_sample` says
    /// so (ε is left as the network gave it, as diffusers' default `use_clipped_model_output`).
    fn predict(&mut self, x: &Tensor, t: usize) -> Result<Estimate> {
        let alpha_cumprod = self.schedule.alphas_cumprod[t] as f64;
        let output = self.model.predict(x, t as f64)?;
        let estimate = self.estimate(
            &output,
            x,
            alpha_cumprod.sqrt(),
            (1.0 - alpha_cumprod).sqrt(),
        )?;
        Ok(match self.clip_sample {
            Some(range) => Estimate {
                x0: estimate.x0.clamp(-range, range)?,
                ..estimate
            },
            None => estimate,
        })
    }
}

/// The stride between DDIM/PLMS timesteps, by which diffusers finds the previous timestep
/// whatever the spacing.
fn timestep_stride(schedule: &NoiseSchedule, steps: usize) -> i64 {
    (schedule.num_train_timesteps() / steps.max(1)) as i64
}

/// DDIM (Song et al. 2020): predict x₀, then move it to the previous timestep's noise level
/// along the same ε; with η > 0 part of that noise is fresh (η = 1 is DDPM's variance).
/// `steps` is the schedule's nominal length, which fixes the stride to the previous timestep.
pub fn sample_ddim(
    model: &mut DiscreteModel<'_>,
    timesteps: &[usize],
    steps: usize,
    mut x: Tensor,
    noise: &mut Noise<'_>,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = timesteps.len();
    let stride = timestep_stride(model.schedule, steps);
    let final_alpha = model.schedule.final_alpha_cumprod as f64;
    for (i, &t) in timesteps.iter().enumerate() {
        let alpha = model.schedule.alphas_cumprod[t] as f64;
        let alpha_prev = model.alpha_cumprod(t as i64 - stride, final_alpha);
        let Estimate { x0, eps } = model.predict(&x, t)?;
        let variance = (1.0 - alpha_prev) / (1.0 - alpha) * (1.0 - alpha / alpha_prev);
        let std = noise.eta * variance.sqrt();
        x = ((&x0 * alpha_prev.sqrt())? + (eps * (1.0 - alpha_prev - std * std).sqrt())?)?;
        if noise.eta > 0.0 {
            let sigma_prev = ((1.0 - alpha_prev) / alpha_prev).sqrt();
            let fresh = noise
                .source
                .noise(model.schedule.sigma(t) as f64, sigma_prev, &x)?;
            x = (x + (fresh * std)?)?;
        }
        report(callback, i, n, &x, Some(&x0))?;
    }
    Ok(x)
}

/// PLMS, diffusers' `PNDMScheduler` with `skip_prk_steps`: Adams–Bashforth on the model
/// outputs of the last four steps, through PNDM's transfer formula (Liu et al. 2022, eq. 9).
/// The first step has no history, so it is a Heun step: a second model call at the step's
/// end, and the average of both outputs.
pub fn sample_plms(
    model: &mut DiscreteModel<'_>,
    timesteps: &[usize],
    steps: usize,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = timesteps.len();
    let stride = timestep_stride(model.schedule, steps);
    // Model outputs at the start of each step, newest first.
    let mut outputs: VecDeque<Tensor> = Default::default();
    for (i, &t) in timesteps.iter().enumerate() {
        let t_prev = t as i64 - stride;
        let output = model.model.predict(&x, t as f64)?;
        let alpha = model.schedule.alphas_cumprod[t] as f64;
        let x0 = model
            .estimate(&output, &x, alpha.sqrt(), (1.0 - alpha).sqrt())?
            .x0;
        let e = |k: usize| &outputs[k - 1];
        let (t_from, t_to, combined) = match (outputs.len(), timesteps.get(1)) {
            (0, Some(&t_end)) => {
                // diffusers' bookkeeping: the Euler predictor steps t → t − stride, the
                // corrected step runs t_end + stride → t_end (the same for "leading" spacing).
                let x_euler = pndm_transfer(model, &x, t, t_prev, &output)?;
                let output_end = model.model.predict(&x_euler, t_end as f64)?;
                let t_end = t_end as i64;
                let averaged = ((&output + output_end)? / 2.0)?;
                ((t_end + stride) as usize, t_end, averaged)
            }
            (0, None) => (t, t_prev, output.clone()),
            (1, _) => (t, t_prev, (((&output * 3.0)? - e(1))? / 2.0)?),
            (2, _) => {
                let combined = (((&output * 23.0)? - (e(1) * 16.0)?)? + (e(2) * 5.0)?)?;
                (t, t_prev, (combined / 12.0)?)
            }
            _ => {
                let combined =
                    ((((&output * 55.0)? - (e(1) * 59.0)?)? + (e(2) * 37.0)?)? - (e(3) * 9.0)?)?;
                (t, t_prev, (combined / 24.0)?)
            }
        };
        x = pndm_transfer(model, &x, t_from, t_to, &combined)?;
        outputs.push_front(output);
        outputs.truncate(3);
        report(callback, i, n, &x, Some(&x0))?;
    }
    Ok(x)
}

/// PNDM's step from timestep t to t_prev along a (combined) model output.
fn pndm_transfer(
    model: &DiscreteModel<'_>,
    x: &Tensor,
    t: usize,
    t_prev: i64,
    output: &Tensor,
) -> Result<Tensor> {
    let alpha = model.schedule.alphas_cumprod[t] as f64;
    let alpha_prev = model.alpha_cumprod(t_prev, model.schedule.final_alpha_cumprod as f64);
    let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
    let eps = model.estimate(output, x, alpha.sqrt(), beta.sqrt())?.eps;
    let denominator = alpha * beta_prev.sqrt() + (alpha * beta * alpha_prev).sqrt();
    (x * (alpha_prev / alpha).sqrt())? - (eps * ((alpha_prev - alpha) / denominator))?
}

/// UniPC (Zhao et al. 2023) as diffusers' `UniPCMultistepScheduler` runs it. Each step first
/// corrects the latents the last predictor made (UniC) with the new model output, then predicts
/// the next latents (UniP) from the outputs of the last `order` steps.
///
/// The schedule's σ set the variance-preserving coefficients α = 1/√(σ²+1), s = σ·α and the
/// log-SNR λ = −ln σ; the network is told the schedule's (integer) timesteps.
pub fn sample_unipc(
    model: &mut DiscreteModel<'_>,
    schedule: &SigmaSchedule,
    options: &UniPcOptions,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = schedule.timesteps.len();
    let unipc = UniPc {
        sigmas: &schedule.sigmas,
        options,
    };
    // Converted model outputs (x₀ or ε) of the last `order` steps, newest first, and the
    // latents the last predictor started from, with its order.
    let mut m: VecDeque<Tensor> = Default::default();
    let mut last: Option<(Tensor, usize)> = None;
    for i in 0..n {
        let output = model.model.predict(&x, schedule.timesteps[i] as f64)?;
        let estimate = model.estimate(&output, &x, unipc.alpha(i), unipc.sigma_vp(i))?;
        let m_i = if options.predict_x0 {
            estimate.x0.clone()
        } else {
            estimate.eps
        };
        if let Some((x_last, order)) = &last {
            x = unipc.correct(&m, &m_i, x_last, i, *order)?;
        }
        m.push_front(m_i);
        m.truncate(options.order);
        let order = if options.lower_order_final {
            options.order.min(n - i)
        } else {
            options.order
        };
        // The first steps have no history yet ("warmup for multistep").
        let order = order.min(i + 1);
        // To σ = 0 (of order 1, with `lower_order_final`) every variant's update tends to the
        // x₀ estimate; its coefficients there are 0·∞, which diffusers evaluates to NaN for
        // bh1 and for ε-prediction. The step is taken as its limit.
        let x_next = if schedule.sigmas[i + 1] == 0.0 {
            estimate.x0.clone()
        } else {
            unipc.predict(&m, &x, i, order)?
        };
        last = Some((x, order));
        x = x_next;
        report(callback, i, n, &x, Some(&estimate.x0))?;
    }
    Ok(x)
}

/// One UniPC run's coefficients over a schedule.
struct UniPc<'a> {
    sigmas: &'a [f32],
    options: &'a UniPcOptions,
}

impl UniPc<'_> {
    fn sigma(&self, i: usize) -> f64 {
        self.sigmas[i] as f64
    }

    fn alpha(&self, i: usize) -> f64 {
        1.0 / (self.sigma(i) * self.sigma(i) + 1.0).sqrt()
    }

    fn sigma_vp(&self, i: usize) -> f64 {
        self.sigma(i) * self.alpha(i)
    }

    fn lambda(&self, i: usize) -> f64 {
        -self.sigma(i).ln()
    }

    /// The step from σ index `s0` to `t` over the outputs `m` (m[0] at `s0`, m[k] at
    /// `s0 − k`): the first-order part, and the coefficient B(h) of the higher-order terms
    /// with D1_k = (m[k] − m[0]) / r_k, r_k = (λ_{s0−k} − λ_{s0}) / h, k = 1…order−1.
    /// Returns (x_t without the higher-order terms, α or s of t times B(h), D1s, the b vector
    /// and the R matrix of the order conditions).
    fn step(
        &self,
        m: &VecDeque<Tensor>,
        x: &Tensor,
        s0: usize,
        t: usize,
        order: usize,
    ) -> Result<Step> {
        let h = self.lambda(t) - self.lambda(s0);
        let hh = if self.options.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.options.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for k in 1..order {
            let rk = (self.lambda(s0 - k) - self.lambda(s0)) / h;
            d1s.push(((&m[k] - &m[0])? / rk)?);
            rks.push(rk);
        }
        rks.push(1.0);
        // b_k = h·φ_{k+1}(h)·k! / B(h), with h·φ_k(h) built up by φ_{k+1} = (φ_k − 1/k!)/h.
        let mut b = Vec::with_capacity(order);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        for k in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (k + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let r: Vec<Vec<f64>> = (0..order)
            .map(|power| rks.iter().map(|rk| rk.powi(power as i32)).collect())
            .collect();
        let (base, scale) = if self.options.predict_x0 {
            let base = ((x * (self.sigma_vp(t) / self.sigma_vp(s0)))?
                - (&m[0] * (self.alpha(t) * h_phi_1))?)?;
            (base, self.alpha(t) * b_h)
        } else {
            let base = ((x * (self.alpha(t) / self.alpha(s0)))?
                - (&m[0] * (self.sigma_vp(t) * h_phi_1))?)?;
            (base, self.sigma_vp(t) * b_h)
        };
        Ok(Step {
            base,
            scale,
            d1s,
            b,
            r,
        })
    }

    /// UniP: from the latents `x` at step `i` to step `i + 1`, with `m` holding m_i first.
    fn predict(&self, m: &VecDeque<Tensor>, x: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let step = self.step(m, x, i, i + 1, order)?;
        let rhos = match order {
            1 => return Ok(step.base),
            // diffusers' simplified second order.
            2 => vec![0.5],
            _ => solve(&minor(&step.r, order - 1), &step.b[..order - 1]),
        };
        step.base - (weighted_sum(&rhos, &step.d1s)? * step.scale)?
    }

    /// UniC: redoes the step i − 1 → i from `x_last` with m_i (`m_t`) known; `m` holds the
    /// outputs up to step i − 1, newest first.
    fn correct(
        &self,
        m: &VecDeque<Tensor>,
        m_t: &Tensor,
        x_last: &Tensor,
        i: usize,
        order: usize,
    ) -> Result<Tensor> {
        let step = self.step(m, x_last, i - 1, i, order)?;
        let rhos = match order {
            // diffusers' simplified first order.
            1 => vec![0.5],
            _ => solve(&step.r, &step.b),
        };
        let d1_t = (m_t - &m[0])?;
        let mut correction = (d1_t * rhos[order - 1])?;
        if order > 1 {
            correction = (correction + weighted_sum(&rhos[..order - 1], &step.d1s)?)?;
        }
        step.base - (correction * step.scale)?
    }
}

/// The parts of one UniPC update (see [`UniPc::step`]).
struct Step {
    base: Tensor,
    scale: f64,
    d1s: Vec<Tensor>,
    b: Vec<f64>,
    r: Vec<Vec<f64>>,
}

/// Σ weights[k]·tensors[k].
fn weighted_sum(weights: &[f64], tensors: &[Tensor]) -> Result<Tensor> {
    let mut sum = (&tensors[0] * weights[0])?;
    for (w, t) in weights.iter().zip(tensors).skip(1) {
        sum = (sum + (t * *w)?)?;
    }
    Ok(sum)
}

/// The top-left `size` × `size` block of a square matrix.
fn minor(matrix: &[Vec<f64>], size: usize) -> Vec<Vec<f64>> {
    matrix[..size]
        .iter()
        .map(|row| row[..size].to_vec())
        .collect()
}

/// Solves the small linear system A·x = b by Gaussian elimination with partial pivoting.
fn solve(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut rows: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(row, &bi)| row.iter().copied().chain([bi]).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| rows[p][col].abs().total_cmp(&rows[q][col].abs()))
            .unwrap_or(col);
        rows.swap(col, pivot);
        for row in col + 1..n {
            let (above, below) = rows.split_at_mut(row);
            let (pivot_row, target) = (&above[col], &mut below[0]);
            let factor = target[col] / pivot_row[col];
            for (t, p) in target[col..].iter_mut().zip(&pivot_row[col..]) {
                *t -= factor * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let known: f64 = (row + 1..n).map(|k| rows[row][k] * x[k]).sum();
        x[row] = (rows[row][n] - known) / rows[row][row];
    }
    x
}

/// Latent consistency sampling (Luo et al. 2023, diffusers' `LCMScheduler`): at each timestep
/// the consistency function c_skip·x + c_out·x₀ jumps to a clean estimate, which is noised
/// again to the next timestep with fresh noise.
pub fn sample_lcm(
    model: &mut DiscreteModel<'_>,
    timesteps: &[usize],
    mut x: Tensor,
    noise: &mut dyn NoiseSource,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    // LCMScheduler's `sigma_data` and `timestep_scaling`.
    const SIGMA_DATA: f64 = 0.5;
    const TIMESTEP_SCALING: f64 = 10.0;
    let n = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let Estimate { x0, .. } = model.predict(&x, t)?;
        let scaled = t as f64 * TIMESTEP_SCALING;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        let denoised = ((x0 * c_out)? + (&x * c_skip)?)?;
        x = match timesteps.get(i + 1) {
            Some(&t_next) => {
                let alpha_next = model.schedule.alphas_cumprod[t_next] as f64;
                let fresh = noise.noise(
                    model.schedule.sigma(t) as f64,
                    model.schedule.sigma(t_next) as f64,
                    &denoised,
                )?;
                ((&denoised * alpha_next.sqrt())? + (fresh * (1.0 - alpha_next).sqrt())?)?
            }
            None => denoised.clone(),
        };
        report(callback, i, n, &x, Some(&denoised))?;
    }
    Ok(x)
}

/// Ancestral DDPM (Ho et al. 2020, diffusers' `DDPMScheduler`, "fixed_small" variance): the
/// posterior mean of the previous timestep given x₀ and x_t, plus noise of the posterior's
/// standard deviation.
pub fn sample_ddpm(
    model: &mut DiscreteModel<'_>,
    timesteps: &[usize],
    mut x: Tensor,
    noise: &mut dyn NoiseSource,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let t_prev = timesteps.get(i + 1).map_or(-1, |&t| t as i64);
        let alpha = model.schedule.alphas_cumprod[t] as f64;
        let alpha_prev = model.alpha_cumprod(t_prev, 1.0);
        let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
        let step_alpha = alpha / alpha_prev;
        let step_beta = 1.0 - step_alpha;
        let Estimate { x0, .. } = model.predict(&x, t)?;
        let mean = ((&x0 * (alpha_prev.sqrt() * step_beta / beta))?
            + (&x * (step_alpha.sqrt() * beta_prev / beta))?)?;
        x = if t > 0 {
            let variance = (beta_prev / beta * step_beta).max(1e-20);
            let sigma_prev = (beta_prev / alpha_prev).sqrt();
            let fresh = noise.noise(model.schedule.sigma(t) as f64, sigma_prev, &mean)?;
            (mean + (fresh * variance.sqrt())?)?
        } else {
            mean
        };
        report(callback, i, n, &x, Some(&x0))?;
    }
    Ok(x)
}

/// How an img2img strength in [0, 1] becomes sampler steps. The schedule is built for
/// `schedule_steps` steps and sampling starts at step `first_step` of it, from the init
/// latents noised to that step's noise level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrengthSteps {
    pub schedule_steps: usize,
    pub first_step: usize,
}

impl StrengthSteps {
    /// How many steps actually run.
    pub fn steps_run(&self) -> usize {
        self.schedule_steps - self.first_step
    }
}

/// Whose rule turns an img2img strength into steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrengthRule {
    /// InvokeAI and diffusers: the last `int(strength × steps)` steps of a `steps`-step
    /// schedule run.
    InvokeAi,
    /// A1111 (`setup_img2img_steps`): the last `int(min(strength, 0.999) × steps) + 1` steps of
    /// a `steps`-step schedule run.
    A1111,
    /// A1111 with "img2img_fix_steps", and ComfyUI's `denoise`: exactly `steps` steps run, the
    /// last of a schedule stretched to `int(steps / strength)` steps (A1111 caps the strength
    /// at 0.999 there, ComfyUI treats above 0.9999 as 1).
    FixedSteps,
}

/// The steps an img2img run of `steps` steps at `strength` takes under `rule`.
pub fn strength_steps(
    steps: usize,
    strength: f64,
    rule: StrengthRule,
) -> std::result::Result<StrengthSteps, crate::DreamError> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(crate::DreamError::InvalidRequest(format!(
            "img2img strength must be between 0 and 1, got {strength}"
        )));
    }
    if steps == 0 {
        return Err(crate::DreamError::InvalidRequest(
            "steps must be at least 1".into(),
        ));
    }
    let tail = |schedule_steps: usize, steps_run: usize| StrengthSteps {
        schedule_steps,
        first_step: schedule_steps - steps_run.min(schedule_steps),
    };
    Ok(match rule {
        StrengthRule::InvokeAi => tail(steps, (strength * steps as f64) as usize),
        StrengthRule::A1111 => tail(steps, (strength.min(0.999) * steps as f64) as usize + 1),
        StrengthRule::FixedSteps if strength == 0.0 => tail(steps, 0),
        StrengthRule::FixedSteps => {
            let stretched = (steps as f64 / strength.min(0.999)) as usize;
            tail(stretched.max(steps), steps)
        }
    })
}

/// The part of a schedule an img2img run walks: from step `first_step` on.
pub fn schedule_from(schedule: &SigmaSchedule, first_step: usize) -> SigmaSchedule {
    let first_step = first_step.min(schedule.timesteps.len());
    SigmaSchedule {
        sigmas: schedule.sigmas[first_step..].to_vec(),
        timesteps: schedule.timesteps[first_step..].to_vec(),
        init_noise_sigma: schedule.sigmas[first_step],
    }
}

/// Init latents noised to level σ for a k-diffusion sampler: x = x₀ + σ·n.
pub fn noise_to_sigma(init: &Tensor, noise: &Tensor, sigma: f64) -> Result<Tensor> {
    init + (noise * sigma)?
}

/// Init latents noised to level σ in variance-preserving form, as UniPC's `add_noise`:
/// x = α·x₀ + σ·α·n with α = 1/√(σ²+1) (for a training σ, √ᾱ_t·x₀ + √(1−ᾱ_t)·n).
pub fn noise_to_vp_sigma(init: &Tensor, noise: &Tensor, sigma: f64) -> Result<Tensor> {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (init * alpha)? + (noise * (sigma * alpha))?
}

/// Init latents noised to training timestep t for a DDPM-family sampler, as diffusers'
/// `add_noise`: x = √ᾱ_t·x₀ + √(1−ᾱ_t)·n.
pub fn noise_to_timestep(
    schedule: &NoiseSchedule,
    init: &Tensor,
    noise: &Tensor,
    t: usize,
) -> Result<Tensor> {
    let alpha_cumprod = schedule.alphas_cumprod[t] as f64;
    (init * alpha_cumprod.sqrt())? + (noise * (1.0 - alpha_cumprod).sqrt())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const N: usize = 20_000;

    fn draw(source: &mut BrownianNoise, sigma: f64, sigma_next: f64) -> Vec<f32> {
        let like = Tensor::zeros(N, candle_core::DType::F32, &Device::Cpu).unwrap();
        let noise = source.noise(sigma, sigma_next, &like).unwrap();
        noise.to_vec1().unwrap()
    }

    fn mean(x: &[f32]) -> f64 {
        x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64
    }

    fn correlation(a: &[f32], b: &[f32]) -> f64 {
        let (ma, mb) = (mean(a), mean(b));
        let cov: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb))
            .sum();
        let var = |x: &[f32], m: f64| x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>();
        cov / (var(a, ma) * var(b, mb)).sqrt()
    }

    /// Four standard errors of a mean or correlation over N samples (√20000 ≈ 141.4).
    const FOUR_SE: f64 = 4.0 / 141.4;

    #[test]
    fn brownian_noise_is_standard_normal_and_seeded() {
        let mut tree = BrownianNoise::new(42, 0.03, 14.6);
        let noise = draw(&mut tree, 14.6, 9.7);
        assert!(mean(&noise).abs() < FOUR_SE, "mean {}", mean(&noise));
        let variance = noise.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / N as f64;
        assert!((variance - 1.0).abs() < 0.05, "variance {variance}");

        assert_eq!(
            draw(&mut tree, 14.6, 9.7),
            noise,
            "same seed, same interval"
        );
        let other = draw(&mut BrownianNoise::new(43, 0.03, 14.6), 14.6, 9.7);
        assert!(
            correlation(&noise, &other).abs() < FOUR_SE,
            "other seeds are independent"
        );
    }

    #[test]
    fn brownian_increments_add_up_and_are_independent() {
        let mut tree = BrownianNoise::new(7, 0.03, 14.6);
        let (a, b, c) = (9.0, 4.0, 0.5);
        let ab = draw(&mut tree, a, b);
        let bc = draw(&mut tree, b, c);
        let ac = draw(&mut tree, a, c);
        // The same path: W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b)), so the noise over [a, c]
        // is the noises over its parts weighted by √length.
        for j in 0..N {
            let parts = ab[j] as f64 * (a - b).sqrt() + bc[j] as f64 * (b - c).sqrt();
            let whole = ac[j] as f64 * (a - c).sqrt();
            assert!(
                (parts - whole).abs() < 1e-4,
                "element {j}: {parts} vs {whole}"
            );
        }
        assert!(
            correlation(&ab, &bc).abs() < FOUR_SE,
            "disjoint intervals are independent"
        );
        // Overlapping steps (DPM++ SDE's σ→σ_mid, then σ→σ_next) share their common part.
        let expected = ((a - b) / (a - c)).sqrt();
        let measured = correlation(&ab, &ac);
        assert!(
            (measured - expected).abs() < FOUR_SE,
            "{measured} vs {expected}"
        );
    }

    #[test]
    fn strength_rules_count_steps_like_their_tools() {
        use StrengthRule::*;
        // (steps, strength, rule, schedule_steps, first_step), worked out from diffusers'
        // `get_timesteps` and A1111's `setup_img2img_steps` + `sigmas[steps - t_enc - 1:]`.
        let table = [
            (20, 0.6, InvokeAi, 20, 8),
            (20, 0.6, A1111, 20, 7),
            (20, 0.6, FixedSteps, 33, 13),
            (50, 0.75, InvokeAi, 50, 13),
            (50, 0.75, A1111, 50, 12),
            (50, 0.75, FixedSteps, 66, 16),
            (20, 1.0, InvokeAi, 20, 0),
            (20, 1.0, A1111, 20, 0),
            (20, 1.0, FixedSteps, 20, 0),
            (20, 0.0, InvokeAi, 20, 20),
            (20, 0.0, A1111, 20, 19),
            (20, 0.0, FixedSteps, 20, 20),
        ];
        for (steps, strength, rule, schedule_steps, first_step) in table {
            assert_eq!(
                strength_steps(steps, strength, rule).unwrap(),
                StrengthSteps {
                    schedule_steps,
                    first_step
                },
                "{steps} steps, strength {strength}, {rule:?}"
            );
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            let err = strength_steps(20, bad, InvokeAi).unwrap_err().to_string();
            assert!(err.contains("strength"), "{err}");
        }
    }

    #[test]
    fn img2img_starts_from_the_noised_init_latents() {
        let schedule = SigmaSchedule {
            sigmas: vec![14.6, 7.0, 3.0, 1.0, 0.0],
            timesteps: vec![999.0, 800.0, 600.0, 300.0],
            init_noise_sigma: 14.6,
        };
        let tail = schedule_from(&schedule, 2);
        assert_eq!(tail.sigmas, [3.0, 1.0, 0.0]);
        assert_eq!(tail.timesteps, [600.0, 300.0]);
        let init = Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        let noise = Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap();
        let x = noise_to_sigma(&init, &noise, tail.sigmas[0] as f64).unwrap();
        assert_eq!(x.to_vec1::<f32>().unwrap(), [2.5, -1.25]);
    }
}
