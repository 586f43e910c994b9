//! The CLIP tokenizer against ids that transformers' `CLIPTokenizer` produced
//! (fixtures/tokenizer/cases.json, made by the fixtures script from transformers 5.23).

use std::sync::OnceLock;

use dream_core::tokenizer::{ClipTokenizer, TokenizerError};
use proptest::prelude::*;
use serde::Deserialize;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

#[derive(Deserialize)]
struct Case {
    prompt: String,
    /// With start- and end-of-text, not truncated.
    ids: Vec<u32>,
    /// Truncated and padded to 77, as diffusers feeds the text encoder.
    ids_77: Vec<u32>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}"))
        .unwrap_or_else(|e| panic!("reading fixture {path}: {e}"))
}

fn cases() -> Vec<Case> {
    serde_json::from_str(&read("tokenizer/cases.json")).expect("cases.json parses")
}

/// The tokenizer of the tiny model's diffusers `tokenizer/` folder (the real CLIP vocabulary).
fn from_files() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        ClipTokenizer::from_vocab_and_merges(
            &read("tiny/tokenizer/vocab.json"),
            &read("tiny/tokenizer/merges.txt"),
        )
        .expect("the fixture tokenizer loads")
    })
}

fn bundled() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(ClipTokenizer::bundled)
}

fn with_specials(tokenizer: &ClipTokenizer, prompt: &str) -> Vec<u32> {
    let mut ids = vec![tokenizer.bos()];
    ids.extend(tokenizer.encode(prompt));
    ids.push(tokenizer.eos());
    ids
}

#[test]
fn known_prompt() {
    let expected = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407];
    for tokenizer in [from_files(), bundled()] {
        assert_eq!(
            with_specials(tokenizer, "a photograph of an astronaut riding a horse"),
            expected
        );
    }
}

#[test]
fn matches_transformers_on_fixture_prompts() {
    let cases = cases();
    assert!(
        cases.len() >= 5,
        "cases.json has only {} prompts",
        cases.len()
    );
    for tokenizer in [from_files(), bundled()] {
        for case in &cases {
            assert_eq!(
                with_specials(tokenizer, &case.prompt),
                case.ids,
                "prompt {:?}",
                case.prompt
            );
        }
    }
}

/// Corners the fixture prompts miss, with the ids transformers 5.23's `CLIPTokenizer` gave.
#[test]
fn matches_transformers_on_edge_cases() {
    let cases: [(&str, &[u32]); 9] = [
        // Special tokens are matched after lowercasing, anywhere in a word.
        ("<|ENDOFTEXT|> x<|StartOfText|>", &[49407, 343, 49406]),
        ("hi!<|endoftext|>", &[1883, 256, 49407]),
        // instant-clip-tokenizer's own special spelling is plain text here.
        (
            "<start_of_text>hi",
            &[283, 1572, 318, 539, 318, 4160, 285, 1883],
        ),
        // Lowercasing is per character: the final Σ becomes σ, not ς.
        (
            "ΟΔΟΣ ΣΊΣΥΦΟΣ",
            &[
                138, 123, 138, 112, 138, 123, 139, 481, 139, 225, 138, 107, 139, 225, 139, 227,
                139, 228, 138, 123, 139, 481,
            ],
        ),
        // U+08CE is newer than tokenizers' Unicode 9 NFC tables, so the marks keep their order.
        ("a\u{8ce}\u{348}b", &[320, 156, 96, 236, 137, 486, 321]),
        (
            "'''s x's's rock'n'roll",
            &[6, 8445, 338, 343, 568, 568, 2172, 262, 333, 262, 3341],
        ),
        // Unicode whitespace separates words; U+001C, U+180E and U+200B are not whitespace.
        (
            "tab\tsep\u{a0}nbsp\u{3000}ideo\u{2028}x",
            &[14724, 10434, 6459, 4393, 1909, 334, 343],
        ),
        (
            "j\u{1c}k\u{180e}l\u{200b}m",
            &[329, 472, 330, 157, 254, 492, 331, 9844, 332],
        ),
        (
            "İstanbul ﬁ ẞ",
            &[328, 16384, 11231, 171, 105, 479, 127, 509],
        ),
    ];
    for tokenizer in [from_files(), bundled()] {
        for (prompt, ids) in cases {
            assert_eq!(tokenizer.encode(prompt), ids, "prompt {prompt:?}");
        }
    }
}

