"""Benchmark: changing the merge ratio in place, against the memory-bandwidth floor and the naive rebuild.

Weights: synthetic fp16 tensors with the parameter shapes of the SDXL UNet, generated from its architecture
(model_channels 320, channel_mult 1/2/4, 2 res blocks per level, transformer depth 0/2/10 and 10 in the middle,
context 2048, adm 2816, GEGLU feed-forward): 1680 tensors, 2,567,463,684 parameters, 5.13 GB per fp16 copy
(the real model's count exactly; `sdxl_unet_shapes`). `--scale s` multiplies every tensor's first dimension by
s (tensor count, and so the per-tensor overhead, unchanged); `--quick` is --scale 1/32 (160 MB per copy).
Memory at full size: the live parameters + A + B = 15.4 GB, and (c) adds a 5.13 GB merged state dict; the two
checkpoint files take 2 × 5.13 GB in the temporary folder (--tmp).

Measured in one run, each a median over --reps after one warm-up, ratios alternating 0.3 / 0.7 (never the
endpoints, which are plain copies):
  (a) switch  `InPlaceMerge.apply(r)` (weighted sum, A = the live weights), with `--sources resident` (A and B
              resident beside the weights: placement "device") or `--sources mapped` (no copies: A and B read
              at each switch from their memory-mapped checkpoint files, which the warm-up leaves in the page
              cache; placement "mapped").
  (b) floor   the same bytes through a plain loop `torch.lerp(a, b, w, out=p)` over the very same resident
              tensors and parameters. Any exact switch with A and B resident must read A, read B and write
              the parameters: 3 × the model's bytes, which this loop moves in one fused kernel per tensor with
              no bookkeeping. (A plain copy moves 2 × the bytes and is printed for reference as the raw
              bandwidth.)
  (c) naive   what a merger without resident copies does per ratio change: materialise the merged state dict
              from the two checkpoints as A1111's merger computes it, `(1 - r) * a + r * b` per key, reading
              A and B key by key from their .safetensors files (`safe_open`; the files sit in the page cache
              after the warm-up, so no disk time is counted), then `module.load_state_dict(merged)`.
  (c') naive from RAM: the same with A and B already in memory, printed for reference: it isolates what the
              arithmetic and the load cost without the reads (about 3 × the switch on a CPU).
  (d) block   a one-block switch: `apply(0.5, blocks="IN04=r")` with every other block at 0.5, which writes only
              IN04's tensors; printed with `block_write_fraction=` (bytes written / one model copy) and against
              the floor for those bytes (the plain lerp loop over IN04's tensors only).
Memory, after the timings, with a second merge of the same sources prepared from scratch (the process's own
memory: on the CPU its anonymous resident memory, `RssAnon` in /proc/self/status, sampled every millisecond by a
thread, so the page cache holding the mapped files does not count; on CUDA the allocator's peak):
  resident_mb     the peak over prepare() and two switches minus the memory before prepare(): what the merge
                  holds (the copies, or for mapped only what differs from A's file) plus any transient.
  peak_extra_mb   the peak during one untimed switch minus the memory just before it.

The last line is exactly `switch/floor=X.XX naive/switch=Y.YY peak_extra_mb=Z resident_mb=R`. Goals: resident:
switch/floor ≤ 1.5 and naive/switch ≥ 10; mapped (files in the page cache): switch/floor ≤ 2.0 and resident_mb
≤ 2 % of one model copy (printed as `resident/copy`).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_ext.merge import InPlaceMerge, MergeRecipe  # noqa: E402
from bench.merge_memory import rss_anon  # noqa: E402  (one reader of /proc/<pid>/status for both benches)
from lib_ext.merge.blocks import unet_slot  # noqa: E402

UNET = "model.diffusion_model."
BLOCK = "IN04"  # the one-block switch: SDXL's IN04 (a res block and 2 transformer blocks, 1.07 % of the UNet)


def sdxl_unet_shapes() -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} of the SDXL base UNet (sgm `UNetModel` with the SDXL config)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, out, inp, bias=True):
        shapes[f"{UNET}{name}.weight"] = (out, inp)
        if bias:
            shapes[f"{UNET}{name}.bias"] = (out,)

    def conv(name, out, inp, k):
        shapes[f"{UNET}{name}.weight"] = (out, inp, k, k)
        shapes[f"{UNET}{name}.bias"] = (out,)

    def norm(name, channels):
        shapes[f"{UNET}{name}.weight"] = (channels,)
        shapes[f"{UNET}{name}.bias"] = (channels,)

    def res_block(name, inp, out):
        norm(f"{name}.in_layers.0", inp)
        conv(f"{name}.in_layers.2", out, inp, 3)
        linear(f"{name}.emb_layers.1", out, 1280)
        norm(f"{name}.out_layers.0", out)
        conv(f"{name}.out_layers.3", out, out, 3)
        if inp != out:
            conv(f"{name}.skip_connection", out, inp, 1)

    def transformer(name, channels, depth):
        norm(f"{name}.norm", channels)
        linear(f"{name}.proj_in", channels, channels)
        for d in range(depth):
            block = f"{name}.transformer_blocks.{d}"
            for attention, kv in (("attn1", channels), ("attn2", 2048)):
                linear(f"{block}.{attention}.to_q", channels, channels, bias=False)
                linear(f"{block}.{attention}.to_k", channels, kv, bias=False)
                linear(f"{block}.{attention}.to_v", channels, kv, bias=False)
                linear(f"{block}.{attention}.to_out.0", channels, channels)
            linear(f"{block}.ff.net.0.proj", 8 * channels, channels)  # GEGLU: 2 × 4·channels
            linear(f"{block}.ff.net.2", channels, 4 * channels)
            for k in (1, 2, 3):
                norm(f"{block}.norm{k}", channels)
        linear(f"{name}.proj_out", channels, channels)

    linear("time_embed.0", 1280, 320)
    linear("time_embed.2", 1280, 1280)
    linear("label_emb.0.0", 1280, 2816)
    linear("label_emb.0.2", 1280, 1280)
    conv("input_blocks.0.0", 320, 4, 3)
    widths, depths = (320, 640, 1280), (0, 2, 10)
    skips, channels, index = [320], 320, 1
    for level, (width, depth) in enumerate(zip(widths, depths)):
        for _ in range(2):
            res_block(f"input_blocks.{index}.0", channels, width)
            channels = width
            if depth:
                transformer(f"input_blocks.{index}.1", width, depth)
            skips.append(channels)
            index += 1
        if level < len(widths) - 1:
            conv(f"input_blocks.{index}.0.op", channels, channels, 3)
            skips.append(channels)
            index += 1
    res_block("middle_block.0", channels, channels)
    transformer("middle_block.1", channels, 10)
    res_block("middle_block.2", channels, channels)
    index = 0
    for level in reversed(range(len(widths))):
        width, depth = widths[level], depths[level]
        for i in range(3):
            res_block(f"output_blocks.{index}.0", channels + skips.pop(), width)
            channels, part = width, 1
            if depth:
                transformer(f"output_blocks.{index}.1", width, depth)
                part = 2
            if level and i == 2:
                conv(f"output_blocks.{index}.{part}.conv", width, width, 3)
            index += 1
    norm("out.0", 320)
    conv("out.2", 4, 320, 3)
    return shapes


def scaled(shapes: dict[str, tuple[int, ...]], scale: float) -> dict[str, tuple[int, ...]]:
    return {k: (max(1, round(s[0] * scale)), *s[1:]) for k, s in shapes.items()}


def synthetic(shapes: dict[str, tuple[int, ...]], seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """fp16 weights in [-1, 1): slices of one random pool at random offsets (memcpy-fast to build; normal
    numbers only, since subnormals would slow some CPUs' arithmetic and flatter no one)."""
    generator = torch.Generator().manual_seed(seed)
    largest = max(math.prod(s) for s in shapes.values())
    pool = (torch.rand(2 * largest, generator=generator) * 2 - 1).to(device=device, dtype=torch.float16)
    offsets = torch.randint(0, largest, (len(shapes),), generator=generator).tolist()
    return {k: pool[o:o + math.prod(s)].view(s).clone() for (k, s), o in zip(shapes.items(), offsets)}


def return_freed_memory_to_the_os() -> bool:
    """glibc: serve every allocation of 64 KiB or more by mmap and unmap it when freed, so the RSS follows
    what is allocated now (otherwise freed heap memory stays resident and hides new allocations)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)  # and give back the free heap the timings left, so that it cannot be reused
        return done
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak extra memory of a block: RssAnon sampled by a thread (CPU) or the CUDA allocator's peak."""

    def __init__(self, device: torch.device):
        self.device, self.peak_extra = device, 0

    @staticmethod
    def rss() -> int:
        """This process's anonymous resident memory (not the file pages it maps)."""
        return rss_anon(os.getpid())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        self.before = self.peak = self.rss()
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, self.rss())
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_extra = torch.cuda.max_memory_allocated(self.device) - self.before
            return
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.peak_extra = self.peak - self.before


