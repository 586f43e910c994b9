//! img2img against diffusers' StableDiffusionImg2ImgPipeline (fixtures/ref/img2img_ddim: DDIM,
//! 20 steps, strength 0.6, seed 42, init image fixtures/images/init_64x64.png), and its
//! properties where no reference exists.

use dream_core::rng::TorchGenerator;
use dream_pipeline::image::RgbImage;
use dream_pipeline::sampling::StepInfo;
use dream_pipeline::{DreamError, InitImage, Sampler, ScheduleKind, Txt2Img};
use dream_test_support::{fixture, load_fixture, max_abs_diff, tiny_model};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn init_image(strength: f64) -> InitImage {
    InitImage::open(fixture("images/init_64x64.png"), strength).unwrap()
}

fn request(sampler: Sampler, strength: f64) -> Txt2Img {
    Txt2Img {
        negative_prompt: "blurry".into(),
        steps: 20,
        width: 64,
        height: 64,
        sampler,
        schedule: ScheduleKind::Normal,
        init: Some(init_image(strength)),
        ..Txt2Img::new(PROMPT, 42)
    }
}

#[test]
fn ddim_matches_diffusers() {
    let model = tiny_model();
    let r = load_fixture("ref/img2img_ddim.safetensors");
    let init = init_image(0.6);

    // The PNG reader and the [-1, 1] scaling give diffusers' VAE input exactly.
    let expected_in = r["vae_encode.0.in"].flatten_all().unwrap();
    let expected_in: Vec<f32> = expected_in.to_vec1().unwrap();
    let ours: Vec<f32> = init
        .image
        .pixels
        .iter()
        .map(|&p| p as f32 / 127.5 - 1.0)
        .collect();
    let (h, w) = (64, 64);
    let planar: Vec<f32> = (0..3)
        .flat_map(|c| (0..h * w).map(move |i| (c, i)))
        .map(|(c, i)| ours[i * 3 + c])
        .collect();
    let in_err = planar
        .iter()
        .zip(&expected_in)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(in_err <= 1e-6, "VAE input differs by {in_err}");

    // The posterior draw comes first from the seed's generator.
    let mut generator = TorchGenerator::seeded(42);
    let encoded = model.encode_image(&init.image, &mut generator).unwrap();
    let mean = &r["vae_encode.0.mean"];
    let std = &r["vae_encode.0.std"];
    let expected_latents = ((mean + (std * &r["noise.000"]).unwrap()).unwrap() * 0.18215).unwrap();
    let encode_err = max_abs_diff(&encoded, &expected_latents);
    assert!(encode_err <= 1e-4, "encoded latents differ by {encode_err}");

    let request = request(Sampler::Ddim, 0.6);
    let mut steps_seen = 0;
    let mut step_err = 0f32;
    let generated = model
        .generate(&request, &mut |step: StepInfo<'_>| {
            let expected = &r[&format!("step.{:03}.latents", step.step)];
            let err = max_abs_diff(step.latents, expected);
            assert!(err <= 1e-4, "step {} latents differ by {err}", step.step);
            step_err = step_err.max(err);
            steps_seen += 1;
        })
        .unwrap();
    // int(20 × 0.6) = 12 steps, at timesteps 551 … 1.
    assert_eq!(steps_seen, 12);
    let latents_err = max_abs_diff(&generated.latents, &r["final_latents"]);
    assert!(latents_err <= 1e-4, "final latents differ by {latents_err}");
    let raw_err = max_abs_diff(&model.decode(&generated.latents).unwrap(), &r["image_raw"]);
    assert!(raw_err <= 1e-4, "decoded image differs by {raw_err}");
    println!(
        "img2img ddim: input {in_err:.1e}, encoded {encode_err:.2e}, steps {step_err:.2e}, \
         final {latents_err:.2e}, image_raw {raw_err:.2e}"
    );
}

#[test]
fn latents_init_matches_diffusers() {
    // The first step's input is not reported, so the noised start is checked through the
    // public pieces: init latents noised to timestep 551 with the second draw.
    let model = tiny_model();
    let r = load_fixture("ref/img2img_ddim.safetensors");
    let mut generator = TorchGenerator::seeded(42);
    let encoded = model
        .encode_image(&init_image(0.6).image, &mut generator)
        .unwrap();
    let draws = {
        let mut g = TorchGenerator::seeded(42);
        g.randn(4 * 8 * 8);
        g.randn(4 * 8 * 8)
    };
    let noise =
        candle_core::Tensor::from_vec(draws, (1, 4, 8, 8), &candle_core::Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&noise, &r["init_noise"]), 0.0, "second draw");
    let config = std::fs::read_to_string(fixture("tiny/scheduler/scheduler_config.json")).unwrap();
    let config = dream_core::schedule::SchedulerConfig::from_json_str(&config).unwrap();
    let schedule = dream_core::schedule::NoiseSchedule::new(&config).unwrap();
    let x = dream_pipeline::sampling::noise_to_timestep(&schedule, &encoded, &noise, 551).unwrap();
    let err = max_abs_diff(&x, &r["latents_init"]);
    assert!(err <= 1e-4, "latents_init differs by {err}");
    println!("img2img latents_init: {err:.2e}");
}