#[test]
fn encode_for_clip_matches_transformers_truncation_and_padding() {
    let cases = cases();
    assert!(
        cases.iter().any(|c| c.ids.len() > 77),
        "cases.json should have a prompt longer than 77 tokens"
    );
    for tokenizer in [from_files(), bundled()] {
        for case in &cases {
            let tokens = tokenizer.encode_for_clip(&case.prompt, 77);
            assert_eq!(tokens.ids, case.ids_77, "prompt {:?}", case.prompt);
            // What was cut is exactly the tail of the untruncated content.
            let content = &case.ids[1..case.ids.len() - 1];
            assert_eq!(
                tokens.truncated,
                content[content.len().min(75)..],
                "prompt {:?}",
                case.prompt
            );
        }
    }
}

#[test]
fn special_ids() {
    for tokenizer in [from_files(), bundled()] {
        assert_eq!(
            (tokenizer.bos(), tokenizer.eos(), tokenizer.pad_id()),
            (49406, 49407, 49407)
        );
        assert_eq!(tokenizer.vocab_size(), 49408);
    }
}

#[test]
fn pad_tokens_have_the_vocabularys_ids_in_both_tokenizers() {
    // vocab.json: "!" is 0 (SD 2.x's and SDXL's second pad token), "!</w>" 256, "a</w>" 320.
    let files = || {
        ClipTokenizer::from_vocab_and_merges(
            &read("tiny/tokenizer/vocab.json"),
            &read("tiny/tokenizer/merges.txt"),
        )
        .unwrap()
    };
    for make in [
        &files as &dyn Fn() -> ClipTokenizer,
        &ClipTokenizer::bundled,
    ] {
        for (token, id) in [("!", 0), ("!</w>", 256), ("a</w>", 320)] {
            assert_eq!(
                make().with_pad_token(token).unwrap().pad_id(),
                id,
                "{token}"
            );
        }
        assert!(matches!(
            make().with_pad_token("no such token</w>"),
            Err(TokenizerError::MissingToken(_))
        ));
    }
}

#[test]
fn decoding() {
    for tokenizer in [from_files(), bundled()] {
        // transformers' `decode` of these ids gives the same text.
        let ids = with_specials(tokenizer, "A photograph of an ASTRONAUT, 👩‍👩‍👧!");
        assert_eq!(
            tokenizer.decode(&ids),
            "<|startoftext|>a photograph of an astronaut , 👩‍👩‍👧! <|endoftext|>"
        );
        assert_eq!(tokenizer.decode_token(8853).as_deref(), Some("photograph "));
        assert_eq!(
            tokenizer.decode_token(49406).as_deref(),
            Some("<|startoftext|>")
        );
        assert_eq!(tokenizer.decode_token(49408), None);
    }
}

#[test]
fn bad_files_are_reported() {
    let merges = read("tiny/tokenizer/merges.txt");
    let vocab = read("tiny/tokenizer/vocab.json");
    assert!(matches!(
        ClipTokenizer::from_vocab_and_merges("[1, 2]", &merges),
        Err(TokenizerError::Vocab(_))
    ));
    assert!(matches!(
        ClipTokenizer::from_vocab_and_merges("{}", &merges),
        Err(TokenizerError::MissingToken(_))
    ));
    let err =
        ClipTokenizer::from_vocab_and_merges(&vocab, "#version: 0.2\ni n\nthree tokens here\n")
            .err();
    assert!(
        matches!(err, Some(TokenizerError::Merge { line: 3, .. })),
        "{err:?}"
    );
    let err = ClipTokenizer::from_vocab_and_merges(&vocab, "#version: 0.2\nq zzzzzzz\n").err();
    assert!(
        matches!(err, Some(TokenizerError::Merge { line: 2, .. })),
        "{err:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_gives_valid_ids_and_both_vocabularies_agree(text in any::<String>()) {
        let ids = from_files().encode(&text);
        prop_assert!(ids.iter().all(|&id| (id as usize) < from_files().vocab_size()));
        prop_assert_eq!(&ids, &bundled().encode(&text));
        let clip = from_files().encode_for_clip(&text, 77);
        prop_assert_eq!(clip.ids.len(), 77);
    }

    #[test]
    fn prompt_like_text_agrees(text in r"[a-zA-Z0-9 ,.'()\[\]:<>|_\-!?éß日本👩‍]{0,80}") {
        prop_assert_eq!(from_files().encode(&text), bundled().encode(&text));
    }
}
