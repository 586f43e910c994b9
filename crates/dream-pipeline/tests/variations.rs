//! Variations and Perlin noise against InvokeAI 2.x's and A1111's own noise code, run by
//! tools/parity/variation_fixtures.py into fixtures/variations/noise.safetensors; and on the
//! tiny model, that `-v 0` is the original image and a recorded chain replays bit for bit.

use dream_core::rng::TorchGenerator;
use dream_pipeline::perlin::perlin_noise;
use dream_pipeline::variation::{
    a1111_slerp, format_variations, initial_noise, parse_variations, slerp,
};
use dream_pipeline::{Txt2Img, Variation};
use dream_test_support::{euler_request, fixture, load_fixture, tiny_model};

fn reference(name: &str) -> Vec<f32> {
    load_fixture("variations/noise.safetensors")[name]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn request(variations: &str) -> Txt2Img {
    Txt2Img {
        variations: if variations.is_empty() {
            Vec::new()
        } else {
            parse_variations(variations).unwrap()
        },
        ..Txt2Img::new("", 42)
    }
}

/// InvokeAI's `-V 7:0.1,1234:0.25` from seed 42, then `-v 0.3` towards seed 99, at 96×64.
#[test]
fn invokeai_chain_matches_its_numpy_slerp() {
    let shape = (4, 8, 12);
    let chain = initial_noise(
        &mut TorchGenerator::seeded(42),
        shape,
        &request("7:0.1,1234:0.25"),
    )
    .unwrap();
    let diff = max_diff(&chain, &reference("invokeai_chain"));
    println!("InvokeAI -V chain: max abs diff {diff:e}");
    assert!(diff < 2e-6, "chain: max abs diff {diff}");
    let varied = initial_noise(
        &mut TorchGenerator::seeded(42),
        shape,
        &request("7:0.1,1234:0.25,99:0.3"),
    )
    .unwrap();
    let diff = max_diff(&varied, &reference("invokeai_variation"));
    println!("InvokeAI -v step: max abs diff {diff:e}");
    assert!(diff < 2e-6, "variation: max abs diff {diff}");
}

#[test]
fn a1111_subseed_matches_its_slerp() {
    let request = Txt2Img {
        subseed: Some(Variation {
            seed: 7,
            weight: 0.3,
        }),
        ..Txt2Img::new("", 42)
    };
    let noise = initial_noise(&mut TorchGenerator::seeded(42), (4, 8, 12), &request).unwrap();
    let diff = max_diff(&noise, &reference("a1111_subseed"));
    println!("A1111 subseed: max abs diff {diff:e}");
    assert!(diff < 2e-6, "max abs diff {diff}");
}

#[test]
fn perlin_noise_matches_invokeai() {
    let perlin = perlin_noise(&mut TorchGenerator::seeded(42), 4, 16, 24).unwrap();
    let diff = max_diff(&perlin, &reference("perlin_seed42_16x24"));
    println!("Perlin field: max abs diff {diff:e}");
    assert!(diff < 1e-5, "perlin: max abs diff {diff}");
    let request = Txt2Img {
        perlin: 0.3,
        ..Txt2Img::new("", 42)
    };
    let noise = initial_noise(&mut TorchGenerator::seeded(42), (4, 16, 24), &request).unwrap();
    let diff = max_diff(&noise, &reference("noise_seed42_perlin0.3"));
    println!("get_noise with --perlin 0.3: max abs diff {diff:e}");
    assert!(diff < 1e-5, "get_noise with perlin: max abs diff {diff}");
}

#[test]
fn perlin_needs_lattice_multiples() {
    let err = perlin_noise(&mut TorchGenerator::seeded(0), 4, 8, 12).unwrap_err();
    assert!(err.to_string().contains("multiples of 8"), "{err}");
}

/// Slerp's endpoints are exactly its two inputs, and halfway between two orthogonal unit
/// vectors is (1, 1)/√2 (hand math: sin(π/4)/sin(π/2) each).
#[test]
fn slerp_endpoints_and_midpoint() {
    let a = TorchGenerator::seeded(1).randn(64);
    let b = TorchGenerator::seeded(2).randn(64);
    assert_eq!(slerp(0.0, &a, &b), a);
    assert_eq!(slerp(1.0, &a, &b), b);
    let mid = slerp(0.5, &[1.0, 0.0], &[0.0, 1.0]);
    let half = std::f32::consts::FRAC_1_SQRT_2;
    assert!(max_diff(&mid, &[half, half]) < 1e-7, "{mid:?}");
    // A1111's slerp interpolates each (channel, column) over the rows.
    let shape = (4, 4, 4);
    let (a, b) = (&a[..], &b[..]);
    assert_eq!(a1111_slerp(0.0, a, b, shape), a);
    assert_eq!(a1111_slerp(1.0, a, b, shape), b);
}

#[test]
fn variation_chains_parse_and_print_as_invokeai_writes_them() {
    let chain = parse_variations("7:0.1, 1234:0.25").unwrap();
    assert_eq!(
        chain,
        [
            Variation {
                seed: 7,
                weight: 0.1
            },
            Variation {
                seed: 1234,
                weight: 0.25
            }
        ]
    );
    assert_eq!(format_variations(&chain), "7:0.1,1234:0.25");
    for bad in ["7", "7:x", "x:0.1", "7:1.5", ""] {
        let err = parse_variations(bad).unwrap_err().to_string();
        assert!(err.contains("variation"), "{bad}: {err}");
    }
}

/// `-v 0` (a zero-weight step) gives the original image; a variation changes it; the recorded
/// chain, read back from the saved PNG's `Dream` command, replays it bit for bit.
#[test]
fn variations_on_the_tiny_model() {
    let model = tiny_model();
    let base = euler_request("a red house", 42, 4, (64, 64));
    let generate = |request: &Txt2Img| model.generate(request, &mut |_| {}).unwrap();
    let original = generate(&base);
    let zero = generate(&Txt2Img {
        variations: parse_variations("99:0").unwrap(),
        ..base.clone()
    });
    assert_eq!(zero.image, original.image);
    let varied = generate(&Txt2Img {
        variations: parse_variations("7:0.1,99:0.3").unwrap(),
        ..base.clone()
    });
    assert_ne!(varied.image, original.image);

    let (dream, sd_metadata) = varied.invokeai_metadata(model.name());
    assert!(dream.ends_with(" -V 7:0.1,99:0.3"), "{dream}");
    assert!(
        sd_metadata.contains(r#""variations":[{"seed":7,"weight":0.1},{"seed":99,"weight":0.3}]"#)
    );
    let recorded = dream_core::metadata::invokeai::read_dream_command(&dream).unwrap();
    let replay = Txt2Img {
        seed: recorded.seed.unwrap() as u32,
        variations: recorded
            .variations
            .iter()
            .map(|&(seed, weight)| Variation {
                seed: seed as u32,
                weight,
            })
            .collect(),
        ..base.clone()
    };
    let replayed = generate(&replay);
    assert_eq!(replayed.image, varied.image);
    let diff = (&replayed.latents - &varied.latents)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

/// `-v` with img2img: the noise added to the init image's latents varies the same way.
#[test]
fn variations_apply_to_img2img() {
    let model = tiny_model();
    let init = dream_pipeline::InitImage::open(fixture("images/init_64x64.png"), 0.6).unwrap();
    let base = Txt2Img {
        init: Some(init),
        ..euler_request("a red house", 42, 4, (64, 64))
    };
    let generate = |variations: &str| {
        let request = Txt2Img {
            variations: parse_variations(variations).unwrap(),
            ..base.clone()
        };
        model.generate(&request, &mut |_| {}).unwrap().image
    };
    let original = model.generate(&base, &mut |_| {}).unwrap().image;
    assert_eq!(generate("5:0"), original);
    let varied = generate("5:0.5");
    assert_ne!(varied, original);
    assert_eq!(generate("5:0.5"), varied);
}
