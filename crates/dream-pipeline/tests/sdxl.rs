//! SDXL generations against diffusers' StableDiffusionXLPipeline and its img2img pipeline on
//! the tiny SDXL model (fixtures/tiny-sdxl): the references in fixtures/sdxl_pipeline are made
//! by tools/parity/sdxl_pipeline_fixtures.py (diffusers 0.42.1, torch CPU generator, seed 42,
//! 64×64, CFG 7.5).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use dream_core::prompt::PromptOptions;
use dream_core::tokenizer::ClipTokenizer;
use dream_pipeline::conditioning::{ConditioningOptions, PromptConditioning};
use dream_pipeline::image::RgbImage;
use dream_pipeline::{
    InitImage, Inpaint, LoadOptions, Mask, Sampler, StableDiffusion, Syntax, Txt2Img,
};
use dream_test_support::{
    check_kept_outside_the_mask, check_latents_and_pixels, check_step_latents, copy_dir,
    euler_on_diffusers_schedule, fixture, load_fixture, max_abs_diff, square_mask, temp_dir,
};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn tiny_sdxl() -> StableDiffusion {
    StableDiffusion::load(fixture("tiny-sdxl")).unwrap_or_else(|e| panic!("tiny-sdxl: {e}"))
}

/// The references' settings: 64×64, seed 42, CFG 7.5.
fn request(prompt: &str, negative: &str, sampler: Sampler, steps: usize) -> Txt2Img {
    Txt2Img {
        negative_prompt: negative.into(),
        steps,
        cfg_scale: 7.5,
        width: 64,
        height: 64,
        sampler,
        ..Txt2Img::new(prompt, 42)
    }
}

fn conditioning(model: &StableDiffusion, request: &Txt2Img) -> PromptConditioning {
    model
        .condition(
            &request.prompt,
            &request.negative_prompt,
            &ConditioningOptions::new(request.steps),
        )
        .unwrap()
}

/// The prompt's and the negative prompt's sequences and pooled embeddings against the
/// reference's; returns the largest difference.
fn check_conditioning(name: &str, c: &PromptConditioning, r: &HashMap<String, Tensor>) -> f32 {
    let pairs = [
        ("prompt_embeds", c.positive(0, 0)),
        ("negative_prompt_embeds", c.negative(0)),
        ("pooled_prompt_embeds", c.positive_pooled(0, 0)),
        ("negative_pooled_prompt_embeds", c.negative_pooled(0)),
    ];
    let mut worst = 0f32;
    for (key, ours) in pairs {
        let ours = ours.unwrap_or_else(|| panic!("{name}: no {key}"));
        let err = max_abs_diff(ours, &r[key]);
        assert!(err <= 1e-5, "{name}: {key} differs by {err}");
        worst = worst.max(err);
    }
    worst
}

#[test]
fn euler_with_a_negative_prompt_matches_diffusers() {
    let model = tiny_sdxl();
    let r = load_fixture("sdxl_pipeline/euler.safetensors");
    let request = request(PROMPT, "blurry", Sampler::Euler, 4);
    let err = check_conditioning("euler", &conditioning(&model, &request), &r);
    println!("euler: conditioning differs by {err:.2e}");
    // The folder's scheduler: Euler with SDXL's "leading" timesteps 751, 501, 251, 1.
    let mut steps = 0;
    let latents = euler_on_diffusers_schedule(
        &model,
        &request,
        &fixture("tiny-sdxl/scheduler/scheduler_config.json"),
        &mut |_| steps += 1,
    );
    assert_eq!(steps, 4);
    check_latents_and_pixels("euler", &model, &latents, &r);
}

#[test]
fn empty_negative_prompt_conditions_with_zeros_as_diffusers() {
    let model = tiny_sdxl();
    let r = load_fixture("sdxl_pipeline/ddim.safetensors");
    let request = request(PROMPT, "", Sampler::Ddim, 4);
    let c = conditioning(&model, &request);
    check_conditioning("ddim", &c, &r);
    let zeros = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    for negative in [c.negative(0).unwrap(), c.negative_pooled(0).unwrap()] {
        assert_eq!(zeros(negative).to_scalar::<f32>().unwrap(), 0.0);
    }
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    check_latents_and_pixels("ddim", &model, &generated.latents, &r);
}

#[test]
fn a1111_emphasis_and_break_match_a1111s_sdxl_weighting() {
    // The reference weighs diffusers' own encoder outputs as A1111 does for SDXL (per
    // encoder, per chunk, mean restored) and lengthens the negative prompt with the empty
    // prompt's chunk; see the fixture script.
    let model = tiny_sdxl();
    let r = load_fixture("sdxl_pipeline/emphasis.safetensors");
    let prompt = "a (photograph:1.3) of an [astronaut] BREAK riding a horse";
    let request = request(prompt, "blurry", Sampler::Ddim, 4);
    let c = conditioning(&model, &request);
    assert_eq!(c.positive(0, 0).unwrap().dims(), &[1, 154, 64]);
    let err = check_conditioning("emphasis", &c, &r);
    println!("emphasis: conditioning differs by {err:.2e}");
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    check_latents_and_pixels("emphasis", &model, &generated.latents, &r);
}

