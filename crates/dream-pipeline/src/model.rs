//! A loaded Stable Diffusion model: tokenizer, text encoder (SDXL: two of each), UNet, VAE and
//! noise schedule.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dream_core::schedule::{PredictionType, SchedulerConfig};
use dream_core::tokenizer::ClipTokenizer;
use dream_models::clip::{ClipTextModelWithProjection, ClipTextTransformer};
use dream_models::config::{Activation, VaeConfig};
use dream_models::detect::{Prediction, SdVersion};
use dream_models::taesd::TinyDecoder;
use dream_models::unet::UNet2DConditionModel;
use dream_models::vae::DiagonalGaussian;
use dream_models::weights::{self, Component};

use crate::conditioning::TextualInversions;
use crate::offload::{DeviceSlot, Staged};
use crate::precision::{Precision, Vae};
use crate::sdxl::{MicroConditioning, SecondTextEncoder};
use crate::tiling::VaeTiling;
use crate::DreamError;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A VAE file or diffusers `vae/` folder that replaces the model's own VAE.
    pub vae: Option<PathBuf>,
    /// For a single-file checkpoint: a diffusers model folder whose `*/config.json` files
    /// describe it, for details that tensor shapes cannot tell (as diffusers'
    /// `from_single_file(config=...)`).
    pub config_dir: Option<PathBuf>,
    /// For a single-file checkpoint: its latent-diffusion `.yaml` config (InvokeAI 2.x's
    /// `models.yaml` `config:`), read for whether it predicts v or ε, in place of a `NAME.yaml`
    /// beside the file.
    pub ldm_config: Option<PathBuf>,
    pub device: Device,
    /// The networks' dtype on `device` (`--precision`): float16 on a GPU by default.
    pub precision: Precision,
    /// InvokeAI's `--free_gpu_mem`: the device holds one network at a time, each built there
    /// from the weights in host memory for its stage of a generation.
    pub free_gpu_mem: bool,
    /// When the VAE decodes in tiles (`None`: never). The default tiles only images over
    /// 1024 pixels on a side; [`VaeTiling::always`] is InvokeAI's/diffusers' `--vae_tiling`.
    pub vae_tiling: Option<VaeTiling>,
    /// TAESD weights (`taesd_decoder.safetensors` or a diffusers `AutoencoderTiny` folder) to
    /// decode with instead of the VAE: many times faster, lower quality (`--fast_decode`).
    pub taesd: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            vae: None,
            config_dir: None,
            ldm_config: None,
            device: default_device(),
            precision: Precision::default(),
            free_gpu_mem: false,
            vae_tiling: Some(VaeTiling::default()),
            taesd: None,
        }
    }
}

/// The CPU, or the first GPU when Dream was built with a GPU backend and one is present.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = named_device("cuda") {
        return device;
    }
    #[cfg(feature = "metal")]
    if let Ok(device) = Device::new_metal(0) {
        return device;
    }
    Device::Cpu
}

/// The device a `--device` switch names: `cpu`, or `cuda` for the first CUDA GPU (an error
/// saying how to build Dream for it when it was built without CUDA).
pub fn named_device(name: &str) -> Result<Device, DreamError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Device::new_cuda(0)
            .map_err(|e| DreamError::InvalidRequest(format!("no usable CUDA GPU: {e}"))),
        "cuda" => Err(DreamError::InvalidRequest(
            "this build of Dream has no CUDA support (build it with `cargo build --release \
             -p dream-cli --features cuda`)"
                .into(),
        )),
        other => Err(DreamError::InvalidRequest(format!(
            "unknown device {other:?} (cpu, cuda)"
        ))),
    }
}

