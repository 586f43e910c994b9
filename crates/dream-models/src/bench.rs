//! The `dream bench` benchmark: Stable Diffusion 1.5's or SDXL base's full-size networks with
//! seeded random weights built in-process (no weight files, no Python), timed on the shapes of
//! one generation. `tools/bench/compare.py` runs it next to diffusers' figures for the same
//! shapes (`../shared/parity/bench_unet.py` for SD 1.5, `tools/bench/diffusers_sdxl.py` for
//! SDXL, which builds diffusers' networks from the configs `--json` writes).
//!
//! Random weights follow PyTorch's default initialisation (uniform in ±1/√fan_in, norms at
//! scale 1 and shift 0), so activations keep the magnitudes, and the kernels the speed, that
//! trained weights give.

use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::clip::{ClipTextModelWithProjection, ClipTextTransformer};
use crate::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::taesd::{TinyDecoder, TinyDecoderConfig};
use crate::unet::{AddedConditions, UNet2DConditionModel};
use crate::vae::AutoencoderKL;

/// The architecture to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchModel {
    /// Stable Diffusion 1.5 (the configs of `make_model.py --size sd15`).
    #[default]
    Sd15,
    /// Stable Diffusion XL base 1.0.
    Sdxl,
}

impl BenchModel {
    /// The `--model` name.
    pub fn name(self) -> &'static str {
        match self {
            BenchModel::Sd15 => "sd15",
            BenchModel::Sdxl => "sdxl",
        }
    }

    /// The name people know it by.
    pub fn title(self) -> &'static str {
        match self {
            BenchModel::Sd15 => "SD 1.5",
            BenchModel::Sdxl => "SDXL base 1.0",
        }
    }

    /// The side of the images the model was trained on.
    pub fn native_size(self) -> usize {
        match self {
            BenchModel::Sd15 => 512,
            BenchModel::Sdxl => 1024,
        }
    }

    /// The `config.json` texts of the model's networks, with every field diffusers and
    /// transformers need to build the same architecture (`tools/bench/diffusers_sdxl.py` does).
    pub fn configs(self) -> ModelConfigs {
        match self {
            BenchModel::Sd15 => ModelConfigs {
                text_encoders: vec![CLIP_VIT_L],
                unet: SD15_UNET,
                vae: SD15_VAE,
            },
            BenchModel::Sdxl => ModelConfigs {
                text_encoders: vec![CLIP_VIT_L, OPENCLIP_BIG_G],
                unet: SDXL_UNET,
                vae: SDXL_VAE,
            },
        }
    }
}

/// A model's network configs as `config.json` texts.
#[derive(Debug, Clone)]
pub struct ModelConfigs {
    /// `text_encoder` and, in SDXL, `text_encoder_2`.
    pub text_encoders: Vec<TextEncoder>,
    pub unet: &'static str,
    pub vae: &'static str,
}

/// One of a model's CLIP text encoders.
#[derive(Debug, Clone, Copy)]
pub struct TextEncoder {
    /// Its diffusers folder, also the name its timing goes by.
    pub name: &'static str,
    pub config: &'static str,
    /// transformers' `CLIPTextModelWithProjection` (SDXL's second encoder, whose projected
    /// pooled output the UNet takes) rather than `CLIPTextModel`.
    pub with_projection: bool,
}

impl TextEncoder {
    pub fn config(&self) -> ClipTextConfig {
        builtin(self.config)
    }
}

impl ModelConfigs {
    pub fn unet(&self) -> UNetConfig {
        builtin(self.unet)
    }

    pub fn vae(&self) -> VaeConfig {
        builtin(self.vae)
    }
}

fn builtin<T: serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).expect("the built-in configs are valid")
}

/// OpenAI's CLIP ViT-L/14 text tower: SD 1.5's text encoder and SDXL's first.
const CLIP_VIT_L: TextEncoder = TextEncoder {
    name: "text_encoder",
    config: r#"{"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "projection_dim": 768, "eos_token_id": 2}"#,
    with_projection: false,
};

