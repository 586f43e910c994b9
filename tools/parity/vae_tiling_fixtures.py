#!/usr/bin/env python3
"""Write the VAE tiling fixture: diffusers' tiled decode and encode with the tiny VAE.

Usage: vae_tiling_fixtures.py VAE_DIR OUT.safetensors

The tiny VAE (fixtures/tiny/vae, 8x downsampling) runs with enable_tiling() and 32-pixel tiles
(tile_sample_min_size 32, tile_latent_min_size 4, tile_overlap_factor 0.25: 3-latent / 24-pixel
strides, 8-pixel blends), on inputs whose sizes leave narrow tiles at the right and bottom edges.
OUT (float32):
  latents      [1,4,10,7] from torch.randn (seed 0)
  decoded      vae.tiled_decode(latents)            [1,3,80,56]
  image        [1,3,80,56] uniform in [-1,1) (seed 1)
  moments      vae._tiled_encode(image): mean and log-variance, concatenated  [1,8,10,7]
"""
import sys

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file


def main():
    vae_dir, out = sys.argv[1], sys.argv[2]
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    vae.enable_tiling()
    vae.tile_sample_min_size = 32
    vae.tile_latent_min_size = 4
    vae.tile_overlap_factor = 0.25
    latents = torch.randn([1, 4, 10, 7], generator=torch.Generator("cpu").manual_seed(0))
    image = torch.rand([1, 3, 80, 56], generator=torch.Generator("cpu").manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        decoded = vae.decode(latents).sample
        moments = vae._tiled_encode(image)
    save_file(
        {"latents": latents, "decoded": decoded.contiguous(), "image": image,
         "moments": moments.contiguous()},
        out,
    )


if __name__ == "__main__":
    main()
