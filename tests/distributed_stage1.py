"""Run by tests/test_mergeguard.py under torchrun: a few steps of MergeGuard stage 1, and of the merge trap (every weight,
and a LoRA with checkpointing), over the launched processes: replicated (DDP), then sharded (FSDP2, --fsdp)."""

import sys

import torch
from accelerate import Accelerator

from hf_mergeguard.data import load_train_examples
from hf_mergeguard.evaluation import load_tokenizer
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.protect.mergeguard.stage1 import Stage1Config, density_aware_finetune
from hf_mergeguard.protect.trap import TrapConfig, merge_trap_finetune
from hf_mergeguard.toyworld import build_toy_world
from hf_mergeguard.training import full_state_dict


def stage1_weights(world, accelerator):
    model = Checkpoint(world.model("count")).load_model(dtype=torch.float32)
    examples = load_train_examples(str(world.data("count", "train")))[:64]
    config = Stage1Config(steps=4, batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-3, alpha=0.01)
    result = density_aware_finetune(model, load_tokenizer(world.base), examples, config, accelerator=accelerator, progress=False)
    return {k: v.detach().cpu() for k, v in full_state_dict(model).items()}, result  # sharded (--fsdp): on rank 0


def trap_weights(world, accelerator, **options):
    """A few trap steps (``options``: e.g. the LLM path, lora_rank and gradient_checkpointing)."""
    model = Checkpoint(world.model("count")).load_model(dtype=torch.float32)
    examples = load_train_examples(str(world.data("count", "train")))[:64]
    config = TrapConfig(steps=3, batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-3, **options)
    result = merge_trap_finetune(
        model,
        load_tokenizer(world.base),
        examples,
        config,
        base_state=Checkpoint(world.base).state_dict(),
        accelerator=accelerator,
        progress=False,
    )
    return {k: v.detach().cpu() for k, v in full_state_dict(model).items()}, result  # sharded (--fsdp): on rank 0


LORA = {"lora_rank": 4, "gradient_checkpointing": True}

if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    world = build_toy_world(progress=False)
    weights, result = stage1_weights(world, accelerator)
    trap, trap_result = trap_weights(world, accelerator)
    lora, lora_result = trap_weights(world, accelerator, **LORA)
    accelerator.shard_weights = True  # --fsdp: stage 1 with its weights sharded over the processes (FSDP2)
    sharded, sharded_result = stage1_weights(world, accelerator)
    sharded_trap, sharded_trap_result = trap_weights(world, accelerator)  # --fsdp --method trap
    sharded_lora, sharded_lora_result = trap_weights(world, accelerator, **LORA)
    if accelerator.is_main_process:
        torch.save(
            {
                "weights": weights,
                "losses": result.losses,
                "logs": result.logs,
                "processes": accelerator.num_processes,
                "trap_weights": trap,
                "trap_losses": trap_result.losses,
                "trap_logs": trap_result.logs,
                "lora_weights": lora,
                "lora_losses": lora_result.losses,
                "sharded_weights": sharded,
                "sharded_losses": sharded_result.losses,
                "sharded_logs": sharded_result.logs,
                "sharded_trap_weights": sharded_trap,
                "sharded_trap_losses": sharded_trap_result.losses,
                "sharded_lora_weights": sharded_lora,
                "sharded_lora_losses": sharded_lora_result.losses,
            },
            sys.argv[1],
        )
    accelerator.end_training()  # destroys the process group: gloo threads left to interpreter exit can abort it
