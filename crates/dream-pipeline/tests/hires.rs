//! The hires fix: first-pass sizes as InvokeAI 2.x and A1111 compute them (worked by hand),
//! torch's bilinear latent upscaling on hand-computed values, and the two passes on the tiny
//! model.

use candle_core::{Device, Tensor};
use dream_core::rng::TorchGenerator;
use dream_pipeline::hires::{upscale_bilinear, HiresFix, Upscaler};
use dream_pipeline::resize::resize_lanczos;
use dream_pipeline::sampling::StrengthRule;
use dream_pipeline::{Generated, StableDiffusion, Txt2Img};
use dream_test_support::{euler_request, fixture, tiny_model};

#[test]
fn invokeai_first_pass_keeps_the_model_area_and_aspect() {
    // 1024×768 at 512²: h = √(512² / (4/3)) = 443.4, w = 4/3 h = 591.2, floored to multiples
    // of 8: 584×440.
    let fix = HiresFix::invokeai(1024, 768, 512, 0.75);
    assert_eq!((fix.first_width, fix.first_height), (584, 440));
    // 512×1024: w = √(512² · 0.5) = 362.0 (over the 256 minimum), h = 2w = 724.1: 360×720.
    let fix = HiresFix::invokeai(512, 1024, 512, 0.75);
    assert_eq!((fix.first_width, fix.first_height), (360, 720));
    // Very wide: the short side stays at half the resolution, 256, and w = 4·256.
    let fix = HiresFix::invokeai(2048, 512, 512, 0.75);
    assert_eq!((fix.first_width, fix.first_height), (1024, 256));
    assert_eq!(fix.upscaler, Upscaler::Latent);
}

#[test]
fn a1111_final_size_is_the_first_pass_scaled() {
    let (size, fix) = HiresFix::a1111(512, 384, 1.5, Upscaler::Lanczos, Some(10), 0.7);
    assert_eq!(size, (768, 576));
    assert_eq!((fix.first_width, fix.first_height), (512, 384));
}

/// `F.interpolate([[0, 1], [2, 3]], size=(4, 4), mode="bilinear")`: output index o samples
/// input position (o + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, 1.25, clamped to [0, 1], i.e. weights
/// 0, .25, .75, 1 of the second input; the input is 2·row + col, so the output is too.
#[test]
fn bilinear_upscale_matches_hand_values() {
    let x = Tensor::new(&[[[[0f32, 1.], [2., 3.]]]], &Device::Cpu).unwrap();
    let y = upscale_bilinear(&x, 4, 4).unwrap();
    let t = [0.0, 0.25, 0.75, 1.0];
    let expected: Vec<f32> = t
        .iter()
        .flat_map(|r| t.iter().map(move |c| 2.0 * r + c))
        .collect();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
}

/// `request`'s first pass alone, and `request` with a second pass of strength 0 under InvokeAI's
/// step rule, which runs no second step: its first pass only enlarged.
fn first_pass_and_unrefined(model: &StableDiffusion, request: &Txt2Img) -> (Generated, Generated) {
    let fix = request.hires.clone().expect("a hires request");
    let generate = |request: Txt2Img| model.generate(&request, &mut |_| {}).unwrap();
    let first = generate(Txt2Img {
        width: fix.first_width,
        height: fix.first_height,
        hires: None,
        ..request.clone()
    });
    let unrefined = generate(Txt2Img {
        hires: Some(HiresFix {
            strength: 0.0,
            rule: StrengthRule::InvokeAi,
            ..fix
        }),
        ..request.clone()
    });
    (first, unrefined)
}

#[test]
fn hires_fix_renders_both_passes_at_their_sizes() {
    let model = tiny_model();
    // The tiny model's "resolution" is taken as 64 px: a 72×48 first pass for 128×96 (h = √(64²·¾) = 55.4 → 48, w = 73.9 → 72).
    let fix = HiresFix::invokeai(128, 96, 64, 0.5);
    assert_eq!((fix.first_width, fix.first_height), (72, 48));
    let request = Txt2Img {
        hires: Some(fix),
        ..euler_request("a lighthouse", 9, 4, (128, 96))
    };
    let mut sizes = Vec::new();
    let generated = model
        .generate(&request, &mut |info| {
            sizes.push(info.latents.dims4().unwrap())
        })
        .unwrap();
    assert_eq!((generated.image.width, generated.image.height), (128, 96));
    // 4 first-pass steps at 72×48, then int(4 × 0.5) = 2 at 128×96.
    assert_eq!(sizes[..4], [(1, 4, 6, 9); 4]);
    assert_eq!(sizes[4..], [(1, 4, 12, 16); 2]);

    // Strength 0 runs no second step: the result is the first pass's latents enlarged.
    let (first, unrefined) = first_pass_and_unrefined(&model, &request);
    let enlarged = upscale_bilinear(&first.latents, 12, 16).unwrap();
    assert_eq!(unrefined.image, model.decode_to_image(&enlarged).unwrap());

    let parameters = generated.a1111_parameters("tiny");
    assert!(
        parameters.contains("Size: 72x48")
            && parameters.contains("Denoising strength: 0.5")
            && parameters.contains("Hires resize: 128x96, Hires upscaler: Latent"),
        "{parameters}"
    );
    let (dream, _) = generated.invokeai_metadata("tiny");
    assert!(
        dream.contains("-W 128 -H 96") && dream.contains("--hires_fix"),
        "{dream}"
    );
}

#[test]
fn hires_fix_with_an_init_image_is_refused() {
    let model = tiny_model();
    let image = dream_pipeline::InitImage::open(fixture("images/init_64x64.png"), 0.5).unwrap();
    let request = Txt2Img {
        steps: 2,
        width: 64,
        height: 64,
        init: Some(image),
        hires: Some(HiresFix::invokeai(64, 64, 64, 0.5)),
        ..Txt2Img::new("x", 1)
    };
    let err = model
        .generate(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hires fix with an init image is not supported"),
        "{err}"
    );
}

/// A1111's Lanczos upscaler: the first pass's image enlarged with Lanczos and encoded again
/// (strength 0 under InvokeAI's step rule shows it unrefined; A1111's rule always runs at least
/// one step); A1111's step rule runs int(0.5 × 4) + 1 = 3 second steps.
#[test]
fn a1111_lanczos_upscaler_enlarges_the_image() {
    let model = tiny_model();
    let (size, fix) = HiresFix::a1111(64, 48, 2.0, Upscaler::Lanczos, None, 0.5);
    assert_eq!(size, (128, 96));
    let request = Txt2Img {
        hires: Some(fix),
        ..euler_request("a lighthouse", 9, 4, size)
    };
    let mut second_pass_steps = 0;
    model
        .generate(&request, &mut |info| {
            second_pass_steps += usize::from(info.latents.dims4().unwrap().2 == 12);
        })
        .unwrap();
    assert_eq!(second_pass_steps, 3);

    let (first, unrefined) = first_pass_and_unrefined(&model, &request);
    let enlarged = resize_lanczos(&first.image, 128, 96).unwrap();
    let latents = model
        .encode_image(&enlarged, &mut TorchGenerator::seeded(9))
        .unwrap();
    assert_eq!(unrefined.image, model.decode_to_image(&latents).unwrap());
}
