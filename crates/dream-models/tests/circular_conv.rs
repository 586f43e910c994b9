//! Seamless convolutions against PyTorch: `Conv2d(padding_mode="circular")` for both axes and
//! InvokeAI's one-axis form (circular padding along one axis, zeros along the other), at
//! strides 1 and 2, from fixtures/variations/circular_conv.safetensors
//! (tools/parity/variation_fixtures.py).

use std::collections::HashMap;

use candle_core::{DType, Device, Module};
use candle_nn::VarBuilder;
use dream_models::layers::{conv2d, ConvConfig, PaddingMode};
use dream_test_support::{load_fixture, max_abs_diff};

#[test]
fn circular_padding_matches_torch() {
    let r = load_fixture("variations/circular_conv.safetensors");
    let tensors = HashMap::from([
        ("weight".to_string(), r["weight"].clone()),
        ("bias".to_string(), r["bias"].clone()),
    ]);
    for stride in [1, 2] {
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
        let conv = conv2d(3, 4, 3, ConvConfig { stride, padding: 1 }, vb).unwrap();
        for (axes, mode) in [
            ("xy", PaddingMode::Circular { x: true, y: true }),
            ("x", PaddingMode::Circular { x: true, y: false }),
            ("y", PaddingMode::Circular { x: false, y: true }),
        ] {
            conv.set_padding_mode(mode);
            let ours = conv.forward(&r["x"]).unwrap();
            let diff = max_abs_diff(&ours, &r[&format!("out_{axes}_s{stride}")]);
            println!("circular {axes}, stride {stride}: max abs diff {diff:e}");
            assert!(diff < 1e-5, "{axes}, stride {stride}: {diff}");
        }
        // Zero padding differs from each of them at the border.
        conv.set_padding_mode(PaddingMode::Zeros);
        let zeros = conv.forward(&r["x"]).unwrap();
        assert!(max_abs_diff(&zeros, &r[&format!("out_x_s{stride}")]) > 0.1);
    }
}
