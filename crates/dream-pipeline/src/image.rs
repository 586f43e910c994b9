//! Finished images and their PNG files.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use crate::DreamError;

/// An 8-bit RGB image, row-major, three bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// A PNG's zlib compression level, 0 (stored, no filtering) to 9 (smallest), as InvokeAI's
/// `-z/--png_compression`. Every level decodes to the same pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PngCompression(u8);

impl PngCompression {
    pub const MAX: u8 = 9;

    pub fn new(level: u8) -> Result<Self, DreamError> {
        if level > Self::MAX {
            return Err(DreamError::InvalidRequest(format!(
                "PNG compression must be between 0 and {}, got {level}",
                Self::MAX
            )));
        }
        Ok(PngCompression(level))
    }

    pub fn level(self) -> u8 {
        self.0
    }

    fn deflate(self) -> png::DeflateCompression {
        match self.0 {
            0 => png::DeflateCompression::NoCompression,
            level => png::DeflateCompression::Level(level),
        }
    }
}

impl Default for PngCompression {
    /// InvokeAI's default, 6 (zlib's own default).
    fn default() -> Self {
        PngCompression(6)
    }
}

impl RgbImage {
    /// Writes a PNG with the given text chunks (e.g. A1111's `parameters`) at the default
    /// compression.
    pub fn save_png(&self, path: &Path, text_chunks: &[(&str, &str)]) -> Result<(), DreamError> {
        self.save_png_compressed(path, text_chunks, PngCompression::default())
    }

    /// Writes a PNG with the given text chunks at `compression`. Text that is not Latin-1
    /// goes into an iTXt chunk, as the PNG spec requires.
    pub fn save_png_compressed(
        &self,
        path: &Path,
        text_chunks: &[(&str, &str)],
        compression: PngCompression,
    ) -> Result<(), DreamError> {
        let io_error = |source| DreamError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io_error)?;
        let mut encoder =
            png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_deflate_compression(compression.deflate());
        for (keyword, text) in text_chunks {
            let added = if text.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(keyword.to_string(), text.to_string())
            } else {
                encoder.add_itxt_chunk(keyword.to_string(), text.to_string())
            };
            added.map_err(|e| png_error(path, e))?;
        }
        let mut writer = encoder.write_header().map_err(|e| png_error(path, e))?;
        writer
            .write_image_data(&self.pixels)
            .map_err(|e| png_error(path, e))?;
        writer.finish().map_err(|e| png_error(path, e))
    }
}

impl RgbImage {
    /// Reads an image file as 8-bit RGB (see [`RgbaImage::open`]); transparency is dropped and
    /// transparent pixels keep their stored colour.
    pub fn open(path: &Path) -> Result<RgbImage, DreamError> {
        Ok(RgbaImage::open(path)?.to_rgb())
    }
}

/// An 8-bit RGBA image, row-major, four bytes a pixel: an init image with its transparency,
/// which inpainting and outpainting read as the area to repaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbaImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbaImage {
    /// Reads a PNG, JPEG, WebP or BMP file of any colour type as 8-bit RGBA: palettes are
    /// expanded, grey is repeated into the three channels, 16-bit samples are rounded to 8
    /// bits, and images without alpha are opaque.
    pub fn open(path: &Path) -> Result<RgbaImage, DreamError> {
        let image = decode(path)?.into_rgba8();
        let (width, height) = (image.width() as usize, image.height() as usize);
        Ok(RgbaImage {
            width,
            height,
            pixels: image.into_raw(),
        })
    }

    /// An opaque copy of `image`.
    pub fn from_rgb(image: &RgbImage) -> RgbaImage {
        RgbaImage {
            width: image.width,
            height: image.height,
            pixels: image
                .pixels
                .chunks_exact(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect(),
        }
    }

    /// The colour channels; transparent pixels keep their stored colour.
    pub fn to_rgb(&self) -> RgbImage {
        RgbImage {
            width: self.width,
            height: self.height,
            pixels: self
                .pixels
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    }

    /// The alpha channel, one byte a pixel.
    pub fn alpha(&self) -> Vec<u8> {
        self.pixels.chunks_exact(4).map(|p| p[3]).collect()
    }

    /// Whether any pixel is less than fully opaque.
    pub fn has_transparency(&self) -> bool {
        self.pixels.chunks_exact(4).any(|p| p[3] < 255)
    }
}

/// Decodes an image file of any supported format, telling the format by its content.
pub(crate) fn decode(path: &Path) -> Result<image::DynamicImage, DreamError> {
    let unreadable = |message: String| DreamError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a readable image (PNG, JPEG, WebP or BMP): {message}"),
        ),
    };
    let reader = image::ImageReader::open(path)
        .map_err(|source| DreamError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|e| unreadable(e.to_string()))?;
    if reader.format().is_none() {
        return Err(unreadable("unknown file format".into()));
    }
    reader.decode().map_err(|e| unreadable(e.to_string()))
}

