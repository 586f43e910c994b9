//! `dream info FILE…`: what made each image, whichever tool wrote it.

use std::path::Path;

use anyhow::Result;
use dream_core::metadata::{read_generation_info, A1111Parameters, GenerationInfo};
use dream_core::sampler::{SamplerChoice, ScheduleKind};

/// Prints the generation parameters stored in each image, in A1111's layout, whichever tool
/// (A1111, InvokeAI, ComfyUI, Dream) wrote them.
pub fn info(paths: &[String]) -> Result<()> {
    anyhow::ensure!(
        !paths.is_empty(),
        "usage: dream info IMAGE.png [IMAGE.png ...]"
    );
    for path in paths {
        let chunks = dream_pipeline::image::read_png_text(Path::new(path))?;
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
