#!/usr/bin/env python3
"""Build fixtures/tiny-sd2v/ (a tiny SD 2.x 768-v style diffusers folder), its single-file form
fixtures/tiny-sd2v.safetensors, and diffusers' StableDiffusionPipeline references on it in
fixtures/sd2v/.

Usage: make_tiny_sd2v.py --tokenizer fixtures/tiny/tokenizer --folder fixtures/tiny-sd2v
                         --single-file fixtures/tiny-sd2v.safetensors --refs fixtures/sd2v [--seed 0]
       (run with the parity venv's python; ../shared/parity is found as in round_model.py)

The folder, in the layout of stabilityai/stable-diffusion-2-1 (SD 2.1 768-v), shrunk:
  text_encoder/  CLIPTextModel as diffusers stores SD 2.x's OpenCLIP ViT-H/14 tower: exact GELU
                 ("gelu"), hidden 32, intermediate 128 (4x, as ViT-H), 3 layers, 4 heads, the real
                 49408 vocab, SD 2's legacy special ids (bos 0, eos 2, pad 1). SD 2 conditions on
                 the penultimate layer of ViT-H's 24; diffusers' folder keeps 23 layers and the
                 pipeline reads the last hidden state (after final_layer_norm), which is that.
  tokenizer/     the real CLIP BPE (vocab.json, merges.txt and the two configs of --tokenizer; its
                 2 MB tokenizer.json is left out: transformers and Dream build it from the other
                 two), padding with "!" (id 0) as SD 2.x's tokenizer does.
  unet/          UNet2DConditionModel in SD 2's pattern at tiny size: blocks (32, 64),
                 CrossAttnDown + Down / Up + CrossAttnUp, 2 layers per block, attention_head_dim
                 (2, 4) (head counts, as SD 2's (5, 10, 20, 20)), linear projections,
                 upcast_attention true (SD 2.1), cross_attention_dim 32 (the encoder's width),
                 sample_size 8 (64 px; SD 2.1-768 has 96).
  vae/           a small SD VAE (blocks 16, 16, 32, 32; factor 8), scaling_factor 0.18215.
  scheduler/     SD 2.1's scheduler_config.json key for key: DDIMScheduler, prediction_type
                 v_prediction, steps_offset 1, scaled_linear 0.00085-0.012, clip_sample false,
                 set_alpha_to_one false (no timestep_spacing: DDIM's default "leading", Euler's
                 "linspace").
Weights: torch.manual_seed(seed + k) before each network (k = 0 text encoder, 1 UNet, 2 VAE,
3 the single file's extra text layer and text_projection), the default init, then
../shared/parity/make_model.py's adjustments (imported): time-embedding linears x3 and attention
q/k rescaled to pre-softmax logits of std 2.5 on fixed calibration inputs. Every float weight is
rounded through float16 and stored float16, so the stored values are exactly the weights the
references are computed with.

The single file is the folder in the original latent-diffusion layout of SD 2.x files
(v2-1_768-ema-pruned): model.diffusion_model.* and first_stage_model.* (make_model.unet_to_ldm,
vae_to_ldm), and cond_stage_model.model.* in open_clip's names (make_sdxl_single_file's
open_clip_state_dict): the folder's 3 layers plus a 4th random one, as SD 2 files carry ViT-H's
last layer, which SD 2 never runs, a random text_projection [32, 32] (unused by SD 2) and
logit_scale. It is verified with diffusers: StableDiffusionPipeline.from_single_file(file,
config=folder) gives every tensor of the three networks identical (torch.equal) to the folder's.

References (fixtures/sd2v/NAME.safetensors), StableDiffusionPipeline.from_pretrained(folder) in
float32, prompt "a photograph of an astronaut riding a horse", 64x64, CFG 7.5, seed 42 with
generator=torch.Generator("cpu").manual_seed(42):
  euler  EulerDiscreteScheduler.from_config(the folder's) ("linspace": 999, 799.2, ..., 0), 6 steps,
         negative "blurry"
  ddim   the folder's DDIMScheduler ("leading": 831, 665, 499, 333, 167, 1), 6 steps, negative ""
Each holds prompt_embeds and negative_prompt_embeds [1,77,32] (what the UNet attends to),
final_latents [1,4,8,8] and image_u8 uint8 [64,64,3], and the metadata key "reference" (JSON).
The script prints how far the final latents move when the same run reads the UNet as
epsilon-prediction (a fixture that could not tell v from epsilon would test nothing).
"""
import argparse
import json
import os
import shutil
import sys

import torch

PARITY = os.environ.get("PARITY_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "parity"))
TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, PARITY)
sys.path.insert(0, TOOLS)

