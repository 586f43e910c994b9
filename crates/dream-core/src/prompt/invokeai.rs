//! InvokeAI's prompt syntax: the `compel` package's grammar (`compel.prompt_parser`, which
//! InvokeAI uses) plus InvokeAI's own two pre-steps (`invokeai/backend/prompting/conditioning.py`):
//!
//! - words inside `[…]` move to the negative prompt;
//! - a prompt with `text:weight` parts (`tabby cat:0.25 white duck:0.75 hybrid`) is a legacy
//!   blend of those parts, weights divided by their sum unless `skip_normalize`;
//!
//! and otherwise compel: `word+`, `word--`, `(words)1.3`, `(words)+`, `"words"-`, nesting
//! (weights multiply), `(words).attend(1.2)`, `("a", "b").blend(0.3, 0.7[, no_normalize])` and
//! `withLora(name, 0.8)` (returned as a `lora` tag). `+` is ×1.1 and `-` ×0.9 per sign.
//!
//! compel's grammar is a pyparsing PEG; it is followed here element by element, including where
//! pyparsing skips whitespace (` \t\r\n` before each element except bare words). An explicit
//! `("a", "b").and(1, 0.5)` is compel's conjunction (its parts' conditionings joined along the
//! tokens, as InvokeAI 3 builds it; InvokeAI 2.3 kept only the first part), and like compel it
//! ignores any text after its closing bracket. Unsupported: `.swap()` (prompt-to-prompt
//! cross-attention control) is an error; escapes such as `\t` inside quotes stay as written
//! (compel converts them); digits must be ASCII.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

use super::plan::{BlendPart, ConditioningPlan, PromptText, SubPrompt};
use super::{is_py_space, Fragment, NetworkTag, PromptError, Syntax, PY_SPACE};

/// compel's `attention_plus_base` and `attention_minus_base`.
const PLUS_BASE: f64 = 1.1;
const MINUS_BASE: f64 = 0.9;

/// Characters with a meaning in compel's syntax; a bare word stops at them.
const SYNTACTIC: &str = "()\",.+-=";

/// Nesting beyond this is refused, where compel would exhaust Python's recursion limit.
const MAX_NESTING: usize = 200;

