#!/usr/bin/env python3
"""Write fixtures/unet_sd2_style/: a small random diffusers UNet2DConditionModel exercising the
config paths the tiny SD 1.x model leaves out, and one forward pass of it as the reference.

Usage: make_unet_sd2_style.py OUTDIR        (run with the parity venv's python)

What differs from fixtures/tiny/unet, and why:
  * use_linear_projection + upcast_attention (SD 2.x): linear proj_in/proj_out;
  * attention_head_dim as a per-block list [2, 4, 4] (SD 2.x's [5,10,20,20]: head COUNTS);
  * transformer_layers_per_block [1, 2, 2] and three levels with cross-attention in two;
  * flip_sin_to_cos false, freq_shift 1: the other branch of the timestep embedding;
  * a fractional timestep (946.42, as Euler passes) and a 7x5 latent, which is not a multiple
    of the 4x downsampling, so diffusers forwards explicit upsample sizes;
  * 9 context tokens of width 16.
Weights are deterministic (torch seed 0), rounded through fp16 and stored fp16 so the stored
values are exactly those the reference ran with. q/k projections and the time embedding are
scaled up so that attention is far from uniform and the output depends on t.

Outputs: config.json, diffusion_pytorch_model.safetensors (fp16), io.safetensors
(`sample` [2,4,7,5], `timestep` f64 [], `encoder_hidden_states` [2,9,16], `out` [2,4,7,5]).
"""
import json
import os
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=[16, 32, 32],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    attention_head_dim=[2, 4, 4],
    transformer_layers_per_block=[1, 2, 2],
    cross_attention_dim=16,
    norm_num_groups=8,
    use_linear_projection=True,
    upcast_attention=True,
    flip_sin_to_cos=False,
    freq_shift=1,
)


def main(out):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIG).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.startswith("time_embedding."):
                p.mul_(3.0)
            if name.endswith(("to_q.weight", "to_k.weight")):
                p.mul_(3.0)
            p.copy_(p.half().float())

        g = torch.Generator().manual_seed(1)
        sample = torch.randn((2, 4, 7, 5), generator=g)
        context = torch.randn((2, 9, 16), generator=g)
        timestep = 946.42
        result = unet(sample, timestep, encoder_hidden_states=context).sample
        # The reference only tests what the output depends on (cross-attention ignores token
        # order, so the context change drops tokens).
        for what, other in [
            ("timestep", unet(sample, timestep - 20.0, encoder_hidden_states=context).sample),
            ("context", unet(sample, timestep, encoder_hidden_states=context[:, :4]).sample),
        ]:
            print(f"output change when the {what} changes: max abs {(other - result).abs().max():.4f}")

    os.makedirs(out, exist_ok=True)
    unet.save_config(out)
    weights = {k: v.half().contiguous() for k, v in unet.state_dict().items()}
    save_file(weights, os.path.join(out, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    io = {
        "sample": sample,
        "timestep": torch.tensor(timestep, dtype=torch.float64),
        "encoder_hidden_states": context,
        "out": result.contiguous(),
    }
    save_file(io, os.path.join(out, "io.safetensors"), metadata={"format": "pt"})

    # The stored fp16 folder must reload to the very weights the reference ran with.
    reloaded = UNet2DConditionModel.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(sample, timestep, encoder_hidden_states=context).sample
    assert torch.equal(again, result), "reloaded fp16 folder gives a different output"
    params = sum(p.numel() for p in unet.parameters())
    print(f"{out}: {params} parameters, output std {result.std():.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
