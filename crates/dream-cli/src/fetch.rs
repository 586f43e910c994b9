//! `!fetch`: the `invoke>` command that makes an image again, from the metadata any tool
//! (Dream, InvokeAI, A1111, ComfyUI) stored in it.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use dream_core::metadata::{read_generation_info, GenerationInfo, MetadataFormat};
use dream_core::prompt::Syntax;
use dream_core::sampler::{SamplerChoice, ScheduleKind};

/// The command for the image at `path`; `karras_max` is the session's `--karras_max` (an
/// InvokeAI sampler name stands for the schedule it picks by step count).
pub fn command_of(path: &Path, karras_max: usize) -> Result<String> {
    let chunks = dream_pipeline::image::read_png_text(path)?;
    let info = read_generation_info(&chunks)
        .ok_or_else(|| anyhow!("{}: no generation parameters found", path.display()))?;
    Ok(command(&info, karras_max))
}

/// `!fetch PATTERN OUT.txt`: the commands of every image matching PATTERN, one a line.
pub fn write_commands(pattern: &str, out: &Path, karras_max: usize) -> Result<usize> {
    let paths: Vec<_> = glob::glob(pattern)
        .with_context(|| format!("bad file pattern {pattern}"))?
        .filter_map(|entry| entry.ok())
        .collect();
    anyhow::ensure!(!paths.is_empty(), "no file matches {pattern}");
    let mut lines = String::new();
    for path in &paths {
        lines.push_str(&command_of(path, karras_max)?);
        lines.push('\n');
    }
    std::fs::write(out, lines).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(paths.len())
}

/// The `invoke>` line for `info`.
pub fn command(info: &GenerationInfo, karras_max: usize) -> String {
    let mut words = vec![quote(&info.prompt)];
    if syntax(info) == Syntax::InvokeAi {
        words.push("--syntax invokeai".into());
    }
    let mut switch = |flag: &str, value: Option<String>| {
        if let Some(value) = value {
            words.push(format!("{flag} {value}"));
        }
    };
    switch(
        "--negative_prompt",
        (!info.negative_prompt.is_empty()).then(|| shell_quote(&info.negative_prompt)),
    );
    switch("-s", info.steps.map(|v| v.to_string()));
    switch("-S", info.seed.map(|v| v.to_string()));
    switch("-W", info.width.map(|v| v.to_string()));
    switch("-H", info.height.map(|v| v.to_string()));
    switch("-C", info.cfg_scale.map(|v| v.to_string()));
    switch("-A", sampler(info, karras_max).map(|s| shell_quote(&s)));
    switch(
        "--clip_skip",
        info.clip_skip.filter(|&c| c > 1).map(|c| c.to_string()),
    );
    switch(
        "--perlin",
        info.perlin.filter(|&p| p > 0.0).map(|p| p.to_string()),
    );
    if let Some(axes) = &info.seamless {
        words.push(format!(
            "--seamless --seamless_axes {}",
            axes.replace(',', "")
        ));
    }
    if info.hires_fix {
        words.push("--hires_fix".into());
    }
    // A1111's "Refiner" is its title, `name [short hash]`: the name is what --refiner finds
    // in the registry.
    let extra = |key: &str| info.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    if let Some(title) = extra("Refiner") {
        let name = title
            .rsplit_once(" [")
            .map_or(title.as_str(), |(name, _)| name);
        words.push(format!("--refiner {}", shell_quote(name)));
        if let Some(switch_at) = extra("Refiner switch at") {
            words.push(format!("--refiner_switch_at {switch_at}"));
        }
    }
    if !info.variations.is_empty() {
        let chain: Vec<String> = info
            .variations
            .iter()
            .map(|(seed, weight)| format!("{seed}:{weight}"))
            .collect();
        words.push(format!("-V {}", chain.join(",")));
    }
    words.join(" ")
}

/// The prompt's syntax: as recorded, else InvokeAI's for InvokeAI's images (`[negative
/// words]`, `word+`) and A1111's for the rest.
fn syntax(info: &GenerationInfo) -> Syntax {
    info.syntax.unwrap_or(if made_by_invokeai(info) {
        Syntax::InvokeAi
    } else {
        Syntax::A1111
    })
}

/// Whether InvokeAI wrote the metadata (Dream writes the same chunks, with its own app id).
fn made_by_invokeai(info: &GenerationInfo) -> bool {
    let invokeai_chunk = matches!(
        info.format,
        MetadataFormat::InvokeAiJson | MetadataFormat::InvokeAiCommand
    );
    let by_dream = info
        .generator
        .as_deref()
        .is_some_and(|g| g.starts_with("dream "));
    invokeai_chunk && !by_dream
}

