"""Every Uncond Lab setting in one place: defaults, validation, the API dict, the UI's positional args, infotext.

The order of `FIELDS` is the ABI of the AlwaysOn script: the WebUI hands a script its UI values positionally,
so new settings are only ever appended.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from lib_ext.merge.blocks import BlocksError, parse_blocks
from lib_ext.merge.recipe import METHOD_LABELS as MERGE_METHOD_LABELS
from lib_ext.merge.recipe import RATIO_RANGE as MERGE_RATIO_RANGE


class SettingsError(ValueError):
    """A setting is unknown or out of range; the message names it and says what is allowed."""


# --- coercion: API values arrive raw (ints for floats, strings from infotext), so each kind parses leniently
# --- but rejects anything ambiguous (NaN, bools posing as numbers, unknown choices).

def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise SettingsError(f"Uncond Lab: '{name}' must be true or false, got {value!r}")


def _as_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or value is None:
        raise SettingsError(f"Uncond Lab: '{name}' must be a number in [{low:g}, {high:g}], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"Uncond Lab: '{name}' must be a number in [{low:g}, {high:g}], got {value!r}") from None
    if math.isnan(number) or not low <= number <= high:
        raise SettingsError(f"Uncond Lab: '{name}' must be a number in [{low:g}, {high:g}], got {value!r}")
    return number


def _as_choice(name: str, value: Any, choices: Mapping[str, str]) -> str:
    """`choices` maps every accepted spelling (lower-case key or UI label) to the canonical value."""
    if isinstance(value, str):
        canonical = choices.get(value.strip().lower())
        if canonical is not None:
            return canonical
    allowed = ", ".join(sorted(set(choices.values())))
    raise SettingsError(f"Uncond Lab: '{name}' must be one of {allowed}, got {value!r}")


def _setting(default: Any, label: str, parse: Callable[[str, Any], Any], infotext: bool = True,
             feature: str = "uncond"):
    """A dataclass field that also carries its UI label (= infotext key), its parser and the feature it belongs to
    (pasting an uncond key enables the uncond control; an RF or merge key must not)."""
    return dataclasses.field(default=default,
                             metadata={"label": label, "parse": parse, "infotext": infotext, "feature": feature})


def _fraction(name: str, value: Any) -> float:
    return _as_float(name, value, 0.0, 1.0)


def _zero_weight(name: str, value: Any) -> float | None:
    """None (or "default") = the WebUI's own uncond: nothing asked for yet."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default", "none", "null")):
        return None
    try:
        return _fraction(name, value)
    except SettingsError as error:
        raise SettingsError(f"{error} (or null: the WebUI's own uncond)") from None


HIRES_MODES = {"same": "Same as first pass", "own": "Own settings", "off": "Untouched"}
_HIRES_SPELLINGS = {**{k: k for k in HIRES_MODES}, **{label.lower(): k for k, label in HIRES_MODES.items()}}


def _hires_mode(name: str, value: Any) -> str:
    return _as_choice(name, value, _HIRES_SPELLINGS)


# --- merge settings: the partner is named as the WebUI lists checkpoints ("" = no merge); resolving the name to
# --- a file is the host's job (lib_ext/hosts), the ratios use the merge engine's range.

NO_MERGE_SPELLINGS = ("", "none")
TE_FOLLOWS_SPELLINGS = ("", "follow", "follows", "same", "none", "null")
_MAX_CHECKPOINT_NAME = 1000