pub struct StableDiffusion {
    /// The first text encoder's tokenizer (the SDXL refiner, without one: unused).
    pub(crate) tokenizer: ClipTokenizer,
    /// The first text encoder; `None` for the SDXL refiner, which conditions on its second
    /// alone.
    pub(crate) text_encoder: Option<Staged<ClipTextTransformer>>,
    pub(crate) unet: Staged<UNet2DConditionModel>,
    pub(crate) vae: Vae,
    /// The networks' dtype; latents and noise are always float32.
    pub(crate) dtype: DType,
    pub(crate) vae_config: VaeConfig,
    pub(crate) unet_in_channels: usize,
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) device: Device,
    vae_tiling: Option<VaeTiling>,
    taesd: Option<TinyDecoder>,
    name: String,
    pub(crate) embeddings: TextualInversions,
    /// SDXL's second tokenizer and text encoder.
    pub(crate) text_encoder_2: Option<SecondTextEncoder>,
    /// The side of the square images the model was trained on.
    native_size: usize,
}

impl StableDiffusion {
    /// Loads a diffusers folder or a single `.safetensors` / `.ckpt` checkpoint, on the
    /// default device.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DreamError> {
        Self::load_with(path, &LoadOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self, DreamError> {
        let path = path.as_ref();
        // The folder whose configs and tokenizers describe the model.
        let config_dir = match path.is_dir() {
            true => Some(path),
            false => options.config_dir.as_deref(),
        };
        let (components, tokenizer, scheduler) = if path.is_dir() {
            let components = weights::load_diffusers_folder(path)?;
            let open_clip = is_open_clip(&components);
            let tokenizer = folder_tokenizer(path, open_clip)?;
            (components, tokenizer, folder_scheduler(path)?)
        } else {
            let ldm_config = options.ldm_config.as_deref();
            let components = weights::load_single_file_with(path, config_dir, ldm_config)?;
            let open_clip = is_open_clip(&components);
            let tokenizer = match config_dir {
                Some(dir) => folder_tokenizer(dir, open_clip)?,
                None => bundled_tokenizer(open_clip)?,
            };
            let mut scheduler =
                config_dir.map_or_else(|| Ok(SchedulerConfig::sd1()), folder_scheduler)?;
            // Without a scheduler config, the file's sibling config or SD 2.x's rule decided
            // (weights::load_single_file); SD's noise schedule is the same either way.
            scheduler.prediction_type = match components.kind.prediction {
                Prediction::Epsilon => PredictionType::Epsilon,
                Prediction::VPrediction => PredictionType::VPrediction,
            };
            (components, tokenizer, scheduler)
        };
        let vae = match &options.vae {
            // A diffusers vae/ folder brings its own config.
            Some(vae_path) if vae_path.is_dir() => weights::load_vae(vae_path)?,
            // A bare weights file replaces the weights of the model's own VAE, as A1111 loads
            // one: the model's config stays, its scaling factor too (SDXL's 0.13025 under an
            // SDXL model).
            Some(vae_path) => Component {
                config: components.vae.config.clone(),
                weights: weights::load_vae_file(vae_path)?.weights,
            },
            None => components.vae,
        };
        let device = &options.device;
        let dtype = options.precision.dtype(device);
        let build_error = |source: candle_core::Error| DreamError::BadModel {
            path: path.to_path_buf(),
            source,
        };
        let taesd = match &options.taesd {
            Some(taesd_path) => {
                let taesd = dream_models::taesd::open(taesd_path)?;
                let vb = taesd.weights.var_builder(dtype, device);
                let decoder =
                    TinyDecoder::new(vb, &taesd.config).map_err(|source| DreamError::BadModel {
                        path: taesd_path.clone(),
                        source,
                    })?;
                Some(decoder)
            }
            None => None,
        };
        // With --free_gpu_mem the networks share one place on the device; otherwise each has
        // its own and stays there.
        let shared = Arc::new(DeviceSlot::default());
        let slot = || match options.free_gpu_mem {
            true => Arc::clone(&shared),
            false => Arc::default(),
        };
        let text_encoder = components.text_encoder.as_ref().map(|component| {
            Staged::of(
                "text encoder",
                component,
                dtype,
                device,
                slot(),
                ClipTextTransformer::new,
            )
        });
        let unet = Staged::of(
            "unet",
            &components.unet,
            dtype,
            device,
            slot(),
            UNet2DConditionModel::new,
        );
        let vae_networks = Vae::new(&vae, dtype, device, &slot());
        // Weights that do not fit their network fail here, not at the first image.
        if let Some(text_encoder) = &text_encoder {
            text_encoder.get().map_err(build_error)?;
        }
        let text_encoder_2 = match &components.text_encoder_2 {
            Some(component) => {
                let text_encoder = Staged::of(
                    "text encoder 2",
                    component,
                    dtype,
                    device,
                    slot(),
                    ClipTextModelWithProjection::new,
                );
                text_encoder.get().map_err(build_error)?;
                let micro_conditioning =
                    MicroConditioning::of(&components.unet.config, component.config.projection_dim)
                        .map_err(|message| DreamError::InvalidModelFile {
                            path: path.to_path_buf(),
                            message,
                        })?;
                Some(SecondTextEncoder {
                    tokenizer: second_tokenizer(config_dir)?,
                    text_encoder,
                    embeddings: TextualInversions::default(),
                    zeros_for_empty_negative: zeros_for_empty_prompt(config_dir)?,
                    micro_conditioning,
                })
            }
            None if text_encoder.is_none() => {
                return Err(DreamError::InvalidModelFile {
                    path: path.to_path_buf(),
                    message: "it has no text encoder (text_encoder/ or text_encoder_2/)".into(),
                })
            }
            None => None,
        };
        unet.get().map_err(build_error)?;
        vae_networks.current().0.get().map_err(build_error)?;
        let unet_config = &components.unet.config;
        Ok(StableDiffusion {
            tokenizer,
            text_encoder,
            unet,
            vae: vae_networks,
            dtype,
            unet_in_channels: unet_config.in_channels,
            vae_config: vae.config,
            scheduler,
            device: device.clone(),
            vae_tiling: options.vae_tiling,
            taesd,
            embeddings: TextualInversions::default(),
            text_encoder_2,
            native_size: trained_size(config_dir, components.kind.version)?,
            name: model_name(path),
        })
    }

    /// The side of the square images the model was trained on (SD 1.x 512, SDXL 1024), which
    /// the CLI renders by default as InvokeAI takes a model's width and height.
    pub fn native_size(&self) -> usize {
        self.native_size
    }

    /// The model's name as image metadata records it: its file or folder name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn latent_channels(&self) -> usize {
        self.vae_config.latent_channels
    }

