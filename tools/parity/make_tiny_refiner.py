#!/usr/bin/env python3
"""Build fixtures/tiny-sdxl-refiner/: a tiny diffusers SDXL refiner (StableDiffusionXLImg2ImgPipeline
with one text encoder) that fits fixtures/tiny-sdxl, and its references in fixtures/sdxl_refiner/.

Usage: make_tiny_refiner.py --base fixtures/tiny-sdxl --init fixtures/images/init_64x64.png
                            --out fixtures/tiny-sdxl-refiner --single fixtures/tiny-sdxl-refiner.safetensors
                            --refs fixtures/sdxl_refiner [--seed 10]
       (the parity venv's python; ../shared/parity is found as in make_tiny_sdxl.py)

The refiner, as stabilityai/stable-diffusion-xl-refiner-1.0 is laid out, shrunk:
  text_encoder/   none (model_index.json: [null, null]); so is tokenizer/.
  text_encoder_2/ tiny-sdxl's CLIPTextModelWithProjection, copied (the real refiner's OpenCLIP
                  bigG is the base's); tokenizer_2/ likewise.
  unet/           UNet2DConditionModel with the refiner's conditioning: cross_attention_dim 32 (the
                  one encoder's width; the refiner's 1280), addition_embed_type "text_time" over the
                  pooled embedding (32) and FIVE numbers (original size, crop top-left, aesthetic
                  score) embedded to 8 each -> projection input 32 + 5*8 = 72 (refiner: 1280 + 5*256
                  = 2560). Levels as tiny-sdxl's (2 of them; the refiner has 4, without attention at
                  the first and last), 2 transformer layers per attention block (refiner: 4).
  vae/            tiny-sdxl's, copied (the refiner's VAE is SDXL's).
  scheduler/      tiny-sdxl's (SDXL's EulerDiscrete "leading" config).
  model_index.json  StableDiffusionXLImg2ImgPipeline, requires_aesthetics_score true,
                  force_zeros_for_empty_prompt false (both as the real refiner's).
UNet weights: torch.manual_seed(seed), the default init, make_tiny_sdxl's adjustments (time and
add_embedding linears x3, attention logits calibrated to std 2.5 with make_model), rounded through
float16 and stored float16. The copied files are byte-identical to tiny-sdxl's (git stores them once).

--single: the same refiner as one file in Stability's sgm layout (sd_xl_refiner_1.0.safetensors'):
model.diffusion_model.* (label_emb for add_embedding) and first_stage_model.* as
make_sdxl_single_file.py writes them (its functions, imported), and the one text encoder as
conditioner.embedders.0.model.* in open_clip's names (the base has it as embedders.1). Verified with
diffusers: UNet2DConditionModel/AutoencoderKL.from_single_file(config=OUT) and
single_file_utils.convert_open_clip_checkpoint(prefix="conditioner.embedders.0.model.") must give
every tensor of the folder identically.

References (--refs), all 64x64, CFG 7.5, seed 42 (torch.Generator("cpu")), DDIMScheduler from the
folder's scheduler config, float32; each OUT/{name}.safetensors holds prompt_embeds,
negative_prompt_embeds [1,77,32] (text_encoder_2's penultimate hidden states), pooled_prompt_embeds,
negative_pooled_prompt_embeds [1,32], add_time_ids, add_neg_time_ids [1,5] (original size, crop
top-left, aesthetic score 6.0 / 2.5), final_latents [1,4,8,8] and image_u8 [64,64,3]; metadata
"reference" (JSON) with the settings:
  img2img          StableDiffusionXLImg2ImgPipeline on the refiner: init image --init, 10 steps at
                   strength 0.3 (3 run), negative "blurry".
  img2img_empty    the same with no negative prompt: the refiner (force_zeros_for_empty_prompt
                   false) encodes "" rather than conditioning with zeros.
  handoff          diffusers' ensemble of expert denoisers: StableDiffusionXLPipeline on --base with
                   denoising_end 0.8 and output_type "latent" (10 steps: 901 .. 201 run), then the
                   refiner's img2img pipeline from those latents with denoising_start 0.8 (101, 1
                   run), negative "blurry"; also base_latents [1,4,8,8] (the hand-off).
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tiny_sdxl as base  # noqa: E402  (its sizes and rounding helper; it puts the harness on the path)
from make_tiny_sdxl import make_model  # noqa: E402  (calibration, unet_to_ldm, vae_to_ldm)
from round_model import compare_pipes  # noqa: E402
from sdxl_pipeline_fixtures import (  # noqa: E402  (what a reference run records)
    capture_encode_prompt, image_u8, last_latents, save_reference, scheduler_config)

PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry"
SEED, SIZE, CFG, STEPS = 42, 64, 7.5, 10
AESTHETIC, NEGATIVE_AESTHETIC = 6.0, 2.5
UNET = dict(base.UNET, cross_attention_dim=32, transformer_layers_per_block=2,
            projection_class_embeddings_input_dim=32 + 5 * 8)
# Original size, crop top-left, aesthetic score, at 64x64.
TIME_IDS = [64.0, 64.0, 0.0, 0.0, AESTHETIC]


def build(a):
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    for sub in ("text_encoder_2", "tokenizer_2", "vae", "scheduler"):
        shutil.copytree(os.path.join(a.base, sub), os.path.join(a.out, sub))
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        os.path.join(a.out, "text_encoder_2"), torch_dtype=torch.float32).eval()
    tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(a.out, "tokenizer_2"))
    vae = AutoencoderKL.from_pretrained(os.path.join(a.out, "vae"), torch_dtype=torch.float32).eval()
    scheduler = EulerDiscreteScheduler.from_pretrained(os.path.join(a.out, "scheduler"))
    torch.manual_seed(a.seed)
    unet = UNet2DConditionModel(**UNET).eval()

    ids = tokenizer_2([PROMPT, ""], padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids
    x_cal, _, _ = base.calibration_inputs()
    time_ids = torch.tensor([TIME_IDS, TIME_IDS[:4] + [NEGATIVE_AESTHETIC]])

    def run_unet(x, t, ctx, pooled, tid):
        return unet(x, t, encoder_hidden_states=ctx,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": tid}).sample

    with torch.no_grad():
        out = text_encoder_2(ids, output_hidden_states=True)
        ctx, pooled = out.hidden_states[-2], out.text_embeds
    base.scale_time_embeddings_(unet)
    probe = make_model.AttnProbe()
    probe.add_diffusers(unet, "unet.")
    make_model.calibrate(probe, lambda: run_unet(x_cal, 500, ctx, pooled, time_ids), 2.5)
    base.round_fp16_(unet)
    probe.clear()
    with torch.no_grad():
        x = torch.cat([x_cal[:1], x_cal[:1]])
        o = run_unet(x, 500, torch.cat([ctx[:1], ctx[:1]]), torch.cat([pooled[:1], pooled[:1]]), time_ids)
        # Rows differ only in the aesthetic score: the net must respond to it.
        stats = dict(unet_out=make_model.tstats(o),
                     rel_sens_aesthetic=round(((o[0] - o[1]).std() / o.std()).item(), 3),
                     attention=make_model.summarize_attn(probe.records, lambda n: n.startswith("unet.")))
    probe.remove()
    print(json.dumps(stats, indent=1), flush=True)

    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=None, text_encoder_2=text_encoder_2,
                                            tokenizer=None, tokenizer_2=tokenizer_2, unet=unet,
                                            scheduler=scheduler, requires_aesthetics_score=True,
                                            force_zeros_for_empty_prompt=False, add_watermarker=False)
    pipe.save_pretrained(a.out, safe_serialization=True)
    # save_pretrained rewrites the copied components: put back tiny-sdxl's files (identical
    # tensors), and the UNet in float16.
    for sub in ("text_encoder_2", "tokenizer_2", "vae", "scheduler"):
        shutil.rmtree(os.path.join(a.out, sub))
        shutil.copytree(os.path.join(a.base, sub), os.path.join(a.out, sub))
    base.save_fp16(unet.state_dict(), os.path.join(a.out, "unet", base.WEIGHTS["unet"]))

    back = StableDiffusionXLImg2ImgPipeline.from_pretrained(a.out, torch_dtype=torch.float32, local_files_only=True)
    compare_pipes(pipe, back, "reloaded vs built", ["unet"])
    if back.text_encoder is not None or not back.config.requires_aesthetics_score \
            or back.config.force_zeros_for_empty_prompt:
        raise RuntimeError("the refiner's pipeline config did not survive the reload")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.out) for f in fs)
    print(f"wrote {a.out}: {size / 1e6:.1f} MB", flush=True)
    return back


def write_single_file(a):
    """The refiner folder as one sgm-layout file, checked against the folder with diffusers."""
    import make_sdxl_single_file as single
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as su
    from safetensors.torch import load_file
    from transformers import CLIPTextModelWithProjection

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(a.out, torch_dtype=torch.float16, local_files_only=True)
    sd, unet_rest = single.label_emb(dict(pipe.unet.state_dict()))
    sd.update(make_model.unet_to_ldm(unet_rest, dict(pipe.unet.config)))
    sd.update(make_model.vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    te2 = pipe.text_encoder_2
    te2_sd = {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
              for k, v in te2.state_dict().items()}
    for k, v in single.open_clip_state_dict(te2_sd, te2.config.num_hidden_layers).items():
        sd["conditioner.embedders.0.model." + k] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, a.single, metadata={"format": "pt"})
    print(f"wrote {a.single} ({len(sd)} tensors)", flush=True)

    ref = StableDiffusionXLImg2ImgPipeline.from_pretrained(a.out, torch_dtype=torch.float32, local_files_only=True)
    kw = dict(config=a.out, local_files_only=True, torch_dtype=torch.float32)
    te = CLIPTextModelWithProjection(CLIPTextModelWithProjection.config_class.from_pretrained(a.out, subfolder="text_encoder_2"))
    converted = su.convert_open_clip_checkpoint(te, load_file(a.single), prefix="conditioner.embedders.0.model.")
    missing, unexpected = te.load_state_dict(converted, strict=False)
    if missing or [k for k in unexpected if not k.endswith("position_ids")]:
        raise RuntimeError(f"text_encoder_2: missing {missing[:5]}, unexpected {unexpected[:5]}")
    back = {"unet": UNet2DConditionModel.from_single_file(a.single, subfolder="unet", **kw),
            "vae": AutoencoderKL.from_single_file(a.single, subfolder="vae", **kw),
            "text_encoder_2": te}
    for comp, model in back.items():
        x, y = getattr(ref, comp).state_dict(), model.state_dict()
        if set(x) != set(y) or not all(torch.equal(x[k], y[k].float()) for k in x):
            raise RuntimeError(f"single file: {comp} differs from the folder's")
        print(f"single file: {comp} {len(x)} tensors identical", flush=True)


def generator():
    return torch.Generator("cpu").manual_seed(SEED)


def capture(pipe, captured):
    """Wraps the pipeline's prompt encoding and added time ids to record them."""
    capture_encode_prompt(pipe, captured)
    get_add_time_ids = pipe._get_add_time_ids

    def capture_time_ids(*args, **kwargs):
        ids, neg_ids = get_add_time_ids(*args, **kwargs)
        captured["add_time_ids"], captured["add_neg_time_ids"] = ids.detach().clone(), neg_ids.detach().clone()
        return ids, neg_ids

    pipe._get_add_time_ids = capture_time_ids


