//! A CPU random generator that reproduces `torch.randn` bit for bit.
//!
//! Stable Diffusion users share seeds, and a seed only means something if the initial
//! noise is the one PyTorch draws for it. This module re-implements the three pieces of
//! PyTorch's CPU path that `torch.randn(n, generator=torch.Generator("cpu").manual_seed(s))`
//! goes through:
//!
//! * `at::mt19937` (`ATen/core/MT19937RNGEngine.h`): the standard 32-bit Mersenne Twister,
//!   seeded with the *low 32 bits* of the 64-bit seed.
//! * `at::uniform_real_distribution`: a float takes the low 24 bits of one 32-bit draw, a
//!   double the low 53 bits of a 64-bit draw made of two 32-bit draws (first one high).
//! * `normal_kernel` (`ATen/native/cpu/DistributionTemplates.h`): a contiguous float tensor
//!   with at least 16 elements is first filled with uniforms, then transformed by
//!   Box-Muller in blocks of 16 (element `j` pairs with `j + 8`); when the length is not a
//!   multiple of 16, the last 16 elements are drawn again and transformed once more. Smaller
//!   tensors, and doubles, take other paths described on the methods.
//!
//! For floats, x86 PyTorch builds (AVX2 and AVX512 kernels alike) run the Box-Muller step
//! through `avx_mathfun.h`, Cephes-style polynomial `log` and `sincos` evaluated in f32 and
//! compiled with FMA contraction. `box_muller_16` below repeats that arithmetic operation for
//! operation, fused multiply-adds included, so the result is the same on every platform.
//! (PyTorch's non-SIMD fallback, used e.g. with `ATEN_CPU_CAPABILITY=default`, calls libm
//! instead and differs in the last bits; it is not reproduced.)
//!
//! The double-precision paths call the platform's `ln`, `ln_1p`, `sin` and `cos`, as PyTorch
//! does; they are bit exact where both use the same libm (glibc on Linux).

use std::f64::consts::PI;

/// Number of 32-bit words in the Mersenne Twister state.
const MT_N: usize = 624;
const MT_M: usize = 397;

/// The 32-bit Mersenne Twister (MT19937) as `at::mt19937` implements it.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    next: usize,
}

impl Mt19937 {
    /// `at::mt19937(seed)`: the classic `init_genrand` on the low 32 bits of the seed.
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, next: MT_N }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..MT_N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % MT_N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next == MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// A generator with the state of `torch.Generator("cpu")`.
///
/// Like torch's, its state carries over from one call to the next, so drawing the initial
/// latents and then per-step sampler noise from one generator gives the same numbers as the
/// same sequence of `torch.randn` calls.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    /// Box-Muller makes normals in pairs; the scalar path hands out the second one on the next
    /// call (`CPUGeneratorImpl::next_double_normal_sample`), even across `randn` calls.
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`. Only the low 32 bits of the seed matter,
    /// as in torch.
    pub fn seeded(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            cached_normal: None,
        }
    }

    /// `CPUGeneratorImpl::random64`: two 32-bit draws, the first one in the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled into [0, 1).
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & ((1 << f32::MANTISSA_DIGITS) - 1)) as f32
            / (1u32 << f32::MANTISSA_DIGITS) as f32
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits scaled into [0, 1).
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1 << f64::MANTISSA_DIGITS) - 1)) as f64
            / (1u64 << f64::MANTISSA_DIGITS) as f64
    }

    /// `at::normal_distribution<double>` with mean 0 and std 1: one Box-Muller pair per two
    /// calls, the sine half cached for the next call.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n, generator=g)` (float32): `n` standard normal samples.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            // torch's scalar fallback computes in double and rounds.
            return (0..n).map(|_| self.scalar_normal() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block.try_into().expect("chunks of 16"));
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for x in tail.iter_mut() {
                *x = self.uniform_f32();
            }
            box_muller_16(tail.try_into().expect("a tail of 16"));
        }
        data
    }

    /// `torch.rand(n, generator=g)` (float32): `n` uniform samples in [0, 1), one 32-bit draw
    /// each, in order (torch's CPU `uniform_` is a serial kernel, unlike `normal_`).
    pub fn rand(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform_f32()).collect()
    }

    /// `torch.randn(n, generator=g, dtype=torch.float64)`: `n` standard normal samples.
    pub fn randn_f64(&mut self, n: usize) -> Vec<f64> {
        if n < 16 {
            return (0..n).map(|_| self.scalar_normal()).collect();
        }
        let mut data: Vec<f64> = (0..n).map(|_| self.uniform_f64()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16_f64(block.try_into().expect("chunks of 16"));
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for x in tail.iter_mut() {
                *x = self.uniform_f64();
            }
            box_muller_16_f64(tail.try_into().expect("a tail of 16"));
        }
        data
    }
}