/// OpenCLIP's ViT-bigG/14 text tower with its projection: SDXL's `text_encoder_2`.
const OPENCLIP_BIG_G: TextEncoder = TextEncoder {
    name: "text_encoder_2",
    config: r#"{"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120,
        "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77,
        "hidden_act": "gelu", "projection_dim": 1280, "eos_token_id": 2}"#,
    with_projection: true,
};

const SD15_UNET: &str = r#"{"block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"]}"#;

/// stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json`. `attention_head_dim` is the
/// head count (64 channels each), as in SD 1.x configs.
const SDXL_UNET: &str = r#"{"block_out_channels": [320, 640, 1280], "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048, "use_linear_projection": true,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816}"#;

const SD15_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                         "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                       "UpDecoderBlock2D"]}"#;

/// SD's VAE architecture; SDXL's latents are scaled differently.
const SDXL_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                         "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                       "UpDecoderBlock2D"],
    "scaling_factor": 0.13025}"#;

/// SDXL base's micro-conditioning for a square image of `size` pixels, uncropped: original
/// height and width, crop top and left, target height and width.
fn sdxl_time_ids(size: usize) -> [f32; 6] {
    let size = size as f32;
    [size, size, 0.0, 0.0, size, size]
}

/// Seeded random weights for any network: a tensor's values depend only on the seed, its name
/// and the element's index, so they are generated in parallel and reproducibly.
#[derive(Debug, Clone, Copy)]
pub struct RandomWeights {
    pub seed: u64,
}

