//! Grids (InvokeAI's `-g`, prompt matrices): equally sized images side by side in one picture,
//! and A1111's labels around a prompt matrix's grid.

use crate::image::RgbImage;
use crate::text::{fill, wrap, BitmapFont};
use crate::DreamError;
use dream_core::prompt::PromptMatrix;

/// InvokeAI's layout for `count` images: ⌊√count⌋ rows, as many columns as that needs.
pub fn grid_shape(count: usize) -> (usize, usize) {
    let rows = count.isqrt().max(1);
    (rows, count.div_ceil(rows))
}

/// The images in `rows` × `cols` cells, filled row by row from the top left; cells past the
/// last image stay black.
pub fn make_grid(images: &[RgbImage], rows: usize, cols: usize) -> Result<RgbImage, DreamError> {
    let invalid = |message: String| Err(DreamError::InvalidRequest(message));
    let Some(first) = images.first() else {
        return invalid("a grid needs at least one image".into());
    };
    if images.len() > rows * cols {
        return invalid(format!(
            "{} images do not fit in a {rows}x{cols} grid",
            images.len()
        ));
    }
    let (width, height) = (first.width, first.height);
    if let Some(odd) = images
        .iter()
        .find(|i| (i.width, i.height) != (width, height))
    {
        return invalid(format!(
            "grid images must be the same size: {width}x{height} and {}x{}",
            odd.width, odd.height
        ));
    }
    let mut grid = filled(cols * width, rows * height, [0; 3]);
    for (i, image) in images.iter().enumerate() {
        paste(&mut grid, image, (i % cols) * width, (i / cols) * height);
    }
    Ok(grid)
}

/// One label (an optional part of a prompt matrix): its text and whether the cells it labels
/// have it, A1111's `GridAnnotation`.
pub type Label<'a> = (&'a str, bool);

/// How grid labels look, sized from the cell as A1111 sizes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelStyle {
    pub font: BitmapFont,
    /// Between the lines of a label, and above and below the column labels.
    pub line_spacing: usize,
    /// The thickness of the line through an inactive label.
    pub strike_width: usize,
    pub active: [u8; 3],
    pub inactive: [u8; 3],
}

impl LabelStyle {
    /// A1111's font size is (width + height) / 25 with half of it between lines; the glyphs
    /// are scaled so that their capitals (7 of 8 rows) stand about as tall as Roboto's (0.7 em)
    /// at that size, and a struck-through label's line is one font pixel thick.
    pub fn for_cell(width: usize, height: usize) -> Self {
        let font_size = (width + height) / 25;
        let font = BitmapFont::new(font_size / 10);
        LabelStyle {
            font,
            line_spacing: font_size / 2,
            strike_width: font.scale,
            active: [0; 3],
            inactive: [153; 3],
        }
    }
}

/// A prompt matrix's images in its grid, labelled as A1111's "Prompt matrix" script saves it.
pub fn prompt_matrix_grid(
    images: &[RgbImage],
    matrix: &PromptMatrix,
) -> Result<RgbImage, DreamError> {
    let grid = make_grid(images, matrix.rows(), matrix.columns())?;
    let columns: Vec<_> = (0..matrix.columns())
        .map(|c| matrix.column_labels(c))
        .collect();
    let rows: Vec<_> = (0..matrix.rows()).map(|r| matrix.row_labels(r)).collect();
    annotate(&grid, &columns, &rows)
}

/// `grid` in a white margin with `columns[c]` centred above column `c` and `rows[r]` centred
/// left of row `r`, A1111's `draw_grid_annotations`: labels wrap to the cell's width (to the
/// left margin's, three quarters of a cell, for rows), active ones are black, inactive ones
/// grey and struck through. There is no left margin when the rows have no text. The cells
/// themselves are copied unchanged.
pub fn annotate(
    grid: &RgbImage,
    columns: &[Vec<Label>],
    rows: &[Vec<Label>],
) -> Result<RgbImage, DreamError> {
    let (width, height) = cell_size(grid, columns.len(), rows.len())?;
    let style = LabelStyle::for_cell(width, height);
    let has_text = |labels: &[Vec<Label>]| {
        labels
            .iter()
            .flatten()
            .any(|(text, _)| !text.trim().is_empty())
    };
    let pad_left = if has_text(rows) { width * 3 / 4 } else { 0 };
    let column_lines: Vec<_> = columns
        .iter()
        .map(|labels| wrap_labels(labels, &style, width))
        .collect();
    let row_lines: Vec<_> = rows
        .iter()
        .map(|labels| wrap_labels(labels, &style, pad_left))
        .collect();
    let tallest = column_lines
        .iter()
        .map(|lines| block_height(lines, &style))
        .max()
        .unwrap_or(0);
    let pad_top = if tallest == 0 {
        0
    } else {
        tallest + 2 * style.line_spacing
    };

    // Each margin is drawn on its own so that no label can reach into the cells.
    let mut top = filled(grid.width, pad_top, [255; 3]);
    for (c, lines) in column_lines.iter().enumerate() {
        let y = (pad_top - block_height(lines, &style)) / 2;
        draw_lines(&mut top, width * c + width / 2, y as isize, lines, &style);
    }
    let mut left = filled(pad_left, grid.height, [255; 3]);
    for (r, lines) in row_lines.iter().enumerate() {
        let y = (height * r + height / 2) as isize - (block_height(lines, &style) / 2) as isize;
        draw_lines(&mut left, pad_left / 2, y, lines, &style);
    }
    let mut result = filled(grid.width + pad_left, grid.height + pad_top, [255; 3]);
    paste(&mut result, &top, pad_left, 0);
    paste(&mut result, &left, 0, pad_top);
    paste(&mut result, grid, pad_left, pad_top);
    Ok(result)
}

