//! The `dream` binary with InvokeAI's variation, Perlin, seamless, init-sizing, hires-fix and
//! intermediate switches: each image's printed command (and `Dream` chunk) records them, and
//! a recorded variation chain makes the same image again.

mod common;

use std::path::{Path, PathBuf};

use common::{dream, failed, fixture, png_text, read_rgb, render, succeeded, temp_dir};

/// Runs `dream "a red apple" --model tiny -s 3 -A k_euler -o OUT [-W 64 -H 64] ARGS…`, which
/// must succeed; returns stdout.
fn apple(out: &Path, args: &[&str]) -> String {
    let mut all = vec!["-s", "3", "-A", "k_euler"];
    if !args.contains(&"-W") {
        all.extend_from_slice(&["-W", "64", "-H", "64"]);
    }
    all.extend_from_slice(args);
    succeeded(&render("a red apple", out, &all))
}

/// (image path, printed command) of each image.
fn made(stdout: &str) -> Vec<(PathBuf, String)> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(".png: "))
        .map(|(path, command)| (PathBuf::from(format!("{path}.png")), command.to_string()))
        .collect()
}

#[test]
fn variations_are_recorded_and_replay_bit_for_bit() {
    let out = temp_dir("variations");
    let images = made(&apple(&out, &["-S", "42", "-n", "2", "-v", "0.3"]));
    assert_eq!(images.len(), 2);
    // InvokeAI's -v: both images keep seed 42, each with its own variation seed.
    let chains: Vec<&str> = images
        .iter()
        .map(|(path, command)| {
            assert!(path.to_str().unwrap().ends_with(".42.png"), "{path:?}");
            assert!(command.contains(" -S42"), "{command}");
            command.split(" -V ").nth(1).unwrap()
        })
        .collect();
    assert!(chains.iter().all(|c| c.ends_with(":0.3")), "{chains:?}");
    assert_ne!(chains[0], chains[1]);
    assert_ne!(read_rgb(&images[0].0), read_rgb(&images[1].0));
    assert!(png_text(&images[0].0, "Dream")
        .unwrap()
        .ends_with(&format!(" -V {}", chains[0])));

    // The recorded chain, given with -V, makes the first image again; -v 0 changes nothing.
    let replay_dir = temp_dir("variations-replay");
    let replay = made(&apple(&replay_dir, &["-S", "42", "-V", chains[0]]));
    assert_eq!(read_rgb(&replay[0].0), read_rgb(&images[0].0));
    let plain = made(&apple(&replay_dir, &["-S", "42"]));
    let zero = made(&apple(&replay_dir, &["-S", "42", "-v", "0"]));
    assert_eq!(read_rgb(&plain[0].0), read_rgb(&zero[0].0));
}

#[test]
fn perlin_seamless_and_intermediates_are_used_and_recorded() {
    let out = temp_dir("shaping");
    let stdout = apple(
        &out,
        &[
            "-S",
            "7",
            "--perlin",
            "0.2",
            "--seamless",
            "--seamless_axes",
            "x",
            "--save_intermediates",
            "2",
        ],
    );
    let images = made(&stdout);
    let (path, command) = &images[0];
    assert!(
        command.contains("--perlin 0.2 --seamless --seamless_axes x --save_intermediates 2"),
        "{command}"
    );
    let dream_chunk = png_text(path, "Dream").unwrap();
    assert!(
        dream_chunk.contains("--perlin 0.2 --seamless --seamless_axes x"),
        "{dream_chunk}"
    );
    // Steps 0 and 2 of 3 (the last), as 8×8 previews under intermediates/<image number>/.
    let previews = out.join("intermediates/000001");
    for step in ["0000.png", "0002.png"] {
        let preview = read_rgb(&previews.join(step));
        assert_eq!((preview.width, preview.height), (8, 8));
    }
    assert!(!previews.join("0001.png").exists());
    // The switches change the image.
    let plain = made(&apple(&out, &["-S", "7"]));
    assert_ne!(read_rgb(path), read_rgb(&plain[0].0));
}

#[test]
fn init_images_are_sized_as_invokeai_sizes_them() {
    let out = temp_dir("fit");
    let init = fixture("images/init_64x64.png");
    let init = init.to_str().unwrap();
    // -T scales the 64×64 init image into the 128×192 box: 128×128.
    let images = made(&apple(
        &out,
        &[
            "-S", "1", "-I", init, "-f", "0.5", "-T", "-W", "128", "-H", "192",
        ],
    ));
    let image = read_rgb(&images[0].0);
    assert_eq!((image.width, image.height), (128, 128));
    assert!(images[0].1.contains(" -W128 -H128 ") && images[0].1.contains(" -T"));
}

#[test]
fn bad_variation_and_seamless_switches_are_errors() {
    let model = fixture("tiny");
    let model = model.to_str().unwrap();
    for (args, message) in [
        (vec!["x", "--model", model, "-V", "12"], "seed:weight"),
        (
            vec!["x", "--model", model, "-v", "1.5"],
            "-v must be between 0 and 1",
        ),
        (
            vec!["x", "--model", model, "--seamless_axes", "x"],
            "needs --seamless",
        ),
        (
            vec!["x", "--model", model, "--seamless", "--seamless_axes", "z"],
            "seamless axes",
        ),
    ] {
        let stderr = failed(&dream(&args));
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
