//! dream-core

pub mod keymap;
pub mod pickle_guard;
pub mod rng;
pub mod schedule;
pub mod tokenizer;
