//! The precision the networks run in (InvokeAI's `--precision`), and the VAE's fall-back to
//! float32 when a half-precision decode overflows.
//!
//! Half precision halves the weights' memory and runs at the GPU's tensor-core speed. The
//! sampler's latents and noise stay float32 throughout (a seed gives the same noise in every
//! precision); only the networks' inputs and outputs are converted. SD's VAEs are known to
//! overflow float16 in their decoder's last layers for some latents, giving an image of NaNs;
//! A1111 then converts the VAE to float32 and decodes again, and so does Dream.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use dream_models::config::VaeConfig;
use dream_models::layers::PaddingMode;
use dream_models::unet::{AddedConditions, UNet2DConditionModel};
use dream_models::vae::{AutoencoderKL, DiagonalGaussian};
use dream_models::weights::Component;

use crate::offload::{DeviceSlot, Staged};

/// InvokeAI's `--precision` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// float16 on a GPU, float32 on the CPU (whose float16 arithmetic is emulated and slow).
    #[default]
    Auto,
    Float32,
    Float16,
    /// PyTorch's autocast runs the matrix products in float16; Dream runs the whole network in
    /// float16, as [`Precision::Float16`].
    Autocast,
}

impl Precision {
    /// The dtype of the networks' weights and activations on `device`.
    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Precision::Auto if device.is_cpu() => DType::F32,
            Precision::Float32 => DType::F32,
            Precision::Auto | Precision::Float16 | Precision::Autocast => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Float32 => "float32",
            Precision::Float16 => "float16",
            Precision::Autocast => "autocast",
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        [
            Precision::Auto,
            Precision::Float32,
            Precision::Float16,
            Precision::Autocast,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("unknown precision {s:?} (auto, float32, float16, autocast)"))
    }
}

/// Whether a decoded image is unusable: a NaN or an infinity anywhere (either makes the sum
/// non-finite; the values of an image are far too small for a finite sum to overflow).
pub(crate) fn has_non_finite(image: &Tensor) -> Result<bool> {
    let sum = image.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(!sum.is_finite())
}

/// `half()`'s image, or `full()`'s when `half()`'s has NaNs or infinities; the flag says
/// whether `full` was needed.
pub(crate) fn first_finite(
    half: impl FnOnce() -> Result<Tensor>,
    full: impl FnOnce() -> Result<Tensor>,
) -> Result<(Tensor, bool)> {
    let image = half()?;
    if has_non_finite(&image)? {
        return Ok((full()?, true));
    }
    Ok((image, false))
}

/// The VAE in the model's dtype, and in float32 from the first half-precision decode that
/// overflowed on.
pub(crate) struct Vae {
    half: Staged<AutoencoderKL>,
    dtype: DType,
    /// `None` when the model's dtype is float32 already.
    full: Option<Staged<AutoencoderKL>>,
    upgraded: AtomicBool,
}

impl Vae {
    /// The VAE of `component` in `dtype` on the device of the slot `slot`; its float32 copy, if
    /// ever needed, is built in the same slot (it then replaces the half-precision one).
    pub(crate) fn new(
        component: &Component<VaeConfig>,
        dtype: DType,
        device: &Device,
        slot: &Arc<DeviceSlot>,
    ) -> Self {
        let staged = |name, dtype| {
            Staged::of(
                name,
                component,
                dtype,
                device,
                Arc::clone(slot),
                AutoencoderKL::new,
            )
        };
        Vae {
            half: staged("vae", dtype),
            dtype,
            full: (dtype != DType::F32).then(|| staged("vae (float32)", DType::F32)),
            upgraded: AtomicBool::new(false),
        }
    }

    /// The VAE that runs now and its dtype: float32 once a half-precision decode has
    /// overflowed.
    pub(crate) fn current(&self) -> (&Staged<AutoencoderKL>, DType) {
        match &self.full {
            Some(full) if self.upgraded.load(Ordering::Relaxed) => (full, DType::F32),
            _ => (&self.half, self.dtype),
        }
    }

