//! Text on pictures (grid labels), drawn with the public-domain 8×8 bitmap font of `font8x8`
//! so that no system font is needed and the result is the same everywhere.

use crate::image::RgbImage;
use font8x8::legacy::{BASIC_LEGACY, LATIN_LEGACY};

/// Pixels per side of a glyph at scale 1; glyphs are square and the font is monospaced.
pub const GLYPH_SIZE: usize = 8;

/// The first character of `LATIN_LEGACY` (no-break space); it runs to U+00FF.
const LATIN_START: usize = 0xA0;

/// The 8×8 font at an integer scale: each font pixel becomes a `scale` × `scale` square.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapFont {
    pub scale: usize,
}

impl BitmapFont {
    /// A scale of 0 means 1: the smallest font still draws.
    pub fn new(scale: usize) -> Self {
        BitmapFont {
            scale: scale.max(1),
        }
    }

    /// A glyph's height and advance in pixels.
    pub fn size(&self) -> usize {
        GLYPH_SIZE * self.scale
    }

    pub fn text_width(&self, text: &str) -> usize {
        text.chars().count() * self.size()
    }

    /// Draws `text` with its top left corner at (`x`, `y`); what falls outside the image is
    /// left out, so a label too wide for its place is cut at the picture's edge.
    pub fn draw(&self, image: &mut RgbImage, x: isize, y: isize, text: &str, color: [u8; 3]) {
        let step = self.scale as isize;
        for (i, c) in text.chars().enumerate() {
            let left = x + (i * self.size()) as isize;
            for (row, bits) in glyph(c).into_iter().enumerate() {
                for col in (0..GLYPH_SIZE).filter(|col| bits >> col & 1 == 1) {
                    let (px, py) = (left + col as isize * step, y + row as isize * step);
                    fill(image, px, py, self.scale, self.scale, color);
                }
            }
        }
    }
}

/// The rows of `c`'s glyph, top first, bit 0 the leftmost pixel. The font covers ASCII and
/// Latin-1; any other character shows as `?`.
pub fn glyph(c: char) -> [u8; 8] {
    let code = c as usize;
    match code {
        _ if code < BASIC_LEGACY.len() => BASIC_LEGACY[code],
        _ if (LATIN_START..LATIN_START + LATIN_LEGACY.len()).contains(&code) => {
            LATIN_LEGACY[code - LATIN_START]
        }
        _ => BASIC_LEGACY[usize::from(b'?')],
    }
}

/// The words of `text` in lines no wider than `width` pixels, as A1111 wraps grid labels; a
/// word wider than that has a line of its own.
pub fn wrap(text: &str, font: &BitmapFont, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if font.text_width(line) + font.text_width(word) + font.size() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Paints the `width` × `height` rectangle at (`x`, `y`), the part of it inside the image.
pub fn fill(image: &mut RgbImage, x: isize, y: isize, width: usize, height: usize, color: [u8; 3]) {
    let clamp = |at: isize, limit: usize| at.clamp(0, limit as isize) as usize;
    let (x0, x1) = (
        clamp(x, image.width),
        clamp(x + width as isize, image.width),
    );
    let (y0, y1) = (
        clamp(y, image.height),
        clamp(y + height as isize, image.height),
    );
    for row in y0..y1 {
        let start = (row * image.width + x0) * 3;
        let end = (row * image.width + x1) * 3;
        for pixel in image.pixels[start..end].chunks_exact_mut(3) {
            pixel.copy_from_slice(&color);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_wrap_at_the_width() {
        let font = BitmapFont::new(1);
        // 8 pixels a character: "on a" is 32 wide, "on a table" 80.
        assert_eq!(wrap("on a table", &font, 48), ["on a", "table"]);
        assert_eq!(wrap("  on a table ", &font, 80), ["on a table"]);
        assert_eq!(
            wrap("incomprehensible x", &font, 48),
            ["incomprehensible", "x"]
        );
        assert!(wrap(" \t", &font, 48).is_empty());
    }

    #[test]
    fn characters_outside_the_font_show_as_a_question_mark() {
        assert_eq!(glyph('猫'), glyph('?'));
        assert_ne!(glyph('é'), glyph('?'));
        assert_eq!(BitmapFont::new(0).size(), 8);
        assert_eq!(BitmapFont::new(3).text_width("café"), 96);
    }

    #[test]
    fn fill_keeps_inside_the_image() {
        let mut image = RgbImage {
            width: 3,
            height: 2,
            pixels: vec![0; 18],
        };
        fill(&mut image, -1, 1, 3, 5, [9, 8, 7]);
        assert_eq!(image.pixels[..9], [0; 9]);
        assert_eq!(image.pixels[9..], [9, 8, 7, 9, 8, 7, 0, 0, 0]);
    }
}