/// The plan for an InvokeAI prompt and negative prompt (extra-network tags already removed)
/// over `steps` steps. Words in `[…]` in the prompt join the negative prompt after its own
/// text. InvokeAI has no prompt editing: every text is constant.
pub fn plan(
    prompt: &str,
    negative_prompt: &str,
    steps: usize,
    skip_normalize: bool,
) -> Result<ConditioningPlan, PromptError> {
    // InvokeAI joins lines before reading the prompt.
    let prompt = prompt.replace('\n', " ");
    let (positive_text, inline_negative) = split_negative(&prompt);
    let negative_text = [negative_prompt, inline_negative.as_str()]
        .iter()
        .filter(|text| !text.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");

    let mut networks = Vec::new();
    let positive = match legacy_blend(&positive_text, skip_normalize, &mut networks)? {
        Some(blend) => blend,
        None => parse_prompt(&positive_text, &mut networks)?,
    };
    let negative = parse_prompt(&negative_text, &mut networks)?;
    Ok(ConditioningPlan {
        syntax: Syntax::InvokeAi,
        positive: vec![SubPrompt::constant(1.0, positive, steps)],
        negative: SubPrompt::constant(1.0, negative, steps),
        networks,
        negative_networks: Vec::new(),
        texts: (positive_text, negative_text),
    })
}

/// InvokeAI's `split_prompt_to_positive_and_negative`: every `[…]` (shortest match) is cut out
/// of the prompt and replaced by a space, runs of spaces collapse, and the bracketed words,
/// joined by spaces, are the negative prompt.
pub fn split_negative(prompt: &str) -> (String, String) {
    static BRACKETED: OnceLock<Regex> = OnceLock::new();
    static SPACES: OnceLock<Regex> = OnceLock::new();
    let bracketed = BRACKETED.get_or_init(|| Regex::new(r"\[(.*?)\]").expect("a valid regex"));
    let spaces = SPACES.get_or_init(|| Regex::new(" +").expect("a valid regex"));
    let negative: Vec<&str> = bracketed
        .captures_iter(prompt)
        .map(|caps| caps.get(1).map_or("", |m| m.as_str()))
        .collect();
    if negative.is_empty() {
        return (prompt.to_string(), String::new());
    }
    let cleaned = bracketed.replace_all(prompt, " ");
    (
        spaces.replace_all(&cleaned, " ").into_owned(),
        negative.join(" "),
    )
}

/// InvokeAI's `split_weighted_subprompts`: the prompt's `text:weight` parts. A part without a
/// number weighs 1, `\:` is a literal colon, and unless `skip_normalize` the weights are
/// divided by their sum (equal weights when they sum to 0).
pub fn weighted_subprompts(text: &str, skip_normalize: bool) -> Vec<(String, f64)> {
    static PART: OnceLock<Regex> = OnceLock::new();
    let part = PART.get_or_init(|| {
        let pattern = format!(
            r"(?P<prompt>(?:\\:|[^:])+)(?::+(?P<weight>-?[0-9]+(?:\.[0-9]+)?)?{PY_SPACE}*|$)"
        );
        Regex::new(&pattern).expect("a valid regex")
    });
    let parts: Vec<(String, f64)> = part
        .captures_iter(text)
        .map(|caps| {
            let prompt = caps.name("prompt").map_or("", |m| m.as_str());
            // Digits with an optional fraction always parse.
            let weight = caps
                .name("weight")
                .map_or(1.0, |w| w.as_str().parse().unwrap_or(1.0));
            (prompt.replace("\\:", ":"), weight)
        })
        .collect();
    if skip_normalize {
        return parts;
    }
    let sum: f64 = parts.iter().map(|(_, weight)| weight).sum();
    if sum == 0.0 {
        let equal = 1.0 / parts.len().max(1) as f64;
        return parts.into_iter().map(|(text, _)| (text, equal)).collect();
    }
    parts
        .into_iter()
        .map(|(text, weight)| (text, weight / sum))
        .collect()
}

/// InvokeAI's `try_parse_legacy_blend`: a blend when the prompt has two or more weighted parts.
fn legacy_blend(
    text: &str,
    skip_normalize: bool,
    networks: &mut Vec<NetworkTag>,
) -> Result<Option<PromptText>, PromptError> {
    let subprompts = weighted_subprompts(text, skip_normalize);
    if subprompts.len() <= 1 {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for (subprompt, weight) in subprompts {
        match parse_conjunction(&subprompt)? {
            Parsed::Empty { loras } => networks.extend(loras),
            Parsed::Fragments { fragments, loras } => {
                networks.extend(loras);
                parts.push(BlendPart { fragments, weight });
            }
            Parsed::Blend { .. } | Parsed::Conjunction { .. } => {
                return Err(invokeai_error(
                    &subprompt,
                    "a .blend() or .and() cannot be part of a `text:weight` blend",
                ))
            }
        }
    }
    Ok(Some(PromptText::Blend {
        parts,
        normalize: !skip_normalize,
    }))
}

/// A prompt read with compel's grammar, its `withLora` tags added to `networks`.
fn parse_prompt(text: &str, networks: &mut Vec<NetworkTag>) -> Result<PromptText, PromptError> {
    Ok(match parse_conjunction(text)? {
        Parsed::Empty { loras } => {
            networks.extend(loras);
            PromptText::Fragments(vec![Fragment::text("", 1.0)])
        }
        Parsed::Fragments { fragments, loras } => {
            networks.extend(loras);
            PromptText::Fragments(fragments)
        }
        Parsed::Blend { blend, loras } => {
            networks.extend(loras);
            blend
        }
        Parsed::Conjunction { conjunction, loras } => {
            networks.extend(loras);
            conjunction
        }
    })
}

/// compel's `PromptParser().parse_conjunction`, flattened.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Weighted fragments, neighbours with equal weights joined by a space.
    Fragments {
        fragments: Vec<Fragment>,
        loras: Vec<NetworkTag>,
    },
    /// A `.blend()`: a [`PromptText::Blend`].
    Blend {
        blend: PromptText,
        loras: Vec<NetworkTag>,
    },
    /// An explicit `.and()`: a [`PromptText::Conjunction`].
    Conjunction {
        conjunction: PromptText,
        loras: Vec<NetworkTag>,
    },
    /// Nothing but `withLora` tags.
    Empty { loras: Vec<NetworkTag> },
}

impl Parsed {
    fn with_trailing(mut self, trailing: Vec<NetworkTag>) -> Self {
        match &mut self {
            Parsed::Fragments { loras, .. }
            | Parsed::Blend { loras, .. }
            | Parsed::Conjunction { loras, .. }
            | Parsed::Empty { loras } => loras.extend(trailing),
        }
        self
    }
}

/// compel's `PromptParser().parse_conjunction(text)`.
pub fn parse_conjunction(text: &str) -> Result<Parsed, PromptError> {
    static COMMA: OnceLock<Regex> = OnceLock::new();
    // `,` then anything but Python whitespace.
    let comma = COMMA.get_or_init(|| Regex::new(r",([^\s\x1C-\x1F])").expect("a valid regex"));
    // compel puts a space after every comma first.
    let text = comma.replace_all(text, ", $1").into_owned();
    if text.chars().all(is_py_space) {
        return Ok(Parsed::Fragments {
            fragments: vec![Fragment::text("", 1.0)],
            loras: Vec::new(),
        });
    }
    let parser = Parser::new(&text);
    let root = parser.conjunction();
    if parser.too_deep.get() {
        return Err(invokeai_error(&text, "brackets are nested too deeply"));
    }
    let Conjunction {
        leading,
        root,
        trailing,
    } = root.map_err(|problem| invokeai_error(&text, &problem))?;
    // The LoRA tags around the prompt are flattened before and after it, like compel's parts.
    let mut loras = Vec::new();
    let mut trailing_loras = Vec::new();
    flatten_prompt(&leading, 1.0, &mut loras).map_err(|problem| invokeai_error(&text, problem))?;
    flatten_prompt(&trailing, 1.0, &mut trailing_loras)
        .map_err(|problem| invokeai_error(&text, problem))?;
    let parsed = match root {
        Root::Prompt(items) => {
            let fragments = flatten_prompt(&items, 1.0, &mut loras)
                .map_err(|problem| invokeai_error(&text, problem))?;
            if fragments.is_empty() {
                Parsed::Empty { loras }
            } else {
                Parsed::Fragments { fragments, loras }
            }
        }
        Root::Blend {
            parts,
            weights,
            normalize,
        } => {
            let mut flattened = Vec::new();
            for part in &parts {
                let fragments = flatten_prompt(part, 1.0, &mut loras)
                    .map_err(|problem| invokeai_error(&text, problem))?;
                if !fragments.is_empty() {
                    flattened.push(fragments);
                }
            }
            // compel's `Blend` checks the counts after flattening.
            let weights = if weights.is_empty() {
                vec![1.0; flattened.len()]
            } else {
                weights
            };
            if weights.len() != flattened.len() {
                return Err(invokeai_error(
                    &text,
                    "a .blend() needs one weight per prompt",
                ));
            }
            let parts = flattened
                .into_iter()
                .zip(weights)
                .map(|(fragments, weight)| BlendPart { fragments, weight })
                .collect();
            Parsed::Blend {
                blend: PromptText::Blend { parts, normalize },
                loras,
            }
        }
        Root::Conjunction { parts, weights } => {
            // compel checks the counts before flattening, then drops the empty parts.
            let weights = if weights.is_empty() {
                vec![1.0; parts.len()]
            } else {
                weights
            };
            if weights.len() != parts.len() {
                return Err(invokeai_error(
                    &text,
                    "an .and() needs one weight per prompt",
                ));
            }
            let mut kept = Vec::new();
            for (part, weight) in parts.iter().zip(weights) {
                let fragments = flatten_prompt(part, 1.0, &mut loras)
                    .map_err(|problem| invokeai_error(&text, problem))?;
                if !fragments.is_empty() {
                    kept.push(BlendPart { fragments, weight });
                }
            }
            if kept.is_empty() {
                return Err(invokeai_error(&text, "an .and() needs some text"));
            }
            Parsed::Conjunction {
                conjunction: PromptText::Conjunction(kept),
                loras,
            }
        }
    };
    Ok(parsed.with_trailing(trailing_loras))
}

fn invokeai_error(prompt: &str, problem: &str) -> PromptError {
    PromptError::InvokeAi {
        prompt: prompt.to_string(),
        problem: problem.to_string(),
    }
}

/// compel's parse tree, before flattening.
#[derive(Debug, Clone)]
enum Item {
    Fragment(String),
    /// Children whose weights are multiplied by the weight.
    Attention(f64, Vec<Item>),
    Lora(String, f64),
    /// `.swap()`, which is refused when flattening.
    Swap,
}

/// compel's implicit conjunction: LoRA tags, a blend or a prompt, LoRA tags.
struct Conjunction {
    leading: Vec<Item>,
    root: Root,
    trailing: Vec<Item>,
}

enum Root {
    Prompt(Vec<Item>),
    Conjunction {
        parts: Vec<Vec<Item>>,
        weights: Vec<f64>,
    },
    Blend {
        parts: Vec<Vec<Item>>,
        weights: Vec<f64>,
        normalize: bool,
    },
}

/// compel's `flatten` of one prompt: the fragments with their weights multiplied down the tree
/// (outer weight first), neighbours with equal weights joined by a space (`fuse_fragments`).
fn flatten_prompt(
    items: &[Item],
    scale: f64,
    loras: &mut Vec<NetworkTag>,
) -> Result<Vec<Fragment>, &'static str> {
    let mut unfused = Vec::new();
    flatten_items(items, scale, &mut unfused, loras)?;
    let mut fused: Vec<(String, f64)> = Vec::new();
    for (text, weight) in unfused {
        match fused.last_mut() {
            Some(last) if last.1 == weight => {
                last.0 = fragment_text(&format!("{} {}", last.0, text));
            }
            _ => fused.push((text, weight)),
        }
    }
    Ok(fused
        .into_iter()
        .map(|(text, weight)| Fragment::Text { text, weight })
        .collect())
}

