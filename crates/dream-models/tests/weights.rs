//! Weight loading against the committed fixtures: the tiny SD 1.x model as a diffusers folder
//! (`fixtures/tiny/`, float16), as an A1111 single file (`tiny.safetensors`) and as a torch zip
//! pickle (`tiny.ckpt`), all written and cross-checked by diffusers itself (fixtures/README.md),
//! plus the hostile pickles, which must be refused.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dream_core::keymap::TextEncoderLayout;
use dream_models::config::{ClipTextConfig, PerBlock, UNetConfig, VaeConfig};
use dream_models::detect::{self, ModelKind, Prediction, SdVersion};
use dream_models::weights::{
    load_diffusers_folder, load_single_file, load_vae_file, Checkpoint, SdComponents, Weights,
};
use dream_test_support::{fixture, max_abs_diff};

/// A file or folder in the scratch directory, named for this process, deleted when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join("dream-weights-tests");
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir.join(format!("{}-{name}", std::process::id())))
}

fn write(name: &str, bytes: &[u8]) -> Scratch {
    let path = scratch(name);
    std::fs::write(&*path, bytes).unwrap();
    path
}

fn read_json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn names(w: &Weights) -> BTreeSet<String> {
    w.names().map(str::to_owned).collect()
}

/// Asserts that `got` serves exactly `want`'s names, each with the same values in the shape
/// the network asks for (`want`'s), and returns the largest difference (expected: 0).
fn assert_same_weights(want: &Weights, got: &Weights, what: &str) -> f32 {
    assert_eq!(names(want), names(got), "{what}: name sets differ");
    let dev = Device::Cpu;
    let (want_vb, got_vb) = (
        want.var_builder(DType::F32, &dev),
        got.var_builder(DType::F32, &dev),
    );
    let mut max = 0f32;
    for name in want.names() {
        let shape = want.shape(name).unwrap();
        let a = want_vb.get(shape.as_slice(), name).unwrap();
        let b = got_vb
            .get(shape.as_slice(), name)
            .unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
        max = max.max(max_abs_diff(&a, &b));
    }
    max
}

fn assert_same_model(want: &SdComponents, got: &SdComponents, what: &str) {
    // Tensor counts from fixtures/README.md (diffusers' own state dicts).
    assert_eq!(want.unet.weights.names().count(), 304);
    assert_eq!(want.vae.weights.names().count(), 180);
    assert_eq!(
        want.text_encoder.as_ref().unwrap().weights.names().count(),
        68
    );
    for (w, g, part) in [
        (&want.unet.weights, &got.unet.weights, "unet"),
        (&want.vae.weights, &got.vae.weights, "vae"),
        (
            &want.text_encoder.as_ref().unwrap().weights,
            &got.text_encoder.as_ref().unwrap().weights,
            "text_encoder",
        ),
    ] {
        let max = assert_same_weights(w, g, &format!("{what} {part}"));
        assert_eq!(max, 0.0, "{what} {part}: max |diff| {max}");
    }
}

fn folder() -> SdComponents {
    load_diffusers_folder(&fixture("tiny")).unwrap()
}

#[test]
fn single_file_serves_the_folders_tensors() {
    let single = load_single_file(&fixture("tiny.safetensors"), Some(&fixture("tiny"))).unwrap();
    assert_same_model(&folder(), &single, "tiny.safetensors");
}

#[test]
fn ckpt_serves_the_folders_tensors() {
    let ckpt = load_single_file(&fixture("tiny.ckpt"), Some(&fixture("tiny"))).unwrap();
    assert_same_model(&folder(), &ckpt, "tiny.ckpt");
}

