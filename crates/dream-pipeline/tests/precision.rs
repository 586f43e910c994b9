//! Half precision and `--free_gpu_mem` on the CPU, where the tests can run: the networks in
//! float16 go through candle's own operations instead of Dream's float32 CPU kernels (the
//! path every GPU takes), and are checked against diffusers' float32 references in
//! fixtures/ref; the staged networks of free_gpu_mem must make the very same images.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use dream_models::config::{UNetConfig, VaeConfig};
use dream_models::unet::UNet2DConditionModel;
use dream_models::vae::AutoencoderKL;
use dream_pipeline::conditioning::ConditioningOptions;
use dream_pipeline::{LoadOptions, Precision, Sampler, ScheduleKind, StableDiffusion, Txt2Img};
use dream_test_support::{
    euler_on_diffusers_schedule, euler_request, fixture, load_fixture, max_abs_diff, relative_error,
};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

/// float16 keeps 11 significant bits (a relative step of 4.9e-4), and the tiny networks
/// round through a few dozen layers (20 steps of them for a generation): errors are measured
/// relative to the reference's largest magnitude.
const HALF_TOLERANCE: f32 = 1e-2;

fn tiny(precision: Precision, free_gpu_mem: bool) -> StableDiffusion {
    let options = LoadOptions {
        device: Device::Cpu,
        precision,
        free_gpu_mem,
        ..LoadOptions::default()
    };
    StableDiffusion::load_with(fixture("tiny"), &options).unwrap()
}

fn var_builder(file: &str, dtype: DType) -> VarBuilder<'static> {
    // SAFETY: the fixture is not modified while the test maps it.
    unsafe { VarBuilder::from_mmaped_safetensors(&[fixture(file)], dtype, &Device::Cpu) }.unwrap()
}

fn config<T: serde::de::DeserializeOwned>(file: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap()
}

#[test]
fn float16_unet_and_vae_match_diffusers_within_half_precision() {
    let r = load_fixture("ref/txt2img_euler.safetensors");
    let half = |t: &Tensor| t.to_dtype(DType::F16).unwrap();

    let unet_config: UNetConfig = config("tiny/unet/config.json");
    let unet = UNet2DConditionModel::new(
        var_builder("tiny/unet/diffusion_pytorch_model.safetensors", DType::F16),
        &unet_config,
    )
    .unwrap();
    let t = r["unet.000.t"].to_dtype(DType::F64).unwrap();
    let out = unet
        .forward(
            &half(&r["unet.000.in"]),
            t.to_scalar::<f64>().unwrap(),
            &half(&r["unet.encoder_hidden_states"]),
        )
        .unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let unet_err = relative_error(&out, &r["unet.000.out"]);

    let vae_config: VaeConfig = config("tiny/vae/config.json");
    let vae = AutoencoderKL::new(
        var_builder("tiny/vae/diffusion_pytorch_model.safetensors", DType::F16),
        &vae_config,
    )
    .unwrap();
    let image = vae.decode(&half(&r["vae_decode.in"])).unwrap();
    let vae_err = relative_error(&image, &r["image_raw"]);

    println!("float16, relative: unet max error {unet_err:e}, vae decode {vae_err:e}");
    assert!(unet_err <= HALF_TOLERANCE, "unet: {unet_err}");
    assert!(vae_err <= HALF_TOLERANCE, "vae: {vae_err}");
    // Not float32 results by accident: half precision does differ.
    assert!(unet_err > 1e-5 && vae_err > 1e-5, "{unet_err} {vae_err}");
}

/// A whole float16 generation: the seed's noise is the float32 noise bit for bit (latents stay
/// float32), and prompt embeddings, final latents and image stay within half precision of
/// diffusers' float32 run.
#[test]
fn a_float16_generation_follows_diffusers() {
    let r = load_fixture("ref/txt2img_euler.safetensors");
    let model = tiny(Precision::Float16, false);
    assert_eq!(model.dtype(), DType::F16);

    let noise = model.initial_noise(42, 64, 64).unwrap();
    assert_eq!(noise.dtype(), DType::F32);
    assert_eq!(max_abs_diff(&noise, &r["init_noise"]), 0.0);

    let context = model
        .condition(PROMPT, "blurry", &ConditioningOptions::new(20))
        .unwrap()
        .context_at(0)
        .unwrap();
    let context_err = relative_error(&context, &r["unet.encoder_hidden_states"]);

    let request = Txt2Img {
        negative_prompt: "blurry".into(),
        steps: 20,
        cfg_scale: 7.5,
        width: 64,
        height: 64,
        sampler: Sampler::Euler,
        schedule: ScheduleKind::Normal,
        ..Txt2Img::new(PROMPT, 42)
    };
    let latents = euler_on_diffusers_schedule(
        &model,
        &request,
        &fixture("tiny/scheduler/scheduler_config.json"),
        &mut |_| {},
    );
    assert_eq!(latents.dtype(), DType::F32);
    let latents_err = relative_error(&latents, &r["final_latents"]);
    let image = model.decode(&latents).unwrap();
    assert_eq!(image.dtype(), DType::F32);
    let image_err = relative_error(&image, &r["image_raw"]);

    println!(
        "float16 generation, relative errors: embeddings {context_err:e}, final latents {latents_err:e}, \
         image {image_err:e}"
    );
    assert!(context_err <= HALF_TOLERANCE, "embeddings: {context_err}");
    assert!(
        latents_err <= HALF_TOLERANCE,
        "final latents: {latents_err}"
    );
    assert!(image_err <= HALF_TOLERANCE, "image: {image_err}");
}

