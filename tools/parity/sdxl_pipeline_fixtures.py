#!/usr/bin/env python3
"""SDXL pipeline fixtures: diffusers' StableDiffusionXLPipeline (and its img2img pipeline) on
fixtures/tiny-sdxl, and an A1111-style weighted prompt computed on the same encoders.

Usage: sdxl_pipeline_fixtures.py --model fixtures/tiny-sdxl --init fixtures/images/init_64x64.png
                                 --out fixtures/sdxl_pipeline

Every run: 64x64, CFG 7.5, seed 42, generator=torch.Generator("cpu").manual_seed(42), float32 (the
folder's fp16 weights are exact in float32). OUT/{name}.safetensors holds
  prompt_embeds, negative_prompt_embeds       [1,L,64]: both encoders' penultimate hidden states,
                                              side by side (what the UNet attends to);
  pooled_prompt_embeds, negative_pooled_prompt_embeds  [1,32]: text_encoder_2's projected pooled output;
  add_time_ids                                [1,6]: original size, crop top-left, target size;
  final_latents [1,4,8,8] (what the VAE decodes), image_u8 uint8 [64,64,3] (the saved PNG's pixels);
and the metadata key "reference" (JSON) with the run's settings.
OUT/inpaint_unet/: a 9-channel SDXL inpainting UNet: tiny-sdxl's UNet whose conv_in takes 5 more input
channels (the mask and the masked image's latents, as diffusers' SDXL inpainting UNets), their weights
seeded random at the std of the first 4's, rounded through fp16 and stored fp16 (config + weights).
OUT/inpaint_{ddim,ddim_s075}.safetensors: StableDiffusionXLInpaintPipeline with that UNet, init image
--init, mask images/mask_64x64.png next to it (white = repaint), negative "blurry", DDIM, 8 steps at
strength 1.0 and 0.75 (6 run): `final_latents` (output_type "latent": no paste-back) and the steps'
`step.NNN.latents`.
OUT/clip_skip.safetensors: `prompt_embeds` [1,77,64] of encode_prompt(prompt, clip_skip=1), diffusers'
first skipped layer for SDXL: both encoders' hidden_states[-3] (A1111's numbering: clip skip 3).

Runs:
  euler     the folder's own scheduler (EulerDiscrete, SDXL's "leading" spacing, steps_offset 1:
            timesteps 751, 501, 251, 1, init_noise_sigma sqrt(sigma_max^2 + 1)), 4 steps,
            negative "blurry".
  ddim      DDIMScheduler from the same config, 4 steps, no negative prompt: the pipeline's
            force_zeros_for_empty_prompt makes the negative conditioning and pooled output zeros.
  emphasis  DDIM, 4 steps, the A1111 prompt "a (photograph:1.3) of an [astronaut] BREAK riding a
            horse", negative "blurry". diffusers has no prompt weighting, so the embeddings are
            computed here as A1111's sd_hijack_clip does for SDXL and passed as prompt_embeds:
            per encoder, each 75-token chunk is [BOS] tokens [EOS] padding (EOS for tokenizer,
            "!" = 0 for tokenizer_2), encoded alone, its penultimate hidden state multiplied
            token by token by the emphasis weights (1.3; [x] is 1/1.1) and rescaled to its
            unweighted mean ("Original" emphasis); chunks concatenated along the tokens, the
            encoders along the features; pooled: text_encoder_2's for the first chunk. The
            one-chunk negative is lengthened with the empty prompt's conditioning (A1111's
            "pad prompt/negative prompt to be same length").
  compel    DDIM, 4 steps, the InvokeAI-syntax prompt "a cat++ (dog)1.3 on a mat-", negative "blurry",
            conditioned by compel (version in the metadata) as InvokeAI 3's SDXL prompt node runs it:
            each encoder with its own compel (penultimate hidden states, not normalized,
            truncate_long_prompts=False; here as one Compel over both, which concatenates the
            same per-encoder results), the pooled embedding text_encoder_2's of the prompt string
            as written (compel's get_pooled_embeddings), passed as prompt_embeds.
  img2img   StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score false, as for the base
            model) with the same components: DDIM, 10 steps, strength 0.6 (6 steps run), init
            image --init, negative "blurry". The VAE posterior sample is drawn before the noise.
"""
import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

import make_tiny_sdxl  # (save_fp16)

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry"
SEED, SIZE, CFG = 42, 64, 7.5
# The emphasis run's prompt as A1111 parses it: BREAK starts a chunk; fragments with their weights.
EMPHASIS_PROMPT = "a (photograph:1.3) of an [astronaut] BREAK riding a horse"
EMPHASIS_CHUNKS = [[("a", 1.0), ("photograph", 1.3), ("of an", 1.0), ("astronaut", 1 / 1.1)],
                   [("riding a horse", 1.0)]]
