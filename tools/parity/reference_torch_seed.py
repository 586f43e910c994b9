#!/usr/bin/env python3
"""../shared/parity/reference.py with diffusers' own seed path: torch's CPU generator.

Same arguments and output as reference.py. Only the noise source differs. reference.py draws
from numpy; here every random tensor diffusers asks for comes from ONE
torch.Generator("cpu").manual_seed(SEED), in diffusers' call order. That is exactly what
`pipe(..., generator=torch.Generator("cpu").manual_seed(SEED))` does, so an engine that seeds
like diffusers must reproduce these files.

  txt2img: init_noise = torch.randn((1,4,H/8,W/8), generator=g) is the first draw and is passed
           as latents= (diffusers' prepare_latents draws the same tensor from the generator).
  img2img: diffusers draws the VAE posterior sample first (noise.000, vae_encode), then the
           latent noise (init_noise) that scheduler.add_noise mixes in.
  later draws (ancestral / DDPM / LCM step noise) continue the same generator: noise.NNN.
The metadata's "noise" and "noise_order" say which names were drawn in which order.

Extra option: --model-label TEXT replaces the model's absolute path in the metadata. Timings are
dropped from the metadata and set-ordered lists sorted, so rebuilding a fixture gives a
byte-identical file.
"""
import json
import os
import sys

import torch

PARITY = os.environ.get("PARITY_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "parity"))
sys.dont_write_bytecode = True
sys.path.insert(0, PARITY)

import reference  # noqa: E402

NOISE_DOC = ("torch.Generator('cpu').manual_seed(seed); every draw torch.randn(shape, generator=g, "
             "dtype=float32) in diffusers' call order; noise_order lists the names in draw order")


class TorchNoise:
    """Drop-in for reference.NumpyNoise, drawing from torch's CPU generator."""

    def __init__(self, seed, latent_shape):
        self.gen = torch.Generator("cpu").manual_seed(seed)
        self.latent_shape = tuple(latent_shape)
        self.draws = []  # (source, np.ndarray), saved as noise.NNN
        self.order = []
        self.init_served = False
        if MODE["name"] == "img2img":
            # The pipeline draws init_noise itself, after the VAE sample; randn() records it into
            # the output when that happens. Until then "init_noise" holds this placeholder.
            self.init_noise = torch.full(self.latent_shape, float("nan")).numpy()
        else:
            self.init_noise = self._draw(self.latent_shape).numpy()
            self.order.append("init_noise")

    def _draw(self, shape):
        return torch.randn(shape, generator=self.gen, dtype=torch.float32)

    def randn(self, caller, shape, device=None, dtype=None):
        shape = tuple(int(s) for s in shape)
        x = self._draw(shape)
        if not self.init_served and caller.startswith("diffusers.pipelines.") and shape == self.latent_shape:
            self.init_served = True
            self.init_noise = x.numpy().copy()
            reference.CURRENT["rec"].put("init_noise", x)
            self.order.append("init_noise")
        else:
            self.draws.append((caller, x.numpy().copy()))
            self.order.append(f"noise.{len(self.draws) - 1:03d}")
        return x.to(device=device or "cpu", dtype=dtype or torch.float32)


MODE = {"name": "txt2img"}


def main():
    argv = sys.argv[1:]
    label = None
    if "--model-label" in argv:
        i = argv.index("--model-label")
        label = argv[i + 1]
        del sys.argv[i + 1:i + 3]
    if "--init-image" in argv:
        if "--mask" in argv:
            sys.exit("reference_torch_seed.py: inpaint is not supported (its noise order is not handled here)")
        MODE["name"] = "img2img"
    reference.NumpyNoise = TorchNoise

    import safetensors.torch
    orig_save = safetensors.torch.save_file

    def save_file(tensors, path, metadata=None):
        meta = json.loads(metadata["reference"])
        noise = reference.CURRENT["noise"]
        if not noise.init_served:
            raise RuntimeError("init_noise was never drawn")
        meta["noise"] = NOISE_DOC
        meta["noise_order"] = noise.order
        del meta["timing_s"]
        sc = meta["scheduler_config"]
        if "_use_default_values" in sc:  # built from a set: its order changes between runs
            sc["_use_default_values"] = sorted(sc["_use_default_values"])
        if label is not None:
            meta["model"] = label
        return orig_save(tensors, path, metadata={"reference": json.dumps(meta)})

    safetensors.torch.save_file = save_file
    reference.main()


if __name__ == "__main__":
    main()
