//! From a prompt and its switches to images on disk, and the line that makes each again.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use dream_core::prompt::{MatrixOptions, PromptMatrix, PromptOptions};
use dream_core::sampler::{NameStyle, SamplerChoice, INVOKEAI_KARRAS_MAX};
use dream_pipeline::grid::{grid_shape, make_grid, prompt_matrix_grid};
use dream_pipeline::hires::HiresFix;
use dream_pipeline::image::{PngCompression, RgbaImage};
use dream_pipeline::preview::save_intermediate;
use dream_pipeline::resize::InitSizing;
use dream_pipeline::sampling::StrengthRule;
use dream_pipeline::variation::{format_variations, parse_variations};
use dream_pipeline::{interrupt, Generated, ModelStamp};
use dream_pipeline::{
    InitImage, Inpaint, Mask, MaskedContent, Outcrop, RefinerSwitch, Seam, Seamless,
    StableDiffusion, Syntax, Txt2Img, Variation,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::fetch::{quote, shell_quote};
use crate::output;
use crate::switches::Switches;

/// InvokeAI's defaults for what `Txt2Img::new` does not set.
pub const DEFAULT_SAMPLER: &str = "k_lms";
pub const DEFAULT_STRENGTH: f64 = 0.75;
pub const DEFAULT_OUTDIR: &str = "outputs/img-samples";
/// A1111's default "Refiner switch at".
pub const DEFAULT_REFINER_SWITCH_AT: f64 = 0.8;
/// The side of the square SD 1.x was trained on, for the hires fix's first pass of a model
/// whose size is not known.
const MODEL_RESOLUTION: usize = 512;

/// An image this session made.
#[derive(Debug, Clone)]
pub struct Made {
    pub path: PathBuf,
    pub seed: u32,
}

/// One command, checked and resolved (everything but the model), ready to render.
pub struct Plan {
    /// The request of the first image; image k differs by its seed only.
    first: Txt2Img,
    iterations: u32,
    sampler_name: String,
    init_path: Option<PathBuf>,
    /// Outpainting: the init image on its grown canvas, and the seam pass.
    outpaint: Option<(RgbaImage, Seam)>,
    /// The switches that make the same inpainting again.
    inpaint_switches: String,
    outdir: PathBuf,
    fnformat: String,
    /// InvokeAI's `-g`: the images of the command in one grid picture.
    grid: bool,
    /// `-t`: print how the text encoder sees the prompts.
    log_tokenization: bool,
    /// `--prompt_matrix`: the prompt as written and the combinations it makes, one image each
    /// (all with the first image's seed), in one grid.
    matrix: Option<(String, PromptMatrix)>,
    /// InvokeAI's `-v`: each image moves this far towards a new random seed's noise.
    variation_amount: f64,
    /// `--save_intermediates N`: every Nth step's preview under `outdir/intermediates/`.
    save_intermediates: usize,
    /// Switches that shape every image (`-T`, `--seamless`, …), for its command.
    shaping_switches: String,
    /// `-z`: the zlib level of the PNG files.
    png_compression: PngCompression,
    /// `--refiner`: the model that takes over the sampling, as given.
    pub refiner: Option<String>,
}

impl Plan {
    /// Resolves `switches` for `prompt`; `previous` are the images of the previous command
    /// (for `-S -1` and `-I -1`), `model_size` the model's own default size, if it has one.
    pub fn new(
        prompt: &str,
        switches: &Switches,
        previous: &[Made],
        model_size: (Option<usize>, Option<usize>),
    ) -> Result<Plan> {
        switches.refuse_unsupported()?;
        let sampler_name = switches.sampler.as_deref().unwrap_or(DEFAULT_SAMPLER);
        let choice: SamplerChoice = sampler_name.parse()?;
        let init_path = match switches.init_img.as_deref() {
            Some(path) => Some(init_image_path(path, previous)?),
            None => None,
        };
        let strength = switches.strength.unwrap_or(if switches.outcrop.is_empty() {
            DEFAULT_STRENGTH
        } else {
            dream_pipeline::outpaint::OUTCROP_STRENGTH
        });
        let painting = match &init_path {
            Some(path) => Some(Painting::new(&RgbaImage::open(path)?, switches)?),
            None if has_inpaint_switches(switches) => {
                return Err(anyhow!(
                    "inpainting and outpainting need an init image (-I)"
                ))
            }
            None => None,
        };
        let init = painting.as_ref().map(|p| InitImage {
            image: p.canvas.to_rgb(),
            strength,
        });
        if switches.skip_normalize && switches.syntax != Some(Syntax::InvokeAi) {
            return Err(anyhow!(
                "-x/--skip_normalize is for InvokeAI's `a:0.25 b:0.75` blends: add --syntax invokeai"
            ));
        }
        let matrix = switches
            .prompt_matrix
            .then(|| PromptMatrix::new(prompt, &MatrixOptions::default()))
            .transpose()?;
        let base = Txt2Img::new(matrix.as_ref().map_or(prompt, |m| m.prompts[0].as_str()), 0);
        // InvokeAI's default size is the init image's, else the model's.
        let init_size = init.as_ref().map(|i| (i.image.width, i.image.height));
        let default_width = init_size.map(|s| s.0).or(model_size.0);
        let default_height = init_size.map(|s| s.1).or(model_size.1);
        let steps = switches.steps.unwrap_or(base.steps);
        let first = Txt2Img {
            steps,
            cfg_scale: switches.cfg_scale.unwrap_or(base.cfg_scale),
            width: switches.width.or(default_width).unwrap_or(base.width),
            height: switches.height.or(default_height).unwrap_or(base.height),
            seed: match switches.seed {
                Some(seed) => resolve_seed(seed, previous)?,
                None => random_seed(),
            },
            sampler: choice.sampler,
            strength_rule: strength_rule(choice),
            schedule: choice
                .schedule_for(steps, switches.karras_max.unwrap_or(INVOKEAI_KARRAS_MAX)),
            clip_skip: switches.clip_skip.unwrap_or(base.clip_skip),
            threshold: switches.threshold,
            guidance_rescale: switches.guidance_rescale.unwrap_or(base.guidance_rescale),
            discard_penultimate_sigma: choice.discards_next_to_last_sigma(),
            init,
            inpaint: painting.as_ref().and_then(|p| p.inpaint.clone()),
            variations: match &switches.with_variations {
                Some(chain) => parse_variations(chain)?,
                None => Vec::new(),
            },
            perlin: switches.perlin.unwrap_or(0.0),
            negative_prompt: switches.negative_prompt.clone().unwrap_or_default(),
            syntax: switches.syntax.unwrap_or_default(),
            skip_normalize: switches.skip_normalize,
            seamless: match (switches.seamless, &switches.seamless_axes) {
                (true, Some(axes)) => axes.parse()?,
                (true, None) => Seamless::BOTH,
                (false, Some(_)) => return Err(anyhow!("--seamless_axes needs --seamless")),
                (false, None) => Seamless::NONE,
            },
            ..base
        };
        let mut first = first;
        // InvokeAI sizes img2img by the init image: scaled into W×H with -T, else its own
        // size, floored to multiples of 64; a mask goes with it. "Only masked" renders at W×H
        // whatever the init image's size.
        if switches.fit && switches.only_masked.is_some() {
            return Err(anyhow!("-T/--fit and --only_masked exclude each other"));
        }
        if first.init.is_some() && switches.only_masked.is_none() {
            let sizing = match switches.fit {
                true => InitSizing::Fit {
                    width: first.width,
                    height: first.height,
                },
                false => InitSizing::Own,
            };
            first.size_to_init(sizing)?;
        }
        // InvokeAI's --hires_fix, for images larger than the model's square (SD 1.x 512, SDXL
        // 1024: the first pass renders at the size the model was trained at).
        let resolution = model_size
            .0
            .zip(model_size.1)
            .map_or(MODEL_RESOLUTION, |(w, h)| w.min(h));
        if switches.hires_fix && first.width * first.height > resolution * resolution {
            first.hires = Some(HiresFix::invokeai(
                first.width,
                first.height,
                resolution,
                strength,
            ));
        }
        let switch_at = switches
            .refiner_switch_at
            .unwrap_or(DEFAULT_REFINER_SWITCH_AT);
        match &switches.refiner {
            None if switches.refiner_switch_at.is_some() => {
                return Err(anyhow!("--refiner_switch_at needs --refiner"))
            }
            Some(_) if !(switch_at > 0.0 && switch_at <= 1.0) => {
                return Err(anyhow!(
                    "--refiner_switch_at must be above 0 and at most 1, got {switch_at}"
                ))
            }
            // Its name for the metadata is known once it is loaded (`run`).
            Some(refiner) => {
                first.refiner = Some(RefinerSwitch {
                    name: refiner.clone(),
                    switch_at,
                })
            }
            None => {}
        }
        let variation_amount = switches.variation_amount.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&variation_amount) {
            return Err(anyhow!(
                "-v must be between 0 and 1, got {variation_amount}"
            ));
        }
        let fnformat = switches
            .fnformat
            .clone()
            .unwrap_or_else(|| output::DEFAULT_FNFORMAT.to_string());
        output::check_fnformat(&fnformat, &first, sampler_name)?;
        let iterations = match &matrix {
            Some(matrix) if switches.iterations.is_some_and(|n| n != 1) => {
                return Err(anyhow!(
                "--prompt_matrix makes one image per combination ({}); -n cannot be used with it",
                matrix.prompts.len()
            ))
            }
            Some(matrix) => matrix.prompts.len() as u32,
            None => switches.iterations.unwrap_or(1),
        };
        Ok(Plan {
            fnformat,
            grid: switches.grid,
            log_tokenization: switches.log_tokenization,
            matrix: matrix.map(|matrix| (prompt.to_string(), matrix)),
            variation_amount,
            save_intermediates: switches.save_intermediates.unwrap_or(0),
            shaping_switches: shaping_switches(switches),
            png_compression: match switches.png_compression {
                Some(level) => PngCompression::new(level)?,
                None => PngCompression::default(),
            },
            refiner: switches.refiner.clone(),
            first,
            iterations,
            sampler_name: sampler_name.to_string(),
            init_path,
            outpaint: painting
                .as_ref()
                .and_then(|p| p.outpaint.then(|| (p.canvas.clone(), p.seam))),
            inpaint_switches: inpaint_switches(switches),
            outdir: switches
                .outdir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTDIR)),
        })
    }

    /// Renders every image, printing each one's path and command as it is saved;
    /// `sha256` is the model's weights' hash, for the metadata; `refiner` the loaded
    /// `--refiner` and its title for the metadata (A1111's: name and short hash).
    pub fn run(
        &self,
        model: &StableDiffusion,
        sha256: Option<&str>,
        refiner: Option<(&StableDiffusion, &str)>,
    ) -> Result<Vec<Made>> {
        let stamp = ModelStamp {
            name: model.name(),
            sha256,
        };
        std::fs::create_dir_all(&self.outdir)
            .with_context(|| format!("cannot create {}", self.outdir.display()))?;
        // A Ctrl-C from before this command is not for it.
        interrupt::take();
        let mut made = Vec::new();
        let mut grid = Vec::new();
        for k in 0..self.iterations {
            let mut request = self.request(k);
            if let (Some(switch), Some((_, title))) = (&mut request.refiner, refiner) {
                switch.name = title.to_string();
            }
            // Every image of a command has the same prompts, except in a prompt matrix.
            if self.log_tokenization && (k == 0 || self.matrix.is_some()) {
                let options = PromptOptions {
                    skip_normalize: request.skip_normalize,
                    ..PromptOptions::new(request.syntax, request.steps)
                };
                print!(
                    "{}",
                    model.tokenization_log(&request.prompt, &request.negative_prompt, &options)?
                );
            }
            let steps_run = match &request.init {
                Some(init) => init
                    .steps(request.steps, request.strength_rule)?
                    .steps_run(),
                None => request.steps,
            };
            let bar = progress_bar(steps_run);
            let intermediates = self.intermediates_dir(&request)?;
            let mut preview_error = None;
            let mut progress = |step: dream_pipeline::StepInfo<'_>| {
                bar.set_position(step.step as u64 + 1);
                if let Some(dir) = &intermediates {
                    if let Err(error) = save_intermediate(&step, self.save_intermediates, dir) {
                        preview_error.get_or_insert(error);
                    }
                }
            };
            let rendered = match &self.outpaint {
                Some((canvas, seam)) => model.outpaint(&request, canvas, seam, &mut progress),
                None => model.generate_refined(
                    &request,
                    refiner.map(|(refiner, _)| refiner),
                    &mut progress,
                ),
            };
            bar.finish_and_clear();
            if let Some(error) = preview_error {
                return Err(error.into());
            }
            let generated = match rendered {
                Ok(generated) => generated,
                // Ctrl-C: the images made so far stay (in a grid too).
                Err(_) if interrupt::take() => {
                    eprintln!("interrupted after {k} of {} images", self.iterations);
                    break;
                }
                Err(error) => return Err(error.into()),
            };
            if self.grid || self.matrix.is_some() {
                grid.push(generated);
                continue;
            }
            let path = self.save(&generated, stamp, "")?;
            made.push(Made {
                path,
                seed: request.seed,
            });
        }
        if let Some(first) = grid.first() {
            let images: Vec<_> = grid.iter().map(|g| g.image.clone()).collect();
            let (whole, extra) = match &self.matrix {
                // A1111's labelled layout; the grid's parameters are the first image's with the
                // prompt as written, and --prompt_matrix makes it again.
                Some((prompt, matrix)) => {
                    println!("{}", matrix.describe());
                    let image = prompt_matrix_grid(&images, matrix)?;
                    let request = Txt2Img {
                        prompt: prompt.clone(),
                        ..first.request.clone()
                    };
                    let whole = Generated {
                        image,
                        request,
                        ..first.clone()
                    };
                    (whole, " --prompt_matrix".to_string())
                }
                // The grid carries the first image's parameters; -g -n N makes it again.
                None => {
                    let (rows, cols) = grid_shape(images.len());
                    let whole = Generated {
                        image: make_grid(&images, rows, cols)?,
                        ..first.clone()
                    };
                    (whole, format!(" -g -n{}", images.len()))
                }
            };
            let path = self.save(&whole, stamp, &extra)?;
            made = grid
                .iter()
                .map(|g| Made {
                    path: path.clone(),
                    seed: g.request.seed,
                })
                .collect();
        }
        Ok(made)
    }

    /// The request of image `k`: seed + k, or with `-v` the same seed moved towards a new
    /// random seed's noise, appended to its variation chain as InvokeAI records it.
    fn request(&self, k: u32) -> Txt2Img {
        if let Some((_, matrix)) = &self.matrix {
            return Txt2Img {
                prompt: matrix.prompts[k as usize].clone(),
                ..self.first.clone()
            };
        }
        if self.variation_amount > 0.0 {
            let mut variations = self.first.variations.clone();
            variations.push(Variation {
                seed: random_seed(),
                weight: self.variation_amount,
            });
            return Txt2Img {
                variations,
                ..self.first.clone()
            };
        }
        Txt2Img {
            seed: self.first.seed.wrapping_add(k),
            ..self.first.clone()
        }
    }

    /// InvokeAI's `outdir/intermediates/<the image's number>/` for `--save_intermediates`.
    fn intermediates_dir(&self, request: &Txt2Img) -> Result<Option<PathBuf>> {
        if self.save_intermediates == 0 {
            return Ok(None);
        }
        let number = output::next_number(&self.outdir, request.seed)?;
        Ok(Some(self.outdir.join("intermediates").join(number)))
    }

    /// Saves an image under the next free name, logs it and prints its command (with
    /// `extra` switches).
    fn save(&self, generated: &Generated, model: ModelStamp<'_>, extra: &str) -> Result<PathBuf> {
        let request = &generated.request;
        let path = output::image_path(&self.outdir, &self.fnformat, request, &self.sampler_name)?;
        generated.save_compressed(&path, model, self.png_compression)?;
        let command = format!("{}{extra}", self.command(request));
        println!("{}: {command}", path.display());
        output::log(&self.outdir, &path, &command)?;
        Ok(path)
    }

    /// The InvokeAI command line that makes `r` again.
    fn command(&self, r: &Txt2Img) -> String {
        let command = format!(
            "{} -s{} -W{} -H{} -C{} -A{} -S{}",
            quote(&r.prompt),
            r.steps,
            r.width,
            r.height,
            r.cfg_scale,
            shell_quote(&self.sampler_name),
            r.seed
        );
        let mut command = command + &self.shaping_switches;
        if !r.variations.is_empty() {
            command += &format!(" -V {}", format_variations(&r.variations));
        }
        match (&r.init, &self.init_path) {
            (Some(init), Some(path)) => format!(
                "{command} -I{} -f{}{}",
                shell_quote(&path.display().to_string()),
                init.strength,
                self.inpaint_switches
            ),
            _ => command,
        }
    }
}

