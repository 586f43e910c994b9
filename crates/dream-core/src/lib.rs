//! dream-core

pub mod rng;
pub mod schedule;
pub mod tokenizer;
