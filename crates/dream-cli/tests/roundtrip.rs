//! What an image's metadata must carry to make it again, and what the command line decides
//! from the way a sampler is named: the prompt syntax through `!fetch`, A1111's img2img
//! strength rule for A1111's sampler names, and `-z`.

mod common;

use std::path::Path;
use std::process::Output;

use common::{fixture, read_rgb, run_with_input, succeeded, temp_dir, tiny};

/// An `invoke>` session on the tiny model writing to `out`.
fn session(out: &Path, input: &str) -> Output {
    run_with_input(&mut tiny(&[], out), input)
}

#[test]
fn fetch_keeps_the_prompt_syntax() {
    let out = temp_dir("roundtrip-syntax");
    // InvokeAI's weights and inline negative; A1111's syntax reads the same text otherwise.
    let prompt = "\"a (red apple)1.5 on a table-- [blurry]\" -s 2 -W 64 -H 64 -S 11";
    let input = format!(
        "{prompt} --syntax invokeai\n{prompt}\n!fetch {} {}\n",
        out.join("000001.11.png").display(),
        out.join("commands.txt").display()
    );
    succeeded(&session(&out, &input));
    let invokeai = read_rgb(&out.join("000001.11.png"));
    assert_ne!(
        invokeai,
        read_rgb(&out.join("000002.11.png")),
        "the syntax changes the image"
    );
    let commands = std::fs::read_to_string(out.join("commands.txt")).unwrap();
    assert!(commands.contains(" --syntax invokeai "), "{commands}");

    let again = temp_dir("roundtrip-syntax-again");
    let replay = format!("!replay {}\n", out.join("commands.txt").display());
    succeeded(&session(&again, &replay));
    assert_eq!(
        read_rgb(&again.join("000001.11.png")),
        invokeai,
        "{commands}"
    );
}

#[test]
fn a1111_sampler_names_take_a1111s_strength_rule() {
    let out = temp_dir("roundtrip-strength");
    let init = fixture("images/init_64x64.png");
    let line = |sampler: &str, strength: f64| {
        format!(
            "a red apple -I {} -f {strength} -s 4 -S 3 -A {sampler} --karras_max 0\n",
            init.display()
        )
    };
    // A1111 at 0.6 of 4 steps runs int(0.6 × 4) + 1 = 3, from the same σ as InvokeAI's
    // int(0.75 × 4) = 3; InvokeAI's own 0.6 runs 2. Euler's A1111 default schedule is the
    // model's, as is k_euler's from --karras_max steps on.
    let input = [
        line("Euler", 0.6),
        line("k_euler", 0.75),
        line("k_euler", 0.6),
    ]
    .concat();
    succeeded(&session(&out, &input));
    let image = |n: usize| read_rgb(&out.join(format!("00000{n}.3.png")));
    assert_eq!(image(1), image(2));
    assert_ne!(image(1), image(3));
}

#[test]
fn png_compression_levels_keep_the_pixels() {
    let out = temp_dir("roundtrip-z");
    let input = "a red apple -s 1 -W 64 -H 64 -S 5 -z 0\n\
                 a red apple -s 1 -W 64 -H 64 -S 5 -z 9\n";
    succeeded(&session(&out, input));
    let (stored, best) = (out.join("000001.5.png"), out.join("000002.5.png"));
    assert_eq!(read_rgb(&stored), read_rgb(&best));
    let size = |path: &Path| std::fs::metadata(path).unwrap().len();
    // Level 0 stores the 12288 bytes of pixels uncompressed.
    assert!(size(&stored) > 64 * 64 * 3, "{}", size(&stored));
    assert!(
        size(&best) < size(&stored),
        "{} {}",
        size(&best),
        size(&stored)
    );
}
