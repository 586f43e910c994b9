//! Times the UNet forward (the CFG batch) and the VAE decode of a diffusers model folder, in wall
//! and process CPU time, for comparison with `../shared/parity/bench_unet.py` measured in the
//! same session. With `--check`, compares the outputs with diffusers' on the inputs stored in a
//! safetensors file (`sample`, `context`, `out` for the UNet at timestep 500; `latents`, `image`
//! for the VAE).
//!
//! cargo run --release -p dream-models --example bench_sd -- DIR [--size 512] [--batch 2]
//!     [--iters 3] [--only unet|vae] [--check REF.safetensors]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use dream_models::unet::UNet2DConditionModel;
use dream_models::vae::AutoencoderKL;
use dream_models::weights::load_diffusers_folder;

type Error = Box<dyn std::error::Error>;

struct Args {
    dir: String,
    size: usize,
    batch: usize,
    iters: usize,
    only: Option<String>,
    check: Option<String>,
}

fn parse_args() -> Result<Args, Error> {
    let usage =
        "usage: bench_sd DIR [--size N] [--batch N] [--iters N] [--only unet|vae] [--check FILE]";
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        dir: args.next().ok_or(usage)?,
        size: 512,
        batch: 2,
        iters: 3,
        only: None,
        check: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--size" => parsed.size = value.parse()?,
            "--batch" => parsed.batch = value.parse()?,
            "--iters" => parsed.iters = value.parse()?,
            "--only" => parsed.only = Some(value),
            "--check" => parsed.check = Some(value),
            _ => return Err(usage.into()),
        }
    }
    Ok(parsed)
}

/// Runs `f` `iters` times, printing each run's wall and CPU time and the median wall time.
fn time(
    name: &str,
    iters: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> Result<(), Error> {
    let mut times = Vec::new();
    for i in 0..iters {
        let (start, cpu_start) = (Instant::now(), common::cpu_seconds());
        f()?.sum_all()?.to_scalar::<f32>()?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = common::cpu_seconds() - cpu_start;
        println!("{name} run {i}: {seconds:.2} s ({cpu:.2} s CPU)");
        times.push(seconds);
    }
    times.sort_by(f64::total_cmp);
    if let (Some(min), Some(median)) = (times.first(), times.get(times.len() / 2)) {
        println!("{name}: min {min:.2} s, median {median:.2} s");
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn main() -> Result<(), Error> {
    common::keep_freed_memory();
    let args = parse_args()?;
    let device = Device::Cpu;
    let reference: Option<HashMap<String, Tensor>> = args
        .check
        .as_ref()
        .map(|path| candle_core::safetensors::load(path, &device))
        .transpose()?;
    let input = |name: &str, shape: &[usize]| -> Result<Tensor, Error> {
        match &reference {
            Some(tensors) => Ok(tensors
                .get(name)
                .ok_or(format!("reference has no {name:?}"))?
                .clone()),
            None => Ok(Tensor::randn(0f32, 1.0, shape, &device)?),
        }
    };
    let components = load_diffusers_folder(Path::new(&args.dir))?;
    let latent_size = args.size / 8;
    let wants = |what: &str| args.only.as_deref().is_none_or(|only| only == what);

    if wants("unet") {
        let config = &components.unet.config;
        let unet = UNet2DConditionModel::new(
            components.unet.weights.var_builder(DType::F32, &device),
            config,
        )?;
        let sample = input(
            "sample",
            &[args.batch, config.in_channels, latent_size, latent_size],
        )?;
        let context = input("context", &[args.batch, 77, config.cross_attention_dim])?;
        let name = format!("UNet forward {:?}", sample.dims());
        time(&name, args.iters, || unet.forward(&sample, 500.0, &context))?;
        if let Some(tensors) = &reference {
            let expected = tensors.get("out").ok_or("reference has no \"out\"")?;
            let got = unet.forward(&sample, 500.0, &context)?;
            println!(
                "UNet max abs diff to the reference: {:.2e}",
                max_abs_diff(&got, expected)?
            );
        }
    }

    if wants("vae") {
        let config = &components.vae.config;
        let vae = AutoencoderKL::new(
            components.vae.weights.var_builder(DType::F32, &device),
            config,
        )?;
        let latents = input(
            "latents",
            &[1, config.latent_channels, latent_size, latent_size],
        )?;
        let name = format!("VAE decode {:?}", latents.dims());
        time(&name, args.iters, || vae.decode(&latents))?;
        if let Some(tensors) = &reference {
            let expected = tensors.get("image").ok_or("reference has no \"image\"")?;
            let got = vae.decode(&latents)?;
            println!(
                "VAE max abs diff to the reference: {:.2e}",
                max_abs_diff(&got, expected)?
            );
        }
    }
    Ok(())
}
