//! Outpainting as InvokeAI 2.x does it: the canvas grows by transparent margins
//! (`-c/--outcrop`), inpainting fills every transparent pixel (the hole first takes the
//! colours around it), and an optional seam pass repaints a band along the old border
//! (`--seam_size --seam_blur --seam_strength --seam_steps`).

use crate::image::RgbaImage;
use crate::img2img::InitImage;
use crate::inpaint::{Inpaint, MaskedContent};
use crate::mask::{box_blur, Mask};
use crate::model::StableDiffusion;
use crate::sampling::StepInfo;
use crate::txt2img::{Generated, Txt2Img};
use crate::DreamError;

/// How far the canvas grows on each side, in pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcrop {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

/// InvokeAI rounds every margin up to a multiple of this.
const MARGIN_MULTIPLE: usize = 64;

/// The img2img strength InvokeAI 2.x's outcrop paints the grown canvas with.
pub const OUTCROP_STRENGTH: f64 = 0.9;

impl Outcrop {
    /// InvokeAI's `-c` arguments: direction and pixels, in pairs (`top 64 left 32`); a
    /// direction given twice adds up.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Outcrop, DreamError> {
        let invalid = |message: String| DreamError::InvalidRequest(message);
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err(invalid(
                "outcrop takes direction and pixels in pairs, e.g. `top 64 left 32`".into(),
            ));
        }
        let mut outcrop = Outcrop::default();
        for pair in args.chunks_exact(2) {
            let (direction, pixels) = (pair[0].as_ref(), pair[1].as_ref());
            let pixels: usize = pixels.parse().map_err(|_| {
                invalid(format!(
                    "outcrop {direction}: {pixels:?} is not a whole number of pixels"
                ))
            })?;
            let side = match direction {
                "top" => &mut outcrop.top,
                "bottom" => &mut outcrop.bottom,
                "left" => &mut outcrop.left,
                "right" => &mut outcrop.right,
                other => {
                    return Err(invalid(format!(
                        "unknown outcrop direction {other:?}: expected top, bottom, left or right"
                    )))
                }
            };
            *side += pixels;
        }
        Ok(outcrop)
    }

    /// The margins as InvokeAI applies them: each rounded up to a multiple of 64.
    pub fn rounded(&self) -> Outcrop {
        let up = |v: usize| v.div_ceil(MARGIN_MULTIPLE) * MARGIN_MULTIPLE;
        Outcrop {
            top: up(self.top),
            bottom: up(self.bottom),
            left: up(self.left),
            right: up(self.right),
        }
    }

    /// `image` on a canvas grown by the rounded margins; the new pixels are transparent.
    pub fn extend(&self, image: &RgbaImage) -> RgbaImage {
        let m = self.rounded();
        let width = image.width + m.left + m.right;
        let height = image.height + m.top + m.bottom;
        let mut pixels = vec![0u8; width * height * 4];
        for y in 0..image.height {
            let from = y * image.width * 4;
            let to = ((y + m.top) * width + m.left) * 4;
            pixels[to..to + image.width * 4]
                .copy_from_slice(&image.pixels[from..from + image.width * 4]);
        }
        RgbaImage {
            width,
            height,
            pixels,
        }
    }
}

/// The seam pass after outpainting: an img2img inpaint of a band along the border between the
/// old and the new pixels. InvokeAI 2.x's defaults: no seam pass (size 0), blur 0, strength
/// 0.7, 10 steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seam {
    /// The band's width in pixels (about half of it on each side of the border).
    pub size: usize,
    /// The band's edge is softened by a box blur of this radius.
    pub blur: usize,
    pub strength: f64,
    pub steps: usize,
}

impl Default for Seam {
    fn default() -> Self {
        Seam {
            size: 0,
            blur: 0,
            strength: 0.7,
            steps: 10,
        }
    }
}

