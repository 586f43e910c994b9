//! The prompt language against the reference parsers' own outputs (fixtures/prompt, written by
//! tools/parity/prompt_fixtures.py from A1111's prompt_parser.py / sd_hijack_clip.py and
//! compel).

use dream_core::prompt::a1111::{parse_attention, prompt_schedule, split_and};
use dream_core::prompt::chunking::{Chunk, Chunker};
use dream_core::prompt::invokeai::{
    self, parse_conjunction, split_negative, weighted_subprompts, Parsed,
};
use dream_core::prompt::{
    self, extract_network_tags, tokenization_log, BlendPart, Fragment, MatrixDelimiter,
    MatrixOptions, NetworkTag, PromptError, PromptMatrix, PromptOptions, PromptText, Syntax,
    TokenTable,
};
use dream_core::tokenizer::ClipTokenizer;
use serde_json::Value;
use std::sync::OnceLock;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../fixtures/prompt/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The tiny model's tokenizer: the real CLIP vocabulary, as the fixtures were made with.
fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny/tokenizer");
        let vocab = std::fs::read_to_string(format!("{dir}/vocab.json")).unwrap();
        let merges = std::fs::read_to_string(format!("{dir}/merges.txt")).unwrap();
        ClipTokenizer::from_vocab_and_merges(&vocab, &merges).unwrap()
    })
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap()
}

/// A1111's `[[text, weight], …]`, the `BREAK` marker being `["BREAK", -1]`.
fn a1111_fragments(v: &Value) -> Vec<Fragment> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let (text, weight) = (str_of(&pair[0]), pair[1].as_f64().unwrap());
            if text == "BREAK" && weight == -1.0 {
                Fragment::Break
            } else {
                Fragment::text(text, weight)
            }
        })
        .collect()
}

fn schedule_rows(v: &Value) -> Vec<(usize, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0].as_u64().unwrap() as usize,
                str_of(&row[1]).to_string(),
            )
        })
        .collect()
}

