// Uncond Lab: hover hints for every control of the accordion (txt2img and img2img) and the tab.
(function () {
    "use strict";

    const HINTS = {
        "enabled": "Uncond Lab: choose what the unconditional half of CFG sees. Off = the WebUI's own uncond (SDXL: zeros for an empty negative).",
        "zero_weight": "0 = null uncond: the honest text-encoder output for the negative prompt (te(\"\") when empty, as ComfyUI). 1 = zero uncond (what A1111/reForge feed SDXL for an empty negative). Between: a blend, like ComfyUI's ConditioningAverage.",
        "start": "Where the zero weight starts applying, as a fraction of the model's timestep range (0 = the noisiest end). Same meaning as ComfyUI's ConditioningSetTimestepRange: independent of steps and scheduler.",
        "end": "Where the zero weight stops applying (1 = the clean end). Outside [start, end] the null uncond is used.",
        "hr_mode": "Hires fix pass: reuse the first pass's settings, use its own, or leave the WebUI's uncond untouched.",
        "hr_zero_weight": "Zero weight for the hires fix pass (0 = null uncond, 1 = zero uncond).",
        "hr_start": "Start of the hires pass window (fraction of the model's timestep range; a hires pass only covers its low-noise part).",
        "hr_end": "End of the hires pass window.",
        "compare": "After this generation, also render the WebUI default, the null uncond (w = 0) and the zero uncond (w = 1) with the same seed and settings, and show them in one labelled grid with an amplified |zero - null| difference map.",
        "rf": "How the UNet's output is read. Model default: rectified flow when the checkpoint's metadata declares a flow objective (modelspec.prediction_type = flow), else the model's own. Rectified flow: SD3-style flow matching (x0 = x - sigma·v) for SDXL/SD1 models trained that way. Samplers with variance-exploding noise (SDE, most ancestral, DDIM/PLMS/UniPC) are refused; Euler a runs as the RF ancestral step.",
        "shift": "SD3 time shift s: sigma(t) = s·t / (1 + (s - 1)·t). Larger values spend more steps at high noise. Use the shift the model was trained with (SD3 default 3.0). All sigma schedules follow it; pick 'Rectified Flow' in Schedule type for the plain uniform-in-t schedule.",
        "multiplier": "Advanced: the UNet sees timestep = sigma × multiplier. 1000 as in SD3/ComfyUI; change it only for a model trained with another convention.",
    };

    function applyHints() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, hint] of Object.entries(HINTS)) {
                const ids = [`script_${tab}_uncond_lab_${name}`, `script_${tab}_uncond_lab_${name}-checkbox`];
                for (const id of ids) {
                    const element = gradioApp().getElementById(id);
                    if (element) {
                        element.title = hint;
                        element.querySelectorAll("label, span, input").forEach((child) => { child.title = hint; });
                    }
                }
            }
        }
    }

    onUiLoaded(applyHints);
})();