impl Seam {
    /// What InvokeAI 2.x's outcrop (`-c`, `!fix IMAGE -c`) uses unless told otherwise: a
    /// 96-pixel band blurred by 16, strength 0.7, 20 steps.
    pub const OUTCROP: Seam = Seam {
        size: 96,
        blur: 16,
        strength: 0.7,
        steps: 20,
    };

    /// InvokeAI's `mask_edge` on the canvas's alpha: pixels on the border between opaque and
    /// not opaque (and partly transparent ones), grown by size/2 pixels each way, box-blurred.
    pub fn mask(&self, canvas: &RgbaImage) -> Mask {
        let (width, height) = (canvas.width, canvas.height);
        let opaque: Vec<bool> = canvas.alpha().iter().map(|&a| a == 255).collect();
        let partial = |i: usize| canvas.pixels[i * 4 + 3] != 0 && !opaque[i];
        let on_border = |x: usize, y: usize| {
            let i = y * width + x;
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < width).then(|| i + 1),
                (y > 0).then(|| i - width),
                (y + 1 < height).then(|| i + width),
            ];
            partial(i)
                || neighbours
                    .into_iter()
                    .flatten()
                    .any(|n| opaque[n] != opaque[i])
        };
        let reach = self.size / 2;
        let mut values = vec![0f32; width * height];
        for y in 0..height {
            for x in (0..width).filter(|&x| on_border(x, y)) {
                for yy in y.saturating_sub(reach)..(y + reach + 1).min(height) {
                    let row = yy * width;
                    values[row + x.saturating_sub(reach)..row + (x + reach + 1).min(width)]
                        .fill(1.0);
                }
            }
        }
        Mask {
            width,
            height,
            values: box_blur(&values, width, height, self.blur),
        }
    }
}

impl StableDiffusion {
    /// Fills the transparent pixels of `canvas` (e.g. an [`Outcrop::extend`]ed image) by
    /// inpainting with masked content "fill", then runs the seam pass if `seam.size` > 0.
    /// `request` gives the prompt, sampler, steps and the init strength (its `init` image is
    /// replaced by the canvas; a mask in `request.inpaint` is added to the transparent area);
    /// its width and height must be the canvas's.
    pub fn outpaint(
        &self,
        request: &Txt2Img,
        canvas: &RgbaImage,
        seam: &Seam,
        progress: &mut dyn FnMut(StepInfo<'_>),
    ) -> Result<Generated, DreamError> {
        let Some(transparent) = Mask::from_alpha(canvas) else {
            return Err(DreamError::InvalidRequest(
                "nothing to outpaint: the image has no transparent pixels".into(),
            ));
        };
        let strength = request.init.as_ref().map_or(1.0, |init| init.strength);
        let inpaint = match &request.inpaint {
            Some(inpaint) => Inpaint {
                mask: transparent.union(&inpaint.mask)?,
                masked_content: MaskedContent::Fill,
                ..inpaint.clone()
            },
            None => Inpaint {
                masked_content: MaskedContent::Fill,
                ..Inpaint::new(transparent)
            },
        };
        let first = Txt2Img {
            init: Some(InitImage {
                image: canvas.to_rgb(),
                strength,
            }),
            inpaint: Some(inpaint),
            ..request.clone()
        };
        let painted = self.generate(&first, progress)?;
        if seam.size == 0 {
            return Ok(painted);
        }
        let seam_pass = Txt2Img {
            steps: seam.steps,
            init: Some(InitImage {
                image: painted.image,
                strength: seam.strength,
            }),
            inpaint: Some(Inpaint {
                mask_blur: 0.0,
                masked_content: MaskedContent::Original,
                inpaint_replace: 0.0,
                only_masked_padding: None,
                ..Inpaint::new(seam.mask(canvas))
            }),
            ..first.clone()
        };
        let sealed = self.generate(&seam_pass, progress)?;
        Ok(Generated {
            request: first,
            ..sealed
        })
    }
}
