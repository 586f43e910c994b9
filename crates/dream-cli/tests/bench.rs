//! `dream bench` checks its arguments before building the (large) networks.

use std::process::Command;

fn bench_error(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dream"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "dream bench {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
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
