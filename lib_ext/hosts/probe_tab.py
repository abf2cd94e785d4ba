"""The "Probe" part of the Uncond Lab tab (gradio, no logic): the probe of the loaded model, its plot, downloads."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import gradio as gr
from modules import shared
from modules.call_queue import queue_lock

from lib_ext.hosts.probe_service import ProbeInterrupted, ProbeService, result_json
from lib_ext.probe import DEFAULT_PROBE_PROMPT, ProbeError, ProbeResult, ProbeSettings

PLOT_METRICS = {"cfg_rel_diff": "CFG prediction, relative change", "x0_rel_diff": "x0 prediction, relative change",
                "guidance_cosine": "cosine of the guidance directions"}


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ProbeError(f"Uncond Lab probe: seeds must be integers separated by commas, got {text!r}") from None


def _plot_rows(result: ProbeResult):
    import pandas as pd  # the WebUIs ship pandas (gradio needs it for its plots)
    return pd.DataFrame([{"log10 sigma": math.log10(sigma), "sigma": sigma, "metric": label, "value": value}
                         for metric, label in PLOT_METRICS.items()
                         for sigma, value in zip(result.sigmas, getattr(result, metric))])


def _summary(result: ProbeResult, cached: bool) -> str:
    embedding = ", ".join(f"{key} {value:.4g}" for key, value in result.embedding.items())
    return (f"**Score {result.score:.4f}** (mean relative change of the CFG prediction when the zero uncond "
            f"replaces te(\"\"); 0 = no dependence)  \n"
            f"Cost: {result.unet_calls} UNet calls, {result.unet_rows} latents{' (cached)' if cached else ''}  \n"
            f"te(\"\"): {embedding}")


def _write_downloads(result: ProbeResult, cached: bool) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="uncond_lab_probe_"))
    (folder / "probe.csv").write_text(result.to_csv())
    (folder / "probe.json").write_text(json.dumps(result_json(result, cached), indent=2))
    return [str(folder / "probe.csv"), str(folder / "probe.json")]


def build_probe_tab(service: ProbeService) -> None:
    defaults = ProbeSettings()
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(DEFAULT_PROBE_PROMPT, label="Probe prompt (gives the guidance direction)", lines=2,
                                elem_id="uncond_lab_probe_prompt")
            seeds = gr.Textbox(", ".join(map(str, defaults.seeds)), label="Seeds", elem_id="uncond_lab_probe_seeds")
            levels = gr.Slider(2, 50, value=defaults.levels, step=1, label="Noise levels",
                               elem_id="uncond_lab_probe_levels")
            cfg_scale = gr.Slider(1.5, 30, value=defaults.cfg_scale, step=0.5, label="CFG scale",
                                  elem_id="uncond_lab_probe_cfg")
            size = gr.Slider(64, 2048, value=defaults.latent_shape[-1] * 8, step=64, label="Size (px, square)",
                             elem_id="uncond_lab_probe_size")
            reference = gr.Radio(["prediction", "zeros"], value=defaults.reference, label="Reference picture",
                                 elem_id="uncond_lab_probe_reference")
            run = gr.Button("Probe the loaded model", variant="primary", elem_id="uncond_lab_probe_run")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="uncond_lab_probe_summary")
            plot = gr.LinePlot(x="log10 sigma", y="value", color="metric", tooltip=["sigma", "metric", "value"],
                               title="Zero vs null uncond over the noise levels", width=600, height=320,
                               elem_id="uncond_lab_probe_plot")
            table = gr.Dataframe(headers=["level", "sigma", "x0_rel_diff", "cfg_rel_diff", "guidance_cosine"],
                                 interactive=False, elem_id="uncond_lab_probe_table")
            files = gr.File(label="CSV / JSON", file_count="multiple", interactive=False,
                            elem_id="uncond_lab_probe_files")
            error = gr.HTML(elem_id="uncond_lab_probe_error")

    def run_probe(prompt_text, seeds_text, level_count, cfg, pixels, reference_name):
        try:
            latent = int(pixels) // 8
            settings = ProbeSettings(prompt=prompt_text, seeds=_seeds(seeds_text), levels=int(level_count),
                                     cfg_scale=float(cfg), latent_shape=(4, latent, latent),
                                     reference=reference_name)
            with queue_lock:  # never beside a generation
                shared.state.begin(job="uncond_lab_probe")
                try:
                    result, cached = service.run(settings)
                finally:
                    shared.state.end()
        except (ProbeError, ProbeInterrupted) as problem:
            return gr.update(), gr.update(), gr.update(), gr.update(), f"<p class='error'>{problem}</p>"
        rows = [[row[c] for c in ("level", "sigma", "x0_rel_diff", "cfg_rel_diff", "guidance_cosine")]
                for row in result.csv_rows()]
        return _summary(result, cached), _plot_rows(result), rows, _write_downloads(result, cached), ""

    run.click(run_probe, inputs=[prompt, seeds, levels, cfg_scale, size, reference],
              outputs=[summary, plot, table, files, error])
