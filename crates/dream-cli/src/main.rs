//! `dream`: generate images from the command line, with InvokeAI 2.x's switches.

mod bench;
mod fetch;
mod hashes;
mod hub;
mod info;
mod models;
mod output;
mod render;
mod repl;
mod switches;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use dream_pipeline::registry::ModelRegistry;
use dream_pipeline::{DreamError, LoadOptions, Precision, VaeTiling};

use models::Models;
use repl::Session;
use switches::Switches;

/// InvokeAI's registry file, relative to the folder dream runs in.
const DEFAULT_REGISTRY: &str = "configs/models.yaml";

/// Stable Diffusion image generation, compatible with InvokeAI's `invoke>` switches.
#[derive(Parser, Debug)]
#[command(
    name = "dream",
    disable_version_flag = true,
    allow_negative_numbers = true
)]
struct Cli {
    /// The prompt. Without one, prompts are read at the `invoke>` prompt (or from
    /// --from_file; "-" reads them from standard input).
    prompt: Option<String>,
    /// A model of the registry by name, or a diffusers folder or a single .safetensors/.ckpt
    /// checkpoint [default: the registry's default model].
    #[arg(long)]
    model: Option<String>,
    /// A VAE file (or diffusers vae/ folder) to use instead of the model's own.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// The model registry, InvokeAI's models.yaml [default: configs/models.yaml]; or, given a
    /// folder, the diffusers folder whose configs describe a single-file checkpoint.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The networks' precision: auto (float16 on a GPU, float32 on the CPU), float32, float16
    /// or autocast (as float16). Latents and noise are float32 in every precision, and a
    /// float16 VAE that overflows decodes again in float32 [default: auto].
    #[arg(long, value_parser = str::parse::<Precision>)]
    precision: Option<Precision>,
    /// On a GPU, keep the weights in host memory and move each network (text encoder, UNet,
    /// VAE) to the GPU only for its stage of a generation: slower, for GPUs short of memory.
    #[arg(long = "free_gpu_mem")]
    free_gpu_mem: bool,
    /// How many models to keep loaded for fast switching [default: 2].
    #[arg(long = "max_loaded_models")]
    max_loaded_models: Option<usize>,
    /// Read prompts from this file ("-": standard input) instead of the command line.
    #[arg(long = "from_file")]
    from_file: Option<PathBuf>,
    /// Serve the web interface.
    #[arg(long)]
    web: bool,
    /// Web server: the address to listen on.
    #[arg(long)]
    host: Option<String>,
    /// Web server: the port to listen on.
    #[arg(long)]
    port: Option<u16>,
    /// Decode (and encode) every image larger than 512×512 in overlapping 512-pixel tiles, as
    /// diffusers' enable_vae_tiling(); without it only images over 1024 pixels are tiled.
    #[arg(long = "vae_tiling")]
    vae_tiling: bool,
    /// Decode with TAESD (a taesd_decoder.safetensors, or a diffusers AutoencoderTiny folder)
    /// instead of the VAE: many times faster, lower quality; for drafts.
    #[arg(long = "fast_decode", value_name = "TAESD")]
    fast_decode: Option<PathBuf>,
    #[command(flatten)]
    switches: Switches,
}

impl Cli {
    /// Startup switches whose feature is not built yet.
    fn refuse_unsupported(&self) -> Result<()> {
        let asked = [
            ("--web", self.web),
            ("--host", self.host.is_some()),
            ("--port", self.port.is_some()),
        ];
        match asked.iter().find(|(_, asked)| *asked) {
            Some((switch, _)) => Err(DreamError::NotSupported(switch.to_string()).into()),
            None => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    stop_on_ctrl_c();
    // `dream info FILE…` prints what made each image, `dream bench` times the networks,
    // `dream preload hf:ORG/REPO…` fetches models; anything else is a prompt to render.
    let mut argv = std::env::args().skip(1);
    let result = match argv.next().as_deref() {
        Some("info") => info::info(&argv.collect::<Vec<_>>()),
        Some("bench") => bench::bench(&argv.collect::<Vec<_>>()),
        Some("preload") => hub::preload(&argv.collect::<Vec<_>>()),
        _ => {
            let argv = switches::normalize_tokens(std::env::args());
            Cli::try_parse_from(argv)
                .map_err(|error| error.exit())
                .and_then(run)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C stops the image being made (the images before it are kept) and returns to the
/// `invoke>` prompt; a second Ctrl-C before the sampler has stopped ends dream.
fn stop_on_ctrl_c() {
    extern "C" fn on_sigint(_: libc::c_int) {
        if dream_pipeline::interrupt::is_requested() {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
        dream_pipeline::interrupt::request();
    }
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic flag and calls _exit.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
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

fn run(cli: Cli) -> Result<()> {
    cli.refuse_unsupported()?;
    let mut session = Session::new(cli.switches.clone(), models(&cli)?);
    let input = match (&cli.prompt, &cli.from_file) {
        (Some(prompt), _) if prompt != "-" => {
            return session.render(prompt, &cli.switches);
        }
        (Some(_), _) => None,
        (None, Some(file)) if file != Path::new("-") => Some(file),
        (None, _) => None,
    };
    if session.models.current().is_none() {
        eprintln!("warning: {}", models::NO_MODEL);
    }
    let all_ok = match input {
        Some(file) => {
            let file = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            session.run_lines(std::io::BufReader::new(file))?
        }
        None if cli.prompt.is_none()
            && cli.from_file.is_none()
            && std::io::stdin().is_terminal() =>
        {
            session.run_terminal(history_file())?;
            true
        }
        None => session.run_lines(std::io::stdin().lock())?,
    };
    anyhow::ensure!(all_ok, "some commands failed");
    Ok(())
}

/// The registry, the `--vae`/`--config DIR` overrides and the model to start with.
fn models(cli: &Cli) -> Result<Models> {
    let is_registry = |p: &&PathBuf| p.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let registry_file = cli
        .config
        .as_ref()
        .filter(is_registry)
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY));
    let defaults = LoadOptions::default();
    if cli.free_gpu_mem && defaults.device.is_cpu() {
        eprintln!("note: --free_gpu_mem has no effect without a GPU");
    }
    let overrides = LoadOptions {
        precision: cli.precision.unwrap_or_default(),
        free_gpu_mem: cli.free_gpu_mem && !defaults.device.is_cpu(),
        vae: cli.vae.clone(),
        config_dir: cli.config.clone().filter(|p| !is_registry(&p)),
        vae_tiling: if cli.vae_tiling {
            Some(VaeTiling::always())
        } else {
            defaults.vae_tiling
        },
        taesd: cli.fast_decode.clone(),
        ..defaults
    };
    Models::new(
        ModelRegistry::open(&registry_file)?,
        overrides,
        cli.model.as_deref(),
        cli.max_loaded_models.unwrap_or(models::DEFAULT_MAX_LOADED),
    )
}

/// Where the `invoke>` history is kept between sessions.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".dream_history"))
}
