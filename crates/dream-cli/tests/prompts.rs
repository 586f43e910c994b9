//! The prompt switches of the `dream` binary: `-t`, `--syntax`, `-x`, `--negative_prompt` and
//! `--prompt_matrix`.

mod common;

use std::path::Path;
use std::process::Output;

use common::{failed, read_rgb, render, succeeded, temp_dir};

/// `dream PROMPT` on the tiny model, one DDIM step at 64×64, into `out`.
fn dream(prompt: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["-s", "1", "-W", "64", "-H", "64", "-A", "ddim", "-S", "7"];
    args.extend_from_slice(extra);
    render(prompt, out, &args)
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
    let stderr = failed(&dream("a:1 b:3", &out, &["-x"]));
    assert!(stderr.contains("--syntax invokeai"), "{stderr}");
    succeeded(&dream("a:1 b:3", &out, &["-x", "--syntax", "invokeai"]));
    let stderr = failed(&dream("a cat", &out, &["--syntax", "comfyui"]));
    assert!(stderr.contains("choose a1111 or invokeai"), "{stderr}");
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
    let grid = read_rgb(&out.join("000001.7.png"));
    // 2×2 cells of 64 under a 12-pixel band of labels, right of a 48-pixel one.
    assert_eq!((grid.width, grid.height), (48 + 128, 12 + 128));
    // The bottom-right cell is "a red apple, shiny, on a table" with the same seed.
    succeeded(&dream("a red apple, shiny, on a table", &out, &[]));
    let alone = read_rgb(&out.join("000002.7.png")).pixels;
    for y in 0..64 {
        let row = &grid.pixels[(12 + 64 + y) * 176 * 3..(12 + 65 + y) * 176 * 3];
        assert_eq!(
            &row[(48 + 64) * 3..],
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
