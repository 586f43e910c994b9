//! dream-core

pub mod rng;
pub mod schedule;
