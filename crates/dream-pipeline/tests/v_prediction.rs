//! SD 2.x v-prediction (768-v) models against diffusers' StableDiffusionPipeline on the tiny
//! SD 2.x-style model fixtures/tiny-sd2v (an OpenCLIP-style text encoder padding with "!", a
//! linear-projection UNet with upcast_attention, SD 2.1's v_prediction scheduler) and its single
//! file fixtures/tiny-sd2v.safetensors: references in fixtures/sd2v from
//! tools/parity/make_tiny_sd2v.py (diffusers 0.42.1, torch CPU generator, seed 42, 64×64,
//! CFG 7.5, 6 steps).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use dream_core::rng::TorchGenerator;
use dream_models::detect::Prediction;
use dream_models::weights::load_single_file;
use dream_pipeline::conditioning::ConditioningOptions;
use dream_pipeline::image::RgbImage;
use dream_pipeline::{
    InitImage, Inpaint, LoadOptions, Mask, Precision, Sampler, StableDiffusion, Txt2Img,
};
use dream_test_support::{
    check_latents_and_pixels, euler_on_diffusers_schedule, fixture, load_fixture, max_abs_diff,
    relative_error, temp_dir,
};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn request(negative: &str, sampler: Sampler) -> Txt2Img {
    Txt2Img {
        negative_prompt: negative.into(),
        steps: 6,
        cfg_scale: 7.5,
        width: 64,
        height: 64,
        sampler,
        ..Txt2Img::new(PROMPT, 42)
    }
}