#[test]
fn a1111_curated_prompts_match_a1111() {
    let fx = fixture("a1111_cases.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let mut checked_texts = 0;
    for case in cases {
        let prompt = str_of(&case["prompt"]);
        let parts = split_and(prompt).unwrap();
        let expected: Vec<(String, f64)> = case["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_of(&p["text"]).to_string(),
                    p["weight"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(parts, expected, "AND parts of {prompt:?}");
        for part in case["parts"].as_array().unwrap() {
            let text = str_of(&part["text"]);
            for (steps, rows) in part["schedules"].as_object().unwrap() {
                let steps: usize = steps.parse().unwrap();
                assert_eq!(
                    prompt_schedule(text, steps),
                    schedule_rows(rows),
                    "schedule of {text:?} at {steps} steps"
                );
            }
            for (text, fragments) in part["attention"].as_object().unwrap() {
                assert_eq!(
                    parse_attention(text).unwrap(),
                    a1111_fragments(fragments),
                    "attention of {text:?}"
                );
                checked_texts += 1;
            }
        }
    }
    assert!(checked_texts > 90, "{checked_texts}");
}

#[test]
fn a1111_weights_that_are_not_numbers_are_errors() {
    let fx = fixture("a1111_cases.json");
    for case in fx["errors"].as_array().unwrap() {
        let prompt = str_of(&case["prompt"]);
        assert!(
            matches!(parse_attention(prompt), Err(PromptError::BadWeight { .. })),
            "{prompt:?}: A1111 raises {}",
            case["error"]
        );
    }
    // Python's float() makes a long enough number infinite; A1111 would carry it on.
    let huge = format!("(a:{})", "9".repeat(400));
    assert!(matches!(
        parse_attention(&huge),
        Err(PromptError::WeightNotFinite { .. })
    ));
}

#[test]
fn a1111_random_prompts_schedule_as_a1111() {
    let fx = fixture("a1111_random.json");
    let cases = fx["schedules"].as_array().unwrap();
    let mut differs = Vec::new();
    for case in cases {
        let prompt = str_of(&case["prompt"]);
        let ours = prompt_schedule(prompt, 10);
        if ours == schedule_rows(&case["lark"]) {
            continue;
        }
        // Where the grammar allows several readings and lark broke the tie the other way, ours
        // must still be a reading the grammar allows.
        let admissible = case["admissible"].as_array().map_or(Vec::new(), |all| {
            all.iter().map(schedule_rows).collect::<Vec<_>>()
        });
        assert!(
            admissible.contains(&ours),
            "{prompt:?}: ours {ours:?}, lark {:?}, admissible {admissible:?}",
            case["lark"]
        );
        differs.push(prompt);
    }
    assert!(
        differs.len() * 200 <= cases.len(),
        "{} of {} differ from lark's tie-break: {differs:?}",
        differs.len(),
        cases.len()
    );
}

#[test]
fn a1111_random_prompts_weight_as_a1111() {
    let fx = fixture("a1111_random.json");
    let cases = fx["attention"].as_array().unwrap();
    assert!(cases.len() > 400);
    for case in cases {
        let prompt = str_of(&case["prompt"]);
        assert_eq!(
            parse_attention(prompt).unwrap(),
            a1111_fragments(&case["attention"]),
            "{prompt:?}"
        );
    }
}

#[test]
fn a1111_documented_weights() {
    // The parse_prompt_attention docstring.
    assert_eq!(
        parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).").unwrap(),
        vec![
            Fragment::text("a ", 1.0),
            Fragment::text("house", 1.5730000000000004),
            Fragment::text(" ", 1.1),
            Fragment::text("on", 1.0),
            Fragment::text(" a ", 1.1),
            Fragment::text("hill", 0.55),
            Fragment::text(", sun, ", 1.1),
            Fragment::text("sky", 1.4641000000000006),
            Fragment::text(".", 1.1),
        ]
    );
    assert_eq!(
        parse_attention("[word]").unwrap(),
        vec![Fragment::text("word", 1.0 / 1.1)]
    );
    assert_eq!(
        parse_attention("a BREAK b").unwrap(),
        vec![
            Fragment::text("a", 1.0),
            Fragment::Break,
            Fragment::text("b", 1.0)
        ]
    );
}

fn fixture_chunks(v: &Value) -> Vec<Chunk> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Chunk {
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_u64().unwrap() as u32)
                .collect(),
            weights: c["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .collect(),
        })
        .collect()
}

#[test]
fn a1111_chunks_match_a1111() {
    let fx = fixture("a1111_chunks.json");
    let tokenizer = tokenizer();
    assert_eq!(
        tokenizer.encode(","),
        vec![fx["comma_token"].as_u64().unwrap() as u32]
    );
    let chunker = Chunker::new(tokenizer);
    for case in fx["cases"].as_array().unwrap() {
        let prompt = str_of(&case["prompt"]);
        let chunks = chunker.chunks(&parse_attention(prompt).unwrap());
        assert_eq!(
            chunks,
            fixture_chunks(&case["chunks"]),
            "chunks of {prompt:?}"
        );
    }
}

