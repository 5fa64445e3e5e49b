"""The trap's per-tensor passes (``protect/trained_change.py``) against the whole-copy reference on pico models."""

import copy

import pytest
import torch
from torch.func import functional_call

from hf_mergeguard.protect.trap import PerturbationSampler, TrapConfig, perturbed_parameters
from hf_mergeguard.testing import base_and_finetune, token_batch
from hf_mergeguard.trained_change import BASE, TrainedModel
from hf_mergeguard.training import enable_checkpointing

DRAWS = [
    {"kind": "scale", "coefficient": 0.4, "weight": 1.0},
    {"kind": "dare", "coefficient": 0.9, "weight": 1.0, "seed": 11, "drop": 0.7},
    {"kind": "ties", "coefficient": 1.1, "weight": 1.0, "seed": 12, "density": 0.2},
    {"kind": "rider", "coefficient": 0.6, "weight": 1.0, "seed": 13, "rider_norm": 1.0},
]


@pytest.fixture
def models(tmp_path):
    built = {}

    def make(model_type="llama", dtype=torch.float32):
        if model_type not in built:
            built[model_type] = base_and_finetune(tmp_path / model_type, model_type)
        tuned, base = built[model_type]
        return tuned.load_model(dtype=dtype), {k: v.to(dtype) for k, v in base.state_dict().items()}

    return make


def _loss(logits):
    return logits.float().pow(2).mean()


@pytest.mark.parametrize("draw", DRAWS, ids=lambda d: d["kind"])
def test_each_pass_is_the_whole_copy_reference(models, draw):
    """Forming the perturbed weights tensor by tensor inside the pass gives the logits and gradients of building the
    whole perturbed copy (the reference the trap used to evaluate), draw for draw."""
    model, base = models()
    reference = copy.deepcopy(model)
    params = dict(reference.named_parameters())
    expected = functional_call(reference, perturbed_parameters(params, base, draw), (token_batch(),)).logits
    _loss(expected).backward()

    trained = TrainedModel(model, base)
    with trained.pass_with(draw):
        got = model(token_batch()).logits
    _loss(got).backward()
    assert torch.allclose(got, expected, atol=1e-5)
    originals = {name: change for name, change in trained.changes.items()}
    for name, param in params.items():
        module_path = name.rpartition(".")[0]
        original = model.get_submodule(module_path).parametrizations[name.rpartition(".")[2]].original
        assert torch.allclose(original.grad, param.grad, atol=1e-6), name
    assert set(originals) == set(params)
    with trained.pass_with(BASE):
        base_logits = model(token_batch()).logits
    reference_base = functional_call(reference, base, (token_batch(),)).logits
    assert torch.allclose(base_logits, reference_base, atol=1e-6)


def test_checkpointing_recomputes_each_pass_with_its_own_draw(models):
    """With gradient checkpointing the backward recomputes each layer: it must use the draw the pass ran with, not the
    last one. The same two-pass loss gives the same gradients with and without checkpointing, and a checkpoint that
    does not restore the draw recomputes another graph (torch refuses it: what the context_fn prevents)."""

    def gradients(checkpointing_kwargs):
        model, base = models()
        trained = TrainedModel(model, base)
        if checkpointing_kwargs is not None:
            enable_checkpointing(model, checkpointing_kwargs(trained))
        model.train()
        with trained.pass_with(DRAWS[1]):
            first = _loss(model(token_batch()).logits)
        with trained.pass_with(DRAWS[3]):
            second = _loss(model(token_batch()).logits)
        (first - 0.5 * second).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    plain = gradients(None)
    restored = gradients(lambda trained: trained.checkpointing_kwargs())
    assert torch.allclose(restored, plain, atol=1e-6)
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        gradients(lambda trained: {"use_reentrant": False})