#[test]
fn invokeai_syntax_matches_compel_as_invokeai_runs_it_for_sdxl() {
    // compel per encoder, side by side; the pooled embedding of the prompt as written.
    let model = tiny_sdxl();
    let r = load_fixture("sdxl_pipeline/compel.safetensors");
    let request = Txt2Img {
        syntax: Syntax::InvokeAi,
        ..request("a cat++ (dog)1.3 on a mat-", "blurry", Sampler::Ddim, 4)
    };
    let options = ConditioningOptions {
        prompt: PromptOptions::new(Syntax::InvokeAi, 4),
        ..ConditioningOptions::new(4)
    };
    let c = model
        .condition(&request.prompt, &request.negative_prompt, &options)
        .unwrap();
    let err = check_conditioning("compel", &c, &r);
    println!("compel: conditioning differs by {err:.2e}");
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    check_latents_and_pixels("compel", &model, &generated.latents, &r);
}

#[test]
fn img2img_matches_diffusers_sdxl_img2img() {
    let model = tiny_sdxl();
    let r = load_fixture("sdxl_pipeline/img2img.safetensors");
    let request = Txt2Img {
        init: Some(InitImage::open(fixture("images/init_64x64.png"), 0.6).unwrap()),
        ..request(PROMPT, "blurry", Sampler::Ddim, 10)
    };
    let mut steps = 0;
    let generated = model.generate(&request, &mut |_| steps += 1).unwrap();
    assert_eq!(steps, 6);
    check_latents_and_pixels("img2img", &model, &generated.latents, &r);
}

#[test]
fn the_native_size_comes_from_the_unet_config() {
    // sample_size 8 latents × the VAE's 8: 64 (SDXL base: 128 × 8 = 1024).
    let model = tiny_sdxl();
    assert_eq!(model.native_size(), 64);
    let options = LoadOptions::default();
    let size = dream_pipeline::model::native_size(&fixture("tiny-sdxl"), &options);
    assert_eq!(size, Some(64));
}

#[test]
fn clip_skip_counts_from_sdxls_own_penultimate_layer() {
    // 1 and 2 both name SDXL's penultimate layers (A1111 ignores clip skip for SDXL); 3 is
    // diffusers' clip_skip=1, hidden_states[-3] of both encoders.
    let model = tiny_sdxl();
    let skip = |n| ConditioningOptions {
        clip_skip: n,
        ..ConditioningOptions::new(4)
    };
    let positive = |n| {
        let c = model.condition(PROMPT, "blurry", &skip(n)).unwrap();
        c.positive(0, 0).unwrap().clone()
    };
    assert_eq!(max_abs_diff(&positive(1), &positive(2)), 0.0);
    let r = load_fixture("sdxl_pipeline/clip_skip.safetensors");
    let err = max_abs_diff(&positive(3), &r["prompt_embeds"]);
    assert!(err <= 1e-5, "clip skip 3 differs by {err}");
    assert!(max_abs_diff(&positive(2), &r["prompt_embeds"]) > 0.1);
    let err = model
        .condition(PROMPT, "blurry", &skip(6))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(err, "clip skip must be between 1 and 5, got 6");
}

#[test]
fn sdxl_embeddings_of_token_rows_condition_as_those_tokens() {
    // An A1111 SDXL embedding (clip_l, clip_g) made of each encoder's own rows for "cat horse"
    // must condition as those words: sequences, emphasis and the pooled embedding, which A1111
    // reads at the end-of-text token even when an embedding's vectors sit in the chunk.
    let mut model = tiny_sdxl();
    let ids = ClipTokenizer::bundled().encode("cat horse");
    let ids = Tensor::from_vec(ids.clone(), ids.len(), &Device::Cpu).unwrap();
    let rows = |encoder: &str| {
        let weights = load_fixture(&format!("tiny-sdxl/{encoder}/model.safetensors"));
        weights["text_model.embeddings.token_embedding.weight"]
            .to_dtype(DType::F32)
            .unwrap()
            .index_select(&ids, 0)
            .unwrap()
    };
    let (clip_l, clip_g) = (rows("text_encoder"), rows("text_encoder_2"));
    // One set of vectors, unpaired or wrong-width halves are refused, and leave no name behind.
    let err = model.add_embedding("mystyle", &clip_l).err().unwrap();
    assert!(err.to_string().contains("clip_l and clip_g"), "{err}");
    let one = clip_g.narrow(0, 0, 1).unwrap();
    assert!(model.add_sdxl_embedding("mystyle", &clip_l, &one).is_err());
    let wide = Tensor::zeros((2, 33), DType::F32, &Device::Cpu).unwrap();
    assert!(model.add_sdxl_embedding("mystyle", &clip_l, &wide).is_err());
    model
        .add_sdxl_embedding("mystyle", &clip_l, &clip_g)
        .unwrap();
    let options = ConditioningOptions::new(4);
    for (with_name, with_words) in [
        ("a mystyle on a mat", "a cat horse on a mat"),
        ("a (mystyle:1.3) on a [mat]", "a (cat horse:1.3) on a [mat]"),
    ] {
        let named = model.condition(with_name, "blurry", &options).unwrap();
        let words = model.condition(with_words, "blurry", &options).unwrap();
        let context = max_abs_diff(&named.context_at(0).unwrap(), &words.context_at(0).unwrap());
        let pooled = max_abs_diff(
            &named.pooled_at(0).unwrap().unwrap(),
            &words.pooled_at(0).unwrap().unwrap(),
        );
        assert!(
            context < 1e-6 && pooled < 1e-6,
            "{with_name}: {context} {pooled}"
        );
    }
}