fn flatten_items(
    items: &[Item],
    scale: f64,
    out: &mut Vec<(String, f64)>,
    loras: &mut Vec<NetworkTag>,
) -> Result<(), &'static str> {
    for item in items {
        match item {
            Item::Fragment(text) => out.push((fragment_text(text), 1.0 * scale)),
            Item::Attention(weight, children) => {
                flatten_items(children, scale * weight, out, loras)?
            }
            Item::Lora(name, weight) => loras.push(NetworkTag {
                kind: "lora".to_string(),
                args: vec![name.clone(), weight.to_string()],
            }),
            Item::Swap => return Err(".swap() (cross-attention control) is not supported"),
        }
    }
    Ok(())
}

/// compel's `Fragment` constructor turns `\(`, `\)` and `\"` into the bare characters.
fn fragment_text(text: &str) -> String {
    text.replace("\\(", "(")
        .replace("\\)", ")")
        .replace("\\\"", "\"")
}

/// pyparsing's default whitespace, which every element but bare words skips before it.
fn is_pp_white(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Python's `string.whitespace`, which bare words stop at.
fn is_string_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

type Match<T> = Option<(T, usize)>;

/// Which memoised rule; pyparsing retries the same rule at the same place many times (a
/// bracket can start an attention, a swap or a group), which without memoising is exponential
/// in the nesting depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rule {
    Parenthesized,
    QuotedFragment,
}

