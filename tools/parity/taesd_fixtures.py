#!/usr/bin/env python3
"""Write the TAESD fixtures: a tiny random diffusers AutoencoderTiny and its decoder's output.

Usage: taesd_fixtures.py OUT_DIR

OUT_DIR/tiny/                      AutoencoderTiny (16 channels, decoder blocks 1,2,1,1; seed 0),
                                   saved by diffusers (config.json + safetensors)
OUT_DIR/tiny_taesd_decoder.safetensors
                                   the same decoder in madebyollin's taesd_decoder layout: its
                                   nn.Sequential starts with Clamp(), so diffusers'
                                   decoder.layers.N.* is stored as (N+1).*
OUT_DIR/decode.safetensors         latents [1,4,6,5] (torch.randn, seed 1, x3 so that the tanh
                                   clamp matters) and image = vae.decode(latents).sample
"""
import os
import sys

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 2, 1, 1),
    ).eval()
    # Default init leaves every bias at a small value; spread them so that a missed bias shows.
    with torch.no_grad():
        for name, p in vae.decoder.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.3, 0.3)
    vae.save_pretrained(os.path.join(out, "tiny"))
    decoder = {
        f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v.contiguous()
        for k, v in vae.decoder.state_dict().items()
    }
    save_file(decoder, os.path.join(out, "tiny_taesd_decoder.safetensors"))
    latents = torch.randn([1, 4, 6, 5], generator=torch.Generator("cpu").manual_seed(1)) * 3
    with torch.inference_mode():
        image = vae.decode(latents).sample
    save_file({"latents": latents, "image": image.contiguous()}, os.path.join(out, "decode.safetensors"))


if __name__ == "__main__":
    main()
