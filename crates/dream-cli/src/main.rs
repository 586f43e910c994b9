//! `dream`: generate images from the command line, with InvokeAI 2.x's switches.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use dream_core::metadata::{read_generation_info, A1111Parameters, GenerationInfo};
use dream_core::sampler::{SamplerChoice, ScheduleKind, INVOKEAI_KARRAS_MAX};
use dream_pipeline::{InitImage, LoadOptions, StableDiffusion, Txt2Img};
use indicatif::{ProgressBar, ProgressStyle};

/// Stable Diffusion image generation, compatible with InvokeAI's `invoke>` switches.
#[derive(Parser, Debug)]
#[command(name = "dream", disable_version_flag = true)]
struct Args {
    /// The prompt.
    prompt: String,
    /// A diffusers model folder or a single .safetensors/.ckpt checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// A VAE file (or diffusers vae/ folder) to use instead of the model's own.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// For a single-file checkpoint: a diffusers folder whose configs describe it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sampling steps.
    #[arg(short = 's', long, default_value_t = 50)]
    steps: usize,
    /// Seed of the first image (a random one if omitted); image k of a batch uses seed+k.
    #[arg(short = 'S', long)]
    seed: Option<u32>,
    /// Image width (default 512, or the init image's width).
    #[arg(short = 'W', long)]
    width: Option<usize>,
    /// Image height (default 512, or the init image's height).
    #[arg(short = 'H', long)]
    height: Option<usize>,
    /// img2img: a PNG to start from (its alpha channel is ignored).
    #[arg(short = 'I', long = "init_img")]
    init_img: Option<PathBuf>,
    /// img2img: how much of the init image is repainted, 0 to 1.
    #[arg(short = 'f', long, default_value_t = 0.75)]
    strength: f64,
    /// Classifier-free guidance scale.
    #[arg(short = 'C', long = "cfg_scale", default_value_t = 7.5)]
    cfg_scale: f64,
    /// Sampler, by its InvokeAI (k_lms, k_euler_a, k_dpmpp_2, ...), A1111 ("DPM++ 2M Karras",
    /// "Euler a", ...) or ComfyUI (dpmpp_2m_sde, ...) name.
    #[arg(short = 'A', long, visible_short_alias = 'm', default_value = "k_lms")]
    sampler: String,
    /// InvokeAI's rule: k_* samplers use Karras sigmas below this many steps.
    #[arg(long = "karras_max", default_value_t = INVOKEAI_KARRAS_MAX)]
    karras_max: usize,
    /// A1111's "Clip skip": 2 conditions on the text encoder's next-to-last layer.
    #[arg(long = "clip_skip", default_value_t = 1)]
    clip_skip: usize,
    /// Number of images to make.
    #[arg(short = 'n', long, default_value_t = 1)]
    iterations: u32,
    /// Output folder.
    #[arg(short = 'o', long, default_value = "outputs/img-samples")]
    outdir: PathBuf,
}

