//! A prompt matrix's labelled grid, checked pixel by pixel against A1111's layout
//! (`draw_grid_annotations`) worked out by hand and the glyphs of the public-domain font8x8
//! (`font8x8_basic.h`).

use dream_core::prompt::{MatrixOptions, PromptMatrix};
use dream_pipeline::grid::{annotate, make_grid, prompt_matrix_grid};
use dream_pipeline::image::RgbImage;

const WHITE: [u8; 3] = [255; 3];
const BLACK: [u8; 3] = [0; 3];
/// A1111's colour for inactive labels, (153, 153, 153).
const GREY: [u8; 3] = [153; 3];

/// Rows of the glyphs used here, from `font8x8_basic.h`; bit 0 is the leftmost pixel.
fn glyph(c: char) -> [u8; 8] {
    match c {
        'A' => [0x0C, 0x1E, 0x33, 0x33, 0x3F, 0x33, 0x33, 0x00],
        'B' => [0x3F, 0x66, 0x66, 0x3E, 0x66, 0x66, 0x3F, 0x00],
        'c' => [0x00, 0x00, 0x1E, 0x33, 0x03, 0x33, 0x1E, 0x00],
        ' ' => [0; 8],
        _ => panic!("no glyph for {c:?} in this test"),
    }
}

/// 256×256 cells that differ from each other and from white.
fn cells(count: usize) -> Vec<RgbImage> {
    (0..count)
        .map(|i| RgbImage {
            width: 256,
            height: 256,
            pixels: (0..256 * 256 * 3)
                .map(|p| ((p * 7 + i * 61) % 200) as u8)
                .collect(),
        })
        .collect()
}

fn pixel(image: &RgbImage, x: usize, y: usize) -> [u8; 3] {
    let at = (y * image.width + x) * 3;
    [image.pixels[at], image.pixels[at + 1], image.pixels[at + 2]]
}

fn whiten(image: &mut RgbImage, x: usize, y: usize) {
    let at = (y * image.width + x) * 3;
    image.pixels[at..at + 3].copy_from_slice(&WHITE);
}

/// Checks that `text` is drawn at (`x`, `y`) with the font scaled `scale` times in `color`
/// (struck through with a `scale`-thick line across the glyphs' middle rows when `struck`),
/// white between the glyph pixels, then whitens it so that a last check can find leftovers.
fn take_text(
    image: &mut RgbImage,
    (x, y): (usize, usize),
    scale: usize,
    text: &str,
    color: [u8; 3],
    struck: bool,
) {
    let size = 8 * scale;
    // The strike: rows (size - scale) / 2 .. + scale of the line, as A1111 centres it.
    let strike = (size - scale) / 2..(size - scale) / 2 + scale;
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        for dy in 0..size {
            for dx in 0..size {
                let lit = rows[dy / scale] >> (dx / scale) & 1 == 1;
                let expected = if lit || (struck && strike.contains(&dy)) {
                    color
                } else {
                    WHITE
                };
                let (px, py) = (x + i * size + dx, y + dy);
                assert_eq!(pixel(image, px, py), expected, "{text:?} at ({px}, {py})");
                whiten(image, px, py);
            }
        }
    }
}

/// Checks that the `grid` sits unchanged at (`x`, `y`) and whitens it.
fn take_grid(image: &mut RgbImage, grid: &RgbImage, (x, y): (usize, usize)) {
    for gy in 0..grid.height {
        for gx in 0..grid.width {
            assert_eq!(
                pixel(image, x + gx, y + gy),
                pixel(grid, gx, gy),
                "cell pixel ({gx}, {gy})"
            );
            whiten(image, x + gx, y + gy);
        }
    }
}

fn assert_all_white(image: &RgbImage) {
    let stray = image.pixels.chunks_exact(3).position(|p| p != WHITE);
    assert_eq!(stray.map(|i| (i % image.width, i / image.width)), None);
}

