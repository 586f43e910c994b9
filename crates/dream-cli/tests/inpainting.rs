//! `dream` with InvokeAI's inpainting and outpainting switches: -M, transparent init images,
//! -c/--outcrop with the seam pass.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, fixture, read_rgba, render, succeeded, temp_dir, RgbaImage};

fn write_png(path: &Path, width: usize, height: usize, color: png::ColorType, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(file, width as u32, height as u32);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
}

/// Runs `dream "a red apple"` on the tiny model with 4 k_euler steps and seed 3 into
/// `dir/out`; returns the image's path.
fn run(dir: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["-s", "4", "-S", "3", "-A", "k_euler"];
    args.extend_from_slice(extra);
    let stdout = succeeded(&render("a red apple", &dir.join("out"), &args));
    PathBuf::from(stdout.split(": ").next().unwrap().trim())
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
    let original = read_rgba(&init).pixels;
    let hole = |x: usize, y: usize| (20..40).contains(&x) && (24..44).contains(&y);
    let mask: Vec<u8> = (0..64 * 64)
        .map(|i| if hole(i % 64, i / 64) { 0 } else { 255 })
        .collect();
    let mask_path = dir.join("mask.png");
    write_png(&mask_path, 64, 64, png::ColorType::Grayscale, &mask);
    let paint = |extra: &[&str]| {
        let mut args = vec![
            "-I",
            init.to_str().unwrap(),
            "-M",
            mask_path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        read_rgba(&run(&dir, &args))
    };
    let RgbaImage {
        width,
        height,
        pixels: result,
    } = paint(&[]);
    assert_eq!((width, height), (64, 64));
    let kept = assert_kept_away_from(&original, &result, 64, hole, 16);
    assert!(kept > 1000, "{kept}");
    let changed = (0..64 * 64)
        .filter(|&i| hole(i % 64, i / 64) && result[i * 4..i * 4 + 3] != original[i * 4..i * 4 + 3])
        .count();
    assert!(changed > 200, "{changed}");
    // --invert_mask keeps the hole instead.
    let inverted = paint(&["--invert_mask"]).pixels;
    assert_kept_away_from(&original, &inverted, 64, |x, y| !hole(x, y), 16);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn transparent_pixels_are_inpainted_and_outcrop_grows_the_canvas() {
    let dir = temp_dir("alpha");
    let original = read_rgba(&fixture("images/init_64x64.png")).pixels;
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
    let result = read_rgba(&path).pixels;
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
    let RgbaImage {
        width,
        height,
        pixels: grown,
    } = read_rgba(&path);
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
        let mut args = vec!["-s", "2"];
        args.extend(extra);
        let stderr = failed(&render("x", &dir, &args));
        assert!(stderr.contains(expected), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
