"""TEST-ONLY stand-in for the few torchvision names timm imports.

timm 1.0.x imports torchvision at import time, but no torchvision wheel loads beside the CPU build of
torch these tests pin (its compiled extension needs the CUDA torch libraries). The timm models the
tests build (ViTs) never call into torchvision, so every name here is an inert placeholder that raises
if anything actually uses it. Never used by the package itself.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


class _PlaceholderMeta(type):
    def __getattr__(cls, name: str) -> object:  # enum members such as InterpolationMode.BILINEAR
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _Placeholder(metaclass=_PlaceholderMeta):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"torchvision stand-in: {type(self).__name__} is not available in tests")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _PlaceholderMeta(name, (_Placeholder,), {})
        setattr(self, name, value)
        return value


_MODULES = (
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.misc",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.transforms.v2",
    "torchvision.datasets",
    "torchvision.models",
    "torchvision.models.feature_extraction",
    "torchvision.io",
    "torchvision.utils",
)


def install() -> None:
    """Put the stand-in in ``sys.modules`` unless a real torchvision already imported."""
    if "torchvision" in sys.modules and not isinstance(sys.modules["torchvision"], _StandInModule):
        return
    for name in _MODULES:
        module = _StandInModule(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        module.__path__ = []
        module.__version__ = "0.0.0+standin"
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