import make_model  # noqa: E402  (calibration, LDM key maps)
import make_sdxl_single_file  # noqa: E402  (open_clip_state_dict)
import make_tiny_sdxl  # noqa: E402  (write_tokenizer, round_fp16_, calibration and writing helpers)
from round_model import compare_pipes  # noqa: E402
from sdxl_pipeline_fixtures import (  # noqa: E402  (what a reference run records)
    capture_encode_prompt, image_u8, last_latents, save_reference, scheduler_config)

TEXT_ENCODER = dict(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                    layer_norm_eps=1e-5, projection_dim=32, initializer_factor=1.0, initializer_range=0.02,
                    attention_dropout=0.0, dropout=0.0, bos_token_id=0, eos_token_id=2, pad_token_id=1)
UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64], layers_per_block=2, attention_head_dim=[2, 4],
    use_linear_projection=True, upcast_attention=True, cross_attention_dim=32, dual_cross_attention=False,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=8, norm_eps=1e-5,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, act_fn="silu",
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=8,
    sample_size=64, scaling_factor=0.18215,
)
# stabilityai/stable-diffusion-2-1/scheduler/scheduler_config.json, key for key.
SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}
PROMPT = "a photograph of an astronaut riding a horse"
SEED, SIZE, CFG, STEPS = 42, 64, 7.5, 6
OPEN_CLIP = "cond_stage_model.model."


def write_tokenizer(src, dst):
    make_tiny_sdxl.write_tokenizer(src, dst, pad_token="!")
    os.remove(os.path.join(dst, "tokenizer.json"))


