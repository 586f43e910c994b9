//! AUTOMATIC1111's prompt syntax, read the way its `modules/prompt_parser.py` reads it:
//!
//! 1. [`split_and`]: the prompt splits at the word `AND` into parts, each with an optional
//!    trailing `:weight` (`get_multicond_prompt_list`);
//! 2. [`prompt_schedule`]: each part becomes a schedule of texts, one per stretch of steps,
//!    from prompt editing `[from:to:when]` and alternation `[a|b]`
//!    (`get_learned_conditioning_prompt_schedules`);
//! 3. [`parse_attention`]: each text becomes weighted fragments from `(…)`, `[…]`, `(…:w)` and
//!    `BREAK` (`parse_prompt_attention`).
//!
//! Malformed prompts degrade as they do in A1111: unbalanced emphasis brackets close at the end
//! of the text, and a prompt that step 2's grammar cannot read is used literally for every
//! step. Two differences remain, both where A1111 itself is undecided or fails:
//! - A1111's grammar is ambiguous where a bracket group is directly followed by unmatched `)`,
//!   `]` or `:` (`[a:b:2])`): reading the group as editing or everything as literal text are
//!   both valid, and lark picks one by the order of its internal sets, which depends on the
//!   lark version and Python's hash seed. Here the group is always read as editing, as lark
//!   1.3 does almost everywhere.
//! - A1111 crashes on a weight that is not a number (`(a:1.2.3)`), on prompt editing at an
//!   infinite step, and on brackets nested ~1000 deep; here the first is an error, the second
//!   is clamped and the third takes the prompt literally. Digits must be ASCII.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use regex::Regex;

use super::plan::{ConditioningPlan, PromptText, ScheduleEntry, SubPrompt};
use super::{is_py_space, Fragment, PromptError, Syntax, PY_SPACE};

const ROUND_BRACKET_MULTIPLIER: f64 = 1.1;
const SQUARE_BRACKET_MULTIPLIER: f64 = 1.0 / 1.1;

/// Bracket nesting beyond this makes the prompt literal for scheduling, where A1111's recursive
/// tree walk would overflow Python's stack.
const MAX_NESTING: usize = 500;

/// The plan for an A1111 prompt and negative prompt (whose extra-network tags are already
/// removed) over `steps` sampling steps.
pub fn plan(
    prompt: &str,
    negative_prompt: &str,
    steps: usize,
) -> Result<ConditioningPlan, PromptError> {
    let positive = split_and(prompt)?
        .into_iter()
        .map(|(text, weight)| sub_prompt(&text, weight, steps))
        .collect::<Result<_, _>>()?;
    // A1111 conditions the negative prompt with `get_learned_conditioning`, which has no `AND`.
    let negative = sub_prompt(negative_prompt, 1.0, steps)?;
    Ok(ConditioningPlan {
        syntax: Syntax::A1111,
        positive,
        negative,
        networks: Vec::new(),
        negative_networks: Vec::new(),
        texts: (prompt.to_string(), negative_prompt.to_string()),
    })
}

fn sub_prompt(text: &str, weight: f64, steps: usize) -> Result<SubPrompt, PromptError> {
    let mut distinct: Vec<String> = Vec::new();
    let mut schedule = Vec::new();
    for (until_step, text) in prompt_schedule(text, steps) {
        let index = match distinct.iter().position(|t| *t == text) {
            Some(index) => index,
            None => {
                distinct.push(text);
                distinct.len() - 1
            }
        };
        schedule.push(ScheduleEntry {
            until_step,
            text: index,
        });
    }
    let texts = distinct
        .iter()
        .map(|text| parse_attention(text).map(PromptText::Fragments))
        .collect::<Result<_, _>>()?;
    Ok(SubPrompt {
        weight,
        texts,
        schedule,
    })
}

/// The prompt's `AND` parts with their weights: `a cat AND a dog:1.5` is `("a cat", 1.0)` and
/// `(" a dog", 1.5)`. A part keeps its leading whitespace and loses its trailing whitespace.
pub fn split_and(prompt: &str) -> Result<Vec<(String, f64)>, PromptError> {
    static AND: OnceLock<Regex> = OnceLock::new();
    static WEIGHT: OnceLock<Regex> = OnceLock::new();
    let and = AND.get_or_init(|| Regex::new(r"\bAND\b").expect("a valid regex"));
    let weight = WEIGHT.get_or_init(|| {
        let pattern = format!(
            r"(?s)^(.*?)(?:{PY_SPACE}*:{PY_SPACE}*([-+]?(?:[0-9]+\.?|[0-9]*\.[0-9]+)))?{PY_SPACE}*$"
        );
        Regex::new(&pattern).expect("a valid regex")
    });
    and.split(prompt)
        .map(|part| {
            let Some(caps) = weight.captures(part) else {
                return Ok((part.to_string(), 1.0));
            };
            let text = caps.get(1).map_or("", |m| m.as_str()).to_string();
            let value = match caps.get(2) {
                Some(w) => finite_weight(w.as_str(), &text)?,
                None => 1.0,
            };
            Ok((text, value))
        })
        .collect()
}

