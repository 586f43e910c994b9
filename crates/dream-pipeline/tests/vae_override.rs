//! `--vae`: a bare VAE weights file replaces the weights of the model's own VAE and keeps its
//! config, as A1111 loads one, so under an SDXL model it decodes with SDXL's scaling factor
//! 0.13025; a diffusers `vae/` folder brings its own config.

use std::path::PathBuf;

use dream_pipeline::{LoadOptions, StableDiffusion};
use dream_test_support::{copy_dir, fixture, load_fixture, max_abs_diff, temp_dir};

fn tiny_sdxl_with_vae(vae: PathBuf) -> StableDiffusion {
    let options = LoadOptions {
        vae: Some(vae),
        ..LoadOptions::default()
    };
    StableDiffusion::load_with(fixture("tiny-sdxl"), &options).unwrap()
}

#[test]
fn a_bare_vae_file_keeps_the_sdxl_models_scaling_factor() {
    // fixtures/tiny/vae's weights (an SD VAE, 0.18215 in its folder's config) as a bare file.
    let bare = fixture("tiny/vae/diffusion_pytorch_model.safetensors");
    // The same weights in a vae/ folder whose config says SDXL's factor.
    let folder = temp_dir("vae-sdxl-factor");
    copy_dir(&fixture("tiny/vae"), &folder);
    let config_path = folder.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(config["scaling_factor"], 0.18215);
    config["scaling_factor"] = 0.13025.into();
    std::fs::write(&config_path, config.to_string()).unwrap();

    let latents = &load_fixture("sdxl_pipeline/ddim.safetensors")["final_latents"];
    let decode = |model: StableDiffusion| model.decode(latents).unwrap();
    let with_file = decode(tiny_sdxl_with_vae(bare));
    assert_eq!(
        max_abs_diff(&with_file, &decode(tiny_sdxl_with_vae(folder.clone()))),
        0.0
    );
    // The folder keeps its own config: SD's factor, another image.
    let sd_factor = decode(tiny_sdxl_with_vae(fixture("tiny/vae")));
    assert!(max_abs_diff(&with_file, &sd_factor) > 0.01);
    // And the weights are the file's, not the model's own VAE's.
    let own = decode(StableDiffusion::load(fixture("tiny-sdxl")).unwrap());
    assert!(max_abs_diff(&with_file, &own) > 0.01);
    std::fs::remove_dir_all(folder).unwrap();
}
