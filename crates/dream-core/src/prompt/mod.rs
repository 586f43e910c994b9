//! The prompt language: from the text people type (or paste from A1111, Civitai or InvokeAI)
//! to a [`ConditioningPlan`], the weighted text fragments the text encoder must see at each
//! sampling step. No tensors here: `dream-pipeline` turns the plan into conditioning.
//!
//! - [`a1111`]: AUTOMATIC1111's syntax, the default: `(word)`, `[word]`, `(word:1.5)`, prompt
//!   editing `[from:to:when]`, alternation `[a|b]`, `BREAK`, `AND`.
//! - [`invokeai`]: InvokeAI's (compel's) syntax: `word+`, `(words)1.3`, `.blend()`, the legacy
//!   `a:0.25 b:0.75` blend and inline `[negative words]`.
//! - [`chunking`]: token ids with weights, split into 75-token chunks as A1111 does.
//! - [`plan`]: the plan itself and its per-step lookup.
//!
//! Extra-network tags (`<lora:name:0.8>`, `<hypernet:name>`) are taken out of both prompts
//! before either syntax sees them, and handed to the caller in the plan.

pub mod a1111;
pub mod chunking;
pub mod invokeai;
pub mod matrix;
pub mod plan;
pub mod token_table;
pub mod tokens_log;

use std::sync::OnceLock;

use regex::Regex;

pub use matrix::{MatrixDelimiter, MatrixOptions, PromptMatrix};
pub use plan::{BlendPart, ConditioningPlan, PromptText, ScheduleEntry, SubPrompt};
pub use token_table::TokenTable;
pub use tokens_log::tokenization_log;

/// One run of prompt text with its emphasis weight, or the end of a chunk (`BREAK`).
#[derive(Debug, Clone, PartialEq)]
pub enum Fragment {
    Text { text: String, weight: f64 },
    Break,
}

impl Fragment {
    pub fn text(text: impl Into<String>, weight: f64) -> Self {
        Fragment::Text {
            text: text.into(),
            weight,
        }
    }
}

/// Which prompt language the text is written in. A1111's is the default everywhere (the CLI
/// included): it is what prompts pasted from Civitai and most model pages are written in, and
/// plain prompts mean the same in both. InvokeAI's is chosen by name (`invokeai` or `compel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Syntax {
    #[default]
    A1111,
    InvokeAi,
}

impl std::str::FromStr for Syntax {
    type Err = String;

    /// `a1111` (also `automatic1111`, `webui`) or `invokeai` (also `compel`), any case.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "a1111" | "automatic1111" | "webui" => Ok(Syntax::A1111),
            "invokeai" | "invoke" | "compel" => Ok(Syntax::InvokeAi),
            _ => Err(format!(
                "unknown prompt syntax {name:?}: choose a1111 or invokeai"
            )),
        }
    }
}

impl std::fmt::Display for Syntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Syntax::A1111 => "a1111",
            Syntax::InvokeAi => "invokeai",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptOptions {
    pub syntax: Syntax,
    /// The number of sampling steps; prompt editing's `when` counts in these.
    pub steps: usize,
    /// InvokeAI's `-x`/`--skip_normalize`: the weights of a legacy `a:0.25 b:0.75` blend are
    /// used as written instead of being divided by their sum.
    pub skip_normalize: bool,
}

impl PromptOptions {
    pub fn new(syntax: Syntax, steps: usize) -> Self {
        PromptOptions {
            syntax,
            steps,
            skip_normalize: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptError {
    #[error("the emphasis weight {weight:?} in the prompt is not a number")]
    BadWeight { weight: String },
    #[error("the weights in the prompt multiply to {weight}, which is not a finite number (near {text:?})")]
    WeightNotFinite { text: String, weight: f64 },
    #[error("cannot read the InvokeAI prompt {prompt:?}: {problem}")]
    InvokeAi { prompt: String, problem: String },
    #[error("the prompt matrix has {parts} optional parts (2^{parts} images); at most {max} can be combined", max = matrix::MAX_OPTIONAL_PARTS)]
    TooManyMatrixParts { parts: usize },
}

/// An extra-network tag such as `<lora:name:0.8>` or `<hypernet:name>`, as A1111 reads it:
/// the kind before the first colon, then the colon-separated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkTag {
    pub kind: String,
    pub args: Vec<String>,
}

/// Takes A1111's extra-network tags `<kind:arg1:arg2…>` out of the prompt (the kind is a
/// word, the arguments anything up to `>`), returning the remaining text and the tags in order.
pub fn extract_network_tags(prompt: &str) -> (String, Vec<NetworkTag>) {
    static TAG: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| Regex::new(r"<(\w+):([^>]+)>").expect("a valid regex"));
    let mut tags = Vec::new();
    let text = tag.replace_all(prompt, |caps: &regex::Captures| {
        tags.push(NetworkTag {
            kind: caps[1].to_string(),
            args: caps[2].split(':').map(str::to_string).collect(),
        });
        ""
    });
    (text.into_owned(), tags)
}

/// The conditioning plan for a prompt and a negative prompt.
pub fn plan(
    prompt: &str,
    negative_prompt: &str,
    options: &PromptOptions,
) -> Result<ConditioningPlan, PromptError> {
    let (prompt, mut networks) = extract_network_tags(prompt);
    let (negative_prompt, negative_networks) = extract_network_tags(negative_prompt);
    let mut plan = match options.syntax {
        Syntax::A1111 => a1111::plan(&prompt, &negative_prompt, options.steps)?,
        Syntax::InvokeAi => invokeai::plan(
            &prompt,
            &negative_prompt,
            options.steps,
            options.skip_normalize,
        )?,
    };
    networks.append(&mut plan.networks);
    plan.networks = networks;
    plan.negative_networks = negative_networks;
    Ok(plan)
}

/// Python's `str.isspace`, which `\s` in A1111's regexes means: Unicode White_Space plus the
/// four ASCII separators U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `\s` as Python's `re` reads it, for use inside a regex.
pub(crate) const PY_SPACE: &str = r"[\s\x1C-\x1F]";
