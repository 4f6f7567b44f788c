"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for `train.fsdp: true` under torchrun: the student's parameters,
gradients and optimizer state, and the frozen live teacher's parameters, are cut into one share per process instead
of being held whole by every rank (DDP). Each transformer block is its own unit (gathered just before it runs,
freed just after), then the root holds what is left (embeddings, final norm, head): the model, or the one module
inside it that owns all of its parameters (`root`).

Why in-place and undone afterwards: the pipeline hands the loop a model and, once training ends, measures,
compresses and reports that same object on rank 0 alone (`dist.alone`). So `unshard` gathers every parameter back
into a plain full tensor and takes FSDP's hooks and class off again: after `fit` the model is an ordinary module
that runs without collectives. The checkpoint helpers gather the FULL state dicts (`get_model_state_dict` /
`get_optimizer_state_dict` with `full_state_dict=True, cpu_offload=True`) and write them in the very format a
one-process or DDP run writes (optimizer state keyed by parameter index), so a one-process `leankd report` or
`compress` reuses an FSDP run, and `--resume` under FSDP loads them back with the matching `set_*` calls.

Gradient averaging: FSDP2 reduce-scatters gradients with an average over the ranks, as DDP all-reduces with one, so
the loop's `_weight` (a share's loss times the world size over its share of the batch) is right for both; tested
against one process in tests/test_fsdp.py rather than assumed.

What this does not do: build models on the meta device. Every rank constructs (or loads) the whole model first and
shards it then, so FSDP here cuts the memory of training (gradients, optimizer state, the teacher's weights while
the student trains), not the peak while a model is built.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..core import dist


def _api():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return FSDPModule, fully_shard


def block_classes(model: nn.Module) -> set[str]:
    """Names of the module classes that are each their own FSDP unit: a Hugging Face model's `_no_split_modules`
    (its transformer block, e.g. GPTBigCodeBlock, LlamaDecoderLayer) wherever in `model` a submodule declares them
    (leankd's CausalLM wraps the HF model in `.hf`)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def units(model: nn.Module) -> list[nn.Module]:
    """The submodules sharded one by one before the root, in order: the modules of the `block_classes`; for a model
    that declares none, the entries of every `nn.ModuleList` with more than one entry (where models keep their
    repeated blocks). Nested candidates are left to their outermost one. Empty: the root alone is one unit."""
    names = block_classes(model)
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    else:
        found = [child for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1 for child in m]
    outer: list[nn.Module] = []
    inside: set[int] = set()
    for m in found:  # model.modules() is depth-first: an enclosing unit comes before what it encloses
        if id(m) in inside:
            continue
        outer.append(m)
        inside.update(id(sub) for sub in m.modules())
    return [m for m in outer if any(True for _ in m.parameters())]


def root(model: nn.Module) -> nn.Module:
    """The module sharded last, holding what the blocks leave: `model`, or the module inside it that owns every
    parameter when `model` only wraps it (leankd's CausalLM around its `.hf` model). Why not the wrapper: code that
    calls the inner module directly (KV-cache generation calls `model.hf`, e.g. on-policy sampling while the student
    trains) must still pass through FSDP's hooks, which gather the embeddings and the head before they are used."""
    while not any(True for _ in model.parameters(recurse=False)):
        owners = [c for c in model.children() if any(True for _ in c.parameters())]
        if len(owners) != 1:
            break
        model = owners[0]
    return model


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.world_size(),))


