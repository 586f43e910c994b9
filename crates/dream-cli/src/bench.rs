//! `dream bench`: times Stable Diffusion 1.5's or SDXL's networks on random weights (no model
//! files).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use dream_models::bench::{self, BenchModel, BenchOptions, Timing};
use dream_pipeline::model::{default_device, named_device};
use dream_pipeline::Precision;

/// Times SD 1.5's or SDXL's text encoders, UNet (batch 1 and 2) and VAE decoder and encoder,
/// built with seeded random weights, and prints median times and peak memory.
#[derive(Parser, Debug)]
#[command(name = "dream bench")]
struct BenchArgs {
    /// The architecture: Stable Diffusion 1.5 or SDXL base 1.0.
    #[arg(long, value_enum, default_value_t = Model::Sd15)]
    model: Model,
    /// Image sizes in pixels, comma-separated (e.g. 256,512,768); the model's native size (512
    /// for SD 1.5, 1024 for SDXL) when absent.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Timed runs per measurement, after one warm-up run.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the timings and the networks' configs as JSON to this file (read by
    /// tools/bench/compare.py).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the networks run: the CPU, or the first CUDA GPU (a build with `--features
    /// cuda`). By default the GPU when Dream was built for one and one is present, else the CPU.
    #[arg(long, value_parser = ["cpu", "cuda"])]
    device: Option<String>,
    /// The networks' precision, as `dream --precision`: auto (float16 on a GPU, float32 on the
    /// CPU), float32, float16 or autocast (as float16).
    #[arg(long, value_parser = str::parse::<Precision>, default_value = "auto")]
    precision: Precision,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Model {
    Sd15,
    Sdxl,
}

impl Model {
    fn bench_model(self) -> BenchModel {
        match self {
            Model::Sd15 => BenchModel::Sd15,
            Model::Sdxl => BenchModel::Sdxl,
        }
    }
}

pub fn bench(args: &[String]) -> Result<()> {
    let args = BenchArgs::try_parse_from(
        std::iter::once("dream bench".to_owned()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|error| error.exit());
    if let Some(size) = args.sizes.iter().find(|s| **s == 0 || **s % 8 != 0) {
        anyhow::bail!("--sizes: {size} is not a positive multiple of 8");
    }
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    let device = match &args.device {
        Some(name) => named_device(name).with_context(|| format!("--device {name}"))?,
        None => default_device(),
    };
    let dtype = args.precision.dtype(&device);
    let model = args.model.bench_model();
    let options = BenchOptions {
        model,
        sizes: if args.sizes.is_empty() {
            vec![model.native_size()]
        } else {
            args.sizes
        },
        iters: args.iters,
        seed: args.seed,
        device,
        dtype,
    };
    println!(
        "{} on random weights, {} on {}, {} threads, {} timed runs after a warm-up",
        model.title(),
        dtype.as_str(),
        device_name(&options),
        rayon_threads(),
        options.iters
    );
    println!(
        "{:<16}{:<20}{:>10}{:>10}{:>15}",
        "component", "input", "median s", "min s", "peak RSS GiB"
    );
    let timings = bench::run(&options, &mut |t| {
        println!(
            "{:<16}{:<20}{:>10.3}{:>10.3}{:>15}",
            t.component,
            format!("{:?}", t.input),
            t.median(),
            t.min(),
            t.peak_rss.map_or("-".into(), |b| format!("{:.2}", gib(b)))
        );
    })?;
    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&options, &timings))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `Cpu`, `Cuda { gpu_id: 0 }`, …
fn device_name(options: &BenchOptions) -> String {
    format!("{:?}", options.device.location())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
        std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn to_json(options: &BenchOptions, timings: &[Timing]) -> String {
    let model = options.model;
    let rows: Vec<String> = timings
        .iter()
        .map(|t| {
            let mut row = String::new();
            let _ = write!(
                row,
                r#"{{"component": "{}", "input": {:?}, "median_s": {}, "min_s": {}, "runs": {:?}}}"#,
                t.component,
                t.input,
                t.median(),
                t.min(),
                t.runs
            );
            row
        })
        .collect();
    let peak = bench::peak_rss().map_or("null".into(), |b| b.to_string());
    let configs = model.configs();
    let networks: Vec<String> = configs
        .text_encoders
        .iter()
        .map(|encoder| (encoder.name, encoder.config))
        .chain([("unet", configs.unet), ("vae", configs.vae)])
        .map(|(name, config)| format!("\"{name}\": {config}"))
        .collect();
    format!(
        "{{\"model\": \"{}\", \"device\": \"{}\", \"dtype\": \"{}\", \"timings\": [\n  {}\n], \"peak_rss_bytes\": {peak},\n\"configs\": {{{}}}}}\n",
        model.name(),
        device_name(options),
        options.dtype.as_str(),
        rows.join(",\n  "),
        networks.join(",\n")
    )
}
