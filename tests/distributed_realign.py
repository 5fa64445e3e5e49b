"""Run by tests/test_adaptive.py under torchrun: re-alignment with its blocks shared out over the launched processes.

argv: protected model folder, base folder, output file (rank 0 writes the re-aligned tensors), log file (each
process appends the blocks it aligned)."""

import sys

from accelerate import Accelerator
from safetensors.torch import save_file

import hf_mergeguard.attacks.realign as realign
from hf_mergeguard.attacks.realign import realigned_tensors
from hf_mergeguard.io.checkpoint import Checkpoint

if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    aligning = realign.block_alignment

    def logged(protected, base, geometry, layer):
        with open(sys.argv[4], "a") as handle:
            handle.write(f"{accelerator.process_index} {layer}\n")
        return aligning(protected, base, geometry, layer)

    realign.block_alignment = logged
    tensors = dict(realigned_tensors(Checkpoint(sys.argv[1]), Checkpoint(sys.argv[2]), accelerator=accelerator))
    if accelerator.is_main_process:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, sys.argv[3])
    accelerator.end_training()
