//! `dream --refiner`: tiny-sdxl hands over to fixtures/tiny-sdxl-refiner (A1111's "Refiner").

mod common;

use common::{failed, fixture, png_text, read_rgb, render_sdxl, succeeded, temp_dir};
use dream_test_support::{load_fixture, max_pixel_diff};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

#[test]
fn refiner_renders_as_diffusers_ensemble_and_is_named_in_the_metadata() {
    let out = temp_dir("refiner-render");
    let refiner = fixture("tiny-sdxl-refiner");
    let stdout = succeeded(&render_sdxl(
        PROMPT,
        &out,
        &[
            "-s",
            "10",
            "-S",
            "42",
            "-C",
            "7.5",
            "-A",
            "ddim",
            "--negative_prompt",
            "blurry",
            "--refiner",
            refiner.to_str().unwrap(),
        ],
    ));
    // The command that makes it again names the refiner and the (default) switch.
    assert!(
        stdout.contains(&format!(
            "--refiner {} --refiner_switch_at 0.8",
            refiner.display()
        )),
        "{stdout}"
    );
    let path = out.join("000001.42.png");
    let parameters = png_text(&path, "parameters").unwrap();
    assert!(
        parameters.contains("Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8"),
        "{parameters}"
    );
    // diffusers' base (denoising_end 0.8) then refiner (denoising_start 0.8), same settings.
    let expected = &load_fixture("sdxl_refiner/handoff.safetensors")["image_u8"];
    let pixel_err = max_pixel_diff(&read_rgb(&path), expected);
    assert!(
        pixel_err <= 1,
        "pixels differ from diffusers' by {pixel_err}"
    );
}

#[test]
fn bad_refiner_switches_are_refused_before_loading() {
    let out = temp_dir("refiner-errors");
    let err = failed(&render_sdxl(PROMPT, &out, &["--refiner_switch_at", "0.5"]));
    assert!(err.contains("--refiner_switch_at needs --refiner"), "{err}");
    let refiner = fixture("tiny-sdxl-refiner");
    let err = failed(&render_sdxl(
        PROMPT,
        &out,
        &[
            "--refiner",
            refiner.to_str().unwrap(),
            "--refiner_switch_at",
            "1.5",
        ],
    ));
    assert!(
        err.contains("--refiner_switch_at must be above 0 and at most 1, got 1.5"),
        "{err}"
    );
    let err = failed(&render_sdxl(
        PROMPT,
        &out,
        &["--refiner", "no-such-refiner"],
    ));
    assert!(err.contains("no-such-refiner"), "{err}");
}