fn finite_weight(number: &str, context: &str) -> Result<f64, PromptError> {
    let weight: f64 = number.parse().map_err(|_| PromptError::BadWeight {
        weight: number.to_string(),
    })?;
    if weight.is_finite() {
        Ok(weight)
    } else {
        Err(PromptError::WeightNotFinite {
            text: context.to_string(),
            weight,
        })
    }
}

/// The prompt's text at each stretch of steps: `(until_step, text)` rows, `until_step`
/// increasing, the last one `steps`. Row `k` applies to steps after row `k - 1`'s `until_step`.
///
/// `[from:to:when]` is `from` up to step `when` and `to` after it; `[to:when]` and
/// `[from::when]` leave out one side. A `when` with a decimal point is a fraction of `steps`.
/// `[a|b|c]` takes the next option at every step.
pub fn prompt_schedule(prompt: &str, steps: usize) -> Vec<(usize, String)> {
    let steps_i = i64::try_from(steps).unwrap_or(i64::MAX);
    let Some(nodes) = ScheduleParser::new(prompt).start() else {
        return vec![(steps, prompt.to_string())];
    };
    let mut ends = BTreeSet::from([steps_i]);
    collect_steps(&nodes, steps_i, &mut ends);
    ends.into_iter()
        .map(|end| {
            let mut text = String::new();
            render(&nodes, end, steps_i, &mut text);
            (usize::try_from(end).unwrap_or(0), text)
        })
        .collect()
}

/// A piece of a prompt as A1111's schedule grammar sees it. Emphasis brackets and stray
/// brackets are plain text at this stage.
#[derive(Debug)]
enum Node<'a> {
    Text(&'a str),
    /// `[before:after:when]`; a missing side is empty.
    Scheduled {
        before: Vec<Node<'a>>,
        after: Vec<Node<'a>>,
        when: &'a str,
    },
    /// `[a|b|…]`; a missing option is empty.
    Alternate(Vec<Vec<Node<'a>>>),
}

/// The step at which `[…:…:when]` switches: a number with a decimal point is a fraction of the
/// steps, anything else a step number, at most `steps` (`collect_steps`).
fn switch_step(when: &str, steps: i64) -> i64 {
    // The grammar only lets numbers through, so the fallback is never taken.
    let value: f64 = when.parse().unwrap_or(0.0);
    let value = if when.contains('.') {
        value * steps as f64
    } else {
        value
    };
    // Python's `min(steps, int(value))`; `as` truncates toward zero like `int` and saturates
    // where `int` would raise.
    if value >= steps as f64 {
        steps
    } else {
        value as i64
    }
}

fn collect_steps(nodes: &[Node], steps: i64, ends: &mut BTreeSet<i64>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Scheduled {
                before,
                after,
                when,
            } => {
                let step = switch_step(when, steps);
                if step >= 1 {
                    ends.insert(step);
                }
                collect_steps(before, steps, ends);
                collect_steps(after, steps, ends);
            }
            Node::Alternate(options) => {
                ends.extend(1..=steps);
                for option in options {
                    collect_steps(option, steps, ends);
                }
            }
        }
    }
}

fn render(nodes: &[Node], step: i64, steps: i64, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Scheduled {
                before,
                after,
                when,
            } => {
                let side = if step <= switch_step(when, steps) {
                    before
                } else {
                    after
                };
                render(side, step, steps, out);
            }
            Node::Alternate(options) => {
                // Python's `%` is never negative.
                let index = (step - 1).rem_euclid(options.len() as i64) as usize;
                render(&options[index], step, steps, out);
            }
        }
    }
}

/// Why a bracket group did not parse.
enum NoParse {
    /// It is not a well-formed group; at the top level its bracket is a literal character.
    Malformed,
    /// Nesting beyond [`MAX_NESTING`]: the whole prompt is taken literally.
    TooDeep,
}

/// A1111's lark grammar, read top-down:
///
/// ```text
/// start:       (prompt | /[][():]/+)*
/// prompt:      (emphasized | scheduled | alternate | plain | WHITESPACE)*
/// emphasized:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
/// scheduled:   "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
/// alternate:   "[" prompt ("|" [prompt])+ "]"
/// plain:       /([^\\\[\]():|]|\\.)+/
/// ```
///
/// Inside a group every bracket must belong to a group; only at the top level may `(`, `)`,
/// `[`, `]` and `:` stand alone. A group is tried wherever it can start, and taken if it parses.
struct ScheduleParser<'a> {
    text: &'a str,
}