/// What an init image and the mask and outpainting switches make: the canvas (grown by
/// `-c`), the mask (`-M`, else the image's transparency; `--invert_mask`), and whether the
/// transparent area is outpainted (`-c`, `--force_outpaint`) with the seam pass.
struct Painting {
    canvas: RgbaImage,
    inpaint: Option<Inpaint>,
    outpaint: bool,
    seam: Seam,
}

impl Painting {
    fn new(image: &RgbaImage, switches: &Switches) -> Result<Painting> {
        let outcrop = !switches.outcrop.is_empty();
        let canvas = if outcrop {
            Outcrop::parse(&switches.outcrop)?.extend(image)
        } else {
            image.clone()
        };
        let transparent = Mask::from_alpha(&canvas);
        // InvokeAI: -M replaces the transparency as the mask, --invert_mask inverts whichever
        // it is, and the transparent pixels are repainted in any case.
        let mask = match &switches.init_mask {
            Some(path) => {
                let mask = Mask::open(path)?;
                let mask = if switches.invert_mask {
                    mask.inverted()
                } else {
                    mask
                };
                Some(match &transparent {
                    Some(transparent) => transparent.union(&mask)?,
                    None => mask,
                })
            }
            None if switches.invert_mask => transparent.as_ref().map(Mask::inverted),
            None => transparent.clone(),
        };
        // Colours under transparent pixels may be erased: the hole takes its surroundings'.
        let masked_content = match &switches.masked_content {
            Some(name) => name.parse()?,
            None if transparent.is_some() => MaskedContent::Fill,
            None => MaskedContent::Original,
        };
        let inpaint = mask.map(|mask| {
            let defaults = Inpaint::new(mask);
            Inpaint {
                masked_content,
                inpaint_replace: switches.inpaint_replace.unwrap_or(0.0),
                mask_blur: switches.mask_blur.unwrap_or(defaults.mask_blur),
                only_masked_padding: switches.only_masked,
                ..defaults
            }
        });
        let defaults = if outcrop {
            Seam::OUTCROP
        } else {
            Seam::default()
        };
        Ok(Painting {
            // InvokeAI runs the seam pass whenever it has a seam size; the seam follows the
            // border of the transparent area.
            outpaint: transparent.is_some()
                && (outcrop
                    || switches.force_outpaint
                    || switches.seam_size.is_some_and(|size| size > 0)),
            canvas,
            inpaint,
            seam: Seam {
                size: switches.seam_size.unwrap_or(defaults.size),
                blur: switches.seam_blur.unwrap_or(defaults.blur),
                strength: switches.seam_strength.unwrap_or(defaults.strength),
                steps: switches.seam_steps.unwrap_or(defaults.steps),
            },
        })
    }
}

