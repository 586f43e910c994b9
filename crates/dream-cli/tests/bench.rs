//! `dream bench` checks its arguments before building the (large) networks.

mod common;

use common::{dream_command, failed};

fn bench_error(args: &[&str]) -> String {
    failed(&dream_command().arg("bench").args(args).output().unwrap())
}

#[test]
fn bench_refuses_sizes_the_vae_cannot_take() {
    let error = bench_error(&["--sizes", "512,500"]);
    assert!(
        error.contains("--sizes: 500 is not a positive multiple of 8"),
        "{error}"
    );
}

#[test]
fn bench_refuses_zero_runs() {
    let error = bench_error(&["--iters", "0"]);
    assert!(error.contains("--iters must be at least 1"), "{error}");
}

#[test]
fn bench_takes_sdxl_and_checks_its_sizes_too() {
    let error = bench_error(&["--model", "sdxl", "--sizes", "1024,1020"]);
    assert!(
        error.contains("--sizes: 1020 is not a positive multiple of 8"),
        "{error}"
    );
}

#[test]
fn bench_names_the_models_it_builds() {
    let error = bench_error(&["--model", "sd21"]);
    assert!(
        error.contains("invalid value 'sd21' for '--model <MODEL>'")
            && error.contains("[possible values: sd15, sdxl]"),
        "{error}"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn bench_on_cuda_without_cuda_support_says_how_to_build_it() {
    let error = bench_error(&["--device", "cuda", "--precision", "float16"]);
    assert!(
        error.contains("--device cuda: this build of Dream has no CUDA support")
            && error.contains("--features cuda"),
        "{error}"
    );
}

#[test]
fn bench_names_its_devices_and_precisions() {
    let error = bench_error(&["--device", "gpu"]);
    assert!(
        error.contains("invalid value 'gpu' for '--device <DEVICE>'")
            && error.contains("[possible values: cpu, cuda]"),
        "{error}"
    );
    let error = bench_error(&["--precision", "half"]);
    assert!(
        error.contains("unknown precision \"half\" (auto, float32, float16, autocast)"),
        "{error}"
    );
}