def _checkpoint_name(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _MAX_CHECKPOINT_NAME or any(ord(ch) < 32 for ch in value):
        raise SettingsError(f"Uncond Lab: '{name}' must be a checkpoint name as the WebUI lists it "
                            f"(or \"\" for none), got {value!r:.200}")
    value = value.strip()
    return "" if value.lower() in NO_MERGE_SPELLINGS else value


def _merge_method(name: str, value: Any) -> str:
    return _as_choice(name, value, {**{m: m for m in MERGE_METHOD_LABELS},
                                    **{label.lower(): m for m, label in MERGE_METHOD_LABELS.items()}})


def _merge_ratio(name: str, value: Any) -> float:
    return _as_float(name, value, *MERGE_RATIO_RANGE)


def _merge_te_ratio(name: str, value: Any) -> float | None:
    """None (or "follow") = the text encoders take the UNet's ratio."""
    if value is None or (isinstance(value, str) and value.strip().lower() in TE_FOLLOWS_SPELLINGS):
        return None
    try:
        return _merge_ratio(name, value)
    except SettingsError:
        low, high = MERGE_RATIO_RANGE
        raise SettingsError(f"Uncond Lab: '{name}' must be a number in [{low:g}, {high:g}] or \"follow\" "
                            f"(= the UNet's ratio), got {value!r}") from None


def _merge_blocks(name: str, value: Any) -> str:
    """Per-block UNet ratios (lib_ext/merge/blocks.py) as their canonical text; "" = none. Whether the value fits
    the model (a vector's length, a slot it lacks) is checked when the merge is resolved."""
    try:
        weights = parse_blocks(value)
    except BlocksError as error:
        raise SettingsError(f"Uncond Lab: '{name}': {error}") from None
    return "" if weights is None else weights.text


@dataclass(frozen=True)
class MergeRequest:
    """What a generation asks to merge into the loaded model (model A), by checkpoint names; see lib_ext.merge."""
    method: str
    model_b: str
    model_c: str | None
    unet_ratio: float
    te_ratio: float | None  # None: follows unet_ratio
    blocks: str | None = None  # per-block UNet ratios (canonical text), None: unet_ratio everywhere


# Rectified flow: None = the model's default (flow exactly when its safetensors metadata declares a flow
# objective, lib_ext.flow.metadata), True = sample as rectified flow, False = the model's own parameterisation.
PREDICTIONS = {None: "Model default", True: "Rectified flow", False: "Model's own (not flow)"}
_PREDICTION_SPELLINGS = {
    **{label.lower(): value for value, label in PREDICTIONS.items()},
    "true": True, "false": False, "null": None, "none": None, "default": None, "model default": None,
    "rf": True, "flow": True, "on": True, "off": False,
}
SHIFT_RANGE = (0.0, 100.0)          # exclusive low: shift 0 collapses every sigma to 0
MULTIPLIER_RANGE = (0.0, 10000.0)   # exclusive low: timestep = sigma · multiplier must stay informative
DEFAULT_MULTIPLIER = 1000.0         # ComfyUI ModelSamplingSD3 / A1111 SD3: timestep = sigma · 1000


def _prediction(name: str, value: Any) -> bool | None:
    """true / false / null, or a UI label (the UI radio hands its label; infotext and API may use either)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _PREDICTION_SPELLINGS:
        return _PREDICTION_SPELLINGS[value.strip().lower()]
    allowed = "true, false, null or one of " + ", ".join(repr(label) for label in PREDICTIONS.values())
    raise SettingsError(f"Uncond Lab: '{name}' must be {allowed}, got {value!r}")


def _positive(name: str, value: Any, high: float) -> float:
    try:
        number = _as_float(name, value, 0.0, high)
    except SettingsError:
        number = 0.0
    if number == 0.0:
        raise SettingsError(f"Uncond Lab: '{name}' must be a number in (0, {high:g}], got {value!r}")
    return number


def _shift(name: str, value: Any) -> float:
    return _positive(name, value, SHIFT_RANGE[1])


def _multiplier(name: str, value: Any) -> float:
    return _positive(name, value, MULTIPLIER_RANGE[1])


@dataclass(frozen=True)
class UncondSchedule:
    """Zero weight `w` inside the window [start, end] (fractions of the denoising, ComfyUI semantics), 0 outside."""
    zero_weight: float = 0.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class Settings:
    # The uncond control's switch (the accordion's checkbox). With it on, `zero_weight` None still leaves the
    # WebUI's own uncond: an API caller asks for a blend by naming a weight; the UI's slider always sends one.
    enabled: bool = _setting(False, "Enable Uncond Lab", _as_bool, infotext=False)
    zero_weight: float | None = _setting(None, "Uncond zero weight", _zero_weight)
    start: float = _setting(0.0, "Uncond start", _fraction)
    end: float = _setting(1.0, "Uncond end", _fraction)
    hr_mode: str = _setting("same", "Uncond hires", _hires_mode)
    hr_zero_weight: float = _setting(0.0, "Uncond hires zero weight", _fraction)
    hr_start: float = _setting(0.0, "Uncond hires start", _fraction)
    hr_end: float = _setting(1.0, "Uncond hires end", _fraction)
    compare: bool = _setting(False, "Compare zero vs null", _as_bool, infotext=False)
    # Rectified flow and the merge are independent of `enabled` (which is the uncond control).
    rf: bool | None = _setting(None, "RF", _prediction, infotext=False, feature="rf")  # infotext: RF keys' presence
    shift: float = _setting(3.0, "RF shift", _shift, feature="rf")
    multiplier: float = _setting(DEFAULT_MULTIPLIER, "RF multiplier", _multiplier, feature="rf")
    # Merge, applied in memory for this generation.
    merge_model: str = _setting("", "Merge model B", _checkpoint_name, feature="merge")
    merge_method: str = _setting("weighted_sum", "Merge method", _merge_method, feature="merge")
    merge_model_c: str = _setting("", "Merge model C", _checkpoint_name, feature="merge")
    merge_ratio: float = _setting(0.5, "Merge ratio", _merge_ratio, feature="merge")
    merge_te_ratio: float | None = _setting(None, "Merge TE ratio", _merge_te_ratio, feature="merge")
    merge_blocks: str = _setting("", "Merge blocks", _merge_blocks, feature="merge")
    # Sample as ComfyUI's KSampler does (lib_ext/comfy_sampling.py), this generation only.
    comfy_sampling: bool = _setting(False, "ComfyUI sampling", _as_bool, feature="sampling")

    def __post_init__(self):
        for prefix in ("", "hr_"):
            start, end = getattr(self, prefix + "start"), getattr(self, prefix + "end")
            if start > end:
                raise SettingsError(f"Uncond Lab: '{prefix}start' ({start:g}) must not be after '{prefix}end' ({end:g})")
        if self.merge_model and self.merge_method == "add_difference" and not self.merge_model_c:
            raise SettingsError("Uncond Lab: 'merge_model_c' is needed for merge_method add_difference "
                                "(A + r·(B − C)); name model C or use weighted_sum")
        if self.merge_blocks and self.merge_te_ratio is not None and parse_blocks(self.merge_blocks).base is not None:
            raise SettingsError(f"Uncond Lab: 'merge_blocks' {self.merge_blocks!r:.200} sets the text encoders' "
                                f"ratio (BASE, a full vector's first value) and 'merge_te_ratio' = "
                                f"{self.merge_te_ratio:g} does too; give one")

    # --- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        """The API form: named settings, defaults for missing keys, an error for unknown keys or bad values."""
        if not isinstance(values, Mapping):
            raise SettingsError(f"Uncond Lab: settings must be a JSON object, got {type(values).__name__}")
        unknown = [key for key in values if key not in FIELD_BY_NAME]
        if unknown:
            raise SettingsError(f"Uncond Lab: unknown setting(s) {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(FIELD_BY_NAME)}")
        parsed = {key: FIELD_BY_NAME[key].metadata["parse"](key, value) for key, value in values.items()}
        return cls(**parsed)

    @classmethod
    def from_script_args(cls, args: Iterable[Any]) -> "Settings":
        """The script's slice of `p.script_args`: either the UI's positional values or one API dict first."""
        args = list(args)
        if args and isinstance(args[0], Mapping):
            return cls.from_dict(args[0])
        return cls.from_dict(dict(zip((f.name for f in FIELDS), args)))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """Settings with some values replaced (X/Y/Z axes), validated like an API dict."""
        return Settings.from_dict({**self.as_dict(), **overrides})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- meaning --------------------------------------------------------------------------------------

    def schedule(self, hires: bool) -> UncondSchedule | None:
        """The uncond schedule for a pass, or None where the WebUI's own uncond is left untouched."""
        if not self.enabled:
            return None
        if not hires or self.hr_mode == "same":
            return None if self.zero_weight is None else UncondSchedule(self.zero_weight, self.start, self.end)
        if self.hr_mode == "own":
            return UncondSchedule(self.hr_zero_weight, self.hr_start, self.hr_end)
        return None

    def merge_request(self) -> MergeRequest | None:
        """The merge this generation asks for, or None. Model C is ignored by a weighted sum (the UI keeps its
        dropdown's value when the method changes)."""
        if not self.merge_model:
            return None
        model_c = self.merge_model_c if self.merge_method == "add_difference" else None
        return MergeRequest(self.merge_method, self.merge_model, model_c, self.merge_ratio, self.merge_te_ratio,
                            self.merge_blocks or None)

    # --- infotext -------------------------------------------------------------------------------------

    def controls_uncond(self, has_hires: bool = False) -> bool:
        """Whether some pass of the generation gets an uncond other than the WebUI's own."""
        return self.schedule(False) is not None or (has_hires and self.schedule(True) is not None)

    def infotext(self, has_hires: bool = False, rf_ran: bool = False) -> dict[str, Any]:
        """Infotext entries: the uncond keys when the uncond control changes some pass (hires keys only when a
        hires pass ran), the RF keys when the generation really samples as rectified flow (the multiplier only
        when it is not the default), "ComfyUI sampling" when it is on."""
        names = []
        if self.controls_uncond(has_hires):
            if self.zero_weight is not None:
                names += ["zero_weight", "start", "end"]
            if has_hires:
                names.append("hr_mode")
                if self.hr_mode == "own":
                    names += ["hr_zero_weight", "hr_start", "hr_end"]
        if rf_ran:
            names.append("shift")
            if self.multiplier != DEFAULT_MULTIPLIER:
                names.append("multiplier")
        if self.comfy_sampling:
            names.append("comfy_sampling")
        return {FIELD_BY_NAME[n].metadata["label"]: getattr(self, n) for n in names}

    def merge_infotext(self) -> dict[str, Any]:
        """Infotext entries of the merge settings; empty without a merge. The host writes the model names as the
        WebUI lists them (with their short hashes) by resolving them first."""
        request = self.merge_request()
        if request is None:
            return {}
        text = {_label("merge_model"): request.model_b, _label("merge_method"): MERGE_METHOD_LABELS[request.method]}
        if request.model_c is not None:
            text[_label("merge_model_c")] = request.model_c
        text[_label("merge_ratio")] = request.unet_ratio
        if request.te_ratio is not None:
            text[_label("merge_te_ratio")] = request.te_ratio
        if request.blocks is not None:
            text[_label("merge_blocks")] = request.blocks
        return text

    @staticmethod
    def infotext_to_ui(params: Mapping[str, Any]) -> dict[str, Any]:
        """Pasted infotext → {setting name: UI value} for the keys present and valid; enabled if an uncond key is.

        Lenient on purpose: a hand-edited or foreign infotext must not break pasting, so a bad value is skipped.
        RF keys are written exactly when RF ran, so pasting sets the prediction explicitly: "Rectified flow" with
        RF keys, "Model's own" without (a model that declares flow would otherwise switch RF on for a picture that
        was made without it, e.g. before RF was independent of the uncond switch).
        """
        found, uncond_found = {}, False
        for field in FIELDS:
            label, parse = field.metadata["label"], field.metadata["parse"]
            if not field.metadata["infotext"] or label not in params:
                continue
            try:
                value = parse(field.name, params[label])
            except SettingsError:
                continue
            found[field.name] = HIRES_MODES[value] if field.name == "hr_mode" else value
            uncond_found = uncond_found or field.metadata["feature"] == "uncond"
        if uncond_found:
            found["enabled"] = True
        found["rf"] = PREDICTIONS["shift" in found or "multiplier" in found]
        found["comfy_sampling"] = found.get("comfy_sampling", False)  # written exactly when it was on
        return found


# The order of the dataclass fields is the order of the UI's controls (see the module docstring).
FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Settings)
FIELD_BY_NAME = {f.name: f for f in FIELDS}


INFOTEXT_KEYS = tuple(f.metadata["label"] for f in FIELDS if f.metadata["infotext"])


def _label(name: str) -> str:
    return FIELD_BY_NAME[name].metadata["label"]
