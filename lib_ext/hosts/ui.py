"""Gradio controls of the AlwaysOn accordion (no logic). Their order is the order of `Settings` fields."""
from __future__ import annotations

import gradio as gr
from modules import sd_models, ui_common
from modules.ui_components import FormRow, InputAccordion

from lib_ext.merge.blocks import PRESETS as BLOCK_PRESETS
from lib_ext.settings import FIELD_BY_NAME, HIRES_MODES, MERGE_METHOD_LABELS, PREDICTIONS, Settings

NO_MERGE = "None"
TE_FOLLOWS = "follow"
TE_RATIO_CHOICES = [TE_FOLLOWS, "0", "0.25", "0.5", "0.75", "1"]
UI_ZERO_WEIGHT = 0.0  # the slider's start (null uncond); the setting's own default, None, has no slider value


def checkpoint_choices() -> list[str]:
    return [NO_MERGE, *sd_models.checkpoint_tiles()]


def merge_ui_value(name: str, value):
    """A merge setting as its control shows it (the inverse of the settings' parsers)."""
    if name in ("merge_model", "merge_model_c"):
        return value or NO_MERGE
    if name == "merge_method":
        return MERGE_METHOD_LABELS[value]
    if name == "merge_te_ratio":
        return TE_FOLLOWS if value is None else f"{value:g}"
    if name == "merge_blocks":
        return value or ""
    return value


def _label(name: str) -> str:
    return FIELD_BY_NAME[name].metadata["label"]