/// A1111's img2img strength rule for a sampler named as A1111 names it, InvokeAI's otherwise
/// (ComfyUI's `denoise` stretches the schedule instead, which img2img does not build yet).
fn strength_rule(choice: SamplerChoice) -> StrengthRule {
    match choice.style {
        NameStyle::A1111 => StrengthRule::A1111,
        NameStyle::InvokeAi | NameStyle::ComfyUi => StrengthRule::InvokeAi,
    }
}

/// The switches that shape every image of the command, as given, for the command that remakes
/// an image (`-v` is recorded as the image's last `-V` pair instead).
fn shaping_switches(s: &Switches) -> String {
    let mut line = String::new();
    if let Some(syntax) = s.syntax {
        line += &format!(" --syntax {syntax}");
    }
    if let Some(negative) = s.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
        line += &format!(" --negative_prompt {}", shell_quote(negative));
    }
    if s.skip_normalize {
        line += " -x";
    }
    if let Some(perlin) = s.perlin.filter(|&p| p != 0.0) {
        line += &format!(" --perlin {perlin}");
    }
    if let Some(threshold) = s.threshold.filter(|&t| t != 0.0) {
        line += &format!(" --threshold {threshold}");
    }
    if let Some(phi) = s.guidance_rescale.filter(|&phi| phi != 0.0) {
        line += &format!(" --guidance_rescale {phi}");
    }
    if s.seamless {
        line += " --seamless";
    }
    if let Some(axes) = &s.seamless_axes {
        line += &format!(" --seamless_axes {}", shell_quote(axes));
    }
    if s.hires_fix {
        line += " --hires_fix";
    }
    if let Some(refiner) = &s.refiner {
        let switch_at = s.refiner_switch_at.unwrap_or(DEFAULT_REFINER_SWITCH_AT);
        line += &format!(
            " --refiner {} --refiner_switch_at {switch_at}",
            shell_quote(refiner)
        );
    }
    if s.fit {
        line += " -T";
    }
    if let Some(n) = s.save_intermediates.filter(|&n| n > 0) {
        line += &format!(" --save_intermediates {n}");
    }
    line
}

