//! Vectorised element-wise math: the exponential of the softmax and of SiLU, and the GELUs. The
//! loops are plain element-wise code, written so that the compiler turns them into AVX-512 (or
//! AVX2) code in the copies `dispatch!` makes, which pick the widest instruction set the CPU has at
//! run time.

/// `e^x` to within 2 ulp for `x` in [-87, 88], clamped outside (so `e^-∞` is ~1e-38, not 0).
/// Cody–Waite range reduction `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, and Cephes' `expf` polynomial
/// for `e^r`; `2^n` is built directly in the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = 1.987_569_1e-4f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 1.666_666_5e-1)
        .mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    // 2^n from the bits of 1.5·2^23 + n, whose low bits hold the integer n: no float-to-int
    // conversion, which would not vectorise.
    let biased = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000 - 127);
    e * f32::from_bits(biased << 23)
}

/// The error function to within ~3e-7, as Eigen's (and so TensorFlow's) float `erf`: an odd
/// rational minimax approximation on [-4, 4], outside which `erf` is ±1 in f32.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = (-2.726_142_3e-10f32)
        .mul_add(x2, 2.770_681_4e-8)
        .mul_add(x2, -2.101_024e-6)
        .mul_add(x2, -5.692_506_4e-5)
        .mul_add(x2, -7.349_906_3e-4)
        .mul_add(x2, -2.954_600_3e-3)
        .mul_add(x2, -1.609_603_3e-2);
    let q = (-1.456_607_2e-5f32)
        .mul_add(x2, -2.133_740_6e-4)
        .mul_add(x2, -1.682_827e-3)
        .mul_add(x2, -7.373_329_3e-3)
        .mul_add(x2, -1.426_473_9e-2);
    x * p / q
}

/// The exact (erf) GELU, `x·Φ(x)`, as `torch.nn.functional.gelu` by default.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn geglu_impl(value: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, v), g) in out.iter_mut().zip(value).zip(gate) {
        *o = v * gelu(*g);
    }
}

#[inline(always)]
fn gelu_impl(xs: &[f32], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = gelu(*x);
    }
}

/// `x·σ(1.702·x)`: the sigmoid approximation of GELU that OpenAI's CLIP was trained with.
#[inline(always)]
fn quick_gelu_impl(xs: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = x / (1.0 + exp(-1.702 * x));
    }
}

/// `x·σ(x)`, the SiLU (swish) activation.
#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn max_in_place_impl(acc: &mut [f32], xs: &[f32]) {
    for (m, &x) in acc.iter_mut().zip(xs) {
        *m = m.max(x);
    }
}

#[inline(always)]
fn exp_accumulate_impl(xs: &mut [f32], shifts: &[f32], sums: &mut [f32]) {
    for ((x, &shift), s) in xs.iter_mut().zip(shifts).zip(sums.iter_mut()) {
        *x = exp(*x - shift);
        *s += *x;
    }
}

/// Defines `$name` that runs `$body` compiled for AVX-512 or AVX2+FMA when the CPU has them.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:ident) => {
        $(#[$doc])*
        pub(super) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(super) use dispatch;

dispatch! {
    /// `out[i] = value[i]·gelu(gate[i])`, the gated GELU of SD's feed-forward networks.
    fn geglu(value: &[f32], gate: &[f32], out: &mut [f32]) = geglu_impl
}

dispatch! {
    /// `out[i] = gelu(xs[i])`, the exact (erf) GELU.
    fn gelu_into(xs: &[f32], out: &mut [f32]) = gelu_impl
}

dispatch! {
    /// `out[i] = xs[i]·σ(1.702·xs[i])`, CLIP's QuickGELU.
    fn quick_gelu_into(xs: &[f32], out: &mut [f32]) = quick_gelu_impl
}

dispatch! {
    /// `acc[i] = max(acc[i], xs[i])`.
    fn max_in_place(acc: &mut [f32], xs: &[f32]) = max_in_place_impl
}

dispatch! {
    /// `xs[i] = e^(xs[i] − shifts[i])`, added onto `sums[i]`.
    fn exp_accumulate(xs: &mut [f32], shifts: &[f32], sums: &mut [f32]) = exp_accumulate_impl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), exact));
            x += 0.001_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn vectorised_max_and_exp_match_scalar_on_odd_lengths() {
        for len in [0, 1, 15, 16, 17, 100, 4099] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let shifts: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
            let mut acc = shifts.clone();
            max_in_place(&mut acc, &xs);
            for ((a, x), s) in acc.iter().zip(&xs).zip(&shifts) {
                assert_eq!(*a, x.max(*s), "len {len}");
            }
            let mut ys = xs.clone();
            let mut sums = vec![1f32; len];
            exp_accumulate(&mut ys, &shifts, &mut sums);
            for (((y, x), s), total) in ys.iter().zip(&xs).zip(&shifts).zip(&sums) {
                let exact = ((x - s) as f64).exp() as f32;
                assert!(
                    ulps(*y, exact) <= 2,
                    "len {len}: e^({x} - {s}) = {y}, not {exact}"
                );
                assert_eq!(*total, 1.0 + y);
            }
        }
    }

    #[test]
    fn erf_and_gelu_match_libm() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
            x += 0.000_731;
        }
        assert!(worst < 5e-7, "erf max abs error {worst}");
        let value: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 / 10.0).collect();
        let gate: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
        let mut out = vec![0f32; 37];
        geglu(&value, &gate, &mut out);
        for ((o, v), g) in out.iter().zip(&value).zip(&gate) {
            let (v, g) = (*v as f64, *g as f64);
            let exact = v * 0.5 * g * (1.0 + libm::erf(g / 2f64.sqrt()));
            assert!(
                (*o as f64 - exact).abs() < 1e-6 * v.max(1.0),
                "geglu({v}, {g})"
            );
        }
    }

    #[test]
    fn gelus_match_definitions_on_odd_lengths() {
        for len in [0, 1, 15, 17, 1001] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 203) as f32 - 101.0) / 9.0)
                .collect();
            let mut exact_out = vec![f32::NAN; len];
            let mut quick_out = vec![f32::NAN; len];
            gelu_into(&xs, &mut exact_out);
            quick_gelu_into(&xs, &mut quick_out);
            for ((x, e), q) in xs.iter().zip(&exact_out).zip(&quick_out) {
                let x = *x as f64;
                let exact = x * 0.5 * (1.0 + libm::erf(x / 2f64.sqrt()));
                let quick = x / (1.0 + (-1.702 * x).exp());
                let tolerance = 1e-6 * x.abs().max(1.0);
                assert!((*e as f64 - exact).abs() < tolerance, "gelu({x}) = {e}");
                assert!(
                    (*q as f64 - quick).abs() < tolerance,
                    "quick_gelu({x}) = {q}"
                );
            }
        }
    }

    #[test]
    fn silu_matches_definition() {
        for x in [-100.0f32, -10.0, -1.0, -1e-3, 0.0, 0.5, 3.0, 20.0, 90.0] {
            let exact = x as f64 / (1.0 + (-x as f64).exp());
            assert!(
                (silu(x) as f64 - exact).abs() <= 1e-6 * exact.abs().max(1e-30),
                "silu({x}) = {} vs {exact}",
                silu(x)
            );
        }
    }
}
