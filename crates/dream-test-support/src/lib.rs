//! What Dream's test suites share: where the fixtures are, how tensors are compared, and the
//! tiny model with its usual request.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use dream_core::schedule::{euler_schedule, NoiseSchedule, SchedulerConfig};
use dream_pipeline::conditioning::ConditioningOptions;
use dream_pipeline::image::RgbImage;
use dream_pipeline::sampling::{sample_euler, Denoiser, StepInfo};
use dream_pipeline::{Mask, Sampler, StableDiffusion, Txt2Img};

/// A path inside the workspace's `fixtures/` folder.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// The tiny random SD 1.x model of `fixtures/tiny`.
pub fn tiny_model() -> StableDiffusion {
    StableDiffusion::load(fixture("tiny")).unwrap_or_else(|e| panic!("fixture tiny: {e}"))
}

/// A copy of `fixtures/tiny` in a fresh [`temp_dir`], for tests that change a part of it (the
/// test removes it).
pub fn tiny_copy(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    copy_dir(&fixture("tiny"), &dir);
    dir
}

/// A fresh folder in the system's temporary folder, named after `name`, this process and a
/// counter, so that tests running at once never share one.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dream-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Copies the folder `from` into `to` (made if missing), over any files of the same names.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A render the tiny model does in a moment: `steps` Euler steps at `size` (width, height).
pub fn euler_request(prompt: &str, seed: u32, steps: usize, size: (usize, usize)) -> Txt2Img {
    Txt2Img {
        steps,
        width: size.0,
        height: size.1,
        sampler: Sampler::Euler,
        ..Txt2Img::new(prompt, seed)
    }
}

/// Euler on diffusers' own schedule, as its `EulerDiscreteScheduler` builds it from the
/// `scheduler_config.json` at `scheduler_config` (with its timestep spacing, starting noise and
/// prediction type).
/// diffusers interpolates σ linearly between training timesteps, where k-diffusion (Dream's
/// "normal" schedule, what A1111 and InvokeAI use) interpolates log σ; the sampler is the same,
/// so this runs it on diffusers' schedule. `generate` with Euler is checked against k-diffusion
/// in dream-pipeline's tests/samplers.rs.
pub fn euler_on_diffusers_schedule(
    model: &StableDiffusion,
    request: &Txt2Img,
    scheduler_config: &Path,
    on_step: &mut dyn FnMut(StepInfo<'_>),
) -> Tensor {
    let config = std::fs::read_to_string(scheduler_config).unwrap();
    let config = SchedulerConfig::from_json_str(&config).unwrap();
    let schedule = euler_schedule(&config, request.steps).unwrap();
    let conditioning = model
        .condition(
            &request.prompt,
            &request.negative_prompt,
            &ConditioningOptions::new(request.steps),
        )
        .unwrap();
    let step = Cell::new(0);
    let mut guided = model.guided(&conditioning, request.cfg_scale, &step);
    let noise_schedule = NoiseSchedule::new(&config).unwrap();
    let mut denoiser = Denoiser::new(&mut guided, &noise_schedule, config.prediction_type);
    let noise = model
        .initial_noise(request.seed, request.width, request.height)
        .unwrap();
    let x = (noise * schedule.init_noise_sigma as f64).unwrap();
    sample_euler(&mut denoiser, &schedule, x, &mut |info| {
        on_step(info);
        Ok(())
    })
    .unwrap()
}

/// Every tensor of a safetensors file in `fixtures/`, on the CPU.
pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu)
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The largest absolute elementwise difference, compared in f32; the shapes must agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest absolute difference from `reference`, relative to its largest magnitude (how
/// half-precision results are compared).
pub fn relative_error(value: &Tensor, reference: &Tensor) -> f32 {
    let scale = reference.abs().unwrap().max_all().unwrap();
    max_abs_diff(value, reference) / scale.to_scalar::<f32>().unwrap()
}

/// The largest difference of an image's 8-bit values from a reference's `image_u8` `[H, W, 3]`.
pub fn max_pixel_diff(image: &RgbImage, expected_u8: &Tensor) -> u8 {
    let expected = expected_u8.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(image.pixels.len(), expected.len(), "image sizes differ");
    image
        .pixels
        .iter()
        .zip(&expected)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0)
}

/// A generation against a diffusers reference `r`: its final latents within 1e-4 of the
/// reference's `final_latents`, and their decoded image within 1 of its `image_u8` (a value
/// within the latents' error of a rounding boundary may round the other way). Returns the
/// latents' error.
pub fn check_latents_and_pixels(
    name: &str,
    model: &StableDiffusion,
    latents: &Tensor,
    r: &HashMap<String, Tensor>,
) -> f32 {
    let latents_err = max_abs_diff(latents, &r["final_latents"]);
    let pixel_err = max_pixel_diff(&model.decode_to_image(latents).unwrap(), &r["image_u8"]);
    println!("{name}: final latents differ by {latents_err:.2e}, pixels by {pixel_err}");
    assert!(
        latents_err <= 1e-4,
        "{name}: final latents differ by {latents_err}"
    );
    assert!(pixel_err <= 1, "{name}: pixels differ by {pixel_err}");
    latents_err
}

/// Generates `request` and compares every step's latents with the reference's
/// `step.NNN.latents` and the result with its `final_latents`, all within 1e-4; `steps_run`
/// steps must run (an img2img or inpainting request runs the part its strength asks for).
pub fn check_step_latents(
    name: &str,
    model: &StableDiffusion,
    request: &Txt2Img,
    r: &HashMap<String, Tensor>,
    steps_run: usize,
) {
    let (mut steps, mut step_err) = (0, 0f32);
    let generated = model
        .generate(request, &mut |step| {
            let expected = &r[&format!("step.{:03}.latents", step.step)];
            step_err = step_err.max(max_abs_diff(step.latents, expected));
            steps += 1;
        })
        .unwrap();
    assert_eq!(steps, steps_run, "{name}: steps run");
    let err = max_abs_diff(&generated.latents, &r["final_latents"]);
    println!("{name}: steps {step_err:.2e}, final latents {err:.2e}");
    assert!(
        step_err <= 1e-4,
        "{name}: step latents differ by {step_err}"
    );
    assert!(err <= 1e-4, "{name}: final latents differ by {err}");
}

/// A 64×64 mask that repaints the 24×24 square at x 24..48, y 16..40.
pub fn square_mask() -> Mask {
    let mut mask = Mask::keep_all(64, 64);
    for y in 16..40 {
        for x in 24..48 {
            mask.values[y * 64 + x] = 1.0;
        }
    }
    mask
}

/// Inpainting's promise, A1111's way: every pixel the blurred mask leaves at 0 is the
/// original's, bit for bit (asserted, `name` says which run). Returns how many pixels were kept,
/// and how many of the pixels `mask` repaints fully (1.0) changed.
pub fn check_kept_outside_the_mask(
    name: &str,
    image: &RgbImage,
    original: &RgbImage,
    mask: &Mask,
    blurred: &Mask,
) -> (usize, usize) {
    let pixel = |image: &RgbImage, i: usize| image.pixels[i * 3..i * 3 + 3].to_vec();
    let (mut kept, mut changed) = (0, 0);
    for (i, (&soft, &hard)) in blurred.values.iter().zip(&mask.values).enumerate() {
        if soft == 0.0 {
            assert_eq!(pixel(image, i), pixel(original, i), "{name}: pixel {i}");
            kept += 1;
        } else if hard == 1.0 && pixel(image, i) != pixel(original, i) {
            changed += 1;
        }
    }
    (kept, changed)
}
