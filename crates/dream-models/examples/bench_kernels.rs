//! Times Dream's fused CPU kernels against candle's own operations at Stable Diffusion's shapes,
//! in wall and process CPU time (on a shared machine other processes inflate the former; run
//! with RAYON_NUM_THREADS=1 to compare single-core efficiency).
//!
//! cargo run --release -p dream-models --example bench_kernels -- [conv] [attention] [norm]
//!     [linear] [--only SUBSTRING] [--dream-only]

mod common;

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use dream_models::kernels;

type Op<'a> = Box<dyn Fn() -> Result<Tensor> + 'a>;

/// One operation at one shape, as candle computes it and as Dream's kernel does.
struct Case<'a> {
    name: String,
    /// Floating-point operations (or elements, for memory-bound kernels) per call.
    work: f64,
    candle: Op<'a>,
    dream: Op<'a>,
}

struct Options {
    only: Option<String>,
    dream_only: bool,
}

/// Best wall and CPU milliseconds of `f` over a few runs after a warm-up.
fn time(f: &dyn Fn() -> Result<Tensor>) -> Result<(f64, f64)> {
    f()?;
    let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
    for _ in 0..4 {
        let (w0, c0) = (Instant::now(), common::cpu_seconds());
        f()?;
        wall = wall.min(w0.elapsed().as_secs_f64() * 1e3);
        cpu = cpu.min((common::cpu_seconds() - c0) * 1e3);
    }
    Ok((wall, cpu))
}

fn run(case: Case, options: &Options) -> Result<()> {
    if let Some(only) = &options.only {
        if !case.name.contains(only.as_str()) {
            return Ok(());
        }
    }
    let (wall, cpu) = time(&case.dream)?;
    let rate = case.work / cpu * 1e-6;
    print!(
        "{:<36} dream {wall:8.2} ms ({cpu:8.2} cpu, {rate:6.1} G/s/cpu)",
        case.name
    );
    if !options.dream_only {
        let diff = ((case.candle)()? - (case.dream)()?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let (base_wall, base_cpu) = time(&case.candle)?;
        print!(
            "  candle {base_wall:8.2} ms ({base_cpu:8.2} cpu)  x{:5.2}  max diff {diff:.1e}",
            base_cpu / cpu
        );
    }
    println!();
    Ok(())
}

fn conv_cases(options: &Options) -> Result<()> {
    let dev = Device::Cpu;
    // batch, c_in, size, c_out, kernel, stride: the UNet at 512×512 with CFG, then the VAE decoder.
    let shapes = [
        (2, 320, 64, 320, 3, 1),
        (2, 960, 64, 320, 3, 1),
        (2, 640, 64, 640, 3, 1),
        (2, 320, 64, 320, 3, 2),
        (2, 640, 32, 640, 3, 1),
        (2, 1920, 32, 640, 3, 1),
        (2, 1280, 32, 1280, 3, 1),
        (2, 1280, 16, 1280, 3, 1),
        (2, 2560, 16, 1280, 3, 1),
        (2, 1280, 8, 1280, 3, 1),
        (2, 2560, 8, 1280, 3, 1),
        (1, 1280, 16, 1280, 3, 1),
        (1, 2560, 16, 1280, 3, 1),
        (2, 960, 64, 320, 1, 1),
        (2, 2560, 16, 1280, 1, 1),
        (1, 512, 64, 512, 3, 1),
        (1, 512, 128, 512, 3, 1),
        (1, 256, 256, 256, 3, 1),
        (1, 128, 512, 128, 3, 1),
        (1, 128, 512, 3, 3, 1),
    ];
    for (batch, c_in, size, c_out, k, stride) in shapes {
        let padding = k / 2;
        let x = Tensor::randn(0f32, 1., (batch, c_in, size, size), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (c_out, c_in, k, k), &dev)?;
        let b = Tensor::randn(0f32, 1., c_out, &dev)?;
        let out = (size + 2 * padding - k) / stride + 1;
        run(
            Case {
                name: format!("conv {batch}x{c_in}->{c_out} {k}x{k}/{stride} @{size}"),
                work: 2.0 * (batch * c_out * out * out * c_in * k * k) as f64,
                candle: Box::new(|| {
                    x.conv2d(&w, padding, stride, 1, 1)?
                        .broadcast_add(&b.reshape((1, (), 1, 1))?)
                }),
                dream: Box::new(|| kernels::conv2d(&x, &w, &b, None, stride, padding)),
            },
            options,
        )?;
    }
    Ok(())
}

fn attention_cases(options: &Options) -> Result<()> {
    let dev = Device::Cpu;
    // batch, heads, q_len, kv_len, head_dim: SD 1.5's self- and cross-attention at 512×512 with
    // CFG, then the VAE's single-head attention.
    let shapes = [
        (2, 8, 4096, 4096, 40),
        (2, 8, 4096, 77, 40),
        (2, 8, 1024, 1024, 80),
        (2, 8, 256, 256, 160),
        (1, 1, 4096, 4096, 512),
    ];
    for (batch, heads, q_len, kv_len, d) in shapes {
        // Heads split off `[batch, tokens, heads·d]` projections, as the models do.
        let split = |len: usize| -> Result<Tensor> {
            Tensor::randn(0f32, 1., (batch, len, heads, d), &dev)?.transpose(1, 2)
        };
        let (q, k, v) = (split(q_len)?, split(kv_len)?, split(kv_len)?);
        let scale = 1.0 / (d as f64).sqrt();
        let (q, k, v) = (&q, &k, &v);
        run(
            Case {
                name: format!("attention {batch}x{heads} {q_len}x{kv_len} d{d}"),
                work: 4.0 * (batch * heads * q_len * kv_len * d) as f64,
                candle: Box::new(move || {
                    let logits = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * scale)?;
                    candle_nn::ops::softmax_last_dim(&logits)?.matmul(&v.contiguous()?)
                }),
                dream: Box::new(move || kernels::attention(q, k, v, None, scale)),
            },
            options,
        )?;
    }
    Ok(())
}