impl<'a> ScheduleParser<'a> {
    fn new(text: &'a str) -> Self {
        ScheduleParser { text }
    }

    fn byte(&self, i: usize) -> Option<u8> {
        self.text.as_bytes().get(i).copied()
    }

    /// The whole prompt, or `None` where lark would raise (a `|` outside alternation, a
    /// backslash at the end or before a newline) or nesting is too deep.
    fn start(&self) -> Option<Vec<Node<'a>>> {
        let mut nodes = Vec::new();
        let mut text_start = 0;
        let mut i = 0;
        while let Some(b) = self.byte(i) {
            match b {
                b'(' | b'[' => match self.group(i, 1) {
                    Ok((group, end)) => {
                        nodes.push(Node::Text(&self.text[text_start..i]));
                        nodes.extend(group);
                        i = end;
                        text_start = end;
                    }
                    Err(NoParse::Malformed) => i += 1,
                    Err(NoParse::TooDeep) => return None,
                },
                b'|' => return None,
                b'\\' => i = self.escape_end(i)?,
                _ => i += 1,
            }
        }
        nodes.push(Node::Text(&self.text[text_start..]));
        Some(nodes)
    }

    /// The end of the escape at `i` (a backslash and the character after it, which lark's `.`
    /// does not let be a newline).
    fn escape_end(&self, i: usize) -> Option<usize> {
        let next = self.text[i + 1..].chars().next()?;
        (next != '\n').then_some(i + 1 + next.len_utf8())
    }

    /// `prompt`: plain text and groups up to the first `:`, `|`, `]` or `)` outside a group.
    fn prompt(&self, mut i: usize, depth: usize) -> Result<(Vec<Node<'a>>, usize), NoParse> {
        let mut nodes = Vec::new();
        let mut text_start = i;
        while let Some(b) = self.byte(i) {
            match b {
                b':' | b'|' | b']' | b')' => break,
                b'(' | b'[' => {
                    nodes.push(Node::Text(&self.text[text_start..i]));
                    let (group, end) = self.group(i, depth + 1)?;
                    nodes.extend(group);
                    i = end;
                    text_start = end;
                }
                b'\\' => i = self.escape_end(i).ok_or(NoParse::Malformed)?,
                _ => i += 1,
            }
        }
        nodes.push(Node::Text(&self.text[text_start..i]));
        Ok((nodes, i))
    }

    /// The group whose opening bracket is at `i`, and the position after it.
    fn group(&self, i: usize, depth: usize) -> Result<(Vec<Node<'a>>, usize), NoParse> {
        if depth > MAX_NESTING {
            return Err(NoParse::TooDeep);
        }
        let (first, j) = self.prompt(i + 1, depth)?;
        let open = &self.text[i..i + 1];
        let literal = |inner: Vec<Node<'a>>, close_at: usize| {
            let mut nodes = vec![Node::Text(open)];
            nodes.extend(inner);
            nodes.push(Node::Text(&self.text[close_at..close_at + 1]));
            nodes
        };
        match (open, self.byte(j)) {
            ("(", Some(b')')) | ("[", Some(b']')) => Ok((literal(first, j), j + 1)),
            ("(", Some(b':')) => {
                let (second, k) = self.prompt(j + 1, depth)?;
                if self.byte(k) != Some(b')') {
                    return Err(NoParse::Malformed);
                }
                let mut nodes = literal(first, j);
                nodes.extend(second);
                nodes.push(Node::Text(")"));
                Ok((nodes, k + 1))
            }
            ("[", Some(b'|')) => {
                let mut options = vec![first];
                let mut k = j;
                while self.byte(k) == Some(b'|') {
                    let (option, end) = self.prompt(k + 1, depth)?;
                    options.push(option);
                    k = end;
                }
                if self.byte(k) != Some(b']') {
                    return Err(NoParse::Malformed);
                }
                Ok((vec![Node::Alternate(options)], k + 1))
            }
            ("[", Some(b':')) => {
                // `[to:when]`, else `[from:to:when]`.
                if let Some((when, end)) = self.when_and_close(j + 1) {
                    let node = Node::Scheduled {
                        before: Vec::new(),
                        after: first,
                        when,
                    };
                    return Ok((vec![node], end));
                }
                let (second, k) = self.prompt(j + 1, depth)?;
                if self.byte(k) != Some(b':') {
                    return Err(NoParse::Malformed);
                }
                let (when, end) = self.when_and_close(k + 1).ok_or(NoParse::Malformed)?;
                let node = Node::Scheduled {
                    before: first,
                    after: second,
                    when,
                };
                Ok((vec![node], end))
            }
            _ => Err(NoParse::Malformed),
        }
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"` at `i`: the number (lark's `SIGNED_NUMBER`) and
    /// the position after the `]`.
    fn when_and_close(&self, i: usize) -> Option<(&'a str, usize)> {
        static NUMBER: OnceLock<Regex> = OnceLock::new();
        let number = NUMBER.get_or_init(|| {
            Regex::new(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
                .expect("a valid regex")
        });
        let skip_space = |from: usize| {
            self.text[from..]
                .char_indices()
                .find(|&(_, c)| !is_py_space(c))
                .map_or(self.text.len(), |(offset, _)| from + offset)
        };
        let start = skip_space(i);
        let found = number.find(&self.text[start..])?;
        let end = skip_space(start + found.end());
        (self.byte(end) == Some(b']')).then(|| (&self.text[start..start + found.end()], end + 1))
    }
}

