"""What Uncond Lab's per-step hook costs: sampling time with the extension enabled vs disabled, measured in the
same run on a real model in a running WebUI, and the text-encoder calls it adds per generation.

    python bench/uncond_hook.py --url http://127.0.0.1:7860 --model uncondlab-vega-sdxl-a [--steps 30 --rounds 12]

The WebUI must run with `--api` and Uncond Lab installed. The enabled runs use a zero weight of 0.5 over the
whole schedule, so the hook restores te("") and blends at every denoiser call (its most expensive path). Runs
alternate in a shuffled order, and the ratio is of medians, because these machines are noisy. Uncond Lab's
own counters come from its "Uncond Lab stats" infotext entry (the option `uncond_lab_stats`, switched on for
the run and restored afterwards).

Last line: `enabled/disabled=X.XXX te_calls_per_batch=N te_calls_per_step=S hook_us_per_call=U` (goals: ratio
≤ 1.02, at most one extra text-encoder call per batch and none per step; te("") is kept while the WebUI's
cond-cache key holds, so after the warm-up the runs measured here encode it 0 times). The line above it gives the share of a generation
that Uncond Lab's own clock accounts for (te("") encoding + the hook), a cross-check when the machine is busy.
"""
from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.webui.client import WebUI  # noqa: E402  (the repo's small stdlib API client)

ENABLED = {"enabled": True, "zero_weight": 0.5, "start": 0.0, "end": 1.0}
STATS = re.compile(r"te calls (\d+) \((\d+) ms\), denoiser calls (\d+), blended (\d+), hook (\d+) us/call")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--model", help="checkpoint file stem (default: the loaded one)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    webui = WebUI(args.url, "unknown")
    if args.model:
        webui.use_checkpoint(args.model)
    options = webui.get("/sdapi/v1/options")
    webui.post("/sdapi/v1/options", {"uncond_lab_stats": True, "live_previews_enable": False})
    params = {"steps": args.steps, "width": args.size, "height": args.size, "batch_size": args.batch_size,
              "negative_prompt": ""}
    times: dict[bool, list[float]] = {False: [], True: []}
    stats = None
    try:
        webui.txt2img(**params)  # warm-up
        webui.txt2img(ENABLED, **params)
        order = [flag for _ in range(args.rounds) for flag in (False, True)]
        random.Random(0).shuffle(order)
        for enabled in order:
            started = time.perf_counter()
            result = webui.txt2img(ENABLED if enabled else None, **params)
            times[enabled].append(time.perf_counter() - started)
            if enabled:
                stats = STATS.search(result.infotexts[0])
        # Text-encoder calls per step, measured: the same generation with twice the steps.
        longer = STATS.search(webui.txt2img(ENABLED, **{**params, "steps": 2 * args.steps}).infotexts[0])
    finally:
        webui.post("/sdapi/v1/options", {"uncond_lab_stats": options.get("uncond_lab_stats", False),
                                         "live_previews_enable": options.get("live_previews_enable", True)})

    disabled, enabled = statistics.median(times[False]), statistics.median(times[True])
    print(f"model {args.model or options.get('sd_model_checkpoint')}: {args.size}x{args.size}, {args.steps} steps, "
          f"batch {args.batch_size}, {args.rounds} rounds each")
    print(f"median generation: disabled {disabled:.3f} s, enabled {enabled:.3f} s "
          f"(min {min(times[False]):.3f} / {min(times[True]):.3f} s)")
    if stats is None:
        print("no 'Uncond Lab stats' in the infotext: is Uncond Lab installed in this WebUI?")
        return 1
    te_calls, te_ms, denoiser_calls, blended, hook_us = map(int, stats.groups())
    te_calls_per_step = (int(longer.group(1)) - te_calls) / args.steps
    accounted = (te_ms / 1e3 + denoiser_calls * hook_us / 1e6) / disabled
    print(f"Uncond Lab per generation: {te_calls} text-encoder call(s) ({te_ms} ms), {denoiser_calls} denoiser "
          f"calls ({blended} blended), {hook_us} us in the hook per call; at {2 * args.steps} steps "
          f"{longer.group(1)} text-encoder call(s)")
    print(f"time Uncond Lab itself accounts for: {100 * accounted:.2f} % of a disabled generation "
          "(its own clock, insensitive to other jobs on the machine; the wall-clock ratio below is not)")
    print(f"enabled/disabled={enabled / disabled:.3f} te_calls_per_batch={te_calls} "
          f"te_calls_per_step={te_calls_per_step:g} hook_us_per_call={hook_us}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
