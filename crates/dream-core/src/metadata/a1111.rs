//! AUTOMATIC1111's `parameters` chunk.

use super::{python_float, GenerationInfo, MetadataFormat};
use crate::prompt::Syntax;

/// AUTOMATIC1111's `parameters` text: the prompt, an optional `Negative prompt:` line, then
/// one line of `Key: value` pairs in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct A1111Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub fields: Vec<(String, String)>,
}

impl A1111Parameters {
    pub fn new(prompt: &str, negative_prompt: &str) -> Self {
        A1111Parameters {
            prompt: prompt.to_string(),
            negative_prompt: negative_prompt.to_string(),
            fields: Vec::new(),
        }
    }

    /// Appends a `Key: value` field; A1111's order is the order of these calls.
    pub fn field(mut self, key: &str, value: impl ToString) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// The text of the PNG `parameters` chunk, formatted as A1111's `create_infotext` does.
    pub fn to_text(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}: {}", quote(v)))
            .collect();
        text.push('\n');
        text.push_str(&fields.join(", "));
        text
    }
}

impl A1111Parameters {
    /// Reads an A1111 `parameters` text back, as A1111's `parse_generation_parameters` does:
    /// the last line holds the fields when at least three `Key: value` pairs are found there;
    /// lines from `Negative prompt:` on are the negative prompt; quoted values are unquoted.
    pub fn parse(text: &str) -> Self {
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let last = lines.last().copied().unwrap_or_default();
        let fields: Vec<(String, String)> = field_pattern()
            .captures_iter(last)
            .map(|c| (c[1].to_string(), unquote(&c[2])))
            .collect();
        let fields = if fields.len() >= 3 {
            lines.pop();
            fields
        } else {
            Vec::new()
        };
        let (mut prompt, mut negative) = (Vec::new(), Vec::new());
        for line in lines {
            let line = line.trim();
            match line.strip_prefix("Negative prompt:") {
                Some(rest) => negative.push(rest.trim()),
                None if !negative.is_empty() => negative.push(line),
                None => prompt.push(line),
            }
        }
        A1111Parameters {
            prompt: prompt.join("\n"),
            negative_prompt: negative.join("\n"),
            fields,
        }
    }

    /// The value of field `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One `Key: value` pair of the fields line (A1111's `re_param_code`).
fn field_pattern() -> &'static regex::Regex {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        regex::Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
            .expect("the pattern is valid")
    })
}

/// A value written quoted by `quote` is a JSON string; anything else is taken as it is.
fn unquote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        if let Ok(text) = serde_json::from_str::<String>(value) {
            return text;
        }
    }
    value.to_string()
}

/// A1111 quotes a value as a JSON string when it would otherwise break the field list. A value
/// that already looks quoted is quoted too (A1111 leaves it, and then reads it back altered).
fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) || (value.starts_with('"') && value.ends_with('"')) {
        serde_json::to_string(value).expect("a string always serialises")
    } else {
        value.to_string()
    }
}

