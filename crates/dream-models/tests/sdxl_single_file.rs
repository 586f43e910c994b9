//! SDXL single files (Stability's `sgm` layout, as A1111 and Civitai distribute them) against
//! the tiny SDXL folder they were written from: `fixtures/tiny-sdxl.safetensors` is
//! `fixtures/tiny-sdxl/` renamed by tools/parity/make_sdxl_single_file.py, which checked with
//! diffusers that its single-file loading reads back every tensor of the folder unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dream_models::config::{Activation, ClipTextConfig, PerBlock, UNetConfig, VaeConfig};
use dream_models::detect::{self, ModelKind, Prediction, SdVersion};
use dream_models::weights::{load_diffusers_folder, load_single_file, Checkpoint, Weights};
use dream_test_support::{fixture, max_abs_diff, temp_dir};

fn single_file() -> PathBuf {
    fixture("tiny-sdxl.safetensors")
}

fn read_json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// Asserts that `got` serves exactly `want`'s names, each with the same dtype and values, and
/// the same shape but for the VAE attention's trailing 1×1 (a convolution in the original
/// layout, a linear layer in diffusers').
fn assert_identical(want: &Weights, got: &Weights, what: &str) {
    let names = |w: &Weights| w.names().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(names(want), names(got), "{what}: name sets differ");
    for name in want.names() {
        let a = want.tensor(name, &Device::Cpu).unwrap();
        let b = got
            .tensor(name, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let trimmed = |t: &Tensor| {
            let dims = t.dims();
            let unit = dims.iter().rev().take_while(|d| **d == 1).count();
            dims[..dims.len() - unit].to_vec()
        };
        assert_eq!(
            (trimmed(&a), a.dtype()),
            (trimmed(&b), b.dtype()),
            "{what}: {name}"
        );
        let diff = max_abs_diff(&a, &b.reshape(a.shape()).unwrap());
        assert_eq!(diff, 0.0, "{what}: {name}: max |diff| {diff}");
    }
}

#[test]
fn single_file_serves_the_folders_tensors() {
    let folder = load_diffusers_folder(&fixture("tiny-sdxl")).unwrap();
    let single = load_single_file(&single_file(), Some(&fixture("tiny-sdxl"))).unwrap();
    let (Some(folder_2), Some(single_2)) = (&folder.text_encoder_2, &single.text_encoder_2) else {
        panic!("no second text encoder");
    };
    // Tensor counts as diffusers/transformers load them (make_sdxl_single_file.py's log).
    assert_eq!(folder.unet.weights.names().count(), 428);
    assert_eq!(folder.vae.weights.names().count(), 180);
    assert_eq!(
        folder
            .text_encoder
            .as_ref()
            .unwrap()
            .weights
            .names()
            .count(),
        68
    );
    assert_eq!(folder_2.weights.names().count(), 69);
    assert_identical(&folder.unet.weights, &single.unet.weights, "unet");
    assert_identical(&folder.vae.weights, &single.vae.weights, "vae");
    let (te, te_single) = (
        folder.text_encoder.as_ref().unwrap(),
        single.text_encoder.as_ref().unwrap(),
    );
    assert_identical(&te.weights, &te_single.weights, "text_encoder");
    assert_identical(&folder_2.weights, &single_2.weights, "text_encoder_2");

    // OpenCLIP stores the projection as [width, projection], applied as x @ P.
    let stored = Checkpoint::open(single_file())
        .unwrap()
        .tensor(
            "conditioner.embedders.1.model.text_projection",
            &Device::Cpu,
        )
        .unwrap();
    let served = single_2
        .weights
        .tensor("text_projection.weight", &Device::Cpu)
        .unwrap();
    assert_eq!(max_abs_diff(&stored.t().unwrap(), &served), 0.0);
    assert!(
        max_abs_diff(&stored, &served) > 0.0,
        "a symmetric projection"
    );

    let sdxl = ModelKind {
        version: SdVersion::Xl,
        inpainting: false,
        prediction: Prediction::Epsilon,
    };
    assert_eq!((folder.kind, single.kind), (sdxl, sdxl));
    assert_eq!(
        folder.unet.config,
        read_json::<UNetConfig>("tiny-sdxl/unet/config.json")
    );
    assert_eq!(
        folder_2.config,
        read_json::<ClipTextConfig>("tiny-sdxl/text_encoder_2/config.json")
    );
    assert_eq!(single_2.config, folder_2.config);
}

#[test]
fn detected_configs_match_the_folder_where_shapes_can_tell() {
    let single = load_single_file(&single_file(), Some(&fixture("tiny-sdxl"))).unwrap();
    let want: UNetConfig = read_json("tiny-sdxl/unet/config.json");
    let pooled = read_json::<ClipTextConfig>("tiny-sdxl/text_encoder_2/config.json").projection_dim;
    let got =
        detect::sdxl_unet_config(&single.unet.weights, pooled, detect::SDXL_TIME_IDS).unwrap();
    // Not in the shapes: the groups and head counts (SDXL's 32 and 64-channel heads assumed;
    // the tiny UNet has 8 groups and 2/4 heads).
    assert_eq!(got.norm_num_groups, 32);
    assert_eq!(got.attention_head_dim, PerBlock::Each(vec![0, 1]));
    let got = UNetConfig {
        attention_head_dim: want.attention_head_dim.clone(),
        norm_num_groups: want.norm_num_groups,
        ..got
    };
    assert_eq!(got, want);
    assert_eq!(got.addition_time_embed_dim, Some(8));
    assert_eq!(got.transformer_layers_per_block, PerBlock::Each(vec![1, 2]));

    // SDXL's scaling factor is assumed, and the tiny VAE has it.
    let want: VaeConfig = read_json("tiny-sdxl/vae/config.json");
    let mut got = detect::vae_config(&single.vae.weights).unwrap();
    got.scaling_factor = detect::SDXL_VAE_SCALING_FACTOR;
    got.norm_num_groups = want.norm_num_groups;
    assert_eq!(got, want);

    // The SD 1.x/2.x UNet detection refuses an SDXL UNet rather than dropping its conditioning.
    let err = detect::unet_config(&single.unet.weights)
        .unwrap_err()
        .to_string();
    assert!(err.contains("add_embedding"), "{err}");
    // The micro-conditioning must be six equal widths next to the pooled text.
    let err = detect::sdxl_unet_config(&single.unet.weights, 30, detect::SDXL_TIME_IDS)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("80 values") && err.contains("plus 6 equally wide numbers"),
        "{err}"
    );
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap()
}