type Memo = HashMap<(usize, Rule), Match<Vec<Item>>>;

struct Parser<'a> {
    text: &'a str,
    memo: RefCell<Memo>,
    depth: Cell<usize>,
    too_deep: Cell<bool>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text,
            memo: RefCell::new(HashMap::new()),
            depth: Cell::new(0),
            too_deep: Cell::new(false),
        }
    }

    fn rest(&self, i: usize) -> &'a str {
        &self.text[i..]
    }

    fn skip_white(&self, i: usize) -> usize {
        self.rest(i)
            .char_indices()
            .find(|&(_, c)| !is_pp_white(c))
            .map_or(self.text.len(), |(offset, _)| i + offset)
    }

    /// `Literal(s)`.
    fn literal(&self, i: usize, s: &str) -> Option<usize> {
        let i = self.skip_white(i);
        self.rest(i).starts_with(s).then_some(i + s.len())
    }

    /// `Word(chars)`: the longest run of characters satisfying `allowed`, at least one.
    fn word(&self, i: usize, allowed: impl Fn(char) -> bool) -> Match<&'a str> {
        let i = self.skip_white(i);
        let len = self
            .rest(i)
            .char_indices()
            .find(|&(_, c)| !allowed(c))
            .map_or(self.text.len() - i, |(offset, _)| offset);
        (len > 0).then(|| (&self.text[i..i + len], i + len))
    }

    /// `Word(alphanums + '_' + '-')`: option names and LoRA names.
    fn keyword(&self, i: usize) -> Match<&'a str> {
        self.word(i, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    /// `pyparsing_common.real | Combine(Optional("-") + Word(nums))`, as a float.
    fn number(&self, i: usize) -> Match<f64> {
        static REAL: OnceLock<Regex> = OnceLock::new();
        static INT: OnceLock<Regex> = OnceLock::new();
        let real = REAL.get_or_init(|| {
            Regex::new(r"^[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)").expect("a valid regex")
        });
        let int = INT.get_or_init(|| Regex::new(r"^-?[0-9]+").expect("a valid regex"));
        let i = self.skip_white(i);
        let found = real.find(self.rest(i)).or_else(|| int.find(self.rest(i)))?;
        let value = found.as_str().parse().ok()?;
        Some((value, i + found.end()))
    }

    /// `White()`: a run of pyparsing's whitespace, skipped.
    fn white(&self, i: usize) -> Option<usize> {
        let end = self.skip_white(i);
        (end > i).then_some(end)
    }

    /// Whether `NotAny(White())` holds at `i`: no whitespace follows.
    fn no_white(&self, i: usize) -> bool {
        !self.rest(i).starts_with(is_pp_white)
    }

    /// `non_syntax_word`: escaped syntax characters (`\(`, `\+`…), `+`/`-` followed by
    /// something other than whitespace, syntax or the end, and characters that are neither
    /// whitespace nor syntax.
    fn non_syntax_word(&self, i: usize) -> Match<Item> {
        let start = self.skip_white(i);
        let mut j = start;
        loop {
            let mut chars = self.rest(j).chars();
            let Some(c) = chars.next() else { break };
            let next = chars.next();
            let step = match (c, next) {
                ('\\', Some(n)) if SYNTACTIC.contains(n) => 1 + n.len_utf8(),
                ('+' | '-', Some(n)) if !is_pp_white(n) && !SYNTACTIC.contains(n) => 1,
                _ if is_string_whitespace(c) || SYNTACTIC.contains(c) => break,
                _ => c.len_utf8(),
            };
            j += step;
        }
        (j > start).then(|| (Item::Fragment(fragment_text(&self.text[start..j])), j))
    }

    /// `free_word`: any run of non-whitespace, without skipping whitespace first.
    fn free_word(&self, i: usize) -> Match<Item> {
        let len = self
            .rest(i)
            .char_indices()
            .find(|&(_, c)| is_string_whitespace(c))
            .map_or(self.text.len() - i, |(offset, _)| offset);
        (len > 0).then(|| {
            (
                Item::Fragment(fragment_text(&self.text[i..i + len])),
                i + len,
            )
        })
    }

    /// `QuotedString('"', esc_quote='\\"')`, unquoted: the text between the quotes, `\"`
    /// standing for `"`.
    fn quoted_string(&self, i: usize) -> Match<String> {
        static QUOTED: OnceLock<Regex> = OnceLock::new();
        let quoted =
            QUOTED.get_or_init(|| Regex::new(r#"^"(?:\\"|[^"\n\r])*""#).expect("a valid regex"));
        let i = self.skip_white(i);
        let found = quoted.find(self.rest(i))?;
        let inner = &found.as_str()[1..found.len() - 1];
        Some((inner.replace("\\\"", "\""), i + found.end()))
    }

    /// `parse_fragment_str`: a quoted string's text parsed again, with `"` escaped, by the
    /// fragment grammar (`whole_prompt` false) or the prompt grammar, to its end.
    fn quoted(&self, i: usize, whole_prompt: bool) -> Match<Vec<Item>> {
        let (inner, end) = self.quoted_string(i)?;
        if inner.chars().all(is_py_space) {
            return Some((vec![Item::Fragment(String::new())], end));
        }
        let escaped = inner.replace('"', "\\\"");
        let parser = Parser::new(&escaped);
        parser.depth.set(self.depth.get());
        let (items, stop) = if whole_prompt {
            parser.prompt(0)
        } else {
            parser.fragments(0, true)
        };
        if parser.too_deep.get() {
            self.too_deep.set(true);
        }
        (parser.skip_white(stop) == escaped.len()).then_some((items, end))
    }

    fn memoized(
        &self,
        i: usize,
        rule: Rule,
        parse: impl FnOnce() -> Match<Vec<Item>>,
    ) -> Match<Vec<Item>> {
        if let Some(found) = self.memo.borrow().get(&(i, rule)) {
            return found.clone();
        }
        let depth = self.depth.get() + 1;
        if depth > MAX_NESTING {
            self.too_deep.set(true);
            return None;
        }
        self.depth.set(depth);
        let found = parse();
        self.depth.set(depth - 1);
        self.memo.borrow_mut().insert((i, rule), found.clone());
        found
    }

    /// `quoted_fragment`.
    fn quoted_fragment(&self, i: usize) -> Match<Vec<Item>> {
        self.memoized(i, Rule::QuotedFragment, || self.quoted(i, false))
    }

    /// `parenthesized_fragment`: `( fragments )`, the brackets dropped.
    fn parenthesized(&self, i: usize) -> Match<Vec<Item>> {
        self.memoized(i, Rule::Parenthesized, || {
            let j = self.literal(i, "(")?;
            let (items, k) = self.fragments(j, true);
            let end = self.literal(k, ")")?;
            Some((items, end))
        })
    }

    /// `fragment_including_commas_or_periods` (or `fragment_excluding_commas`): zero or more
    /// of LoRA, attention, swap, group, quote, word (and `,` or `.`).
    fn fragments(&self, mut i: usize, commas: bool) -> (Vec<Item>, usize) {
        let mut items = Vec::new();
        loop {
            let found = self
                .lora(i)
                .map(|(item, end)| (vec![item], end))
                .or_else(|| self.attention(i).map(|(item, end)| (vec![item], end)))
                .or_else(|| self.swap(i).map(|(item, end)| (vec![item], end)))
                .or_else(|| self.parenthesized(i))
                .or_else(|| self.quoted_fragment(i))
                .or_else(|| self.non_syntax_word(i).map(|(item, end)| (vec![item], end)))
                .or_else(|| {
                    commas
                        .then(|| {
                            let j = self.skip_white(i);
                            let c = self
                                .rest(j)
                                .chars()
                                .next()
                                .filter(|&c| c == ',' || c == '.')?;
                            Some((vec![Item::Fragment(c.to_string())], j + 1))
                        })
                        .flatten()
                });
            match found {
                Some((found, end)) => {
                    items.extend(found);
                    i = end;
                }
                None => return (items, i),
            }
        }
    }

    /// `potential_operator_target`: a quote, a group or a word.
    fn target(&self, i: usize) -> Match<Vec<Item>> {
        self.quoted_fragment(i)
            .or_else(|| self.parenthesized(i))
            .or_else(|| self.non_syntax_word(i).map(|(item, end)| (vec![item], end)))
    }

    /// `attention_weight_operator`: `+…` (1.1 per sign), `-…` (0.9 per sign) or a number.
    fn weight_operator(&self, i: usize) -> Match<f64> {
        self.signs(i).or_else(|| self.number(i))
    }

    fn signs(&self, i: usize) -> Match<f64> {
        let signs = |sign: char, base: f64| {
            self.word(i, |c| c == sign)
                .map(|(run, end)| (base.powf(run.len() as f64), end))
        };
        signs('+', PLUS_BASE).or_else(|| signs('-', MINUS_BASE))
    }

    /// `attention`: `target.attend(w)`, a quote or group directly followed by a weight, or a
    /// word directly followed by `+`s or `-`s.
    fn attention(&self, i: usize) -> Match<Item> {
        let explicit = || {
            let (children, j) = self.target(i)?;
            let j = self.literal(j, ".attend")?;
            let j = self.literal(j, "(")?;
            let (weight, j) = self.weight_operator(j)?;
            let end = self.literal(j, ")")?;
            Some((Item::Attention(weight, children), end))
        };
        let implicit_group = || {
            let (children, j) = self.quoted_fragment(i).or_else(|| self.parenthesized(i))?;
            if !self.no_white(j) {
                return None;
            }
            let (weight, end) = self.weight_operator(j)?;
            Some((Item::Attention(weight, children), end))
        };
        let implicit_word = || {
            let (word, j) = self.non_syntax_word(i)?;
            if !self.no_white(j) {
                return None;
            }
            let (weight, end) = self.signs(j)?;
            Some((Item::Attention(weight, vec![word]), end))
        };
        explicit().or_else(implicit_group).or_else(implicit_word)
    }

    /// `cross_attention_substitute`: `target.swap(fragments[, options])`.
    fn swap(&self, i: usize) -> Match<Item> {
        let (_, j) = self.target(i)?;
        let j = self.literal(j, ".swap")?;
        let j = self.literal(j, "(")?;
        let (_, j) = self.fragments(j, false);
        let j = match self.literal(j, ",") {
            Some(k) => self.options(k).1,
            None => j,
        };
        let end = self.literal(j, ")")?;
        Some((Item::Swap, end))
    }

    /// `lora_weight`: `withLora(name[, weight])` or `useLora(…)`.
    fn lora(&self, i: usize) -> Match<Item> {
        let j = self
            .literal(i, "useLora")
            .or_else(|| self.literal(i, "withLora"))?;
        let j = self.literal(j, "(")?;
        let (name, j) = self.keyword(j)?;
        let (weight, j) = match self.literal(j, ",").and_then(|k| self.number(k)) {
            Some((weight, k)) => (weight, k),
            None => (1.0, j),
        };
        let end = self.literal(j, ")")?;
        Some((Item::Lora(name.to_string(), weight), end))
    }

    /// `options`: a comma-separated list of `key=value`, numbers and flags; each comes back as
    /// its first token (the key, the number or the flag).
    fn options(&self, i: usize) -> (Vec<OptionToken>, usize) {
        let option = |i: usize| -> Match<OptionToken> {
            let key_value = || {
                let (key, j) = self.keyword(i)?;
                let j = self.literal(j, "=")?;
                let (_, end) = self
                    .number(j)
                    .map(|(_, end)| ((), end))
                    .or_else(|| self.keyword(j).map(|(_, end)| ((), end)))?;
                Some((OptionToken::Word(key.to_string()), end))
            };
            key_value()
                .or_else(|| self.number(i).map(|(n, end)| (OptionToken::Number(n), end)))
                .or_else(|| {
                    self.keyword(i)
                        .map(|(word, end)| (OptionToken::Word(word.to_string()), end))
                })
        };
        let Some((first, mut i)) = option(i) else {
            return (Vec::new(), i);
        };
        let mut tokens = vec![first];
        while let Some((token, end)) = self.literal(i, ",").and_then(option) {
            tokens.push(token);
            i = end;
        }
        (tokens, i)
    }

    /// `prompt`: zero or more of swap, LoRA, attention, quote, group, any word, whitespace.
    fn prompt(&self, mut i: usize) -> (Vec<Item>, usize) {
        let mut items = Vec::new();
        loop {
            if let Some((item, end)) = self
                .swap(i)
                .or_else(|| self.lora(i))
                .or_else(|| self.attention(i))
            {
                items.push(item);
                i = end;
            } else if let Some((found, end)) =
                self.quoted_fragment(i).or_else(|| self.parenthesized(i))
            {
                items.extend(found);
                i = end;
            } else if let Some((item, end)) = self.free_word(i) {
                items.push(item);
                i = end;
            } else if let Some(end) = self.white(i) {
                i = end;
            } else {
                return (items, i);
            }
        }
    }

    /// `( target-or-quoted-prompt, … ).operator( options )` for `.blend`, or for `.and`/`.add`.
    fn operator_list(
        &self,
        i: usize,
        operators: &[&str],
    ) -> Match<(Vec<Vec<Item>>, Vec<OptionToken>)> {
        let part = |i: usize| self.target(i).or_else(|| self.quoted(i, true));
        let mut j = self.literal(i, "(")?;
        let (first, end) = part(j)?;
        let mut parts = vec![first];
        j = end;
        while let Some((found, end)) = self.literal(j, ",").and_then(part) {
            parts.push(found);
            j = end;
        }
        let j = self.literal(j, ")")?;
        let j = operators.iter().find_map(|op| self.literal(j, op))?;
        let j = self.literal(j, "(")?;
        let (options, j) = self.options(j);
        let end = self.literal(j, ")")?;
        Some(((parts, options), end))
    }

    /// `conjunction`: an explicit `.and()` (what follows it is ignored, as pyparsing's
    /// `parse_string` does), else optional LoRAs, a blend or a prompt, optional LoRAs, and the
    /// end of the text.
    fn conjunction(&self) -> Result<Conjunction, String> {
        if let Some(((parts, options), _)) = self.operator_list(0, &[".and", ".add"]) {
            let weights = options
                .into_iter()
                .map(|option| match option {
                    OptionToken::Number(weight) => Ok(weight),
                    OptionToken::Word(word) => {
                        Err(format!("the .and() weight {word:?} is not a number"))
                    }
                })
                .collect::<Result<_, _>>()?;
            return Ok(Conjunction {
                leading: Vec::new(),
                root: Root::Conjunction { parts, weights },
                trailing: Vec::new(),
            });
        }
        let mut loras = Vec::new();
        let mut i = 0;
        while let Some((lora, end)) = self.lora(i) {
            loras.push(lora);
            i = end;
        }
        let (root, mut i) = match self.operator_list(i, &[".blend"]) {
            Some(((parts, options), end)) => (blend_root(parts, options)?, end),
            None => {
                let (items, end) = self.prompt(i);
                (Root::Prompt(items), end)
            }
        };
        let mut trailing = Vec::new();
        while let Some((lora, end)) = self.lora(i) {
            trailing.push(lora);
            i = end;
        }
        if self.skip_white(i) != self.text.len() {
            let rest: String = self.rest(i).chars().take(20).collect();
            return Err(format!("cannot read the text from {rest:?}"));
        }
        Ok(Conjunction {
            leading: loras,
            root,
            trailing,
        })
    }
}

#[derive(Debug, Clone)]
enum OptionToken {
    Number(f64),
    Word(String),
}

/// compel's `.blend` operator: a trailing `no_normalize` flag turns normalisation off; every
/// other option must be a weight.
fn blend_root(parts: Vec<Vec<Item>>, mut options: Vec<OptionToken>) -> Result<Root, String> {
    let normalize =
        !matches!(options.last(), Some(OptionToken::Word(flag)) if flag == "no_normalize");
    if !normalize {
        options.pop();
    }
    if parts
        .iter()
        .flatten()
        .any(|item| matches!(item, Item::Swap))
    {
        return Err("a .swap() cannot be part of a .blend()".to_string());
    }
    let weights = options
        .into_iter()
        .map(|option| match option {
            OptionToken::Number(weight) => Ok(weight),
            OptionToken::Word(word) => Err(format!("the blend weight {word:?} is not a number")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Root::Blend {
        parts,
        weights,
        normalize,
    })
}
