//! Whole generations against diffusers: the same tiny model, prompt and seed must give the
//! same latents and image as the references in fixtures/ref (made by
//! tools/parity/reference_torch_seed.py from diffusers 0.42.1 with a torch CPU generator).

use dream_pipeline::conditioning::ConditioningOptions;
use dream_pipeline::sampling::StepInfo;
use dream_pipeline::{LoadOptions, Sampler, ScheduleKind, StableDiffusion, Txt2Img};
use dream_test_support::{
    euler_on_diffusers_schedule, fixture, load_fixture, max_abs_diff, max_pixel_diff, tiny_model,
};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn single_file_model(file: &str) -> StableDiffusion {
    // The tiny model's GroupNorms use 8 groups, which tensor shapes cannot tell; the folder's
    // configs say so, as diffusers' from_single_file(config=...) is told.
    let options = LoadOptions {
        config_dir: Some(fixture("tiny")),
        ..LoadOptions::default()
    };
    StableDiffusion::load_with(fixture(file), &options).unwrap()
}

/// Generates as the reference was made and checks each stage against it.
fn check_generation(
    model: &StableDiffusion,
    reference_name: &str,
    sampler: Sampler,
    negative: &str,
    seed: u32,
    size: (usize, usize),
) {
    let r = load_fixture(&format!("ref/{reference_name}.safetensors"));
    let request = Txt2Img {
        prompt: PROMPT.into(),
        negative_prompt: negative.into(),
        steps: 20,
        cfg_scale: 7.5,
        width: size.0,
        height: size.1,
        seed,
        sampler,
        schedule: ScheduleKind::Normal,
        ..Txt2Img::new(PROMPT, seed)
    };

    let noise = model.initial_noise(seed, size.0, size.1).unwrap();
    assert_eq!(
        max_abs_diff(&noise, &r["init_noise"]),
        0.0,
        "{reference_name}: seed noise"
    );
    let context = model
        .condition(PROMPT, negative, &ConditioningOptions::new(20))
        .unwrap()
        .context_at(0)
        .unwrap();
    let context_err = max_abs_diff(&context, &r["unet.encoder_hidden_states"]);
    assert!(
        context_err <= 1e-5,
        "{reference_name}: text embeddings differ by {context_err}"
    );

    let mut steps_seen = 0;
    let mut check_step = |step: StepInfo<'_>| {
        let expected = &r[&format!("step.{:03}.latents", step.step)];
        let err = max_abs_diff(step.latents, expected);
        assert!(
            err <= 1e-4,
            "{reference_name}: step {} latents differ by {err}",
            step.step
        );
        steps_seen += 1;
    };
    let latents = match sampler {
        Sampler::Euler => euler_on_diffusers_schedule(
            model,
            &request,
            &fixture("tiny/scheduler/scheduler_config.json"),
            &mut check_step,
        ),
        _ => model.generate(&request, &mut check_step).unwrap().latents,
    };
    assert_eq!(steps_seen, 20);

    let latents_err = max_abs_diff(&latents, &r["final_latents"]);
    assert!(
        latents_err <= 1e-4,
        "{reference_name}: final latents differ by {latents_err}"
    );
    let raw = model.decode(&latents).unwrap();
    let raw_err = max_abs_diff(&raw, &r["image_raw"]);
    assert!(
        raw_err <= 1e-4,
        "{reference_name}: decoded image differs by {raw_err}"
    );

    let image = model.decode_to_image(&latents).unwrap();
    assert_eq!((image.width, image.height), size);
    let pixel_err = max_pixel_diff(&image, &r["image_u8"]);
    // A raw value within 1e-4 of a rounding boundary may round the other way.
    assert!(
        pixel_err <= 1,
        "{reference_name}: pixels differ by {pixel_err}"
    );
    println!("{reference_name}: latents {latents_err:.2e}, image_raw {raw_err:.2e}, text {context_err:.2e}");
}

#[test]
fn folder_euler_matches_diffusers() {
    let model = tiny_model();
    check_generation(
        &model,
        "txt2img_euler",
        Sampler::Euler,
        "blurry",
        42,
        (64, 64),
    );
}

#[test]
fn folder_ddim_matches_diffusers() {
    let model = tiny_model();
    check_generation(
        &model,
        "txt2img_ddim",
        Sampler::Ddim,
        "blurry",
        42,
        (64, 64),
    );
}

#[test]
fn folder_non_square_empty_negative_matches_diffusers() {
    let model = tiny_model();
    check_generation(
        &model,
        "txt2img_euler_64x48",
        Sampler::Euler,
        "",
        1234,
        (64, 48),
    );
}

#[test]
fn single_safetensors_file_matches_diffusers() {
    let model = single_file_model("tiny.safetensors");
    check_generation(
        &model,
        "txt2img_euler",
        Sampler::Euler,
        "blurry",
        42,
        (64, 64),
    );
    check_generation(
        &model,
        "txt2img_ddim",
        Sampler::Ddim,
        "blurry",
        42,
        (64, 64),
    );
}

#[test]
fn single_ckpt_file_matches_diffusers() {
    let model = single_file_model("tiny.ckpt");
    check_generation(
        &model,
        "txt2img_ddim",
        Sampler::Ddim,
        "blurry",
        42,
        (64, 64),
    );
}

#[test]
fn vae_override_with_the_same_vae_changes_nothing() {
    let options = LoadOptions {
        vae: Some(fixture("tiny/vae")),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load_with(fixture("tiny"), &options).unwrap();
    check_generation(
        &model,
        "txt2img_euler",
        Sampler::Euler,
        "blurry",
        42,
        (64, 64),
    );
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let model = tiny_model();
    let mut request = Txt2Img::new(PROMPT, 1);
    request.width = 60;
    let err = model
        .generate(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("multiples of 8") && err.contains("60x512"),
        "{err}"
    );
    request.width = 64;
    request.steps = 0;
    let err = model
        .generate(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("steps"), "{err}");
}

#[test]
fn missing_model_names_the_path() {
    let err = StableDiffusion::load(fixture("no-such-model.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no-such-model.safetensors"), "{err}");
}
