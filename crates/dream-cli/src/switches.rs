//! InvokeAI 2.x's per-prompt switches: one table for the `dream PROMPT …` command line and the
//! `invoke>` line, and the one place that refuses those whose feature is not built yet.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use dream_pipeline::{DreamError, Syntax};

/// The switches of one prompt. Every value is optional so that a line's switches can be laid
/// over the session's (the startup command line's); each field's doc says its default.
#[derive(Parser, Debug, Clone, Default, PartialEq)]
#[command(
    name = "invoke>",
    about = "A prompt and its switches; switches given at startup are every line's defaults.",
    disable_version_flag = true,
    allow_negative_numbers = true,
    next_help_heading = "Per-prompt switches (also at the invoke> prompt)"
)]
pub struct Switches {
    /// Sampling steps [default: 50].
    #[arg(short = 's', long)]
    pub steps: Option<usize>,
    /// Seed of the first image (a random one if omitted); image k of a batch uses seed+k.
    /// -1 reuses the seed of the previous command's last image, -2 the one before, ...
    #[arg(short = 'S', long)]
    pub seed: Option<i64>,
    /// Number of images to make [default: 1].
    #[arg(short = 'n', long)]
    pub iterations: Option<u32>,
    /// Image width [default: the model's (SD 512, SDXL 1024), or the init image's width].
    #[arg(short = 'W', long)]
    pub width: Option<usize>,
    /// Image height [default: the model's (SD 512, SDXL 1024), or the init image's height].
    #[arg(short = 'H', long)]
    pub height: Option<usize>,
    /// Classifier-free guidance scale [default: 7.5].
    #[arg(short = 'C', long = "cfg_scale")]
    pub cfg_scale: Option<f64>,
    /// Sampler, by its InvokeAI (k_lms, k_euler_a, k_dpmpp_2, ...), A1111 ("DPM++ 2M Karras",
    /// "Euler a", ...) or ComfyUI (dpmpp_2m_sde, ...) name [default: k_lms].
    #[arg(short = 'A', long, visible_short_alias = 'm')]
    pub sampler: Option<String>,
    /// InvokeAI's rule: k_* samplers use Karras sigmas below this many steps [default: 30].
    #[arg(long = "karras_max")]
    pub karras_max: Option<usize>,
    /// A1111's "Clip skip": 2 conditions on the text encoder's next-to-last layer [default: 1].
    #[arg(long = "clip_skip")]
    pub clip_skip: Option<usize>,
    /// InvokeAI's latent threshold for the k_* samplers: the guided x0 estimate is clamped
    /// towards ±this; 0 disables [default: 0].
    #[arg(long)]
    pub threshold: Option<f64>,
    /// CFG rescale φ, 0 to 1 (diffusers' guidance_rescale): keeps high CFG scales from
    /// over-exposing [default: 0].
    #[arg(long = "guidance_rescale")]
    pub guidance_rescale: Option<f64>,
    /// Perlin noise mixed into the initial noise, 0 to 1 [default: 0].
    #[arg(long)]
    pub perlin: Option<f64>,
    /// Output file name template [default: {prefix}.{seed}.png].
    #[arg(long)]
    pub fnformat: Option<String>,
    /// Put the images of this command into one grid image.
    #[arg(short = 'g', long)]
    pub grid: bool,
    /// Individual images even when --grid was given at startup.
    #[arg(short = 'i', long)]
    pub individual: bool,
    /// Do not normalize the weights of InvokeAI's `prompt:weight` subprompts.
    #[arg(short = 'x', long = "skip_normalize")]
    pub skip_normalize: bool,
    /// Print the tokens as CLIP sees them, and what was cut.
    #[arg(short = 't', long = "log_tokenization")]
    pub log_tokenization: bool,
    /// Prompt syntax: a1111 (`(word:1.2)`, `[from:to:when]`, `AND`, `BREAK`) or invokeai
    /// (`word+`, `(words)1.3`, `.blend()`, `.and()`, `[negative words]`, `a:0.25 b:0.75`)
    /// [default: a1111].
    #[arg(long)]
    pub syntax: Option<Syntax>,
    /// The negative prompt, in the prompt's syntax.
    #[arg(long = "negative_prompt", visible_alias = "negative")]
    pub negative_prompt: Option<String>,
    /// A1111's prompt matrix: `a|b|c` renders `a` with every combination of the later parts
    /// (one seed for all) into one grid, columns for the first half of the parts.
    #[arg(long = "prompt_matrix")]
    pub prompt_matrix: bool,
    /// Output folder [default: outputs/img-samples].
    #[arg(short = 'o', long)]
    pub outdir: Option<PathBuf>,
    /// Render small, then enlarge with img2img (against duplicated subjects).
    #[arg(long = "hires_fix")]
    pub hires_fix: bool,
    /// A1111's "Refiner": a model (a registry name or a path, usually the SDXL refiner) that
    /// takes over the sampling for its last steps.
    #[arg(long)]
    pub refiner: Option<String>,
    /// A1111's "Refiner switch at": the share of the denoising done before the refiner takes
    /// over, above 0 to 1 [default: 0.8].
    #[arg(long = "refiner_switch_at")]
    pub refiner_switch_at: Option<f64>,
    /// Save every Nth intermediate image; 0 saves none [default: 0].
    #[arg(long = "save_intermediates")]
    pub save_intermediates: Option<usize>,
    /// PNG compression level, 0 (none) to 9 [default: 6].
    #[arg(short = 'z', long = "png_compression", value_parser = clap::value_parser!(u8).range(0..=9))]
    pub png_compression: Option<u8>,