#[test]
fn prompt_matrix_grid_is_labelled_as_a1111_lays_it_out() {
    let matrix = PromptMatrix::new("base|A|Bc", &MatrixOptions::default()).unwrap();
    let images = cells(4);
    let bare = make_grid(&images, 2, 2).unwrap();
    let mut labelled = prompt_matrix_grid(&images, &matrix).unwrap();
    // Cells of 256×256: A1111's font size (256 + 256) / 25 = 20, lines 10 apart; glyphs at
    // scale 20 / 10 = 2, 16 pixels. Column labels are one line: a top margin of 16 + 2 × 10;
    // the rows have text: a left margin of 3/4 of a cell, 192.
    assert_eq!((labelled.width, labelled.height), (512 + 192, 512 + 36));
    take_grid(&mut labelled, &bare, (192, 36));
    // "A" (16 wide) centred over each column, 10 from the top: grey and struck through where
    // the column lacks it.
    take_text(&mut labelled, (192 + 128 - 8, 10), 2, "A", GREY, true);
    take_text(
        &mut labelled,
        (192 + 256 + 128 - 8, 10),
        2,
        "A",
        BLACK,
        false,
    );
    // "Bc" (32 wide) centred in the left margin at x 96, centred on each row.
    take_text(&mut labelled, (96 - 16, 36 + 128 - 8), 2, "Bc", GREY, true);
    take_text(
        &mut labelled,
        (96 - 16, 36 + 256 + 128 - 8),
        2,
        "Bc",
        BLACK,
        false,
    );
    assert_all_white(&labelled);
}

#[test]
fn long_labels_wrap_to_their_margin() {
    let images = cells(2);
    let bare = make_grid(&images, 2, 1).unwrap();
    let long = "Bc Bc Bc Bc Bc Bc";
    let columns = [vec![("A", true), ("A B", false)]];
    let rows = [vec![(long, true)], vec![("  ", false)]];
    let mut labelled = annotate(&bare, &columns, &rows).unwrap();
    // Two column lines: a block of 16 + 10 + 16 and a top margin of 42 + 20.
    assert_eq!((labelled.width, labelled.height), (256 + 192, 512 + 62));
    take_grid(&mut labelled, &bare, (192, 62));
    take_text(&mut labelled, (192 + 128 - 8, 10), 2, "A", BLACK, false);
    take_text(&mut labelled, (192 + 128 - 24, 36), 2, "A B", GREY, true);
    // 16 pixels a character in a 192-wide margin: 11 characters on the first line (176), the
    // rest on the second; the 42-high block centred on the row.
    let top = 62 + 128 - 21;
    take_text(
        &mut labelled,
        (96 - 88, top),
        2,
        "Bc Bc Bc Bc",
        BLACK,
        false,
    );
    take_text(&mut labelled, (96 - 40, top + 26), 2, "Bc Bc", BLACK, false);
    assert_all_white(&labelled);
}

#[test]
fn rows_without_text_have_no_margin() {
    let matrix = PromptMatrix::new("base|A", &MatrixOptions::default()).unwrap();
    let images = cells(2);
    let bare = make_grid(&images, 1, 2).unwrap();
    let mut labelled = prompt_matrix_grid(&images, &matrix).unwrap();
    assert_eq!((labelled.width, labelled.height), (512, 256 + 36));
    take_grid(&mut labelled, &bare, (0, 36));
    take_text(&mut labelled, (128 - 8, 10), 2, "A", GREY, true);
    take_text(&mut labelled, (256 + 128 - 8, 10), 2, "A", BLACK, false);
    assert_all_white(&labelled);
    // Nothing to write at all: the grid as it was.
    let plain = annotate(&bare, &[vec![], vec![]], &[vec![]]).unwrap();
    assert_eq!(plain, bare);
}

#[test]
fn labels_must_match_the_grid() {
    let bare = make_grid(&cells(2), 1, 2).unwrap();
    let error = annotate(&bare, &[vec![], vec![], vec![]], &[vec![]]).unwrap_err();
    assert!(error.to_string().contains("3 columns"), "{error}");
    assert!(annotate(&bare, &[], &[vec![]]).is_err());
    assert!(annotate(&bare, &[vec![], vec![]], &[]).is_err());
}
