//! The `dream bench` benchmark: Stable Diffusion 1.5's full-size networks with seeded random
//! weights built in-process (no weight files, no Python), timed on the shapes of one
//! generation. `tools/bench/compare.py` runs it next to diffusers' figures for the same shapes
//! (`../shared/parity/bench_unet.py`).
//!
//! Random weights follow PyTorch's default initialisation (uniform in ±1/√fan_in, norms at
//! scale 1 and shift 0), so activations keep the magnitudes, and the kernels the speed, that
//! trained weights give.

use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::clip::ClipTextTransformer;
use crate::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::taesd::{TinyDecoder, TinyDecoderConfig};
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKL;

/// The configs of `make_model.py --size sd15`: Stable Diffusion 1.5's architecture.
pub fn sd15_configs() -> (ClipTextConfig, UNetConfig, VaeConfig) {
    let text = r#"{"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12}"#;
    let unet = r#"{"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"]}"#;
    let vae = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}"#;
    (builtin(text), builtin(unet), builtin(vae))
}

fn builtin<T: serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).expect("the built-in configs are valid")
}

/// Seeded random weights for any network: a tensor's values depend only on the seed, its name
/// and the element's index, so they are generated in parallel and reproducibly.
#[derive(Debug, Clone, Copy)]
pub struct RandomWeights {
    pub seed: u64,
}

impl RandomWeights {
    pub fn var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, device.clone())
    }

    fn values(self, name: &str, dims: &[usize]) -> Vec<f32> {
        let numel: usize = dims.iter().product();
        let is_bias = name.ends_with("bias");
        match dims {
            // GroupNorm/LayerNorm scale and shift; other biases start at zero too.
            [_] if is_bias => vec![0.0; numel],
            [_] => vec![1.0; numel],
            _ => {
                let fan_in: usize = dims[1..].iter().product();
                self.uniform(name, numel, 1.0 / (fan_in.max(1) as f32).sqrt())
            }
        }
    }

    /// `numel` numbers uniform in ±`bound`, from the stream named `name`.
    fn uniform(self, name: &str, numel: usize, bound: f32) -> Vec<f32> {
        let key = splitmix64(self.seed ^ fnv1a(name.as_bytes()));
        (0..numel as u64)
            .into_par_iter()
            .map(|i| (2.0 * unit_float(key, i) - 1.0) * bound)
            .collect()
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(self.values(name, shape.dims()), shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need the shape of {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `index`-th uniform number in [0, 1) of stream `key`.
fn unit_float(key: u64, index: u64) -> f32 {
    let bits = splitmix64(key ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03)) >> 40;
    bits as f32 / (1u64 << 24) as f32
}

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Image sizes (square, in pixels; multiples of 8).
    pub sizes: Vec<usize>,
    /// Timed runs per measurement, after one untimed warm-up run.
    pub iters: usize,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sizes: vec![512],
            iters: 3,
            seed: 0,
        }
    }
}

/// One measured operation.
#[derive(Debug, Clone)]
pub struct Timing {
    /// `text_encoder`, `unet`, `vae_decode`, `vae_encode` (bench_unet.py's names) or
    /// `taesd_decode`.
    pub component: &'static str,
    pub input: Vec<usize>,
    /// Wall-clock seconds of each timed run, in order.
    pub runs: Vec<f64>,
    /// The process's peak resident memory so far, in bytes (Linux only).
    pub peak_rss: Option<u64>,
}

impl Timing {
    pub fn median(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }

