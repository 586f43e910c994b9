//! The conditioning plan: for the positive prompt's `AND` parts and for the negative prompt, the
//! weighted fragments to encode, and from which step each applies.

use super::{Fragment, NetworkTag, Syntax};

/// What the text encoder encodes for one sub-prompt over a stretch of steps.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptText {
    /// Weighted fragments, encoded in 75-token chunks (see [`super::chunking`]).
    Fragments(Vec<Fragment>),
    /// InvokeAI's blend: each part is encoded on its own and the conditionings are summed with
    /// the parts' weights, divided by their sum first when `normalize` (compel's
    /// `apply_embedding_weights`).
    Blend {
        parts: Vec<BlendPart>,
        normalize: bool,
    },
    /// compel's `.and()`: each part is encoded on its own and the conditionings are joined one
    /// after the other along the tokens; a part weighing `w` ≠ 1 is first moved from the empty
    /// prompt's conditioning, `empty + (c − empty)·w` (`build_conditioning_tensor_for_conjunction`).
    Conjunction(Vec<BlendPart>),
}

/// One weighted prompt of a blend or a conjunction.
#[derive(Debug, Clone, PartialEq)]
pub struct BlendPart {
    pub fragments: Vec<Fragment>,
    pub weight: f64,
}

/// One row of A1111's prompt schedule: `texts[text]` is used up to and including step
/// `until_step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleEntry {
    pub until_step: usize,
    pub text: usize,
}

/// One `AND` part of a prompt (or a whole prompt), its weight, and its texts over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct SubPrompt {
    /// The `:weight` after an `AND` part: its share of the guidance (composable diffusion).
    pub weight: f64,
    /// The distinct texts this part takes during the run, in order of first use.
    pub texts: Vec<PromptText>,
    /// Every row of A1111's schedule in step order, `until_step` increasing, the last one at
    /// the step count. Alternation repeats a text in several rows; A1111 encodes all rows as one
    /// batch, and its "Original" emphasis restores the mean over that batch, so the repeats
    /// count there.
    pub schedule: Vec<ScheduleEntry>,
}

impl SubPrompt {
    /// A part whose text never changes.
    pub fn constant(weight: f64, text: PromptText, steps: usize) -> Self {
        SubPrompt {
            weight,
            texts: vec![text],
            schedule: vec![ScheduleEntry {
                until_step: steps,
                text: 0,
            }],
        }
    }

    /// The index in `texts` of the text for sampling step `step`, counted from 0 as the sampler
    /// counts: the first row whose `until_step` is at least `step` (A1111's
    /// `reconstruct_cond_batch`, so `[cat:dog:0.5]` over 10 steps is "cat" for steps 0 to 5 and
    /// "dog" for 6 to 9). Past the last row it stays on the last text, where A1111 would go back
    /// to the first.
    pub fn text_index_at(&self, step: usize) -> usize {
        self.schedule
            .iter()
            .find(|entry| step <= entry.until_step)
            .or(self.schedule.last())
            .map_or(0, |entry| entry.text)
    }

    pub fn text_at(&self, step: usize) -> &PromptText {
        &self.texts[self.text_index_at(step)]
    }

    /// Whether the text is the same at every step.
    pub fn is_constant(&self) -> bool {
        self.texts.len() == 1
    }
}

/// Everything the encoder needs for a prompt and its negative prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditioningPlan {
    /// The syntax the prompts were read with; it also decides how weights act on embeddings.
    pub syntax: Syntax,
    /// The positive prompt's `AND` parts (one unless the prompt uses `AND`).
    pub positive: Vec<SubPrompt>,
    /// The negative prompt: one part, weight 1 (A1111 reads `AND` there as a word).
    pub negative: SubPrompt,
    /// Extra-network tags of the positive prompt, in order.
    pub networks: Vec<NetworkTag>,
    /// Extra-network tags found in, and removed from, the negative prompt.
    pub negative_networks: Vec<NetworkTag>,
    /// The prompt and the negative prompt as the syntax's reader takes them, after its own
    /// pre-steps (extra-network tags out; InvokeAI: `[…]` words moved to the negative prompt).
    /// compel's pooled embedding for SDXL is of these texts as written.
    pub texts: (String, String),
}

impl ConditioningPlan {
    /// Whether no part changes during sampling, so the conditioning can be encoded once.
    pub fn is_constant(&self) -> bool {
        self.negative.is_constant() && self.positive.iter().all(SubPrompt::is_constant)
    }
}
