//! Image resizing as Pillow's `Image.resize(size, Image.LANCZOS)` does it for 8-bit RGB, the
//! resampling InvokeAI and A1111 use for init images and pixel-space upscaling, and InvokeAI's
//! rules for bringing an init image to a size the model takes.
//!
//! Pillow (`libImaging/Resample.c`) filters separably, rows first: each output pixel is a
//! Lanczos-3 weighted sum of the input pixels under the filter, whose support widens by the
//! scale factor when shrinking. The weights are normalised to sum to one, turned into
//! fixed-point integers, and each pass rounds and clamps to 8 bits. Doing the same here gives
//! Pillow's bytes exactly.

use std::f64::consts::PI;

use crate::image::RgbImage;
use crate::DreamError;

/// Fractional bits of Pillow's fixed-point weights (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The Lanczos window's half-width, in input pixels at scale 1.
const LANCZOS_LOBES: f64 = 3.0;
/// InvokeAI's models take sizes in multiples of this.
const INVOKEAI_SIZE_STEP: usize = 64;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        (x * PI).sin() / (x * PI)
    }
}

fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_LOBES..LANCZOS_LOBES).contains(&x) {
        sinc(x) * sinc(x / LANCZOS_LOBES)
    } else {
        0.0
    }
}

/// The input span and fixed-point weights of each output pixel along one axis.
struct Taps {
    first: usize,
    weights: Vec<i64>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for `in_size` → `out_size`.
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = LANCZOS_LOBES * filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast truncates; negative starts clamp to 0 either way.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|x| lanczos((x as f64 - center + 0.5) * (1.0 / filter_scale)))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    // Rounded half away from zero, as Pillow's `(int)(±0.5 + w * one)`.
                    (if w < 0.0 {
                        -0.5 + w * one
                    } else {
                        0.5 + w * one
                    }) as i64
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// Pillow's `clip8`: the fixed-point sum back to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over `channels` interleaved channels: `get(i, line)` is the index of
/// input sample `i` along the axis on line `line`; the result has `taps.len()` samples per
/// line, laid out by `index(out, line)`.
fn resample_pass(
    src: &[u8],
    channels: usize,
    taps: &[Taps],
    lines: usize,
    get: impl Fn(usize, usize) -> usize,
    index: impl Fn(usize, usize) -> usize,
) -> Vec<u8> {
    let mut out = vec![0u8; taps.len() * lines * channels];
    for line in 0..lines {
        for (o, tap) in taps.iter().enumerate() {
            for channel in 0..channels {
                let sum = tap.weights.iter().enumerate().fold(
                    1i64 << (PRECISION_BITS - 1),
                    |acc, (k, &w)| {
                        let sample = src[get(tap.first + k, line) * channels + channel];
                        acc + i64::from(sample) * w
                    },
                );
                out[index(o, line) * channels + channel] = clip8(sum);
            }
        }
    }
    out
}

/// `image.resize((width, height), Image.LANCZOS)` with Pillow's exact bytes.
pub fn resize_lanczos(
    image: &RgbImage,
    width: usize,
    height: usize,
) -> Result<RgbImage, DreamError> {
    let pixels = resize_samples(
        &image.pixels,
        (image.width, image.height),
        3,
        (width, height),
    )?;
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// [`resize_lanczos`] for `channels` interleaved 8-bit channels (1 for Pillow's `L` images):
/// `from` and `to` are (width, height).
pub fn resize_samples(
    samples: &[u8],
    from: (usize, usize),
    channels: usize,
    to: (usize, usize),
) -> Result<Vec<u8>, DreamError> {
    let ((w, h), (width, height)) = (from, to);
    if width == 0 || height == 0 || w == 0 || h == 0 {
        return Err(DreamError::InvalidRequest(format!(
            "cannot resize a {w}x{h} image to {width}x{height}"
        )));
    }
    if samples.len() != w * h * channels {
        return Err(DreamError::InvalidRequest(format!(
            "{} samples do not fill a {w}x{h} image of {channels} channels",
            samples.len()
        )));
    }
    // Pillow filters rows first, except when the width grows and the height shrinks, where it
    // shrinks the columns first (measured against Pillow 13; the order changes the rounding).
    Ok(if width > w && height < h {
        let columns = resize_columns(samples, (w, h), channels, height);
        resize_rows(&columns, (w, height), channels, width)
    } else {
        let rows = resize_rows(samples, (w, h), channels, width);
        resize_columns(&rows, (width, h), channels, height)
    })
}

/// Resamples each row of a `w` × `h` image to `width` pixels (no change when it has that width
/// already).
fn resize_rows(src: &[u8], (w, h): (usize, usize), channels: usize, width: usize) -> Vec<u8> {
    if width == w {
        return src.to_vec();
    }
    resample_pass(
        src,
        channels,
        &taps(w, width),
        h,
        |x, y| y * w + x,
        |x, y| y * width + x,
    )
}

/// Resamples each column of a `w` × `h` image to `height` pixels.
fn resize_columns(src: &[u8], (w, h): (usize, usize), channels: usize, height: usize) -> Vec<u8> {
    if height == h {
        return src.to_vec();
    }
    resample_pass(
        src,
        channels,
        &taps(h, height),
        w,
        |y, x| y * w + x,
        |y, x| y * w + x,
    )
}

/// How an img2img request's size follows from its init image, as InvokeAI decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSizing {
    /// The init image's own size, rounded down to multiples of 64 (InvokeAI without `--fit`).
    Own,
    /// Scaled to fit inside the requested width × height keeping its aspect ratio, then rounded
    /// down to multiples of 64 (InvokeAI's `--fit`/`-T`).
    Fit { width: usize, height: usize },
}

/// The size `sizing` gives a `width` × `height` init image.
pub fn init_size(sizing: InitSizing, width: usize, height: usize) -> (usize, usize) {
    let (w, h) = match sizing {
        InitSizing::Own => (width, height),
        InitSizing::Fit {
            width: box_w,
            height: box_h,
        } => {
            let scale = (box_w as f64 / width as f64).min(box_h as f64 / height as f64);
            (
                (width as f64 * scale) as usize,
                (height as f64 * scale) as usize,
            )
        }
    };
    let floor = |x: usize| x - x % INVOKEAI_SIZE_STEP;
    (floor(w), floor(h))
}

/// The init image brought to the size `sizing` gives it (Lanczos, unchanged when it already
/// has it).
pub fn size_init_image(image: &RgbImage, sizing: InitSizing) -> Result<RgbImage, DreamError> {
    let (width, height) = init_size(sizing, image.width, image.height);
    if width == 0 || height == 0 {
        return Err(DreamError::InvalidRequest(format!(
            "the init image ({}x{}) would be smaller than {INVOKEAI_SIZE_STEP} pixels on a side",
            image.width, image.height
        )));
    }
    if (width, height) == (image.width, image.height) {
        return Ok(image.clone());
    }
    resize_lanczos(image, width, height)
}
