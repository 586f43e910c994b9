//! Inpainting: a 9-channel model against diffusers' StableDiffusionInpaintPipeline
//! (fixtures/inpaint, made by tools/parity/inpaint_fixtures.py), and ordinary-model inpainting,
//! masks and image files by their properties.

use std::path::Path;

use dream_pipeline::image::{RgbImage, RgbaImage};
use dream_pipeline::inpaint::{fill, paste};
use dream_pipeline::{
    DreamError, InitImage, Inpaint, Mask, MaskedContent, Sampler, ScheduleKind, StableDiffusion,
    Txt2Img,
};
use dream_test_support::{
    check_kept_outside_the_mask, check_step_latents, copy_dir, euler_request, fixture,
    load_fixture, max_abs_diff, square_mask, temp_dir, tiny_copy, tiny_model,
};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

/// fixtures/tiny with the 9-channel UNet of fixtures/inpaint (the script checks that the
/// inpainting model's text encoder and VAE are the tiny model's).
fn inpainting_model() -> StableDiffusion {
    let dir = tiny_copy("inpaint-model");
    copy_dir(&fixture("inpaint/unet"), &dir.join("unet"));
    let model = StableDiffusion::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    model
}

fn init_image() -> RgbImage {
    RgbImage::open(&fixture("images/init_64x64.png")).unwrap()
}

/// fixtures/images/mask_64x64.png is white where diffusers repaints.
fn diffusers_mask() -> Mask {
    Mask::from_white(&RgbImage::open(&fixture("images/mask_64x64.png")).unwrap())
}

fn request(sampler: Sampler, steps: usize, strength: f64, inpaint: Inpaint) -> Txt2Img {
    Txt2Img {
        negative_prompt: "blurry".into(),
        steps,
        width: 64,
        height: 64,
        sampler,
        schedule: ScheduleKind::Normal,
        init: Some(InitImage {
            image: init_image(),
            strength,
        }),
        inpaint: Some(inpaint),
        ..Txt2Img::new(PROMPT, 42)
    }
}

/// diffusers binarizes the mask and does not blur it.
fn unblurred(mask: Mask) -> Inpaint {
    Inpaint {
        mask_blur: 0.0,
        ..Inpaint::new(mask)
    }
}

fn check_against_diffusers(model: &StableDiffusion, name: &str, sampler: Sampler, strength: f64) {
    let r = load_fixture(&format!("inpaint/ref_{name}.safetensors"));
    let request = request(sampler, 10, strength, unblurred(diffusers_mask()));
    let steps_run = (10.0 * strength) as usize;
    check_step_latents(&format!("9-channel {name}"), model, &request, &r, steps_run);
}

#[test]
fn nine_channel_model_matches_diffusers() {
    let model = inpainting_model();
    check_against_diffusers(&model, "ddim", Sampler::Ddim, 1.0);
    check_against_diffusers(&model, "euler", Sampler::Euler, 1.0);
    // Below strength 1 the init image's posterior sample is drawn before the noise, the
    // masked image's after it.
    check_against_diffusers(&model, "ddim_s075", Sampler::Ddim, 0.75);
}

