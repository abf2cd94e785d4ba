"""The only package that imports WebUI code.

`common` holds what A1111 1.10 and reForge share; `a1111` and `reforge` hold what differs, with the same
function names, so reading the two files side by side shows every difference. `host` is the one for the
running WebUI, chosen at import: A1111 keeps an extension's folder on `sys.path` only while its scripts are
imported, so nothing here may be imported lazily later.
"""
import importlib.util

IS_REFORGE = importlib.util.find_spec("modules_forge") is not None

if IS_REFORGE:
    from lib_ext.hosts import reforge as host
else:
    from lib_ext.hosts import a1111 as host

from lib_ext.hosts import common, ui  # noqa: E402  (after `host`: common uses it)

__all__ = ["IS_REFORGE", "host", "common", "ui"]
