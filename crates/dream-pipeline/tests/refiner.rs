//! The SDXL refiner (fixtures/tiny-sdxl-refiner: one text encoder, SDXL's second, and a UNet
//! that reads an aesthetic score) against diffusers 0.42.1: its img2img pipeline on the
//! refiner, and the base → refiner ensemble of experts (`denoising_end`/`denoising_start`).
//! References: fixtures/sdxl_refiner, made by tools/parity/make_tiny_refiner.py (DDIM, 10
//! steps, 64×64, CFG 7.5, seed 42, torch CPU generator).

use candle_core::Tensor;
use dream_pipeline::conditioning::ConditioningOptions;
use dream_pipeline::hires::HiresFix;
use dream_pipeline::{
    InitImage, Inpaint, LoadOptions, Mask, RefinerSwitch, Sampler, StableDiffusion, Txt2Img,
};
use dream_test_support::{
    check_latents_and_pixels, copy_dir, fixture, load_fixture, max_abs_diff, temp_dir,
};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn load(name: &str) -> StableDiffusion {
    StableDiffusion::load(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The references' settings: DDIM, 10 steps, 64×64, seed 42, CFG 7.5.
fn request(negative: &str) -> Txt2Img {
    Txt2Img {
        negative_prompt: negative.into(),
        steps: 10,
        cfg_scale: 7.5,
        width: 64,
        height: 64,
        sampler: Sampler::Ddim,
        ..Txt2Img::new(PROMPT, 42)
    }
}

fn switch(switch_at: f64) -> Option<RefinerSwitch> {
    Some(RefinerSwitch {
        name: "tiny-sdxl-refiner".into(),
        switch_at,
    })
}

/// The refiner's conditioning (its one encoder's penultimate states and pooled output) against
/// the reference's.
fn check_conditioning(name: &str, model: &StableDiffusion, request: &Txt2Img) {
    let r = load_fixture(&format!("sdxl_refiner/{name}.safetensors"));
    let c = model
        .condition(
            &request.prompt,
            &request.negative_prompt,
            &ConditioningOptions::new(request.steps),
        )
        .unwrap();
    for (key, ours) in [
        ("prompt_embeds", c.positive(0, 0)),
        ("negative_prompt_embeds", c.negative(0)),
        ("pooled_prompt_embeds", c.positive_pooled(0, 0)),
        ("negative_pooled_prompt_embeds", c.negative_pooled(0)),
    ] {
        let ours = ours.unwrap_or_else(|| panic!("{name}: no {key}"));
        let err = max_abs_diff(ours, &r[key]);
        println!("{name}: {key} differs by {err:.2e}");
        assert!(err <= 1e-5, "{name}: {key} differs by {err}");
    }
}

#[test]
fn the_refiner_folder_loads_with_its_one_text_encoder() {
    let refiner = load("tiny-sdxl-refiner");
    assert_eq!(
        refiner.networks_on_device(),
        ["text encoder 2", "unet", "vae"]
    );
    assert_eq!(refiner.native_size(), 64);
    // Its embeddings would have no first encoder to go to.
    let mut refiner = refiner;
    let vectors =
        Tensor::zeros((1, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = refiner
        .add_sdxl_embedding("style", &vectors, &vectors)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refiner") && err.contains("not supported yet"),
        "{err}"
    );
}

#[test]
fn the_refiner_single_file_renders_as_the_folder() {
    // Stability's layout (sd_xl_refiner_1.0.safetensors'): its one encoder is
    // conditioner.embedders.0.model.*, OpenCLIP's names; the tiny encoder's 32-wide heads need
    // the folder's configs.
    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sdxl-refiner")),
        ..LoadOptions::default()
    };
    let refiner =
        StableDiffusion::load_with(fixture("tiny-sdxl-refiner.safetensors"), &options).unwrap();
    assert_eq!(
        refiner.networks_on_device(),
        ["text encoder 2", "unet", "vae"]
    );
    let request = Txt2Img {
        init: Some(InitImage::open(fixture("images/init_64x64.png"), 0.3).unwrap()),
        ..request("blurry")
    };
    let generated = refiner.generate(&request, &mut |_| {}).unwrap();
    let r = load_fixture("sdxl_refiner/img2img.safetensors");
    check_latents_and_pixels("single file img2img", &refiner, &generated.latents, &r);
    // Without them, the shapes cannot tell its heads, and the error says what to pass.
    let err = StableDiffusion::load(fixture("tiny-sdxl-refiner.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config folder"), "{err}");
}

#[test]
fn refiner_img2img_matches_diffusers() {
    // StableDiffusionXLImg2ImgPipeline on the refiner: aesthetic score 6 for the prompt, 2.5
    // for the negative prompt, strength 0.3 of 10 steps.
    let refiner = load("tiny-sdxl-refiner");
    let request = Txt2Img {
        init: Some(InitImage::open(fixture("images/init_64x64.png"), 0.3).unwrap()),
        ..request("blurry")
    };
    check_conditioning("img2img", &refiner, &request);
    let mut steps = 0;
    let generated = refiner.generate(&request, &mut |_| steps += 1).unwrap();
    assert_eq!(steps, 3);
    let r = load_fixture("sdxl_refiner/img2img.safetensors");
    check_latents_and_pixels("img2img", &refiner, &generated.latents, &r);
}

#[test]
fn the_refiner_encodes_an_empty_negative_prompt_as_its_config_says() {
    // The refiner's model_index.json has force_zeros_for_empty_prompt false: "" is encoded.
    let refiner = load("tiny-sdxl-refiner");
    let request = Txt2Img {
        init: Some(InitImage::open(fixture("images/init_64x64.png"), 0.3).unwrap()),
        ..request("")
    };
    check_conditioning("img2img_empty", &refiner, &request);
    let generated = refiner.generate(&request, &mut |_| {}).unwrap();
    let r = load_fixture("sdxl_refiner/img2img_empty.safetensors");
    check_latents_and_pixels("img2img_empty", &refiner, &generated.latents, &r);
}

#[test]
fn base_to_refiner_hand_off_matches_diffusers_ensemble_of_experts() {
    // DDIM's timesteps 901, 801, …, 1: at switch 0.8 the base denoises 901 … 201 (A1111:
    // (999 − t)/1000 < 0.8; diffusers: t ≥ round(1000 · 0.2)), the refiner 101 and 1.
    let base = load("tiny-sdxl");
    let refiner = load("tiny-sdxl-refiner");
    let r = load_fixture("sdxl_refiner/handoff.safetensors");
    let request = Txt2Img {
        refiner: switch(0.8),
        ..request("blurry")
    };
    let mut handed_over = None;
    let mut steps = 0;
    let generated = base
        .generate_refined(&request, Some(&refiner), &mut |info| {
            steps += 1;
            if info.step == 7 {
                handed_over = Some(info.latents.clone());
            }
        })
        .unwrap();
    assert_eq!(steps, 10);
    // The base's last latents are what diffusers' base pipeline hands over.
    let err = max_abs_diff(&handed_over.unwrap(), &r["base_latents"]);
    println!("handoff: base latents differ by {err:.2e}");
    assert!(err <= 1e-4, "the base's latents differ by {err}");
    check_latents_and_pixels("handoff", &base, &generated.latents, &r);
    // The refiner's two steps matter: the base alone ends elsewhere.
    let alone = Txt2Img {
        refiner: None,
        ..request
    };
    let alone = base.generate(&alone, &mut |_| {}).unwrap();
    let err = max_abs_diff(&alone.latents, &r["final_latents"]);
    assert!(
        err > 1e-2,
        "the base alone ends within {err} of the hand-off"
    );
    let parameters = generated.a1111_parameters("tiny-sdxl");
    assert!(
        parameters.contains("Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8"),
        "{parameters}"
    );
}

#[test]
fn k_samplers_hand_over_at_a1111s_noise_level() {
    // Euler on the normal schedule, 10 steps: timesteps 999 − 111k; A1111 switches when
    // 111k/1000 ≥ 0.8, at k = 8. The first 8 steps are the base's own, the 9th is not.
    let base = load("tiny-sdxl");
    let refiner = load("tiny-sdxl-refiner");
    let euler = Txt2Img {
        sampler: Sampler::Euler,
        ..request("blurry")
    };
    let mut alone = Vec::new();
    base.generate(&euler, &mut |info| alone.push(info.latents.clone()))
        .unwrap();
    let mut refined = Vec::new();
    let request = Txt2Img {
        refiner: switch(0.8),
        ..euler.clone()
    };
    base.generate_refined(&request, Some(&refiner), &mut |info| {
        refined.push(info.latents.clone())
    })
    .unwrap();
    for k in 0..8 {
        assert_eq!(max_abs_diff(&alone[k], &refined[k]), 0.0, "step {k}");
    }
    assert!(max_abs_diff(&alone[8], &refined[8]) > 1e-3);
    // At 1 the switch is never reached ((999 − 0)/1000 < 1): the base's image.
    let request = Txt2Img {
        refiner: switch(1.0),
        ..euler
    };
    let never = base
        .generate_refined(&request, Some(&refiner), &mut |_| {})
        .unwrap();
    assert_eq!(max_abs_diff(&never.latents, &alone[9]), 0.0);
}

#[test]
fn bad_refiner_requests_are_refused_by_name() {
    let base = load("tiny-sdxl");
    let refiner = load("tiny-sdxl-refiner");
    let message = |request: &Txt2Img, refiner: Option<&StableDiffusion>| {
        base.generate_refined(request, refiner, &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let refined = Txt2Img {
        refiner: switch(0.8),
        ..request("")
    };
    let err = message(&refined, None);
    assert!(
        err.contains("tiny-sdxl-refiner") && err.contains("none was given"),
        "{err}"
    );
    let err = message(&request(""), Some(&refiner));
    assert!(err.contains("no refiner switch"), "{err}");
    for bad in [0.0, 1.5, f64::NAN] {
        let err = message(
            &Txt2Img {
                refiner: switch(bad),
                ..request("")
            },
            Some(&refiner),
        );
        assert!(err.contains("refiner switch must be above 0"), "{err}");
    }
    let hires = Txt2Img {
        hires: Some(HiresFix::invokeai(64, 64, 32, 0.5)),
        ..refined.clone()
    };
    let err = message(&hires, Some(&refiner));
    assert!(
        err.contains("hires fix with a refiner is not supported yet"),
        "{err}"
    );
    let init = InitImage::open(fixture("images/init_64x64.png"), 0.5).unwrap();
    let mask = Mask::open(&fixture("images/mask_64x64.png")).unwrap();
    let inpaint = Txt2Img {
        init: Some(init),
        inpaint: Some(Inpaint::new(mask)),
        ..refined.clone()
    };
    let err = message(&inpaint, Some(&refiner));
    assert!(
        err.contains("inpainting with a refiner is not supported yet"),
        "{err}"
    );
    // An inpainting UNet cannot take over ordinary latents.
    let dir = temp_dir("refiner-inpainting-unet");
    copy_dir(&fixture("tiny-sdxl"), &dir);
    copy_dir(&fixture("sdxl_pipeline/inpaint_unet"), &dir.join("unet"));
    let inpainting = StableDiffusion::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = message(&refined, Some(&inpainting));
    assert!(err.contains("9-channel (inpainting) UNet"), "{err}");
}