def test_lora_trains_only_its_factors_and_is_baked_in_once(models):
    """Rank-4 LoRA on bf16 weights: only the float32 factors train, the released weights are the fine-tune's plus
    B·A·α/r rounded once to bf16 (the clean pass computes exactly those), and nothing else changes."""
    model, base = models(dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = TrainedModel(model, base, lora_rank=4)
    lora = [p for p in model.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert trained.trainable_parameters() == 4 * sum(sum(before[n].shape) for n in trained.changes if trained.changes[n].lora_A is not None)
    with torch.no_grad():
        for change in trained.changes.values():
            if change.lora_B is not None:
                change.lora_B.normal_(0, 0.05)
    with trained.pass_with(None):
        clean = model(token_batch()).logits
    trained.release()
    after = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and p.requires_grad for p in after.values())
    assert torch.equal(model(token_batch()).logits, clean)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith("proj.weight") for n in changed)  # attention and MLP projections only
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_tied_embeddings_get_one_change(models):
    """Gemma ties the LM head to the embedding: a perturbed pass perturbs the one shared weight in both places, and
    release keeps the tie."""
    model, base = models("gemma2")
    reference = copy.deepcopy(model)
    draw = DRAWS[0]
    expected = functional_call(reference, perturbed_parameters(dict(reference.named_parameters()), base, draw), (token_batch(),))
    trained = TrainedModel(model, base)
    with torch.no_grad(), trained.pass_with(draw):
        got = model(token_batch()).logits
    assert torch.allclose(got, expected.logits, atol=1e-5)
    trained.release()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_sampler_draws_are_reproducible_across_processes():
    """Every process builds the same sampler from the seed, so the passes agree without communication."""
    one, two = PerturbationSampler(TrapConfig(seed=5)), PerturbationSampler(TrapConfig(seed=5))
    assert [one.draw() for _ in range(20)] == [two.draw() for _ in range(20)]


def test_attack_fine_tunes_update_bf16_weights_through_float32_master_weights(models):
    """bf16 AdamW at an LLM's learning rate leaves most bf16 weights unchanged (each step is below half a bf16 step);
    the attacks train a float32 copy and round once at the end. A LoRA attack trains only its factors."""
    import types

    from hf_mergeguard.attacks.finetuning import attack_learning_rate, fine_tune
    from hf_mergeguard.selftest.config import SelfTestConfig
    from hf_mergeguard.toyworld.skills import make_tokenizer
    from hf_mergeguard.training import Example, TrainingConfig, train_causal_lm

    examples = [Example("count the a in banana\n", f"#### {i}") for i in range(8)]
    config = SelfTestConfig(attack_steps=20, attack_learning_rate=2e-5)
    ctx = types.SimpleNamespace(config=config, seed=0, tokenizer=make_tokenizer(), accelerator=None)

    def changed_share(train):
        model, _ = models(dtype=torch.bfloat16)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train(model)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert after.dtype == torch.bfloat16
        return float((after != before).float().mean())

    pure_bf16 = changed_share(
        lambda m: train_causal_lm(m, ctx.tokenizer, examples, TrainingConfig(steps=20, learning_rate=2e-5, batch_size=8), progress=False)
    )
    master = changed_share(lambda m: fine_tune(m, ctx, examples))
    assert master > 0.3 and master > 5 * pure_bf16, (master, pure_bf16)  # measured: 50.5% against 3.5%
    assert attack_learning_rate(SelfTestConfig(), 600_000) == 3e-4 and attack_learning_rate(SelfTestConfig(), 8_000_000_000) == 1e-5
    lora_ctx = types.SimpleNamespace(
        config=SelfTestConfig(attack_steps=2, attack_lora_rank=4), seed=0, tokenizer=ctx.tokenizer, accelerator=None
    )
    assert attack_learning_rate(lora_ctx.config, 8_000_000_000) == 2e-4
    lora_changed = changed_share(lambda m: fine_tune(m, lora_ctx, examples))
    assert 0 < lora_changed < 1  # the projections moved, the embeddings and norms did not


