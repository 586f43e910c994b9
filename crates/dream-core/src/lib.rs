//! Dream's pure building blocks: everything about Stable Diffusion that needs no tensors.
//! Prompt tokenizer, noise schedules, a torch-compatible RNG, metadata formats, checkpoint
//! key maps and a pickle guard. Nothing here depends on candle.

pub mod keymap;
pub mod metadata;
pub mod pickle_guard;
pub mod prompt;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod tokenizer;

#[cfg(test)]
mod test_fixtures;
