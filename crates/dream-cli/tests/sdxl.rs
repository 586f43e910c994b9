//! `dream` with an SDXL diffusers folder (fixtures/tiny-sdxl).

mod common;

use common::{fixture, png_text, read_rgb, render_sdxl, succeeded, temp_dir};
use dream_test_support::{load_fixture, max_pixel_diff};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

#[test]
fn renders_diffusers_sdxl_image_at_the_models_size_with_its_metadata() {
    let out = temp_dir("sdxl-render");
    let stdout = succeeded(&render_sdxl(
        PROMPT,
        &out,
        &["-s", "4", "-S", "42", "-C", "7.5", "-A", "ddim"],
    ));
    let path = out.join("000001.42.png");
    // No -W/-H: the model's own size, its UNet's sample_size (8 latents) × the VAE's 8.
    assert!(stdout.contains("-W64 -H64"), "{stdout}");
    assert_eq!(
        png_text(&path, "parameters").unwrap(),
        format!(
            "{PROMPT}\nSteps: 4, Sampler: DDIM, Schedule type: Uniform, CFG scale: 7.5, Seed: 42, \
             Size: 64x64, Model: tiny-sdxl, Version: dream {}",
            env!("CARGO_PKG_VERSION")
        )
    );
    // The same settings as diffusers' StableDiffusionXLPipeline run of
    // fixtures/sdxl_pipeline/ddim.safetensors (no negative prompt: zeros).
    let image = read_rgb(&path);
    assert_eq!((image.width, image.height), (64, 64));
    let expected = &load_fixture("sdxl_pipeline/ddim.safetensors")["image_u8"];
    let pixel_err = max_pixel_diff(&image, expected);
    assert!(
        pixel_err <= 1,
        "pixels differ from diffusers' by {pixel_err}"
    );
}

#[test]
fn inpaints_with_sdxl() {
    let out = temp_dir("sdxl-inpaint");
    let init = fixture("images/init_64x64.png");
    let mask = fixture("images/mask_64x64.png");
    succeeded(&render_sdxl(
        PROMPT,
        &out,
        &[
            "-s",
            "4",
            "-S",
            "3",
            "-I",
            init.to_str().unwrap(),
            "-M",
            mask.to_str().unwrap(),
        ],
    ));
    let path = out.join("000001.3.png");
    assert_ne!(read_rgb(&path), read_rgb(&init));
    let parameters = png_text(&path, "parameters").unwrap();
    assert!(parameters.contains("Mask blur: 4"), "{parameters}");
}

#[test]
fn hires_fix_first_renders_at_the_models_size() {
    let out = temp_dir("sdxl-hires");
    succeeded(&render_sdxl(
        PROMPT,
        &out,
        &[
            "-s",
            "2",
            "-S",
            "1",
            "-A",
            "ddim",
            "-W",
            "128",
            "-H",
            "96",
            "--hires_fix",
        ],
    ));
    // InvokeAI's rule at the model's 64² area (SDXL base: 1024²): for aspect 4:3 the height
    // is max(64/2, √(64²·3/4)) = 55.4, the width 73.9, floored to multiples of 8.
    let parameters = png_text(&out.join("000001.1.png"), "parameters").unwrap();
    assert!(
        parameters.contains("Size: 72x48") && parameters.contains("Hires resize: 128x96"),
        "{parameters}"
    );
}
