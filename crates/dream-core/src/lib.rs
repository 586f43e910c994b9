//! dream-core