    pub fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// The process's peak resident set size (`VmHWM`), where the OS reports it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn measure(
    component: &'static str,
    input: &Tensor,
    iters: usize,
    mut run: impl FnMut() -> Result<Tensor>,
) -> Result<Timing> {
    // The warm-up run also checks that random weights gave finite outputs.
    let sum = run()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !sum.is_finite() {
        candle_core::bail!("{component} gave non-finite outputs on random weights");
    }
    let runs = (0..iters)
        .map(|_| {
            let start = Instant::now();
            run()?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Timing {
        component,
        input: input.dims().to_vec(),
        runs,
        peak_rss: peak_rss(),
    })
}

/// Builds SD 1.5's networks on random weights, one at a time (TAESD beside the VAE), and times
/// the text encoder (the CFG batch of two prompts), the UNet at batch 1 and 2, the VAE decoder
/// and encoder and TAESD's decoder, at every size. `report` sees each timing as soon as it is
/// measured.
pub fn run(options: &BenchOptions, report: &mut dyn FnMut(&Timing)) -> Result<Vec<Timing>> {
    let device = Device::Cpu;
    let (text_config, unet_config, vae_config) = sd15_configs();
    let weights = RandomWeights { seed: options.seed };
    let inputs = RandomWeights {
        seed: options.seed.wrapping_add(1),
    };
    let random = |name: &str, dims: &[usize]| {
        // Uniform in ±√3 has unit variance, like the Gaussian latents and contexts it stands in for.
        let values = inputs.uniform(name, dims.iter().product(), 3f32.sqrt());
        Tensor::from_vec(values, dims, &device)
    };
    let mut timings = Vec::new();
    let mut record = |timing: Timing| {
        report(&timing);
        timings.push(timing);
    };

    {
        let encoder = ClipTextTransformer::new(weights.var_builder(&device), &text_config)?;
        let tokens = text_config.max_position_embeddings;
        let ids: Vec<u32> = (0..2 * tokens as u32)
            .map(|i| i * 7919 % text_config.vocab_size as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (2, tokens), &device)?;
        record(measure("text_encoder", &ids, options.iters, || {
            Ok(encoder.forward(&ids)?.last_hidden_state)
        })?);
    }
    {
        let unet = UNet2DConditionModel::new(weights.var_builder(&device), &unet_config)?;
        for &size in &options.sizes {
            for batch in [1, 2] {
                let latent = size / 8;
                let sample = random("sample", &[batch, unet_config.in_channels, latent, latent])?;
                let context = random("context", &[batch, 77, unet_config.cross_attention_dim])?;
                record(measure("unet", &sample, options.iters, || {
                    unet.forward(&sample, 500.0, &context)
                })?);
            }
        }
    }
    let vae = AutoencoderKL::new(weights.var_builder(&device), &vae_config)?;
    // TAESD's few megabytes add nothing to the VAE's peak memory.
    let taesd = TinyDecoder::new(weights.var_builder(&device), &TinyDecoderConfig::default())?;
    for &size in &options.sizes {
        let latent = size / 8;
        let latents = random("latents", &[1, vae_config.latent_channels, latent, latent])?;
        record(measure("vae_decode", &latents, options.iters, || {
            vae.decode(&latents)
        })?);
        let image = random("image", &[1, vae_config.in_channels, size, size])?;
        record(measure("vae_encode", &image, options.iters, || {
            Ok(vae.encode(&image)?.mean)
        })?);
        record(measure("taesd_decode", &latents, options.iters, || {
            taesd.decode(&latents)
        })?);
    }
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_have_pytorch_default_scale_and_are_reproducible() {
        let weights = RandomWeights { seed: 7 };
        let values = weights.values("conv.weight", &[64, 16, 3, 3]);
        let bound = 1.0 / 144f32.sqrt();
        assert!(values.iter().all(|v| v.abs() <= bound));
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
        // Uniform in ±b has variance b²/3.
        assert!(mean.abs() < 0.01 * bound, "mean {mean}");
        assert!(
            (var / (bound * bound / 3.0) - 1.0).abs() < 0.05,
            "variance {var}"
        );
        assert_eq!(values, weights.values("conv.weight", &[64, 16, 3, 3]));
        assert_ne!(values, weights.values("conv2.weight", &[64, 16, 3, 3]));
        assert_eq!(weights.values("norm.weight", &[4]), vec![1.0; 4]);
        assert_eq!(weights.values("norm.bias", &[4]), vec![0.0; 4]);
    }

    #[test]
    fn sd15_configs_have_sd15_sizes() {
        let (text, unet, vae) = sd15_configs();
        assert_eq!((text.hidden_size, text.num_hidden_layers), (768, 12));
        assert_eq!(unet.block_out_channels, [320, 640, 1280, 1280]);
        assert_eq!(unet.layers_per_block, 2);
        assert_eq!(vae.block_out_channels, [128, 256, 512, 512]);
        assert_eq!(vae.scaling_factor, 0.18215);
    }
}