    /// The networks on the device now: all of them once loaded, or with
    /// [`LoadOptions::free_gpu_mem`] the one whose stage ran last. SDXL's second text encoder
    /// is `"text encoder 2"`; the VAE's float32 copy, made when a half-precision decode
    /// overflowed, is `"vae (float32)"`.
    pub fn networks_on_device(&self) -> Vec<&'static str> {
        let second = self
            .text_encoder_2
            .as_ref()
            .map(|second| &second.text_encoder);
        let first = self.text_encoder.as_ref();
        let text_encoders = first
            .map(|t| (t.name(), t.is_loaded()))
            .into_iter()
            .chain(second.map(|t| (t.name(), t.is_loaded())));
        let vae = self.vae.networks().map(|v| (v.name(), v.is_loaded()));
        text_encoders
            .chain([(self.unet.name(), self.unet.is_loaded())])
            .chain(vae)
            .filter_map(|(name, loaded)| loaded.then_some(name))
            .collect()
    }

    /// The dtype the networks run in (`--precision` on this device).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn set_vae_tiling(&mut self, tiling: Option<VaeTiling>) {
        self.vae_tiling = tiling;
    }

    /// The VAE's image for latents, unclamped, `[B, 3, H, W]` in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, DreamError> {
        if let Some(taesd) = &self.taesd {
            let z = (latents / taesd.config().scaling_factor)?.to_dtype(self.dtype)?;
            return Ok(taesd.decode(&z)?.to_dtype(DType::F32)?);
        }
        let z = (latents / self.vae_config.scaling_factor)?;
        let (_, _, height, width) = z.dims4()?;
        let factor = self.vae_factor();
        Ok(self.vae.decode_with(&z, |vae, z| match self.vae_tiling {
            Some(tiling) if tiling.applies(height * factor, width * factor) => {
                tiling.decode(z, factor, |tile| vae.decode(tile))
            }
            _ => vae.decode(z),
        })?)
    }

    /// The VAE's posterior over (unscaled) latents for images `[B, 3, H, W]` in [-1, 1], tiled
    /// as [`Self::decode`] is.
    pub fn encode(&self, pixels: &Tensor) -> Result<DiagonalGaussian, DreamError> {
        let (_, _, height, width) = pixels.dims4()?;
        let factor = self.vae_factor();
        Ok(self
            .vae
            .encode_with(pixels, |vae, pixels| match self.vae_tiling {
                Some(tiling) if tiling.applies(height, width) => {
                    tiling.encode(pixels, factor, |tile| vae.encode_moments(tile))
                }
                _ => vae.encode_moments(pixels),
            })?)
    }

    /// Image pixels per latent pixel: each VAE level after the first halves the resolution.
    pub(crate) fn vae_factor(&self) -> usize {
        1 << self.vae_config.block_out_channels.len().saturating_sub(1)
    }
}

