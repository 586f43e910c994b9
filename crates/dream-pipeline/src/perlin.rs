//! Perlin noise mixed into the initial noise (InvokeAI 2.x's `--perlin`).
//!
//! InvokeAI's `get_noise` draws the seed's Gaussian noise and then, from the same torch
//! generator, one 2-D Perlin field per latent channel (`rand_perlin_2d` in its `ldm/util.py`,
//! an 8×8 lattice of random gradient directions over the latent), and mixes them as
//! `(1 − p)·gaussian + p·perlin`. The arithmetic below is in f32 in torch's order.

use dream_core::rng::TorchGenerator;

use crate::DreamError;

/// Gradient lattice cells along each axis, as InvokeAI's `res=(8, 8)`.
const LATTICE: usize = 8;

/// One Perlin field per channel, `[channels, height, width]` flattened, drawing each channel's
/// `(LATTICE + 1)²` gradient angles from `generator` with `torch.rand`.
pub fn perlin_noise(
    generator: &mut TorchGenerator,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>, DreamError> {
    if !height.is_multiple_of(LATTICE)
        || !width.is_multiple_of(LATTICE)
        || height == 0
        || width == 0
    {
        return Err(DreamError::InvalidRequest(format!(
            "Perlin noise needs latents whose sides are multiples of {LATTICE} (images in \
             multiples of {}), got {width}x{height}",
            LATTICE * 8
        )));
    }
    let mut noise = Vec::with_capacity(channels * height * width);
    for _ in 0..channels {
        noise.extend(perlin_field(generator, height, width));
    }
    Ok(noise)
}

/// `rand_perlin_2d((height, width), (8, 8))`.
fn perlin_field(generator: &mut TorchGenerator, height: usize, width: usize) -> Vec<f32> {
    let side = LATTICE + 1;
    let two_pi = std::f64::consts::TAU as f32;
    let gradients: Vec<(f32, f32)> = generator
        .rand(side * side)
        .into_iter()
        .map(|r| {
            let angle = two_pi * r;
            (angle.cos(), angle.sin())
        })
        .collect();
    let gradient = |i: usize, j: usize| gradients[i * side + j];
    // Position inside its lattice cell, as `torch.arange(0, 8, 8 / size) % 1`.
    let fraction = |index: usize, size: usize| {
        let position = (index as f64 * (LATTICE as f64 / size as f64)) as f32;
        position % 1.0
    };
    let (cell_rows, cell_cols) = (height / LATTICE, width / LATTICE);
    let mut field = Vec::with_capacity(height * width);
    for y in 0..height {
        let (fy, cy) = (fraction(y, height), y / cell_rows);
        for x in 0..width {
            let (fx, cx) = (fraction(x, width), x / cell_cols);
            // Each corner's gradient dotted with the offset from that corner.
            let dot = |(gy, gx): (f32, f32), dy: f32, dx: f32| (fy + dy) * gy + (fx + dx) * gx;
            let n00 = dot(gradient(cy, cx), 0.0, 0.0);
            let n10 = dot(gradient(cy + 1, cx), -1.0, 0.0);
            let n01 = dot(gradient(cy, cx + 1), 0.0, -1.0);
            let n11 = dot(gradient(cy + 1, cx + 1), -1.0, -1.0);
            let (ty, tx) = (fade(fy), fade(fx));
            let value = lerp(lerp(n00, n10, ty), lerp(n01, n11, ty), tx);
            field.push(std::f32::consts::SQRT_2 * value);
        }
    }
    field
}

/// Perlin's quintic fade curve 6t⁵ − 15t⁴ + 10t³.
fn fade(t: f32) -> f32 {
    6.0 * t.powi(5) - 15.0 * t.powi(4) + 10.0 * t.powi(3)
}

/// `torch.lerp`, which interpolates from the nearer end for accuracy.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// InvokeAI's mix: `(1 − perlin)·noise + perlin·perlin_noise`, in place.
pub fn mix_perlin(noise: &mut [f32], perlin_noise: &[f32], perlin: f64) {
    let (keep, mix) = ((1.0 - perlin) as f32, perlin as f32);
    for (n, p) in noise.iter_mut().zip(perlin_noise) {
        *n = keep * *n + mix * p;
    }
}
