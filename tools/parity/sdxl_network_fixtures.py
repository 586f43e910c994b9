#!/usr/bin/env python3
"""fixtures/sdxl/networks.safetensors: what transformers' two SDXL text encoders and diffusers'
SDXL UNet compute on the tiny-sdxl weights, for crates/dream-models/tests/sdxl.rs.

Usage: sdxl_network_fixtures.py fixtures/tiny-sdxl fixtures/sdxl/networks.safetensors
       (run with the parity venv's python)

The folder is loaded with StableDiffusionXLPipeline.from_pretrained(torch_dtype=float32): its fp16
weights widen exactly to the fp32 values make_tiny_sdxl.py computed with.

Text encoders, on PROMPTS (a short prompt, one longer than 77 tokens (truncated to 75 + BOS/EOS),
the empty prompt), each tokenized by its own tokenizer to 77 (tokenizer_2 pads with "!" = id 0):
  input_ids, input_ids_2              int64 [3,77]
  text_encoder.penultimate            [3,77,32] hidden_states[-2] of text_encoder (what SDXL uses)
  text_encoder_2.penultimate          [3,77,32] hidden_states[-2] of text_encoder_2
  text_encoder_2.last_hidden_state    [3,77,32] final-layer-normed output
  text_encoder_2.pooler_output        [3,32]    last_hidden_state at argmax(input_ids) (eos_token_id 2)
  text_encoder_2.text_embeds          [3,32]    text_projection(pooler_output)
  text_encoder_2.text_embeds_eos320   [3,32]    the same model with config eos_token_id 320 ("a</w>"):
                                                transformers' other rule, the first position of that id
                                                (the prompts without "a" are left out: ids row 0 only, [1,32])
UNet, one call (diffusers' UNet2DConditionModel with added_cond_kwargs):
  unet.sample                         [2,4,8,8]  torch.randn, Generator seed 0
  unet.timestep                       f64 []     701 (a step of SDXL's "leading" Euler schedule)
  unet.encoder_hidden_states          [2,77,64]  cat(penultimates) of the prompt and the long prompt
  unet.text_embeds                    [2,32]     text_encoder_2.text_embeds of the same two prompts
  unet.time_ids                       [2,6]      (64,64,0,0,64,64) and (1024,768,32,16,512,384):
                                                 different micro-conditioning per batch item
  unet.out                            [2,4,8,8]
"""
import os
import sys

import torch
from safetensors.torch import save_file

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    ("a highly detailed matte painting of a sprawling cyberpunk city at night, neon signs reflecting "
     "in puddles, flying cars between towering skyscrapers, dramatic volumetric lighting, rain, fog, "
     "cinematic composition, trending on artstation, by greg rutkowski and syd mead, octane render, "
     "ultra wide angle, 8k resolution, intricate details everywhere, a lone figure in a red coat "
     "walking away from the camera under a flickering streetlight"),
    "",
]
TIME_IDS = [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [1024.0, 768.0, 32.0, 16.0, 512.0, 384.0]]
TIMESTEP = 701.0


def main(model_dir, out):
    torch.set_num_threads(1)
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, torch_dtype=torch.float32, local_files_only=True)
    tok = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = pipe.tokenizer(PROMPTS, **tok).input_ids
    ids_2 = pipe.tokenizer_2(PROMPTS, **tok).input_ids
    assert len(pipe.tokenizer(PROMPTS[1], truncation=False).input_ids) > 77, "the long prompt must be truncated"
    assert pipe.text_encoder_2.config.eos_token_id == 2
    r = {"input_ids": ids, "input_ids_2": ids_2}
    with torch.no_grad():
        o1 = pipe.text_encoder(ids, output_hidden_states=True)
        o2 = pipe.text_encoder_2(ids_2, output_hidden_states=True)
        r["text_encoder.penultimate"] = o1.hidden_states[-2]
        r["text_encoder_2.penultimate"] = o2.hidden_states[-2]
        r["text_encoder_2.last_hidden_state"] = o2.last_hidden_state
        r["text_encoder_2.pooler_output"] = o2.last_hidden_state[torch.arange(3), ids_2.argmax(-1)]
        r["text_encoder_2.text_embeds"] = o2.text_embeds
        # transformers' own pooling agrees with the argmax written out above
        assert torch.equal(pipe.text_encoder_2.text_projection(r["text_encoder_2.pooler_output"]), o2.text_embeds)

        other = CLIPTextModelWithProjection.from_pretrained(os.path.join(model_dir, "text_encoder_2"),
                                                            torch_dtype=torch.float32, eos_token_id=320)
        assert other.text_model.eos_token_id == 320
        first_a = ids_2[:1]
        assert (first_a == 320).sum() == 2  # "a photograph ... riding a horse": the first "a" is pooled
        r["text_encoder_2.text_embeds_eos320"] = other(first_a).text_embeds

        g = torch.Generator("cpu").manual_seed(0)
        sample = torch.randn((2, 4, 8, 8), generator=g)
        ctx = torch.cat([r["text_encoder.penultimate"], r["text_encoder_2.penultimate"]], dim=-1)[:2]
        text_embeds = r["text_encoder_2.text_embeds"][:2]
        time_ids = torch.tensor(TIME_IDS)
        unet_out = pipe.unet(sample, torch.tensor(TIMESTEP), encoder_hidden_states=ctx,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        same_ids = pipe.unet(sample, torch.tensor(TIMESTEP), encoder_hidden_states=ctx,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids[:1].repeat(2, 1)}).sample
        print(f"UNet output std {unet_out.std():.4f}; item 1 changes by max {(unet_out[1] - same_ids[1]).abs().max():.4f} "
              f"when it gets item 0's time_ids")
    r.update({"unet.sample": sample, "unet.timestep": torch.tensor(TIMESTEP, dtype=torch.float64),
              "unet.encoder_hidden_states": ctx, "unet.text_embeds": text_embeds, "unet.time_ids": time_ids,
              "unet.out": unet_out})
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in r.items()}, out, metadata={"format": "pt"})
    print(f"wrote {out}: {len(r)} tensors")


if __name__ == "__main__":
    main(*sys.argv[1:])