/// The text chunks of a PNG (tEXt, zTXt and iTXt, the last two decompressed), as
/// (keyword, text) pairs: tEXt first, then zTXt, then iTXt, each in file order.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>, DreamError> {
    let decode_error = |error: png::DecodingError| DreamError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    };
    let file = File::open(path).map_err(|source| DreamError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .map_err(decode_error)?;
    // Text may follow the image data; `finish` reads on to the end without decoding pixels.
    reader.finish().map_err(decode_error)?;
    let info = reader.info();
    let mut chunks: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|chunk| (chunk.keyword.clone(), chunk.text.clone()))
        .collect();
    for chunk in &info.compressed_latin1_text {
        chunks.push((
            chunk.keyword.clone(),
            chunk.get_text().map_err(decode_error)?,
        ));
    }
    for chunk in &info.utf8_text {
        chunks.push((
            chunk.keyword.clone(),
            chunk.get_text().map_err(decode_error)?,
        ));
    }
    Ok(chunks)
}

fn png_error(path: &Path, error: png::EncodingError) -> DreamError {
    DreamError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(error),
    }
}

/// The next free InvokeAI-style name in `dir`: a six-digit counter one past the highest
/// already there, then the seed: `000042.1234.png`. Never returns an existing file.
pub fn next_output_path(dir: &Path, seed: u32) -> Result<PathBuf, DreamError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DreamError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let highest = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let counter = name.to_str()?.split('.').next()?.to_string();
            (counter.len() == 6)
                .then(|| counter.parse::<u32>().ok())
                .flatten()
        })
        .max()
        .unwrap_or(0);
    (highest + 1..)
        .map(|counter| dir.join(format!("{counter:06}.{seed}.png")))
        .find(|path| !path.exists())
        .ok_or_else(|| {
            DreamError::InvalidRequest(format!("no free file name left in {}", dir.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_count_up_past_existing_files() {
        let dir = std::env::temp_dir().join(format!("dream-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            next_output_path(&dir, 42).unwrap(),
            dir.join("000001.42.png")
        );
        std::fs::write(dir.join("000007.99.png"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        assert_eq!(next_output_path(&dir, 5).unwrap(), dir.join("000008.5.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_round_trips_pixels_and_text() {
        let dir = std::env::temp_dir().join(format!("dream-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.png");
        let image = RgbImage {
            width: 3,
            height: 2,
            pixels: (0..18).map(|v| v * 14).collect(),
        };
        image
            .save_png(
                &path,
                &[("parameters", "a cat\nSteps: 20"), ("Dream", "猫 unicode")],
            )
            .unwrap();

        let decoder = png::Decoder::new(BufReader::new(File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..info.buffer_size()], &image.pixels[..]);
        let text = reader.info();
        assert_eq!(text.uncompressed_latin1_text[0].text, "a cat\nSteps: 20");
        assert_eq!(text.utf8_text[0].get_text().unwrap(), "猫 unicode");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compression_levels_change_the_size_not_the_pixels() {
        let dir = std::env::temp_dir().join(format!("dream-png-z-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Smooth gradients, as in a rendered image: what zlib's levels differ on.
        let (width, height) = (64, 48);
        let image = RgbImage {
            width,
            height,
            pixels: (0..width * height * 3)
                .map(|i| ((i / 3 % width) * 4 + (i / 3 / width) + i % 3 * 50) as u8)
                .collect(),
        };
        let saved = |level: u8| {
            let path = dir.join(format!("z{level}.png"));
            let compression = PngCompression::new(level).unwrap();
            image.save_png_compressed(&path, &[], compression).unwrap();
            assert_eq!(RgbImage::open(&path).unwrap(), image, "level {level}");
            std::fs::metadata(&path).unwrap().len()
        };
        let (stored, best) = (saved(0), saved(9));
        // Level 0 stores the 9216 bytes of pixels as they are, plus row filters and headers.
        assert!(stored > (width * height * 3) as u64, "{stored}");
        assert!(
            best * 4 < stored,
            "level 9: {best} bytes, level 0: {stored}"
        );
        let err = PngCompression::new(10).unwrap_err().to_string();
        assert!(err.contains("between 0 and 9"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_text_of_every_kind_before_and_after_the_image_data() {
        let dir = std::env::temp_dir().join(format!("dream-png-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let mut encoder = png::Encoder::new(File::create(&path).unwrap(), 1, 1);
        encoder.set_color(png::ColorType::Grayscale);
        encoder
            .add_text_chunk("parameters".into(), "plain".into())
            .unwrap();
        encoder
            .add_ztxt_chunk("prompt".into(), "{\"compressed\": 1}".into())
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[7]).unwrap();
        // ComfyUI and PIL may write text after IDAT.
        writer
            .write_text_chunk(&png::text_metadata::ITXtChunk::new("Dream", "é 猫"))
            .unwrap();
        writer.finish().unwrap();
        let chunks = read_png_text(&path).unwrap();
        let expected = [
            ("parameters", "plain"),
            ("prompt", "{\"compressed\": 1}"),
            ("Dream", "é 猫"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(chunks, expected);
        std::fs::write(&path, b"not a png").unwrap();
        let error = read_png_text(&path).unwrap_err().to_string();
        assert!(error.contains("t.png"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