#[test]
fn long_prompts_break_and_comma_backtrack() {
    let tokenizer = tokenizer();
    let chunker = Chunker::new(tokenizer);
    let count = |prompt: &str| chunker.chunks(&parse_attention(prompt).unwrap()).len();
    let word_chunk = |prompt: &str, chunk: usize| -> Vec<u32> {
        chunker.chunks(&parse_attention(prompt).unwrap())[chunk].ids[1..76]
            .iter()
            .copied()
            .filter(|&id| id != tokenizer.eos())
            .collect()
    };
    // 150 one-token words: two full chunks.
    let words_150 = vec!["cat"; 150].join(" ");
    assert_eq!(count(&words_150), 2);
    assert_eq!(count(&vec!["cat"; 151].join(" ")), 3);
    // BREAK ends a chunk early; each chunk is framed and padded to 77.
    let chunks = chunker.chunks(&parse_attention("a cat BREAK a dog").unwrap());
    assert_eq!(chunks.len(), 2);
    for chunk in &chunks {
        assert_eq!(chunk.ids.len(), 77);
        assert_eq!(chunk.weights.len(), 77);
        assert_eq!(chunk.ids[0], tokenizer.bos());
        assert_eq!(chunk.ids[76], tokenizer.eos());
    }
    assert_eq!(
        word_chunk("a cat BREAK a dog", 1),
        tokenizer.encode("a dog")
    );
    // A comma 20 tokens before the boundary moves the rest to the next chunk; 21 does not.
    let near = format!("{}, {}", vec!["w"; 55].join(" "), vec!["x"; 30].join(" "));
    assert_eq!(
        word_chunk(&near, 1),
        tokenizer.encode(&vec!["x"; 30].join(" "))
    );
    let far = format!("{}, {}", vec!["w"; 54].join(" "), vec!["x"; 30].join(" "));
    assert_eq!(word_chunk(&far, 1).len(), 30 - 20);
    // Positive and negative padded to one chunk count with empty-prompt chunks.
    let mut prompts = vec![
        chunker.chunks(&parse_attention(&words_150).unwrap()),
        chunker.chunks(&parse_attention("blurry").unwrap()),
    ];
    chunker.pad_to_same_count(&mut prompts);
    assert_eq!(prompts[1].len(), 2);
    assert_eq!(
        prompts[1][1],
        chunker.chunks(&parse_attention("").unwrap())[0]
    );
}

