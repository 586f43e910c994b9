//! Grids (InvokeAI's `-g`, prompt matrices): equally sized images side by side in one picture.

use crate::image::RgbImage;
use crate::DreamError;

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
    let row_bytes = width * 3;
    let grid_row_bytes = cols * row_bytes;
    let mut pixels = vec![0; rows * height * grid_row_bytes];
    for (i, image) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        for y in 0..height {
            let at = (r * height + y) * grid_row_bytes + c * row_bytes;
            pixels[at..at + row_bytes]
                .copy_from_slice(&image.pixels[y * row_bytes..(y + 1) * row_bytes]);
        }
    }
    Ok(RgbImage {
        width: cols * width,
        height: rows * height,
        pixels,
    })
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
