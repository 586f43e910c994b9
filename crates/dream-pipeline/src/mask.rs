//! Inpainting masks: which pixels to repaint, read from mask files or an image's transparency,
//! blurred at the edges, and PIL's box-approximated Gaussian blur they are made with.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::image::{decode, RgbImage, RgbaImage};
use crate::resize::resize_samples;
use crate::DreamError;

/// Per pixel, how much inpainting repaints: 0 keeps the original, 1 repaints, values in
/// between blend the two (a blurred edge). Row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Mask {
    /// A mask file as InvokeAI 2.x reads `-M`: an image with an alpha channel repaints its
    /// transparent pixels; one without repaints its black pixels (luminance 0 repaints,
    /// 255 keeps, greys blend).
    pub fn open(path: &Path) -> Result<Mask, DreamError> {
        let image = decode(path)?;
        if image.color().has_alpha() {
            let rgba = image.into_rgba8();
            let (width, height) = (rgba.width() as usize, rgba.height() as usize);
            let alpha = rgba.pixels().map(|p| p.0[3]);
            return Ok(Mask::from_keep_levels(width, height, alpha));
        }
        let rgb = image.into_rgb8();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        Ok(Mask::from_keep_levels(
            width,
            height,
            rgb.pixels().map(|p| luma(p.0)),
        ))
    }

    /// The transparent pixels of `image` (alpha 0 repaints, 255 keeps); `None` when the image
    /// is opaque.
    pub fn from_alpha(image: &RgbaImage) -> Option<Mask> {
        image
            .has_transparency()
            .then(|| Mask::from_keep_levels(image.width, image.height, image.alpha().into_iter()))
    }

    /// A grey image read the way diffusers and A1111 read masks: white repaints, black keeps.
    pub fn from_white(image: &RgbImage) -> Mask {
        let repaint = image
            .pixels
            .chunks_exact(3)
            .map(|p| luma([p[0], p[1], p[2]]));
        Mask {
            width: image.width,
            height: image.height,
            values: repaint.map(|v| v as f32 / 255.0).collect(),
        }
    }

    /// 8-bit levels where 255 keeps and 0 repaints.
    fn from_keep_levels(width: usize, height: usize, keep: impl Iterator<Item = u8>) -> Mask {
        Mask {
            width,
            height,
            values: keep.map(|k| (255 - k) as f32 / 255.0).collect(),
        }
    }

    /// Everything kept, as a canvas to combine other masks into.
    pub fn keep_all(width: usize, height: usize) -> Mask {
        Mask {
            width,
            height,
            values: vec![0.0; width * height],
        }
    }

    /// Repaints what this mask keeps (InvokeAI's `--invert_mask`).
    pub fn inverted(&self) -> Mask {
        self.map(|v| 1.0 - v)
    }

    /// Repaints what either mask repaints: InvokeAI multiplies a `-M` mask with the init
    /// image's alpha, i.e. multiplies the kept fractions.
    pub fn union(&self, other: &Mask) -> Result<Mask, DreamError> {
        if (self.width, self.height) != (other.width, other.height) {
            return Err(DreamError::InvalidRequest(format!(
                "the mask is {}x{} but the image is {}x{}",
                other.width, other.height, self.width, self.height
            )));
        }
        let values = self.values.iter().zip(&other.values);
        Ok(Mask {
            values: values.map(|(a, b)| 1.0 - (1.0 - a) * (1.0 - b)).collect(),
            ..self.clone()
        })
    }

    fn map(&self, f: impl Fn(f32) -> f32) -> Mask {
        Mask {
            values: self.values.iter().map(|&v| f(v)).collect(),
            ..self.clone()
        }
    }

    /// A1111's mask blur: a Gaussian of standard deviation `radius` pixels (PIL's
    /// `GaussianBlur`), which softens the edge both ways. As in PIL's 8-bit mask images, the
    /// result has 256 levels, so pixels the blur does not reach stay exactly 0.
    pub fn blurred(&self, radius: f64) -> Mask {
        let blurred = gaussian_blur(&self.values, self.width, self.height, 1, radius);
        Mask {
            values: blurred
                .into_iter()
                .map(|v| (v * 255.0).round() / 255.0)
                .collect(),
            ..self.clone()
        }
    }

    /// 1 where at least half repainted, else 0 (diffusers' `do_binarize`).
    pub fn binarized(&self) -> Mask {
        self.map(|v| if v >= 0.5 { 1.0 } else { 0.0 })
    }

    /// Whether no pixel is repainted at all.
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(|&v| v == 0.0)
    }

    /// The smallest rectangle holding every repainted pixel, if any.
    pub fn bounds(&self) -> Option<Rect> {
        let mut rect: Option<Rect> = None;
        for (i, _) in self.values.iter().enumerate().filter(|(_, &v)| v > 0.0) {
            let (x, y) = (i % self.width, i / self.width);
            rect = Some(match rect {
                None => Rect {
                    x,
                    y,
                    width: 1,
                    height: 1,
                },
                Some(r) => r.including(x, y),
            });
        }
        rect
    }

    /// The part of the mask inside `rect`.
    pub fn crop(&self, rect: Rect) -> Mask {
        let values = (rect.y..rect.y + rect.height)
            .flat_map(|y| &self.values[y * self.width + rect.x..y * self.width + rect.right()])
            .copied()
            .collect();
        Mask {
            width: rect.width,
            height: rect.height,
            values,
        }
    }

    /// The mask scaled to `width` × `height` as Pillow resizes an `L` image with Lanczos
    /// (A1111 and InvokeAI resize masks with their images this way): values go through 8 bits.
    pub fn resized(&self, width: usize, height: usize) -> Result<Mask, DreamError> {
        if (self.width, self.height) == (width, height) {
            return Ok(self.clone());
        }
        let bytes: Vec<u8> = self
            .values
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        let resized = resize_samples(&bytes, (self.width, self.height), 1, (width, height))?;
        Ok(Mask {
            width,
            height,
            values: resized.into_iter().map(|b| f32::from(b) / 255.0).collect(),
        })
    }

    /// `[1, 1, h/8, w/8]` at the latents' resolution, each latent pixel taking the top-left
    /// pixel of its 8×8 block (diffusers' `interpolate(mask, size)`, mode nearest).
    pub(crate) fn latent_nearest(&self, device: &Device) -> Result<Tensor, DreamError> {
        let (w, h) = (self.width / 8, self.height / 8);
        let values: Vec<f32> = (0..h * w)
            .map(|i| self.values[(i / w) * 8 * self.width + (i % w) * 8])
            .collect();
        Ok(Tensor::from_vec(values, (1, 1, h, w), device)?)
    }

    /// `[1, 1, h/8, w/8]`: a latent pixel is repainted (1) when on average at least half of its
    /// 8×8 block is (A1111 resizes the blurred mask to the latents and rounds it), else kept (0).
    pub(crate) fn latent_rounded(&self, device: &Device) -> Result<Tensor, DreamError> {
        let (w, h) = (self.width / 8, self.height / 8);
        let block_mean = |i: usize| {
            let (bx, by) = ((i % w) * 8, (i / w) * 8);
            let sum: f32 = (by..by + 8)
                .flat_map(|y| &self.values[y * self.width + bx..y * self.width + bx + 8])
                .sum();
            sum / 64.0
        };
        let values: Vec<f32> = (0..h * w)
            .map(|i| if block_mean(i) >= 0.5 { 1.0 } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(values, (1, 1, h, w), device)?)
    }
}