#[test]
fn editing_and_alternation_change_the_plan_at_the_right_steps() {
    let options = PromptOptions::new(Syntax::A1111, 10);
    let text = |t: &str| PromptText::Fragments(vec![Fragment::text(t, 1.0)]);

    // A1111's sampler step i (from 0) uses the first row ending at or after i: [cat:dog:0.5] at
    // 10 steps is rows (5, cat), (10, dog).
    let plan = prompt::plan("[cat:dog:0.5]", "", &options).unwrap();
    let part = &plan.positive[0];
    for step in 0..10 {
        let expected = if step <= 5 { "cat" } else { "dog" };
        assert_eq!(part.text_at(step), &text(expected), "step {step}");
    }
    assert!(!plan.is_constant());

    // [cat|dog] switches at every row: rows (1, cat), (2, dog), (3, cat)…, so steps 0 and 1 are
    // cat, 2 dog, 3 cat, 4 dog…
    let plan = prompt::plan("[cat|dog]", "", &options).unwrap();
    let part = &plan.positive[0];
    assert_eq!(part.texts.len(), 2);
    assert_eq!(part.schedule.len(), 10);
    let seen: Vec<_> = (0..10).map(|step| part.text_index_at(step)).collect();
    assert_eq!(seen, vec![0, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
    assert_eq!(part.texts[1], text("dog"));

    // Editing at 20 steps with a step number.
    let plan = prompt::plan("a [cat:dog:5]", "", &PromptOptions::new(Syntax::A1111, 20)).unwrap();
    let part = &plan.positive[0];
    assert_eq!(
        part.text_at(5),
        &PromptText::Fragments(vec![Fragment::text("a cat", 1.0)])
    );
    assert_eq!(
        part.text_at(6),
        &PromptText::Fragments(vec![Fragment::text("a dog", 1.0)])
    );

    // A prompt without editing has one text for every step.
    let plan = prompt::plan("a (cat:1.2)", "blurry", &options).unwrap();
    assert!(plan.is_constant());
}

#[test]
fn and_parts_and_negative_prompt() {
    let options = PromptOptions::new(Syntax::A1111, 20);
    let plan = prompt::plan("a cat AND a dog:1.5", "ugly AND bad", &options).unwrap();
    assert_eq!(plan.positive.len(), 2);
    assert_eq!(plan.positive[0].weight, 1.0);
    assert_eq!(plan.positive[1].weight, 1.5);
    assert_eq!(
        plan.positive[1].texts[0],
        PromptText::Fragments(vec![Fragment::text(" a dog", 1.0)])
    );
    // A1111 has no AND in the negative prompt.
    assert_eq!(
        plan.negative.texts,
        vec![PromptText::Fragments(vec![Fragment::text(
            "ugly AND bad",
            1.0
        )])]
    );
}

#[test]
fn extra_network_tags_are_taken_out() {
    let (text, tags) = extract_network_tags("a <lora:foo:0.8> cat <hypernet:bar> (dog:1.2) <x>");
    assert_eq!(text, "a  cat  (dog:1.2) <x>");
    assert_eq!(
        tags,
        vec![
            NetworkTag {
                kind: "lora".into(),
                args: vec!["foo".into(), "0.8".into()]
            },
            NetworkTag {
                kind: "hypernet".into(),
                args: vec!["bar".into()]
            },
        ]
    );
    let plan = prompt::plan(
        "<lora:a:1>[cat:dog:3]",
        "<lora:neg:0.5>blurry",
        &PromptOptions::new(Syntax::A1111, 10),
    )
    .unwrap();
    assert_eq!(plan.networks.len(), 1);
    assert_eq!(plan.negative_networks[0].args, vec!["neg", "0.5"]);
    assert_eq!(plan.positive[0].schedule.len(), 2);
}

/// compel's serialised FlattenedPrompt or Blend.
fn compel_text(v: &Value) -> PromptText {
    if let Some(parts) = v.get("blend") {
        let weights = v["weights"].as_array().unwrap();
        let parts = parts
            .as_array()
            .unwrap()
            .iter()
            .zip(weights)
            .map(|(p, w)| BlendPart {
                fragments: compel_fragments(&p["fragments"]),
                weight: w.as_f64().unwrap(),
            })
            .collect();
        PromptText::Blend {
            parts,
            normalize: v["normalize"].as_bool().unwrap(),
        }
    } else {
        PromptText::Fragments(compel_fragments(&v["fragments"]))
    }
}

fn compel_fragments(v: &Value) -> Vec<Fragment> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Fragment::text(str_of(&f[0]), f[1].as_f64().unwrap()))
        .collect()
}

fn ours_as_text(parsed: &Parsed) -> (PromptText, Vec<(String, f64)>) {
    let (text, loras) = match parsed {
        Parsed::Fragments { fragments, loras } => (PromptText::Fragments(fragments.clone()), loras),
        Parsed::Blend { blend, loras } => (blend.clone(), loras),
        Parsed::Conjunction { conjunction, loras } => (conjunction.clone(), loras),
        Parsed::Empty { loras } => (PromptText::Fragments(Vec::new()), loras),
    };
    let loras = loras
        .iter()
        .map(|tag| (tag.args[0].clone(), tag.args[1].parse().unwrap()))
        .collect();
    (text, loras)
}

fn compare_compel(case: &Value) {
    let prompt = str_of(&case["prompt"]);
    let ours = parse_conjunction(prompt);
    if case.get("error").is_some() {
        assert!(
            ours.is_err(),
            "{prompt:?}: compel raises {}, ours {ours:?}",
            case["error"]
        );
        return;
    }
    let prompts = case["prompts"].as_array().unwrap();
    let (text, loras) = ours_as_text(&ours.unwrap_or_else(|e| panic!("{prompt:?}: {e}")));
    let expected = prompts
        .first()
        .map_or(PromptText::Fragments(Vec::new()), compel_text);
    assert_eq!(text, expected, "{prompt:?}");
    let expected_loras: Vec<(String, f64)> = case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (str_of(&l[0]).to_string(), l[1].as_f64().unwrap()))
        .collect();
    assert_eq!(loras, expected_loras, "LoRAs of {prompt:?}");
}