#[test]
fn folder_configs_and_kind() {
    let model = folder();
    assert_eq!(
        model.unet.config,
        read_json::<UNetConfig>("tiny/unet/config.json")
    );
    assert_eq!(model.vae.config.norm_num_groups, 8);
    assert_eq!(
        model
            .text_encoder
            .as_ref()
            .unwrap()
            .config
            .num_attention_heads,
        4
    );
    let sd1 = ModelKind {
        version: SdVersion::V1,
        inpainting: false,
        prediction: Prediction::Epsilon,
    };
    assert_eq!(model.kind, sd1);
    let single = load_single_file(&fixture("tiny.safetensors"), Some(&fixture("tiny"))).unwrap();
    assert_eq!(single.kind, sd1);
    assert_eq!(single.unet.config, model.unet.config);
    assert_eq!(single.vae.config, model.vae.config);
    assert_eq!(
        single.text_encoder.as_ref().unwrap().config,
        model.text_encoder.as_ref().unwrap().config
    );
}

#[test]
fn fp16_storage_converts_exactly() {
    let model = folder();
    let w = &model.unet.weights;
    let name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    let stored = w.tensor(name, &Device::Cpu).unwrap();
    assert_eq!(stored.dtype(), DType::F16);
    let shape = w.shape(name).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let got = w
            .var_builder(dtype, &Device::Cpu)
            .get(shape.as_slice(), name)
            .unwrap();
        assert_eq!(got.dtype(), dtype);
        // f16 → f32 is exact, so comparing in f32 checks the conversion itself.
        let want = stored.to_dtype(DType::F32).unwrap();
        let back = got.to_dtype(DType::F32).unwrap();
        let tolerance = if dtype == DType::BF16 { 1e-2 } else { 0.0 };
        let diff = max_abs_diff(&want, &back);
        let scale: f32 = want
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff <= tolerance * scale, "{dtype:?}: {diff}");
    }
}

#[test]
fn detected_configs_match_the_folder_where_shapes_can_tell() {
    let single = load_single_file(&fixture("tiny.safetensors"), Some(&fixture("tiny"))).unwrap();

    let want: UNetConfig = read_json("tiny/unet/config.json");
    let got = detect::unet_config(&single.unet.weights).unwrap();
    // Shapes cannot show the head count or the GroupNorm groups: SD's 8 heads and 32 groups are
    // assumed, where the tiny model has 2 and 8.
    assert_eq!(got.attention_head_dim, PerBlock::Same(8));
    assert_eq!(got.norm_num_groups, 32);
    let got = UNetConfig {
        attention_head_dim: want.attention_head_dim.clone(),
        norm_num_groups: want.norm_num_groups,
        ..got
    };
    assert_eq!(got, want);

    let want: VaeConfig = read_json("tiny/vae/config.json");
    let got = detect::vae_config(&single.vae.weights).unwrap();
    assert_eq!(got.norm_num_groups, 32);
    assert_eq!(
        VaeConfig {
            norm_num_groups: want.norm_num_groups,
            ..got
        },
        want
    );

    // The tiny text encoder is 32 wide: no 64-channel heads fit, so detection refuses.
    let err = detect::text_encoder_config(
        &single.text_encoder.as_ref().unwrap().weights,
        TextEncoderLayout::OpenAiClip,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("tiny.safetensors") && err.contains("attention heads"),
        "{err}"
    );

    // Without a config folder, a 32-wide text encoder cannot be loaded.
    let err = load_single_file(&fixture("tiny.safetensors"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pass the model's diffusers config folder"),
        "{err}"
    );
}

#[test]
fn detects_an_sd2_style_unet() {
    // Linear projections and 1/2/2 transformer layers per level (fixtures/README.md).
    let weights = Weights::open(&fixture(
        "unet_sd2_style/diffusion_pytorch_model.safetensors",
    ))
    .unwrap();
    let want: UNetConfig = read_json("unet_sd2_style/config.json");
    let got = detect::unet_config(&weights).unwrap();
    assert!(got.use_linear_projection);
    // Not visible in shapes: heads, groups, and its non-SD time embedding and fp16 upcasting.
    let got = UNetConfig {
        attention_head_dim: want.attention_head_dim.clone(),
        norm_num_groups: want.norm_num_groups,
        flip_sin_to_cos: want.flip_sin_to_cos,
        freq_shift: want.freq_shift,
        upcast_attention: want.upcast_attention,
        ..got
    };
    assert_eq!(got, want);
}

/// Writes a safetensors file of `tensors`.
fn save(name: &str, tensors: &HashMap<String, Tensor>) -> Scratch {
    let path = scratch(name);
    candle_core::safetensors::save(tensors, &*path).unwrap();
    path
}

#[test]
fn text_encoder_detection() {
    // A CLIP-shaped text encoder, 128 wide (2 heads of 64), vocabulary 1000, 3 layers.
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap();
    let mut tensors = HashMap::new();
    tensors.insert(
        "text_model.embeddings.token_embedding.weight".to_owned(),
        zeros(&[1000, 128]),
    );
    tensors.insert(
        "text_model.embeddings.position_embedding.weight".to_owned(),
        zeros(&[77, 128]),
    );
    for layer in 0..3 {
        tensors.insert(
            format!("text_model.encoder.layers.{layer}.mlp.fc1.weight"),
            zeros(&[512, 128]),
        );
    }
    let weights = Weights::open(&save("clip128.safetensors", &tensors)).unwrap();
    let clip = detect::text_encoder_config(&weights, TextEncoderLayout::OpenAiClip).unwrap();
    let want: ClipTextConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 512,
        "num_hidden_layers": 3, "num_attention_heads": 2, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    }))
    .unwrap();
    assert_eq!(clip, want);
    // OpenCLIP (SD 2.x): exact GELU, and the last layer is dropped as in diffusers' SD 2 configs.
    let open_clip = detect::text_encoder_config(&weights, TextEncoderLayout::OpenClip).unwrap();
    assert_eq!(open_clip.num_hidden_layers, 2);
    assert_eq!(open_clip.hidden_act, dream_models::config::Activation::Gelu);
}