/// The size of one of `grid`'s `columns` × `rows` cells.
fn cell_size(grid: &RgbImage, columns: usize, rows: usize) -> Result<(usize, usize), DreamError> {
    let fits = |size: usize, count: usize| count > 0 && size.is_multiple_of(count) && size >= count;
    if !fits(grid.width, columns) || !fits(grid.height, rows) {
        return Err(DreamError::InvalidRequest(format!(
            "a {}x{} grid does not split into {columns} columns and {rows} rows of labels",
            grid.width, grid.height
        )));
    }
    Ok((grid.width / columns, grid.height / rows))
}

/// The lines of a cell's labels wrapped to `width`, each with whether it is active.
fn wrap_labels(labels: &[Label], style: &LabelStyle, width: usize) -> Vec<(String, bool)> {
    labels
        .iter()
        .flat_map(|&(text, active)| {
            wrap(text, &style.font, width)
                .into_iter()
                .map(move |line| (line, active))
        })
        .collect()
}

fn block_height(lines: &[(String, bool)], style: &LabelStyle) -> usize {
    (lines.len() * (style.font.size() + style.line_spacing)).saturating_sub(style.line_spacing)
}

/// `lines` one under the other from `top`, each centred on `center_x`.
fn draw_lines(
    image: &mut RgbImage,
    center_x: usize,
    top: isize,
    lines: &[(String, bool)],
    style: &LabelStyle,
) {
    let size = style.font.size();
    for (i, (line, active)) in lines.iter().enumerate() {
        let text_width = style.font.text_width(line);
        let x = center_x as isize - (text_width / 2) as isize;
        let y = top + (i * (size + style.line_spacing)) as isize;
        let color = if *active {
            style.active
        } else {
            style.inactive
        };
        style.font.draw(image, x, y, line, color);
        if !active {
            let middle = y + ((size - style.strike_width) / 2) as isize;
            fill(image, x, middle, text_width, style.strike_width, color);
        }
    }
}

fn filled(width: usize, height: usize, color: [u8; 3]) -> RgbImage {
    RgbImage {
        width,
        height,
        pixels: color.repeat(width * height),
    }
}

/// Copies `image` onto `onto` with its top left corner at (`x`, `y`); it must fit.
fn paste(onto: &mut RgbImage, image: &RgbImage, x: usize, y: usize) {
    let row_bytes = image.width * 3;
    for row in 0..image.height {
        let at = ((y + row) * onto.width + x) * 3;
        onto.pixels[at..at + row_bytes]
            .copy_from_slice(&image.pixels[row * row_bytes..(row + 1) * row_bytes]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(value: u8) -> RgbImage {
        RgbImage {
            width: 2,
            height: 1,
            pixels: vec![value; 6],
        }
    }

    #[test]
    fn shapes_follow_invokeai() {
        // InvokeAI's make_grid: rows = floor(sqrt(n)), cols = ceil(n / rows).
        let expected = [
            (1, (1, 1)),
            (2, (1, 2)),
            (3, (1, 3)),
            (4, (2, 2)),
            (5, (2, 3)),
        ];
        for (count, shape) in expected {
            assert_eq!(grid_shape(count), shape, "{count}");
        }
        assert_eq!(grid_shape(9), (3, 3));
        assert_eq!(grid_shape(10), (3, 4));
    }

    #[test]
    fn images_fill_rows_from_the_top_left() {
        let images = [solid(1), solid(2), solid(3)];
        let grid = make_grid(&images, 2, 2).unwrap();
        assert_eq!((grid.width, grid.height), (4, 2));
        // Each image is two pixels wide; one pixel per value here, three bytes each.
        let pixels = |values: &[u8]| values.iter().flat_map(|&v| [v; 3]).collect::<Vec<u8>>();
        let expected = pixels(&[1, 1, 2, 2, 3, 3, 0, 0]);
        assert_eq!(grid.pixels, expected);
    }

    #[test]
    fn mismatched_images_are_refused() {
        let wide = RgbImage {
            width: 4,
            height: 1,
            pixels: vec![0; 12],
        };
        assert!(make_grid(&[solid(1), wide], 1, 2).is_err());
        assert!(make_grid(&[solid(1), solid(2)], 1, 1).is_err());
        assert!(make_grid(&[], 1, 1).is_err());
    }
}