def save(out_dir, name, captured, image, meta, scheduler):
    captured["image_u8"] = image_u8(image)
    meta = dict(meta, seed=SEED, width=SIZE, height=SIZE, cfg=CFG, steps=STEPS, sampler="ddim",
                aesthetic_score=AESTHETIC, negative_aesthetic_score=NEGATIVE_AESTHETIC,
                scheduler=scheduler_config(scheduler))
    save_reference(out_dir, name, captured, meta)
    print(f"{name}: final latents std {captured['final_latents'].std():.4f}", flush=True)


def references(refiner, a):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    from diffusers.utils import load_image

    os.makedirs(a.refs, exist_ok=True)
    refiner.set_progress_bar_config(disable=True)
    refiner.scheduler = DDIMScheduler.from_config(refiner.scheduler.config)
    init = load_image(a.init)

    for name, negative in (("img2img", NEGATIVE), ("img2img_empty", None)):
        captured = {}
        capture(refiner, captured)
        with torch.no_grad():
            image = refiner(PROMPT, negative_prompt=negative, image=init, strength=0.3,
                            num_inference_steps=STEPS, guidance_scale=CFG, generator=generator(),
                            callback_on_step_end=last_latents(captured), output_type="np").images[0]
        del refiner.encode_prompt, refiner._get_add_time_ids
        save(a.refs, name, captured, image,
             dict(prompt=PROMPT, negative_prompt=negative, strength=0.3, init_image=os.path.basename(a.init),
                  model="tiny-sdxl-refiner"), refiner.scheduler)

    pipe = StableDiffusionXLPipeline.from_pretrained(a.base, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    base_steps = []
    with torch.no_grad():
        latents = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, denoising_end=0.8,
                       height=SIZE, width=SIZE, guidance_scale=CFG, generator=generator(), output_type="latent",
                       callback_on_step_end=lambda p, i, t, kw: base_steps.append(int(t)) or kw).images
    captured = {"base_latents": latents.detach().clone()}
    capture(refiner, captured)
    refiner_steps = []

    def on_refiner_step(p, i, t, kw):
        refiner_steps.append(int(t))
        return last_latents(captured)(p, i, t, kw)

    with torch.no_grad():
        image = refiner(PROMPT, negative_prompt=NEGATIVE, image=latents, denoising_start=0.8,
                        num_inference_steps=STEPS, guidance_scale=CFG, generator=generator(),
                        callback_on_step_end=on_refiner_step, output_type="np").images[0]
    del refiner.encode_prompt, refiner._get_add_time_ids
    print(f"handoff: base ran {base_steps}, refiner {refiner_steps}", flush=True)
    assert base_steps == [901, 801, 701, 601, 501, 401, 301, 201] and refiner_steps == [101, 1]
    save(a.refs, "handoff", captured, image,
         dict(prompt=PROMPT, negative_prompt=NEGATIVE, denoising_end=0.8, denoising_start=0.8,
              base_timesteps=base_steps, refiner_timesteps=refiner_steps,
              model="tiny-sdxl", refiner="tiny-sdxl-refiner"), refiner.scheduler)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="fixtures/tiny-sdxl")
    ap.add_argument("--init", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--single", required=True)
    ap.add_argument("--refs", required=True)
    ap.add_argument("--seed", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(1)
    refiner = build(a)
    write_single_file(a)
    references(refiner, a)


if __name__ == "__main__":
    main()
