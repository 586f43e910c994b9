//! Stable Diffusion networks on candle, and the loading of their weights.
//!
//! The networks take a `candle_nn::VarBuilder` whose names are diffusers' names; `weights`
//! maps other checkpoint layouts onto those names, so the network code never sees files.

pub mod attention;
pub mod bench;
pub mod clip;
pub mod config;
pub mod detect;
pub mod embeddings;
pub mod kernels;
pub mod layers;
pub mod resnet;
pub mod taesd;
pub mod unet;
pub mod vae;
pub mod weights;