fn has_inpaint_switches(s: &Switches) -> bool {
    s.init_mask.is_some()
        || s.invert_mask
        || !s.outcrop.is_empty()
        || s.force_outpaint
        || s.mask_blur.is_some()
        || s.masked_content.is_some()
        || s.only_masked.is_some()
}

/// The inpainting and outpainting switches as given, for the command that remakes an image.
fn inpaint_switches(s: &Switches) -> String {
    let mut line = String::new();
    if let Some(path) = &s.init_mask {
        line += &format!(" -M{}", shell_quote(&path.display().to_string()));
    }
    if s.invert_mask {
        line += " --invert_mask";
    }
    if let Some(r) = s.inpaint_replace {
        line += &format!(" -r{r}");
    }
    if let Some(blur) = s.mask_blur {
        line += &format!(" --mask_blur {blur}");
    }
    if let Some(content) = &s.masked_content {
        line += &format!(" --masked_content {}", shell_quote(content));
    }
    if let Some(padding) = s.only_masked {
        line += &format!(" --only_masked {padding}");
    }
    if !s.outcrop.is_empty() {
        line += &format!(" -c {}", s.outcrop.join(" "));
    }
    if s.force_outpaint {
        line += " --force_outpaint";
    }
    let seams = [
        ("--seam_size", s.seam_size.map(|v| v.to_string())),
        ("--seam_blur", s.seam_blur.map(|v| v.to_string())),
        ("--seam_strength", s.seam_strength.map(|v| v.to_string())),
        ("--seam_steps", s.seam_steps.map(|v| v.to_string())),
    ];
    for (switch, value) in seams {
        if let Some(value) = value {
            line += &format!(" {switch} {value}");
        }
    }
    line
}

/// `-S -k` is the seed of the k-th last image of the previous command.
fn resolve_seed(seed: i64, previous: &[Made]) -> Result<u32> {
    if seed < 0 {
        return from_previous(seed, previous, "-S").map(|made| made.seed);
    }
    u32::try_from(seed).map_err(|_| anyhow!("seeds go from 0 to {}, got {seed}", u32::MAX))
}

/// `-I -k` is the k-th last image of the previous command.
fn init_image_path(path: &str, previous: &[Made]) -> Result<PathBuf> {
    match path.parse::<i64>() {
        Ok(k) if k < 0 => from_previous(k, previous, "-I").map(|made| made.path.clone()),
        _ => Ok(Path::new(path).to_path_buf()),
    }
}

fn from_previous<'a>(k: i64, previous: &'a [Made], switch: &str) -> Result<&'a Made> {
    let back = k.unsigned_abs() as usize;
    previous
        .len()
        .checked_sub(back)
        .map(|i| &previous[i])
        .ok_or_else(|| {
            anyhow!(
                "{switch} {k}: the previous command made {} image(s)",
                previous.len()
            )
        })
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
