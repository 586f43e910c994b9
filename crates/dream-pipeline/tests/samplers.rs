//! Every sampler against its reference implementation: k-diffusion 0.1.1 for the k-samplers,
//! diffusers 0.42.1 schedulers for DDIM, PLMS, UniPC, LCM and DDPM. The fixture
//! fixtures/samplers/tiny_10steps.safetensors (tools/parity/sampler_fixtures.py) holds the final
//! latents of 10 steps on the tiny model, seed 42, for the normal and Karras schedules, with
//! the model read as ε- and as v-prediction.

use std::cell::Cell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use dream_core::rng::TorchGenerator;
use dream_core::sampler::{Sampler, ScheduleKind};
use dream_core::schedule::{
    ddim_timesteps, lcm_timesteps, sigma_schedule, unipc_schedule, NoiseSchedule, PredictionType,
    SchedulerConfig, SigmaSchedule, UniPcOptions, UniPcVariant,
};
use dream_pipeline::conditioning::{ConditioningOptions, PromptConditioning};
use dream_pipeline::sampling::{
    noise_to_timestep, sample_ddim, sample_ddpm, sample_k, sample_lcm, sample_plms, sample_unipc,
    strength_steps, Denoiser, DiscreteModel, GeneratorNoise, Noise, NoiseSource, StepCallback,
    StepInfo, StrengthRule,
};
use dream_pipeline::{DreamError, InitImage, StableDiffusion, Txt2Img};
use dream_test_support::{fixture, load_fixture, max_abs_diff, tiny_copy, tiny_model};

