//! `-t`: the prompts as the text encoder sees them. For each text of the plan (each `AND` part,
//! each prompt-editing stretch, each blend or `.and()` part) its 75-token chunks, with the
//! tokens of each run of one weight written together as `(tokens:weight)`, and textual-inversion
//! embeddings as `<name>`. Both syntaxes keep every token of a long prompt (in more chunks), so
//! nothing is cut from the prompt itself; what was taken out of it (extra-network tags, and for
//! InvokeAI the `[negative]` words moved to the negative prompt) is listed.

use std::fmt::Write;

use super::chunking::{Chunk, Chunker};
use super::{BlendPart, ConditioningPlan, Fragment, PromptText, SubPrompt, Syntax};

/// The tokenization of a plan's prompts, one line per chunk.
pub fn tokenization_log(plan: &ConditioningPlan, chunker: &Chunker) -> String {
    let mut log = String::new();
    let parts = plan.positive.len();
    for (index, part) in plan.positive.iter().enumerate() {
        let title = if parts > 1 {
            format!(
                "prompt, AND part {} (weight {})",
                index + 1,
                short(part.weight)
            )
        } else {
            "prompt".to_string()
        };
        sub_prompt(&mut log, &title, part, plan.syntax, chunker);
    }
    sub_prompt(
        &mut log,
        "negative prompt",
        &plan.negative,
        plan.syntax,
        chunker,
    );
    for (title, tags) in [
        ("extra networks", &plan.networks),
        (
            "extra networks of the negative prompt",
            &plan.negative_networks,
        ),
    ] {
        if !tags.is_empty() {
            let tags: Vec<String> = tags
                .iter()
                .map(|tag| format!("<{}:{}>", tag.kind, tag.args.join(":")))
                .collect();
            let _ = writeln!(log, "{title}: {}", tags.join(" "));
        }
    }
    log
}

/// A weight to four decimals, without trailing zeros: `1.21`, `0.9091`.
fn short(weight: f64) -> String {
    let fixed = format!("{weight:.4}");
    fixed
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

fn sub_prompt(log: &mut String, title: &str, part: &SubPrompt, syntax: Syntax, chunker: &Chunker) {
    let mut first_step = 0;
    for (row, entry) in part.schedule.iter().enumerate() {
        // Alternation repeats texts; each distinct text is shown once, at its first stretch.
        let first_use = part.schedule[..row]
            .iter()
            .all(|earlier| earlier.text != entry.text);
        if first_use {
            let steps = if part.is_constant() {
                String::new()
            } else if row + 1 == part.schedule.len() {
                format!(", from step {first_step}")
            } else {
                format!(", steps {first_step} to {}", entry.until_step)
            };
            let _ = writeln!(log, "{title}{steps}:");
            text(log, &part.texts[entry.text], syntax, chunker);
        }
        first_step = entry.until_step + 1;
    }
}

fn text(log: &mut String, text: &PromptText, syntax: Syntax, chunker: &Chunker) {
    let chunks = |fragments: &[Fragment]| match syntax {
        Syntax::A1111 => chunker.chunks(fragments),
        Syntax::InvokeAi => chunker.compel_chunks(fragments).chunks,
    };
    match text {
        PromptText::Fragments(fragments) => write_chunks(log, "  ", &chunks(fragments), chunker),
        PromptText::Blend { parts, .. } => weighted_parts(log, "blend", parts, chunks, chunker),
        PromptText::Conjunction(parts) => weighted_parts(log, ".and()", parts, chunks, chunker),
    }
}

fn weighted_parts(
    log: &mut String,
    kind: &str,
    parts: &[BlendPart],
    chunks: impl Fn(&[Fragment]) -> Vec<Chunk>,
    chunker: &Chunker,
) {
    for (index, part) in parts.iter().enumerate() {
        let _ = writeln!(
            log,
            "  {kind} part {} (weight {}):",
            index + 1,
            short(part.weight)
        );
        write_chunks(log, "    ", &chunks(&part.fragments), chunker);
    }
}

fn write_chunks(log: &mut String, indent: &str, chunks: &[Chunk], chunker: &Chunker) {
    for (index, chunk) in chunks.iter().enumerate() {
        let tokens = chunker.prompt_tokens(chunk);
        let mut runs: Vec<(String, f64)> = Vec::new();
        for (id, weight) in tokens {
            let token = chunker.token_text(id);
            match runs.last_mut() {
                Some((run, last)) if *last == weight => run.push_str(&token),
                _ => runs.push((token, weight)),
            }
        }
        let shown: Vec<String> = runs
            .iter()
            .map(|(run, weight)| {
                let run = run.trim_end();
                if *weight == 1.0 {
                    run.to_string()
                } else {
                    format!("({run}:{})", short(*weight))
                }
            })
            .collect();
        let count = chunker.prompt_tokens(chunk).count();
        let _ = writeln!(
            log,
            "{indent}chunk {} ({count} tokens): {}",
            index + 1,
            shown.join(" ")
        );
    }
}
