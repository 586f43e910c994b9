//! SDXL's networks against transformers and diffusers on the tiny SDXL model of
//! `fixtures/tiny-sdxl/`: both text encoders (the penultimate hidden states SDXL conditions on,
//! the second encoder's pooled and projected output) and the UNet with its `text_time` added
//! conditioning. `fixtures/sdxl/networks.safetensors` holds the references
//! (`tools/parity/sdxl_network_fixtures.py` says what each tensor is).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use dream_models::clip::{ClipTextModelWithProjection, ClipTextTransformer};
use dream_models::config::{ClipTextConfig, UNetConfig};
use dream_models::unet::{AddedConditions, UNet2DConditionModel};
use dream_test_support::{fixture, load_fixture, max_abs_diff};

/// The CLIP tests' tolerance (crates/dream-models/tests/clip.rs).
const TEXT_TOLERANCE: f32 = 1e-5;
/// The UNet tests' tolerance (crates/dream-models/tests/unet.rs).
const UNET_TOLERANCE: f32 = 1e-4;

fn reference() -> HashMap<String, Tensor> {
    load_fixture("sdxl/networks.safetensors")
}

fn config<C: serde::de::DeserializeOwned>(component: &str) -> C {
    let path = fixture(&format!("tiny-sdxl/{component}/config.json"));
    let text = std::fs::read_to_string(&path).expect("config.json reads");
    serde_json::from_str(&text).expect("config.json parses")
}

/// The fp16 fixture weights widened to f32, exactly the values the references used.
fn weights(component: &str, file: &str) -> VarBuilder<'static> {
    let path = fixture(&format!("tiny-sdxl/{component}/{file}"));
    // SAFETY: the fixture file is not modified while the test maps it.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
        .expect("weights load")
}

fn text_encoder() -> ClipTextTransformer {
    let cfg: ClipTextConfig = config("text_encoder");
    ClipTextTransformer::new(weights("text_encoder", "model.safetensors"), &cfg).unwrap()
}

fn text_encoder_2(cfg: &ClipTextConfig) -> ClipTextModelWithProjection {
    ClipTextModelWithProjection::new(weights("text_encoder_2", "model.safetensors"), cfg).unwrap()
}

fn ids(reference: &HashMap<String, Tensor>, name: &str) -> Tensor {
    reference[name].to_dtype(DType::U32).unwrap()
}

fn check(what: &str, ours: &Tensor, theirs: &Tensor, tolerance: f32) {
    let err = max_abs_diff(ours, theirs);
    println!("{what}: max abs error {err:e}");
    assert!(err <= tolerance, "{what}: max abs error {err}");
}

/// SDXL conditions on hidden_states[-2] of both encoders (no final LayerNorm); the second
/// encoder also gives the pooled output at the end-of-text token and its projection. Prompts: a
/// short one, one truncated to 77 tokens (EOS in the last position) and the empty one;
/// tokenizer_2 pads with "!" (id 0), so the end-of-text token is the only 49407.
#[test]
fn text_encoders_match_transformers() {
    let reference = reference();
    let out = text_encoder()
        .forward(&ids(&reference, "input_ids"))
        .unwrap();
    let penultimate = &out.hidden_states[out.hidden_states.len() - 2];
    check(
        "text_encoder.penultimate",
        penultimate,
        &reference["text_encoder.penultimate"],
        TEXT_TOLERANCE,
    );

    let cfg: ClipTextConfig = config("text_encoder_2");
    assert_eq!((cfg.eos_token_id, cfg.projection_dim), (2, 32));
    let encoder = text_encoder_2(&cfg);
    let input_ids = ids(&reference, "input_ids_2");
    let positions = encoder.text_model().eos_positions(&input_ids).unwrap();
    // Independently known: "a photograph of an astronaut riding a horse" is 8 tokens after BOS.
    assert_eq!(positions, [9, 76, 1]);
    let (out, text_embeds) = encoder.forward(&input_ids).unwrap();
    let penultimate = &out.hidden_states[out.hidden_states.len() - 2];
    for (what, ours) in [
        ("text_encoder_2.penultimate", penultimate),
        ("text_encoder_2.last_hidden_state", &out.last_hidden_state),
        (
            "text_encoder_2.pooler_output",
            &out.pooled(&positions).unwrap(),
        ),
        ("text_encoder_2.text_embeds", &text_embeds),
    ] {
        check(what, ours, &reference[what], TEXT_TOLERANCE);
    }
}