/// A pixel rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Rect {
    pub fn right(&self) -> usize {
        self.x + self.width
    }

    pub fn bottom(&self) -> usize {
        self.y + self.height
    }

    fn including(self, x: usize, y: usize) -> Rect {
        let (left, top) = (self.x.min(x), self.y.min(y));
        let (right, bottom) = (self.right().max(x + 1), self.bottom().max(y + 1));
        Rect {
            x: left,
            y: top,
            width: right - left,
            height: bottom - top,
        }
    }
}

/// PIL's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn luma([r, g, b]: [u8; 3]) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Box blurs per axis in PIL's `GaussianBlur`.
const GAUSSIAN_PASSES: u32 = 3;

/// A Gaussian blur of standard deviation `radius` over `channels` interleaved channels, the
/// way PIL's `GaussianBlur` makes it: three box blurs each way, of a fractional box radius
/// whose three-fold variance equals radius², with edge pixels extended past the border. Its
/// cost does not grow with the radius.
pub fn gaussian_blur(
    values: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    radius: f64,
) -> Vec<f32> {
    if radius <= 0.0 {
        return values.to_vec();
    }
    let box_radius = box_radius_for(radius, GAUSSIAN_PASSES);
    box_blur_passes(values, width, height, channels, box_radius, GAUSSIAN_PASSES)
}

