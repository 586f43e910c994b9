//! What the `dream` binary's test suites share: running it, scratch folders and reading the
//! images it writes.
// Each suite uses a part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub use dream_pipeline::image::{RgbImage, RgbaImage};
pub use dream_test_support::fixture;

/// An empty folder of this test run's own under the system's temp folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dream-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `dream` binary, ready for arguments and environment.
pub fn dream_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dream"))
}

/// Runs `dream ARGS`.
pub fn dream(args: &[&str]) -> Output {
    dream_command().args(args).output().unwrap()
}

/// `dream FIRST… --model <fixtures/tiny> -o OUT`: FIRST is the prompt, or nothing for an
/// `invoke>` session.
pub fn tiny(first: &[&str], out: &Path) -> Command {
    let mut command = dream_command();
    command
        .args(first)
        .arg("--model")
        .arg(fixture("tiny"))
        .arg("-o")
        .arg(out);
    command
}

/// Runs `dream PROMPT --model <fixtures/tiny> -o OUT ARGS…`.
pub fn render(prompt: &str, out: &Path, args: &[&str]) -> Output {
    tiny(&[prompt], out).args(args).output().unwrap()
}

/// Runs `dream PROMPT --model <fixtures/tiny-sdxl> -o OUT ARGS…`.
pub fn render_sdxl(prompt: &str, out: &Path, args: &[&str]) -> Output {
    dream_command()
        .arg(prompt)
        .arg("--model")
        .arg(fixture("tiny-sdxl"))
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

/// Starts `command` with its standard streams piped to the test.
pub fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `command` with `input` on its standard input (the REPL reads it line by line).
pub fn run_with_input(command: &mut Command, input: &str) -> Output {
    let mut child = spawn_piped(command);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `dream ARGS` with `input` on its standard input.
pub fn dream_with_input(args: &[&str], input: &str) -> Output {
    run_with_input(dream_command().args(args), input)
}

/// The standard output of a run that must have succeeded.
pub fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The standard error of a run that must have failed.
pub fn failed(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "succeeded; stderr: {stderr}");
    stderr
}

/// The text chunk `keyword` of a PNG, if it has one.
pub fn png_text(path: &Path, keyword: &str) -> Option<String> {
    dream_pipeline::image::read_png_text(path)
        .unwrap()
        .into_iter()
        .find(|(key, _)| key == keyword)
        .map(|(_, text)| text)
}

/// An image file's pixels as 8-bit RGB.
pub fn read_rgb(path: &Path) -> RgbImage {
    RgbImage::open(path).unwrap_or_else(|e| panic!("{e}"))
}

/// An image file's pixels as 8-bit RGBA.
pub fn read_rgba(path: &Path) -> RgbaImage {
    RgbaImage::open(path).unwrap_or_else(|e| panic!("{e}"))
}