class UncondAccordion:
    """Builds the controls for one tab. Keeps no component on the Script: the API calls `ui()` again inside a
    throwaway Blocks just to read defaults, which must not overwrite the real UI's components."""

    def __init__(self, elem_id):
        self.elem_id = elem_id  # the Script's elem_id(), so ids are script_txt2img_uncond_lab_<name>
        self.controls: dict[str, gr.components.Component] = {}

    def build(self) -> list:
        defaults = Settings()
        with InputAccordion(False, label="Uncond Lab", elem_id=self.elem_id("enabled")) as enabled:
            self.controls["enabled"] = enabled
            with gr.Row():  # the slider always sends a weight: switching the control on asks for a blend
                self._slider("zero_weight", "Zero weight", UI_ZERO_WEIGHT)
            with gr.Row():
                self._slider("start", "Start", defaults.start)
                self._slider("end", "End", defaults.end)
            with gr.Accordion("Hires fix pass", open=False, elem_id=self.elem_id("hires")):
                hr_mode = gr.Radio(list(HIRES_MODES.values()), value=HIRES_MODES[defaults.hr_mode],
                                   label="Hires pass uncond", elem_id=self.elem_id("hr_mode"))
                self.controls["hr_mode"] = hr_mode
                with gr.Row(visible=defaults.hr_mode == "own") as own_row:
                    self._slider("hr_zero_weight", "Hires zero weight", defaults.hr_zero_weight)
                    self._slider("hr_start", "Hires start", defaults.hr_start)
                    self._slider("hr_end", "Hires end", defaults.hr_end)
                hr_mode.change(lambda mode: gr.update(visible=mode == HIRES_MODES["own"]), hr_mode, own_row,
                               show_progress=False)
            self.controls["compare"] = gr.Checkbox(
                defaults.compare, label="Compare zero vs null (renders the WebUI default, null and zero too)",
                elem_id=self.elem_id("compare"))
        self._rf_section(defaults)
        self._merge_section(defaults)
        self.controls["comfy_sampling"] = gr.Checkbox(
            defaults.comfy_sampling, label="Uncond Lab: sample as ComfyUI's KSampler (SGM noise multiplier, "
            "timestep quantization, CPU noise; this generation only)", elem_id=self.elem_id("comfy_sampling"))
        return [self.controls[name] for name in FIELD_BY_NAME]

    def _rf_section(self, defaults: Settings) -> None:
        """Its own accordion: rectified flow does not depend on the uncond switch above."""
        with gr.Accordion("Uncond Lab: rectified flow", open=False, elem_id=self.elem_id("rf_group")):
            self.controls["rf"] = gr.Radio(list(PREDICTIONS.values()), value=PREDICTIONS[defaults.rf],
                                           label="Prediction", elem_id=self.elem_id("rf"))
            with gr.Row():
                self.controls["shift"] = gr.Number(value=defaults.shift, label="Shift", step=0.1,
                                                   elem_id=self.elem_id("shift"))
                with gr.Accordion("Advanced", open=False, elem_id=self.elem_id("rf_advanced")):
                    self.controls["multiplier"] = gr.Number(value=defaults.multiplier, label="Timestep multiplier",
                                                            step=1, elem_id=self.elem_id("multiplier"))

    def _merge_section(self, defaults: Settings) -> None:
        """Its own accordion: the merge does not depend on the uncond switch above (an InputAccordion opens only
        when its checkbox is ticked)."""
        with gr.Accordion("Uncond Lab: merge (this generation only)", open=False, elem_id=self.elem_id("merge")):
            with FormRow():
                model = gr.Dropdown(checkpoint_choices(), value=NO_MERGE, label="Merge partner B",
                                    allow_custom_value=True, elem_id=self.elem_id("merge_model"))
                ui_common.create_refresh_button(model, sd_models.list_models,
                                                lambda: {"choices": checkpoint_choices()},
                                                self.elem_id("merge_model_refresh"))
                method = gr.Radio(list(MERGE_METHOD_LABELS.values()),
                                  value=MERGE_METHOD_LABELS[defaults.merge_method], label="Method",
                                  elem_id=self.elem_id("merge_method"))
            with FormRow():
                ratio = gr.Slider(0.0, 1.0, value=defaults.merge_ratio, step=0.01, label="UNet ratio",
                                  elem_id=self.elem_id("merge_ratio"))
                te_ratio = gr.Dropdown(TE_RATIO_CHOICES, value=TE_FOLLOWS, label="Text-encoder ratio",
                                       allow_custom_value=True, elem_id=self.elem_id("merge_te_ratio"))
            model_c = gr.Dropdown(checkpoint_choices(), value=NO_MERGE, label="Model C (add difference: A + r·(B − C))",
                                  allow_custom_value=True, visible=defaults.merge_method == "add_difference",
                                  elem_id=self.elem_id("merge_model_c"))
            method.change(lambda m: gr.update(visible=m == MERGE_METHOD_LABELS["add_difference"]), method, model_c,
                          show_progress=False)
            with FormRow():
                blocks = gr.Textbox(defaults.merge_blocks, label="Block weights (a supermerger vector, "
                                    "IN00-IN05=1, M00=0.5, OUT=0, or a preset; empty: the UNet ratio everywhere)",
                                    elem_id=self.elem_id("merge_blocks"), scale=4)
                preset = gr.Dropdown(["", *BLOCK_PRESETS], value="", label="Block presets",
                                     elem_id=self.elem_id("merge_blocks_preset"), scale=1)
            preset.change(lambda name: gr.update() if not name else gr.update(value="" if name == "flat" else name),
                          preset, blocks, show_progress=False)
        self.controls.update(merge_model=model, merge_method=method, merge_model_c=model_c, merge_ratio=ratio,
                             merge_te_ratio=te_ratio, merge_blocks=blocks)

    def _slider(self, name: str, label: str, value: float) -> None:
        self.controls[name] = gr.Slider(0.0, 1.0, value=value, step=0.01, label=label, elem_id=self.elem_id(name))

    def infotext_fields(self) -> list:
        """Paste support: each control reads its own key; the accordion opens when any of ours is present."""
        def merge_value(params, name):
            """An infotext without a merge switches the merge off; one with a merge sets every merge control
            (a missing text-encoder ratio means it followed the UNet's)."""
            values = Settings.infotext_to_ui(params)
            if "merge_model" not in values:
                return merge_ui_value(name, "") if name == "merge_model" else None
            if name in ("merge_model_c", "merge_te_ratio", "merge_blocks"):
                return merge_ui_value(name, values.get(name))
            return merge_ui_value(name, values[name]) if name in values else None

        fields = [(self.controls["enabled"], lambda params: Settings.infotext_to_ui(params).get("enabled", False))]
        for name, control in self.controls.items():
            if name == "enabled":
                continue
            if FIELD_BY_NAME[name].metadata["feature"] == "merge":
                fields.append((control, lambda params, name=name: merge_value(params, name)))
            else:
                fields.append((control, lambda params, name=name: Settings.infotext_to_ui(params).get(name)))
        return fields

    @staticmethod
    def paste_field_names() -> list[str]:
        return [_label(name) for name in FIELD_BY_NAME if FIELD_BY_NAME[name].metadata["infotext"]]
