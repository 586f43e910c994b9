//! Prompt conditioning on the tiny model against A1111's own code: fixtures/prompt/
//! a1111_conditioning.* hold what A1111's `get_multicond_learned_conditioning` and
//! `get_learned_conditioning` return through `FrozenCLIPEmbedderWithCustomWords` (chunking,
//! emphasis, clip skip) with the same text encoder, one tensor per schedule row
//! (tools/parity/prompt_fixtures.py). The tiny text encoder there has its final LayerNorm bias
//! set to a fixed non-zero vector: with the random model's zero bias the output's mean is ~1e-9,
//! and "Original" emphasis divides by that mean.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use dream_core::prompt::chunking::Chunker;
use dream_core::prompt::{self, Fragment, PromptOptions, Syntax};
use dream_core::tokenizer::ClipTokenizer;
use dream_models::clip::ClipTextTransformer;
use dream_models::config::ClipTextConfig;
use dream_pipeline::conditioning::{
    ConditioningOptions, Emphasis, PromptConditioning, TextualInversions,
};
use dream_pipeline::{DreamError, StableDiffusion};
use dream_test_support::{copy_dir, fixture, max_abs_diff, tiny_copy, tiny_model};
use serde_json::Value;

/// A reference row `[L, D]` as `[1, len, D]`: lengthened by repeating its last vector (A1111's
/// `stack_conds` for `AND` parts), then by copies of `empty` (the empty prompt's chunk).
fn padded(row: &Tensor, and_len: usize, len: usize, empty: &Tensor) -> Tensor {
    let mut t = row.unsqueeze(0).unwrap();
    let l = t.dim(1).unwrap();
    if l < and_len {
        let last = t.narrow(1, l - 1, 1).unwrap();
        t = Tensor::cat(&[&t, &last.repeat((1, and_len - l, 1)).unwrap()], 1).unwrap();
    }
    let l = t.dim(1).unwrap();
    if l < len {
        let copies = (len - l) / 77;
        let chunks = empty.unsqueeze(0).unwrap().repeat((1, copies, 1)).unwrap();
        t = Tensor::cat(&[&t, &chunks], 1).unwrap();
    }
    t
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tiny model's tokenizer and text encoder, the encoder's final LayerNorm bias replaced if
/// given.
fn text_model(final_norm_bias: Option<&Tensor>) -> (ClipTokenizer, ClipTextTransformer) {
    let tokenizer = ClipTokenizer::from_vocab_and_merges(
        &read(fixture("tiny/tokenizer/vocab.json")),
        &read(fixture("tiny/tokenizer/merges.txt")),
    )
    .unwrap();
    let config: ClipTextConfig =
        serde_json::from_str(&read(fixture("tiny/text_encoder/config.json"))).unwrap();
    let mut weights = candle_core::safetensors::load(
        fixture("tiny/text_encoder/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for tensor in weights.values_mut() {
        if tensor.dtype() == DType::F16 {
            *tensor = tensor.to_dtype(DType::F32).unwrap();
        }
    }
    if let Some(bias) = final_norm_bias {
        weights.insert("text_model.final_layer_norm.bias".into(), bias.clone());
    }
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    (tokenizer, ClipTextTransformer::new(vb, &config).unwrap())
}

#[test]
fn conditioning_matches_a1111() {
    let cases: Value =
        serde_json::from_str(&read(fixture("prompt/a1111_conditioning.json"))).unwrap();
    let reference: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixture("prompt/a1111_conditioning.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (tokenizer, text_encoder) = text_model(Some(&reference["final_layer_norm.bias"]));
    // The first case's negative prompt is "": the empty prompt's chunk at clip skip 1.
    let empty = &reference["case0.negative.row0"];
    let mut worst = 0.0f32;
    for (index, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = case["prompt"].as_str().unwrap();
        let emphasis = match case["emphasis"].as_str().unwrap() {
            "Original" => Emphasis::Original,
            "No norm" => Emphasis::NoNorm,
            other => panic!("{other}"),
        };
        let options = ConditioningOptions {
            prompt: PromptOptions::new(Syntax::A1111, case["steps"].as_u64().unwrap() as usize),
            clip_skip: case["clip_skip"].as_u64().unwrap() as usize,
            emphasis,
        };
        let plan = prompt::plan(
            prompt,
            case["negative_prompt"].as_str().unwrap(),
            &options.prompt,
        )
        .unwrap();
        let conditioning = PromptConditioning::encode(
            &tokenizer,
            &text_encoder,
            &TextualInversions::default(),
            plan,
            &options,
        )
        .unwrap();
        let plan = conditioning.plan();
        let parts = case["parts"].as_array().unwrap();
        assert_eq!(plan.positive.len(), parts.len(), "{prompt:?}");

        let row = |name: String| &reference[&name];
        let part_rows = |p: usize| parts[p]["until_steps"].as_array().unwrap().len();
        let and_len = (0..parts.len())
            .map(|p| row(format!("case{index}.part{p}.row0")).dim(0).unwrap())
            .max()
            .unwrap();
        let negative_len = row(format!("case{index}.negative.row0")).dim(0).unwrap();
        let len = and_len.max(negative_len);

        for (p, part) in plan.positive.iter().enumerate() {
            assert_eq!(part.weight, parts[p]["weight"].as_f64().unwrap());
            assert_eq!(part.schedule.len(), part_rows(p), "{prompt:?} part {p}");
            for (r, entry) in part.schedule.iter().enumerate() {
                assert_eq!(
                    entry.until_step as u64,
                    parts[p]["until_steps"][r].as_u64().unwrap()
                );
                let expected = padded(
                    row(format!("case{index}.part{p}.row{r}")),
                    and_len,
                    len,
                    empty,
                );
                let ours = conditioning.positive(p, entry.text).unwrap();
                let diff = max_abs_diff(ours, &expected);
                assert!(diff < 1e-5, "{prompt:?} part {p} row {r}: {diff}");
                worst = worst.max(diff);
            }
        }
        let negative_rows = case["negative_until_steps"].as_array().unwrap();
        assert_eq!(plan.negative.schedule.len(), negative_rows.len());
        for (r, entry) in plan.negative.schedule.iter().enumerate() {
            let expected = padded(row(format!("case{index}.negative.row{r}")), 0, len, empty);
            let diff = max_abs_diff(conditioning.negative(entry.text).unwrap(), &expected);
            assert!(diff < 1e-5, "{prompt:?} negative row {r}: {diff}");
            worst = worst.max(diff);
        }
    }
    println!("max abs difference from A1111: {worst:e}");
}

/// fixtures/prompt/compel_conditioning.*: compel's conditioning as InvokeAI builds it
/// (tools/parity/compel_fixtures.py): weights, downweighting by masking, `.blend()`, `.and()`,
/// legacy blends with and without `skip_normalize`, inline `[negative]` words, long prompts
/// split at sentence and word ends, clip skip; positive and negative padded to one length.
#[test]
fn invokeai_conditioning_matches_compel() {
    let cases: Value =
        serde_json::from_str(&read(fixture("prompt/compel_conditioning.json"))).unwrap();
    let reference = candle_core::safetensors::load(
        fixture("prompt/compel_conditioning.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (tokenizer, text_encoder) = text_model(None);
    let mut worst = 0.0f32;
    for (index, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = case["prompt"].as_str().unwrap();
        let mut options = ConditioningOptions::new(20);
        options.prompt.syntax = Syntax::InvokeAi;
        options.prompt.skip_normalize = case["skip_normalize"].as_bool().unwrap();
        options.clip_skip = case["clip_skip"].as_u64().unwrap() as usize;
        let plan = prompt::plan(
            prompt,
            case["negative_prompt"].as_str().unwrap(),
            &options.prompt,
        )
        .unwrap();
        let context = PromptConditioning::encode(
            &tokenizer,
            &text_encoder,
            &TextualInversions::default(),
            plan,
            &options,
        )
        .unwrap_or_else(|e| panic!("{prompt:?}: {e}"))
        .context_at(0)
        .unwrap();
        let expected = Tensor::stack(
            &[
                &reference[&format!("case{index}.negative")],
                &reference[&format!("case{index}.positive")],
            ],
            0,
        )
        .unwrap();
        assert_eq!(context.dims(), expected.dims(), "{prompt:?}");
        let diff = max_abs_diff(&context, &expected);
        assert!(diff < 1e-5, "{prompt:?}: {diff}");
        worst = worst.max(diff);
    }
    println!("max abs difference from compel: {worst:e}");
}

#[test]
fn context_follows_the_schedule_and_guidance_combines_parts() {
    let model = tiny_model();
    let options = ConditioningOptions::new(10);

    let edited = model.condition("a [cat:dog:0.5]", "", &options).unwrap();
    assert!(!edited.is_constant());
    let cat = model.condition("a cat", "", &options).unwrap();
    let dog = model.condition("a dog", "", &options).unwrap();
    for step in 0..10 {
        let expected = if step <= 5 { &cat } else { &dog };
        assert_eq!(
            max_abs_diff(
                &edited.context_at(step).unwrap(),
                &expected.context_at(0).unwrap()
            ),
            0.0,
            "step {step}"
        );
    }

    // Two AND parts: [uncond, part 1, part 2] in, uncond + Σ (cond_i − uncond)·w_i·cfg out.
    let and = model
        .condition("a cat AND a dog:0.5", "blurry", &options)
        .unwrap();
    assert!(and.is_constant());
    assert_eq!(and.context_at(3).unwrap().dims()[0], 3);
    let predictions = Tensor::new(&[[1.0f32, 2.0], [3.0, 5.0], [0.0, 4.0]], &Device::Cpu).unwrap();
    let guided = and.guide(&predictions, 7.0).unwrap();
    let expected = [
        1.0 + (3.0 - 1.0) * 7.0 + (0.0 - 1.0) * 3.5,
        2.0 + 3.0 * 7.0 + 2.0 * 3.5,
    ];
    assert_eq!(guided.to_vec2::<f32>().unwrap(), vec![expected.to_vec()]);
}

#[test]
fn plain_prompts_encode_as_diffusers_does() {
    // No syntax, under 75 tokens: the 77 ids diffusers encodes, weights all 1, so the context is
    // diffusers' [negative, positive] text embeddings.
    let model = tiny_model();
    let reference =
        candle_core::safetensors::load(fixture("ref/txt2img_euler.safetensors"), &Device::Cpu)
            .unwrap();
    let context = model
        .condition(
            "a photograph of an astronaut riding a horse",
            "blurry",
            &ConditioningOptions::new(20),
        )
        .unwrap()
        .context_at(0)
        .unwrap();
    let err = max_abs_diff(&context, &reference["unet.encoder_hidden_states"]);
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn bad_requests_are_errors() {
    let model = tiny_model();
    let mut options = ConditioningOptions::new(20);
    options.clip_skip = 99;
    assert!(matches!(
        model.condition("a cat", "", &options),
        Err(DreamError::InvalidRequest(_))
    ));
    assert!(matches!(
        model.condition("(a cat:1.2.3)", "", &ConditioningOptions::new(20)),
        Err(DreamError::InvalidRequest(_))
    ));
}

#[test]
fn comfyui_emphasis_moves_weighted_tokens_away_from_the_empty_prompt() {
    // ComfyUI's `(z - z_empty) * w + z_empty` for tokens weighted w != 1, written out here.
    let model = tiny_model();
    let mut options = ConditioningOptions::new(20);
    options.emphasis = Emphasis::ComfyUi;
    let at = |prompt: &str| {
        let context = model
            .condition(prompt, "", &options)
            .unwrap()
            .context_at(0)
            .unwrap();
        (context.get(0).unwrap(), context.get(1).unwrap())
    };
    let (empty, weighted) = at("a (cat:1.5)");
    let (_, plain) = at("a cat");
    // Token 2 ("cat") weighs 1.5; the others 1.
    let token = |t: &Tensor, i: usize| t.get(i).unwrap();
    let expected = ((token(&plain, 2) - token(&empty, 2)).unwrap() * 1.5)
        .unwrap()
        .add(&token(&empty, 2))
        .unwrap();
    assert!(max_abs_diff(&token(&weighted, 2), &expected) < 1e-6);
    for i in [0, 1, 3, 40] {
        assert_eq!(max_abs_diff(&token(&weighted, i), &token(&plain, i)), 0.0);
    }
}

#[test]
fn textual_inversion_vectors_stand_in_for_their_names() {
    // Embeddings made of the text encoder's own token vectors must condition exactly as those
    // tokens do, weights and chunking included.
    let (tokenizer, text_encoder) = text_model(None);
    let rows = |text: &str| {
        let ids = tokenizer.encode(text);
        let ids = Tensor::from_vec(ids.clone(), ids.len(), &Device::Cpu).unwrap();
        text_encoder
            .token_embedding()
            .index_select(&ids, 0)
            .unwrap()
    };
    let mut embeddings = TextualInversions::default();
    embeddings
        .insert(&tokenizer, &text_encoder, "mystyle", &rows("cat"))
        .unwrap();
    embeddings
        .insert(&tokenizer, &text_encoder, "duo", &rows("red cat"))
        .unwrap();
    let context = |prompt: &str, syntax: Syntax| {
        let mut options = ConditioningOptions::new(20);
        options.prompt.syntax = syntax;
        let plan = prompt::plan(prompt, "", &options.prompt).unwrap();
        PromptConditioning::encode(&tokenizer, &text_encoder, &embeddings, plan, &options)
            .unwrap()
            .context_at(0)
            .unwrap()
    };
    let words = "word ".repeat(74);
    for (with_names, with_tokens, syntax) in [
        (
            "a (mystyle:1.2) on a mat, duo",
            "a (cat:1.2) on a mat, red cat",
            Syntax::A1111,
        ),
        // A1111 moves an embedding that would straddle two chunks to the next one whole.
        (
            &format!("{words}duo"),
            &format!("{words}BREAK red cat"),
            Syntax::A1111,
        ),
        (
            "a (<mystyle>)1.2 on a mat, <duo>- mystyle",
            "a (cat)1.2 on a mat, (red cat)- mystyle",
            Syntax::InvokeAi,
        ),
    ] {
        let diff = max_abs_diff(&context(with_names, syntax), &context(with_tokens, syntax));
        assert!(diff < 1e-6, "{with_names:?}: {diff}");
    }
    // The same name twice, or vectors of the wrong width, are refused.
    assert!(matches!(
        embeddings.insert(&tokenizer, &text_encoder, "duo", &rows("dog")),
        Err(DreamError::InvalidRequest(_))
    ));
    let wide = Tensor::zeros((1, 33), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        embeddings.insert(&tokenizer, &text_encoder, "wide", &wide),
        Err(DreamError::InvalidRequest(_))
    ));
}

/// A copy of the tiny model whose tokenizer pads with `!` as SD 2.x's does.
fn tiny_with_sd2_padding() -> PathBuf {
    let folder = tiny_copy("sd2-padding");
    copy_dir(&fixture("prompt/sd2_tokenizer"), &folder.join("tokenizer"));
    folder
}

#[test]
fn sd2_tokenizers_pad_with_their_pad_token() {
    // fixtures/prompt/sd2_pad.safetensors: transformers' ids and diffusers' embeddings with the
    // tokenizer padding with "!" (id 0), and compel's conditioning with it
    // (tools/parity/pad_fixtures.py).
    let reference =
        candle_core::safetensors::load(fixture("prompt/sd2_pad.safetensors"), &Device::Cpu)
            .unwrap();
    let prompt = "a photograph of an astronaut riding a horse";
    let tokenizer = ClipTokenizer::from_vocab_and_merges(
        &read(fixture("tiny/tokenizer/vocab.json")),
        &read(fixture("tiny/tokenizer/merges.txt")),
    )
    .unwrap()
    .with_pad_token("!")
    .unwrap();
    let chunks = Chunker::new(&tokenizer).chunks(&[Fragment::text(prompt, 1.0)]);
    let ids: Vec<i64> = chunks[0].ids.iter().map(|&id| i64::from(id)).collect();
    assert_eq!(ids, reference["ids"].to_vec1::<i64>().unwrap());

    let folder = tiny_with_sd2_padding();
    let model = StableDiffusion::load(&folder);
    std::fs::remove_dir_all(&folder).unwrap();
    let model = model.unwrap();
    let context = model
        .condition(prompt, "", &ConditioningOptions::new(20))
        .unwrap()
        .context_at(0)
        .unwrap();
    let diff = max_abs_diff(&context.get(1).unwrap(), &reference["diffusers"]);
    assert!(diff < 1e-5, "A1111 syntax: {diff}");

    let mut options = ConditioningOptions::new(20);
    options.prompt.syntax = Syntax::InvokeAi;
    let context = model
        .condition("a (cat)1.3 on a mat-", "", &options)
        .unwrap()
        .context_at(0)
        .unwrap();
    let expected = Tensor::stack(
        &[&reference["compel.negative"], &reference["compel.positive"]],
        0,
    )
    .unwrap();
    let diff = max_abs_diff(&context, &expected);
    assert!(diff < 1e-5, "InvokeAI syntax: {diff}");
}

#[test]
fn tokenization_log_uses_the_models_tokenizer_and_embeddings() {
    let mut model = tiny_model();
    let cat = model
        .tokenization_log("a (cat:1.5)", "", &PromptOptions::new(Syntax::A1111, 20))
        .unwrap();
    assert!(
        cat.starts_with("prompt:\n  chunk 1 (2 tokens): a (cat:1.5)\n"),
        "{cat}"
    );
    let vector = Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap();
    model.add_embedding("mystyle", &vector).unwrap();
    let named = model
        .tokenization_log("a <mystyle>", "", &PromptOptions::new(Syntax::InvokeAi, 20))
        .unwrap();
    assert!(
        named.starts_with("prompt:\n  chunk 1 (2 tokens): a <mystyle>\n"),
        "{named}"
    );
}

#[test]
fn every_invokeai_prompt_encodes_to_finite_conditioning() {
    // The hostile prompts of compel's parser fixtures: whatever parses must encode, finitely.
    let cases: Value = serde_json::from_str(&read(fixture("prompt/invokeai_cases.json"))).unwrap();
    let (tokenizer, text_encoder) = text_model(None);
    let mut options = ConditioningOptions::new(10);
    options.prompt.syntax = Syntax::InvokeAi;
    let mut encoded = 0;
    for case in cases["compel"]
        .as_array()
        .unwrap()
        .iter()
        .chain(cases["random"].as_array().unwrap().iter().take(150))
    {
        let prompt = case["prompt"].as_str().unwrap();
        let Ok(plan) = prompt::plan(prompt, prompt, &options.prompt) else {
            continue;
        };
        let context = match PromptConditioning::encode(
            &tokenizer,
            &text_encoder,
            &TextualInversions::default(),
            plan,
            &options,
        ) {
            Ok(conditioning) => conditioning.context_at(0).unwrap(),
            // Blend weights that add up to 0 cannot be normalised.
            Err(DreamError::InvalidRequest(_)) => continue,
            Err(e) => panic!("{prompt:?}: {e}"),
        };
        let sum = context
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(sum.is_finite(), "{prompt:?}");
        encoded += 1;
    }
    assert!(encoded > 100, "{encoded}");
}
