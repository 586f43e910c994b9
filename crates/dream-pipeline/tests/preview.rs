//! Step previews: A1111's "Approx cheap" on hand-computed pixels, and `--save_intermediates`
//! on the tiny model.

use candle_core::{Device, Tensor};
use dream_pipeline::image::RgbImage;
use dream_pipeline::preview::{approx_cheap, save_intermediate};
use dream_pipeline::InitImage;
use dream_test_support::{euler_request, tiny_model};

/// Three latent pixels, worked by hand with A1111's table (RGB = Σ latent·row, then
/// clamp(x/2 + 0.5)·255 truncated):
/// - (1, 0, 0, 0) → (0.298, 0.207, 0.208) → (0.649, 0.6035, 0.604)·255 → 165, 153, 154;
/// - (0, 0, 0, 1) → (−0.184, −0.271, −0.473) → (0.408, 0.3645, 0.2635)·255 → 104, 92, 67;
/// - (4, 4, 4, 4) → 4·column sums (0.143, 0.411, 0.172) → (0.786, 1.322, 0.844) → 200, 255, 215.
#[test]
fn approx_cheap_matches_hand_values() {
    let channels = [[1f32, 0., 4.], [0., 0., 4.], [0., 0., 4.], [0., 1., 4.]];
    let latents = Tensor::new(&channels, &Device::Cpu)
        .unwrap()
        .reshape((1, 4, 1, 3))
        .unwrap();
    let image = approx_cheap(&latents).unwrap();
    assert_eq!((image.width, image.height), (3, 1));
    assert_eq!(image.pixels, [165, 153, 154, 104, 92, 67, 200, 255, 215]);
}

#[test]
fn intermediates_are_saved_every_n_steps_and_at_the_end() {
    let model = tiny_model();
    let dir = std::env::temp_dir().join(format!("dream-intermediates-{}", std::process::id()));
    let request = euler_request("a lighthouse", 4, 5, (64, 48));
    let mut written = Vec::new();
    model
        .generate(&request, &mut |info| {
            written.extend(save_intermediate(&info, 2, &dir).unwrap());
        })
        .unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["0000.png", "0002.png", "0004.png"]);
    let preview = InitImage::open(&written[0], 1.0).unwrap().image;
    assert_eq!((preview.width, preview.height), (8, 6));
    assert_ne!(
        preview,
        RgbImage {
            width: 8,
            height: 6,
            pixels: vec![0; 8 * 6 * 3]
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
