//! The prompt switches of the `dream` binary: `-t`, `--syntax`, `-x`, `--negative_prompt` and
//! `--prompt_matrix`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dream-prompts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `dream PROMPT` on the tiny model, one DDIM step at 64×64, into `out`.
fn dream(prompt: &str, out: &Path, extra: &[&str]) -> Output {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny");
    Command::new(env!("CARGO_BIN_EXE_dream"))
        .args([prompt, "--model", model.to_str().unwrap()])
        .args([
            "-s", "1", "-W", "64", "-H", "64", "-A", "ddim", "-S", "7", "-o",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::fs::File::open(path).unwrap())
        .read_info()
        .unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    buffer.truncate(info.buffer_size());
    (info.width, info.height, buffer)
}

#[test]
fn log_tokenization_syntax_and_negative_prompt() {
    let out = temp_dir("tokens");
    let stdout = succeeded(&dream(
        "a cat++ [blurry] withLora(x, 0.5)",
        &out,
        &["-t", "--syntax", "invokeai", "--negative_prompt", "ugly"],
    ));
    assert!(
        stdout.starts_with(
            "prompt:\n  chunk 1 (2 tokens): a (cat:1.21)\n\
             negative prompt:\n  chunk 1 (2 tokens): ugly blurry\n\
             extra networks: <lora:x:0.5>\n"
        ),
        "{stdout}"
    );
    // The printed command makes the image again.
    assert!(
        stdout.contains(" --syntax invokeai --negative_prompt ugly"),
        "{stdout}"
    );
    // -x belongs to InvokeAI's legacy blends.
    let output = dream("a:1 b:3", &out, &["-x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--syntax invokeai"));
    succeeded(&dream("a:1 b:3", &out, &["-x", "--syntax", "invokeai"]));
    let output = dream("a cat", &out, &["--syntax", "comfyui"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("choose a1111 or invokeai"));
}

#[test]
fn prompt_matrix_renders_every_combination_in_one_grid() {
    let out = temp_dir("matrix");
    let stdout = succeeded(&dream(
        "a red apple|shiny|on a table",
        &out,
        &["--prompt_matrix"],
    ));
    assert!(
        stdout.starts_with("columns: - | shiny\nrows: - | on a table\n"),
        "{stdout}"
    );
    let (width, height, grid) = pixels(&out.join("000001.7.png"));
    assert_eq!((width, height), (128, 128));
    // The bottom-right cell is "a red apple, shiny, on a table" with the same seed.
    succeeded(&dream("a red apple, shiny, on a table", &out, &[]));
    let (_, _, alone) = pixels(&out.join("000002.7.png"));
    for y in 0..64 {
        let row = &grid[(64 + y) * 128 * 3..(65 + y) * 128 * 3];
        assert_eq!(
            &row[64 * 3..],
            &alone[y * 64 * 3..(y + 1) * 64 * 3],
            "row {y}"
        );
    }
    let log = std::fs::read_to_string(out.join("invoke_log.txt")).unwrap();
    assert!(
        log.contains("\"a red apple|shiny|on a table\" -s1"),
        "{log}"
    );
    assert!(
        log.lines().next().unwrap().ends_with(" --prompt_matrix"),
        "{log}"
    );
}