impl RandomWeights {
    /// Weights of `dtype` on `device`, drawn in f32 and converted (the same values, rounded, in
    /// every precision).
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
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
    pub model: BenchModel,
    /// Image sizes (square, in pixels; multiples of 8).
    pub sizes: Vec<usize>,
    /// Timed runs per measurement, after one untimed warm-up run.
    pub iters: usize,
    pub seed: u64,
    /// Where the networks run.
    pub device: Device,
    /// The networks' weights and activations (token ids and the timestep stay as they are).
    pub dtype: DType,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model: BenchModel::default(),
            sizes: vec![BenchModel::default().native_size()],
            iters: 3,
            seed: 0,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// One measured operation.
#[derive(Debug, Clone)]
pub struct Timing {
    /// `text_encoder`, `text_encoder_2`, `unet`, `vae_decode`, `vae_encode` (diffusers' and
    /// bench_unet.py's names) or `taesd_decode`.
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
    // Summed in f32: a float16 sum of a whole image can overflow where its values do not.
    let sum = run()?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if !sum.is_finite() {
        candle_core::bail!("{component} gave non-finite outputs on random weights");
    }
    let runs = (0..iters)
        .map(|_| {
            let start = Instant::now();
            // A GPU returns before its kernels finish: the time is taken when they have.
            run()?.device().synchronize()?;
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

/// Builds the model's networks on random weights, one at a time (TAESD beside the VAE), and
/// times each text encoder (the CFG batch of two prompts; SDXL's second up to its projected
/// pooled output), the UNet at batch 1 and 2, the VAE
/// decoder and encoder and TAESD's decoder, at every size. `report` sees each timing as soon as
/// it is measured.
pub fn run(options: &BenchOptions, report: &mut dyn FnMut(&Timing)) -> Result<Vec<Timing>> {
    let (device, dtype) = (&options.device, options.dtype);
    let configs = options.model.configs();
    let weights = RandomWeights { seed: options.seed };
    let inputs = RandomWeights {
        seed: options.seed.wrapping_add(1),
    };
    let random = |name: &str, dims: &[usize]| {
        // Uniform in ±√3 has unit variance, like the Gaussian latents and contexts it stands in for.
        let values = inputs.uniform(name, dims.iter().product(), 3f32.sqrt());
        Tensor::from_vec(values, dims, device)?.to_dtype(dtype)
    };
    let mut timings = Vec::new();
    let mut record = |timing: Timing| {
        report(&timing);
        timings.push(timing);
    };

    for encoder in &configs.text_encoders {
        let text_config = encoder.config();
        let tokens = text_config.max_position_embeddings;
        let ids: Vec<u32> = (0..2 * tokens as u32)
            .map(|i| i * 7919 % text_config.vocab_size as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (2, tokens), device)?;
        // Each encoder's random weights are named under its own folder.
        let vb = weights.var_builder(dtype, device).pp(encoder.name);
        let timing = if encoder.with_projection {
            let model = ClipTextModelWithProjection::new(vb, &text_config)?;
            measure(encoder.name, &ids, options.iters, || {
                Ok(model.forward(&ids)?.1)
            })?
        } else {
            let model = ClipTextTransformer::new(vb, &text_config)?;
            measure(encoder.name, &ids, options.iters, || {
                Ok(model.forward(&ids)?.last_hidden_state)
            })?
        };
        record(timing);
    }
    {
        let unet_config = configs.unet();
        let unet = UNet2DConditionModel::new(weights.var_builder(dtype, device), &unet_config)?;
        for &size in &options.sizes {
            for batch in [1, 2] {
                let latent = size / 8;
                let sample = random("sample", &[batch, unet_config.in_channels, latent, latent])?;
                let context = random("context", &[batch, 77, unet_config.cross_attention_dim])?;
                let added = sdxl_conditions(&unet_config, size, batch, &random)?;
                let added = added
                    .as_ref()
                    .map(|(text_embeds, time_ids)| AddedConditions {
                        text_embeds,
                        time_ids,
                    });
                record(measure("unet", &sample, options.iters, || {
                    unet.forward_with_added(&sample, 500.0, &context, added.as_ref())
                })?);
            }
        }
    }
    let vae_config = configs.vae();
    let vae = AutoencoderKL::new(weights.var_builder(dtype, device), &vae_config)?;
    // TAESD's few megabytes add nothing to the VAE's peak memory. TAESDXL has TAESD's shape.
    let taesd = TinyDecoder::new(
        weights.var_builder(dtype, device),
        &TinyDecoderConfig::default(),
    )?;
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

/// SDXL's added conditions for a batch at `size` pixels, `None` for UNets without them: a
/// random pooled text embedding (its width is what `add_embedding` takes beyond the six
/// embedded numbers) and [`sdxl_time_ids`].
fn sdxl_conditions(
    config: &UNetConfig,
    size: usize,
    batch: usize,
    random: &dyn Fn(&str, &[usize]) -> Result<Tensor>,
) -> Result<Option<(Tensor, Tensor)>> {
    let (Some(number_channels), Some(input_channels)) = (
        config.addition_time_embed_dim,
        config.projection_class_embeddings_input_dim,
    ) else {
        return Ok(None);
    };
    let time_ids = sdxl_time_ids(size);
    let pooled = input_channels - time_ids.len() * number_channels;
    let text_embeds = random("text_embeds", &[batch, pooled])?;
    let time_ids = Tensor::from_vec(
        time_ids.repeat(batch),
        (batch, time_ids.len()),
        text_embeds.device(),
    )?
    .to_dtype(text_embeds.dtype())?;
    Ok(Some((text_embeds, time_ids)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
    fn random_weights_in_float16_are_the_float32_values_rounded() {
        let weights = RandomWeights { seed: 7 };
        let get = |dtype| {
            weights
                .var_builder(dtype, &Device::Cpu)
                .get((8, 4), "layer.weight")
                .unwrap()
        };
        let half = get(DType::F16);
        assert_eq!(half.dtype(), DType::F16);
        let as_f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let rounded = get(DType::F32).to_dtype(DType::F16).unwrap();
        assert_eq!(as_f32(half), as_f32(rounded));
    }

    /// Hands out zero-stride stand-ins for weights and adds up the elements a network asks for,
    /// so that a full-size network's parameters are counted without allocating them.
    #[derive(Clone, Default)]
    struct ParameterCount(Arc<AtomicUsize>);

    impl ParameterCount {
        fn of<T>(build: impl FnOnce(VarBuilder) -> Result<T>) -> usize {
            let count = ParameterCount::default();
            let vb = VarBuilder::from_backend(Box::new(count.clone()), DType::F32, Device::Cpu);
            build(vb).unwrap();
            count.0.load(Ordering::Relaxed)
        }
    }

    impl SimpleBackend for ParameterCount {
        fn get(
            &self,
            shape: Shape,
            _: &str,
            _: candle_nn::Init,
            dtype: DType,
            device: &Device,
        ) -> Result<Tensor> {
            self.0.fetch_add(shape.elem_count(), Ordering::Relaxed);
            Tensor::zeros((), dtype, device)?.broadcast_as(shape)
        }

        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
            candle_core::bail!("counting needs the shape of {name}")
        }

        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    /// The parameter counts of diffusers' and transformers' networks built from the same
    /// configs (`sum(p.numel() for p in model.parameters())` on `UNet2DConditionModel`,
    /// `AutoencoderKL` and `CLIPTextModel` under `torch.device("meta")`; diffusers 0.42.1,
    /// transformers 5.23). SDXL base's UNet is the published 2.6 billion.
    #[test]
    fn configs_build_networks_of_diffusers_parameter_counts() {
        let sd15 = BenchModel::Sd15.configs();
        let sdxl = BenchModel::Sdxl.configs();
        let clip = |configs: &ModelConfigs, index: usize| {
            let encoder = configs.text_encoders[index];
            let config = encoder.config();
            if encoder.with_projection {
                ParameterCount::of(|vb| ClipTextModelWithProjection::new(vb, &config))
            } else {
                ParameterCount::of(|vb| ClipTextTransformer::new(vb, &config))
            }
        };
        let unet = |configs: &ModelConfigs| {
            ParameterCount::of(|vb| UNet2DConditionModel::new(vb, &configs.unet()))
        };
        let vae = |configs: &ModelConfigs| {
            ParameterCount::of(|vb| AutoencoderKL::new(vb, &configs.vae()))
        };
        assert_eq!(unet(&sdxl), 2_567_463_684);
        assert_eq!(unet(&sd15), 859_520_964);
        assert_eq!(clip(&sd15, 0), 123_060_480);
        assert_eq!(clip(&sdxl, 0), 123_060_480);
        assert_eq!(clip(&sdxl, 1), 694_659_840);
        assert_eq!(vae(&sd15), 83_653_863);
        assert_eq!(vae(&sdxl), 83_653_863);
    }

    #[test]
    fn configs_have_the_models_sizes() {
        let sd15 = BenchModel::Sd15.configs();
        assert_eq!(sd15.text_encoders[0].config().hidden_size, 768);
        assert_eq!(sd15.unet().cross_attention_dim, 768);
        assert_eq!(sd15.vae().scaling_factor, 0.18215);
        let sdxl = BenchModel::Sdxl.configs();
        let names: Vec<_> = sdxl.text_encoders.iter().map(|e| e.name).collect();
        assert_eq!(names, ["text_encoder", "text_encoder_2"]);
        assert!(sdxl.text_encoders[1].with_projection);
        let big_g = sdxl.text_encoders[1].config();
        assert_eq!((big_g.hidden_size, big_g.num_hidden_layers), (1280, 32));
        assert_eq!(big_g.hidden_act, crate::config::Activation::Gelu);
        // The UNet's context is both encoders' hidden states side by side.
        assert_eq!(sdxl.unet().cross_attention_dim, 768 + 1280);
        assert_eq!(sdxl.vae().scaling_factor, 0.13025);
    }

    #[test]
    fn sdxl_conditions_fill_the_add_embedding_input() {
        let config = BenchModel::Sdxl.configs().unet();
        let random = |_: &str, dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu);
        let (text_embeds, time_ids) = sdxl_conditions(&config, 1024, 2, &random).unwrap().unwrap();
        assert_eq!(text_embeds.dims(), [2, 1280]);
        assert_eq!(
            time_ids.to_vec2::<f32>().unwrap(),
            vec![vec![1024., 1024., 0., 0., 1024., 1024.]; 2]
        );
        let sd15 = BenchModel::Sd15.configs().unet();
        assert!(sdxl_conditions(&sd15, 512, 1, &random).unwrap().is_none());
    }
}
