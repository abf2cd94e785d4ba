"""ADetailer (Bing-su/adetailer) and Uncond Lab: whether ADetailer's inpainting passes will run Uncond Lab.

ADetailer inpaints each detected face in a generation of its own (`process_images` on a new img2img `p`, marked
`_ad_inner`), with the same script arguments as the picture, but keeps only the AlwaysOn scripts whose file stem
is in its setting "Script names to apply to ADetailer" (`ad_script_names`, while "Apply only selected scripts to
ADetailer" is on, the default). Uncond Lab's file is `scripts/uncond_lab.py`: without `uncond_lab` in that list,
the faces get the WebUI's own uncond and, on a flow model, eps sampling, while the picture's infotext says
otherwise. Host-free: the host hands in ADetailer's script arguments and its two settings (read from ADetailer
26.2, `scripts/!adetailer.py` is_ad_enabled and script_filter, `adetailer/args.py`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

TITLE = "ADetailer"
NAME = TITLE.lower()  # the WebUIs' script.name, the API's key
SCRIPT_STEM = "uncond_lab"  # what ADetailer matches against its list: the script's file name without .py
# ADetailer's default list, used when its setting was never saved.
DEFAULT_SCRIPT_NAMES = "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,wildcard_recursive,wildcards"
SETTING_LABEL = "Settings > ADetailer > Script names to apply to ADetailer"


def is_enabled(args: Sequence[Any]) -> bool:
    """ADetailer's own rule: its first argument (when a bool) switches it, and some tab names a model and is on."""
    tabs = [arg for arg in args if isinstance(arg, Mapping)]
    switched_on = args[0] if args and isinstance(args[0], bool) else True
    return bool(switched_on) and any(tab.get("ad_model", "None") != "None" and tab.get("ad_tab_enable", True)
                                     is not False for tab in tabs)


def runs_uncond_lab(options: Mapping[str, Any]) -> bool:
    """Whether ADetailer's passes keep Uncond Lab's script, given ADetailer's settings (`opts.data`)."""
    if not options.get("ad_only_selected_scripts", True):
        return True
    names = str(options.get("ad_script_names", DEFAULT_SCRIPT_NAMES)).split(",")
    return SCRIPT_STEM in {name.strip() for name in names}


def missing_passes_note(args: Sequence[Any] | None, options: Mapping[str, Any]) -> str | None:
    """The console/infotext note for a generation where ADetailer is on and its passes leave Uncond Lab out."""
    if args is None or not is_enabled(args) or runs_uncond_lab(options):
        return None
    return (f"ADetailer's inpainting passes run without Uncond Lab (its uncond and RF settings do not reach the "
            f"inpainted faces): add '{SCRIPT_STEM}' to {SETTING_LABEL}")