/// The weighted fragments of one scheduled text (A1111's `parse_prompt_attention`):
/// `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:w)` multiplies by `w`, nesting multiplies,
/// `\(` `\)` `\[` `\]` `\\` are literal characters, and `BREAK` (uppercase, a word of its own)
/// ends a chunk. Brackets still open at the end close there; stray closing brackets are text.
/// Neighbouring runs with equal weights merge; an empty prompt is one empty fragment.
pub fn parse_attention(text: &str) -> Result<Vec<Fragment>, PromptError> {
    static ATTENTION: OnceLock<Regex> = OnceLock::new();
    static BREAK: OnceLock<Regex> = OnceLock::new();
    let attention = ATTENTION.get_or_init(|| {
        let pattern = format!(
            r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:{PY_SPACE}*([+-]?[.0-9]+){PY_SPACE}*\)|\)|\]|[^\\()\[\]:]+|:"
        );
        Regex::new(&pattern).expect("a valid regex")
    });
    let break_word = BREAK.get_or_init(|| {
        Regex::new(&format!(r"{PY_SPACE}*\bBREAK\b{PY_SPACE}*")).expect("a valid regex")
    });

    // (text, weight) as A1111 builds them, a `BREAK` being ("BREAK", -1).
    let mut runs: Vec<(String, f64)> = Vec::new();
    let mut round_brackets = Vec::new();
    let mut square_brackets = Vec::new();
    let multiply_from = |runs: &mut Vec<(String, f64)>, start: usize, multiplier: f64| {
        for run in &mut runs[start..] {
            run.1 *= multiplier;
        }
    };
    for caps in attention.captures_iter(text) {
        let token = caps.get(0).map_or("", |m| m.as_str());
        if let Some(literal) = token.strip_prefix('\\') {
            runs.push((literal.to_string(), 1.0));
        } else if token == "(" {
            round_brackets.push(runs.len());
        } else if token == "[" {
            square_brackets.push(runs.len());
        } else if let (Some(weight), Some(start)) = (caps.get(1), round_brackets.last().copied()) {
            let weight: f64 = weight
                .as_str()
                .parse()
                .map_err(|_| PromptError::BadWeight {
                    weight: weight.as_str().to_string(),
                })?;
            round_brackets.pop();
            multiply_from(&mut runs, start, weight);
        } else if let (")", Some(start)) = (token, round_brackets.last().copied()) {
            round_brackets.pop();
            multiply_from(&mut runs, start, ROUND_BRACKET_MULTIPLIER);
        } else if let ("]", Some(start)) = (token, square_brackets.last().copied()) {
            square_brackets.pop();
            multiply_from(&mut runs, start, SQUARE_BRACKET_MULTIPLIER);
        } else {
            for (i, part) in break_word.split(token).enumerate() {
                if i > 0 {
                    runs.push(("BREAK".to_string(), -1.0));
                }
                runs.push((part.to_string(), 1.0));
            }
        }
    }
    for &start in &round_brackets {
        multiply_from(&mut runs, start, ROUND_BRACKET_MULTIPLIER);
    }
    for &start in &square_brackets {
        multiply_from(&mut runs, start, SQUARE_BRACKET_MULTIPLIER);
    }
    if runs.is_empty() {
        runs.push((String::new(), 1.0));
    }

    let mut merged: Vec<(String, f64)> = Vec::with_capacity(runs.len());
    for (text, weight) in runs {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }

    merged
        .into_iter()
        .map(|(text, weight)| {
            if !weight.is_finite() {
                return Err(PromptError::WeightNotFinite { text, weight });
            }
            // A1111's tokenizer only breaks on the exact marker; a BREAK inside brackets has
            // had its -1 multiplied and is read as the word "BREAK".
            Ok(if text == "BREAK" && weight == -1.0 {
                Fragment::Break
            } else {
                Fragment::Text { text, weight }
            })
        })
        .collect()
}