fn norm_cases(options: &Options) -> Result<()> {
    let dev = Device::Cpu;
    for (batch, channels, size) in [(2, 320, 64), (2, 1280, 16), (1, 128, 512), (1, 512, 64)] {
        let x = Tensor::randn(0f32, 1., (batch, channels, size, size), &dev)?;
        let w = Tensor::randn(0f32, 1., channels, &dev)?;
        let b = Tensor::randn(0f32, 1., channels, &dev)?;
        let norm = candle_nn::GroupNorm::new(w.clone(), b.clone(), channels, 32, 1e-5)?;
        let (x, w, b, norm) = (&x, &w, &b, &norm);
        run(
            Case {
                name: format!("groupnorm+silu {batch}x{channels} @{size}"),
                work: x.elem_count() as f64,
                candle: Box::new(move || candle_nn::Module::forward(norm, x)?.silu()),
                dream: Box::new(move || kernels::group_norm(x, w, b, 32, 1e-5, true)),
            },
            options,
        )?;
    }
    Ok(())
}

fn linear_cases(options: &Options) -> Result<()> {
    let dev = Device::Cpu;
    // tokens, in, out: the UNet's 64×64 transformer (CFG batch) and its feed-forward network.
    for (tokens, inputs, outputs) in [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320)] {
        let x = Tensor::randn(0f32, 1., (2, tokens / 2, inputs), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (outputs, inputs), &dev)?;
        let b = Tensor::randn(0f32, 1., outputs, &dev)?;
        let r = Tensor::randn(0f32, 1., (2, tokens / 2, outputs), &dev)?;
        let linear = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let (x, w, b, r, linear) = (&x, &w, &b, &r, &linear);
        run(
            Case {
                name: format!("linear+residual {tokens}x{inputs}->{outputs}"),
                work: 2.0 * (tokens * inputs * outputs) as f64,
                candle: Box::new(move || candle_nn::Module::forward(linear, x)? + r),
                dream: Box::new(move || kernels::linear(x, w, Some(b), Some(r))),
            },
            options,
        )?;
    }
    let projected = Tensor::randn(0f32, 1., (2, 4096, 2560), &dev)?;
    let projected = &projected;
    run(
        Case {
            name: "geglu 8192x1280".to_string(),
            work: projected.elem_count() as f64 / 2.0,
            candle: Box::new(move || {
                let value = projected.narrow(2, 0, 1280)?;
                value * projected.narrow(2, 1280, 1280)?.gelu_erf()?
            }),
            dream: Box::new(move || kernels::geglu(projected)),
        },
        options,
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::keep_freed_memory();
    let options = Options {
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned()),
        dream_only: args.iter().any(|a| a == "--dream-only"),
    };
    let groups = ["conv", "attention", "norm", "linear"];
    let all = !args.iter().any(|a| groups.contains(&a.as_str()));
    let wants = |group: &str| all || args.iter().any(|a| a == group);
    if wants("conv") {
        conv_cases(&options)?;
    }
    if wants("attention") {
        attention_cases(&options)?;
    }
    if wants("norm") {
        norm_cases(&options)?;
    }
    if wants("linear") {
        linear_cases(&options)?;
    }
    Ok(())
}
