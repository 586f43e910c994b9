//! The SDXL refiner's weights: its diffusers folder (no first text encoder) and its sgm single
//! file (OpenCLIP bigG as `conditioner.embedders.0.model.*`), fixtures/tiny-sdxl-refiner*, which
//! tools/parity/make_tiny_refiner.py verified with diffusers' own single-file loading.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use dream_models::config::{Activation, PerBlock, UNetConfig};
use dream_models::detect::{ModelKind, Prediction, SdVersion};
use dream_models::weights::{load_diffusers_folder, load_single_file, Checkpoint, Weights};
use dream_test_support::{fixture, max_abs_diff, temp_dir};

/// Every tensor equal; the single file's VAE attention projections are 1×1 convolutions
/// `[C, C, 1, 1]` where diffusers has linear layers `[C, C]`.
fn assert_identical(a: &Weights, b: &Weights, what: &str) {
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>(), "{what}: names differ");
    for name in names {
        let x = a.tensor(name, &Device::Cpu).unwrap();
        let y = b.tensor(name, &Device::Cpu).unwrap();
        let y = y.reshape(x.shape()).unwrap();
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{what}: {name}");
    }
}

#[test]
fn the_single_file_holds_the_folders_weights() {
    let folder = load_diffusers_folder(&fixture("tiny-sdxl-refiner")).unwrap();
    let single = load_single_file(
        &fixture("tiny-sdxl-refiner.safetensors"),
        Some(&fixture("tiny-sdxl-refiner")),
    )
    .unwrap();
    for model in [&folder, &single] {
        assert!(model.text_encoder.is_none());
        assert_eq!(
            model.kind,
            ModelKind {
                version: SdVersion::Xl,
                inpainting: false,
                prediction: Prediction::Epsilon,
            }
        );
    }
    // Tensor counts as diffusers/transformers load them (make_tiny_refiner.py's log).
    assert_eq!(folder.unet.weights.names().count(), 428);
    assert_identical(&folder.unet.weights, &single.unet.weights, "unet");
    assert_identical(&folder.vae.weights, &single.vae.weights, "vae");
    let (te, te_single) = (
        folder.text_encoder_2.as_ref().unwrap(),
        single.text_encoder_2.as_ref().unwrap(),
    );
    assert_eq!(te.weights.names().count(), 69);
    assert_identical(&te.weights, &te_single.weights, "text_encoder_2");
}

#[test]
fn a_refiner_file_without_configs_is_read_from_its_shapes() {
    // The tiny refiner's UNet and VAE with a 128-wide OpenCLIP bigG (64-channel heads, which
    // the shapes can tell) as embedders.0.
    let file = Checkpoint::open(fixture("tiny-sdxl-refiner.safetensors")).unwrap();
    let mut tensors: HashMap<String, Tensor> = file
        .names()
        .filter(|n| !n.starts_with("conditioner."))
        .map(|n| (n.to_owned(), file.tensor(n, &Device::Cpu).unwrap()))
        .collect();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap();
    let open_clip = "conditioner.embedders.0.model.";
    for (name, shape) in [
        ("token_embedding.weight", vec![1000, 128]),
        ("positional_embedding", vec![77, 128]),
        ("text_projection", vec![128, 32]),
    ] {
        tensors.insert(format!("{open_clip}{name}"), zeros(&shape));
    }
    for layer in 0..3 {
        let block = format!("{open_clip}transformer.resblocks.{layer}.");
        tensors.insert(format!("{block}attn.in_proj_weight"), zeros(&[384, 128]));
        tensors.insert(format!("{block}mlp.c_fc.weight"), zeros(&[640, 128]));
    }
    let dir = temp_dir("refiner-detect");
    let path = dir.join("refiner.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let model = load_single_file(&path, None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(model.text_encoder.is_none());
    // OpenCLIP's layout, but the refiner's bigG: ε-prediction, not SD 2.x's v.
    assert_eq!(model.kind.prediction, Prediction::Epsilon);
    assert_eq!(model.kind.version, SdVersion::Xl);
    let text = &model.text_encoder_2.as_ref().unwrap().config;
    assert_eq!(
        (
            text.hidden_size,
            text.num_hidden_layers,
            text.projection_dim
        ),
        (128, 3, 32)
    );
    assert_eq!(text.hidden_act, Activation::Gelu);
    // Five numbers of 8 beside the 32-wide pooled embedding; the rest as the folder says, but
    // for what shapes cannot show (SDXL's 32 groups and 64-channel heads assumed).
    let want: UNetConfig = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-sdxl-refiner/unet/config.json")).unwrap(),
    )
    .unwrap();
    let got = model.unet.config;
    assert_eq!(got.addition_time_embed_dim, Some(8));
    assert_eq!(got.projection_class_embeddings_input_dim, Some(72));
    assert_eq!(got.attention_head_dim, PerBlock::Each(vec![0, 1]));
    // A level without attention does not use its entry (detection says 1).
    assert_eq!(got.transformer_layers_per_block, PerBlock::Each(vec![1, 2]));
    let got = UNetConfig {
        attention_head_dim: want.attention_head_dim.clone(),
        transformer_layers_per_block: want.transformer_layers_per_block.clone(),
        norm_num_groups: want.norm_num_groups,
        ..got
    };
    assert_eq!(got, want);
}