    /// img2img: a PNG, JPEG, WebP or BMP to start from; its transparent pixels are inpainted.
    /// -1 is the previous image.
    #[arg(short = 'I', long = "init_img")]
    pub init_img: Option<String>,
    /// img2img: how much of the init image is repainted, 0 to 1 [default: 0.75].
    #[arg(short = 'f', long)]
    pub strength: Option<f64>,
    /// img2img: resize the init image to fit within width x height.
    #[arg(short = 'T', long)]
    pub fit: bool,
    /// A reference image for color correction.
    #[arg(long = "init_color")]
    pub init_color: Option<PathBuf>,
    /// Inpainting: the mask (transparent or black where the image is repainted).
    #[arg(short = 'M', long = "init_mask")]
    pub init_mask: Option<PathBuf>,
    /// Inpainting: repaint where the mask is opaque instead.
    #[arg(long = "invert_mask")]
    pub invert_mask: bool,
    /// Inpainting: a mask found by text (clipseg): "a mug" [threshold].
    #[arg(long = "text_mask", num_args = 1..=2)]
    pub text_mask: Vec<String>,
    /// Inpainting: how strongly the masked part is replaced, 0 to 1 [default: 0].
    #[arg(short = 'r', long = "inpaint_replace")]
    pub inpaint_replace: Option<f64>,
    /// Inpainting: A1111's "Mask blur", the mask edge's Gaussian radius in pixels [default: 4].
    #[arg(long = "mask_blur")]
    pub mask_blur: Option<f64>,
    /// Inpainting: A1111's "Masked content": fill, original, latent_noise or latent_nothing
    /// [default: original, fill for transparent pixels].
    #[arg(long = "masked_content")]
    pub masked_content: Option<String>,
    /// Inpainting: A1111's "Only masked": render the area around the mask, grown by this
    /// padding in pixels, at -W x -H and paste it back.
    #[arg(long = "only_masked")]
    pub only_masked: Option<usize>,