CHUNK = 75
COMPEL_PROMPT = "a cat++ (dog)1.3 on a mat-"


def a1111_chunk(tokenizer, fragments, pad_id):
    """One chunk as A1111 frames it: ids [77] and their weights [77]."""
    ids, weights = [], []
    for text, weight in fragments:
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    assert len(ids) <= CHUNK
    pad = CHUNK - len(ids)
    ids = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id] + [pad_id] * pad
    return torch.tensor([ids]), torch.tensor([[1.0] + weights + [1.0] * (pad + 1)])


def a1111_encode(pipe, chunks):
    """A1111's SDXL conditioning of a prompt given as chunks of weighted fragments."""
    encoders = [(pipe.tokenizer, pipe.text_encoder, pipe.tokenizer.eos_token_id),
                (pipe.tokenizer_2, pipe.text_encoder_2, pipe.tokenizer_2.pad_token_id)]
    per_encoder, pooled = [], None
    for tokenizer, encoder, pad_id in encoders:
        zs = []
        for fragments in chunks:
            ids, weights = a1111_chunk(tokenizer, fragments, pad_id)
            out = encoder(ids, output_hidden_states=True)
            z = out.hidden_states[-2]
            original_mean = z.mean()
            z = z * weights[..., None]
            zs.append(z * (original_mean / z.mean()))
            if pooled is None and hasattr(out, "text_embeds"):
                pooled = out.text_embeds
        per_encoder.append(torch.cat(zs, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def generator():
    return torch.Generator("cpu").manual_seed(SEED)


def capture_encode_prompt(pipe, captured):
    """Wraps pipe.encode_prompt to record what it returns in `captured`: prompt_embeds,
    negative_prompt_embeds and, from an SDXL pipeline, the two pooled embeddings. `del
    pipe.encode_prompt` unwraps it."""
    encode_prompt = pipe.encode_prompt

    def capture_encode(*args, **kwargs):
        result = encode_prompt(*args, **kwargs)
        for key, value in zip(["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                               "negative_pooled_prompt_embeds"], result):
            captured[key] = value.detach().clone()
        return result

    pipe.encode_prompt = capture_encode


def last_latents(captured):
    """A callback_on_step_end that keeps each step's latents as captured["final_latents"]."""
    def on_step_end(p, i, t, kw):
        captured["final_latents"] = kw["latents"].detach().clone()
        return kw
    return on_step_end


def image_u8(image):
    """A pipeline's output_type="np" image as the 8-bit values of the PNG it saves."""
    return torch.from_numpy(np.round(image * 255).astype(np.uint8))


def scheduler_config(scheduler):
    # (diffusers' `_use_default_values` is a set in arbitrary order: left out, for identical rebuilds.)
    return {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}


def save_reference(out_dir, name, tensors, meta):
    """OUT_DIR/NAME.safetensors: the tensors, and the run's settings as the metadata key "reference"."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, f"{name}.safetensors"),
              metadata={"reference": json.dumps(meta, sort_keys=True, default=str)})


def run(pipe, name, out_dir, meta, **kw):
    """Runs the pipeline, capturing its conditioning and final latents."""
    captured = {}
    capture_encode_prompt(pipe, captured)
    get_add_time_ids = pipe._get_add_time_ids

    def capture_time_ids(*args, **kwargs):
        result = get_add_time_ids(*args, **kwargs)
        ids = result[0] if isinstance(result, tuple) else result
        captured["add_time_ids"] = ids.detach().clone()
        return result

    pipe._get_add_time_ids = capture_time_ids
    with torch.no_grad():
        image = pipe(height=SIZE, width=SIZE, guidance_scale=CFG, generator=generator(),
                     callback_on_step_end=last_latents(captured), output_type="np", **kw).images[0]
    del pipe.encode_prompt, pipe._get_add_time_ids
    captured["image_u8"] = image_u8(image)
    meta = dict(meta, seed=SEED, width=SIZE, height=SIZE, cfg=CFG, scheduler=scheduler_config(pipe.scheduler))
    save_reference(out_dir, name, captured, meta)
    print(f"{name}: final latents std {captured['final_latents'].std():.4f}", flush=True)


def inpaint_fixtures(pipe, a):
    """The 9-channel UNet and StableDiffusionXLInpaintPipeline's runs with it."""
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from PIL import Image
    state = pipe.unet.state_dict()
    first = state["conv_in.weight"]
    g = torch.Generator("cpu").manual_seed(9)
    extra = torch.randn((first.shape[0], 5) + tuple(first.shape[2:]), generator=g) * first.std()
    state["conv_in.weight"] = torch.cat([first, extra.half().float()], dim=1)
    unet = UNet2DConditionModel.from_config(dict(pipe.unet.config, in_channels=9)).eval()
    unet.load_state_dict(state)
    folder = os.path.join(a.out, "inpaint_unet")
    unet.save_pretrained(folder, safe_serialization=True)
    weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    make_tiny_sdxl.save_fp16(unet.state_dict(), weights)
    inpaint = StableDiffusionXLInpaintPipeline(**dict(pipe.components, unet=unet))
    inpaint.set_progress_bar_config(disable=True)
    image = Image.open(a.init).convert("RGB")
    mask = Image.open(os.path.join(os.path.dirname(a.init), "mask_64x64.png")).convert("L")
    for name, strength in (("inpaint_ddim", 1.0), ("inpaint_ddim_s075", 0.75)):
        steps = {}

        def on_step_end(p, i, t, kw):
            steps[f"step.{i:03d}.latents"] = kw["latents"].clone()
            return kw

        with torch.no_grad():
            latents = inpaint(PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=SIZE,
                              width=SIZE, strength=strength, num_inference_steps=8, guidance_scale=CFG,
                              generator=generator(), output_type="latent", callback_on_step_end=on_step_end).images
        meta = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=8, strength=strength, sampler="ddim",
                    seed=SEED, width=SIZE, height=SIZE, cfg=CFG, mask="mask_64x64.png")
        save_reference(a.out, name, dict(steps, final_latents=latents), meta)
        print(f"{name}: final latents std {latents.std():.4f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)

    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from diffusers.utils import load_image

    pipe = StableDiffusionXLPipeline.from_pretrained(a.model, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    euler = pipe.scheduler
    ddim = DDIMScheduler.from_config(euler.config)

    run(pipe, "euler", a.out, dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, sampler="euler"),
        prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4)

    pipe.scheduler = ddim
    run(pipe, "ddim", a.out, dict(prompt=PROMPT, negative_prompt=None, steps=4, sampler="ddim"),
        prompt=PROMPT, num_inference_steps=4)

    with torch.no_grad():
        # Unweighted, the emulation is diffusers' own encoding: only the weighting differs.
        plain, plain_pooled = a1111_encode(pipe, [[(PROMPT, 1.0)]])
        ours = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE)
        assert torch.equal(plain, ours[0]) and torch.equal(plain_pooled, ours[2])
        embeds, pooled = a1111_encode(pipe, EMPHASIS_CHUNKS)
        negative, negative_pooled = a1111_encode(pipe, [[(NEGATIVE, 1.0)]])
        empty, _ = a1111_encode(pipe, [[]])
    repeats = (embeds.shape[1] - negative.shape[1]) // empty.shape[1]
    negative = torch.cat([negative, empty.repeat(1, repeats, 1)], dim=1)
    run(pipe, "emphasis", a.out,
        dict(prompt=EMPHASIS_PROMPT, negative_prompt=NEGATIVE, steps=4, sampler="ddim",
             conditioning="A1111 SDXL emphasis computed in the script"),
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=4)

    import types
    from importlib.metadata import version
    from compel import Compel
    from compel.embeddings_provider import ReturnedEmbeddingsType
    # transformers 5 flattened CLIPTextModel; compel looks for text_model.final_layer_norm.
    patched = not hasattr(pipe.text_encoder, "text_model")
    if patched:
        pipe.text_encoder.text_model = types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm)
    compel = Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2], text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                    returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                    requires_pooled=[False, True], truncate_long_prompts=False)
    with torch.no_grad():
        embeds, pooled = compel(COMPEL_PROMPT)
        negative, negative_pooled = compel(NEGATIVE)
    if patched:
        del pipe.text_encoder.text_model
    run(pipe, "compel", a.out,
        dict(prompt=COMPEL_PROMPT, negative_prompt=NEGATIVE, steps=4, sampler="ddim", syntax="invokeai",
             conditioning=f"compel {version('compel')}, InvokeAI 3's SDXL prompt node"),
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=4)

    with torch.no_grad():
        skipped = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, clip_skip=1)[0]
    save_file({"prompt_embeds": skipped.contiguous()}, os.path.join(a.out, "clip_skip.safetensors"),
              metadata={"reference": json.dumps(dict(prompt=PROMPT, clip_skip=1))})

    inpaint_fixtures(pipe, a)

    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    assert not img2img.config.requires_aesthetics_score
    run(img2img, "img2img", a.out,
        dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=10, strength=0.6, sampler="ddim",
             init_image=os.path.basename(a.init)),
        prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, strength=0.6,
        image=load_image(a.init))


if __name__ == "__main__":
    main()
