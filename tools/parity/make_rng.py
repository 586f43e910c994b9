#!/usr/bin/env python3
"""Write fixtures for a torch-compatible CPU RNG (torch.Generator("cpu"), mt19937 + Box-Muller).

Usage: make_rng.py OUT.safetensors

  seed{S}_n{N}    float32 [N]   torch.randn(N, generator=torch.Generator("cpu").manual_seed(S))
  seed{S}_shape{A}x{B}x...   float32, the same for a latent shape (drawn as that shape)
  seed42_seq0, seed42_seq1   randn(16) then randn(5) from ONE generator (samplers draw repeatedly)
  seed42_n20_f64  float64 [20]  torch.randn(20, ..., dtype=torch.float64)
The metadata key "rng" holds the seeds, sizes, shapes and the torch version as JSON.
"""
import json
import sys

import torch
from safetensors.torch import save_file

SEEDS = [0, 1, 42, 1234, 4294967295, 123456789012]
SIZES = [1, 2, 5, 15, 16, 17, 31, 32, 33, 100, 256, 1000]
SHAPES = [[1, 4, 64, 64], [2, 4, 96, 64]]


def randn(seed, shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)


def main():
    out = {}
    for s in SEEDS:
        for n in SIZES:
            out[f"seed{s}_n{n}"] = randn(s, [n])
    for shape in SHAPES:
        for s in (0, 42):
            out[f"seed{s}_shape{'x'.join(map(str, shape))}"] = randn(s, shape)
    g = torch.Generator("cpu").manual_seed(42)
    out["seed42_seq0"] = torch.randn(16, generator=g, dtype=torch.float32)
    out["seed42_seq1"] = torch.randn(5, generator=g, dtype=torch.float32)
    out["seed42_n20_f64"] = randn(42, [20], torch.float64)
    meta = {"seeds": SEEDS, "sizes": SIZES, "shapes": SHAPES, "shape_seeds": [0, 42],
            "generator": 'torch.Generator("cpu").manual_seed(seed)', "torch": torch.__version__}
    save_file(out, sys.argv[1], metadata={"rng": json.dumps(meta)})
    print(f"wrote {sys.argv[1]} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