    /// Outcropping: direction/pixels pairs, e.g. -c top 64 left 32.
    #[arg(short = 'c', long, num_args = 1..)]
    pub outcrop: Vec<String>,
    /// Treat the init image's transparent area as outpainting (with the seam pass).
    #[arg(long = "force_outpaint")]
    pub force_outpaint: bool,
    /// Outpainting: size of the mask around the seam [default: 0].
    #[arg(long = "seam_size")]
    pub seam_size: Option<usize>,
    /// Outpainting: how far the seam is blurred inwards [default: 0].
    #[arg(long = "seam_blur")]
    pub seam_blur: Option<usize>,
    /// Outpainting: img2img strength on the seam [default: 0.7].
    #[arg(long = "seam_strength")]
    pub seam_strength: Option<f64>,
    /// Outpainting: steps on the seam [default: 10].
    #[arg(long = "seam_steps")]
    pub seam_steps: Option<usize>,
    /// Outpainting: tile size for filling the new area [default: 32].
    #[arg(long = "tile_size")]
    pub tile_size: Option<usize>,
    /// The older outcropping: direction [pixels].
    #[arg(short = 'D', long = "out_direction", num_args = 1..=2)]
    pub out_direction: Vec<String>,

    /// Face restoration strength, 0 to 1; 0 disables [default: 0].
    #[arg(
        short = 'G',
        long = "facetool_strength",
        visible_alias = "gfpgan_strength"
    )]
    pub facetool_strength: Option<f64>,
    /// Face restoration model: gfpgan or codeformer [default: gfpgan].
    #[arg(long)]
    pub facetool: Option<String>,
    /// CodeFormer fidelity, 0 (quality) to 1 (accuracy) [default: 0.75].
    #[arg(long = "codeformer_fidelity")]
    pub codeformer_fidelity: Option<f64>,
    /// Upscaling: factor [strength].
    #[arg(short = 'U', long, num_args = 1..=2)]
    pub upscale: Vec<f64>,
    /// Keep the image before post-processing too.
    #[arg(long = "save_original")]
    pub save_original: bool,
    /// Upscaling through img2img tiles: factor [strength [overlap]].
    #[arg(long, num_args = 1..=3)]
    pub embiggen: Vec<f64>,
    /// Embiggen only these tiles.
    #[arg(long = "embiggen_tiles", num_args = 1..)]
    pub embiggen_tiles: Vec<usize>,
    /// Strength of embiggen's img2img [default: 0.4].
    #[arg(long = "embiggen_strength")]
    pub embiggen_strength: Option<f64>,

    /// Tileable images: circular convolutions.
    #[arg(long)]
    pub seamless: bool,
    /// The axes --seamless wraps around: x, y or x,y [default: x,y].
    #[arg(long = "seamless_axes")]
    pub seamless_axes: Option<String>,
    /// Variations of the seed's image, 0 to 1.
    #[arg(short = 'v', long = "variation_amount")]
    pub variation_amount: Option<f64>,
    /// Variations to blend in: seed:weight,seed:weight,...
    #[arg(short = 'V', long = "with_variations")]
    pub with_variations: Option<String>,
}

/// InvokeAI's options with a single dash and several letters (argparse allows them, clap's
/// short options are single letters): their long forms.
const SINGLE_DASH_LONG: &[(&str, &str)] = &[
    ("-ft", "--facetool"),
    ("-cf", "--codeformer_fidelity"),
    ("-tm", "--text_mask"),
    ("-fit", "--fit"),
    ("-save_orig", "--save_original"),
    ("-embiggen", "--embiggen"),
    ("-embiggen_tiles", "--embiggen_tiles"),
    ("-embiggen_strength", "--embiggen_strength"),
];

/// Rewrites InvokeAI's single-dash long options (`-ft codeformer`) to their `--` form.
pub fn normalize_tokens(tokens: impl IntoIterator<Item = String>) -> Vec<String> {
    tokens
        .into_iter()
        .map(|token| {
            let (name, value) = match token.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (token.as_str(), None),
            };
            match SINGLE_DASH_LONG.iter().find(|(short, _)| *short == name) {
                Some((_, long)) => match value {
                    Some(value) => format!("{long}={value}"),
                    None => long.to_string(),
                },
                None => token,
            }
        })
        .collect()
}

