//! img2img's strength rules: how many steps run, by InvokeAI's and diffusers' rule and by
//! A1111's, and that a request runs the steps its rule gives.

use dream_pipeline::sampling::{strength_steps, StrengthRule, StrengthSteps};
use dream_pipeline::{DreamError, InitImage, Sampler, ScheduleKind, Txt2Img};
use dream_test_support::{fixture, tiny_model};

/// diffusers' `get_timesteps` (InvokeAI 2.x's img2img runs `int(strength × steps)` steps
/// too): `init_timestep = min(int(steps * strength), steps)`, `t_start = steps - init_timestep`.
fn diffusers_first_step(steps: usize, strength: f64) -> usize {
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    steps - init_timestep
}

/// A1111's `setup_img2img_steps` without `img2img_fix_steps`:
/// `t_enc = int(min(denoising_strength, 0.999) * steps)`, and `sample_img2img` walks
/// `sigmas[steps - t_enc - 1:]`.
fn a1111_first_step(steps: usize, strength: f64) -> usize {
    let t_enc = (strength.min(0.999) * steps as f64) as usize;
    steps - t_enc - 1
}

#[test]
fn both_rules_follow_their_tools_formulas() {
    for steps in [1, 2, 3, 7, 10, 20, 25, 30, 50, 150] {
        for hundredths in (0..=100).step_by(5) {
            let strength = f64::from(hundredths) / 100.0;
            for (rule, first_step) in [
                (
                    StrengthRule::InvokeAi,
                    diffusers_first_step(steps, strength),
                ),
                (StrengthRule::A1111, a1111_first_step(steps, strength)),
            ] {
                assert_eq!(
                    strength_steps(steps, strength, rule).unwrap(),
                    StrengthSteps {
                        schedule_steps: steps,
                        first_step
                    },
                    "{steps} steps at strength {strength}, {rule:?}"
                );
            }
        }
    }
    // Worked by hand: 0.6 × 20 = 12 steps run (InvokeAI), 12 + 1 = 13 (A1111); 0.29 × 100 is
    // 28.999999999999996 in floating point, which both tools truncate to 28.
    let run = |steps, strength, rule| strength_steps(steps, strength, rule).unwrap().steps_run();
    assert_eq!(run(20, 0.6, StrengthRule::InvokeAi), 12);
    assert_eq!(run(20, 0.6, StrengthRule::A1111), 13);
    assert_eq!(run(100, 0.29, StrengthRule::InvokeAi), 28);
    assert_eq!(run(100, 0.29, StrengthRule::A1111), 29);
    // Strength 1 runs every step under both; A1111 runs one step even at strength 0.
    assert_eq!(run(50, 1.0, StrengthRule::A1111), 50);
    assert_eq!(run(50, 0.0, StrengthRule::A1111), 1);
    assert_eq!(run(50, 0.0, StrengthRule::InvokeAi), 0);
}

fn img2img(strength: f64, rule: StrengthRule) -> Txt2Img {
    Txt2Img {
        steps: 4,
        width: 64,
        height: 64,
        sampler: Sampler::Euler,
        schedule: ScheduleKind::Normal,
        init: Some(InitImage::open(fixture("images/init_64x64.png"), strength).unwrap()),
        strength_rule: rule,
        ..Txt2Img::new("a red apple", 42)
    }
}

#[test]
fn a_request_runs_the_steps_of_its_rule() {
    let model = tiny_model();
    let steps_run = |request: &Txt2Img| {
        let mut steps = 0;
        let generated = model.generate(request, &mut |_| steps += 1).unwrap();
        (generated.latents, steps)
    };
    // A1111 at 0.6 of 4 steps: int(2.4) + 1 = 3 steps from σ index 1, the same start as
    // InvokeAI's int(0.75 × 4) = 3, so the same latents; InvokeAI's 0.6 runs 2 steps.
    let (a1111, a1111_steps) = steps_run(&img2img(0.6, StrengthRule::A1111));
    let (invokeai, invokeai_steps) = steps_run(&img2img(0.75, StrengthRule::InvokeAi));
    let (fewer, fewer_steps) = steps_run(&img2img(0.6, StrengthRule::InvokeAi));
    assert_eq!((a1111_steps, invokeai_steps, fewer_steps), (3, 3, 2));
    let diff =
        |a: &candle_core::Tensor, b: &candle_core::Tensor| dream_test_support::max_abs_diff(a, b);
    assert_eq!(diff(&a1111, &invokeai), 0.0);
    assert!(diff(&a1111, &fewer) > 1e-3);
}

#[test]
fn metadata_records_a_rule_unlike_its_sampler_names() {
    let model = tiny_model();
    let request = Txt2Img {
        steps: 1,
        ..img2img(0.5, StrengthRule::A1111)
    };
    let a1111 = model.generate(&request, &mut |_| {}).unwrap();
    // A1111's infotext names A1111's samplers: its own rule goes unsaid there, and is
    // recorded in sd-metadata, whose InvokeAI sampler names stand for InvokeAI's rule.
    assert!(!a1111.a1111_parameters("tiny").contains("Strength rule"));
    let (_, json) = a1111.invokeai_metadata("tiny");
    assert!(json.contains(r#""strength_rule":"a1111""#), "{json}");
    let invokeai = model
        .generate(
            &Txt2Img {
                strength_rule: StrengthRule::InvokeAi,
                ..request
            },
            &mut |_| {},
        )
        .unwrap();
    let parameters = invokeai.a1111_parameters("tiny");
    assert!(
        parameters.contains("Strength rule: invokeai"),
        "{parameters}"
    );
    let (_, json) = invokeai.invokeai_metadata("tiny");
    assert!(!json.contains("strength_rule"), "{json}");
}

#[test]
fn a_stretched_schedule_is_refused() {
    let model = tiny_model();
    let error = model
        .generate(&img2img(0.5, StrengthRule::FixedSteps), &mut |_| {})
        .unwrap_err();
    assert!(matches!(error, DreamError::NotSupported(_)), "{error}");
}