impl A1111Parameters {
    /// The infotext A1111 would write for `info`, fields in A1111's order; `extra` fields go
    /// before `Version`, which A1111 always writes last.
    pub fn from_info(info: &GenerationInfo) -> Self {
        let mut p = A1111Parameters::new(&info.prompt, &info.negative_prompt);
        let mut field = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                p.fields.push((key.to_string(), value));
            }
        };
        field("Steps", info.steps.map(|v| v.to_string()));
        field("Sampler", info.sampler.clone());
        field("Schedule type", info.schedule.clone());
        field("CFG scale", info.cfg_scale.map(python_float));
        field("Seed", info.seed.map(|v| v.to_string()));
        field(
            "Size",
            info.width.zip(info.height).map(|(w, h)| format!("{w}x{h}")),
        );
        field("Model hash", info.model_hash.clone());
        field("Model", info.model.clone());
        field("Denoising strength", info.strength.map(python_float));
        field("Clip skip", info.clip_skip.map(|v| v.to_string()));
        // A1111's `extra_generation_params`, written only when not the default.
        let eta_key = match info.sampler.as_deref() {
            Some("DDIM" | "PLMS" | "UniPC") => "Eta DDIM",
            _ => "Eta",
        };
        field(eta_key, info.eta.map(python_float));
        field("Sigma noise", info.s_noise.map(python_float));
        field("CFG Rescale", info.guidance_rescale.map(python_float));
        for (key, value) in &info.extra {
            field(key, Some(value.clone()));
        }
        // Dream's own: A1111 would read an InvokeAI-syntax prompt as its own syntax, and run
        // one step more of an img2img made with InvokeAI's strength rule.
        field("Strength rule", info.strength_rule.clone());
        field(
            "Prompt syntax",
            info.syntax
                .filter(|&s| s != Syntax::A1111)
                .map(|s| s.to_string()),
        );
        field("Version", info.generator.clone());
        p
    }

    /// The fields Dream understands, the rest kept in `extra`. With a hires pass,
    /// `Denoising strength` belongs to that pass and stays in `extra` too.
    pub fn to_info(&self) -> GenerationInfo {
        let mut info = GenerationInfo::new(MetadataFormat::A1111);
        info.prompt = self.prompt.clone();
        info.negative_prompt = self.negative_prompt.clone();
        let hires = self.fields.iter().any(|(k, _)| k.starts_with("Hires"));
        for (key, value) in &self.fields {
            let known = match key.as_str() {
                "Steps" => parse_into(&mut info.steps, value),
                "Sampler" => set_text(&mut info.sampler, value),
                "Schedule type" => set_text(&mut info.schedule, value),
                "CFG scale" => parse_into(&mut info.cfg_scale, value),
                "Seed" => parse_into(&mut info.seed, value),
                "Size" => match value.split_once('x') {
                    Some((w, h)) => {
                        parse_into(&mut info.width, w) && parse_into(&mut info.height, h)
                    }
                    None => false,
                },
                "Model hash" => set_text(&mut info.model_hash, value),
                "Model" => set_text(&mut info.model, value),
                "Denoising strength" if !hires => parse_into(&mut info.strength, value),
                "Clip skip" => parse_into(&mut info.clip_skip, value),
                "Eta" | "Eta DDIM" => parse_into(&mut info.eta, value),
                "Sigma noise" => parse_into(&mut info.s_noise, value),
                // The CFG Rescale extension's key, and its older spellings.
                "CFG Rescale" | "CFG Rescale φ" | "CFG Rescale phi" => {
                    parse_into(&mut info.guidance_rescale, value)
                }
                "Prompt syntax" => parse_into(&mut info.syntax, value),
                "Strength rule" => set_text(&mut info.strength_rule, value),
                "Version" => set_text(&mut info.generator, value),
                _ => false,
            };
            if !known {
                info.extra.push((key.clone(), value.clone()));
            }
        }
        info
    }
}

/// Parses `text` into `slot`; false (slot untouched) when it is not a valid value.
fn parse_into<T: std::str::FromStr>(slot: &mut Option<T>, text: &str) -> bool {
    match text.trim().parse() {
        Ok(value) => {
            *slot = Some(value);
            true
        }
        Err(_) => false,
    }
}