const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry";
const SEED: u32 = 42;
const CFG: f64 = 7.5;
const STEPS: usize = 10;
/// Final latents must agree within 1e-4, or within 4e-6 of the reference's largest value
/// where that is more. The ε-model's latents reach |x| ≈ 70 and CFG 7.5 amplifies every
/// rounding difference: the reference itself moves by up to 1.1e-4 on these cases when its
/// UNet batch [negative, positive] is split into two calls, which changes nothing but the
/// order of float operations.
fn tolerance(reference: &Tensor) -> f32 {
    let largest = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    1e-4f32.max(4e-6 * largest.to_scalar::<f32>().unwrap())
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// The image's generator after it drew the starting noise, and that noise.
fn seeded_noise(seed: u32) -> (TorchGenerator, Tensor) {
    let mut generator = TorchGenerator::seeded(seed as u64);
    let values = generator.randn(4 * 8 * 8);
    let noise = Tensor::from_vec(values, (1, 4, 8, 8), &Device::Cpu).unwrap();
    (generator, noise)
}

/// `sample_ddpm`'s and `sample_lcm`'s signature.
type StochasticSampler = fn(
    &mut DiscreteModel<'_>,
    &[usize],
    Tensor,
    &mut dyn NoiseSource,
    &mut StepCallback<'_>,
) -> candle_core::Result<Tensor>;

/// A stochastic discrete sampler (DDPM, LCM) over `timesteps` from [`seeded_noise`], whose
/// generator then draws the per-step noise, as diffusers' pipelines share one generator.
fn run_seeded(
    sampler: StochasticSampler,
    model: &mut DiscreteModel<'_>,
    timesteps: &[usize],
) -> Tensor {
    let (generator, noise) = seeded_noise(SEED);
    let mut source = GeneratorNoise::new(generator);
    sampler(model, timesteps, noise, &mut source, &mut no_progress()).unwrap()
}

/// Replays the noise the reference's Brownian tree gave, in call order.
struct RecordedNoise {
    draws: Vec<Tensor>,
    used: usize,
}

impl RecordedNoise {
    /// From the reference's [draws, 1, 4, h, w] tensor.
    fn new(draws: &Tensor) -> Self {
        let count = draws.dim(0).unwrap();
        RecordedNoise {
            draws: (0..count).map(|i| draws.get(i).unwrap()).collect(),
            used: 0,
        }
    }
}

impl NoiseSource for RecordedNoise {
    fn noise(&mut self, _: f64, _: f64, like: &Tensor) -> candle_core::Result<Tensor> {
        let draw = self
            .draws
            .get(self.used)
            .unwrap_or_else(|| panic!("the sampler asked for more than {} draws", self.used));
        self.used += 1;
        assert_eq!(draw.dims(), like.dims());
        Ok(draw.clone())
    }
}

struct Setup {
    model: StableDiffusion,
    config: SchedulerConfig,
    conditioning: PromptConditioning,
    schedule: NoiseSchedule,
    reference: HashMap<String, Tensor>,
}

impl Setup {
    fn new() -> Self {
        let model = tiny_model();
        let conditioning = model
            .condition(PROMPT, NEGATIVE, &ConditioningOptions::new(STEPS))
            .unwrap();
        let config = std::fs::read_to_string(fixture("tiny/scheduler/scheduler_config.json"));
        let config = SchedulerConfig::from_json_str(&config.unwrap()).unwrap();
        let schedule = NoiseSchedule::new(&config).unwrap();
        let reference = load_fixture("samplers/tiny_10steps.safetensors");
        let (_, noise) = seeded_noise(SEED);
        assert_eq!(max_abs_diff(&noise, &reference["init_noise"]), 0.0);
        Setup {
            model,
            config,
            conditioning,
            schedule,
            reference,
        }
    }

    /// Our schedule of `kind`, checked against the σ the reference walked. k-diffusion
    /// computes them in f32 and so do we, but with other rounding; they agree to 1e-6.
    fn sigma_schedule(&self, kind: ScheduleKind) -> SigmaSchedule {
        let schedule = sigma_schedule(&self.schedule, kind, STEPS).unwrap();
        let name = kind.name();
        let reference = f32s(&self.reference[&format!("sigmas.{name}")]);
        let reference_t = f32s(&self.reference[&format!("timesteps.{name}")]);
        assert_close(
            &format!("{name} sigmas"),
            &schedule.sigmas,
            &reference,
            1e-6,
        );
        assert_close(
            &format!("{name} timesteps"),
            &schedule.timesteps,
            &reference_t,
            1e-6,
        );
        schedule
    }

    /// Runs `run` on the guided tiny model read as each prediction type the references cover.
    fn for_each_prediction(&self, mut run: impl FnMut(&str, &mut DiscreteModel<'_>)) {
        for prediction in ["eps", "v"] {
            let step = Cell::new(0);
            let mut guided = self.model.guided(&self.conditioning, CFG, &step);
            let mut model = DiscreteModel {
                model: &mut guided,
                schedule: &self.schedule,
                prediction: prediction_of(prediction),
                clip_sample: None,
            };
            run(prediction, &mut model);
        }
    }

    fn check(&self, case: &str, latents: &Tensor, errors: &mut Vec<(String, f32, f32)>) {
        let expected = &self.reference[&format!("{case}.latents")];
        errors.push((
            case.to_string(),
            max_abs_diff(latents, expected),
            tolerance(expected),
        ));
    }
}

fn assert_close(what: &str, ours: &[f32], reference: &[f32], relative: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= relative * b.abs(),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

fn prediction_of(name: &str) -> PredictionType {
    match name {
        "eps" => PredictionType::Epsilon,
        _ => PredictionType::VPrediction,
    }
}

fn no_progress() -> impl FnMut(StepInfo<'_>) -> candle_core::Result<()> {
    |_| Ok(())
}

fn assert_all_within(errors: &[(String, f32, f32)]) {
    for (case, err, tolerance) in errors {
        println!("{case:40} max abs error {err:.2e} (tolerance {tolerance:.1e})");
    }
    // A NaN error counts as over.
    let bad: Vec<_> = errors
        .iter()
        .filter(|(_, e, t)| e.is_nan() || e > t)
        .collect();
    assert!(bad.is_empty(), "over tolerance: {bad:?}");
}

const K_SAMPLERS: [(Sampler, &str); 11] = [
    (Sampler::Euler, "euler"),
    (Sampler::EulerAncestral, "euler_ancestral"),
    (Sampler::Heun, "heun"),
    (Sampler::Dpm2, "dpm_2"),
    (Sampler::Dpm2Ancestral, "dpm_2_ancestral"),
    (Sampler::Lms, "lms"),
    (Sampler::DpmPp2SAncestral, "dpmpp_2s_ancestral"),
    (Sampler::DpmPpSde, "dpmpp_sde"),
    (Sampler::DpmPp2M, "dpmpp_2m"),
    (Sampler::DpmPp2MSde, "dpmpp_2m_sde"),
    (Sampler::DpmPp3MSde, "dpmpp_3m_sde"),
];

#[test]
fn k_samplers_match_k_diffusion() {
    let setup = Setup::new();
    let mut errors = Vec::new();
    for prediction in ["eps", "v"] {
        for kind in [ScheduleKind::Normal, ScheduleKind::Karras] {
            let schedule = setup.sigma_schedule(kind);
            for (sampler, name) in K_SAMPLERS {
                let case = format!("{prediction}.{name}.{}", kind.name());
                let (generator, noise) = seeded_noise(SEED);
                let mut recorded = sampler
                    .is_sde()
                    .then(|| RecordedNoise::new(&setup.reference[&format!("{case}.noise")]));
                let mut from_generator = GeneratorNoise::new(generator);
                let source: &mut dyn NoiseSource = match recorded.as_mut() {
                    Some(recorded) => recorded,
                    None => &mut from_generator,
                };
                let step = Cell::new(0);
                let mut guided = setup.model.guided(&setup.conditioning, CFG, &step);
                let mut denoiser =
                    Denoiser::new(&mut guided, &setup.schedule, prediction_of(prediction));
                let x = (noise * schedule.sigmas[0] as f64).unwrap();
                let latents = sample_k(
                    sampler,
                    &mut denoiser,
                    &schedule,
                    x,
                    &mut Noise::new(source),
                    &mut no_progress(),
                )
                .unwrap();
                if let Some(recorded) = &recorded {
                    assert_eq!(recorded.used, recorded.draws.len(), "{case}: noise draws");
                }
                setup.check(&case, &latents, &mut errors);
            }
        }
    }
    assert_all_within(&errors);
}

#[test]
fn discrete_samplers_match_diffusers() {
    let setup = Setup::new();
    let config = &setup.config;
    let mut errors = Vec::new();
    setup.for_each_prediction(|prediction, model| {
        let reference_timesteps = |case: &str| -> Vec<f32> {
            f32s(&setup.reference[&format!("{prediction}.{case}.timesteps")])
        };
        let as_f32 = |timesteps: &[usize]| timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>();
        let timesteps = ddim_timesteps(config, STEPS).unwrap();
        for case in ["ddim.normal", "ddim_eta1.normal", "ddpm.normal"] {
            assert_eq!(as_f32(&timesteps), reference_timesteps(case), "{case}");
        }
        // PNDM lists its first step's second model call as a timestep of its own.
        let mut plms_timesteps = reference_timesteps("plms.normal");
        plms_timesteps.dedup();
        assert_eq!(as_f32(&timesteps), plms_timesteps);

        for (case, eta) in [("ddim.normal", 0.0), ("ddim_eta1.normal", 1.0)] {
            let (generator, noise) = seeded_noise(SEED);
            let mut source = GeneratorNoise::new(generator);
            let mut noise_options = Noise {
                eta,
                ..Noise::new(&mut source)
            };
            let latents = sample_ddim(
                model,
                &timesteps,
                STEPS,
                noise,
                &mut noise_options,
                &mut no_progress(),
            );
            setup.check(
                &format!("{prediction}.{case}"),
                &latents.unwrap(),
                &mut errors,
            );
        }

        let (_, noise) = seeded_noise(SEED);
        let latents = sample_plms(model, &timesteps, STEPS, noise, &mut no_progress());
        setup.check(
            &format!("{prediction}.plms.normal"),
            &latents.unwrap(),
            &mut errors,
        );

        let latents = run_seeded(sample_ddpm, model, &timesteps);
        setup.check(&format!("{prediction}.ddpm.normal"), &latents, &mut errors);

        let lcm_timesteps = lcm_timesteps(config, STEPS).unwrap();
        assert_eq!(as_f32(&lcm_timesteps), reference_timesteps("lcm.normal"));
        let latents = run_seeded(sample_lcm, model, &lcm_timesteps);
        setup.check(&format!("{prediction}.lcm.normal"), &latents, &mut errors);

        for kind in [ScheduleKind::Normal, ScheduleKind::Karras] {
            let case = format!("{prediction}.unipc.{}", kind.name());
            let schedule = unipc_schedule(config, kind, STEPS).unwrap();
            assert_eq!(
                schedule.timesteps,
                reference_timesteps(&format!("unipc.{}", kind.name()))
            );
            let reference_sigmas = f32s(&setup.reference[&format!("{case}.sigmas")]);
            assert_close(&case, &schedule.sigmas, &reference_sigmas, 1e-6);
            let (_, noise) = seeded_noise(SEED);
            let options = UniPcOptions::default();
            let latents = sample_unipc(model, &schedule, &options, noise, &mut no_progress());
            setup.check(&case, &latents.unwrap(), &mut errors);
        }

        let (_, noise) = seeded_noise(SEED);
        let clipping = SchedulerConfig {
            clip_sample: Some(true),
            ..config.clone()
        };
        model.clip_sample = clipping.clip_range(true);
        assert_eq!(model.clip_sample, Some(1.0));
        let case = format!("{prediction}.ddim_clip.normal");
        let mut source = GeneratorNoise::new(TorchGenerator::seeded(0));
        let latents = sample_ddim(
            model,
            &timesteps,
            STEPS,
            noise,
            &mut Noise {
                eta: 0.0,
                ..Noise::new(&mut source)
            },
            &mut no_progress(),
        )
        .unwrap();
        // Clipping keeps these latents near 1 while the ε-model's ε (left unclipped, as
        // diffusers does) reaches hundreds: the result is a difference of large terms. The
        // reference itself moves by 1.1e-4 between f32 and f64 on the ε case.
        let expected = &setup.reference[&format!("{case}.latents")];
        let limit = match prediction {
            "eps" => 4e-4,
            _ => tolerance(expected),
        };
        errors.push((case, max_abs_diff(&latents, expected), limit));
        // DDPM and LCM clip the same x₀ estimate.
        let latents = run_seeded(sample_ddpm, model, &timesteps);
        setup.check(
            &format!("{prediction}.ddpm_clip.normal"),
            &latents,
            &mut errors,
        );
        let latents = run_seeded(sample_lcm, model, &lcm_timesteps);
        setup.check(
            &format!("{prediction}.lcm_clip.normal"),
            &latents,
            &mut errors,
        );
        model.clip_sample = None;

        let original_30 = SchedulerConfig {
            original_inference_steps: 30,
            ..config.clone()
        };
        let timesteps_30 = dream_core::schedule::lcm_timesteps(&original_30, STEPS).unwrap();
        assert_eq!(
            as_f32(&timesteps_30),
            reference_timesteps("lcm_original30.normal")
        );
        let latents = run_seeded(sample_lcm, model, &timesteps_30);
        setup.check(
            &format!("{prediction}.lcm_original30.normal"),
            &latents,
            &mut errors,
        );
    });
    assert_all_within(&errors);
}

/// UniPC's orders and variants against diffusers' `UniPCMultistepScheduler` with the same
/// options. diffusers ends bh1 and ε-prediction runs in NaN (its last step to σ = 0 multiplies
/// infinities by zero); for those the latents before the last step are compared, and the last
/// step must land on the x₀ estimate, the limit of its update.
#[test]
fn unipc_orders_and_variants_match_diffusers() {
    let setup = Setup::new();
    let schedule = unipc_schedule(&setup.config, ScheduleKind::Normal, STEPS).unwrap();
    let options = |order, variant, predict_x0| UniPcOptions {
        order,
        variant,
        predict_x0,
        lower_order_final: true,
    };
    let cases = [
        ("unipc.normal", options(2, UniPcVariant::Bh2, true)),
        ("unipc_order1.normal", options(1, UniPcVariant::Bh2, true)),
        ("unipc_order3.normal", options(3, UniPcVariant::Bh2, true)),
        ("unipc_bh1.normal", options(2, UniPcVariant::Bh1, true)),
        (
            "unipc_bh1_order3.normal",
            options(3, UniPcVariant::Bh1, true),
        ),
        ("unipc_noise.normal", options(2, UniPcVariant::Bh2, false)),
    ];
    let mut errors = Vec::new();
    setup.for_each_prediction(|prediction, model| {
        for (name, options) in cases {
            let case = format!("{prediction}.{name}");
            let (_, noise) = seeded_noise(SEED);
            let mut before_last = None;
            let mut last_estimate = None;
            let latents = sample_unipc(model, &schedule, &options, noise, &mut |info| {
                if info.step == STEPS - 2 {
                    before_last = Some(info.latents.clone());
                }
                last_estimate = info.denoised.cloned();
                Ok(())
            })
            .unwrap();
            let expected = &setup.reference[&format!("{case}.latents_before_last")];
            errors.push((
                format!("{case} before the last step"),
                max_abs_diff(&before_last.unwrap(), expected),
                tolerance(expected),
            ));
            let reference_final = &setup.reference[&format!("{case}.latents")];
            let reference_is_nan = f32s(&reference_final.flatten_all().unwrap())[0].is_nan();
            if reference_is_nan {
                assert_eq!(
                    max_abs_diff(&latents, &last_estimate.unwrap()),
                    0.0,
                    "{case}"
                );
            } else {
                setup.check(&case, &latents, &mut errors);
            }
        }
    });
    assert_all_within(&errors);
}

fn request(sampler: Sampler, schedule: ScheduleKind, seed: u32) -> Txt2Img {
    Txt2Img {
        prompt: PROMPT.into(),
        negative_prompt: NEGATIVE.into(),
        steps: STEPS,
        cfg_scale: CFG,
        width: 64,
        height: 64,
        seed,
        sampler,
        schedule,
        ..Txt2Img::new(PROMPT, seed)
    }
}

/// `generate` picks the sampler, schedule and noise source itself: the image's own generator
/// for step noise, as the references drew it.
#[test]
fn generate_runs_every_sampler_like_its_reference() {
    let setup = Setup::new();
    let cases = K_SAMPLERS
        .iter()
        .filter(|(sampler, _)| !sampler.is_sde())
        .flat_map(|&(sampler, name)| {
            [ScheduleKind::Normal, ScheduleKind::Karras]
                .map(|kind| (sampler, kind, format!("eps.{name}.{}", kind.name())))
        })
        .chain([
            (
                Sampler::Ddim,
                ScheduleKind::Normal,
                "eps.ddim.normal".into(),
            ),
            (
                Sampler::Plms,
                ScheduleKind::Normal,
                "eps.plms.normal".into(),
            ),
            (
                Sampler::Ddpm,
                ScheduleKind::Normal,
                "eps.ddpm.normal".into(),
            ),
            (Sampler::Lcm, ScheduleKind::Normal, "eps.lcm.normal".into()),
            (
                Sampler::UniPc,
                ScheduleKind::Karras,
                "eps.unipc.karras".into(),
            ),
        ]);
    let mut errors = Vec::new();
    for (sampler, kind, case) in cases {
        let mut steps_seen = 0;
        let mut previews = 0;
        let generated = setup
            .model
            .generate(&request(sampler, kind, SEED), &mut |step| {
                assert_eq!(step.total_steps, STEPS);
                steps_seen += 1;
                previews += step.denoised.is_some() as usize;
            })
            .unwrap();
        assert_eq!(steps_seen, STEPS, "{case}");
        assert_eq!(previews, STEPS, "{case}: every step has an x0 estimate");
        setup.check(&case, &generated.latents, &mut errors);
    }
    assert_all_within(&errors);
}

/// CFG rescale, InvokeAI's `--threshold` and A1111's discarded penultimate σ, set on the
/// request, against references that apply them to the same runs: diffusers'
/// `rescale_noise_cfg` (φ 0.7) with k-diffusion Euler and diffusers' DDIM, InvokeAI 2.3's
/// thresholding `CFGDenoiser` (threshold 1.5) with Euler and Heun, and A1111's
/// `get_sigmas(steps + 1)` less its next-to-last σ with DPM2.
#[test]
fn guidance_extras_match_their_references() {
    let setup = Setup::new();
    let with = |sampler, kind, change: &dyn Fn(&mut Txt2Img)| {
        let mut request = request(sampler, kind, SEED);
        change(&mut request);
        request
    };
    let rescale = |r: &mut Txt2Img| r.guidance_rescale = 0.7;
    let threshold = |r: &mut Txt2Img| r.threshold = Some(1.5);
    let discard = |r: &mut Txt2Img| r.discard_penultimate_sigma = true;
    let cases = [
        (
            "eps.rescale.euler.normal",
            with(Sampler::Euler, ScheduleKind::Normal, &rescale),
        ),
        (
            "eps.rescale.ddim.normal",
            with(Sampler::Ddim, ScheduleKind::Normal, &rescale),
        ),
        (
            "eps.threshold.euler.karras",
            with(Sampler::Euler, ScheduleKind::Karras, &threshold),
        ),
        (
            "eps.threshold.heun.normal",
            with(Sampler::Heun, ScheduleKind::Normal, &threshold),
        ),
        (
            "eps.discard.dpm_2.karras",
            with(Sampler::Dpm2, ScheduleKind::Karras, &discard),
        ),
    ];
    let mut errors = Vec::new();
    for (case, request) in cases {
        let generated = setup.model.generate(&request, &mut |_| {}).unwrap();
        setup.check(case, &generated.latents, &mut errors);
    }
    // The extras change the image: none of these equals the plain run.
    for (case, plain) in [
        ("eps.rescale.euler.normal", "eps.euler.normal"),
        ("eps.threshold.euler.karras", "eps.euler.karras"),
        ("eps.discard.dpm_2.karras", "eps.dpm_2.karras"),
    ] {
        let difference = max_abs_diff(
            &setup.reference[&format!("{case}.latents")],
            &setup.reference[&format!("{plain}.latents")],
        );
        assert!(difference > 0.1, "{case} vs {plain}: {difference}");
    }
    let discarded = sigma_schedule(&setup.schedule, ScheduleKind::Karras, STEPS + 1)
        .unwrap()
        .discard_next_to_last_sigma();
    let reference = f32s(&setup.reference["eps.discard.dpm_2.karras.sigmas"]);
    assert_close("discarded sigmas", &discarded.sigmas, &reference, 1e-6);
    assert_all_within(&errors);

    // Threshold is InvokeAI's, for its k-diffusion samplers only; A1111 discards σ only there.
    for change in [&threshold as &dyn Fn(&mut Txt2Img), &discard] {
        match setup.model.generate(
            &with(Sampler::Ddim, ScheduleKind::Normal, change),
            &mut |_| {},
        ) {
            Err(DreamError::NotSupported(message)) => assert!(message.contains("ddim")),
            other => panic!("{other:?}"),
        }
    }
    for (change, field) in [
        (
            &(|r: &mut Txt2Img| r.guidance_rescale = 1.5) as &dyn Fn(&mut Txt2Img),
            "rescale",
        ),
        (&|r: &mut Txt2Img| r.threshold = Some(-1.0), "threshold"),
        (&|r: &mut Txt2Img| r.threshold = Some(f64::NAN), "threshold"),
    ] {
        match setup.model.generate(
            &with(Sampler::Euler, ScheduleKind::Normal, change),
            &mut |_| {},
        ) {
            Err(DreamError::InvalidRequest(message)) => {
                assert!(message.contains(field), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// UniPC and LCM img2img against diffusers' img2img pipeline with `UniPCMultistepScheduler`
/// and `LCMScheduler` (fixtures/ref/img2img_{unipc,lcm}.safetensors, strength 0.6 of 20 steps):
/// the last 12 steps of the schedule from the VAE latents noised to its 9th step, LCM's step
/// noise continuing the seed's generator; every step's latents compared.
#[test]
fn unipc_and_lcm_img2img_match_diffusers() {
    let model = tiny_model();
    let mut errors = Vec::new();
    for (sampler, name) in [(Sampler::UniPc, "unipc"), (Sampler::Lcm, "lcm")] {
        let r = load_fixture(&format!("ref/img2img_{name}.safetensors"));
        let request = Txt2Img {
            negative_prompt: NEGATIVE.into(),
            steps: 20,
            width: 64,
            height: 64,
            sampler,
            schedule: ScheduleKind::Normal,
            init: Some(InitImage::open(fixture("images/init_64x64.png"), 0.6).unwrap()),
            ..Txt2Img::new(PROMPT, SEED)
        };
        let mut steps = 0;
        let generated = model
            .generate(&request, &mut |step| {
                let expected = &r[&format!("step.{:03}.latents", step.step)];
                errors.push((
                    format!("{name} step {}", step.step),
                    max_abs_diff(step.latents, expected),
                    tolerance(expected),
                ));
                steps += 1;
            })
            .unwrap();
        // int(20 × 0.6) = 12 steps.
        assert_eq!(steps, 12, "{name}");
        let expected = &r["final_latents"];
        errors.push((
            format!("{name} final latents"),
            max_abs_diff(&generated.latents, expected),
            tolerance(expected),
        ));
    }
    assert_all_within(&errors);
}

/// The sampler options go into the image's metadata as A1111 and InvokeAI record them:
/// A1111's `Eta`/`Eta DDIM`, `Sigma noise`, `Discard penultimate sigma` (only where A1111
/// would not discard by itself) and the CFG Rescale extension's key; InvokeAI's `--threshold`
/// and `threshold`. Defaults are not written.
#[test]
fn sampler_options_are_recorded_as_a1111_and_invokeai_do() {
    let model = tiny_model();
    let generate = |change: &dyn Fn(&mut Txt2Img)| {
        let mut request = request(Sampler::EulerAncestral, ScheduleKind::Karras, SEED);
        request.steps = 2;
        change(&mut request);
        model.generate(&request, &mut |_| {}).unwrap()
    };
    let plain = generate(&|_| {});
    let a1111 = plain.a1111_parameters("tiny");
    for key in ["Eta", "Sigma noise", "Discard", "CFG Rescale"] {
        assert!(!a1111.contains(key), "{a1111}");
    }
    let (dream, sd_metadata) = plain.invokeai_metadata("tiny");
    assert!(!dream.contains("--threshold"), "{dream}");
    assert!(sd_metadata.contains(r#""threshold":0.0"#), "{sd_metadata}");

    let extras = generate(&|r| {
        r.eta = Some(0.5);
        r.s_noise = 1.003;
        r.threshold = Some(1.5);
        r.guidance_rescale = 0.7;
        r.discard_penultimate_sigma = true;
    });
    let a1111 = extras.a1111_parameters("tiny");
    assert!(
        a1111.contains(
            "Eta: 0.5, Sigma noise: 1.003, CFG Rescale: 0.7, Discard penultimate sigma: True"
        ),
        "{a1111}"
    );
    let (dream, sd_metadata) = extras.invokeai_metadata("tiny");
    assert!(dream.contains(" --threshold 1.5 -A k_euler_a"), "{dream}");
    assert!(sd_metadata.contains(r#""threshold":1.5"#), "{sd_metadata}");
    assert!(
        sd_metadata.contains(r#""cfg_rescale_multiplier":0.7,"eta":0.5,"s_noise":1.003"#),
        "{sd_metadata}"
    );

    // DDIM's default η is 0 and A1111 calls it `Eta DDIM`; A1111 discards by itself for DPM2.
    let ddim = generate(&|r| {
        r.sampler = Sampler::Ddim;
        r.eta = Some(0.5);
    });
    assert!(ddim.a1111_parameters("tiny").contains("Eta DDIM: 0.5"));
    let ddim_default = generate(&|r| {
        r.sampler = Sampler::Ddim;
        r.eta = Some(0.0);
    });
    assert!(!ddim_default.a1111_parameters("tiny").contains("Eta"));
    let dpm_2 = generate(&|r| {
        r.sampler = Sampler::Dpm2;
        r.discard_penultimate_sigma = true;
    });
    assert!(!dpm_2.a1111_parameters("tiny").contains("Discard"));
}

/// A copy of the tiny model whose scheduler_config.json has `extra` keys added.
fn tiny_with_scheduler_keys(name: &str, extra: &str) -> std::path::PathBuf {
    let dir = tiny_copy(name);
    let config_path = dir.join("scheduler/scheduler_config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = config.trim_end().trim_end_matches('}').to_string() + "," + extra + "}";
    std::fs::write(config_path, config).unwrap();
    dir
}

/// Scheduler options Dream does not implement are refused by name, never ignored: dynamic
/// thresholding (DDIM, DDPM, LCM and UniPC would apply it; PNDM has none) and UniPC without
/// `lower_order_final` (its step to σ = 0 has no finite coefficients).
#[test]
fn unbuilt_scheduler_options_are_refused() {
    let generate = |dir: &std::path::Path, sampler| {
        let model = StableDiffusion::load(dir).unwrap();
        let mut request = request(sampler, ScheduleKind::Normal, SEED);
        request.steps = 2;
        model.generate(&request, &mut |_| {})
    };
    let thresholding = tiny_with_scheduler_keys("thresholding", r#""thresholding": true"#);
    for sampler in [Sampler::Ddim, Sampler::Ddpm, Sampler::Lcm, Sampler::UniPc] {
        match generate(&thresholding, sampler) {
            Err(DreamError::NotSupported(message)) => {
                assert!(message.contains("thresholding"), "{sampler}: {message}")
            }
            other => panic!("{sampler}: {other:?}"),
        }
    }
    assert!(generate(&thresholding, Sampler::Plms).is_ok());
    let full_order = tiny_with_scheduler_keys("full-order", r#""lower_order_final": false"#);
    match generate(&full_order, Sampler::UniPc) {
        Err(DreamError::NotSupported(message)) => {
            assert!(message.contains("lower_order_final"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(thresholding).unwrap();
    std::fs::remove_dir_all(full_order).unwrap();
}

/// The SDE samplers draw from a Brownian motion seeded with the image's seed: the same seed
/// gives the same image, another seed another one.
#[test]
fn sde_samplers_are_seeded() {
    let model = tiny_model();
    for sampler in [Sampler::DpmPpSde, Sampler::DpmPp2MSde, Sampler::DpmPp3MSde] {
        let latents = |seed| {
            let mut request = request(sampler, ScheduleKind::Karras, seed);
            request.steps = 4;
            let mut previews = 0;
            let generated = model.generate(&request, &mut |step| {
                previews += step.denoised.is_some() as usize;
            });
            assert_eq!(previews, 4, "{sampler}: every step has an x0 estimate");
            generated.unwrap().latents
        };
        let first = latents(SEED);
        assert_eq!(max_abs_diff(&first, &latents(SEED)), 0.0, "{sampler}");
        // Not only the starting noise changes: the Brownian motion does too.
        assert!(max_abs_diff(&first, &latents(SEED + 1)) > 0.1, "{sampler}");
    }
}

/// A batch of seeds S, S+1, S+2 is three images, each with its own generator: equal to the
/// reference that sampled the three as one tensor, A1111's CPU RNG way.
#[test]
fn a_batch_gives_the_images_of_single_runs() {
    let setup = Setup::new();
    let batch = &setup.reference["batch.euler_ancestral.normal.latents"];
    let mut errors = Vec::new();
    for k in 0..3 {
        let request = request(Sampler::EulerAncestral, ScheduleKind::Normal, SEED + k);
        let generated = setup.model.generate(&request, &mut |_| {}).unwrap();
        let expected = batch.narrow(0, k as usize, 1).unwrap();
        errors.push((
            format!("batch image {k}"),
            max_abs_diff(&generated.latents, &expected),
            tolerance(&expected),
        ));
    }
    assert_all_within(&errors);
}

/// img2img's entry point against diffusers' DDIM img2img reference (fixtures/ref, strength
/// 0.6 of 20 steps): InvokeAI's rule starts at timestep 551, where the VAE latents are noised
/// as `add_noise` does.
#[test]
fn img2img_starts_where_diffusers_does() {
    let r = candle_core::safetensors::load(fixture("ref/img2img_ddim.safetensors"), &Device::Cpu)
        .unwrap();
    let config = std::fs::read_to_string(fixture("tiny/scheduler/scheduler_config.json"));
    let config = SchedulerConfig::from_json_str(&config.unwrap()).unwrap();
    let steps = strength_steps(20, 0.6, StrengthRule::InvokeAi).unwrap();
    assert_eq!(steps.steps_run(), 12);
    let timesteps = ddim_timesteps(&config, steps.schedule_steps).unwrap();
    let t = timesteps[steps.first_step];
    assert_eq!(t, 551);
    let sample =
        (&r["vae_encode.0.mean"] + (&r["vae_encode.0.std"] * &r["noise.000"]).unwrap()).unwrap();
    let init = (sample * 0.18215).unwrap();
    let noise_schedule = NoiseSchedule::new(&config).unwrap();
    let x = noise_to_timestep(&noise_schedule, &init, &r["init_noise"], t).unwrap();
    let err = max_abs_diff(&x, &r["latents_init"]);
    assert!(err <= 1e-5, "noised init latents differ by {err}");
}
