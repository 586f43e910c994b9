//! Where images go: InvokeAI's file names (`--fnformat`) and its prompt logs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use dream_pipeline::Txt2Img;

/// InvokeAI's file name: a six-digit counter, then the seed.
pub const DEFAULT_FNFORMAT: &str = "{prefix}.{seed}.png";

/// The value of an InvokeAI `--fnformat` wildcard for `request`; `None` for an unknown key.
fn wildcard(key: &str, prefix: &str, request: &Txt2Img, sampler_name: &str) -> Option<String> {
    Some(match key {
        "prefix" => prefix.to_string(),
        "seed" => request.seed.to_string(),
        // A prompt with a slash would otherwise name a folder.
        "prompt" => request.prompt.replace(['/', '\\'], "_"),
        "steps" => request.steps.to_string(),
        "cfg_scale" => request.cfg_scale.to_string(),
        "width" => request.width.to_string(),
        "height" => request.height.to_string(),
        "sampler" | "sampler_name" => sampler_name.to_string(),
        "strength" => request.init.as_ref()?.strength.to_string(),
        _ => return None,
    })
}

/// `template` with each `{key}` replaced by `value(key)`.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut name = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        name.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| anyhow!("--fnformat {template}: a {{ is not closed"))?;
        let key = &rest[open + 1..open + close];
        name.push_str(&value(key).ok_or_else(|| {
            anyhow!(
                "--fnformat {template}: unknown wildcard {{{key}}} (known: prefix, seed, prompt, \
                 steps, cfg_scale, width, height, sampler, strength for img2img)"
            )
        })?);
        rest = &rest[open + close + 1..];
    }
    name.push_str(rest);
    Ok(name)
}

/// Fails now, before anything renders, if `template` cannot name `request`'s images.
pub fn check_fnformat(template: &str, request: &Txt2Img, sampler_name: &str) -> Result<()> {
    let name = fill(template, |key| {
        wildcard(key, "000000", request, sampler_name)
    })?;
    if name.is_empty() || name.ends_with('/') {
        bail!("--fnformat {template} names no file");
    }
    Ok(())
}

/// The next image's six-digit number in `outdir`: one past the highest there.
pub fn next_number(outdir: &Path, seed: u32) -> Result<String> {
    let numbered = dream_pipeline::image::next_output_path(outdir, seed)?;
    Ok(numbered
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.split('.').next())
        .unwrap_or_default()
        .to_string())
}

/// The next file for `request` in `outdir`; `{prefix}` is [`next_number`]. Never an existing
/// file.
pub fn image_path(
    outdir: &Path,
    template: &str,
    request: &Txt2Img,
    sampler_name: &str,
) -> Result<PathBuf> {
    let prefix = next_number(outdir, request.seed)?;
    let name = fill(template, |key| {
        wildcard(key, &prefix, request, sampler_name)
    })?;
    let path = outdir.join(name);
    if path.exists() {
        bail!(
            "{} exists already; not overwriting it (put {{prefix}} in --fnformat)",
            path.display()
        );
    }
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    Ok(path)
}

/// Appends the image and its command to InvokeAI's prompt logs in `outdir`:
/// `invoke_log.txt` (`path: command`) and `invoke_log.md` (a heading, the image, the command).
pub fn log(outdir: &Path, path: &Path, command: &str) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let entries = [
        ("invoke_log.txt", format!("{}: {command}\n", path.display())),
        (
            "invoke_log.md",
            format!("## {file_name}\n![]({file_name})\n\n{command}\n"),
        ),
    ];
    for (log, entry) in entries {
        let log = outdir.join(log);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(entry.as_bytes()))
            .with_context(|| format!("cannot write {}", log.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_name_files_as_invokeai_does() {
        let request = Txt2Img {
            steps: 20,
            ..Txt2Img::new("a cat/dog", 42)
        };
        let name = |template: &str| {
            fill(template, |key| wildcard(key, "000007", &request, "k_lms"))
                .map_err(|e| e.to_string())
        };
        assert_eq!(name(DEFAULT_FNFORMAT).unwrap(), "000007.42.png");
        assert_eq!(
            name("{prompt}-{steps}-{cfg_scale}-{sampler}-{width}x{height}.png").unwrap(),
            "a cat_dog-20-7.5-k_lms-512x512.png"
        );
        assert!(name("{nonesuch}.png").unwrap_err().contains("{nonesuch}"));
        assert!(name("{seed.png").unwrap_err().contains("not closed"));
        // img2img's strength only where there is an init image.
        assert!(name("{strength}.png").is_err());
    }
}