#[test]
fn compel_curated_prompts_match_compel() {
    let fx = fixture("invokeai_cases.json");
    let cases = fx["compel"].as_array().unwrap();
    assert!(cases.len() >= 25);
    for case in cases {
        compare_compel(case);
    }
}

#[test]
fn compel_random_prompts_match_compel() {
    let fx = fixture("invokeai_cases.json");
    for case in fx["random"].as_array().unwrap() {
        compare_compel(case);
    }
}

#[test]
fn invokeai_negative_words_and_legacy_blends_match_invokeai() {
    let fx = fixture("invokeai_cases.json");
    for case in fx["invokeai"].as_array().unwrap() {
        let prompt = str_of(&case["prompt"]);
        let skip_normalize = case["skip_normalize"].as_bool().unwrap();
        let (positive, negative) = split_negative(prompt);
        assert_eq!(positive, str_of(&case["positive_text"]), "{prompt:?}");
        assert_eq!(negative, str_of(&case["negative_text"]), "{prompt:?}");
        let expected: Vec<(String, f64)> = case["subprompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (str_of(&p[0]).to_string(), p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(
            weighted_subprompts(&positive, skip_normalize),
            expected,
            "{prompt:?}"
        );

        let plan = invokeai::plan(prompt, "", 20, skip_normalize).unwrap();
        assert_eq!(plan.positive.len(), 1);
        assert_eq!(
            plan.positive[0].texts,
            vec![compel_text(&case["positive"])],
            "{prompt:?}"
        );
        assert_eq!(
            plan.negative.texts,
            vec![compel_text(&case["negative"])],
            "{prompt:?}"
        );
    }
}

#[test]
fn invokeai_plan_collects_loras_and_refuses_swap() {
    let mut options = PromptOptions::new(Syntax::InvokeAi, 30);
    let plan = prompt::plan(
        "a cat++ withLora(fur, 0.6) <lora:style:0.8>",
        "blurry",
        &options,
    )
    .unwrap();
    let kinds: Vec<_> = plan.networks.iter().map(|t| t.args[0].as_str()).collect();
    assert_eq!(kinds, vec!["style", "fur"]);
    assert!(plan.is_constant());
    assert!(matches!(
        prompt::plan("a cat.swap(dog)", "", &options),
        Err(PromptError::InvokeAi { .. })
    ));
    // compel's conjunction: the parts and their weights; text after it is ignored, as compel
    // ignores it.
    let plan = prompt::plan("(\"a\", \"b+\").and(1, 0.5) ignored", "", &options).unwrap();
    assert_eq!(
        plan.positive[0].texts[0],
        PromptText::Conjunction(vec![
            BlendPart {
                fragments: vec![Fragment::text("a", 1.0)],
                weight: 1.0
            },
            BlendPart {
                fragments: vec![Fragment::text("b", 1.1)],
                weight: 0.5
            },
        ])
    );
    for refused in ["(a, b).and(1)", "(a, b).and(1, x)"] {
        assert!(
            matches!(
                prompt::plan(refused, "", &options),
                Err(PromptError::InvokeAi { .. })
            ),
            "{refused}"
        );
    }
    options.skip_normalize = true;
    let plan = prompt::plan("a:1 b:3", "", &options).unwrap();
    assert!(matches!(
        &plan.positive[0].texts[0],
        PromptText::Blend { normalize: false, parts } if parts[1].weight == 3.0
    ));
}

#[test]
fn syntax_names() {
    for (name, syntax) in [
        ("a1111", Syntax::A1111),
        ("WebUI", Syntax::A1111),
        ("invokeai", Syntax::InvokeAi),
        ("compel", Syntax::InvokeAi),
    ] {
        assert_eq!(name.parse::<Syntax>(), Ok(syntax));
    }
    assert_eq!(Syntax::InvokeAi.to_string().parse(), Ok(Syntax::InvokeAi));
    assert!("comfyui".parse::<Syntax>().is_err());
    assert_eq!(Syntax::default(), Syntax::A1111);
}

