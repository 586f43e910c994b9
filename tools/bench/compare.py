#!/usr/bin/env python3
"""Dream against diffusers on the same CPU, one after the other: `dream bench` next to
../shared/parity/bench_unet.py for the same shapes (plus diffusers' VAE encode and TAESD decode,
which that script does not time), then the peak memory of one whole generation in each.

  tools/bench/compare.py MODEL_DIR [--sizes 512] [--iters 3] [--threads 2] [--steps 4]
                         [--dream target/release/dream] [--skip-generate]
  tools/bench/compare.py --model sdxl [--sizes 1024] [--iters 3] [--threads 2]

MODEL_DIR is a diffusers SD 1.5 folder (random weights are fine: `make_model.py --size sd15`);
`dream bench` builds the same architecture with random weights of its own. Both sides run with
--threads threads (RAYON_NUM_THREADS for Dream, torch.set_num_threads for PyTorch). The whole
generation is 512x512, --steps steps of Euler (k_euler), CFG 7.5, f32, measured as the peak
resident set size of each process. Other processes distort the timings: run it on a quiet machine.

With --model sdxl no folder is needed: diffusers' side is tools/bench/diffusers_sdxl.py, which
builds SDXL base 1.0's networks with random weights from the configs `dream bench --json` wrote,
and the two processes' peak memory is compared instead of a whole generation's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_measured(cmd, env=None):
    """Runs cmd and returns its peak RSS in bytes (Linux reports ru_maxrss in KiB)."""
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return usage.ru_maxrss * 1024


def diffusers_encode_median(model, size, iters, threads):
    import torch
    from diffusers import AutoencoderKL
    from diffusers_sdxl import median_seconds

    torch.set_num_threads(threads)
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=torch.float32).eval()
    image = torch.rand([1, 3, size, size], generator=torch.Generator().manual_seed(0)) * 2 - 1
    return median_seconds(lambda: vae.encode(image), iters)[0]


def diffusers_taesd_median(size, iters, threads):
    """AutoencoderTiny's decoder with its default (TAESD) config and random weights."""
    import torch
    from diffusers import AutoencoderTiny
    from diffusers_sdxl import median_seconds

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    taesd = AutoencoderTiny().eval()
    latents = torch.randn([1, 4, size // 8, size // 8], generator=torch.Generator().manual_seed(0))
    return median_seconds(lambda: taesd.decode(latents), iters)[0]


def print_table(dream, their_median):
    """Dream's rows beside their_median(component, input dims) (None where not measured)."""
    lines = [f"| component | input | Dream median (s) | diffusers median (s) | Dream / diffusers |",
             "| --- | --- | --- | --- | --- |"]
    for row in dream["timings"]:
        comp, dims = row["component"], row["input"]
        t = their_median(comp, dims)
        ratio = f"{row['median_s'] / t:.2f}" if t else "-"
        t_s = f"{t:.3f}" if t else "-"
        lines.append(f"| {comp} | {dims} | {row['median_s']:.3f} | {t_s} | {ratio} |")
    print()
    print("\n".join(lines))


def compare_sdxl(a, env, tmp):
    dream_json = os.path.join(tmp, "dream.json")
    ours = run_measured([a.dream, "bench", "--model", "sdxl", "--sizes", a.sizes, "--iters", str(a.iters),
                         "--json", dream_json], env=env)
    torch_json = os.path.join(tmp, "torch.json")
    reference = run_measured([sys.executable, os.path.join(HERE, "diffusers_sdxl.py"), dream_json,
                              "--sizes", a.sizes, "--iters", str(a.iters), "--threads", str(a.threads),
                              "--json", torch_json])
    with open(dream_json) as f:
        dream = json.load(f)
    with open(torch_json) as f:
        theirs = {(r["component"], tuple(r["input"])): r["median_s"] for r in json.load(f)["timings"]}
    print_table(dream, lambda comp, dims: theirs.get((comp, tuple(dims))))
    print(f"\nPeak RSS of the whole benchmark (every network built and timed one after the other): "
          f"Dream {ours / 2**30:.2f} GiB, diffusers {reference / 2**30:.2f} GiB (ratio {ours / reference:.2f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", metavar="MODEL_DIR", help="an SD 1.5 diffusers folder (sd15 only)")
    ap.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--sizes", default=None, help="comma-separated; 512 for sd15, 1024 for sdxl by default")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dream", default=os.path.join(ROOT, "target", "release", "dream"))
    ap.add_argument("--bench-unet", default=os.path.join(ROOT, "..", "shared", "parity", "bench_unet.py"))
    ap.add_argument("--skip-generate", action="store_true")
    a = ap.parse_args()
    a.sizes = a.sizes or ("1024" if a.model == "sdxl" else "512")
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    if a.model == "sdxl":
        if a.model_dir:
            ap.error("MODEL_DIR with --model sdxl (a whole SDXL generation) is not supported yet")
        return compare_sdxl(a, env, tmp)
    if not a.model_dir:
        ap.error("--model sd15 needs MODEL_DIR, an SD 1.5 diffusers folder")
    sizes = [int(s) for s in a.sizes.split(",")]

    dream_json = os.path.join(tmp, "dream.json")
    subprocess.run([a.dream, "bench", "--sizes", a.sizes, "--iters", str(a.iters), "--json", dream_json],
                   check=True, env=env)
    with open(dream_json) as f:
        dream = json.load(f)

    theirs = {}  # (component, batch, size) -> median seconds
    for size in sizes:
        for batch in (1, 2):
            out = os.path.join(tmp, f"torch_{size}_{batch}.json")
            # The VAE and text encoder once per size, with the batch-2 (CFG) run.
            skips = ["--skip-vae", "--skip-text"] if batch == 1 else []
            subprocess.run([sys.executable, a.bench_unet, "--model", a.model_dir, "--size", str(size),
                            "--batch", str(batch), "--iters", str(a.iters), "--threads", str(a.threads),
                            "--dtypes", "fp32", "--json", out] + skips, check=True)
            with open(out) as f:
                for r in json.load(f)["rows"]:
                    if "median_s" in r:
                        key_batch = batch if r["component"] in ("unet", "text_encoder") else 1
                        theirs[(r["component"], key_batch, size)] = r["median_s"]
        theirs[("vae_encode", 1, size)] = diffusers_encode_median(a.model_dir, size, a.iters, a.threads)
        theirs[("taesd_decode", 1, size)] = diffusers_taesd_median(size, a.iters, a.threads)

    def their_median(comp, dims):
        if comp == "text_encoder":
            size = sizes[0]
        elif comp == "vae_encode":
            size = dims[-1]
        else:  # unet, vae_decode, taesd_decode: latents
            size = dims[-1] * 8
        return theirs.get((comp, dims[0], size))

    print_table(dream, their_median)
    print(f"\n`dream bench` peak RSS: {dream['peak_rss_bytes'] / 2**30:.2f} GiB")

    if not a.skip_generate:
        out_dir = os.path.join(tmp, "images")
        ours = run_measured([a.dream, "a cat", "--model", a.model_dir, "-s", str(a.steps), "-A", "k_euler",
                             "-S", "1", "-o", out_dir], env=env)
        reference = run_measured([sys.executable, os.path.join(HERE, "diffusers_generate.py"), a.model_dir,
                                  "--steps", str(a.steps), "--threads", str(a.threads)])
        print(f"\nWhole 512x512 generation ({a.steps} k_euler steps, f32), peak RSS: "
              f"Dream {ours / 2**30:.2f} GiB, diffusers {reference / 2**30:.2f} GiB "
              f"(ratio {ours / reference:.2f})")


if __name__ == "__main__":
    main()