#[test]
fn open_clip_text_encoder_is_split_into_q_k_v() {
    // The tiny model with its text encoder in OpenCLIP's layout (SD 2.x single files):
    // nn.MultiheadAttention stores q, k and v stacked in that order as `in_proj_weight`.
    let folder = folder();
    let te = &folder.text_encoder.as_ref().unwrap().weights;
    let get = |name: &str| te.tensor(name, &Device::Cpu).unwrap();
    let single = Checkpoint::open(fixture("tiny.safetensors")).unwrap();
    let mut tensors: HashMap<String, Tensor> = single
        .names()
        .filter(|n| !n.starts_with("cond_stage_model."))
        .map(|n| (n.to_owned(), single.tensor(n, &Device::Cpu).unwrap()))
        .collect();
    let oc = "cond_stage_model.model.";
    let tm = "text_model.";
    let mut put = |name: String, t: Tensor| tensors.insert(format!("{oc}{name}"), t);
    put(
        "token_embedding.weight".into(),
        get(&format!("{tm}embeddings.token_embedding.weight")),
    );
    put(
        "positional_embedding".into(),
        get(&format!("{tm}embeddings.position_embedding.weight")),
    );
    for p in ["weight", "bias"] {
        put(
            format!("ln_final.{p}"),
            get(&format!("{tm}final_layer_norm.{p}")),
        );
    }
    for i in 0..4 {
        let l = format!("{tm}encoder.layers.{i}");
        let r = format!("transformer.resblocks.{i}");
        for p in ["weight", "bias"] {
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .map(|proj| get(&format!("{l}.self_attn.{proj}.{p}")));
            put(
                format!("{r}.attn.in_proj_{p}"),
                Tensor::cat(&qkv, 0).unwrap(),
            );
            put(
                format!("{r}.attn.out_proj.{p}"),
                get(&format!("{l}.self_attn.out_proj.{p}")),
            );
            put(
                format!("{r}.ln_1.{p}"),
                get(&format!("{l}.layer_norm1.{p}")),
            );
            put(
                format!("{r}.ln_2.{p}"),
                get(&format!("{l}.layer_norm2.{p}")),
            );
            put(
                format!("{r}.mlp.c_fc.{p}"),
                get(&format!("{l}.mlp.fc1.{p}")),
            );
            put(
                format!("{r}.mlp.c_proj.{p}"),
                get(&format!("{l}.mlp.fc2.{p}")),
            );
        }
    }
    put(
        "text_projection".into(),
        Tensor::zeros((32, 32), DType::F16, &Device::Cpu).unwrap(),
    );
    let path = save("open_clip.safetensors", &tensors);
    let model = load_single_file(&path, Some(&fixture("tiny"))).unwrap();
    let max = assert_same_weights(
        te,
        &model.text_encoder.as_ref().unwrap().weights,
        "OpenCLIP",
    );
    assert_eq!(max, 0.0);
    // Without a config, an OpenCLIP text encoder means SD 2.x and v-prediction: 32 wide fails
    // head detection first, so the rule is checked directly.
    assert_eq!(
        detect::default_prediction(true, false),
        Prediction::VPrediction
    );
    assert_eq!(detect::default_prediction(true, true), Prediction::Epsilon);
    assert_eq!(
        detect::default_prediction(false, false),
        Prediction::Epsilon
    );
}

