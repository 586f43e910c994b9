//! What Dream's test suites share: where the fixtures are, how tensors are compared, and the
//! tiny model with its usual request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dream_pipeline::{Sampler, StableDiffusion, Txt2Img};

/// A path inside the workspace's `fixtures/` folder.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// The tiny random SD 1.x model of `fixtures/tiny`.
pub fn tiny_model() -> StableDiffusion {
    StableDiffusion::load(fixture("tiny")).unwrap_or_else(|e| panic!("fixture tiny: {e}"))
}

/// A render the tiny model does in a moment: `steps` Euler steps at `size` (width, height).
pub fn euler_request(prompt: &str, seed: u32, steps: usize, size: (usize, usize)) -> Txt2Img {
    Txt2Img {
        steps,
        width: size.0,
        height: size.1,
        sampler: Sampler::Euler,
        ..Txt2Img::new(prompt, seed)
    }
}

/// Every tensor of a safetensors file in `fixtures/`, on the CPU.
pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu)
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The largest absolute elementwise difference, compared in f32; the shapes must agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