#[test]
fn strength_zero_returns_the_encoded_image() {
    let model = tiny_model();
    let mut steps = 0;
    let generated = model
        .generate(&request(Sampler::Euler, 0.0), &mut |_| steps += 1)
        .unwrap();
    assert_eq!(steps, 0);
    let encoded = model
        .encode_image(&init_image(0.0).image, &mut TorchGenerator::seeded(42))
        .unwrap();
    assert_eq!(max_abs_diff(&generated.latents, &encoded), 0.0);
}

#[test]
fn k_sampler_img2img_runs_the_strengths_steps_and_keeps_the_image() {
    let model = tiny_model();
    let encoded = model
        .encode_image(&init_image(0.0).image, &mut TorchGenerator::seeded(42))
        .unwrap();
    let mut distances = Vec::new();
    for strength in [0.3, 0.9] {
        let mut steps = 0;
        let generated = model
            .generate(&request(Sampler::EulerAncestral, strength), &mut |_| {
                steps += 1
            })
            .unwrap();
        assert_eq!(steps, (20.0 * strength) as usize);
        distances.push(max_abs_diff(&generated.latents, &encoded));
    }
    // A low strength stays closer to the init image than a high one.
    assert!(
        distances[0] < distances[1],
        "strength 0.3 moved the latents by {}, 0.9 by {}",
        distances[0],
        distances[1]
    );
}

#[test]
fn strength_one_walks_the_whole_schedule() {
    let model = tiny_model();
    for sampler in [Sampler::Euler, Sampler::Ddim] {
        let mut steps = Vec::new();
        let generated = model
            .generate(&request(sampler, 1.0), &mut |step| {
                steps.push((step.step, step.total_steps))
            })
            .unwrap();
        let expected: Vec<_> = (0..20).map(|i| (i, 20)).collect();
        assert_eq!(steps, expected, "{sampler}");
        let values: Vec<f32> = generated.latents.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{sampler}");
    }
}

#[test]
fn bad_requests_are_refused() {
    let model = tiny_model();
    for strength in [1.5, -0.1, f64::NAN] {
        match model.generate(&request(Sampler::Ddim, strength), &mut |_| {}) {
            Err(DreamError::InvalidRequest(message)) => {
                assert!(message.contains("strength"), "{message}")
            }
            other => panic!("strength {strength}: {other:?}"),
        }
    }
    let mut wrong_size = request(Sampler::Ddim, 0.5);
    wrong_size.width = 128;
    match model.generate(&wrong_size, &mut |_| {}) {
        Err(e @ DreamError::NotSupported(_)) => {
            assert!(e.to_string().contains("resizing init images"), "{e}")
        }
        other => panic!("wrong size: {other:?}"),
    }
}

#[test]
fn unreadable_images_are_refused() {
    let missing = InitImage::open(fixture("images/no_such_image.png"), 0.5).unwrap_err();
    assert!(
        missing.to_string().contains("no_such_image.png"),
        "{missing}"
    );

    let dir = std::env::temp_dir().join(format!("dream-img2img-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.png");
    let mut bytes = std::fs::read(fixture("images/init_64x64.png")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&broken, bytes).unwrap();
    let error = InitImage::open(&broken, 0.5).unwrap_err();
    assert!(
        error.to_string().contains("not a readable image"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn png_colour_types_read_as_rgb() {
    let init = init_image(0.5).image;
    let dir = std::env::temp_dir().join(format!("dream-img2img-png-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, color: png::ColorType, depth: png::BitDepth, data: &[u8]| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut encoder = png::Encoder::new(file, 64, 64);
        encoder.set_color(color);
        encoder.set_depth(depth);
        encoder
            .write_header()
            .unwrap()
            .write_image_data(data)
            .unwrap();
        RgbImage::open(&path).unwrap()
    };
    let rgba: Vec<u8> = init
        .pixels
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 17])
        .collect();
    assert_eq!(
        write(
            "rgba.png",
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            &rgba
        ),
        init
    );
    // 16-bit samples are rounded to 8 bits.
    let rgb16: Vec<u8> = init.pixels.iter().flat_map(|&v| [v, 0x7f]).collect();
    let read16 = write(
        "rgb16.png",
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &rgb16,
    );
    assert_eq!(read16, init);
    let grey: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
    let read_grey = write(
        "grey.png",
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &grey,
    );
    let expected: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
    assert_eq!(read_grey.pixels, expected);
    std::fs::remove_dir_all(&dir).unwrap();
}