/// Textual inversion encodes embeddings, not ids: pooling then reads where the caller says the
/// end-of-text token is, and equals the ids path.
#[test]
fn text_embeds_from_token_embeddings() {
    let reference = reference();
    let cfg: ClipTextConfig = config("text_encoder_2");
    let encoder = text_encoder_2(&cfg);
    let input_ids = ids(&reference, "input_ids_2");
    let embeddings = encoder
        .text_model()
        .token_embedding()
        .index_select(&input_ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((3, 77, 32))
        .unwrap();
    let out = encoder
        .text_model()
        .forward_embeddings(&embeddings, None)
        .unwrap();
    let positions = encoder.text_model().eos_positions(&input_ids).unwrap();
    let text_embeds = encoder.text_embeds(&out, &positions).unwrap();
    check(
        "text_embeds via embeddings",
        &text_embeds,
        &reference["text_encoder_2.text_embeds"],
        TEXT_TOLERANCE,
    );
}

/// transformers' other pooling rule (any eos_token_id but the legacy 2): the first position
/// holding that id. The reference ran the same weights with eos_token_id 320 ("a</w>"), so it
/// pooled at the prompt's first "a", not at its last token or its highest id.
#[test]
fn first_eos_token_rule_matches_transformers() {
    let reference = reference();
    let cfg = ClipTextConfig {
        eos_token_id: 320,
        ..config("text_encoder_2")
    };
    let encoder = text_encoder_2(&cfg);
    let input_ids = ids(&reference, "input_ids_2").narrow(0, 0, 1).unwrap();
    assert_eq!(encoder.text_model().eos_positions(&input_ids).unwrap(), [1]);
    let (_, text_embeds) = encoder.forward(&input_ids).unwrap();
    check(
        "text_embeds_eos320",
        &text_embeds,
        &reference["text_encoder_2.text_embeds_eos320"],
        TEXT_TOLERANCE,
    );
}

#[test]
fn pooling_without_an_end_of_text_token_is_an_error() {
    let cfg = ClipTextConfig {
        eos_token_id: 49407,
        ..config("text_encoder_2")
    };
    let encoder = text_encoder_2(&cfg);
    let no_eos = Tensor::new(&[[49406u32, 320, 0, 0]], &Device::Cpu).unwrap();
    let err = encoder.forward(&no_eos).unwrap_err().to_string();
    assert!(err.contains("no end-of-text token (id 49407)"), "{err}");

    let ids = Tensor::new(&[[49406u32, 320, 49407]], &Device::Cpu).unwrap();
    let out = encoder.text_model().forward(&ids).unwrap();
    let err = out.pooled(&[2, 2]).unwrap_err().to_string();
    assert!(err.contains("got 2 for a batch of 1"), "{err}");
    let err = out.pooled(&[3]).unwrap_err().to_string();
    assert!(err.contains("position 3 is past the 3 tokens"), "{err}");
}

fn unet() -> UNet2DConditionModel {
    let cfg: UNetConfig = config("unet");
    UNet2DConditionModel::new(weights("unet", "diffusion_pytorch_model.safetensors"), &cfg).unwrap()
}

/// One UNet call with SDXL's pooled text embedding and micro-conditioning, different
/// `time_ids` per batch item (the reference's second item moves by up to 0.30 when it is given
/// the first item's).
#[test]
fn sdxl_unet_matches_diffusers() -> Result<()> {
    let reference = reference();
    let unet = unet();
    assert!(unet.needs_added_conditions());
    let added = AddedConditions {
        text_embeds: &reference["unet.text_embeds"],
        time_ids: &reference["unet.time_ids"],
    };
    let timestep = reference["unet.timestep"].to_scalar::<f64>()?;
    let out = unet.forward_with_added(
        &reference["unet.sample"],
        timestep,
        &reference["unet.encoder_hidden_states"],
        Some(&added),
    )?;
    check("unet.out", &out, &reference["unet.out"], UNET_TOLERANCE);
    Ok(())
}

#[test]
fn sdxl_unet_refuses_a_call_without_added_conditions() {
    let reference = reference();
    let err = unet()
        .forward(
            &reference["unet.sample"],
            701.0,
            &reference["unet.encoder_hidden_states"],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs the pooled text embedding and size conditioning"),
        "{err}"
    );
}

/// Added conditions of the wrong widths or batch are refused by name, before any matmul.
#[test]
fn sdxl_unet_refuses_misshapen_added_conditions() {
    let reference = reference();
    let unet = unet();
    let (text_embeds, time_ids) = (&reference["unet.text_embeds"], &reference["unet.time_ids"]);
    for (text_embeds, time_ids, expected) in [
        (
            text_embeds.narrow(1, 0, 16).unwrap(),
            time_ids.clone(),
            "takes 80 channels of pooled text embedding and micro-conditioning (8 per number), \
             not 16 pooled + 6 numbers",
        ),
        (
            text_embeds.clone(),
            time_ids.narrow(1, 0, 5).unwrap(),
            "not 32 pooled + 5 numbers",
        ),
        (
            text_embeds.narrow(0, 0, 1).unwrap(),
            time_ids.clone(),
            "text_embeds (1 rows) and time_ids (2 rows) need one row per latent (2)",
        ),
    ] {
        let added = AddedConditions {
            text_embeds: &text_embeds,
            time_ids: &time_ids,
        };
        let err = unet
            .forward_with_added(
                &reference["unet.sample"],
                701.0,
                &reference["unet.encoder_hidden_states"],
                Some(&added),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}
