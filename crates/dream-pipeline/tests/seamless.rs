//! Seamless tiling on the tiny model.
//!
//! A seamless image lives on a torus: generating from the initial noise rolled by k latent
//! pixels gives the image rolled by 8k pixels, so its wrap-around seam is an interior pair of
//! columns (rows) of the rolled image and continues exactly as they do. Without seamless the
//! rolled generation differs clearly. The tiny random model paints pixel-scale streaks that
//! make even neighbouring interior columns as different as its two borders, so the edge
//! statistic (wrap-around difference no larger than interior neighbours') is checked too but
//! cannot tell the two apart on this model. (The convolutions' circular padding is checked by
//! hand in dream-models' layers tests.)

use std::cell::Cell;

use candle_core::Tensor;
use dream_core::sampler::ScheduleKind;
use dream_core::schedule::{sigma_schedule, NoiseSchedule, PredictionType, SchedulerConfig};
use dream_pipeline::conditioning::ConditioningOptions;
use dream_pipeline::sampling::{sample_euler, Denoiser};
use dream_pipeline::{Seamless, StableDiffusion, Txt2Img};
use dream_test_support::{euler_request, max_abs_diff, tiny_model};

/// Euler from `noise` (8 steps, CFG 7.5) to the decoded image, `[1, 3, H, W]` in [-1, 1].
fn generate_from(model: &StableDiffusion, noise: &Tensor) -> Tensor {
    let steps = 8;
    let config = SchedulerConfig::sd1();
    let noise_schedule = NoiseSchedule::new(&config).unwrap();
    let schedule = sigma_schedule(&noise_schedule, ScheduleKind::Normal, steps).unwrap();
    let conditioning = model
        .condition("a brick wall", "", &ConditioningOptions::new(steps))
        .unwrap();
    let step = Cell::new(0);
    let mut guided = model.guided(&conditioning, 7.5, &step);
    let mut denoiser = Denoiser::new(&mut guided, &noise_schedule, PredictionType::Epsilon);
    let x = (noise * schedule.sigmas[0] as f64).unwrap();
    let latents = sample_euler(&mut denoiser, &schedule, x, &mut |_| Ok(())).unwrap();
    model.decode(&latents).unwrap()
}

/// Rolls a `[B, C, H, W]` tensor by `by` along width (`dim` 3) or height (2).
fn roll(t: &Tensor, by: i32, dim: usize) -> Tensor {
    t.roll(by, dim).unwrap()
}

/// The tiny UNet downsamples once, so shifts by an even number of latent pixels commute with
/// its strided convolution.
const SHIFT: i32 = 2;

#[test]
fn seamless_generation_is_roll_equivariant() {
    let model = tiny_model();
    let noise = model.initial_noise(5, 64, 64).unwrap();
    let rolled_error = |seamless: Seamless, dim: usize| {
        model.set_seamless(seamless);
        let image = generate_from(&model, &noise);
        let from_rolled = generate_from(&model, &roll(&noise, SHIFT, dim));
        max_abs_diff(&from_rolled, &roll(&image, 8 * SHIFT, dim))
    };
    for dim in [3, 2] {
        let seamless = rolled_error(Seamless::BOTH, dim);
        let plain = rolled_error(Seamless::NONE, dim);
        println!(
            "dim {dim}: rolled generation vs rolled image: seamless {seamless:e}, plain {plain:e}"
        );
        assert!(seamless < 1e-3, "seamless, dim {dim}: {seamless}");
        assert!(plain > 0.05, "plain, dim {dim}: {plain}");
    }
    // Tiling along x only: equivariant to horizontal shifts, not to vertical ones.
    let x_only = Seamless { x: true, y: false };
    let (along_x, along_y) = (rolled_error(x_only, 3), rolled_error(x_only, 2));
    println!("x only: horizontal roll {along_x:e}, vertical roll {along_y:e}");
    assert!(along_x < 1e-3 && along_y > 0.05);
    model.set_seamless(Seamless::NONE);
}

/// The Dream API: a seamless request on the same model leaves the next one untouched, and
/// axes parse as InvokeAI's `--seamless_axes`.
#[test]
fn seamless_is_chosen_per_request() {
    let model = tiny_model();
    let request = euler_request("a brick wall", 3, 3, (64, 64));
    let image = |seamless: Seamless| {
        model
            .generate(
                &Txt2Img {
                    seamless,
                    ..request.clone()
                },
                &mut |_| {},
            )
            .unwrap()
            .image
    };
    let plain = image(Seamless::NONE);
    assert_ne!(image(Seamless::BOTH), plain);
    assert_eq!(image(Seamless::NONE), plain);
    assert_eq!(
        "x".parse::<Seamless>().unwrap(),
        Seamless { x: true, y: false }
    );
    assert_eq!("y, x".parse::<Seamless>().unwrap(), Seamless::BOTH);
    assert!("x,z".parse::<Seamless>().is_err());
}