def shard(model: nn.Module, device: torch.device, *, frozen: bool = False) -> int:
    """Shard `model` in place over every rank: each unit, then the root. `frozen` (the teacher): every unit frees its
    gathered weights right after its forward (`reshard_after_forward=True`, the root too), since no backward will
    want them back. Returns the number of units (the root included)."""
    _, fully_shard = _api()
    mesh = _mesh(device)
    blocks = units(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # the student's root keeps its weights gathered between forward and backward (FSDP's default for the root):
    # the head and embeddings are needed again at once; a frozen teacher has no backward, so it gives them back
    fully_shard(root(model), mesh=mesh, reshard_after_forward=True if frozen else None)
    return len(blocks) + 1


def is_sharded(model: nn.Module) -> bool:
    FSDPModule, _ = _api()
    return any(isinstance(m, FSDPModule) for m in model.modules())


def unshard(model: nn.Module) -> None:
    """Every parameter of a `shard`ed model back as a plain full tensor, on every rank (collectives: all ranks call
    this together), and FSDP's hooks, class and bookkeeping removed, so the model runs alone in one process again.
    Tied parameters stay tied (one gathered tensor per sharded parameter).

    FSDP2 has no public inverse of `fully_shard`, so this takes off what it put on by its internals (torch 2.14:
    the forward hooks, the state-dict hooks of the modules owning parameters, the class swap, the state registry);
    tests/test_fsdp.py runs the gathered model alone and loads a state dict into it, so a torch that moved them fails
    there, not in a user's run."""
    import importlib

    from torch.distributed._composable_state import _module_state_mapping
    from torch.distributed.tensor import DTensor

    FSDPModule, fully_shard = _api()
    contract = importlib.import_module("torch.distributed._composable.contract")  # the module, not its function

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        return
    for m in sharded:
        m.reshard()  # a root that kept its weights gathered after the last forward registers its shards again
    gathered: dict[int, nn.Parameter] = {}
    for m in model.modules():  # the same order on every rank: the all-gathers pair up
        for name, p in list(m._parameters.items()):
            if isinstance(p, DTensor):
                if id(p) not in gathered:
                    full = p.full_tensor().detach().clone()
                    gathered[id(p)] = nn.Parameter(full, requires_grad=p.requires_grad)
                m._parameters[name] = gathered[id(p)]
    for m in sharded:
        state = fully_shard.state(m)
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for group in state._fsdp_param_groups:  # the hooks FSDP put on the modules that own its parameters
            for handles in (group._module_to_pre_save_state_dict_hook_handle,
                            group._module_to_pre_load_state_dict_hook_handle):
                for handle in handles.values():
                    handle.remove()
                handles.clear()
            for param in group.fsdp_params:
                param._post_load_hook_handle.remove()
        m.__class__ = type(m).__mro__[FSDPModule._orig_cls_mro_index]
        for key in (contract.STATE_KEY, contract.REGISTRY_KEY):
            m.__dict__.pop(key, None)
        _module_state_mapping.pop(m, None)
    for m in model.modules():
        for flag in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            m.__dict__.pop(flag, None)


# --------------------------------------------------------------------------------------------------- checkpoints
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _holder(model: nn.Module, extra_modules: Optional[dict[str, nn.Module]]) -> nn.Module:
    """One module owning every parameter the optimizer steps (the student and any trainable loss parts), so the
    optimizer-state helpers can name each of them."""
    if not extra_modules:
        return model
    return nn.ModuleDict({"model": model, **{f"extra_{k}": v for k, v in extra_modules.items()}})


def _indices(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimizer's parameters in the order its own state_dict numbers them (0, 1, ... over its groups)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
               extra_modules: Optional[dict[str, nn.Module]] = None) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) gathered in full onto rank 0's CPU (the other ranks get empty
    dicts); a collective: every rank calls it. The optimizer's state comes back keyed by parameter index, exactly
    what `optimizer.state_dict()` gives in one process, so the checkpoint file does not depend on how it was
    trained."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_sd = get_model_state_dict(model, options=_options(cpu_offload=True))
    osd = get_optimizer_state_dict(_holder(model, extra_modules), optimizer, options=_options(cpu_offload=True))
    if not dist.is_main():
        return {}, {}
    names = [name for group in osd["param_groups"] for name in group["params"]]
    state = {i: osd["state"][name] for i, name in enumerate(names) if name in osd["state"]}
    groups, start = [], 0
    for group in osd["param_groups"]:
        n = len(group["params"])
        groups.append({**group, "params": list(range(start, start + n))})
        start += n
    return model_sd, {"state": state, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                    extra_modules: Optional[dict[str, nn.Module]] = None) -> None:
    """Load full state dicts (as `full_state` gives and a checkpoint holds; every rank read them from the file) into
    the sharded model and its optimizer: each rank keeps its own share."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_sd, options=_options())
    holder = _holder(model, extra_modules)
    fqn = {}
    for name, p in holder.named_parameters(remove_duplicate=False):
        fqn.setdefault(id(p), name)
    params = _indices(optimizer)
    named = {"state": {fqn[id(params[i])]: v for i, v in optim_sd["state"].items()},
             "param_groups": [{**g, "params": [fqn[id(params[i])] for i in g["params"]]}
                              for g in optim_sd["param_groups"]]}
    set_optimizer_state_dict(holder, optimizer, named, options=_options())


# ------------------------------------------------------------------------------------------------- the loop's use
def shard_for_training(model: nn.Module, teacher, device: torch.device) -> str:
    """Shard the student, and the teacher when it runs live (it has `shard`: a cached teacher is a file, nothing to
    shard); the plan's words for what was done."""
    n = shard(model, device)
    live = teacher is not None and hasattr(teacher, "shard")
    if live:
        teacher.shard()
    blocks = f"{n - 1} blocks + root" if n > 1 else "the root as one unit"
    return f"FSDP2 (fully_shard) over {dist.describe()}: student in {blocks}" + (", teacher sharded" if live else "")


def unshard_after_training(model: nn.Module, teacher) -> None:
    """Full weights back in the student and the teacher, on every rank (collectives): what follows training (saving
    the weights, measuring, compressing, the next stage) sees plain modules."""
    unshard(model)
    if teacher is not None and hasattr(teacher, "unshard"):
        teacher.unshard()


def clip_grad_norm_(params: list, max_norm: float) -> None:
    """`nn.utils.clip_grad_norm_` over the student's sharded parameters and plain ones beside them (a feature
    loss's adapters), which torch's own refuses to mix: the global norm of each kind (a DTensor's norm covers every
    rank's shard), combined, and one clipping factor for all, as one process clips."""
    from torch.distributed.tensor import DTensor

    sharded = [p for p in params if isinstance(p, DTensor)]
    plain = [p for p in params if not isinstance(p, DTensor)]
    if not sharded or not plain:
        nn.utils.clip_grad_norm_(params, max_norm)
        return
    norms = []
    for group in (sharded, plain):
        grads = [p.grad for p in group if p.grad is not None]
        norm = nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        norms.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float().cpu())
    total = float(torch.linalg.vector_norm(torch.stack(norms)))
    coef = min(1.0, max_norm / (total + 1e-6))  # torch's own factor, clamped at 1
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
