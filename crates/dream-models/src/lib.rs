//! dream-models