/// `normal_fill_16_AVX2`: turns 16 uniforms in [0, 1) into 16 standard normals; lane `j`
/// (cosine) and lane `j + 8` (sine) come from the pair (`data[j]`, `data[j + 8]`).
fn box_muller_16(data: &mut [f32; 16]) {
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2π rounded to f32 once.
    let two_pi = (2.0 * PI) as f32;
    for j in 0..8 {
        // [0, 1) -> (0, 1] so the logarithm is finite.
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * log_f32(u1)).sqrt();
        let (sin, cos) = sincos_f32(two_pi * u2);
        // torch stores `fmadd(n, std, mean)` with std 1 and mean 0; the `+ 0.0` is that add,
        // which turns a -0 into +0.
        data[j] = radius * cos + 0.0;
        data[j + 8] = radius * sin + 0.0;
    }
}

/// `normal_fill_16<double>`: the same transform in double precision with libm functions.
fn box_muller_16_f64(data: &mut [f64; 16]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * PI * u2;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

/// `log256_ps` from avx_mathfun.h for one lane, valid for x in (0, 1] (all Box-Muller
/// needs): Cephes' logf, split into exponent and a mantissa in [√½, √2), with the
/// multiply-adds GCC fuses in torch's build.
fn log_f32(x: f32) -> f32 {
    // avx_mathfun.h writes its constants as double literals rounded to float.
    const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const P: [f32; 9] = [
        7.0376836292E-2_f64 as f32,
        -1.1514610310E-1_f64 as f32,
        1.1676998740E-1_f64 as f32,
        -1.2420140846E-1_f64 as f32,
        1.4249322787E-1_f64 as f32,
        -1.6668057665E-1_f64 as f32,
        2.0000714765E-1_f64 as f32,
        -2.4999993993E-1_f64 as f32,
        3.3333331174E-1_f64 as f32,
    ];
    const Q1: f32 = -2.12194440e-4_f64 as f32;
    const Q2: f32 = 355.0 / 512.0; // 0.693359375, so e·Q2 is exact

    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // Keep the mantissa, with the exponent of 0.5: m in [0.5, 1).
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    if m < SQRTHF {
        e -= 1.0;
        m = m - 1.0 + m;
    } else {
        m -= 1.0;
    }
    let z = m * m;
    let mut y = P[0];
    for p in &P[1..] {
        y = y.mul_add(m, *p);
    }
    y *= m;
    y = y.mul_add(z, e * Q1);
    y -= z * 0.5;
    // e·Q2 is exact, so the fused and the plain add agree.
    m + y + e * Q2
}

/// `sincos256_ps` from avx_mathfun.h for one lane, valid for x >= 0 (Box-Muller angles lie in
/// [0, 2π)): Cephes' sinf/cosf with a reduction by π/4 in three parts.
fn sincos_f32(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.27323954473516_f64 as f32; // 4/π
                                                   // π/4 split so that y·DP1 and y·DP2 are exact for small y.
    const DP1: f32 = 0.78515625;
    const DP2: f32 = 2.418_756_484_985_351_6e-4_f64 as f32;
    const DP3: f32 = 3.774_894_977_445_941e-8_f64 as f32;
    const SINCOF: [f32; 3] = [
        -1.9515295891E-4_f64 as f32,
        8.3321608736E-3_f64 as f32,
        -1.6666654611E-1_f64 as f32,
    ];
    const COSCOF: [f32; 3] = [
        2.443315711809948E-005_f64 as f32,
        -1.388731625493765E-003_f64 as f32,
        4.166664568298827E-002_f64 as f32,
    ];

    // j = (trunc(x·4/π) + 1) & !1: the even octant whose centre is nearest.
    let octant = ((x * FOPI) as i32 + 1) & !1;
    let y = octant as f32;
    let sin_negative = octant & 4 != 0;
    let cos_negative = (octant - 2) & 4 == 0;
    // Near a multiple of π/2 (octant ≡ 2 mod 4) sine and cosine swap polynomials.
    let swap = octant & 2 != 0;

    let x = y.mul_add(-DP1, x);
    let x = y.mul_add(-DP2, x);
    let x = y.mul_add(-DP3, x);
    let z = x * x;

    let mut cos_poly = COSCOF[0].mul_add(z, COSCOF[1]).mul_add(z, COSCOF[2]);
    cos_poly *= z;
    cos_poly = cos_poly.mul_add(z, -(z * 0.5)) + 1.0;

    let mut sin_poly = SINCOF[0].mul_add(z, SINCOF[1]).mul_add(z, SINCOF[2]);
    sin_poly *= z;
    sin_poly = sin_poly.mul_add(x, x);

    let (sin, cos) = if swap {
        (cos_poly, sin_poly)
    } else {
        (sin_poly, cos_poly)
    };
    (
        if sin_negative { -sin } else { sin },
        if cos_negative { -cos } else { cos },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{f32s, f64s, read};
    use safetensors::SafeTensors;

    /// Bitwise equality, reporting the first differing element.
    fn assert_bits_eq<T: Copy + PartialEq + std::fmt::Debug>(name: &str, ours: &[T], torch: &[T]) {
        assert_eq!(ours.len(), torch.len(), "{name}: length");
        if let Some(i) = (0..ours.len()).find(|&i| ours[i] != torch[i]) {
            panic!(
                "{name}: element {i} is {:?}, torch has {:?}",
                ours[i], torch[i]
            );
        }
    }

    #[test]
    fn mt19937_matches_the_cpp_standard() {
        // [rand.predef]: the 10000th output of a default-seeded (5489) mt19937 is 4123659995.
        let mut mt = Mt19937::new(5489);
        let last = (0..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    /// Every tensor of fixtures/rng/torch_randn.safetensors, drawn by torch 2.15 on x86:
    /// `seed{S}_n{N}` / `seed{S}_shape{AxB..}` from a fresh generator, `seed{S}_n{N}_f64` the
    /// same in float64, `seed42_seq{K}` consecutive draws from one generator.
    #[test]
    fn randn_is_bit_exact_with_torch() {
        let bytes = read("rng/torch_randn.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<&str> = st.names();
        names.sort();
        let mut sequences: Vec<(usize, &str)> = Vec::new();
        for name in names {
            let (seed, rest) = name
                .strip_prefix("seed")
                .and_then(|s| s.split_once('_'))
                .unwrap_or_else(|| panic!("unexpected tensor name {name}"));
            let seed: u64 = seed.parse().unwrap();
            let numel = st.tensor(name).unwrap().shape().iter().product::<usize>();
            if let Some(k) = rest.strip_prefix("seq") {
                sequences.push((k.parse().unwrap(), name));
            } else if rest.ends_with("_f64") {
                let ours = TorchGenerator::seeded(seed).randn_f64(numel);
                assert_bits_eq(name, &ours, &f64s(&st, name));
            } else {
                assert!(rest.starts_with('n') || rest.starts_with("shape"), "{name}");
                let ours = TorchGenerator::seeded(seed).randn(numel);
                assert_bits_eq(name, &ours, &f32s(&st, name));
            }
        }
        assert!(sequences.len() >= 2, "the fixture has consecutive draws");
        sequences.sort();
        let mut generator = TorchGenerator::seeded(42);
        for (_, name) in sequences {
            let torch = f32s(&st, name);
            assert_bits_eq(name, &generator.randn(torch.len()), &torch);
        }
    }

    /// The reference pipelines draw every random tensor from one seeded torch generator, in
    /// the order their metadata lists (img2img draws the VAE sample before the latent noise).
    #[test]
    fn reference_pipeline_noise_is_reproduced() {
        for file in [
            "ref/txt2img_ddim.safetensors",
            "ref/txt2img_euler.safetensors",
            "ref/txt2img_euler_64x48.safetensors",
            "ref/img2img_ddim.safetensors",
        ] {
            let bytes = read(file);
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            let reference: serde_json::Value =
                serde_json::from_str(&meta.metadata().as_ref().unwrap()["reference"]).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut generator = TorchGenerator::seeded(reference["seed"].as_u64().unwrap());
            let order = reference["noise_order"].as_array().unwrap();
            assert!(!order.is_empty(), "{file}");
            for name in order {
                let name = name.as_str().unwrap();
                let torch = f32s(&st, name);
                assert_bits_eq(
                    &format!("{file} {name}"),
                    &generator.randn(torch.len()),
                    &torch,
                );
            }
        }
    }

    /// fixtures/variations/noise.safetensors (tools/parity/variation_fixtures.py):
    /// `rand_seed{S}_n{N}` is `torch.rand(N)` from a fresh generator, `randn_then_rand` is
    /// `randn(20)` then `rand(81)` from one generator.
    #[test]
    fn rand_is_bit_exact_with_torch() {
        let bytes = read("variations/noise.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for seed in [0u64, 42] {
            for n in [5, 81, 100] {
                let name = format!("rand_seed{seed}_n{n}");
                let ours = TorchGenerator::seeded(seed).rand(n);
                assert_bits_eq(&name, &ours, &f32s(&st, &name));
            }
        }
        let mut generator = TorchGenerator::seeded(42);
        let mut ours = generator.randn(20);
        ours.extend(generator.rand(81));
        assert_bits_eq("randn_then_rand", &ours, &f32s(&st, "randn_then_rand"));
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_count() {
        let mut a = TorchGenerator::seeded(42);
        let mut b = TorchGenerator::seeded(42 + (7 << 32));
        assert_eq!(a.randn(40), b.randn(40));
    }
}