@pytest.mark.parametrize("reading", ["paper", "paper-mean", "base", "base-mean"])
def test_stage1_lora_l2_gradients_are_the_autograd_ones(models, reading):
    """MergeGuard stage 1 as a LoRA adds the L2 term's gradient to the factors by hand, one layer at a time; it equals
    autograd's gradient of alpha * sum over layers of ||W + s·B·A (− θ_pre)||² (mean for the -mean readings)."""
    from hf_mergeguard.protect.mergeguard.stage1 import add_lora_l2_gradients

    model, base = models()
    trained = TrainedModel(model, {n: p.detach() for n, p in model.named_parameters()}, lora_rank=3)
    with torch.no_grad():
        for change in trained.changes.values():
            if change.lora_B is not None:
                change.lora_B.normal_(0, 0.1)
    targets = base if reading.startswith("base") else None
    add_lora_l2_gradients(trained.changes, reading, 0.01, targets)
    by_hand = {n: (c.lora_A.grad.clone(), c.lora_B.grad.clone()) for n, c in trained.changes.items() if c.lora_A is not None}
    for change in trained.changes.values():
        if change.lora_A is not None:
            change.lora_A.grad = change.lora_B.grad = None
    terms = []
    for name, change in trained.changes.items():
        if change.lora_A is None:
            continue
        theta = change.anchor.float() + change.lora_B @ change.lora_A * change.scaling
        if targets is not None:
            theta = theta - targets[name]
        terms.append(theta.pow(2).mean() if reading.endswith("mean") else theta.pow(2).sum())
    (0.01 * torch.stack(terms).sum()).backward()
    for name, (grad_a, grad_b) in by_hand.items():
        change = trained.changes[name]
        assert torch.allclose(grad_a, change.lora_A.grad, rtol=1e-4, atol=1e-7), name
        assert torch.allclose(grad_b, change.lora_B.grad, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("lora_rank", [0, 3])
def test_graderase_steps_are_orthogonal_to_the_estimated_direction(models, lora_rank):
    """graderase's projection: a step along the projected gradient changes the weights orthogonally to v (to first
    order), for every weight and for a LoRA (where it projects in the factors' space, what fits an 8B on one GPU)."""
    from hf_mergeguard.attacks.graderase import project_off

    model, _ = models()
    generator = torch.Generator().manual_seed(0)
    lora = TrainedModel.lora(model, lora_rank) if lora_rank else None
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if lora is not None:
        with torch.no_grad():
            for change in lora.changes.values():
                if change.lora_B is not None:
                    change.lora_B.normal_(0, 0.1, generator=generator)
    weights = dict(model.named_parameters()) if lora is None else {n: c.anchor for n, c in lora.changes.items() if c.lora_A is not None}
    direction = {n: torch.randn(w.shape, generator=generator) for n, w in weights.items()}
    for param in trainable.values():
        param.grad = torch.randn(param.shape, generator=generator)
    raw = {n: p.grad.clone() for n, p in trainable.items()}

    def effective_weights(step: float, grads: dict) -> dict:
        """W after a step of size ``step`` against ``grads`` (for a LoRA: W0 + s·B·A of the stepped factors)."""
        if lora is None:
            return {n: p.detach().double() - step * grads[n].double() for n, p in trainable.items()}
        moved = {n: p.detach().double() - step * grads[n].double() for n, p in trainable.items()}
        owners = {id(p): n for n, p in trainable.items()}
        out = {}
        for name, change in lora.changes.items():
            if change.lora_A is not None:
                a, b = moved[owners[id(change.lora_A)]], moved[owners[id(change.lora_B)]]
                out[name] = change.anchor.double() + b @ a * change.scaling
        return out

    def along_v(grads: dict) -> float:
        """d/dstep of ⟨v, W(step)⟩ at 0, by a central difference (exact for the quadratic LoRA map too)."""
        eps = 1e-3
        plus, minus = effective_weights(eps, grads), effective_weights(-eps, grads)
        return sum(float(((plus[n] - minus[n]) * direction[n].double()).sum()) for n in direction) / (2 * eps)

    project_off(direction)(model, lora)
    projected = {n: p.grad for n, p in trainable.items()}
    before, after = abs(along_v(raw)), abs(along_v(projected))
    # What is left is the float32 rounding of the projected gradient (measured: 2e-4 of it for the LoRA, 2e-8 for every weight).
    assert before > 1e-2 and after < 1e-3 * before, (before, after)


def test_graderase_runs_on_a_lora(models):
    """With --attack-lora-rank, graderase estimates its direction with a LoRA (only the decoder's linear weights move)
    and repairs with a LoRA, the gradients projected in the factors' space: the merge's projections move, nothing
    else does."""
    import types

    from hf_mergeguard.attacks.finetuning import fine_tune
    from hf_mergeguard.attacks.graderase import estimated_defense_direction, project_off
    from hf_mergeguard.selftest.config import SelfTestConfig
    from hf_mergeguard.toyworld.skills import make_tokenizer
    from hf_mergeguard.trained_change import _lora_targets
    from hf_mergeguard.training import Example

    examples = [Example("count the a in banana\n", f"#### {i}") for i in range(8)]
    ctx = types.SimpleNamespace(
        config=SelfTestConfig(attack_steps=3, attack_lora_rank=4),
        seed=0,
        tokenizer=make_tokenizer(),
        accelerator=None,
        device="cpu",
        base=types.SimpleNamespace(load_model=lambda device: models()[0]),
    )
    direction = estimated_defense_direction(ctx, examples)
    merge, _ = models()
    assert set(direction) == _lora_targets(merge)
    before = {n: p.detach().clone() for n, p in merge.named_parameters()}
    fine_tune(merge, ctx, examples, on_gradients=project_off(direction))
    moved = {n for n, p in merge.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == set(direction)
