"""``python -m services.trainer`` with accelerate's FSDP2 allowed on CPU, for tests under torchrun.

accelerate turns FSDP on for GPU-family process groups only: with gloo on CPU it silently trains
DDP. This entry lifts that one refusal, so the sharded paths (real DTensor shards, gloo
collectives, sharded checkpoints) run in CI without a GPU; everything else is the product's.
"""

from __future__ import annotations

import sys

import accelerate.state
from accelerate.utils import DistributedType

from services.trainer.cli import main

_state_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs) -> None:
    _state_init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        accelerate.state.PartialState._shared_state["distributed_type"] = self.distributed_type


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