/// The tiny SDXL file with its text encoders swapped for 128-wide zero ones (2 heads of 64 fit,
/// where the tiny 32-wide encoders cannot be detected): CLIP with 2 layers, OpenCLIP with 3 and
/// a [128, 32] projection, so that the UNet's add_embedding still reads 32 pooled values.
fn with_detectable_text_encoders() -> HashMap<String, Tensor> {
    let file = Checkpoint::open(single_file()).unwrap();
    let mut tensors: HashMap<String, Tensor> = file
        .names()
        .filter(|n| !n.starts_with("conditioner."))
        .map(|n| (n.to_owned(), file.tensor(n, &Device::Cpu).unwrap()))
        .collect();
    let clip = "conditioner.embedders.0.transformer.text_model.";
    tensors.insert(
        format!("{clip}embeddings.token_embedding.weight"),
        zeros(&[1000, 128]),
    );
    tensors.insert(
        format!("{clip}embeddings.position_embedding.weight"),
        zeros(&[77, 128]),
    );
    for layer in 0..2 {
        tensors.insert(
            format!("{clip}encoder.layers.{layer}.mlp.fc1.weight"),
            zeros(&[512, 128]),
        );
    }
    let open_clip = "conditioner.embedders.1.model.";
    tensors.insert(
        format!("{open_clip}token_embedding.weight"),
        zeros(&[1000, 128]),
    );
    tensors.insert(
        format!("{open_clip}positional_embedding"),
        zeros(&[77, 128]),
    );
    tensors.insert(format!("{open_clip}text_projection"), zeros(&[128, 32]));
    for layer in 0..3 {
        let block = format!("{open_clip}transformer.resblocks.{layer}.");
        tensors.insert(format!("{block}attn.in_proj_weight"), zeros(&[384, 128]));
        tensors.insert(format!("{block}mlp.c_fc.weight"), zeros(&[640, 128]));
    }
    tensors
}