def build(a):
    """The calibrated, fp16-rounded networks."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(a.folder, "tokenizer"))
    assert tokenizer.pad_token_id == 0, tokenizer.pad_token_id
    torch.manual_seed(a.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)).eval()
    torch.manual_seed(a.seed + 1)
    unet = UNet2DConditionModel(**UNET).eval()
    torch.manual_seed(a.seed + 2)
    vae = AutoencoderKL(**VAE).eval()

    ids = tokenizer([PROMPT, ""], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    x_cal, z_cal, img_cal = make_tiny_sdxl.calibration_inputs()
    probe = make_model.AttnProbe()
    probe.add_clip(text_encoder, "text_encoder.")
    probe.add_diffusers(unet, "unet.")
    probe.add_diffusers(vae, "vae.")
    make_tiny_sdxl.scale_time_embeddings_(unet)
    make_model.calibrate(probe, lambda: text_encoder(ids), 2.5)
    with torch.no_grad():
        ctx = text_encoder(ids).last_hidden_state
    make_model.calibrate(probe, lambda: unet(x_cal, 500, encoder_hidden_states=ctx), 2.5)
    make_tiny_sdxl.calibrate_vae(probe, vae, z_cal, img_cal)
    probe.remove()
    for m in (text_encoder, unet, vae):
        make_tiny_sdxl.round_fp16_(m)
    with torch.no_grad():
        ctx = text_encoder(ids).last_hidden_state
        o = unet(torch.cat([x_cal[:1], x_cal[:1]]), 500, encoder_hidden_states=ctx).sample
        o_t = unet(torch.cat([x_cal[:1], x_cal[:1]]), 100, encoder_hidden_states=ctx).sample
    print(json.dumps(dict(unet_out=make_model.tstats(o),
                          rel_sens_prompt_vs_empty=round(((o[0] - o[1]).std() / o.std()).item(), 3),
                          rel_sens_t500_vs_t100=round(((o_t - o).std() / o.std()).item(), 3))), flush=True)
    return tokenizer, text_encoder, unet, vae, DDIMScheduler.from_config(SCHEDULER)


def write_folder(a, pipe):
    pipe.save_pretrained(a.folder, safe_serialization=True)
    # save_pretrained re-serialises the tokenizer from the live backend: put back the clean copy.
    shutil.rmtree(os.path.join(a.folder, "tokenizer"))
    write_tokenizer(a.tokenizer, os.path.join(a.folder, "tokenizer"))
    live = {"unet": pipe.unet.state_dict(), "vae": pipe.vae.state_dict(),
            "text_encoder": make_model.te_hub_state_dict(pipe.text_encoder)}
    for comp, fname in WEIGHTS.items():
        make_tiny_sdxl.save_fp16(live[comp], os.path.join(a.folder, comp, fname))
    make_tiny_sdxl.write_scheduler_config(a.folder, "DDIMScheduler", SCHEDULER)
    # Configs without the run-dependent keys, so that rebuilds are byte-identical.
    for comp in ("unet", "vae", "text_encoder"):
        path = os.path.join(a.folder, comp, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.pop("_name_or_path", None)
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")


def write_single_file(a, pipe):
    """The folder as an SD 2.x original-layout file; returns its state dict."""
    sd = {}
    sd.update(make_model.unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)))
    sd.update(make_model.vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    te = make_model.te_hub_state_dict(pipe.text_encoder)
    te.pop("text_model.embeddings.position_ids", None)
    # ViT-H's last layer, which SD 2 skips, and the contrastive projection it never uses.
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    torch.manual_seed(a.seed + 3)
    extra = CLIPTextModelWithProjection(CLIPTextConfig(**dict(TEXT_ENCODER, num_hidden_layers=4))).eval()
    make_tiny_sdxl.round_fp16_(extra)
    layers = TEXT_ENCODER["num_hidden_layers"]
    for k, v in extra.state_dict().items():
        if k.startswith(f"text_model.encoder.layers.{layers}.") or k.startswith("text_projection."):
            te[k] = v
    for k, v in make_sdxl_single_file.open_clip_state_dict(te, layers + 1).items():
        sd[OPEN_CLIP + k] = v
    make_tiny_sdxl.save_fp16(sd, a.single_file)
    print(f"wrote {a.single_file} ({len(sd)} tensors)", flush=True)


def verify_single_file(a, pipe):
    from diffusers import StableDiffusionPipeline
    single = StableDiffusionPipeline.from_single_file(a.single_file, config=a.folder, local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False,
                                                      torch_dtype=torch.float32)
    for comp in WEIGHTS:
        x, y = getattr(pipe, comp).state_dict(), getattr(single, comp).state_dict()
        x = {k: v for k, v in x.items() if not k.endswith("position_ids")}
        y = {k: v for k, v in y.items() if not k.endswith("position_ids")}
        if set(x) != set(y):
            raise RuntimeError(f"single file: {comp} key sets differ: {sorted(set(x) ^ set(y))[:10]}")
        for k in x:
            if y[k].dtype != torch.float32 or not torch.equal(x[k], y[k].reshape(x[k].shape)):
                raise RuntimeError(f"single file: {comp}.{k} differs")
        print(f"single file vs folder: {comp} {len(x)} tensors identical", flush=True)
    if single.scheduler.config.prediction_type != "v_prediction":
        raise RuntimeError("from_single_file(config=folder) lost the v-prediction scheduler")


def run(pipe, scheduler, name, negative, out_dir):
    captured = {}

    def render(scheduler):
        pipe.scheduler = scheduler
        with torch.no_grad():
            return pipe(PROMPT, negative_prompt=negative, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED),
                        callback_on_step_end=last_latents(captured), output_type="np").images[0]

    capture_encode_prompt(pipe, captured)
    image = render(scheduler)
    del pipe.encode_prompt
    tensors = dict(captured, image_u8=image_u8(image))
    render(scheduler.__class__.from_config(scheduler.config, prediction_type="epsilon"))
    moved = (captured["final_latents"] - tensors["final_latents"]).abs().max().item()
    print(f"{name}: read as epsilon-prediction, the final latents move by {moved:.3f} "
          f"(std {tensors['final_latents'].std():.3f})", flush=True)
    meta = dict(prompt=PROMPT, negative_prompt=negative, steps=STEPS, seed=SEED, width=SIZE, height=SIZE,
                cfg=CFG, scheduler=scheduler.__class__.__name__, scheduler_config=scheduler_config(scheduler),
                timesteps=[float(t) for t in scheduler.timesteps])
    save_reference(out_dir, name, tensors, meta)
    print(f"{name}: timesteps {meta['timesteps']}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="a CLIP tokenizer folder (fixtures/tiny/tokenizer)")
    ap.add_argument("--folder", required=True)
    ap.add_argument("--single-file", required=True)
    ap.add_argument("--refs", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    shutil.rmtree(a.folder, ignore_errors=True)
    os.makedirs(a.folder)
    write_tokenizer(a.tokenizer, os.path.join(a.folder, "tokenizer"))
    tokenizer, text_encoder, unet, vae, scheduler = build(a)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    write_folder(a, pipe)
    write_single_file(a, pipe)

    # Everything below reads the files back, as a user of diffusers would.
    back = StableDiffusionPipeline.from_pretrained(a.folder, torch_dtype=torch.float32, local_files_only=True)
    back.set_progress_bar_config(disable=True)
    compare_pipes(pipe, back, "reloaded vs built", WEIGHTS)
    if back.tokenizer.pad_token_id != 0 or back.scheduler.config.prediction_type != "v_prediction":
        raise RuntimeError("the tokenizer's pad token or the scheduler's prediction type did not survive")
    verify_single_file(a, back)

    os.makedirs(a.refs, exist_ok=True)
    ddim = back.scheduler
    run(back, EulerDiscreteScheduler.from_config(ddim.config), "euler", "blurry", a.refs)
    run(back, ddim, "ddim", "", a.refs)
    for path in (a.folder, a.single_file, a.refs):
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) \
            if os.path.isdir(path) else os.path.getsize(path)
        print(f"{path}: {size / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