/// SDXL in float16: both text encoders' embeddings (sequence and pooled) and the final latents
/// of diffusers' StableDiffusionXLPipeline run (fixtures/sdxl_pipeline, 4 Euler steps).
#[test]
fn a_float16_sdxl_generation_follows_diffusers() {
    let r = load_fixture("sdxl_pipeline/euler.safetensors");
    let options = LoadOptions {
        device: Device::Cpu,
        precision: Precision::Float16,
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load_with(fixture("tiny-sdxl"), &options).unwrap();
    let request = Txt2Img {
        negative_prompt: "blurry".into(),
        steps: 4,
        cfg_scale: 7.5,
        width: 64,
        height: 64,
        sampler: Sampler::Euler,
        ..Txt2Img::new(PROMPT, 42)
    };
    let c = model
        .condition(PROMPT, "blurry", &ConditioningOptions::new(4))
        .unwrap();
    let embeddings = [
        ("prompt_embeds", c.positive(0, 0)),
        ("negative_prompt_embeds", c.negative(0)),
        ("pooled_prompt_embeds", c.positive_pooled(0, 0)),
        ("negative_pooled_prompt_embeds", c.negative_pooled(0)),
    ];
    for (key, ours) in embeddings {
        let err = relative_error(ours.unwrap(), &r[key]);
        println!("float16 sdxl, relative error: {key} {err:e}");
        assert!(err <= HALF_TOLERANCE, "{key}: {err}");
    }
    let latents = euler_on_diffusers_schedule(
        &model,
        &request,
        &fixture("tiny-sdxl/scheduler/scheduler_config.json"),
        &mut |_| {},
    );
    let latents_err = relative_error(&latents, &r["final_latents"]);
    println!("float16 sdxl, relative error: final latents {latents_err:e}");
    assert!(
        latents_err <= HALF_TOLERANCE,
        "final latents: {latents_err}"
    );
}

#[test]
fn auto_precision_is_float32_on_the_cpu() {
    let model = tiny(Precision::Auto, false);
    assert_eq!(model.dtype(), DType::F32);
}

/// Latents far outside what the VAE was trained on overflow float16 (largest finite value
/// 65504) in its first layers; the float32 VAE decodes them to finite values. The fall-back
/// must give exactly the float32 model's image and keep the VAE in float32 afterwards.
#[test]
fn a_vae_that_overflows_in_float16_decodes_again_in_float32() {
    let latents =
        (load_fixture("ref/txt2img_euler.safetensors")["vae_decode.in"].clone() * 1e5).unwrap();
    let full = tiny(Precision::Float32, false).decode(&latents).unwrap();
    let half_model = tiny(Precision::Float16, false);

    // Without the fall-back the float16 VAE's image is not finite.
    let vae_config: VaeConfig = config("tiny/vae/config.json");
    let half_vae = AutoencoderKL::new(
        var_builder("tiny/vae/diffusion_pytorch_model.safetensors", DType::F16),
        &vae_config,
    )
    .unwrap();
    let z = (&latents / vae_config.scaling_factor).unwrap();
    let overflowed = half_vae.decode(&z.to_dtype(DType::F16).unwrap()).unwrap();
    let sum = overflowed.to_dtype(DType::F32).unwrap().sum_all().unwrap();
    assert!(!sum.to_scalar::<f32>().unwrap().is_finite());

    assert_eq!(
        half_model.networks_on_device(),
        ["text encoder", "unet", "vae"]
    );
    let image = half_model.decode(&latents).unwrap();
    assert_eq!(max_abs_diff(&image, &full), 0.0);
    assert_eq!(
        half_model.networks_on_device(),
        ["text encoder", "unet", "vae (float32)"]
    );
    // Ordinary latents now decode in float32 as well: exactly the float32 model's image.
    let ordinary = load_fixture("ref/txt2img_euler.safetensors")["final_latents"].clone();
    let expected = tiny(Precision::Float32, false).decode(&ordinary).unwrap();
    assert_eq!(
        max_abs_diff(&half_model.decode(&ordinary).unwrap(), &expected),
        0.0
    );
}

/// With free_gpu_mem each stage builds its network and releases the one before: the device
/// holds one network at a time, and the images are the same (SD 1.x and SDXL).
#[test]
fn free_gpu_mem_makes_the_same_image_one_network_at_a_time() {
    let cases: [(&str, &[&str]); 2] = [
        ("tiny", &["text encoder", "unet", "vae"]),
        (
            "tiny-sdxl",
            &["text encoder", "text encoder 2", "unet", "vae"],
        ),
    ];
    for (model, all) in cases {
        let load = |free_gpu_mem| {
            let options = LoadOptions {
                device: Device::Cpu,
                free_gpu_mem,
                ..LoadOptions::default()
            };
            StableDiffusion::load_with(fixture(model), &options).unwrap()
        };
        let request = euler_request("a red apple", 7, 3, (64, 64));
        let (resident, staged) = (load(false), load(true));
        assert_eq!(resident.networks_on_device(), all, "{model}");

        staged
            .condition("a red apple", "", &ConditioningOptions::new(3))
            .unwrap();
        let last_encoder = all[all.len() - 3];
        assert_eq!(staged.networks_on_device(), [last_encoder], "{model}");

        let expected = resident.generate(&request, &mut |_| {}).unwrap();
        let mut stages = Vec::new();
        let generated = staged
            .generate(&request, &mut |_| stages.push(staged.networks_on_device()))
            .unwrap();
        assert_eq!(stages.len(), request.steps, "{model}");
        assert!(
            stages.iter().all(|on_device| on_device == &["unet"]),
            "{model}: {stages:?}"
        );
        assert_eq!(staged.networks_on_device(), ["vae"], "{model}");
        assert_eq!(max_abs_diff(&generated.latents, &expected.latents), 0.0);
        assert_eq!(generated.image, expected.image, "{model}");
        assert_eq!(resident.networks_on_device(), all, "{model}");
    }
}
