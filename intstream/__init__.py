"""intstream: huge signals -> implicit neural representations, trained with INT, out of core.

The stages as Python functions (the CLI's commands, same options)::

    import intstream
    store = intstream.ingest("photo.png", "photo.zarr")["store"]
    run = intstream.fit(store, "photo.run", steps=2000, width=64)
    weights = intstream.export_weights(run["run_dir"], "photo.safetensors", dtype="int8")["weights"]
    print(intstream.evaluate(weights)["metrics"])
    crop = intstream.decode(weights, shape=(1024, 1536), region=(slice(0, 256), slice(0, 256)))

``import intstream`` does not import torch; each stage imports it when it runs.
The functions ``ingest``, ``fit``, ``evaluate`` and ``decode`` share their names with the
stage modules: import from those with ``from intstream.fit import FitConfig``.
"""

from importlib.metadata import PackageNotFoundError as _NotFound, version as _version

# The stage modules first, so that the functions bound below are what the package's
# names mean (a submodule's first import sets its name on the package).
from . import decode as _decode_module, evaluate as _evaluate_module, fit as _fit_module  # noqa: F401
from . import ingest as _ingest_module  # noqa: F401
from .api import decode, fit, load_weights
from .errors import InputError
from .evaluate import evaluate
from .export import Weights, export_weights
from .fit import FitConfig
from .ingest import ingest
from .normalize import Normalisation
from .store import SignalStore, create_store, open_store

try:
    __version__ = _version("intstream")
except _NotFound:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "ingest", "fit", "export_weights", "evaluate", "decode", "load_weights",
    "FitConfig", "Weights", "InputError", "Normalisation", "SignalStore", "create_store", "open_store",
]
