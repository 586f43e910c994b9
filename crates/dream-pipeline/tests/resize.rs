//! Lanczos resizing against Pillow's own output (fixtures/variations/lanczos_*.png, written by
//! tools/parity/variation_fixtures.py with Pillow 13's `Image.resize(size, Image.LANCZOS)`),
//! and InvokeAI's init-image sizing.

use dream_pipeline::image::RgbImage;
use dream_pipeline::resize::{init_size, resize_lanczos, size_init_image, InitSizing};
use dream_pipeline::{InitImage, Mask, Txt2Img};
use dream_test_support::fixture;

fn read(path: &str) -> RgbImage {
    InitImage::open(fixture(path), 1.0).unwrap().image
}

fn init() -> RgbImage {
    read("images/init_64x64.png")
}

/// Shrinking, enlarging, one axis only, and one axis each way (both orders) give Pillow's
/// bytes exactly.
#[test]
fn lanczos_equals_pillow_byte_for_byte() {
    let image = init();
    for (w, h) in [(40, 52), (96, 80), (64, 128), (128, 32), (32, 128)] {
        let pillow = read(&format!("variations/lanczos_{w}x{h}.png"));
        let ours = resize_lanczos(&image, w, h).unwrap();
        let differing = ours
            .pixels
            .iter()
            .zip(&pillow.pixels)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!((ours.width, ours.height), (w, h));
        assert_eq!(
            differing, 0,
            "{w}x{h}: {differing} bytes differ from Pillow"
        );
    }
}

/// A mask resized with an image (A1111's only-masked crop) gives Pillow's `L`-image bytes.
#[test]
fn mask_lanczos_equals_pillow() {
    let mask = Mask::from_white(&read("images/mask_64x64.png"));
    for (w, h) in [(40, 52), (96, 80), (128, 32)] {
        let pillow = Mask::from_white(&read(&format!("images/mask_lanczos_{w}x{h}.png")));
        assert_eq!(mask.resized(w, h).unwrap(), pillow, "{w}x{h}");
    }
}

#[test]
fn invokeai_init_sizes() {
    // Without --fit: the image's own size floored to multiples of 64.
    assert_eq!(init_size(InitSizing::Own, 700, 500), (640, 448));
    // --fit: scaled into the box keeping the aspect ratio, then floored.
    let fit = InitSizing::Fit {
        width: 512,
        height: 512,
    };
    assert_eq!(init_size(fit, 1024, 768), (512, 384));
    assert_eq!(init_size(fit, 300, 600), (256, 512));
    assert_eq!(init_size(fit, 64, 64), (512, 512));
    let err = size_init_image(
        &init(),
        InitSizing::Fit {
            width: 32,
            height: 32,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("smaller than 64"), "{err}");
}

/// `--fit` enlarges the 64×64 init image into a 128×192 box as 128×128, and the request
/// takes that size.
#[test]
fn request_takes_the_sized_init_image() {
    let mut request = Txt2Img {
        width: 128,
        height: 192,
        init: Some(InitImage {
            image: init(),
            strength: 0.5,
        }),
        ..Txt2Img::new("", 1)
    };
    request
        .size_to_init(InitSizing::Fit {
            width: 128,
            height: 192,
        })
        .unwrap();
    assert_eq!((request.width, request.height), (128, 128));
    let image = &request.init.as_ref().unwrap().image;
    assert_eq!(*image, resize_lanczos(&init(), 128, 128).unwrap());
}
