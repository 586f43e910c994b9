//! TAESD's decoder against diffusers' AutoencoderTiny with random weights (fixtures/taesd, made
//! by tools/parity/taesd_fixtures.py).

use candle_core::{DType, Device};
use dream_models::taesd::{self, TinyDecoder};
use dream_test_support::{fixture, load_fixture, max_abs_diff};

/// Decodes the reference latents with the tiny config and the weights at `weights`.
fn max_diff_to_diffusers(weights: &str) -> f32 {
    let reference = load_fixture("taesd/decode.safetensors");
    let config = taesd::open(&fixture("taesd/tiny")).unwrap().config;
    let weights = taesd::open(&fixture(weights)).unwrap().weights;
    let decoder = TinyDecoder::new(weights.var_builder(DType::F32, &Device::Cpu), &config).unwrap();
    let image = decoder.decode(&reference["latents"]).unwrap();
    assert_eq!(image.dims(), reference["image"].dims());
    max_abs_diff(&image, &reference["image"])
}

#[test]
fn decoder_from_a_diffusers_folder_equals_diffusers() {
    let diff = max_diff_to_diffusers("taesd/tiny");
    assert!(diff < 1e-5, "max abs diff {diff}");
}

#[test]
fn decoder_from_a_taesd_decoder_file_equals_diffusers() {
    // madebyollin's layout; the tiny network's block counts come from the folder's config.
    let diff = max_diff_to_diffusers("taesd/tiny_taesd_decoder.safetensors");
    assert!(diff < 1e-5, "max abs diff {diff}");
}

#[test]
fn a_config_of_unequal_widths_is_refused() {
    let config = taesd::TinyDecoderConfig {
        decoder_block_out_channels: vec![16, 32, 16, 16],
        ..Default::default()
    };
    let component = taesd::open(&fixture("taesd/tiny")).unwrap();
    let error = TinyDecoder::new(
        component.weights.var_builder(DType::F32, &Device::Cpu),
        &config,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("differ"), "{error}");
}
