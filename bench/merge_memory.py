"""What a merge sweep costs a running WebUI in memory: the WebUI process's own (anonymous) resident memory during
a sweep of merge ratios, against the same process's memory with the model alone, measured in the same run.

    python bench/merge_memory.py --url http://127.0.0.1:7860 --pid 12345 --model A --partner B \
        [--sources "Memory-mapped files" | "Resident copies" | "Automatic"] [--ratios 0.5,1,0.25]

The WebUI must run with `--api` and Uncond Lab installed, on this machine (`--pid`: its process, whose
/proc/<pid>/status is read). `RssAnon` is the memory the process owns: the page cache that holds memory-mapped
checkpoint files is not in it (the OS drops those pages when RAM runs short). A thread samples it every 50 ms.

Steps: load A, make a plain picture (the baseline: the model alone, warmed up), then one picture per ratio with B
merged (text encoders following, or at --te-ratio), then a plain one again (the merge restored and released). `--sources` sets
A1111's setting for where A and B are read from (reForge has none: its patches always read the mapped files).
The model's size is the checkpoint's tensors as loaded (float32 with --no-half): `model_mb`.

Last line: `merge_peak/model=X.XX merge_held/model=Y.YY model_mb=M` — the peak during the merged pictures and the
memory held after them, above the baseline, as a fraction of one model copy. Goal (A1111, mapped): ≤ 0.05 held
on an SDXL-sized model (the cast buffers, a few tens of MiB whatever the model's size); the resident copies hold
about 2 (A and B of every merged weight). reForge adds its own backup of each patched weight while patched.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_ext.merge.sources import SafetensorsSource  # noqa: E402
from tests.webui.client import WebUI  # noqa: E402  (the repo's small stdlib API client)

SOURCES_OPTION = "uncond_lab_merge_sources"


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


class Sampler:
    """The peak RssAnon of a process while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.running = pid, 0, False

    def __enter__(self):
        self.peak, self.running = rss_anon(self.pid), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_anon(self.pid))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss_anon(self.pid))


def model_bytes(webui: WebUI, stem: str, float32: bool) -> int:
    """The checkpoint's floating tensors as loaded (float32 with --no-half, else as stored)."""
    info = next(m for m in webui.get("/sdapi/v1/sd-models") if m["title"].startswith(stem + "."))
    specs = SafetensorsSource(info["filename"]).specs.values()
    return sum(s.numel * (4 if float32 else s.dtype.itemsize) for s in specs if s.dtype.is_floating_point)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--pid", type=int, required=True, help="the WebUI's process id (this machine)")
    parser.add_argument("--model", required=True, help="model A: checkpoint file stem")
    parser.add_argument("--partner", required=True, help="model B: checkpoint file stem")
    parser.add_argument("--sources", default=None, help="A1111's setting (default: leave it as it is)")
    parser.add_argument("--ratios", default="0.5,1,0.25")
    parser.add_argument("--te-ratio", type=float, default=None, help="text-encoder ratio (default: follows)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--float16", action="store_true", help="the WebUI keeps weights in float16 (no --no-half)")
    args = parser.parse_args()
    webui = WebUI(args.url, "a1111")
    options = webui.get("/sdapi/v1/options")
    saved = options.get(SOURCES_OPTION)
    if args.sources is not None and saved is None:
        print("this WebUI has no merge-sources setting (reForge): its patches always read the mapped files")
    elif args.sources is not None:
        webui.post("/sdapi/v1/options", {SOURCES_OPTION: args.sources})
    partner = next(t for t in webui.checkpoint_titles() if t.startswith(args.partner + "."))
    params = {"width": args.size, "height": args.size, "steps": args.steps}
    try:
        webui.post("/uncond-lab/v1/merge-release", {})
        webui.use_checkpoint(args.model)
        webui.txt2img(**params)
        webui.txt2img(**params)
        baseline = rss_anon(args.pid)
        size = model_bytes(webui, args.model, not args.float16)
        print(f"model {args.model}: {size / 2 ** 20:.0f} MiB as loaded; WebUI RssAnon with it alone "
              f"{baseline / 2 ** 20:.0f} MiB")
        with Sampler(args.pid) as merged:
            for ratio in (float(r) for r in args.ratios.split(",")):
                start = time.perf_counter()
                webui.txt2img({"merge_model": partner, "merge_ratio": ratio, "merge_te_ratio": args.te_ratio}, **params)
                print(f"  ratio {ratio:g}: {time.perf_counter() - start:.1f} s, RssAnon now "
                      f"{rss_anon(args.pid) / 2 ** 20:.0f} MiB")
        held = rss_anon(args.pid)
        status = webui.get("/uncond-lab/v1/merge-status")
        webui.txt2img(**params)
        after = rss_anon(args.pid)
    finally:
        if args.sources is not None and saved is not None:
            webui.post("/sdapi/v1/options", {SOURCES_OPTION: saved})
    print(f"merge status: placement {status.get('placement')}, {status.get('resident_bytes', 0) / 2 ** 20:.0f} MiB "
          f"held by the merge; after a plain picture: RssAnon {after / 2 ** 20:.0f} MiB")
    print(f"merge_peak/model={(merged.peak - baseline) / size:.2f} merge_held/model={(held - baseline) / size:.2f} "
          f"model_mb={size / 2 ** 20:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
