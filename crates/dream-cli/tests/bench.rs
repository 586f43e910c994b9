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