def interleaved_medians(runs: dict[str, Callable[[float], None]], reps: dict[str, int],
                        device: torch.device, budget_s: float = math.inf) -> dict[str, float]:
    """Median seconds of each run(r) after one warm-up. The runs take turns in every round, in a (seeded)
    random order, so no run always follows another (the naive path's frees slow what comes next) and a machine
    shared with other jobs slows them alike. r alternates 0.3 / 0.7 between rounds. After `budget_s` no new round starts
    (three rounds at least), so that a busy machine does not stretch the run."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():
        run(0.7)
    order, shuffle = list(runs), random.Random(0).shuffle
    started = time.perf_counter()
    for i in range(max(reps.values())):
        if i >= 3 and time.perf_counter() - started > budget_s:
            break
        shuffle(order)
        for name in order:
            run = runs[name]
            if i >= reps[name]:
                continue
            sync()
            start = time.perf_counter()
            run(0.3 if i % 2 == 0 else 0.7)
            sync()
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"  {name:<8}" + " ".join(f"{x * 1e3:.0f}" for x in t) + " ms")
    return {name: statistics.median(t) for name, t in times.items()} | \
        {name + "_min": min(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="--scale 1/32: under a minute on 2 CPU cores")
    parser.add_argument("--scale", type=float, default=None, help="first-dimension scale of every tensor (1 = SDXL)")
    parser.add_argument("--sources", choices=("resident", "mapped"), default="resident",
                        help="where the switch reads A and B: resident copies, or the memory-mapped files")
    parser.add_argument("--reps", type=int, default=11, help="timed rounds of (a), (b) and the copy")
    parser.add_argument("--naive-reps", type=int, default=5, help="timed rounds of (c)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no timed round after this many seconds (default: 25 with --quick, else none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tmp", default=None, help="folder for the two checkpoint files")
    args = parser.parse_args(argv)
    scale = args.scale if args.scale is not None else (1 / 32 if args.quick else 1.0)
    device = torch.device(args.device)
    torch.set_grad_enabled(False)

    shapes = scaled(sdxl_unet_shapes(), scale)
    numel = sum(math.prod(s) for s in shapes.values())
    model_bytes = numel * 2
    gb = model_bytes / 1e9
    print(f"device {device} ({torch.get_num_threads()} CPU threads), scale {scale:g}, sources {args.sources}: "
          f"{len(shapes)} tensors, {numel:,} fp16 parameters, {gb:.3f} GB per copy")

    start = time.perf_counter()
    module = torch.nn.Module()
    live: dict[str, torch.nn.Parameter] = {}
    for i, (key, tensor) in enumerate(synthetic(shapes, 0, device).items()):
        live[key] = torch.nn.Parameter(tensor, requires_grad=False)
        module.register_parameter(f"p{i}", live[key])
    clean_a = {k: p.detach().clone() for k, p in live.items()}  # A's weights (the live ones get overwritten)
    model_b = synthetic(shapes, 1, device)
    files = contextlib.ExitStack()
    folder = files.enter_context(tempfile.TemporaryDirectory(prefix="merge_switch_", dir=args.tmp))
    paths = {"A": os.path.join(folder, "a.safetensors"), "B": os.path.join(folder, "b.safetensors")}
    save_file({k: t.cpu() for k, t in clean_a.items()}, paths["A"])
    save_file({k: t.cpu() for k, t in model_b.items()}, paths["B"])
    recipe = MergeRecipe("weighted_sum", paths["A"], paths["B"])
    placement = "device" if args.sources == "resident" else "mapped"
    merge = InPlaceMerge(recipe, live, placement=placement)
    merge.prepare()  # resident: A a copy of the live weights, B read from its file; mapped: A's file checked
    print(f"setup {time.perf_counter() - start:.1f} s; held by the merge: {merge.resident_bytes() / 1e9:.3f} GB "
          f"({merge.placement_used})")

    # (b) the floor: the same fused lerp over A and B in memory, nothing else
    def floor_pass(r: float) -> None:
        for key, a in clean_a.items():
            torch.lerp(a, model_b[key], r, out=live[key])

    def copy_pass(r: float) -> None:
        for key, a in clean_a.items():
            live[key].copy_(a)

    # (c) naive: the merged state dict from the checkpoint files, then load_state_dict; (c') from RAM
    names = {key: f"p{i}" for i, key in enumerate(live)}
    file_a = files.enter_context(safe_open(paths["A"], framework="pt", device=str(device)))
    file_b = files.enter_context(safe_open(paths["B"], framework="pt", device=str(device)))

    def naive_pass(r: float) -> None:
        merged = {names[k]: (1 - r) * file_a.get_tensor(k) + r * file_b.get_tensor(k) for k in live}
        module.load_state_dict(merged)

    def naive_ram_pass(r: float) -> None:
        merged = {names[k]: (1 - r) * clean_a[k] + r * model_b[k] for k in live}
        module.load_state_dict(merged)

    runs = {"switch": lambda r: merge.apply(r), "floor": floor_pass, "copy": copy_pass, "naive": naive_pass,
            "naive_ram": naive_ram_pass}
    medians = interleaved_medians(runs, {"switch": args.reps, "floor": args.reps, "copy": args.reps,
                                         "naive": args.naive_reps, "naive_ram": args.naive_reps}, device,
                                  args.budget_s if args.budget_s is not None else (25.0 if args.quick else math.inf))
    switch, floor, copy, naive, naive_ram = (medians[name] for name in runs)

    # (d) a one-block switch (merge_blocks "IN04=r", the rest at 0.5): only that block's tensors are written; its
    # floor is the same fused lerp over just those tensors
    block = [key for key in live if unet_slot(key) == BLOCK]
    merge.apply(0.5)

    def block_floor(r: float) -> None:
        for key in block:
            torch.lerp(clean_a[key], model_b[key], r, out=live[key])

    print(f"one-block switch ({BLOCK}, times per round):")
    block_medians = interleaved_medians({"block": lambda r: merge.apply(0.5, blocks=f"{BLOCK}={r}"),
                                         "bfloor": block_floor}, {"block": args.reps, "bfloor": args.reps}, device,
                                        args.budget_s if args.budget_s is not None else (10.0 if args.quick else math.inf))
    merge.apply(0.5, blocks=f"{BLOCK}=0.45")
    block_bytes, block_tensors = merge.last_write.bytes, merge.last_write.tensors
    merge.close()

    # memory, after the timings (which ran with the allocator's default reuse of freed memory): a second merge
    # of the same sources, prepared from scratch
    exact_rss = return_freed_memory_to_the_os()
    gc.collect()
    merge = InPlaceMerge(recipe, live, placement=placement)
    with PeakMemory(device) as held:
        merge.prepare()
        merge.apply(0.3)
        with PeakMemory(device) as peak:  # (a) once more, untimed
            merge.apply(0.45)
    with PeakMemory(device) as naive_peak:
        naive_pass(0.45)
    merge.close()
    files.close()
    gc.collect()

    def line(name, seconds, streams):
        return (f"  {name:<8}{seconds * 1e3:10.1f} ms  {streams * gb / seconds:7.2f} GB/s over {streams} × model "
                f"bytes  (best round {medians[name + '_min'] * 1e3:.1f} ms)")
    print("medians (times per round above):")
    print(line("switch", switch, 3))
    print(line("floor", floor, 3))
    print(line("copy", copy, 2) + ", the raw bandwidth, for reference")
    print(line("naive", naive, 3) + ", from the files, plus its temporaries and load_state_dict's copy")
    print(line("naive_ram", naive_ram, 3) + f", from RAM: naive_ram/switch={naive_ram / switch:.2f}")
    resident_mb = max(0, held.peak_extra) / 2 ** 20
    print(f"memory: the merge held {resident_mb:.1f} MiB at its peak (prepare and two switches; "
          f"resident/copy={resident_mb * 2 ** 20 / model_bytes:.4f}), one switch {peak.peak_extra / 2 ** 20:.1f} MiB, "
          f"naive {naive_peak.peak_extra / 2 ** 20:.0f} MiB (its merged state dict alone: {model_bytes / 2 ** 20:.0f} MiB)"
          + ("" if exact_rss or device.type == "cuda" else "; glibc mallopt unavailable: RSS deltas may hide reuse"))
    print(f"best rounds: switch/floor={medians['switch_min'] / medians['floor_min']:.2f} "
          f"naive/switch={medians['naive_min'] / medians['switch_min']:.2f} (a machine shared with other jobs makes "
          "rounds vary; the last line uses the medians)")
    block_switch, block_floor_s = block_medians["block"], block_medians["bfloor"]
    print(f"one-block switch: {BLOCK} = {block_tensors} of {len(live)} tensors, {block_bytes / 1e6:.1f} MB written: "
          f"block_write_fraction={block_bytes / model_bytes:.4f}; {block_switch * 1e3:.2f} ms against "
          f"{block_floor_s * 1e3:.2f} ms for the plain lerp over those bytes: block_switch/floor="
          f"{block_switch / block_floor_s:.2f}; whole-UNet switch/block switch={switch / block_switch:.1f}")
    print(f"switch/floor={switch / floor:.2f} naive/switch={naive / switch:.2f} "
          f"peak_extra_mb={max(0, peak.peak_extra) / 2 ** 20:.0f} resident_mb={resident_mb:.0f}")


if __name__ == "__main__":
    main()