/// A switch whose feature is not built yet, and how to tell it was asked for. To build one,
/// delete its row here and use the field in `render`.
struct Unsupported {
    switch: &'static str,
    /// A command line that asks for it: the table's test checks each row with it.
    #[cfg_attr(not(test), allow(dead_code))]
    example: &'static [&'static str],
    asked: fn(&Switches) -> bool,
}

/// A value that changes nothing (0, InvokeAI's "off") is not a request.
fn nonzero(value: Option<f64>) -> bool {
    value.is_some_and(|v| v != 0.0)
}

const UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        switch: "--init_color",
        example: &["--init_color", "a.png"],
        asked: |s| s.init_color.is_some(),
    },
    Unsupported {
        switch: "-tm/--text_mask",
        example: &["-tm", "a mug"],
        asked: |s| !s.text_mask.is_empty(),
    },
    // The new area is filled with the colours around it, not with tiles.
    Unsupported {
        switch: "--tile_size",
        example: &["--tile_size", "16"],
        asked: |s| s.tile_size.is_some(),
    },
    Unsupported {
        switch: "-D/--out_direction",
        example: &["-D", "left", "64"],
        asked: |s| !s.out_direction.is_empty(),
    },
    Unsupported {
        switch: "-G/--facetool_strength",
        example: &["-G", "0.8"],
        asked: |s| nonzero(s.facetool_strength),
    },
    Unsupported {
        switch: "-ft/--facetool",
        example: &["-ft", "codeformer"],
        asked: |s| s.facetool.is_some(),
    },
    Unsupported {
        switch: "-cf/--codeformer_fidelity",
        example: &["-cf", "0.5"],
        asked: |s| s.codeformer_fidelity.is_some(),
    },
    Unsupported {
        switch: "-U/--upscale",
        example: &["-U", "2", "0.75"],
        asked: |s| !s.upscale.is_empty(),
    },
    Unsupported {
        switch: "--save_original",
        example: &["--save_original"],
        asked: |s| s.save_original,
    },
    Unsupported {
        switch: "--embiggen",
        example: &["--embiggen", "2"],
        asked: |s| !s.embiggen.is_empty(),
    },
    Unsupported {
        switch: "--embiggen_tiles",
        example: &["-embiggen_tiles", "1", "3"],
        asked: |s| !s.embiggen_tiles.is_empty(),
    },
    Unsupported {
        switch: "--embiggen_strength",
        example: &["--embiggen_strength", "0.4"],
        asked: |s| s.embiggen_strength.is_some(),
    },
];

impl Switches {
    /// Fails with "<switch> is not supported yet" for the first switch asked for whose
    /// feature is not built.
    pub fn refuse_unsupported(&self) -> Result<()> {
        match UNSUPPORTED.iter().find(|u| (u.asked)(self)) {
            Some(u) => Err(DreamError::NotSupported(u.switch.to_string()).into()),
            None => Ok(()),
        }
    }

    /// These switches with those of `tokens` (an `invoke>` line's, after the prompt) laid
    /// over them. Flags hold for one line only.
    pub fn updated(&self, tokens: Vec<String>) -> Result<Switches> {
        let mut switches = self.clone();
        let argv = std::iter::once("invoke>".to_string()).chain(normalize_tokens(tokens));
        switches.try_update_from(argv).map_err(one_line)?;
        Ok(switches)
    }
}

/// clap's error without its usage lines and "error:" prefix (the REPL prints one line).
fn one_line(error: clap::Error) -> anyhow::Error {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    anyhow::anyhow!("{}", first.strip_prefix("error: ").unwrap_or(first))
}

/// An `invoke>` line split as InvokeAI splits it: a leading quoted prompt, or everything
/// before the first word that looks like a switch; then the switches' words.
pub fn split_command(line: &str) -> Result<(String, Vec<String>)> {
    let line = line.trim();
    let words = |text: &str| {
        shlex::split(text).ok_or_else(|| anyhow::anyhow!("unbalanced quotes in: {text}"))
    };
    if line.starts_with('"') || line.starts_with('\'') {
        let mut all = words(line)?;
        let prompt = all.remove(0);
        return Ok((prompt, all));
    }
    match first_switch(line) {
        Some(at) => Ok((line[..at].trim_end().to_string(), words(&line[at..])?)),
        None => Ok((line.to_string(), Vec::new())),
    }
}

