"""The one error this package raises for input it cannot read."""


class ComfyGraphError(ValueError):
    """Not a ComfyUI graph, or one with nothing to import (no sampler); the message names what is wrong."""
