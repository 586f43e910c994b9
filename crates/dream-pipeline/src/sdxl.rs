//! What SDXL adds to the pipeline (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models
//! for High-Resolution Image Synthesis"): a second text encoder whose pooled, projected output
//! conditions the UNet besides the two encoders' token sequences (§2.1), and the image-size
//! micro-conditioning numbers (§2.2).

use candle_core::{Device, Tensor};
use dream_core::tokenizer::ClipTokenizer;
use dream_models::clip::ClipTextModelWithProjection;

use crate::conditioning::TextualInversions;
use crate::offload::Staged;

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
}

/// The micro-conditioning numbers of `batch` images of `height` × `width` pixels, `[batch, 6]`:
/// the original size, the crop's top-left corner and the target size, as the UNet was trained
/// on them. Like diffusers' and A1111's defaults, the original and target sizes are the image's
/// own and the crop is (0, 0): "an uncropped image of this size".
pub(crate) fn size_conditioning(
    height: usize,
    width: usize,
    batch: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (h, w) = (height as f32, width as f32);
    Tensor::new(&[[h, w, 0.0, 0.0, h, w]], device)?.repeat((batch, 1))
}