fn read_text(path: &Path) -> Result<String, DreamError> {
    std::fs::read_to_string(path).map_err(|source| DreamError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether the first text encoder is OpenCLIP's, SD 2.x's: the only one with the exact GELU.
fn is_open_clip(components: &weights::SdComponents) -> bool {
    let first = components.text_encoder.as_ref();
    first.is_some_and(|encoder| encoder.config.hidden_act == Activation::Gelu)
}

/// The folder's own `tokenizer/` vocabulary, or [`bundled_tokenizer`] when it has none.
fn folder_tokenizer(dir: &Path, open_clip: bool) -> Result<ClipTokenizer, DreamError> {
    match tokenizer_in(&dir.join("tokenizer"))? {
        Some(tokenizer) => Ok(tokenizer),
        None => bundled_tokenizer(open_clip),
    }
}

/// OpenAI's CLIP vocabulary (OpenCLIP's is the same), padding with end-of-text as SD 1.x's
/// tokenizer does, or for an OpenCLIP encoder with `!` (id 0) as SD 2.x's and SDXL's second
/// tokenizers, A1111 and compel do.
fn bundled_tokenizer(open_clip: bool) -> Result<ClipTokenizer, DreamError> {
    if !open_clip {
        return Ok(ClipTokenizer::bundled());
    }
    ClipTokenizer::bundled()
        .with_pad_token("!")
        .map_err(|e| DreamError::InvalidRequest(e.to_string()))
}

/// SDXL's second tokenizer (OpenCLIP's): the config folder's `tokenizer_2/`, else
/// [`bundled_tokenizer`].
fn second_tokenizer(config_dir: Option<&Path>) -> Result<ClipTokenizer, DreamError> {
    if let Some(tokenizer) = config_dir.map(|dir| tokenizer_in(&dir.join("tokenizer_2"))) {
        if let Some(tokenizer) = tokenizer? {
            return Ok(tokenizer);
        }
    }
    bundled_tokenizer(true)
}

/// The tokenizer of a transformers tokenizer folder (`vocab.json`, `merges.txt`), if it has one.
fn tokenizer_in(dir: &Path) -> Result<Option<ClipTokenizer>, DreamError> {
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if !vocab.exists() || !merges.exists() {
        return Ok(None);
    }
    let tokenizer = ClipTokenizer::from_vocab_and_merges(&read_text(&vocab)?, &read_text(&merges)?)
        .map_err(|e| DreamError::InvalidModelFile {
            path: vocab.clone(),
            message: e.to_string(),
        })?;
    match folder_pad_token(dir)? {
        Some(pad) => {
            tokenizer
                .with_pad_token(&pad)
                .map(Some)
                .map_err(|e| DreamError::InvalidModelFile {
                    path: vocab,
                    message: e.to_string(),
                })
        }
        None => Ok(Some(tokenizer)),
    }
}

/// The `pad_token` of a tokenizer folder's `special_tokens_map.json`, else of its
/// `tokenizer_config.json` (a string, or an object with its `content`): `!` for SD 2.x and
/// SDXL's second tokenizer.
fn folder_pad_token(dir: &Path) -> Result<Option<String>, DreamError> {
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let config: serde_json::Value =
            serde_json::from_str(&read_text(&path)?).map_err(|e| DreamError::InvalidModelFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let pad = &config["pad_token"];
        if let Some(token) = pad.as_str().or_else(|| pad["content"].as_str()) {
            return Ok(Some(token.to_string()));
        }
    }
    Ok(None)
}

/// A JSON file of a config folder, if it has it.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>, DreamError> {
    if !path.exists() {
        return Ok(None);
    }
    serde_json::from_str(&read_text(path)?)
        .map(Some)
        .map_err(|e| DreamError::InvalidModelFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// diffusers' SDXL `force_zeros_for_empty_prompt` from the config folder's `model_index.json`;
/// true (SDXL base's value, and A1111's rule) when nothing says otherwise.
fn zeros_for_empty_prompt(config_dir: Option<&Path>) -> Result<bool, DreamError> {
    let Some(dir) = config_dir else {
        return Ok(true);
    };
    Ok(read_json(&dir.join("model_index.json"))?
        .and_then(|index| index["force_zeros_for_empty_prompt"].as_bool())
        .unwrap_or(true))
}

/// The side of the images a model was trained on: its config folder's UNet `sample_size`
/// latents times the VAE's downscaling, else SDXL's 1024 or SD's 512.
fn trained_size(config_dir: Option<&Path>, version: SdVersion) -> Result<usize, DreamError> {
    let from_configs = match config_dir {
        Some(dir) => {
            let unet = read_json(&dir.join("unet/config.json"))?;
            let vae = read_json(&dir.join("vae/config.json"))?;
            let sample_size = unet.as_ref().and_then(|u| u["sample_size"].as_u64());
            let levels = vae
                .as_ref()
                .and_then(|v| v["block_out_channels"].as_array().map(Vec::len));
            sample_size
                .zip(levels)
                .map(|(size, levels)| (size as usize) << levels.saturating_sub(1))
        }
        None => None,
    };
    Ok(from_configs.unwrap_or(match version {
        SdVersion::Xl => 1024,
        SdVersion::V1 | SdVersion::V2 => 512,
    }))
}

/// [`StableDiffusion::native_size`] of the model at `path` without loading it (a single file
/// without a config folder is opened to tell SDXL from SD): the CLI's default size, known
/// before any slow load. `None` when the model cannot be read; loading it says why.
pub fn native_size(path: &Path, options: &LoadOptions) -> Option<usize> {
    if path.is_dir() {
        let version = weights::load_diffusers_folder(path).ok()?.kind.version;
        return trained_size(Some(path), version).ok();
    }
    let config_dir = options.config_dir.as_deref();
    let version = weights::load_single_file(path, config_dir)
        .ok()?
        .kind
        .version;
    trained_size(config_dir, version).ok()
}

/// The folder's `scheduler/scheduler_config.json`, or SD 1.x's schedule when it has none.
fn folder_scheduler(dir: &Path) -> Result<SchedulerConfig, DreamError> {
    let path = dir.join("scheduler/scheduler_config.json");
    if !path.exists() {
        return Ok(SchedulerConfig::sd1());
    }
    SchedulerConfig::from_json_str(&read_text(&path)?).map_err(|e| DreamError::InvalidModelFile {
        path,
        message: e.to_string(),
    })
}

fn model_name(path: &Path) -> String {
    let file_name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    file_name.map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