#[test]
fn vae_files_in_any_naming() {
    let folder = folder();
    // diffusers naming: the folder's own file.
    let vae = load_vae_file(&fixture("tiny/vae/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(
        assert_same_weights(&folder.vae.weights, &vae.weights, "diffusers VAE"),
        0.0
    );
    let want: VaeConfig = read_json("tiny/vae/config.json");
    assert_eq!(
        VaeConfig {
            norm_num_groups: 8,
            ..vae.config
        },
        want
    );

    // Latent-diffusion naming, with the first_stage_model. prefix (the VAE of a full checkpoint).
    let vae = load_vae_file(&fixture("tiny.safetensors")).unwrap();
    assert_eq!(
        assert_same_weights(&folder.vae.weights, &vae.weights, "LDM VAE"),
        0.0
    );

    // Latent-diffusion naming without the prefix (A1111 .vae.safetensors), and the pre-0.14
    // diffusers attention names, both made by renaming the single file's tensors.
    let single = Checkpoint::open(fixture("tiny.safetensors")).unwrap();
    let bare: HashMap<String, Tensor> = single
        .names()
        .filter_map(|n| {
            Some((
                n.strip_prefix("first_stage_model.")?.to_owned(),
                single.tensor(n, &Device::Cpu).unwrap(),
            ))
        })
        .collect();
    let vae = load_vae_file(&save("tiny.vae.safetensors", &bare)).unwrap();
    assert_eq!(
        assert_same_weights(&folder.vae.weights, &vae.weights, "bare LDM VAE"),
        0.0
    );

    let legacy: HashMap<String, Tensor> = folder
        .vae
        .weights
        .names()
        .map(|n| {
            let old = n
                .replace("attentions.0.to_q.", "attentions.0.query.")
                .replace("attentions.0.to_k.", "attentions.0.key.")
                .replace("attentions.0.to_v.", "attentions.0.value.")
                .replace("attentions.0.to_out.0.", "attentions.0.proj_attn.");
            (old, folder.vae.weights.tensor(n, &Device::Cpu).unwrap())
        })
        .collect();
    assert!(legacy.contains_key("decoder.mid_block.attentions.0.proj_attn.weight"));
    let vae = load_vae_file(&save("legacy_vae.safetensors", &legacy)).unwrap();
    assert_eq!(
        assert_same_weights(&folder.vae.weights, &vae.weights, "legacy VAE"),
        0.0
    );
}

#[test]
fn diffusers_folder_variants() {
    // An fp16-variant file name and a text encoder saved without the `text_model.` level
    // (transformers ≥ 5.6).
    let folder = folder();
    let dir = scratch("variant_folder");
    for part in ["unet", "vae", "text_encoder", "scheduler"] {
        std::fs::create_dir_all(dir.join(part)).unwrap();
    }
    for rel in [
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
    ] {
        std::fs::copy(fixture(&format!("tiny/{rel}")), dir.join(rel)).unwrap();
    }
    std::fs::copy(
        fixture("tiny/unet/diffusion_pytorch_model.safetensors"),
        dir.join("unet/diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tiny/vae/diffusion_pytorch_model.safetensors"),
        dir.join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let te = &folder.text_encoder.as_ref().unwrap().weights;
    let flat: HashMap<String, Tensor> = te
        .names()
        .map(|n| {
            (
                n.strip_prefix("text_model.").unwrap().to_owned(),
                te.tensor(n, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&flat, dir.join("text_encoder/model.safetensors")).unwrap();
    let variant = load_diffusers_folder(&dir).unwrap();
    assert_same_model(&folder, &variant, "variant folder");

    std::fs::remove_file(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let err = load_diffusers_folder(&dir).unwrap_err().to_string();
    assert!(
        err.contains("vae")
            && err.contains("no weights file")
            && err.contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}

fn open_error(path: &Path) -> String {
    let err = Checkpoint::open(path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "the error names the file: {err}"
    );
    err
}

#[test]
fn damaged_safetensors_are_reported() {
    let good = std::fs::read(fixture("tiny.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    // Cut inside the tensor data, as an interrupted download leaves it.
    let err = open_error(&write("cut_data.safetensors", &good[..good.len() / 2]));
    assert!(err.contains("truncated"), "{err}");
    // Cut inside the header: its declared length runs past the end of the file.
    let err = open_error(&write("cut_header.safetensors", &good[..header_len / 2]));
    assert!(
        err.contains(&format!("declared as {header_len} bytes")) && err.contains("truncated"),
        "{err}"
    );
    let err = open_error(&write("tiny_file.safetensors", &good[..5]));
    assert!(err.contains("too short"), "{err}");

    let header = |json: &str, data: usize| {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    };
    let err = open_error(&write("bad_json.safetensors", &header("{\"a\": [1, 2", 0)));
    assert!(err.contains("not valid JSON"), "{err}");
    // Offsets past the data the file holds.
    let json = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,1024]}}"#;
    let err = open_error(&write("offsets.safetensors", &header(json, 24)));
    assert!(err.contains("b"), "{err}");
    // Offsets that disagree with shape × dtype.
    let json = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    let err = open_error(&write("size.safetensors", &header(json, 12)));
    assert!(err.contains("does not match its shape and dtype"), "{err}");
}

#[test]
fn foreign_files_are_refused() {
    // Random bytes (a fixed xorshift stream).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let err = open_error(&write("noise.ckpt", &noise));
    assert!(err.contains("not a recognised weights format"), "{err}");
    let err = open_error(&write("empty.safetensors", &[]));
    assert!(err.contains("empty"), "{err}");

    // A valid safetensors file that is not Stable Diffusion.
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let tensors = HashMap::from([
        ("encoder.layer.0.weight".to_owned(), zeros(&[8, 8])),
        ("classifier.bias".to_owned(), zeros(&[3])),
    ]);
    let path = save("not_sd.safetensors", &tensors);
    let err = load_single_file(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("not_sd.safetensors does not look like a Stable Diffusion checkpoint")
            && err.contains("no model.diffusion_model.* tensors"),
        "{err}"
    );
    let err = load_vae_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("unrecognised VAE tensor encoder.layer.0.weight"),
        "{err}"
    );
    let path = save(
        "classifier.safetensors",
        &HashMap::from([("classifier.bias".to_owned(), zeros(&[3]))]),
    );
    let err = load_vae_file(&path).unwrap_err().to_string();
    assert!(err.contains("not a VAE file"), "{err}");
}

#[test]
fn hostile_pickles_are_refused() {
    for (file, callable) in [
        ("hostile.ckpt", "os.system"),
        ("hostile_plain.pkl", "os.system"),
        ("hostile_stack_global.pkl", "posix.system"),
    ] {
        let path = fixture(file);
        let err = open_error(&path);
        assert!(
            err.contains(&format!("refusing to load: the pickle calls {callable}")),
            "{file}: {err}"
        );
        let err = load_single_file(&path, None).unwrap_err().to_string();
        assert!(err.contains(callable), "{file}: {err}");
    }
}
