"""Compare zero vs null in one click: the generation itself is the user's blend; after it, the WebUI default,
null and zero variants are rendered with the same seed and settings, and one labelled grid (plus an amplified
difference map of zero vs null) is put in front of the results and saved with the singles."""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from modules import images, processing, shared
from PIL import Image

from lib_ext.compare import compare_variants, difference_map, mean_abs_difference
from lib_ext.hosts import common, host
from lib_ext.settings import Settings

log = logging.getLogger("uncond_lab")

VARIANT_ATTR = "uncond_lab_compare_variant"  # marks the copies we render, so they don't compare again


def is_variant(p) -> bool:
    return bool(getattr(p, VARIANT_ATTR, False))


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


def _render(p, overrides) -> tuple[Image.Image, str]:
    """One variant: a shallow copy of `p` with the first seed, one image, its own settings and infotext."""
    variant = copy.copy(p)
    setattr(variant, VARIANT_ATTR, True)
    variant.seed, variant.subseed = p.all_seeds[0], p.all_subseeds[0]
    variant.n_iter, variant.batch_size = 1, 1
    variant.do_not_save_grid = True
    variant.extra_generation_params = dict(p.extra_generation_params)  # not shared with `p` and the others
    setattr(variant, common.OVERRIDES_ATTR, None)
    common.add_overrides(variant, **({"enabled": False} if overrides is None
                                      else {"enabled": True, "compare": False, **overrides}))
    result = processing.process_images(variant)
    return result.images[0], result.infotexts[0]


def run_compare(p, processed, settings: Settings) -> None:
    """Render the other variants after the user's own (the blend) and put the labelled grid first."""
    if not processed.images:
        return
    variants = compare_variants(settings, host.webui_uncond())
    rendered: dict[str, tuple[Image.Image, str]] = {}
    shared.state.job_count += len(variants) - 1
    for variant in variants[:-1]:
        if shared.state.interrupted:
            log.warning("Uncond Lab: comparison interrupted; no grid")
            return
        rendered[variant.label] = _render(p, variant.overrides)
    rendered[variants[-1].label] = (processed.images[0], processed.infotexts[0])

    null_image, zero_image = rendered[variants[1].label][0], rendered[variants[2].label][0]
    null_pixels, zero_pixels = _tensor(null_image), _tensor(zero_image)
    diff = Image.fromarray(difference_map(zero_pixels, null_pixels).numpy())
    diff_label = f"|zero − null| ×4 (mean {mean_abs_difference(zero_pixels, null_pixels):.2f}/255)"

    labels = [v.label for v in variants] + [diff_label]
    tiles = [rendered[v.label][0] for v in variants] + [diff]
    grid = images.image_grid(tiles, rows=1)
    grid = images.draw_grid_annotations(grid, tiles[0].width, tiles[0].height,
                                        [[images.GridAnnotation(label)] for label in labels],
                                        [[images.GridAnnotation("")]])
    info = processed.infotexts[0]
    if shared.opts.grid_save:
        images.save_image(grid, p.outpath_grids, "uncond-lab-compare", p.all_seeds[0], p.all_prompts[0],
                          shared.opts.grid_format, info=info, grid=True, p=p)
    singles = [rendered[v.label] for v in variants[:-1]]
    processed.images[:0] = [grid] + [image for image, _ in singles] + [diff]
    processed.infotexts[:0] = [info] + [text for _, text in singles] + [info]
    processed.index_of_first_image = 1  # everything after the grid is a single picture
