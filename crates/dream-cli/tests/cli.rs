//! The `dream` binary, driven as a user drives it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dream-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dream"))
        .args(args)
        .output()
        .unwrap()
}

fn png_text(path: &Path, keyword: &str) -> Option<String> {
    let reader = png::Decoder::new(std::fs::File::open(path).unwrap())
        .read_info()
        .unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == keyword)
        .map(|c| c.text.clone())
}

#[test]
fn renders_numbered_images_with_their_parameters() {
    let out = temp_dir("render");
    let model = fixture("tiny");
    let output = dream(&[
        "a red apple",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "3",
        "-S",
        "42",
        "-W",
        "64",
        "-H",
        "64",
        "-C",
        "7.5",
        "-A",
        "ddim",
        "-n",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let first = out.join("000001.42.png");
    let second = out.join("000002.43.png");
    assert!(first.exists() && second.exists(), "{stdout}");
    // The printed line is the command that makes the image again.
    assert!(
        stdout.contains(&format!(
            "{}: \"a red apple\" -s3 -W64 -H64 -C7.5 -Addim -S42",
            first.display()
        )),
        "{stdout}"
    );
    assert_eq!(
        png_text(&first, "parameters").unwrap(),
        format!("a red apple\nSteps: 3, Sampler: DDIM, Schedule type: Uniform, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny, Version: dream {}", env!("CARGO_PKG_VERSION"))
    );

    // Batch size never changes an image: seed 43 alone gives the second image of the batch.
    let alone = temp_dir("alone");
    let output = dream(&[
        "a red apple",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "3",
        "-S",
        "43",
        "-W",
        "64",
        "-H",
        "64",
        "-A",
        "ddim",
        "-o",
        alone.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let pixels = |p: &Path| {
        let mut reader = png::Decoder::new(std::fs::File::open(p).unwrap())
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();
        buf
    };
    assert_eq!(pixels(&second), pixels(&alone.join("000001.43.png")));
}

#[test]
fn sampler_names_of_every_tool_choose_sampler_and_schedule() {
    let model = fixture("tiny");
    // (the -A value, the A1111 Sampler / Schedule type written to the image)
    let cases = [
        ("k_euler_a", "Euler a, Schedule type: Karras"), // InvokeAI: Karras below --karras_max
        ("DPM++ 2M Karras", "DPM++ 2M, Schedule type: Karras"),
        ("dpmpp_2m", "DPM++ 2M, Schedule type: Uniform"), // ComfyUI's default is "normal"
    ];
    for (name, expected) in cases {
        let out = temp_dir("names");
        let output = dream(&[
            "x",
            "--model",
            model.to_str().unwrap(),
            "-s",
            "2",
            "-S",
            "7",
            "-W",
            "64",
            "-H",
            "64",
            "-A",
            name,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parameters = png_text(&out.join("000001.7.png"), "parameters").unwrap();
        assert!(
            parameters.contains(&format!("Sampler: {expected},")),
            "{name}: {parameters}"
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!(
                "-A{}",
                if name.contains(' ') {
                    format!("{name:?}")
                } else {
                    name.to_string()
                }
            )),
            "{stdout}"
        );
    }
    // Clip skip is recorded as A1111 records it.
    let out = temp_dir("clip-skip");
    let output = dream(&[
        "x",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "1",
        "-S",
        "7",
        "-W",
        "64",
        "-H",
        "64",
        "--clip_skip",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parameters = png_text(&out.join("000001.7.png"), "parameters").unwrap();
    assert!(parameters.contains(", Clip skip: 2, "), "{parameters}");
    // InvokeAI's rule: from --karras_max steps on, the model's own schedule.
    let out = temp_dir("karras-max");
    let output = dream(&[
        "x",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "2",
        "-S",
        "7",
        "-W",
        "64",
        "-H",
        "64",
        "-A",
        "k_euler_a",
        "--karras_max",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let parameters = png_text(&out.join("000001.7.png"), "parameters").unwrap();
    assert!(
        parameters.contains("Sampler: Euler a, Schedule type: Uniform,"),
        "{parameters}"
    );
}

#[test]
fn img2img_from_an_init_image() {
    let out = temp_dir("img2img");
    let model = fixture("tiny");
    let init = fixture("images/init_64x64.png");
    let output = dream(&[
        "a red apple",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "5",
        "-S",
        "42",
        "-A",
        "ddim",
        "-I",
        init.to_str().unwrap(),
        "-f",
        "0.6",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(" -f0.6"), "{stdout}");
    let path = out.join("000001.42.png");
    let parameters = png_text(&path, "parameters").unwrap();
    // The size defaults to the init image's; A1111 writes the strength after the model.
    assert!(
        parameters.contains("Size: 64x64, Model: tiny, Denoising strength: 0.6,"),
        "{parameters}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let model = fixture("tiny");
    let model = model.to_str().unwrap();
    let init = fixture("images/init_64x64.png")
        .to_str()
        .unwrap()
        .to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["x", "--model", "/no/such/model.safetensors"],
            "/no/such/model.safetensors",
        ),
        (&["x", "--model", model, "-A", "k_nonsense"], "k_nonsense"),
        (&["x", "--model", model, "--bogus"], "--bogus"),
        (
            &["x", "--model", model, "-W", "65", "-s", "1"],
            "multiples of 8",
        ),
        (
            &["x", "--model", model, "-I", "/no/such/init.png", "-s", "1"],
            "/no/such/init.png",
        ),
        (
            &["x", "--model", model, "-I", &init, "-f", "1.5", "-s", "1"],
            "strength must be between 0 and 1, got 1.5",
        ),
        (
            &["x", "--model", model, "-I", &init, "-W", "128", "-s", "1"],
            "resizing init images",
        ),
    ];
    for (args, needle) in cases {
        let output = dream(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn words_past_the_first_75_tokens_still_count() {
    // Long prompts are encoded in 75-token chunks (A1111), not cut at 77: changing only the
    // last word of a 76-token prompt changes the image.
    let model = fixture("tiny");
    let render = |last_word: &str| {
        let out = temp_dir(&format!("long-{last_word}"));
        let prompt = format!("{} {last_word}", "apple ".repeat(75));
        let output = dream(&[
            &prompt,
            "--model",
            model.to_str().unwrap(),
            "-s",
            "1",
            "-S",
            "1",
            "-W",
            "64",
            "-H",
            "64",
            "-A",
            "ddim",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read(out.join("000001.1.png")).unwrap()
    };
    assert_ne!(render("zebra"), render("giraffe"));
}

#[test]
fn info_prints_the_parameters_of_images_from_any_tool() {
    let out = temp_dir("info");
    let model = fixture("tiny");
    let output = dream(&[
        "a cat, (sitting:1.2)",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "2",
        "-S",
        "5",
        "-W",
        "64",
        "-H",
        "64",
        "-A",
        "DPM++ 2M Karras",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let ours = out.join("000001.5.png");
    let output = dream(&["info", ours.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .contains("a cat, (sitting:1.2)\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras,"),
        "{stdout}"
    );
    assert!(stdout.contains("Seed: 5, Size: 64x64"), "{stdout}");

    // A PNG without parameters, and a file that is not a PNG.
    let plain = fixture("images/init_64x64.png");
    let output = dream(&["info", plain.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("no generation parameters"));
    let not_png = fixture("tiny/model_index.json");
    let output = dream(&["info", not_png.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("model_index.json"),
        "{stderr}"
    );
}