/// Where the first word that starts with `-` or `--` and a letter begins (so "-1" and
/// "a - b" stay in the prompt).
fn first_switch(line: &str) -> Option<usize> {
    let looks_like_switch = |word: &str| {
        let rest = word.strip_prefix("--").or(word.strip_prefix('-'));
        rest.and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_alphabetic())
    };
    let mut start = 0;
    for word in line.split_whitespace() {
        let at = start + line[start..].find(word)?;
        if looks_like_switch(word) {
            return Some(at);
        }
        start = at + word.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> (String, Switches) {
        let (prompt, tokens) = split_command(line).unwrap();
        (prompt, Switches::default().updated(tokens).unwrap())
    }

    #[test]
    fn prompts_are_split_off_as_invokeai_does() {
        let (prompt, s) = parse("a fantastic alien landscape -W576 -H512 -s60 -n4");
        assert_eq!(prompt, "a fantastic alien landscape");
        assert_eq!(
            (s.width, s.height, s.steps, s.iterations),
            (Some(576), Some(512), Some(60), Some(4))
        );
        let (prompt, s) = parse("\"a cat -- sitting\" --steps 3 -S -1");
        assert_eq!(prompt, "a cat -- sitting");
        assert_eq!((s.steps, s.seed), (Some(3), Some(-1)));
        // A dash not followed by a letter is part of the prompt.
        let (prompt, s) = parse("half-elf - portrait -2 -C 9");
        assert_eq!(prompt, "half-elf - portrait -2");
        assert_eq!(s.cfg_scale, Some(9.0));
        let (prompt, s) = parse("-s 5 -I -1");
        assert_eq!(prompt, "");
        assert_eq!(s.init_img.as_deref(), Some("-1"));
    }

    #[test]
    fn a_line_overrides_the_session_switches_it_names() {
        let session = Switches::default()
            .updated(vec!["-s".into(), "20".into(), "-g".into()])
            .unwrap();
        let line = session
            .updated(vec![
                "-W".into(),
                "64".into(),
                "-ft".into(),
                "codeformer".into(),
            ])
            .unwrap();
        assert_eq!((line.steps, line.width), (Some(20), Some(64)));
        assert_eq!(line.facetool.as_deref(), Some("codeformer"));
        assert!(!line.grid, "flags hold for one line");
    }

    #[test]
    fn every_unbuilt_switch_is_refused_by_name() {
        assert!(Switches::default().refuse_unsupported().is_ok());
        for u in UNSUPPORTED {
            let tokens = u.example.iter().map(|w| w.to_string()).collect();
            let switches = Switches::default().updated(tokens).unwrap();
            let error = switches.refuse_unsupported().unwrap_err().to_string();
            assert_eq!(error, format!("{} is not supported yet", u.switch));
        }
    }

    #[test]
    fn values_that_change_nothing_are_accepted() {
        let (_, s) = parse("x --threshold 0 --perlin 0 -G 0 -v 0 --save_intermediates 0");
        assert!(s.refuse_unsupported().is_ok());
    }

    #[test]
    fn threshold_and_guidance_rescale_are_taken() {
        let (_, s) = parse("x --threshold 1.5 --guidance_rescale 0.7");
        assert_eq!((s.threshold, s.guidance_rescale), (Some(1.5), Some(0.7)));
        assert!(s.refuse_unsupported().is_ok());
    }

    #[test]
    fn bad_switches_are_errors() {
        for line in ["x --bogus", "x -s many", "x -z 10", "\"x -s 3"] {
            let result =
                split_command(line).and_then(|(_, tokens)| Switches::default().updated(tokens));
            assert!(result.is_err(), "{line}");
        }
    }
}