fn set_text(slot: &mut Option<String>, text: &str) -> bool {
    *slot = Some(text.to_string());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a1111_infotext_layout() {
        // The layout of an A1111 1.x infotext, as shown in its wiki and written by create_infotext.
        let p = A1111Parameters::new("a cat, sitting", "blurry")
            .field("Steps", 20)
            .field("Sampler", "Euler")
            .field("CFG scale", 7.5)
            .field("Seed", 42)
            .field("Size", "512x512")
            .field("Model", "v1-5");
        assert_eq!(
            p.to_text(),
            "a cat, sitting\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5"
        );
    }

    #[test]
    fn reads_an_a1111_infotext() {
        // The example of A1111's parse_generation_parameters docstring, multi-line prompt included.
        let text = "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\nNegative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
        let p = A1111Parameters::parse(text);
        assert!(
            p.prompt.starts_with("girl with an artist's beret") && p.prompt.ends_with("intricate")
        );
        assert!(
            p.negative_prompt.starts_with("ugly, fat")
                && p.negative_prompt.ends_with("messy drawing")
        );
        assert_eq!(p.get("Sampler"), Some("Euler a"));
        assert_eq!(p.get("Seed"), Some("965400086"));
        assert_eq!(p.get("Size"), Some("512x512"));
        assert_eq!(p.get("Model hash"), Some("45dee52b"));
        assert_eq!(p.fields.len(), 6);
    }

    #[test]
    fn text_without_a_fields_line_is_all_prompt() {
        let p = A1111Parameters::parse("just a prompt\nsecond line");
        assert_eq!(p.prompt, "just a prompt\nsecond line");
        assert!(p.fields.is_empty() && p.negative_prompt.is_empty());
    }

    #[test]
    fn written_parameters_read_back_unchanged() {
        let p = A1111Parameters::new(
            "a \"quoted\" cat, (detailed:1.2)\nline two",
            "blurry, bad\nugly",
        )
        .field("Steps", 20)
        .field("Sampler", "DPM++ 2M")
        .field("Seed", 1)
        .field("Model", "odd, name: \"v2\"");
        assert_eq!(A1111Parameters::parse(&p.to_text()), p);
    }

    #[test]
    fn empty_negative_prompt_has_no_line_and_awkward_values_are_quoted() {
        let p = A1111Parameters::new("x", "").field("Model", "my, model: v2");
        assert_eq!(p.to_text(), "x\nModel: \"my, model: v2\"");
    }

    #[test]
    fn reads_an_a1111_1x_infotext_with_hires_and_lora() {
        // Layout of an A1111 1.9 txt2img infotext with a hires pass and a LoRA (fields in
        // create_infotext's order; Lora hashes quoted because the value holds ':' and ',').
        let text = "masterpiece, 1girl, <lora:detail:0.6>\nNegative prompt: lowres, bad hands\nSteps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 2840294726, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Lora hashes: \"detail: 7c6a3f2e1b9d\", Version: v1.9.4";
        let info = A1111Parameters::parse(text).to_info();
        assert_eq!(info.prompt, "masterpiece, 1girl, <lora:detail:0.6>");
        assert_eq!(info.negative_prompt, "lowres, bad hands");
        assert_eq!(info.steps, Some(28));
        assert_eq!(info.sampler.as_deref(), Some("DPM++ 2M"));
        assert_eq!(info.schedule.as_deref(), Some("Karras"));
        assert_eq!(info.cfg_scale, Some(6.5));
        assert_eq!(info.seed, Some(2840294726));
        assert_eq!((info.width, info.height), (Some(512), Some(768)));
        assert_eq!(info.model_hash.as_deref(), Some("6ce0161689"));
        assert_eq!(info.model.as_deref(), Some("v1-5-pruned-emaonly"));
        assert_eq!(info.clip_skip, Some(2));
        assert_eq!(
            info.strength, None,
            "the hires pass's denoise is no img2img strength"
        );
        assert_eq!(info.generator.as_deref(), Some("v1.9.4"));
        let extra: Vec<(&str, &str)> = info
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            extra,
            [
                ("Denoising strength", "0.45"),
                ("Hires upscale", "2"),
                ("Hires steps", "10"),
                ("Hires upscaler", "Latent"),
                ("Lora hashes", "detail: 7c6a3f2e1b9d"),
            ]
        );
    }

    #[test]
    fn info_round_trips_through_the_infotext() {
        let mut info = GenerationInfo::new(MetadataFormat::A1111);
        info.prompt = "a cat, (sitting:1.2)".into();
        info.negative_prompt = "blurry".into();
        info.steps = Some(20);
        info.sampler = Some("Euler a".into());
        info.schedule = Some("Automatic".into());
        info.cfg_scale = Some(7.0);
        info.seed = Some(42);
        info.width = Some(512);
        info.height = Some(640);
        info.model = Some("tiny".into());
        info.strength = Some(0.75);
        info.clip_skip = Some(2);
        info.generator = Some("dream 0.1.0".into());
        info.extra = vec![("ENSD".into(), "31337".into())];
        let text = A1111Parameters::from_info(&info).to_text();
        assert_eq!(
            text,
            "a cat, (sitting:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 42, Size: 512x640, Model: tiny, Denoising strength: 0.75, Clip skip: 2, ENSD: 31337, Version: dream 0.1.0"
        );
        assert_eq!(A1111Parameters::parse(&text).to_info(), info);
        // A prompt in InvokeAI's syntax says so, as does InvokeAI's strength rule; A1111's own
        // syntax and rule go unsaid.
        info.prompt = "a (cat)1.2".into();
        info.syntax = Some(Syntax::InvokeAi);
        info.strength_rule = Some("invokeai".into());
        let text = A1111Parameters::from_info(&info).to_text();
        assert!(
            text.ends_with(
                "ENSD: 31337, Strength rule: invokeai, Prompt syntax: invokeai, \
                 Version: dream 0.1.0"
            ),
            "{text}"
        );
        assert_eq!(A1111Parameters::parse(&text).to_info(), info);
        info.syntax = Some(Syntax::A1111);
        let text = A1111Parameters::from_info(&info).to_text();
        assert!(!text.contains("syntax"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "\\PC*") {
            let _ = A1111Parameters::parse(&text);
        }

        #[test]
        fn simple_fields_round_trip(prompt in "[a-z ()\\[\\]:,]{0,40}", value in "[a-zA-Z0-9 ,:\"\\\\]{1,20}") {
            let p = A1111Parameters::new(prompt.trim(), "").field("Steps", 1).field("Seed", 2).field("Model", value.trim());
            proptest::prop_assume!(!value.trim().is_empty() && !prompt.trim().is_empty());
            proptest::prop_assert_eq!(A1111Parameters::parse(&p.to_text()), p);
        }
    }

    /// A1111's `extra_generation_params` keys for the sampler options: `Eta` (k-diffusion
    /// samplers, `sd_samplers_kdiffusion.py`) or `Eta DDIM` (its timestep samplers, DDIM,
    /// PLMS and UniPC), `Sigma noise`, and the CFG Rescale extension's `CFG Rescale` (its
    /// older `CFG Rescale φ` read too).
    #[test]
    fn sampler_options_use_a1111_keys() {
        let info = GenerationInfo {
            steps: Some(20),
            sampler: Some("Euler a".into()),
            eta: Some(0.5),
            s_noise: Some(1.003),
            guidance_rescale: Some(0.7),
            generator: Some("dream 0.1.0".into()),
            ..GenerationInfo::new(MetadataFormat::A1111)
        };
        let text = A1111Parameters::from_info(&info).to_text();
        assert!(
            text.ends_with(
                "Steps: 20, Sampler: Euler a, Eta: 0.5, Sigma noise: 1.003, CFG Rescale: 0.7, \
                 Version: dream 0.1.0"
            ),
            "{text}"
        );
        assert_eq!(A1111Parameters::parse(&text).to_info(), info);
        let ddim = GenerationInfo {
            sampler: Some("DDIM".into()),
            ..info
        };
        let text = A1111Parameters::from_info(&ddim).to_text();
        assert!(text.contains("Sampler: DDIM, Eta DDIM: 0.5,"), "{text}");
        assert_eq!(A1111Parameters::parse(&text).to_info().eta, Some(0.5));
        let old = A1111Parameters::parse("a\nSteps: 20, Seed: 1, CFG Rescale φ: 0.7").to_info();
        assert_eq!((old.guidance_rescale, old.extra.len()), (Some(0.7), 0));
    }
}
