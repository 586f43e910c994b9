//! `dream` with InvokeAI's inpainting and outpainting switches: -M, transparent init images,
//! -c/--outcrop with the seam pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dream-cli-paint-{name}-{}", std::process::id()));
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

/// (width, height, RGBA pixels) of a PNG.
fn read_rgba(path: &Path) -> (usize, usize, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buffer).unwrap();
    let samples = &buffer[..frame.buffer_size()];
    let pixels = match frame.color_type {
        png::ColorType::Rgba => samples.to_vec(),
        png::ColorType::Rgb => samples
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("{other:?}"),
    };
    (frame.width as usize, frame.height as usize, pixels)
}

fn write_png(path: &Path, width: usize, height: usize, color: png::ColorType, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(file, width as u32, height as u32);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
}

fn run(dir: &Path, extra: &[&str]) -> PathBuf {
    let model = fixture("tiny");
    let out = dir.join("out");
    let mut args = vec![
        "a red apple",
        "--model",
        model.to_str().unwrap(),
        "-s",
        "4",
        "-S",
        "3",
        "-A",
        "k_euler",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = dream(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let path = stdout.split(": ").next().unwrap().trim().to_string();
    PathBuf::from(path)
}

/// Pixels at least `margin` away (Chebyshev) from every repainted pixel stay exactly.
fn assert_kept_away_from(
    original: &[u8],
    result: &[u8],
    width: usize,
    repainted: impl Fn(usize, usize) -> bool,
    margin: usize,
) -> usize {
    let height = original.len() / 4 / width;
    let near = |x: usize, y: usize| {
        (y.saturating_sub(margin)..(y + margin + 1).min(height)).any(|yy| {
            (x.saturating_sub(margin)..(x + margin + 1).min(width)).any(|xx| repainted(xx, yy))
        })
    };
    let mut kept = 0;
    for y in 0..height {
        for x in 0..width {
            if !near(x, y) {
                let i = (y * width + x) * 4;
                assert_eq!(&result[i..i + 3], &original[i..i + 3], "({x}, {y})");
                kept += 1;
            }
        }
    }
    kept
}

#[test]
fn a_mask_file_repaints_its_black_pixels_only() {
    let dir = temp_dir("mask");
    let init = fixture("images/init_64x64.png");
    let (_, _, original) = read_rgba(&init);
    let hole = |x: usize, y: usize| (20..40).contains(&x) && (24..44).contains(&y);
    let mask: Vec<u8> = (0..64 * 64)
        .map(|i| if hole(i % 64, i / 64) { 0 } else { 255 })
        .collect();
    let mask_path = dir.join("mask.png");
    write_png(&mask_path, 64, 64, png::ColorType::Grayscale, &mask);
    let path = run(
        &dir,
        &[
            "-I",
            init.to_str().unwrap(),
            "-M",
            mask_path.to_str().unwrap(),
        ],
    );
    let (width, height, result) = read_rgba(&path);
    assert_eq!((width, height), (64, 64));
    let kept = assert_kept_away_from(&original, &result, 64, hole, 16);
    assert!(kept > 1000, "{kept}");
    let changed = (0..64 * 64)
        .filter(|&i| hole(i % 64, i / 64) && result[i * 4..i * 4 + 3] != original[i * 4..i * 4 + 3])
        .count();
    assert!(changed > 200, "{changed}");
    // --invert_mask keeps the hole instead.
    let path = run(
        &dir,
        &[
            "-I",
            init.to_str().unwrap(),
            "-M",
            mask_path.to_str().unwrap(),
            "--invert_mask",
        ],
    );
    let (_, _, inverted) = read_rgba(&path);
    assert_kept_away_from(&original, &inverted, 64, |x, y| !hole(x, y), 16);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn transparent_pixels_are_inpainted_and_outcrop_grows_the_canvas() {
    let dir = temp_dir("alpha");
    let (_, _, original) = read_rgba(&fixture("images/init_64x64.png"));
    let hole = |x: usize, y: usize| (40..56).contains(&x) && (8..24).contains(&y);
    let mut holey = original.clone();
    for i in 0..64 * 64 {
        if hole(i % 64, i / 64) {
            holey[i * 4 + 3] = 0;
        }
    }
    let init = dir.join("holey.png");
    write_png(&init, 64, 64, png::ColorType::Rgba, &holey);
    let path = run(&dir, &["-I", init.to_str().unwrap()]);
    let (_, _, result) = read_rgba(&path);
    assert_kept_away_from(&original, &result, 64, hole, 16);

    // -c left 32 grows the canvas by 64 (InvokeAI rounds up to 64); the outcrop's seam pass
    // with --seam_size 16 repaints 8 pixels each side of the border, blurred by 16.
    let opaque = fixture("images/init_64x64.png");
    let path = run(
        &dir,
        &[
            "-I",
            opaque.to_str().unwrap(),
            "-c",
            "left",
            "32",
            "--seam_size",
            "16",
        ],
    );
    let (width, height, grown) = read_rgba(&path);
    assert_eq!((width, height), (128, 64));
    for y in 0..64 {
        for x in 64 + 32..128 {
            let (i, j) = ((y * 128 + x) * 4, (y * 64 + x - 64) * 4);
            assert_eq!(&grown[i..i + 3], &original[j..j + 3], "({x}, {y})");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn painting_switches_need_an_init_image_and_tiles_are_refused() {
    let dir = temp_dir("refused");
    let model = fixture("tiny");
    let mask = fixture("images/mask_64x64.png");
    let init = fixture("images/init_64x64.png");
    let cases = [
        (
            vec!["-M", mask.to_str().unwrap()],
            "need an init image (-I)",
        ),
        (
            vec!["-I", init.to_str().unwrap(), "--tile_size", "8"],
            "--tile_size is not supported yet",
        ),
        (
            vec!["-I", init.to_str().unwrap(), "-c", "up", "64"],
            "unknown outcrop direction",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["x", "--model", model.to_str().unwrap(), "-s", "2"];
        args.extend(extra);
        let output = dream(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