fn main() -> ExitCode {
    keep_freed_memory();
    // `dream info FILE…` prints what made each image; anything else is a prompt to render.
    let mut argv = std::env::args().skip(1);
    let result = if argv.next().as_deref() == Some("info") {
        info(&argv.collect::<Vec<_>>())
    } else {
        run(Args::parse())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc hands every large block (above a threshold that grows to 32 MiB) back to the
/// kernel on `free` and maps a fresh one on the next `malloc`, so each of the networks' large
/// activations, allocated again at every layer and step, costs a page fault per 4 KiB (SD 1.5's
/// 64×64 feed-forward projection: 104 instead of 72 ms). Keeping freed blocks in the heap makes
/// them reusable; the peak is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.outdir)
        .with_context(|| format!("cannot create {}", args.outdir.display()))?;
    let options = LoadOptions {
        vae: args.vae.clone(),
        config_dir: args.config.clone(),
        ..LoadOptions::default()
    };
    let choice: SamplerChoice = args.sampler.parse()?;
    let model = StableDiffusion::load_with(&args.model, &options)?;
    let init = match &args.init_img {
        Some(path) => Some(InitImage::open(path, args.strength)?),
        None => None,
    };
    // InvokeAI's default size is the init image's (which must be a multiple of 8 for now).
    let init_size = init.as_ref().map(|i| (i.image.width, i.image.height));
    let width = args.width.or(init_size.map(|s| s.0)).unwrap_or(512);
    let height = args.height.or(init_size.map(|s| s.1)).unwrap_or(512);
    let first_seed = args.seed.unwrap_or_else(random_seed);
    for k in 0..args.iterations {
        let request = Txt2Img {
            steps: args.steps,
            cfg_scale: args.cfg_scale,
            width,
            height,
            sampler: choice.sampler,
            schedule: choice.schedule_for(args.steps, args.karras_max),
            clip_skip: args.clip_skip,
            init: init.clone(),
            ..Txt2Img::new(&args.prompt, first_seed.wrapping_add(k))
        };
        let steps_run = match &request.init {
            Some(init) => init.steps(request.steps)?.steps_run(),
            None => request.steps,
        };
        let bar = progress_bar(steps_run);
        let generated =
            model.generate(&request, &mut |step| bar.set_position(step.step as u64 + 1))?;
        bar.finish_and_clear();
        let path = dream_pipeline::image::next_output_path(&args.outdir, request.seed)?;
        generated.save(&path, model.name())?;
        println!(
            "{}: {}",
            path.display(),
            invoke_command(&request, &args.sampler, args.init_img.as_deref())
        );
    }
    Ok(())
}

/// Prints the generation parameters stored in each image, in A1111's layout, whichever tool
/// (A1111, InvokeAI, ComfyUI, Dream) wrote them.
fn info(paths: &[String]) -> Result<()> {
    anyhow::ensure!(
        !paths.is_empty(),
        "usage: dream info IMAGE.png [IMAGE.png ...]"
    );
    for path in paths {
        let chunks = dream_pipeline::image::read_png_text(std::path::Path::new(path))?;
        match read_generation_info(&chunks) {
            Some(info) => {
                let format = info.format;
                let text = A1111Parameters::from_info(&in_a1111_terms(info)).to_text();
                println!("{path} ({format:?}):\n{text}\n");
            }
            None => println!("{path}: no generation parameters found\n"),
        }
    }
    Ok(())
}

/// Sampler and schedule names as A1111 labels them, whichever tool wrote them.
fn in_a1111_terms(mut info: GenerationInfo) -> GenerationInfo {
    if let Some(choice) = info
        .sampler
        .as_deref()
        .and_then(|s| s.parse::<SamplerChoice>().ok())
    {
        info.sampler = Some(choice.sampler.a1111_name().to_string());
        info.schedule = info
            .schedule
            .or(choice.schedule.map(|s| s.a1111_name().to_string()));
    }
    if let Some(schedule) = info
        .schedule
        .as_deref()
        .and_then(|s| s.parse::<ScheduleKind>().ok())
    {
        info.schedule = Some(schedule.a1111_name().to_string());
    }
    info
}

/// The InvokeAI command line that makes the image again.
fn invoke_command(r: &Txt2Img, sampler: &str, init_img: Option<&std::path::Path>) -> String {
    let sampler = if sampler.contains(' ') {
        format!("{sampler:?}")
    } else {
        sampler.to_string()
    };
    let command = format!(
        "{:?} -s{} -W{} -H{} -C{} -A{} -S{}",
        r.prompt, r.steps, r.width, r.height, r.cfg_scale, sampler, r.seed
    );
    match (&r.init, init_img) {
        (Some(init), Some(path)) => format!(
            "{command} -I{:?} -f{}",
            path.display().to_string(),
            init.strength
        ),
        _ => command,
    }
}

fn progress_bar(steps: usize) -> ProgressBar {
    // indicatif draws nothing when stderr is not a terminal.
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]",
        )
        .expect("the template is valid"),
    );
    bar
}

/// A seed from the OS's randomness (std seeds every `RandomState` from it).
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}
