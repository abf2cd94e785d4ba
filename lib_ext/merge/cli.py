"""`python -m lib_ext.merge`: write merged checkpoints at one or more ratios, without a WebUI."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

from lib_ext.merge.blocks import PRESETS as BLOCK_PRESETS
from lib_ext.merge.recipe import ADD_DIFFERENCE, METHODS, WEIGHTED_SUM, MergeRecipe, RecipeError, parse_ratio
from lib_ext.merge.save import (DEFAULT_CHUNK_ELEMENTS, OUTPUT_DTYPES, PEAK_BYTES_PER_CHUNK_ELEMENT, MergeSaveError,
                                default_merge_name, file_sha256, save_merge)
from lib_ext.merge.sources import MergeInputError, MergeInputs, plan_merge

EPILOG = """\
memory: inputs are read lazily (memory-mapped safetensors) and each tensor is merged and written a range of rows
at a time, so the peak extra memory is bounded by about {per} bytes x --chunk-elements ({mib} MiB at the
default {default}), whatever the model size, on top of the Python/torch baseline. The inputs are memory-mapped;
the OS page cache they occupy is reclaimable and not counted.

output: all of A's keys; UNet and text encoders merged (the VAE only with --vae), everything else (EMA,
schedules, prediction-type markers such as v_pred/ztsnr) copied from A. Files are never overwritten: an
existing name gets the first free '-2', '-3', ... suffix. The recipe is stored in the metadata
(uncond_lab_merge_recipe, and A1111's sd_merge_recipe / sd_merge_models).
""".format(per=PEAK_BYTES_PER_CHUNK_ELEMENT, mib=PEAK_BYTES_PER_CHUNK_ELEMENT * DEFAULT_CHUNK_ELEMENTS >> 20,
           default=DEFAULT_CHUNK_ELEMENTS)


def _ratios(text: str) -> list[float]:
    try:
        return [parse_ratio("ratio", part) for part in text.split(",") if part.strip()]
    except RecipeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ratio(text: str) -> float:
    try:
        return parse_ratio("ratio", text)
    except RecipeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_ext.merge", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Merge two (or three) .safetensors checkpoints at one or more ratios: weighted sum "
                    "(1-r)*A + r*B, or add difference A + r*(B-C).")
    parser.add_argument("model_a", metavar="A", help="model A (.safetensors); its keys and dtypes shape the output")
    parser.add_argument("model_b", metavar="B", help="model B (.safetensors)")
    parser.add_argument("--c", dest="model_c", metavar="C", help="model C for add difference")
    parser.add_argument("--method", choices=METHODS, help="default: add_difference with --c, else weighted_sum")
    parser.add_argument("--ratio", dest="ratios", type=_ratios, action="append", required=True, metavar="R[,R...]",
                        help="UNet ratio r; repeat or give a comma list for one file per ratio")
    parser.add_argument("--te-ratio", type=_ratio, metavar="R", help="text-encoder ratio (default: follows --ratio)")
    parser.add_argument("--blocks", metavar="BLOCKS",
                        help="per-block UNet ratios: a supermerger vector (26 values SD1.x, 20 SDXL; its first, BASE, "
                             "is the text encoders'), assignments such as 'IN00-IN05=1, M00=0.5, OUT=0' (blocks not "
                             "named take --ratio), or a preset (" + ", ".join(BLOCK_PRESETS) + ")")
    parser.add_argument("--vae", action="store_true", help="merge the VAE too (default: A's VAE)")
    parser.add_argument("--vae-ratio", type=_ratio, metavar="R", help="VAE ratio with --vae (default: follows --ratio)")
    parser.add_argument("--dtype", choices=OUTPUT_DTYPES, default="a",
                        help="dtype of the UNet/text-encoder/VAE weights written (default 'a': each as in A)")
    parser.add_argument("--out-dir", required=True,
                        help="folder to write into (e.g. the WebUI's models/Stable-diffusion)")
    parser.add_argument("--name", help="file name without extension (default: from the inputs and ratios); "
                                       "with several ratios each gets ' r<ratio>' appended")
    parser.add_argument("--sha256", action="store_true",
                        help="hash the inputs (reads each once more) to fill A1111's sd_merge_models metadata")
    parser.add_argument("--chunk-elements", type=int, default=DEFAULT_CHUNK_ELEMENTS, metavar="N",
                        help="elements merged at a time (bounds the memory, see below)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _progress_bar(label: str, enabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(update(done, total), close()); tqdm when importable, else a plain line on stderr."""
    if not enabled:
        return (lambda done, total: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr)
            bar.update(done - bar.n)

        return update, (lambda: bar is not None and bar.close())
    state = {"last": -1.0, "start": time.monotonic()}

    def update_plain(done: int, total: int) -> None:
        percent = 100.0 * done / max(total, 1)
        if percent - state["last"] >= 1.0 or done == total:
            state["last"] = percent
            rate = done / max(time.monotonic() - state["start"], 1e-9) / 2 ** 20
            print(f"\r{label}: {percent:5.1f}% ({done / 2 ** 30:.2f} GiB, {rate:.0f} MiB/s)", end="", file=sys.stderr)

    return update_plain, (lambda: print(file=sys.stderr))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ratios = [r for group in args.ratios for r in group]
    if not ratios:
        parser.error("--ratio needs at least one value")
    if args.chunk_elements < 1:
        parser.error(f"--chunk-elements must be a positive integer, got {args.chunk_elements}")
    method = args.method or (ADD_DIFFERENCE if args.model_c else WEIGHTED_SUM)
    try:
        recipes = [MergeRecipe(method, args.model_a, args.model_b, args.model_c, ratio, args.te_ratio,
                               args.vae, args.vae_ratio, args.blocks) for ratio in ratios]
        inputs = MergeInputs.open(recipes[0])
    except (RecipeError, MergeInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if recipes[0].blocks is not None:
        try:
            plan_merge(recipes[0], inputs)  # per-block ratios that do not fit these models: a bad argument
        except RecipeError as error:
            inputs.close()
            print(f"error: {error}", file=sys.stderr)
            return 2
        except MergeInputError:
            pass  # reported below, as without --blocks
    try:
        sha256 = None
        if args.sha256:
            sha256 = {role: file_sha256(path) for role, path in recipes[0].models.items()}
        for recipe in recipes:
            name = args.name if args.name is None or len(recipes) == 1 else f"{args.name} r{recipe.unet_ratio:g}"
            label = name or default_merge_name(recipe)
            update, close = _progress_bar(label, not args.no_progress)
            try:
                path = save_merge(recipe, args.out_dir, name=name, inputs=inputs, sha256=sha256,
                                  output_dtype=OUTPUT_DTYPES[args.dtype], chunk_elements=args.chunk_elements,
                                  progress=update)
            finally:
                close()
            print(path)
    except (MergeInputError, MergeSaveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the partial file was removed", file=sys.stderr)
        return 130
    finally:
        inputs.close()
    return 0