#[test]
fn nine_channel_model_needs_a_mask() {
    let model = inpainting_model();
    let mut plain = request(Sampler::Ddim, 4, 0.5, unblurred(diffusers_mask()));
    plain.inpaint = None;
    match model.generate(&plain, &mut |_| {}) {
        Err(e @ DreamError::NotSupported(_)) => assert!(e.to_string().contains("mask"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// Pixels the blurred mask does not touch are the original's, bit for bit, with every kind of
/// sampler and masked content; inside the mask the image changes.
#[test]
fn ordinary_model_keeps_the_pixels_outside_the_blurred_mask() {
    let model = tiny_model();
    let original = init_image();
    let mask = square_mask();
    let inpaint = Inpaint::new(mask.clone());
    let blurred = mask.blurred(inpaint.mask_blur);
    let cases = [
        (Sampler::Euler, MaskedContent::Original),
        (Sampler::Ddim, MaskedContent::Fill),
        (Sampler::DpmPp2M, MaskedContent::LatentNoise),
        (Sampler::EulerAncestral, MaskedContent::LatentNothing),
    ];
    for (sampler, masked_content) in cases {
        let inpaint = Inpaint {
            masked_content,
            ..inpaint.clone()
        };
        let generated = model
            .generate(&request(sampler, 8, 0.8, inpaint), &mut |_| {})
            .unwrap();
        let name = format!("{sampler} {masked_content:?}");
        let (kept, changed) =
            check_kept_outside_the_mask(&name, &generated.image, &original, &mask, &blurred);
        assert!(kept > 64 * 64 / 2, "{kept}");
        assert!(changed > 200, "{name}: only {changed} pixels changed");
    }
}

/// The blend keeps the sampler on the init image outside the mask: with nothing masked the
/// result is the init image's own latents, whatever the sampler does.
#[test]
fn ordinary_model_with_an_empty_mask_returns_the_init_latents() {
    let model = tiny_model();
    let inpaint = Inpaint::new(Mask::keep_all(64, 64));
    let whole = request(Sampler::Euler, 6, 1.0, Inpaint::new(Mask::keep_all(64, 64)));
    let mut plain = whole.clone();
    plain.inpaint = None;
    let img2img = model.generate(&plain, &mut |_| {}).unwrap();
    let mut reported = Vec::new();
    let generated = model
        .generate(&request(Sampler::Euler, 6, 1.0, inpaint), &mut |step| {
            reported.push(step.denoised.cloned())
        })
        .unwrap();
    let encoded = model
        .encode_image(
            &init_image(),
            &mut dream_core::rng::TorchGenerator::seeded(42),
        )
        .unwrap();
    // Every step's x₀ estimate is the init latents, so are the final latents.
    for denoised in reported.iter().flatten() {
        let err = max_abs_diff(denoised, &encoded);
        assert!(err <= 1e-4, "x0 estimate differs by {err}");
    }
    assert_eq!(max_abs_diff(&generated.latents, &encoded), 0.0);
    assert!(max_abs_diff(&img2img.latents, &encoded) > 0.1);
    assert_eq!(generated.image, init_image());
}

#[test]
fn only_masked_renders_the_crop_and_pastes_it_back() {
    let model = tiny_model();
    // A 96x80 image; the mask is a small square, rendered at 64x64.
    let original = RgbImage {
        width: 96,
        height: 80,
        pixels: (0..96 * 80 * 3).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let mut mask = Mask::keep_all(96, 80);
    for y in 30..40 {
        for x in 50..62 {
            mask.values[y * 96 + x] = 1.0;
        }
    }
    let inpaint = Inpaint {
        only_masked_padding: Some(8),
        ..Inpaint::new(mask.clone())
    };
    let request = Txt2Img {
        init: Some(InitImage {
            image: original.clone(),
            strength: 0.75,
        }),
        inpaint: Some(inpaint.clone()),
        ..request(Sampler::Euler, 4, 0.75, inpaint.clone())
    };
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    assert_eq!((generated.image.width, generated.image.height), (96, 80));
    let blurred = mask.blurred(4.0);
    let mut changed = 0;
    for (i, m) in blurred.values.iter().enumerate() {
        let (ours, theirs) = (
            &generated.image.pixels[i * 3..i * 3 + 3],
            &original.pixels[i * 3..i * 3 + 3],
        );
        if *m == 0.0 {
            assert_eq!(ours, theirs, "pixel {i}");
        } else if ours != theirs {
            changed += 1;
        }
    }
    assert!(changed > 50, "{changed}");
    let parameters = generated.a1111_parameters("tiny");
    assert!(
        parameters.contains("Mask blur: 4, ")
            && parameters.contains("Inpaint area: Only masked, Masked area padding: 8"),
        "{parameters}"
    );
}

#[test]
fn bad_inpaint_requests_are_refused() {
    let model = tiny_model();
    let cases = [
        (
            unblurred(Mask::keep_all(32, 64)),
            "the mask is 32x64 but the init image is 64x64",
        ),
        (
            Inpaint {
                inpaint_replace: 1.5,
                ..Inpaint::new(Mask::keep_all(64, 64))
            },
            "inpaint_replace",
        ),
        (
            Inpaint {
                mask_blur: -1.0,
                ..Inpaint::new(Mask::keep_all(64, 64))
            },
            "mask blur",
        ),
    ];
    for (inpaint, expected) in cases {
        match model.generate(&request(Sampler::Euler, 4, 0.5, inpaint), &mut |_| {}) {
            Err(DreamError::InvalidRequest(message)) => {
                assert!(message.contains(expected), "{message}")
            }
            other => panic!("{expected}: {other:?}"),
        }
    }
    let mut no_init = request(Sampler::Euler, 4, 0.5, Inpaint::new(Mask::keep_all(64, 64)));
    no_init.init = None;
    assert!(matches!(
        model.generate(&no_init, &mut |_| {}),
        Err(DreamError::InvalidRequest(m)) if m.contains("init image")
    ));
    assert!(matches!(
        "latent fog".parse::<MaskedContent>(),
        Err(DreamError::InvalidRequest(m)) if m.contains("latent fog")
    ));
    assert_eq!(
        "latent_noise".parse::<MaskedContent>().unwrap(),
        MaskedContent::LatentNoise
    );
}

fn write_png(path: &Path, width: u32, height: u32, color: png::ColorType, data: &[u8]) {
    let mut encoder = png::Encoder::new(std::fs::File::create(path).unwrap(), width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
}

/// InvokeAI 2.x `-M`: a mask with alpha repaints its transparent pixels, one without repaints
/// its black pixels; `--invert_mask` swaps them; the init image's transparency is a mask too.
#[test]
fn mask_files_read_as_invokeai_reads_them() {
    let dir = temp_dir("inpaint-masks");
    let grey: Vec<u8> = vec![0, 255, 128, 0];
    write_png(&dir.join("l.png"), 2, 2, png::ColorType::Grayscale, &grey);
    let mask = Mask::open(&dir.join("l.png")).unwrap();
    let expected = [1.0, 0.0, 127.0 / 255.0, 1.0];
    assert_eq!(mask.values, expected);
    assert_eq!(mask.inverted().values, expected.map(|v| 1.0 - v));

    // RGB goes through PIL's luma: pure red is 76.
    write_png(
        &dir.join("rgb.png"),
        2,
        1,
        png::ColorType::Rgb,
        &[255, 0, 0, 255, 255, 255],
    );
    let mask = Mask::open(&dir.join("rgb.png")).unwrap();
    assert_eq!(mask.values, [(255.0 - 76.0) / 255.0, 0.0]);

    // With alpha, the colour does not matter.
    let rgba = [0, 0, 0, 255, 255, 255, 255, 0, 9, 9, 9, 51];
    write_png(&dir.join("rgba.png"), 3, 1, png::ColorType::Rgba, &rgba);
    let mask = Mask::open(&dir.join("rgba.png")).unwrap();
    assert_eq!(mask.values, [0.0, 1.0, 204.0 / 255.0]);
    let image = RgbaImage::open(&dir.join("rgba.png")).unwrap();
    assert_eq!(image.pixels, rgba);
    assert_eq!(Mask::from_alpha(&image), Some(mask.clone()));
    assert_eq!(
        Mask::from_alpha(&RgbaImage::from_rgb(&image.to_rgb())),
        None
    );

    // A -M mask and the init image's transparency together repaint what either repaints.
    let other = Mask {
        width: 3,
        height: 1,
        values: vec![1.0, 0.0, 0.5],
    };
    let union = mask.union(&other).unwrap();
    let third = 1.0 - (1.0 - 204.0 / 255.0) * 0.5;
    assert_eq!(union.values, [1.0, 1.0, third]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn images_of_every_format_are_read_with_their_alpha() {
    let dir = temp_dir("inpaint-formats");
    let init = init_image();
    let rgba: Vec<u8> = init
        .pixels
        .chunks(3)
        .enumerate()
        .flat_map(|(i, p)| [p[0], p[1], p[2], (i % 256) as u8])
        .collect();
    let buffer = image::RgbaImage::from_raw(64, 64, rgba.clone()).unwrap();
    let rgb_buffer = image::RgbImage::from_raw(64, 64, init.pixels.clone()).unwrap();
    // Lossless formats round-trip exactly, with alpha where they have it.
    for name in ["a.webp", "a.bmp", "a.png"] {
        buffer.save(dir.join(name)).unwrap();
        let read = RgbaImage::open(&dir.join(name)).unwrap();
        assert_eq!(read.pixels, rgba, "{name}");
    }
    rgb_buffer.save(dir.join("rgb.bmp")).unwrap();
    assert_eq!(RgbImage::open(&dir.join("rgb.bmp")).unwrap(), init);
    // JPEG is lossy: close to the original, and opaque.
    rgb_buffer.save(dir.join("a.jpg")).unwrap();
    let jpeg = RgbaImage::open(&dir.join("a.jpg")).unwrap();
    assert!(!jpeg.has_transparency());
    let mean_err: f64 = jpeg
        .to_rgb()
        .pixels
        .iter()
        .zip(&init.pixels)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .sum::<f64>()
        / init.pixels.len() as f64;
    assert!(mean_err < 8.0, "JPEG mean error {mean_err}");
    // The file name's extension does not matter, the content does.
    std::fs::copy(dir.join("a.webp"), dir.join("webp.png")).unwrap();
    assert_eq!(RgbaImage::open(&dir.join("webp.png")).unwrap().pixels, rgba);

    let truncated = dir.join("truncated.jpg");
    let bytes = std::fs::read(dir.join("a.jpg")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let text = dir.join("notes.png");
    std::fs::write(&text, "this is not an image\n").unwrap();
    for path in [&truncated, &text] {
        let error = InitImage::open(path, 0.5).unwrap_err().to_string();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            error.contains(name) && error.contains("not a readable image"),
            "{error}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fill_takes_the_colours_around_the_hole_and_keeps_the_rest() {
    // Left half red, right half blue; the middle columns are a hole.
    let (w, h) = (32, 8);
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            if i % w < w / 2 {
                [200, 0, 0]
            } else {
                [0, 0, 200]
            }
        })
        .collect();
    let image = RgbImage {
        width: w,
        height: h,
        pixels,
    };
    let mut mask = Mask::keep_all(w, h);
    for y in 0..h {
        for x in 12..20 {
            mask.values[y * w + x] = 1.0;
        }
    }
    let filled = fill(&image, &mask);
    for (i, m) in mask.values.iter().enumerate() {
        let p = &filled.pixels[i * 3..i * 3 + 3];
        if *m == 0.0 {
            assert_eq!(p, &image.pixels[i * 3..i * 3 + 3]);
        }
    }
    // Next to the red side the hole is red, next to the blue side blue.
    let at = |x: usize| &filled.pixels[(4 * w + x) * 3..(4 * w + x) * 3 + 3];
    assert!(at(12)[0] > 150 && at(12)[2] < 50, "{:?}", at(12));
    assert!(at(19)[2] > 150 && at(19)[0] < 50, "{:?}", at(19));
}

#[test]
fn paste_takes_the_mask_share_of_each_pixel() {
    let original = RgbImage {
        width: 3,
        height: 1,
        pixels: vec![10, 20, 30, 40, 50, 60, 70, 80, 90],
    };
    let generated = RgbImage {
        pixels: vec![110, 120, 130, 140, 150, 160, 170, 180, 190],
        ..original.clone()
    };
    let mask = Mask {
        width: 3,
        height: 1,
        values: vec![0.0, 0.25, 1.0],
    };
    let pasted = paste(&original, &generated, &mask);
    assert_eq!(pasted.pixels, [10, 20, 30, 65, 75, 85, 170, 180, 190]);
}

#[test]
fn outcrop_parses_invokeai_arguments_and_rounds_to_64() {
    let outcrop =
        dream_pipeline::Outcrop::parse(&["top", "64", "left", "32", "top", "10"]).unwrap();
    assert_eq!(
        outcrop,
        dream_pipeline::Outcrop {
            top: 74,
            left: 32,
            ..Default::default()
        }
    );
    assert_eq!(
        outcrop.rounded(),
        dream_pipeline::Outcrop {
            top: 128,
            left: 64,
            ..Default::default()
        }
    );
    for bad in [&["top"][..], &["up", "64"], &["left", "-3"], &[]] {
        assert!(
            matches!(
                dream_pipeline::Outcrop::parse(bad),
                Err(DreamError::InvalidRequest(_))
            ),
            "{bad:?}"
        );
    }
}

/// Outcropping grows the image by the rounded margins; the original pixels stay in place
/// (exactly, away from the blurred edge of the new area and the seam band), the new area is
/// painted, and the seam pass changes pixels along the old border only.
#[test]
fn outcrop_extends_the_canvas_and_keeps_the_original() {
    let model = tiny_model();
    let original = init_image();
    let outcrop = dream_pipeline::Outcrop {
        top: 64,
        left: 32,
        ..Default::default()
    };
    let canvas = outcrop.extend(&RgbaImage::from_rgb(&original));
    assert_eq!((canvas.width, canvas.height), (128, 128));
    let request = Txt2Img {
        init: Some(InitImage {
            image: canvas.to_rgb(),
            strength: 1.0,
        }),
        ..euler_request(PROMPT, 7, 6, (128, 128))
    };
    let seam = dream_pipeline::Seam {
        size: 16,
        blur: 4,
        ..Default::default()
    };
    let without_seam = model
        .outpaint(
            &request,
            &canvas,
            &dream_pipeline::Seam::default(),
            &mut |_| {},
        )
        .unwrap();
    let mut steps = 0;
    let with_seam = model
        .outpaint(&request, &canvas, &seam, &mut |_| steps += 1)
        .unwrap();
    // 6 steps, then int(10 × 0.7) seam steps.
    assert_eq!(steps, 6 + 7);
    let at = |image: &RgbImage, x: usize, y: usize| {
        image.pixels[(y * image.width + x) * 3..(y * image.width + x) * 3 + 3].to_vec()
    };
    let (mut kept, mut painted, mut seam_changed) = (0, 0, 0);
    for y in 0..128 {
        for x in 0..128 {
            let inside = x >= 64 && y >= 64;
            let far_from_border = x >= 64 + 24 && y >= 64 + 24;
            for image in [&without_seam.image, &with_seam.image] {
                assert_eq!((image.width, image.height), (128, 128));
                if far_from_border {
                    assert_eq!(at(image, x, y), at(&original, x - 64, y - 64), "({x}, {y})");
                    kept += 1;
                }
            }
            if !inside && at(&without_seam.image, x, y) != [0, 0, 0] {
                painted += 1;
            }
            // The band reaches size/2 + blur = 12 pixels from the border.
            let near_border = |v: usize| v + 14 >= 64 && v < 64 + 14;
            let near_border = (near_border(x) && y + 14 >= 64) || (near_border(y) && x + 14 >= 64);
            if at(&without_seam.image, x, y) != at(&with_seam.image, x, y) {
                assert!(near_border, "seam pass changed ({x}, {y})");
                seam_changed += usize::from(near_border);
            }
        }
    }
    assert!(kept > 0 && painted > 128 * 128 / 2, "{kept} {painted}");
    assert!(seam_changed > 100, "{seam_changed}");
}

/// InvokeAI sizes img2img by its init image (floored to multiples of 64); the mask follows.
#[test]
fn sizing_to_the_init_image_resizes_the_mask_with_it() {
    let mut mask = Mask::keep_all(100, 90);
    for y in 45..90 {
        mask.values[y * 100..(y + 1) * 100].fill(1.0);
    }
    let mut request = Txt2Img {
        init: Some(InitImage {
            image: RgbImage {
                width: 100,
                height: 90,
                pixels: vec![7; 100 * 90 * 3],
            },
            strength: 0.5,
        }),
        inpaint: Some(Inpaint::new(mask)),
        ..Txt2Img::new(PROMPT, 1)
    };
    request
        .size_to_init(dream_pipeline::resize::InitSizing::Own)
        .unwrap();
    assert_eq!((request.width, request.height), (64, 64));
    let mask = &request.inpaint.as_ref().unwrap().mask;
    assert_eq!((mask.width, mask.height), (64, 64));
    // The bottom half still repaints, the top half still keeps.
    assert_eq!(mask.values[10 * 64 + 5], 0.0);
    assert_eq!(mask.values[50 * 64 + 5], 1.0);
}
