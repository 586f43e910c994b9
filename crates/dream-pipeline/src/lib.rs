//! Dream's pipelines: from a model on disk and a prompt to an image.
//!
//! ```no_run
//! let sd = dream_pipeline::StableDiffusion::load("models/stable-diffusion-v1-5")?;
//! let image = sd.txt2img("a unicorn in manhattan", 42)?;
//! image.save("unicorn.png", sd.name())?;
//! # Ok::<(), dream_pipeline::DreamError>(())
//! ```

pub mod conditioning;
pub mod grid;
pub mod guidance;
pub mod hires;
pub mod image;
pub mod img2img;
pub mod inpaint;
pub mod interrupt;
pub mod mask;
pub mod model;
mod offload;
pub mod outpaint;
pub mod perlin;
pub mod precision;
pub mod preview;
pub mod registry;
pub mod resize;
pub mod sampling;
mod sdxl;
pub mod text;
pub mod tiling;
pub mod txt2img;
pub mod variation;

use std::path::PathBuf;

pub use conditioning::Emphasis;
pub use dream_core::prompt::Syntax;
pub use dream_core::sampler::{Sampler, ScheduleKind};
pub use img2img::InitImage;
pub use inpaint::{Inpaint, MaskedContent};
pub use mask::Mask;
pub use model::{LoadOptions, StableDiffusion};
pub use outpaint::{Outcrop, Seam};
pub use precision::Precision;
pub use sampling::StepInfo;
pub use sdxl::RefinerSwitch;
pub use tiling::VaeTiling;
pub use txt2img::{Generated, ModelStamp, Seamless, Txt2Img};
pub use variation::Variation;

#[derive(Debug, thiserror::Error)]
pub enum DreamError {
    #[error(transparent)]
    Weights(#[from] dream_models::weights::WeightsError),
    #[error("{}: {message}", path.display())]
    InvalidModelFile { path: PathBuf, message: String },
    #[error("{}: the weights do not fit the model: {source}", path.display())]
    BadModel {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0} is not supported yet")]
    NotSupported(String),
    #[error(transparent)]
    Schedule(#[from] dream_core::schedule::ScheduleError),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl StableDiffusion {
    /// One image with InvokeAI's defaults at the model's own size (SD 512², SDXL 1024²); see
    /// `generate` for every setting.
    pub fn txt2img(&self, prompt: &str, seed: u32) -> Result<Generated, DreamError> {
        let size = self.native_size();
        let request = Txt2Img {
            width: size,
            height: size,
            ..Txt2Img::new(prompt, seed)
        };
        self.generate(&request, &mut |_| {})
    }
}
