//! The decoder choices against diffusers: VAE tiling as `enable_tiling()` does it on the tiny
//! VAE with 32-pixel tiles (fixtures/vae_tiling, made by tools/parity/vae_tiling_fixtures.py),
//! and TAESD (`--fast_decode`) as `AutoencoderTiny` (fixtures/taesd, taesd_fixtures.py).

use dream_pipeline::{LoadOptions, StableDiffusion, VaeTiling};
use dream_test_support::{fixture, load_fixture, max_abs_diff};

const TILES_32: VaeTiling = VaeTiling {
    tile_size: 32,
    overlap: 0.25,
    above: 0,
};

fn tiny_model(vae_tiling: Option<VaeTiling>) -> StableDiffusion {
    let options = LoadOptions {
        vae_tiling,
        ..LoadOptions::default()
    };
    StableDiffusion::load_with(fixture("tiny"), &options).unwrap()
}

#[test]
fn fast_decode_decodes_with_taesd() {
    let reference = load_fixture("taesd/decode.safetensors");
    let options = LoadOptions {
        taesd: Some(fixture("taesd/tiny")),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load_with(fixture("tiny"), &options).unwrap();
    // TAESD decodes the UNet's latents as they are (its scaling factor is 1).
    let image = model.decode(&reference["latents"]).unwrap();
    let diff = max_abs_diff(&image, &reference["image"]);
    assert!(
        diff < 1e-5,
        "TAESD decode differs from diffusers' by {diff}"
    );
}

#[test]
fn tiled_decode_equals_diffusers_tiled_decode() {
    let reference = load_fixture("vae_tiling/tiny_32px_tiles.safetensors");
    // `decode` takes scaled latents, as the UNet produces them; the fixture's are unscaled.
    let latents = (&reference["latents"] * 0.18215).unwrap();
    let expected = &reference["decoded"];

    let tiled = tiny_model(Some(TILES_32)).decode(&latents).unwrap();
    assert_eq!(tiled.dims(), expected.dims());
    let diff = max_abs_diff(&tiled, expected);
    assert!(
        diff < 1e-4,
        "tiled decode differs from diffusers' by {diff}"
    );

    // The seams are blended, not absent: untiled decoding gives a different image.
    let untiled = tiny_model(None).decode(&latents).unwrap();
    let seams = max_abs_diff(&untiled, expected);
    assert!(seams > 1e-3, "untiled decode is as close as {seams}");
}

#[test]
fn tiled_encode_equals_diffusers_tiled_encode() {
    let reference = load_fixture("vae_tiling/tiny_32px_tiles.safetensors");
    let moments = &reference["moments"];
    let posterior = tiny_model(Some(TILES_32))
        .encode(&reference["image"])
        .unwrap();
    let expected_mean = moments.narrow(1, 0, 4).unwrap();
    let expected_std = (moments.narrow(1, 4, 4).unwrap() * 0.5)
        .unwrap()
        .exp()
        .unwrap();
    let diff = max_abs_diff(&posterior.mean, &expected_mean)
        .max(max_abs_diff(&posterior.std, &expected_std));
    assert!(
        diff < 1e-4,
        "tiled encode differs from diffusers' by {diff}"
    );
}
