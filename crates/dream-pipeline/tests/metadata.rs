//! PNG metadata as written and read: every saved image carries A1111's `parameters` and
//! InvokeAI's `Dream` and `sd-metadata`, each read back to the request that made it, and Dream's
//! readers agree with an independent one (the `sd-parsers` package, run once by
//! tools/parity/metadata_oracle.py on fixtures/metadata/dream_64.png).

use dream_core::metadata::{
    invokeai, read_generation_info, A1111Parameters, GenerationInfo, MetadataFormat,
};
use dream_pipeline::image::read_png_text;
use dream_pipeline::{Sampler, ScheduleKind, Txt2Img};
use dream_test_support::{fixture, tiny_model};
use serde_json::Value;

fn chunk<'a>(chunks: &'a [(String, String)], keyword: &str) -> &'a str {
    chunks
        .iter()
        .find(|(k, _)| k == keyword)
        .map(|(_, text)| text.as_str())
        .unwrap_or_else(|| panic!("no {keyword} chunk in {chunks:?}"))
}

#[test]
fn saved_images_carry_three_chunks_that_read_back_to_the_request() {
    let model = tiny_model();
    let mut request = Txt2Img::new("a \"red\" apple, (shiny:1.2)", 7);
    request.negative_prompt = "blurry, dark".into();
    request.steps = 2;
    request.width = 64;
    request.height = 64;
    request.cfg_scale = 6.0;
    request.sampler = Sampler::DpmPp2M;
    request.schedule = ScheduleKind::Karras;
    request.clip_skip = 2;
    let generated = model.generate(&request, &mut |_| {}).unwrap();
    let dir = std::env::temp_dir().join(format!("dream-metadata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apple.png");
    generated.save(&path, "tiny").unwrap();
    let chunks = read_png_text(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let keywords: Vec<&str> = chunks.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keywords, ["parameters", "Dream", "sd-metadata"]);

    // What the request says, in each tool's names.
    let mut a1111 = GenerationInfo::new(MetadataFormat::A1111);
    a1111.prompt = "a \"red\" apple, (shiny:1.2)".into();
    a1111.negative_prompt = "blurry, dark".into();
    a1111.steps = Some(2);
    a1111.cfg_scale = Some(6.0);
    a1111.seed = Some(7);
    a1111.sampler = Some("DPM++ 2M".into());
    a1111.schedule = Some("Karras".into());
    a1111.width = Some(64);
    a1111.height = Some(64);
    a1111.model = Some("tiny".into());
    a1111.clip_skip = Some(2);
    a1111.generator = Some(format!("dream {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        A1111Parameters::parse(chunk(&chunks, "parameters")).to_info(),
        a1111
    );

    let sd_metadata = GenerationInfo {
        format: MetadataFormat::InvokeAiJson,
        sampler: Some("k_dpmpp_2".into()),
        schedule: Some("karras".into()),
        ..a1111.clone()
    };
    assert_eq!(
        invokeai::read_sd_metadata(chunk(&chunks, "sd-metadata")).unwrap(),
        sd_metadata
    );
    assert_eq!(read_generation_info(&chunks).unwrap(), sd_metadata);

    // The command has no place for schedule, clip skip, model or program.
    let dream = GenerationInfo {
        format: MetadataFormat::InvokeAiCommand,
        schedule: None,
        clip_skip: None,
        model: None,
        generator: None,
        ..sd_metadata
    };
    assert_eq!(
        chunk(&chunks, "Dream"),
        r#""a \"red\" apple, (shiny:1.2) [blurry, dark]" -s 2 -S 7 -W 64 -H 64 -C 6.0 -A k_dpmpp_2"#
    );
    assert_eq!(
        invokeai::read_dream_command(chunk(&chunks, "Dream")).unwrap(),
        dream
    );
}

/// Dream's reading of one chunk of the oracle image agrees with sd-parsers' reading of it.
fn assert_agrees(info: &GenerationInfo, oracle: &Value) {
    let text = |v: &Value| v.as_str().unwrap().to_string();
    let prompts: Vec<String> = oracle["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let negatives: Vec<String> = oracle["negative_prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(info.prompt, prompts.join(" "));
    assert_eq!(info.negative_prompt, negatives.join(" "));
    assert_eq!(info.sampler.as_deref(), oracle["sampler"].as_str());
    let parameter = |key: &str| oracle["sampler_parameters"][key].as_str();
    assert_eq!(
        info.steps.map(|v| v.to_string()).as_deref(),
        parameter("steps")
    );
    assert_eq!(
        info.seed.map(|v| v.to_string()).as_deref(),
        parameter("seed")
    );
    let cfg: f64 = parameter("cfg_scale").unwrap().parse().unwrap();
    assert_eq!(info.cfg_scale, Some(cfg));
    assert_eq!(info.model.as_deref(), oracle["model"].as_str());
}

#[test]
fn readers_agree_with_sd_parsers() {
    let chunks = read_png_text(&fixture("metadata/dream_64.png")).unwrap();
    let oracle: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("metadata/sd_parsers_oracle.json")).unwrap(),
    )
    .unwrap();
    let oracle = &oracle["chunks"];

    let a1111 = A1111Parameters::parse(chunk(&chunks, "parameters")).to_info();
    let expected = &oracle["parameters"];
    assert_eq!(expected["generator"], "AUTOMATIC1111");
    assert_agrees(&a1111, expected);
    assert_eq!(
        a1111.schedule.as_deref(),
        expected["sampler_parameters"]["scheduler"].as_str()
    );
    let size = format!("{}x{}", a1111.width.unwrap(), a1111.height.unwrap());
    assert_eq!(Some(size.as_str()), expected["metadata"]["Size"].as_str());
    assert_eq!(
        a1111.clip_skip.map(|v| v.to_string()).as_deref(),
        expected["metadata"]["Clip skip"].as_str()
    );
    assert_eq!(
        a1111.generator.as_deref(),
        expected["metadata"]["Version"].as_str()
    );

    for (keyword, info) in [
        (
            "Dream",
            invokeai::read_dream_command(chunk(&chunks, "Dream")).unwrap(),
        ),
        (
            "sd-metadata",
            invokeai::read_sd_metadata(chunk(&chunks, "sd-metadata")).unwrap(),
        ),
    ] {
        let expected = &oracle[keyword];
        assert_eq!(expected["generator"], "InvokeAI", "{keyword}");
        assert_agrees(&info, expected);
        let metadata = &expected["metadata"];
        assert_eq!(
            info.width.map(|v| v.to_string()).as_deref(),
            metadata["width"].as_str()
        );
        assert_eq!(
            info.height.map(|v| v.to_string()).as_deref(),
            metadata["height"].as_str()
        );
    }
    let sd_metadata = &oracle["sd-metadata"]["metadata"];
    let info = invokeai::read_sd_metadata(chunk(&chunks, "sd-metadata")).unwrap();
    assert_eq!(info.schedule.as_deref(), sd_metadata["schedule"].as_str());
    assert_eq!(
        info.generator,
        Some(format!(
            "{} {}",
            sd_metadata["app_id"].as_str().unwrap(),
            sd_metadata["app_version"].as_str().unwrap()
        ))
    );
}
