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

/// One separable pass: `get(i, line, channel)` reads input sample `i` along the axis on line
/// `line`; the result has `taps.len()` samples per line, laid out by `index(out, line)`.
fn resample_pass(
    taps: &[Taps],
    lines: usize,
    get: impl Fn(usize, usize, usize) -> u8,
    index: impl Fn(usize, usize) -> usize,
) -> Vec<u8> {
    let mut out = vec![0u8; taps.len() * lines * 3];
    for line in 0..lines {
        for (o, tap) in taps.iter().enumerate() {
            for channel in 0..3 {
                let sum = tap
                    .weights
                    .iter()
                    .enumerate()
                    .fold(1i64 << (PRECISION_BITS - 1), |acc, (k, &w)| {
                        acc + i64::from(get(tap.first + k, line, channel)) * w
                    });
                out[index(o, line) * 3 + channel] = clip8(sum);
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
    if width == 0 || height == 0 || image.width == 0 || image.height == 0 {
        return Err(DreamError::InvalidRequest(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            image.width, image.height
        )));
    }
    let mut current = image.clone();
    // Pillow filters rows first, except when the width grows and the height shrinks, where it
    // shrinks the columns first (measured against Pillow 13; the order changes the rounding).
    if width > image.width && height < image.height {
        current = resize_columns(&current, height);
        current = resize_rows(&current, width);
    } else {
        current = resize_rows(&current, width);
        current = resize_columns(&current, height);
    }
    Ok(current)
}

/// Resamples each row to `width` pixels (no change when it has that width already).
fn resize_rows(image: &RgbImage, width: usize) -> RgbImage {
    if width == image.width {
        return image.clone();
    }
    let (w, src) = (image.width, &image.pixels);
    let pixels = resample_pass(
        &taps(w, width),
        image.height,
        |x, y, c| src[(y * w + x) * 3 + c],
        |x, y| y * width + x,
    );
    RgbImage {
        width,
        height: image.height,
        pixels,
    }
}

/// Resamples each column to `height` pixels.
fn resize_columns(image: &RgbImage, height: usize) -> RgbImage {
    if height == image.height {
        return image.clone();
    }
    let (w, src) = (image.width, &image.pixels);
    let pixels = resample_pass(
        &taps(image.height, height),
        w,
        |y, x, c| src[(y * w + x) * 3 + c],
        |y, x| y * w + x,
    );
    RgbImage {
        width: w,
        height,
        pixels,
    }
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
