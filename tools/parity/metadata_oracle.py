"""Reads a PNG written by Dream with the `sd-parsers` package (an independent reader of A1111,
InvokeAI and ComfyUI metadata) and records what it extracts, one chunk at a time, as the
fixture crates/dream-pipeline/tests/metadata.rs checks Dream's own reader against.

    pip install sd-parsers
    cargo run -p dream-cli -- "a cat, (sitting:1.2)" --model fixtures/tiny -s 2 -S 1 -W 64 -H 64 \
        -A k_euler_a -C 7 --clip_skip 2 -o /tmp/md
    cp /tmp/md/000001.1.png fixtures/metadata/dream_64.png
    python tools/parity/metadata_oracle.py fixtures/metadata/dream_64.png \
        > fixtures/metadata/sd_parsers_oracle.json
"""

import io
import json
import sys
from importlib.metadata import version

from PIL import Image, PngImagePlugin
from sd_parsers import ParserManager


def parse_chunk(image: Image.Image, keyword: str) -> dict:
    """sd-parsers' reading of `image` carrying only the text chunk `keyword`."""
    info = PngImagePlugin.PngInfo()
    info.add_text(keyword, image.info[keyword])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    buffer.seek(0)
    result = ParserManager().parse(Image.open(buffer))
    if result is None:
        raise SystemExit(f"sd-parsers could not read the {keyword} chunk")
    (sampler,) = result.samplers
    return {
        "generator": result.generator.value,
        "prompt": [p.value for p in sampler.prompts],
        "negative_prompt": [p.value for p in sampler.negative_prompts],
        "sampler": sampler.name,
        "sampler_parameters": {k: str(v) for k, v in sampler.parameters.items()},
        "model": sampler.model.name if sampler.model else None,
        "metadata": {k: str(v) for k, v in result.metadata.items()},
    }


def main():
    image = Image.open(sys.argv[1])
    image.load()
    oracle = {
        "sd_parsers_version": version("sd-parsers"),
        "chunks": {k: parse_chunk(image, k) for k in ("parameters", "Dream", "sd-metadata")},
    }
    json.dump(oracle, sys.stdout, indent=2, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