fn load(path: &Path, config_dir: Option<PathBuf>) -> StableDiffusion {
    let options = LoadOptions {
        config_dir,
        ..LoadOptions::default()
    };
    StableDiffusion::load_with(path, &options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The conditioning within 1e-5 (the last hidden state of the encoder's layers, padded with
/// "!"), then [`check_latents_and_pixels`]; returns the latents' error.
fn check(
    name: &str,
    model: &StableDiffusion,
    request: &Txt2Img,
    latents: &Tensor,
    r: &HashMap<String, Tensor>,
) -> f32 {
    let options = ConditioningOptions::new(request.steps);
    let c = model
        .condition(&request.prompt, &request.negative_prompt, &options)
        .unwrap();
    for (key, ours) in [
        ("prompt_embeds", c.positive(0, 0)),
        ("negative_prompt_embeds", c.negative(0)),
    ] {
        let err = max_abs_diff(ours.unwrap(), &r[key]);
        assert!(err <= 1e-5, "{name}: {key} differs by {err}");
    }
    check_latents_and_pixels(name, model, latents, r)
}

#[test]
fn euler_matches_diffusers() {
    let model = load(&fixture("tiny-sd2v"), None);
    let r = load_fixture("sd2v/euler.safetensors");
    let request = request("blurry", Sampler::Euler);
    // diffusers' EulerDiscreteScheduler from the folder's (DDIM) config: "linspace" timesteps,
    // σ interpolated linearly, v-prediction's c_skip and c_out.
    let latents = euler_on_diffusers_schedule(
        &model,
        &request,
        &fixture("tiny-sd2v/scheduler/scheduler_config.json"),
        &mut |_| {},
    );
    check("euler", &model, &request, &latents, &r);
}

#[test]
fn ddim_with_an_empty_negative_prompt_matches_diffusers() {
    let model = load(&fixture("tiny-sd2v"), None);
    let request = request("", Sampler::Ddim);
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    let r = load_fixture("sd2v/ddim.safetensors");
    check("ddim", &model, &request, &generated.latents, &r);
}

#[test]
fn single_file_with_its_config_folder_matches_diffusers() {
    // The file carries OpenCLIP's last layer, which SD 2.x skips; the folder's config says the
    // encoder has one layer fewer.
    let model = load(
        &fixture("tiny-sd2v.safetensors"),
        Some(fixture("tiny-sd2v")),
    );
    let request = request("", Sampler::Ddim);
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    let r = load_fixture("sd2v/ddim.safetensors");
    check("single file", &model, &request, &generated.latents, &r);
}

/// `tiny-sd2v.safetensors` copied into a fresh folder as `model.safetensors`, with a config
/// folder holding only the three networks' `config.json` (the tiny model's groups and heads,
/// which shapes cannot tell): no scheduler config and no tokenizer, as for a single file
/// without any config.
fn bare_single_file(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let file = dir.join("model.safetensors");
    std::fs::copy(fixture("tiny-sd2v.safetensors"), &file).unwrap();
    let configs = dir.join("configs");
    for network in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(configs.join(network)).unwrap();
        let config = format!("{network}/config.json");
        std::fs::copy(fixture("tiny-sd2v").join(&config), configs.join(&config)).unwrap();
    }
    (file, configs)
}

#[test]
fn single_file_without_a_scheduler_config_is_v_prediction_and_pads_with_the_exclamation_mark() {
    // SD 2.x's rule for a file without a config (diffusers' from_single_file's too): an
    // OpenCLIP text encoder means a 768-v model. The tokenizer is Dream's bundled CLIP
    // vocabulary, padding with "!" for OpenCLIP as SD 2.x's does.
    let (file, configs) = bare_single_file("sd2v-bare");
    let kind = load_single_file(&file, Some(&configs)).unwrap().kind;
    assert_eq!(kind.prediction, Prediction::VPrediction);
    let model = load(&file, Some(configs));
    let request = request("", Sampler::Ddim);
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    let r = load_fixture("sd2v/ddim.safetensors");
    check("bare single file", &model, &request, &generated.latents, &r);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[test]
fn a_latent_diffusion_config_beside_the_file_decides_the_prediction_type() {
    let (file, configs) = bare_single_file("sd2v-yaml");
    let yaml = file.with_extension("yaml");
    let prediction = |text: &str| {
        std::fs::write(&yaml, text).unwrap();
        load_single_file(&file, Some(&configs)).map(|c| c.kind.prediction)
    };
    // Stability's v2-inference-v.yaml and v2-inference.yaml, abridged.
    let v = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    \
             parameterization: \"v\"\n    linear_start: 0.00085\n";
    let eps = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    \
               linear_start: 0.00085\n";
    assert_eq!(prediction(v).unwrap(), Prediction::VPrediction);
    assert_eq!(prediction(eps).unwrap(), Prediction::Epsilon);
    let err = prediction("    parameterization: x0 # other\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.yaml") && err.contains("parameterization \"x0\" is not supported"),
        "{err}"
    );

    // Read as ε, the same file renders far from diffusers' v-prediction result.
    std::fs::write(&yaml, eps).unwrap();
    let model = load(&file, Some(configs.clone()));
    let request = request("", Sampler::Ddim);
    let reference = load_fixture("sd2v/ddim.safetensors");
    let latents = model.generate(&request, &mut |_| {}).unwrap().latents;
    let moved = max_abs_diff(&latents, &reference["final_latents"]);
    assert!(
        moved > 0.1,
        "read as epsilon, the latents moved only {moved}"
    );

    // A config named for the file (InvokeAI's models.yaml `config:`) comes before the one
    // beside it: with v2-inference-v.yaml the file renders as diffusers' v-prediction run.
    let elsewhere = configs.join("v2-inference-v.yaml");
    std::fs::write(&elsewhere, v).unwrap();
    let options = LoadOptions {
        config_dir: Some(configs),
        ldm_config: Some(elsewhere),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load_with(&file, &options).unwrap();
    let latents = model.generate(&request, &mut |_| {}).unwrap().latents;
    check("ldm_config", &model, &request, &latents, &reference);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// Inpainting with the ordinary UNet, A1111's way, keeps the x₀ estimate on the init image
/// outside the mask: there the UNet's output is replaced by the one that estimates the init
/// latents, for a v-prediction model the v of that x₀ and the latents' noise. With nothing
/// masked, every step's x₀ estimate is the init image's latents.
#[test]
fn inpainting_with_the_ordinary_unet_keeps_the_x0_estimate_on_the_init_image() {
    let model = load(&fixture("tiny-sd2v"), None);
    let init = RgbImage::open(&fixture("images/init_64x64.png")).unwrap();
    let encoded = model
        .encode_image(&init, &mut TorchGenerator::seeded(42))
        .unwrap();
    for sampler in [Sampler::Euler, Sampler::Ddim] {
        let request = Txt2Img {
            init: Some(InitImage {
                image: init.clone(),
                strength: 1.0,
            }),
            inpaint: Some(Inpaint::new(Mask::keep_all(64, 64))),
            ..request("blurry", sampler)
        };
        let (mut estimates, mut worst) = (0, 0f32);
        model
            .generate(&request, &mut |step| {
                if let Some(denoised) = step.denoised {
                    estimates += 1;
                    worst = worst.max(max_abs_diff(denoised, &encoded));
                }
            })
            .unwrap();
        println!("{sampler}: {estimates} x0 estimates within {worst:.2e} of the init latents");
        assert_eq!(estimates, 6, "{sampler}");
        assert!(
            worst <= 1e-4,
            "{sampler}: an x0 estimate differs by {worst}"
        );
    }
}

/// In float16 (the path every GPU takes; on the CPU through candle's own operations), with the
/// UNet's attention upcast to float32 as the folder's `upcast_attention` asks, the render stays
/// within half precision of diffusers' float32 one.
#[test]
fn float16_with_upcast_attention_matches_diffusers_within_half_precision() {
    let options = LoadOptions {
        device: candle_core::Device::Cpu,
        precision: Precision::Float16,
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load_with(fixture("tiny-sd2v"), &options).unwrap();
    let request = request("", Sampler::Ddim);
    let latents = model.generate(&request, &mut |_| {}).unwrap().latents;
    let err = relative_error(
        &latents,
        &load_fixture("sd2v/ddim.safetensors")["final_latents"],
    );
    println!("float16: final latents within {err:.2e} (relative)");
    assert!(
        err <= 1e-2,
        "float16 final latents differ by {err} (relative)"
    );
}
