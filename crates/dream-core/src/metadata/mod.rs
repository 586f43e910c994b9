//! Generation parameters in the PNG text chunks other tools write and read: A1111's
//! `parameters`, InvokeAI 2.x's `Dream` command and `sd-metadata` JSON, ComfyUI's `prompt` and
//! `workflow` graphs.
//!
//! Every reader fills one [`GenerationInfo`], so `dream info` and `!fetch` need not care which
//! tool made an image.

pub mod a1111;
pub mod comfyui;
pub mod invokeai;

pub use a1111::A1111Parameters;

use crate::prompt::Syntax;

/// Which chunk a [`GenerationInfo`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFormat {
    /// A1111's `parameters` infotext.
    A1111,
    /// InvokeAI 2.x's `sd-metadata` JSON.
    InvokeAiJson,
    /// InvokeAI 2.x's `Dream` chunk: the normalized `invoke>` command.
    InvokeAiCommand,
    /// ComfyUI's `prompt` chunk: the graph in API format.
    ComfyUiPrompt,
    /// ComfyUI's `workflow` chunk: the editor's graph.
    ComfyUiWorkflow,
}

/// What made an image, as far as its metadata tells. Names (sampler, schedule) are kept as
/// the writing tool spelled them; `sampler::SamplerChoice` parses any of them.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationInfo {
    pub format: MetadataFormat,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub sampler: Option<String>,
    pub schedule: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub model: Option<String>,
    /// The tool's own model hash: sha256 of the weights for InvokeAI and Dream, A1111's short
    /// hash for A1111 images.
    pub model_hash: Option<String>,
    /// img2img strength (ComfyUI's `denoise`).
    pub strength: Option<f64>,
    pub clip_skip: Option<usize>,
    /// The program and version that wrote the image (A1111's `Version`, InvokeAI's
    /// `app_id app_version`).
    pub generator: Option<String>,
    /// InvokeAI's variation chain, `(seed, weight)` pairs (its `-V`).
    pub variations: Vec<(u64, f64)>,
    /// InvokeAI's `--perlin`: the share of Perlin noise in the initial noise.
    pub perlin: Option<f64>,
    /// The axes a seamless image tiles along (`"x,y"`, `"x"` or `"y"`); `None` when it does not.
    pub seamless: Option<String>,
    /// InvokeAI's `--hires_fix`.
    pub hires_fix: bool,
    /// InvokeAI's `--threshold` (latent thresholding of its k_* samplers); `None` when off.
    pub threshold: Option<f64>,
    /// CFG rescale φ (diffusers' `guidance_rescale`, A1111's CFG Rescale extension); `None`
    /// when off.
    pub guidance_rescale: Option<f64>,
    /// The sampler's η where it is not the sampler's default (A1111's `Eta`, or `Eta DDIM`
    /// for DDIM, PLMS and UniPC).
    pub eta: Option<f64>,
    /// The step noise scale s_noise where it is not 1 (A1111's `Sigma noise`).
    pub s_noise: Option<f64>,
    /// The prompt syntax, where the metadata names it (Dream's `prompt_syntax`, or its
    /// `Prompt syntax` field in A1111's infotext); `None`: the writing tool's own, InvokeAI's
    /// for InvokeAI's images and A1111's for the rest.
    pub syntax: Option<Syntax>,
    /// Whose rule turned the img2img strength into steps, where it is not the rule of the tool
    /// whose sampler names the metadata uses: `invokeai` in A1111's infotext (Dream's
    /// `Strength rule` field), `a1111` in `sd-metadata` (Dream's `strength_rule` key).
    pub strength_rule: Option<String>,
    /// Fields this struct has no place for (A1111's `Hires upscale`, `Lora hashes`, …), in the
    /// order they were found.
    pub extra: Vec<(String, String)>,
}

impl GenerationInfo {
    /// An empty record of the given format: every field unknown.
    pub fn new(format: MetadataFormat) -> Self {
        GenerationInfo {
            format,
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: None,
            cfg_scale: None,
            seed: None,
            sampler: None,
            schedule: None,
            width: None,
            height: None,
            model: None,
            model_hash: None,
            strength: None,
            clip_skip: None,
            generator: None,
            variations: Vec::new(),
            perlin: None,
            seamless: None,
            hires_fix: false,
            threshold: None,
            guidance_rescale: None,
            eta: None,
            s_noise: None,
            syntax: None,
            strength_rule: None,
            extra: Vec::new(),
        }
    }
}

/// The generation parameters in a PNG's text chunks (keyword, text), from the most complete
/// source present: `sd-metadata`, then `Dream`, then `parameters`, then ComfyUI's `prompt`,
/// then its `workflow`.
/// `None` when no chunk holds readable parameters.
pub fn read_generation_info(chunks: &[(String, String)]) -> Option<GenerationInfo> {
    let chunk = |keyword: &str| {
        chunks
            .iter()
            .find(|(k, _)| k == keyword)
            .map(|(_, text)| text.as_str())
    };
    chunk("sd-metadata")
        .and_then(invokeai::read_sd_metadata)
        .or_else(|| chunk("Dream").and_then(invokeai::read_dream_command))
        .or_else(|| chunk("parameters").map(|text| A1111Parameters::parse(text).to_info()))
        .or_else(|| chunk("prompt").and_then(comfyui::read_prompt))
        .or_else(|| chunk("workflow").and_then(comfyui::read_workflow))
}

/// A number as Python's `str` writes a float: integral values keep a `.0` (`7.0`, not `7`).
pub fn python_float(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e16 {
        format!("{value:.1}")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sd_metadata_wins_over_the_other_chunks() {
        let all = chunks(&[
            ("parameters", "a\nSteps: 3, Seed: 4, Size: 8x8"),
            ("Dream", "\"b\" -s 5 -S 6"),
            (
                "sd-metadata",
                r#"{"image": {"prompt": [{"prompt": "c", "weight": 1.0}], "steps": 7}}"#,
            ),
        ]);
        let info = read_generation_info(&all).unwrap();
        assert_eq!(
            (info.format, info.prompt.as_str()),
            (MetadataFormat::InvokeAiJson, "c")
        );
        let info = read_generation_info(&all[..2]).unwrap();
        assert_eq!(
            (info.format, info.prompt.as_str()),
            (MetadataFormat::InvokeAiCommand, "b")
        );
        let info = read_generation_info(&all[..1]).unwrap();
        assert_eq!((info.format, info.steps), (MetadataFormat::A1111, Some(3)));
    }

    #[test]
    fn broken_sd_metadata_falls_back_to_the_next_chunk() {
        let info = read_generation_info(&chunks(&[
            ("sd-metadata", "{not json"),
            ("parameters", "a\nSteps: 3, Seed: 4, Size: 8x8"),
        ]))
        .unwrap();
        assert_eq!(info.format, MetadataFormat::A1111);
        assert_eq!(read_generation_info(&chunks(&[("Title", "x")])), None);
    }

    #[test]
    fn floats_print_as_python_does() {
        assert_eq!(python_float(7.0), "7.0");
        assert_eq!(python_float(7.5), "7.5");
        assert_eq!(python_float(0.75), "0.75");
    }

    proptest::proptest! {
        #[test]
        fn reading_any_chunks_never_panics(keyword in "(sd-metadata|Dream|parameters|prompt|workflow)", text in "\\PC*") {
            let _ = read_generation_info(&[(keyword, text)]);
        }
    }
}
