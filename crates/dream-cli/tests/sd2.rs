//! SD 2.x 768-v models from `dream`: an InvokeAI 2.x `models.yaml` entry whose `config:` is
//! Stability's latent-diffusion yaml decides v- or ε-prediction for its single file.

mod common;

use std::path::Path;

use common::{dream_command, fixture, succeeded, temp_dir, RgbImage};
use dream_test_support::{load_fixture, max_pixel_diff};

/// Renders the sd2v DDIM reference's settings with the registry entry `sd2` of a registry in
/// `root/configs/models.yaml`, and returns the image.
fn render(root: &Path, configs: &Path) -> RgbImage {
    let out = root.join("out");
    let _ = std::fs::remove_dir_all(&out);
    succeeded(
        &dream_command()
            .current_dir(root)
            .args([
                "a photograph of an astronaut riding a horse",
                "--model",
                "sd2",
            ])
            .arg("--config")
            .arg(configs)
            .args(["-s", "6", "-S", "42", "-C", "7.5", "-A", "ddim", "-o"])
            .arg(&out)
            .output()
            .unwrap(),
    );
    RgbImage::open(&out.join("000001.42.png")).unwrap()
}

#[test]
fn a_registry_entrys_ldm_config_says_v_or_epsilon() {
    let root = temp_dir("sd2-registry");
    std::fs::create_dir_all(root.join("configs/stable-diffusion")).unwrap();
    std::fs::copy(
        fixture("tiny-sd2v.safetensors"),
        root.join("sd2.safetensors"),
    )
    .unwrap();
    // The tiny model's groups and heads, which shapes cannot tell, without its scheduler config.
    let configs = root.join("tiny-configs");
    for network in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(configs.join(network)).unwrap();
        let config = format!("{network}/config.json");
        std::fs::copy(fixture("tiny-sd2v").join(&config), configs.join(&config)).unwrap();
    }
    let registry = |config: &str| {
        let entry = format!(
            "sd2:\n  description: tiny SD 2.x\n  weights: sd2.safetensors\n  \
             config: configs/stable-diffusion/{config}\n  default: true\n"
        );
        std::fs::write(root.join("configs/models.yaml"), entry).unwrap();
    };
    // Stability's configs, abridged to what matters here.
    let ldm = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n";
    std::fs::write(
        root.join("configs/stable-diffusion/v2-inference-v.yaml"),
        format!("{ldm}    parameterization: \"v\"\n"),
    )
    .unwrap();
    std::fs::write(root.join("configs/stable-diffusion/v2-inference.yaml"), ldm).unwrap();
    let expected = &load_fixture("sd2v/ddim.safetensors")["image_u8"];

    registry("v2-inference-v.yaml");
    let err = max_pixel_diff(&render(&root, &configs), expected);
    assert!(err <= 1, "v2-inference-v.yaml: pixels differ by {err}");
    registry("v2-inference.yaml");
    let err = max_pixel_diff(&render(&root, &configs), expected);
    assert!(
        err > 20,
        "v2-inference.yaml (epsilon): pixels differ by only {err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
