//! Times one UNet forward (the CFG batch) on a diffusers model folder, for comparison with
//! `../shared/parity/bench_unet.py` measured in the same session.
//!
//! cargo run --release -p dream-models --example bench_unet -- DIR [SIZE] [BATCH] [ITERS]

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use dream_models::unet::UNet2DConditionModel;
use dream_models::weights::load_diffusers_folder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::keep_freed_memory();
    let dir = args
        .first()
        .ok_or("usage: bench_unet DIR [SIZE] [BATCH] [ITERS]")?;
    let size: usize = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let batch: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let iters: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;

    let device = Device::Cpu;
    let components = load_diffusers_folder(std::path::Path::new(dir))?;
    let unet_config = &components.unet.config;
    let unet = UNet2DConditionModel::new(
        components.unet.weights.var_builder(DType::F32, &device),
        unet_config,
    )?;
    let latent = Tensor::randn(
        0f32,
        1.0,
        (batch, unet_config.in_channels, size / 8, size / 8),
        &device,
    )?;
    let context = Tensor::randn(
        0f32,
        1.0,
        (batch, 77, unet_config.cross_attention_dim),
        &device,
    )?;

    let mut times = Vec::new();
    for i in 0..iters {
        let (start, cpu_start) = (Instant::now(), common::cpu_seconds());
        let out = unet.forward(&latent, 500.0, &context)?;
        out.sum_all()?.to_scalar::<f32>()?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "run {i}: {seconds:.2} s ({:.2} s CPU)",
            common::cpu_seconds() - cpu_start
        );
        times.push(seconds);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "UNet forward [{batch},{},{},{}] ctx [{batch},77,{}]: min {:.2} s, median {:.2} s",
        unet_config.in_channels,
        size / 8,
        size / 8,
        unet_config.cross_attention_dim,
        times[0],
        times[times.len() / 2]
    );
    Ok(())
}