/// PIL's `BoxBlur(radius)` on one channel: one pass of a (2r+1)-pixel box each way, edge pixels
/// extended past the border.
pub fn box_blur(values: &[f32], width: usize, height: usize, radius: usize) -> Vec<f32> {
    if radius == 0 {
        return values.to_vec();
    }
    box_blur_passes(values, width, height, 1, radius as f64, 1)
}

/// `passes` box blurs of (fractional) radius `radius` along the rows, then as many along the
/// columns, as PIL's `ImagingBoxBlur` orders them.
fn box_blur_passes(
    values: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    radius: f64,
    passes: u32,
) -> Vec<f32> {
    let mut out = values.to_vec();
    for _ in 0..passes {
        out = box_blur_rows(&out, width, height, channels, radius);
    }
    out = transpose(&out, width, height, channels);
    for _ in 0..passes {
        out = box_blur_rows(&out, height, width, channels, radius);
    }
    transpose(&out, height, width, channels)
}

/// PIL's `_gaussian_blur_radius`: the fractional box radius whose `passes`-fold box blur has
/// the variance of a Gaussian of standard deviation `radius`.
fn box_radius_for(radius: f64, passes: u32) -> f64 {
    let variance = radius * radius / passes as f64;
    let whole = (((12.0 * variance + 1.0).sqrt() - 1.0) / 2.0).floor();
    let extra = (2.0 * whole + 1.0) * (whole * (whole + 1.0) - 3.0 * variance)
        / (6.0 * (variance - (whole + 1.0) * (whole + 1.0)));
    whole + extra
}

/// One box blur along each row: the 2r+1 pixels around each one, plus the next pixel on each
/// side weighted by the fractional part of the radius; pixels past the ends repeat the ends.
fn box_blur_rows(
    values: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    radius: f64,
) -> Vec<f32> {
    let whole = radius.floor() as isize;
    let fraction = (radius - radius.floor()) as f32;
    let scale = 1.0 / (2.0 * radius as f32 + 1.0);
    let mut out = vec![0f32; values.len()];
    for y in 0..height {
        let row = &values[y * width * channels..(y + 1) * width * channels];
        let at = |x: isize, c: usize| row[x.clamp(0, width as isize - 1) as usize * channels + c];
        for c in 0..channels {
            let mut sum: f32 = (-whole..=whole).map(|x| at(x, c)).sum();
            for x in 0..width as isize {
                let edges = at(x - whole - 1, c) + at(x + whole + 1, c);
                out[(y * width + x as usize) * channels + c] = (sum + fraction * edges) * scale;
                sum += at(x + whole + 1, c) - at(x - whole, c);
            }
        }
    }
    out
}

fn transpose(values: &[f32], width: usize, height: usize, channels: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for y in 0..height {
        for x in 0..width {
            let (from, to) = ((y * width + x) * channels, (x * height + y) * channels);
            out[to..to + channels].copy_from_slice(&values[from..from + channels]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_constants_and_mass_and_spreads_like_a_gaussian() {
        let (w, h) = (101, 1);
        let constant = vec![0.25f32; w * h];
        let blurred = gaussian_blur(&constant, w, h, 1, 5.0);
        assert!(blurred.iter().all(|v| (v - 0.25).abs() < 1e-6));

        let mut impulse = vec![0f32; w];
        impulse[50] = 1.0;
        let blurred = gaussian_blur(&impulse, w, h, 1, 5.0);
        let mass: f32 = blurred.iter().sum();
        assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
        let variance: f32 = blurred
            .iter()
            .enumerate()
            .map(|(x, v)| v * (x as f32 - 50.0).powi(2))
            .sum();
        // Three box passes of the fractional radius have exactly the Gaussian's variance.
        assert!((variance - 25.0).abs() < 1e-3, "variance {variance}");
    }

    #[test]
    fn latent_masks_follow_diffusers_and_a1111() {
        let mut mask = Mask::keep_all(16, 8);
        // The right 8x8 block: its top-left pixel repaints, 40 of 64 pixels do.
        for y in 0..8 {
            for x in 8..13 {
                mask.values[y * 16 + x] = 1.0;
            }
        }
        let nearest: Vec<f32> = mask
            .latent_nearest(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(nearest, [0.0, 1.0]);
        let rounded: Vec<f32> = mask
            .latent_rounded(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(rounded, [0.0, 1.0]);
        assert_eq!(
            mask.bounds(),
            Some(Rect {
                x: 8,
                y: 0,
                width: 5,
                height: 8
            })
        );
    }
}
