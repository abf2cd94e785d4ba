"""The only package that imports WebUI code.

`common` holds what the supported WebUIs share; `a1111`, `reforge` and `forge_neo` hold what differs, with the
same names, so reading the files side by side shows every difference (`forge_patches` is the weight-patch merge
that reForge and Forge Neo share). `host` is the one for the running WebUI, chosen at import by what the WebUI
says it is (`detect.py`): A1111 keeps an extension's folder on `sys.path` only while its scripts are imported,
so nothing here may be imported lazily later. On a WebUI Uncond Lab does not support, `host` is None and the
scripts define nothing (`SUPPORTED` is False) but one console line saying why.
"""
from lib_ext.hosts import detect

HOST = detect.detect()
SUPPORTED = HOST.supported
IS_REFORGE = HOST.kind == detect.REFORGE
IS_FORGE_NEO = HOST.kind == detect.FORGE_NEO

if HOST.kind == detect.REFORGE:
    from lib_ext.hosts import reforge as host
elif HOST.kind == detect.FORGE_NEO:
    from lib_ext.hosts import forge_neo as host
elif HOST.kind == detect.A1111:
    from lib_ext.hosts import a1111 as host
else:
    host = None  # scripts/uncond_lab.py says why, once, in the console

__all__ = ["HOST", "SUPPORTED", "IS_REFORGE", "IS_FORGE_NEO", "host"]