#[test]
fn a_single_file_checkpoint_matches_diffusers() {
    // fixtures/tiny-sdxl.safetensors holds the same weights in the sgm (A1111) layout; its
    // 32-wide encoders' head counts need the folder's configs.
    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sdxl")),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load_with(fixture("tiny-sdxl.safetensors"), &options).unwrap();
    assert_eq!(model.native_size(), 64);
    let r = load_fixture("sdxl_pipeline/ddim.safetensors");
    let generated = model
        .generate(&request(PROMPT, "", Sampler::Ddim, 4), &mut |_| {})
        .unwrap();
    check_latents_and_pixels("single file", &model, &generated.latents, &r);
}

#[test]
fn prompt_editing_switches_the_pooled_embedding_with_the_text() {
    // A1111 conditions each schedule row with both its sequence and its pooled vector.
    let model = tiny_sdxl();
    let options = ConditioningOptions::new(4);
    let edited = model
        .condition("a [red cat:blue dog:2] on a mat", "blurry", &options)
        .unwrap();
    for (step, plain) in [(0, "a red cat on a mat"), (3, "a blue dog on a mat")] {
        let plain = model.condition(plain, "blurry", &options).unwrap();
        let (ours, theirs) = (edited.pooled_at(step).unwrap(), plain.pooled_at(0).unwrap());
        let (ours, theirs) = (ours.unwrap(), theirs.unwrap());
        assert_eq!(ours.dims(), &[2, 32]);
        assert!(max_abs_diff(&ours, &theirs) <= 1e-6, "step {step}");
        let context = max_abs_diff(
            &edited.context_at(step).unwrap(),
            &plain.context_at(0).unwrap(),
        );
        assert!(context <= 1e-6, "step {step}: context differs by {context}");
    }
    let (first, last) = (edited.pooled_at(0).unwrap(), edited.pooled_at(3).unwrap());
    assert!(max_abs_diff(&first.unwrap(), &last.unwrap()) > 1e-3);
}

#[test]
fn txt2img_renders_at_the_models_size() {
    let model = tiny_sdxl();
    let generated = model.txt2img(PROMPT, 42).unwrap();
    assert_eq!((generated.image.width, generated.image.height), (64, 64));
    assert_eq!(
        (generated.request.width, generated.request.height),
        (64, 64)
    );
}

#[test]
fn inpainting_keeps_the_pixels_outside_the_blurred_mask() {
    // An ordinary SDXL UNet inpaints A1111's way: every x0 estimate keeps the init image's
    // latents outside the mask, and the decoded image is pasted back through the blurred mask.
    let model = tiny_sdxl();
    let original = RgbImage::open(&fixture("images/init_64x64.png")).unwrap();
    let mask = square_mask();
    let inpaint = Inpaint::new(mask.clone());
    let blurred = mask.blurred(inpaint.mask_blur);
    let request = Txt2Img {
        init: Some(InitImage {
            image: original.clone(),
            strength: 0.8,
        }),
        inpaint: Some(inpaint),
        ..request(PROMPT, "blurry", Sampler::Euler, 8)
    };
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    let (_, changed) =
        check_kept_outside_the_mask("sdxl", &generated.image, &original, &mask, &blurred);
    assert!(changed > 200, "only {changed} pixels changed");
}

#[test]
fn nine_channel_sdxl_inpainting_matches_diffusers() {
    // tiny-sdxl with the 9-channel UNet of fixtures/sdxl_pipeline/inpaint_unet, against
    // StableDiffusionXLInpaintPipeline (diffusers binarizes the mask and does not blur it).
    let dir = temp_dir("sdxl-inpaint-model");
    copy_dir(&fixture("tiny-sdxl"), &dir);
    copy_dir(&fixture("sdxl_pipeline/inpaint_unet"), &dir.join("unet"));
    let model = StableDiffusion::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mask = Mask::from_white(&RgbImage::open(&fixture("images/mask_64x64.png")).unwrap());
    for (name, strength, steps_run) in [("inpaint_ddim", 1.0, 8), ("inpaint_ddim_s075", 0.75, 6)] {
        let r = load_fixture(&format!("sdxl_pipeline/{name}.safetensors"));
        let request = Txt2Img {
            init: Some(InitImage::open(fixture("images/init_64x64.png"), strength).unwrap()),
            inpaint: Some(Inpaint {
                mask_blur: 0.0,
                ..Inpaint::new(mask.clone())
            }),
            ..request(PROMPT, "blurry", Sampler::Ddim, 8)
        };
        check_step_latents(name, &model, &request, &r, steps_run);
    }
}
