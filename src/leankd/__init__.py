"""leankd: resource-efficient knowledge distillation with an honest quality-vs-cost report."""
from .core.version import __version__ as __version__

from . import losses as losses  # noqa: E402  (leankd.losses.KD(...) + 0.1 * leankd.losses.CE())


def __getattr__(name):
    # the API pulls in torch-heavy modules; import it lazily so `import leankd` stays cheap
    if name in ("distill", "run", "layers", "DistillResult", "RunResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'leankd' has no attribute {name!r}")
