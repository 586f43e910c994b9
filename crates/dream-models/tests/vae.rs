//! The VAE against diffusers' `AutoencoderKL` on the tiny fixture model: the references in
//! `fixtures/ref` were computed by diffusers (PyTorch, CPU, f32) from the same weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use dream_models::config::VaeConfig;
use dream_models::layers::PaddingMode;
use dream_models::vae::AutoencoderKL;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
const TOLERANCE: f32 = 1e-4;

fn tiny_vae() -> Result<AutoencoderKL> {
    let config_text = std::fs::read_to_string(format!("{FIXTURES}/tiny/vae/config.json"))?;
    let config: VaeConfig =
        serde_json::from_str(&config_text).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let weights = format!("{FIXTURES}/tiny/vae/diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture file is not modified while the test maps it.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
    AutoencoderKL::new(vb, &config)
}

fn reference(name: &str) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(format!("{FIXTURES}/ref/{name}"), &Device::Cpu)
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("reference tensor {name} is missing"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

/// Decodes `vae_decode.in` of each reference run and compares with diffusers' `image_raw`,
/// including the non-square 64×48 run.
#[test]
fn decode_matches_diffusers() -> Result<()> {
    let vae = tiny_vae()?;
    for file in [
        "txt2img_euler.safetensors",
        "txt2img_euler_64x48.safetensors",
        "img2img_ddim.safetensors",
    ] {
        let refs = reference(file)?;
        let image = vae.decode(get(&refs, "vae_decode.in"))?;
        let expected = get(&refs, "image_raw");
        let diff = max_abs_diff(&image, expected)?;
        let range = expected.abs()?.max_all()?.to_scalar::<f32>()?;
        println!("{file}: decode max abs diff {diff:e} (image max abs {range})");
        assert!(diff <= TOLERANCE, "{file}: decode max abs diff {diff}");
    }
    Ok(())
}

#[test]
fn encode_matches_diffusers() -> Result<()> {
    let vae = tiny_vae()?;
    let refs = reference("img2img_ddim.safetensors")?;
    let posterior = vae.encode(get(&refs, "vae_encode.0.in"))?;
    let mean_diff = max_abs_diff(&posterior.mean, get(&refs, "vae_encode.0.mean"))?;
    let std_diff = max_abs_diff(&posterior.std, get(&refs, "vae_encode.0.std"))?;
    println!("encode max abs diff: mean {mean_diff:e}, std {std_diff:e}");
    assert!(mean_diff <= TOLERANCE, "mean max abs diff {mean_diff}");
    assert!(std_diff <= TOLERANCE, "std max abs diff {std_diff}");

    // diffusers' img2img draws the posterior sample with noise.000 and scales it into
    // latents_init = add_noise(sample·0.18215, ...); check the sample itself is mean + std·noise.
    let noise = get(&refs, "noise.000");
    let sample = posterior.sample(noise)?;
    let expected = (get(&refs, "vae_encode.0.mean") + (get(&refs, "vae_encode.0.std") * noise)?)?;
    let sample_diff = max_abs_diff(&sample, &expected)?;
    assert!(
        sample_diff <= TOLERANCE,
        "sample max abs diff {sample_diff}"
    );
    Ok(())
}

/// With circular padding on both axes every layer of the decoder commutes with rolling the
/// image (nearest upsampling doubles a latent roll of one pixel into an image roll of two), so
/// rolling the latent by one column rolls the decoded image by eight: the tile's left and right
/// edges continue each other. With zero padding they do not.
#[test]
fn circular_padding_makes_the_decoder_roll_equivariant() -> Result<()> {
    let vae = tiny_vae()?;
    let refs = reference("txt2img_euler.safetensors")?;
    let z = get(&refs, "vae_decode.in");
    let roll = |t: &Tensor, by: usize| -> Result<Tensor> {
        let w = t.dim(3)?;
        Tensor::cat(&[&t.narrow(3, w - by, by)?, &t.narrow(3, 0, w - by)?], 3)
    };
    let roll_gap = |vae: &AutoencoderKL| -> Result<f32> {
        let rolled_then_decoded = vae.decode(&roll(z, 1)?)?;
        let decoded_then_rolled = roll(&vae.decode(z)?, 8)?;
        max_abs_diff(&rolled_then_decoded, &decoded_then_rolled)
    };
    let zeros_gap = roll_gap(&vae)?;
    vae.set_padding_mode(PaddingMode::Circular { x: true, y: true });
    let circular_gap = roll_gap(&vae)?;
    println!("roll gap: zeros {zeros_gap}, circular {circular_gap:e}");
    assert!(circular_gap < 1e-4, "circular roll gap {circular_gap}");
    assert!(
        zeros_gap > 1e-2,
        "zero padding should not be roll-equivariant: {zeros_gap}"
    );
    Ok(())
}

#[test]
fn wrong_channel_count_is_a_clear_error() -> Result<()> {
    let vae = tiny_vae()?;
    let latents_with_three_channels = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu)?;
    let err = vae
        .decode(&latents_with_three_channels)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected a [batch, 4, height, width]"),
        "{err}"
    );
    Ok(())
}