    /// Decodes (unscaled) latents with `decode`, which is given the VAE and the latents in its
    /// dtype; the image is float32. A half-precision image with NaNs or infinities is decoded
    /// again in float32, and every later decode and encode runs in float32 too.
    pub(crate) fn decode_with(
        &self,
        z: &Tensor,
        decode: impl Fn(&AutoencoderKL, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let run = |(staged, dtype): (&Staged<AutoencoderKL>, DType)| -> Result<Tensor> {
            decode(&*staged.get()?, &z.to_dtype(dtype)?)?.to_dtype(DType::F32)
        };
        let current = self.current();
        let Some(full) = self.full.as_ref().filter(|_| current.1 != DType::F32) else {
            return run(current);
        };
        let (image, fell_back) = first_finite(|| run(current), || run((full, DType::F32)))?;
        if fell_back && !self.upgraded.swap(true, Ordering::Relaxed) {
            // A1111's note, once per model: from here on the VAE runs in float32.
            eprintln!(
                "note: the VAE produced NaN or infinite values in float16; it now runs in \
                 float32 (as A1111's --no-half-vae) and the image was decoded again"
            );
            self.half.release();
        }
        Ok(image)
    }

    /// The VAE posterior of images in [-1, 1], in float32, whose moments `encode` computes
    /// (given the VAE and the images in its dtype).
    pub(crate) fn encode_with(
        &self,
        pixels: &Tensor,
        encode: impl Fn(&AutoencoderKL, &Tensor) -> Result<Tensor>,
    ) -> Result<DiagonalGaussian> {
        let (staged, dtype) = self.current();
        let vae = staged.get()?;
        let moments = encode(&vae, &pixels.to_dtype(dtype)?)?.to_dtype(DType::F32)?;
        vae.posterior(&moments)
    }

    /// The VAE in the model's dtype, then its float32 copy if it has one.
    pub(crate) fn networks(&self) -> impl Iterator<Item = &Staged<AutoencoderKL>> {
        std::iter::once(&self.half).chain(&self.full)
    }

    pub(crate) fn set_padding_mode(&self, mode: PaddingMode) {
        self.half.set_padding_mode(mode);
        if let Some(full) = &self.full {
            full.set_padding_mode(mode);
        }
    }
}

/// The UNet takes and gives float32 tensors whatever its dtype: the sampler's latents stay
/// float32, and so does what it does with the UNet's prediction.
impl Staged<UNet2DConditionModel> {
    pub(crate) fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor> {
        self.forward_with_added(sample, timestep, context, None)
    }

    /// With SDXL's pooled text embedding and size conditioning.
    pub(crate) fn forward_with_added(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let dtype = self.dtype();
        let added = match added {
            Some(a) => Some((a.text_embeds.to_dtype(dtype)?, a.time_ids.to_dtype(dtype)?)),
            None => None,
        };
        let added = added
            .as_ref()
            .map(|(text_embeds, time_ids)| AddedConditions {
                text_embeds,
                time_ids,
            });
        let (sample, context) = (sample.to_dtype(dtype)?, context.to_dtype(dtype)?);
        self.get()?
            .forward_with_added(&sample, timestep, &context, added.as_ref())?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn auto_is_half_precision_on_gpus_only() {
        let cpu = Device::Cpu;
        assert_eq!(Precision::Auto.dtype(&cpu), DType::F32);
        assert_eq!(Precision::Float32.dtype(&cpu), DType::F32);
        assert_eq!(Precision::Float16.dtype(&cpu), DType::F16);
        assert_eq!(Precision::Autocast.dtype(&cpu), DType::F16);
    }

    #[test]
    fn precisions_parse_by_invokeai_name() {
        for name in ["auto", "float32", "float16", "autocast"] {
            assert_eq!(name.parse::<Precision>().unwrap().name(), name);
        }
        let error = "half".parse::<Precision>().unwrap_err();
        assert!(error.contains("\"half\""), "{error}");
    }

    #[test]
    fn non_finite_values_anywhere_are_found() -> Result<()> {
        let cpu = Device::Cpu;
        let finite = Tensor::new(&[[0.5f32, -1.0], [1.0, 0.0]], &cpu)?;
        assert!(!has_non_finite(&finite)?);
        assert!(!has_non_finite(&finite.to_dtype(DType::F16)?)?);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let image = Tensor::new(&[[0.5f32, -1.0], [bad, 0.0]], &cpu)?;
            assert!(has_non_finite(&image)?, "{bad}");
            assert!(has_non_finite(&image.to_dtype(DType::F16)?)?, "{bad}");
        }
        // float16 overflows to infinity past 65504.
        let overflow = Tensor::new(&[70000f32], &cpu)?.to_dtype(DType::F16)?;
        assert!(has_non_finite(&overflow)?);
        Ok(())
    }

    #[test]
    fn a_nan_image_is_decoded_again_in_full_precision() -> Result<()> {
        let cpu = Device::Cpu;
        let full_runs = Cell::new(0);
        let full = || {
            full_runs.set(full_runs.get() + 1);
            Tensor::new(&[1f32, 2.0], &cpu)
        };
        let (image, fell_back) = first_finite(|| Tensor::new(&[f32::NAN, 2.0], &cpu), full)?;
        assert!(fell_back);
        assert_eq!(image.to_vec1::<f32>()?, [1.0, 2.0]);
        assert_eq!(full_runs.get(), 1);

        let (image, fell_back) = first_finite(|| Tensor::new(&[3f32, 4.0], &cpu), full)?;
        assert!(!fell_back);
        assert_eq!(image.to_vec1::<f32>()?, [3.0, 4.0]);
        assert_eq!(full_runs.get(), 1, "a finite image is not decoded again");
        Ok(())
    }
}
