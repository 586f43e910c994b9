//! The UNet against diffusers' `UNet2DConditionModel`: the first UNet call of reference runs
//! recorded in `fixtures/ref/` (see fixtures/README.md), on the tiny model of `fixtures/tiny/`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use dream_models::config::UNetConfig;
use dream_models::layers::PaddingMode;
use dream_models::unet::UNet2DConditionModel;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
const TOLERANCE: f32 = 1e-4;

fn load_unet(dir: &str) -> Result<UNet2DConditionModel> {
    let config = std::fs::read_to_string(format!("{dir}/config.json"))?;
    let config: UNetConfig = serde_json::from_str(&config).map_err(candle_core::Error::wrap)?;
    let weights = format!("{dir}/diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture is not modified while the test maps it.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
    UNet2DConditionModel::new(vb, &config)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Runs the UNet on the recorded input of `unet.000` and returns the max abs difference from
/// the recorded output.
fn first_call_error(unet: &UNet2DConditionModel, reference: &str) -> Result<f32> {
    let tensors = candle_core::safetensors::load(
        format!("{FIXTURES}/ref/{reference}.safetensors"),
        &Device::Cpu,
    )?;
    let get = |name: &str| {
        tensors
            .get(name)
            .unwrap_or_else(|| panic!("{reference} has no tensor {name}"))
    };
    let timestep = get("unet.000.t").to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let out = unet.forward(
        get("unet.000.in"),
        timestep,
        get("unet.encoder_hidden_states"),
    )?;
    let err = max_abs_diff(&out, get("unet.000.out"))?;
    println!("{reference}: t={timestep} max abs error {err:e}");
    Ok(err)
}

#[test]
fn tiny_unet_matches_diffusers() -> Result<()> {
    let unet = load_unet(&format!("{FIXTURES}/tiny/unet"))?;
    for reference in ["txt2img_euler", "txt2img_ddim", "txt2img_euler_64x48"] {
        let err = first_call_error(&unet, reference)?;
        assert!(err <= TOLERANCE, "{reference}: max abs error {err}");
    }
    Ok(())
}

/// A UNet with SD 2.x's linear projections and per-block head counts, deeper transformers, the
/// other timestep-embedding variant, a fractional timestep and a latent size that is not a
/// multiple of the downsampling (`tools/parity/make_unet_sd2_style.py` says what and why).
#[test]
fn sd2_style_unet_matches_diffusers() -> Result<()> {
    let dir = format!("{FIXTURES}/unet_sd2_style");
    let unet = load_unet(&dir)?;
    let io = candle_core::safetensors::load(format!("{dir}/io.safetensors"), &Device::Cpu)?;
    let get = |name: &str| {
        io.get(name)
            .unwrap_or_else(|| panic!("io has no tensor {name}"))
    };
    let timestep = get("timestep").to_scalar::<f64>()?;
    let out = unet.forward(get("sample"), timestep, get("encoder_hidden_states"))?;
    let err = max_abs_diff(&out, get("out"))?;
    println!("unet_sd2_style: t={timestep} max abs error {err:e}");
    assert!(err <= TOLERANCE, "max abs error {err}");
    Ok(())
}

/// Configs of later UNets are refused by name before any weight is looked up.
#[test]
fn unsupported_configs_are_refused() -> Result<()> {
    let config = std::fs::read_to_string(format!("{FIXTURES}/tiny/unet/config.json"))?;
    let tiny: UNetConfig = serde_json::from_str(&config).map_err(candle_core::Error::wrap)?;
    let image_embeds = UNetConfig {
        addition_embed_type: Some("image".into()),
        ..tiny.clone()
    };
    let mut up_block = tiny.clone();
    up_block.up_block_types[0] = "AttnUpBlock2D".into();
    let no_mid = UNetConfig {
        mid_block_type: None,
        ..tiny.clone()
    };
    for (config, expected) in [
        (image_embeds, "addition_embed_type"),
        (up_block, "AttnUpBlock2D"),
        (no_mid, "mid block"),
    ] {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = UNet2DConditionModel::new(vb, &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected) && err.contains("not supported yet"),
            "{err}"
        );
    }
    Ok(())
}

/// With every convolution wrapping around, the UNet has no border: rolling the latent by a
/// multiple of its downsampling factor (2 for the tiny model) rolls the output the same way
/// (GroupNorm and attention see all positions alike). A convolution left out of
/// `set_padding_mode` would zero-pad its border and break this; with zero padding the
/// difference is large, which the second check confirms.
#[test]
fn circular_padding_makes_the_unet_roll_equivariant() -> Result<()> {
    let unet = load_unet(&format!("{FIXTURES}/tiny/unet"))?;
    let tensors = candle_core::safetensors::load(
        format!("{FIXTURES}/ref/txt2img_euler.safetensors"),
        &Device::Cpu,
    )?;
    let (sample, context) = (
        &tensors["unet.000.in"],
        &tensors["unet.encoder_hidden_states"],
    );
    let roll = |t: &Tensor| -> Result<Tensor> { t.roll(2, 3)?.roll(-2, 2) };
    let roll_error = |unet: &UNet2DConditionModel| -> Result<f32> {
        let rolled_first = unet.forward(&roll(sample)?, 500.0, context)?;
        let rolled_after = roll(&unet.forward(sample, 500.0, context)?)?;
        max_abs_diff(&rolled_first, &rolled_after)
    };
    let zeros = roll_error(&unet)?;
    unet.set_padding_mode(PaddingMode::Circular { x: true, y: true });
    let circular = roll_error(&unet)?;
    println!("roll error: circular {circular:e}, zero padding {zeros:e}");
    assert!(circular <= TOLERANCE, "circular padding: {circular}");
    assert!(zeros > 0.01, "zero padding: {zeros}");
    Ok(())
}
