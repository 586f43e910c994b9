//! The CLIP text encoder against transformers' `CLIPTextModel` on the tiny fixture model
//! (fixtures/ref/txt2img_euler.safetensors holds the ids diffusers fed it and what it returned).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use dream_models::clip::ClipTextTransformer;
use dream_models::config::ClipTextConfig;
use dream_test_support::max_abs_diff;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn text_encoder() -> ClipTextTransformer {
    let dir = format!("{FIXTURES}/tiny/text_encoder");
    let config = std::fs::read_to_string(format!("{dir}/config.json")).expect("config.json");
    let cfg: ClipTextConfig = serde_json::from_str(&config).expect("config.json parses");
    // SAFETY: the fixture file is not modified while the test maps it.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[format!("{dir}/model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .expect("model.safetensors loads");
    ClipTextTransformer::new(vb, &cfg).expect("the text encoder builds")
}

#[test]
fn prompt_embeds_match_transformers() {
    let reference = candle_core::safetensors::load(
        format!("{FIXTURES}/ref/txt2img_euler.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors load");
    let model = text_encoder();
    for (ids, embeds) in [
        ("input_ids", "prompt_embeds"),
        ("negative_input_ids", "negative_prompt_embeds"),
    ] {
        let input_ids = reference[ids].to_dtype(DType::U32).unwrap();
        let out = model.forward(&input_ids).unwrap();
        assert_eq!(out.hidden_states.len(), 5, "embeddings + 4 layers");
        let err = max_abs_diff(&out.last_hidden_state, &reference[embeds]);
        println!("{embeds}: max abs error {err:e}");
        assert!(err <= 1e-5, "{embeds}: max abs error {err}");
        // The embeddings vary: a broken mask or position embedding could not pass as constant.
        let spread = max_abs_diff(
            &out.last_hidden_state.narrow(1, 0, 1).unwrap(),
            &out.last_hidden_state.narrow(1, 76, 1).unwrap(),
        );
        assert!(
            spread > 0.1,
            "{embeds}: first and last position give nearly equal embeddings"
        );
    }
}

#[test]
fn causal_attention_ignores_later_tokens() {
    // With a causal mask, changing the last prompt token changes no earlier position.
    let model = text_encoder();
    let a = Tensor::new(&[[49406u32, 320, 8853, 539, 49407]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[49406u32, 320, 8853, 4558, 49407]], &Device::Cpu).unwrap();
    let (a, b) = (
        model.forward(&a).unwrap().last_hidden_state,
        model.forward(&b).unwrap().last_hidden_state,
    );
    assert_eq!(
        max_abs_diff(&a.narrow(1, 0, 3).unwrap(), &b.narrow(1, 0, 3).unwrap()),
        0.0
    );
    assert!(max_abs_diff(&a.narrow(1, 3, 2).unwrap(), &b.narrow(1, 3, 2).unwrap()) > 1e-3);
}

#[test]
fn too_many_tokens_is_an_error() {
    let ids = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    let err = text_encoder().forward(&ids).unwrap_err().to_string();
    assert!(err.contains("at most 77 tokens"), "{err}");
}