#[test]
fn prompt_matrix_makes_every_combination_as_a1111() {
    // A1111's wiki example: the first part always, each later part optional.
    let matrix = PromptMatrix::new(
        "a busy city street in a modern city|illustration|cinematic lighting",
        &MatrixOptions::default(),
    )
    .unwrap();
    assert_eq!(
        matrix.prompts,
        [
            "a busy city street in a modern city",
            "a busy city street in a modern city, illustration",
            "a busy city street in a modern city, cinematic lighting",
            "a busy city street in a modern city, illustration, cinematic lighting",
        ]
    );
    assert_eq!((matrix.rows(), matrix.columns()), (2, 2));
    assert_eq!(matrix.column_labels(1), [("illustration", true)]);
    assert_eq!(matrix.row_labels(0), [("cinematic lighting", false)]);
    assert_eq!(
        matrix.describe(),
        "columns: - | illustration\nrows: - | cinematic lighting"
    );

    // The optional parts lose surrounding whitespace, then commas (Python's
    // `text.strip().strip(',')`); the fixed part stays as written.
    let options = MatrixOptions {
        delimiter: MatrixDelimiter::Space,
        optional_first: true,
    };
    let matrix = PromptMatrix::new("a cat |, red,| blue |x", &options).unwrap();
    assert_eq!(matrix.prompts.len(), 8);
    assert_eq!(matrix.prompts[3], " red blue a cat ");
    assert_eq!((matrix.rows(), matrix.columns()), (2, 4));
    assert_eq!(
        matrix.row_labels(1),
        [("x", true)],
        "columns take the first half of the parts, rounded up"
    );
    let plain = PromptMatrix::new("no bars", &MatrixOptions::default()).unwrap();
    assert_eq!(plain.prompts, ["no bars"]);
    assert!(matches!(
        PromptMatrix::new(&"a|".repeat(17), &MatrixOptions::default()),
        Err(PromptError::TooManyMatrixParts { parts: 17 })
    ));
}

