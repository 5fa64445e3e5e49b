"""``layerwise``: a merge coefficient per block, learned on the attacker's examples (AdaMerging's layer-wise task
arithmetic, with the defender's examples' loss in place of entropy).

A defense may hide its damage in a few blocks (a trap's directions, a negation of chosen layers): one coefficient
for the whole model cannot leave those out, one per block can. The merge is

    theta(lambda) = theta_pre + tau_fr + sum_b lambda_b * tau_def[b]

with tau_def = theta_hat - theta_pre cut into the decoder blocks and one group for everything else (embeddings,
norms, lm_head), the free-rider's own task vector at weight 1 (he keeps his skill), and every lambda_b starting at 1
(the plain task-arithmetic merge) and kept in [0, 2]. The gradient of the examples' loss in lambda_b is
<dL/dW, tau_def[W]> summed over the block's tensors, so the model trains as it is (no functional rebuild): each step
is one forward and backward pass of the merged model, then its weights are rewritten from the new coefficients.
The free-rider's data is not needed: his coefficient stays 1, and the result's free-rider score says what it cost.
"""

from __future__ import annotations

import torch

from ..architectures import split_layer_name
from ..io.hf_models import model_from_state_dict
from ..losses import mean_token_loss
from ..memory import gradient_pass_memory
from ..report.schema import AttackResult
from ..training import collate, enable_checkpointing, encode_examples, padding_id
from .base import AttackContext, AttackSpec, register_attack
from .finetuning import attacker_examples, fine_tuning_work

LEARNING_RATE = 0.05  # Adam on the coefficients: 30 steps can move one from 1 to either bound
BOUNDS = (0.0, 2.0)
REST = "rest"  # the coefficient of every tensor outside the decoder blocks


def checkpointed(parameters: int) -> bool:
    """Whether the gradient passes recompute activations: for an LLM (100 M parameters or more)."""
    return parameters >= 100_000_000


def block_of(name: str) -> str:
    layer, _ = split_layer_name(name)
    return REST if layer is None else str(layer)


def run_layerwise(ctx: AttackContext) -> AttackResult:
    examples = attacker_examples(ctx, "The layerwise attack")
    freerider = _freerider_of_best_task_arithmetic(ctx)
    rider = ctx.freeriders[freerider].model
    device = ctx.device
    stored = next(iter(ctx.protected.layout.values())).dtype
    # Two model-sized sets besides the model and its gradients, all in the stored dtype (bf16 for an LLM: the weights
    # are rewritten from them each step, so their rounding does not add up): the fixed part (base + the free-rider's
    # vector) and the defender's vector.
    fixed, tau = {}, {}
    for name, released in ctx.protected.iter_tensors():
        anchor = ctx.base.get(name).to(device, torch.float32)
        tau[name] = (released.to(device, torch.float32) - anchor).to(stored)
        fixed[name] = rider.get(name).to(device, stored)
    blocks = sorted({block_of(n) for n in tau}, key=lambda b: (b == REST, int(b) if b != REST else 0))
    coefficients = torch.ones(len(blocks), dtype=torch.float64, requires_grad=True)
    index = {b: i for i, b in enumerate(blocks)}
    optimizer = torch.optim.Adam([coefficients], lr=LEARNING_RATE)

    start = {n: (fixed[n].float() + tau[n].float()).to(stored) for n in tau}
    model = model_from_state_dict(ctx.protected.config, start, dtype=stored, device=device)
    params = dict(model.named_parameters())  # a tied lm_head is the embedding's parameter: one entry
    model.requires_grad_(True)
    checkpointing = checkpointed(sum(p.numel() for p in params.values()))
    if checkpointing:  # an LLM: recompute activations (an 8B fits 80 GB)
        enable_checkpointing(model, {"use_reentrant": False})
    model.train()  # (no dropout in these models; checkpointing acts in training mode only)
    encoded = encode_examples(ctx.tokenizer, examples, max_length=256)
    pad = padding_id(ctx.tokenizer)
    batch_size = min(16, len(encoded))
    generator = torch.Generator().manual_seed(ctx.seed)
    losses = []
    for _ in range(ctx.config.attack_steps):
        picked = torch.randperm(len(encoded), generator=generator)[:batch_size].tolist()
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in picked], pad).items()}
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = mean_token_loss(logits, batch["labels"])
        loss.backward()
        losses.append(float(loss.detach()))
        gradient = torch.zeros_like(coefficients)
        with torch.no_grad():
            for name, param in params.items():
                if param.grad is not None and name in tau:
                    gradient[index[block_of(name)]] += float((param.grad.double() * tau[name].double()).sum())
        coefficients.grad = gradient
        optimizer.step()
        with torch.no_grad():
            coefficients.clamp_(*BOUNDS)
            for name, param in params.items():
                if name in tau:
                    param.copy_(fixed[name].float() + float(coefficients[index[block_of(name)]]) * tau[name].float())
    del fixed, tau
    model.eval()
    if checkpointing:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    model.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    scored = ctx.scored(ctx.score_model(model), freerider)
    learned = {block: round(float(c), 4) for block, c in zip(blocks, coefficients.detach())}
    details = {
        "coefficients": learned,
        "freerider": freerider,
        "examples": len(examples),
        "steps": ctx.config.attack_steps,
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
    }
    return AttackResult("layerwise", scored, credited=scored.defender_kept, details=details)


def _freerider_of_best_task_arithmetic(ctx: AttackContext) -> int:
    """The free-rider of the self-test's best task-arithmetic merge of the protected model (the first one otherwise)."""
    best = ctx.report.best.get("task_arithmetic", {}).get("protected")
    return best.freerider if best is not None else 0


def _describe(result: AttackResult) -> str:
    c = result.details["coefficients"]
    low = min(c, key=c.get)
    return (
        f"learned a task-arithmetic coefficient per block (AdaMerging-style) on {result.details['examples']} defender "
        f"examples for {result.details['steps']} steps, the free-rider's at 1: from {min(c.values()):.2f} "
        f"(block {low}) to {max(c.values()):.2f}"
    )


register_attack(
    AttackSpec(
        name="layerwise",
        run=run_layerwise,
        rank=18,
        describe=_describe,
        needs_examples=True,
        held_model_copies=2,  # the fixed part and the defender's vector
        memory=lambda config, shape, stored_bytes: gradient_pass_memory(
            shape,
            stored_bytes=stored_bytes,
            tokens=16 * 256,
            extra_copies=2,
            checkpointing=checkpointed(shape.parameters),
            stage="the layerwise attack",
        ),
        fits_with="--attacks without layerwise (it takes every weight's gradient), or a GPU with more memory",
        work=lambda config, size: [fine_tuning_work("the layerwise attack", config, searched=False)],
    )
)