fn save(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

#[test]
fn loads_without_a_config_folder() {
    let dir = temp_dir("sdxl-detect");
    let path = save(&dir, "sdxl.safetensors", &with_detectable_text_encoders());
    let model = load_single_file(&path, None).unwrap();
    assert_eq!(model.kind.version, SdVersion::Xl);
    assert_eq!(model.kind.prediction, Prediction::Epsilon);
    assert_eq!(model.vae.config.scaling_factor, 0.13025);
    let mut want: UNetConfig = read_json("tiny-sdxl/unet/config.json");
    want.attention_head_dim = PerBlock::Each(vec![0, 1]);
    want.norm_num_groups = 32;
    assert_eq!(model.unet.config, want);

    let text =
        |json: serde_json::Value| -> ClipTextConfig { serde_json::from_value(json).unwrap() };
    assert_eq!(
        model.text_encoder.as_ref().unwrap().config,
        text(serde_json::json!({
            "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 512,
            "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "quick_gelu",
        }))
    );
    // The second encoder keeps its last layer (the pooled output comes from it, where SD 2.x
    // drops it) and projects to the UNet's pooled width.
    let second = model.text_encoder_2.unwrap().config;
    assert_eq!(
        second,
        text(serde_json::json!({
            "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 640,
            "num_hidden_layers": 3, "num_attention_heads": 2, "hidden_act": "gelu",
            "projection_dim": 32,
        }))
    );
    assert_eq!(second.hidden_act, Activation::Gelu);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_what_it_cannot_load() {
    let dir = temp_dir("sdxl-refuse");
    let message = |path: &Path| load_single_file(path, None).unwrap_err().to_string();

    // A refiner (OpenCLIP bigG alone, as embedders.0) whose encoder is only a projection.
    let mut refiner = with_detectable_text_encoders();
    refiner.retain(|k, _| !k.starts_with("conditioner."));
    refiner.insert(
        "conditioner.embedders.0.model.text_projection".into(),
        zeros(&[128, 32]),
    );
    let err = message(&save(&dir, "refiner.safetensors", &refiner));
    assert!(
        err.contains("refiner.safetensors") && err.contains("token_embedding"),
        "{err}"
    );

    let mut one_encoder = with_detectable_text_encoders();
    one_encoder.retain(|k, _| !k.starts_with("conditioner.embedders.1."));
    let err = message(&save(&dir, "one.safetensors", &one_encoder));
    assert!(
        err.contains("conditioner.embedders.1.model.") && err.contains("both"),
        "{err}"
    );

    // A projection that is not a matrix is named, not a panic.
    let mut bad = with_detectable_text_encoders();
    bad.insert(
        "conditioner.embedders.1.model.text_projection".into(),
        zeros(&[4096]),
    );
    let path = save(&dir, "bad.safetensors", &bad);
    let model = load_single_file(&path, Some(&fixture("tiny-sdxl"))).unwrap();
    let err = model
        .text_encoder_2
        .unwrap()
        .weights
        .tensor("text_projection.weight", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conditioner.embedders.1.model.text_projection") && err.contains("[4096]"),
        "{err}"
    );

    // Truncated: the header promises more than the file holds.
    let bytes = std::fs::read(single_file()).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = message(&truncated);
    assert!(err.contains("truncated"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}
