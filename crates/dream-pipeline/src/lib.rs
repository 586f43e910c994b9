//! dream-pipeline
