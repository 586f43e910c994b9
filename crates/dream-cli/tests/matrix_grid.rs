//! `--prompt_matrix` saves A1111's labelled grid: the cells under a band of column labels and
//! right of a band of row labels, active options black, inactive ones grey.

mod common;

use common::{read_rgb, render, succeeded, temp_dir, RgbImage};

/// The colours in the `width` × `height` rectangle at (`x`, `y`), without repeats.
fn colours(image: &RgbImage, (x, y): (usize, usize), width: usize, height: usize) -> Vec<[u8; 3]> {
    let mut found: Vec<[u8; 3]> = Vec::new();
    for row in y..y + height {
        for at in (row * image.width + x..row * image.width + x + width).map(|p| p * 3) {
            let pixel = [image.pixels[at], image.pixels[at + 1], image.pixels[at + 2]];
            if !found.contains(&pixel) {
                found.push(pixel);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn prompt_matrix_grid_has_label_margins() {
    let out = temp_dir("matrix-grid");
    let args = [
        "--prompt_matrix",
        "-s",
        "1",
        "-W",
        "64",
        "-H",
        "64",
        "-A",
        "ddim",
        "-S",
        "7",
    ];
    succeeded(&render("a red apple|shiny|on a table", &out, &args));
    let grid = read_rgb(&out.join("000001.7.png"));
    // The bare grid is 2×2 cells of 64. A1111's font size for them is 128 / 25 = 5, lines
    // 2 apart: one line of 8-pixel glyphs makes a top band of 8 + 2 × 2; the left band is
    // three quarters of a cell.
    assert_eq!((grid.width, grid.height), (48 + 128, 12 + 128));
    let (white, grey, black) = ([255; 3], [153; 3], [0; 3]);
    assert_eq!(colours(&grid, (0, 0), 48, 12), [white], "corner");
    // "shiny" is missing from column 0 and in column 1; "on a table" likewise in the rows.
    assert_eq!(colours(&grid, (48, 0), 64, 12), [grey, white], "column 0");
    assert_eq!(colours(&grid, (112, 0), 64, 12), [black, white], "column 1");
    assert_eq!(colours(&grid, (0, 12), 48, 64), [grey, white], "row 0");
    assert_eq!(colours(&grid, (0, 76), 48, 64), [black, white], "row 1");
}