#[test]
fn tokenization_log_shows_chunks_weights_and_what_was_taken_out() {
    let log = |prompt: &str, negative: &str, options: &PromptOptions| {
        let plan = prompt::plan(prompt, negative, options).unwrap();
        tokenization_log(&plan, &Chunker::new(tokenizer()))
    };
    let a1111 = PromptOptions::new(Syntax::A1111, 10);
    assert_eq!(
        log("a (cat:1.5) [dog] <lora:x:0.5>", "blurry", &a1111),
        "prompt:\n  chunk 1 (3 tokens): a (cat:1.5) (dog:0.9091)\n\
         negative prompt:\n  chunk 1 (1 tokens): blurry\n\
         extra networks: <lora:x:0.5>\n"
    );
    assert_eq!(
        log("[cat:dog:0.5]", "", &a1111),
        "prompt, steps 0 to 5:\n  chunk 1 (1 tokens): cat\n\
         prompt, from step 6:\n  chunk 1 (1 tokens): dog\n\
         negative prompt:\n  chunk 1 (0 tokens): \n"
    );
    let long = log(&"word ".repeat(80), "", &a1111);
    assert!(long.contains("chunk 1 (75 tokens)") && long.contains("chunk 2 (5 tokens)"));

    let mut invokeai = PromptOptions::new(Syntax::InvokeAi, 10);
    assert_eq!(
        log("a cat++ [ugly] withLora(x, 0.5)", "", &invokeai),
        "prompt:\n  chunk 1 (2 tokens): a (cat:1.21)\n\
         negative prompt:\n  chunk 1 (1 tokens): ugly\n\
         extra networks: <lora:x:0.5>\n"
    );
    invokeai.skip_normalize = true;
    assert!(log("cat:2 dog", "", &invokeai)
        .starts_with("prompt:\n  blend part 1 (weight 2):\n    chunk 1 (1 tokens): cat\n"));

    // Embeddings show by name.
    let mut table = TokenTable::new(tokenizer());
    table.insert(tokenizer(), "mystyle", 2).unwrap();
    let plan = prompt::plan("a mystyle cat", "", &a1111).unwrap();
    let chunker = Chunker::new(tokenizer()).with_token_table(&table);
    assert!(tokenization_log(&plan, &chunker)
        .starts_with("prompt:\n  chunk 1 (4 tokens): a <mystyle> cat\n"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn finite(text: &PromptText) -> bool {
        let fragments_finite = |fragments: &[Fragment]| {
            fragments
                .iter()
                .all(|f| !matches!(f, Fragment::Text { weight, .. } if !weight.is_finite()))
        };
        match text {
            PromptText::Fragments(fragments) => fragments_finite(fragments),
            PromptText::Blend { parts, .. } | PromptText::Conjunction(parts) => parts
                .iter()
                .all(|p| p.weight.is_finite() && fragments_finite(&p.fragments)),
        }
    }

    fn check(prompt: &str, syntax: Syntax, steps: usize) {
        let options = PromptOptions::new(syntax, steps);
        if let Ok(plan) = prompt::plan(prompt, prompt, &options) {
            for part in plan.positive.iter().chain([&plan.negative]) {
                assert!(part.weight.is_finite());
                assert!(part.texts.iter().all(finite), "{prompt:?}");
                assert!(!part.schedule.is_empty());
                assert!(part.schedule.iter().all(|row| row.text < part.texts.len()));
                for step in 0..steps + 2 {
                    part.text_at(step);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text(prompt in "\\PC{0,40}", steps in 0usize..30) {
            check(&prompt, Syntax::A1111, steps);
            check(&prompt, Syntax::InvokeAi, steps);
        }

        #[test]
        fn syntax_soup(
            prompt in proptest::collection::vec(
                prop_oneof![
                    Just("("), Just(")"), Just("["), Just("]"), Just(":"), Just("|"), Just("\\"),
                    Just(" "), Just("a"), Just("BREAK"), Just("AND"), Just("1.5"), Just("-2"),
                    Just("0"), Just(".5"), Just("+"), Just("-"), Just("\""), Just(","), Just("."),
                    Just("1e308"), Just(".blend("), Just(".swap("), Just("withLora(x"), Just("\n"),
                    Just("<lora:x:1>"), Just("é"),
                ],
                0..40,
            ).prop_map(|parts| parts.concat()),
            steps in 0usize..25,
        ) {
            check(&prompt, Syntax::A1111, steps);
            check(&prompt, Syntax::InvokeAi, steps);
        }

        #[test]
        fn chunks_are_always_77(prompt in "[a-z ,()\\[\\]:0-9.]{0,400}|(BREAK |cat, ){0,100}") {
            let tokenizer = tokenizer();
            let chunker = Chunker::new(tokenizer);
            if let Ok(fragments) = parse_attention(&prompt) {
                let chunks = chunker.chunks(&fragments);
                assert!(!chunks.is_empty());
                assert!(chunks.iter().all(|c| c.ids.len() == 77 && c.weights.len() == 77));
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_or_literal_not_a_crash() {
        for depth in [10, 600, 5000] {
            let prompt = format!("{}a{}", "(".repeat(depth), ")".repeat(depth));
            check(&prompt, Syntax::A1111, 10);
            check(&prompt, Syntax::InvokeAi, 10);
            let prompt = format!("{}a:1]", "[".repeat(depth));
            check(&prompt, Syntax::A1111, 10);
            check(&prompt, Syntax::InvokeAi, 10);
        }
    }
}
