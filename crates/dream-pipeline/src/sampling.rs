//! Sampler loops. Each sampler is one short function, in the manner of k-diffusion's
//! `sampling.py`: it gets a model to query, a schedule, and the starting latents, and
//! reports every step to a callback.
//!
//! Two model views exist because the two sampler families think differently:
//! - k-diffusion samplers walk a schedule of noise levels σ and ask for the denoised image
//!   (`denoise`); latents there are x₀ + σ·ε.
//! - DDPM-family samplers (DDIM) walk discrete timesteps and ask for the noise ε
//!   (`NoisePredictor`); latents there are √ᾱ·x₀ + √(1−ᾱ)·ε.

use candle_core::{Result, Tensor};
use dream_core::schedule::{NoiseSchedule, SigmaSchedule};

/// The model as a function of the latents and the training timestep: the predicted noise ε,
/// already combined over the guidance batch.
pub trait NoisePredictor {
    fn predict_noise(&mut self, latents: &Tensor, timestep: f64) -> Result<Tensor>;
}

/// What a sampler tells its caller after each step.
pub struct StepInfo<'a> {
    /// Zero-based index of the step just taken.
    pub step: usize,
    pub total_steps: usize,
    /// The latents after this step.
    pub latents: &'a Tensor,
}

/// Called after every step; returning an error (e.g. an interrupt) stops the sampler.
pub type StepCallback<'a> = dyn FnMut(StepInfo<'_>) -> Result<()> + 'a;

/// The denoised estimate for latents `x` at noise level `sigma` (ε-prediction models):
/// the UNet sees the latents scaled to unit variance, c_in = 1/√(σ²+1), as diffusers'
/// `scale_model_input` does, and x₀ = x − σ·ε.
fn denoise(
    model: &mut dyn NoisePredictor,
    x: &Tensor,
    sigma: f64,
    timestep: f64,
) -> Result<Tensor> {
    let c_in = (sigma * sigma + 1.0).sqrt();
    let eps = model.predict_noise(&(x / c_in)?, timestep)?;
    x - (eps * sigma)?
}

/// Euler's method on the probability-flow ODE, dx/dσ = (x − x₀)/σ (Karras et al. 2022, alg. 1
/// without churn).
pub fn sample_euler(
    model: &mut dyn NoisePredictor,
    schedule: &SigmaSchedule,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let total_steps = schedule.timesteps.len();
    for (i, &timestep) in schedule.timesteps.iter().enumerate() {
        let (sigma, sigma_next) = (schedule.sigmas[i] as f64, schedule.sigmas[i + 1] as f64);
        let denoised = denoise(model, &x, sigma, timestep as f64)?;
        let derivative = ((&x - denoised)? / sigma)?;
        x = (x + (derivative * (sigma_next - sigma))?)?;
        callback(StepInfo {
            step: i,
            total_steps,
            latents: &x,
        })?;
    }
    Ok(x)
}

/// Deterministic DDIM (Song et al. 2020, η = 0): predict x₀ from ε, then move it to the
/// previous timestep's noise level along the same ε. `steps` is the schedule's nominal length,
/// which fixes the stride to the previous timestep.
pub fn sample_ddim(
    model: &mut dyn NoisePredictor,
    schedule: &NoiseSchedule,
    timesteps: &[usize],
    steps: usize,
    mut x: Tensor,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let total_steps = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let alpha = schedule.alphas_cumprod[t] as f64;
        let alpha_prev = schedule.ddim_prev_alpha_cumprod(t, steps) as f64;
        let eps = model.predict_noise(&x, t as f64)?;
        let x0 = ((&x - (&eps * (1.0 - alpha).sqrt())?)? / alpha.sqrt())?;
        x = ((x0 * alpha_prev.sqrt())? + (eps * (1.0 - alpha_prev).sqrt())?)?;
        callback(StepInfo {
            step: i,
            total_steps,
            latents: &x,
        })?;
    }
    Ok(x)
}