/// The sampler name that gives back the recorded sampler *and* schedule: the recorded name
/// when its default schedule is the recorded one, else A1111's "<sampler> <schedule>".
fn sampler(info: &GenerationInfo, karras_max: usize) -> Option<String> {
    let name = info.sampler.clone()?;
    let (Ok(choice), Some(Ok(schedule)), Some(steps)) = (
        name.parse::<SamplerChoice>(),
        info.schedule.as_deref().map(str::parse::<ScheduleKind>),
        info.steps,
    ) else {
        return Some(name);
    };
    if choice.schedule_for(steps, karras_max) == schedule {
        return Some(name);
    }
    let combined = format!("{} {}", choice.sampler.a1111_name(), schedule.a1111_name());
    match combined.parse::<SamplerChoice>() {
        Ok(back) if back.sampler == choice.sampler && back.schedule == Some(schedule) => {
            Some(combined)
        }
        _ => Some(name),
    }
}

/// A word as the `invoke>` line (and a POSIX shell) reads it back.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,+=@%".contains(c));
    if plain {
        word.to_string()
    } else {
        quote(word)
    }
}

/// A word in double quotes, as shlex reads it back.
pub fn quote(word: &str) -> String {
    format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dream_core::metadata::{invokeai, A1111Parameters};

    #[test]
    fn invokeai_images_come_back_in_invokeai_syntax() {
        // InvokeAI 2.3's sd-metadata, as its docs show it.
        let json = r#"{"model": "stable diffusion", "model_weights": "stable-diffusion-1.5", "app_id": "invoke-ai/InvokeAI", "app_version": "2.3.0", "image": {"prompt": [{"prompt": "a cute child playing in the park [blurry, lowres]", "weight": 1.0}], "steps": 50, "cfg_scale": 7.5, "threshold": 0, "perlin": 0, "height": 512, "width": 512, "seed": 3498014304, "seamless": false, "hires_fix": false, "type": "txt2img", "postprocessing": null, "sampler": "k_lms", "variations": []}}"#;
        let info = invokeai::read_sd_metadata(json).unwrap();
        assert_eq!(
            command(&info, 30),
            "\"a cute child playing in the park\" --syntax invokeai --negative_prompt \
             \"blurry, lowres\" -s 50 -S 3498014304 -W 512 -H 512 -C 7.5 -A k_lms"
        );
        // Dream's own sd-metadata is in A1111's syntax.
        let dream = json
            .replace("invoke-ai/InvokeAI", "dream")
            .replace("2.3.0", "0.1.0");
        let info = invokeai::read_sd_metadata(&dream).unwrap();
        assert!(!command(&info, 30).contains("--syntax"));
        // Unless it records InvokeAI's, in sd-metadata or A1111's infotext.
        let recorded = dream.replace(r#""variations": []"#, r#""prompt_syntax": "invokeai""#);
        let info = invokeai::read_sd_metadata(&recorded).unwrap();
        assert!(command(&info, 30).contains(" --syntax invokeai "));
        let info = A1111Parameters::parse("a (cat)1.2\nSteps: 8, Seed: 1, Prompt syntax: invokeai")
            .to_info();
        assert_eq!(
            command(&info, 30),
            r#""a (cat)1.2" --syntax invokeai -s 8 -S 1"#
        );
    }

    #[test]
    fn the_refiner_comes_back_by_name() {
        let info = A1111Parameters::parse(
            "cat\nSteps: 8, Seed: 1, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.7",
        )
        .to_info();
        assert_eq!(
            command(&info, 30),
            r#""cat" -s 8 -S 1 --refiner sd_xl_refiner_1.0 --refiner_switch_at 0.7"#
        );
    }

    #[test]
    fn the_negative_prompt_comes_back() {
        let info = A1111Parameters::parse(
            "cat\nNegative prompt: ugly, blurry\nSteps: 8, Seed: 1, CFG scale: 5",
        )
        .to_info();
        assert_eq!(
            command(&info, 30),
            r#""cat" --negative_prompt "ugly, blurry" -s 8 -S 1 -C 5"#
        );
    }

    #[test]
    fn the_recorded_schedule_survives() {
        let mut info = GenerationInfo::new(MetadataFormat::A1111);
        info.prompt = "a \"red\" apple".into();
        info.steps = Some(20);
        info.seed = Some(42);
        info.cfg_scale = Some(7.0);
        // InvokeAI's k_euler_a below --karras_max is Karras: the name alone says it.
        info.sampler = Some("k_euler_a".into());
        info.schedule = Some("karras".into());
        assert_eq!(
            command(&info, 30),
            r#""a \"red\" apple" -s 20 -S 42 -C 7 -A k_euler_a"#
        );
        // From --karras_max steps on it would not be: A1111's combined name keeps Karras.
        assert!(command(&info, 10).ends_with(r#"-A "Euler a Karras""#));
        // A1111's own labels.
        let info = A1111Parameters::parse(
            "cat\nSteps: 8, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 1, \
             Size: 64x64, Clip skip: 2",
        )
        .to_info();
        assert_eq!(
            command(&info, 30),
            r#""cat" -s 8 -S 1 -W 64 -H 64 -C 5 -A "DPM++ 2M" --clip_skip 2"#
        );
    }
}
