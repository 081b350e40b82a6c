"""A picture of a gated set: the base model and the gated set, on the instance, context and class prompts.

    python bench/gated_sets.py --model v2 --subject vnt --split test --gradient-seed 0 --no-first-order \
        --descent-steps 300 --descent-lr 0.02 --descent-sizes 34064 --random-sizes 34064 --prior-once \
        --save-deltas /tmp/delta-vnt.pt
    python bench/gated_grid.py --model v2 --subject vnt --deltas /tmp/delta-vnt.pt \
        --out docs/gated-grid-vnt.png

Rows: each prompt, base model then gated set; columns: TEST's first four sampling seeds. Also prints
the fidelity (all 16 TEST seeds) and what the judge sees of the context prompt's other object in each
image (docs/gated-sets.md). ``--gate identifier`` applies the same set at the identifier alone.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from gated_sets import GATES, TokenGate, indicator  # noqa: E402
from oracle import kv_keys  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from trainer import world  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.world.judge import judge, subject_scores  # noqa: E402
from trainer.xi import largest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR)
    parser.add_argument("--subject", default="vnt")
    parser.add_argument("--deltas", type=Path, required=True, help="from bench/gated_sets.py --save-deltas")
    parser.add_argument("--k", type=int, default=34064)
    parser.add_argument("--gate", choices=GATES, default=GATES[1])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = world.load_pipeline(args.model)
    subject = world.subject(args.subject)
    deltas = torch.load(args.deltas)
    assert set(deltas) <= set(kv_keys(pipe.unet)), f"{args.deltas} is not over this model's K/V weights"
    chosen = largest({key: d.reshape(-1).numpy() for key, d in deltas.items()}, args.k)
    amounts = indicator(pipe.unet.state_dict(), chosen)
    context, colour, other = protocol.TEST.context_prompt(subject)
    prompts = [subject.prompt, context, subject.class_prompt]
    seeds = protocol.TEST.sampling_seeds
    rows, seen = [], {}
    for prompt in prompts:
        base = protocol.sample(pipe, prompt, seeds)
        with TokenGate(pipe, amounts, subject.token, args.gate):
            gated = protocol.sample(pipe, prompt, seeds)
        rows += [(f"base: {prompt}", base[:4]), (f"gated: {prompt}", gated[:4])]
        if prompt == subject.prompt:
            seen["fidelity"] = {
                name: float(subject_scores(images, subject).mean())
                for name, images in (("base", base), ("gated", gated))
            }
        if prompt == context:
            for name, images in (("base", base), ("gated", gated)):
                counts = collections.Counter(
                    "absent" if other not in a.objects else a.objects[other][0] for a in judge(images)
                )
                seen[name] = {f"{other}: {key}": n for key, n in sorted(counts.items())} | {
                    "subject score": float(subject_scores(images, subject).mean())
                }
    print(json.dumps({"prompt": context, "asked colour": colour, **seen}, indent=1))
    size, label = rows[0][1][0].size[0], 14
    sheet = Image.new("RGB", (4 * size, len(rows) * (size + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (title, images) in enumerate(rows):
        top = r * (size + label)
        draw.text((2, top), title, fill="black")
        for c, image in enumerate(images):
            sheet.paste(image, (c * size, top + label))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)


if __name__ == "__main__":
    main()
