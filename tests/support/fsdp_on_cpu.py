"""Let Accelerate take an FSDP plugin on CPU processes, as it does on GPUs (test-only).

Accelerate 1.x sets `distributed_type = FSDP` only for accelerator devices; on CPU processes an FSDP
request becomes plain data parallelism (which SAMTrainer refuses). After `force()`, Accelerate's
state takes the plugin on MULTI_CPU too; from there everything is Accelerate's and the Trainer's own
code (`fsdp2_prepare_model` calls `fully_shard` on a CPU device mesh over gloo, checkpoints are
Accelerate's sharded state dicts). `sitecustomize()` writes a `sitecustomize.py` that calls
`force()` at start-up in every process a test launches (`samtune train --nproc 2` re-launches).
"""

from __future__ import annotations

from pathlib import Path


def force() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    init = accelerate.state.AcceleratorState.__init__
    if getattr(init, "_fsdp_on_cpu", False):
        return

    def fsdp_on_cpu(self, *a, fsdp_plugin=None, **kw):
        init(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    fsdp_on_cpu._fsdp_on_cpu = True  # type: ignore[attr-defined]
    accelerate.state.AcceleratorState.__init__ = fsdp_on_cpu


def sitecustomize(folder: Path) -> Path:
    """A folder holding a sitecustomize.py that calls `force()`: put it first on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(here)!r})\nimport fsdp_on_cpu\nfsdp_on_cpu.force()\n"
    )
    return folder
