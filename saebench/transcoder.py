"""Where a transcoder reads and writes: hook order, the output hook of an SAE, and the checks.

A transcoder (:mod:`saebench.sae`) reads its input at ``hook_name`` and predicts the activation at
``hook_name_out``; core compares its prediction with, and splices it into, the output hook
(:mod:`saebench.pipeline.splice`), while every evaluator that reads latents encodes the input hook.
The output hook must fire *after* the input hook in the forward pass (:func:`check_downstream`), so
one pass from the input's block reads both and the splice replaces the output in that same pass.
These checks need no model weights: the embedded model's widths are known before it is loaded.
"""

from __future__ import annotations

import re
from typing import Any

from saebench.errors import SaebenchError
from saebench.models import EMBEDDED_MODEL, EMBEDDED_SHAPE, hook_width, parse_hook
from saebench.sae import output_width

#: the order in which transformer-lens hooks fire inside a block (``TransformerBlock.forward``);
#: ``hook_resid_post`` of block L is ``hook_resid_pre`` of block L+1. Hooks of one rank (``hook_q``
#: and ``hook_k``) fire side by side: neither is downstream of the other.
BLOCK_ORDER: dict[str, int] = {
    "hook_resid_pre": 0,
    "hook_attn_in": 1,
    "hook_q_input": 2,
    "hook_k_input": 2,
    "hook_v_input": 2,
    "ln1.hook_scale": 3,
    "ln1.hook_normalized": 3,
    "attn.hook_q": 4,
    "attn.hook_k": 4,
    "attn.hook_v": 4,
    "attn.hook_rot_q": 5,
    "attn.hook_rot_k": 5,
    "attn.hook_attn_scores": 6,
    "attn.hook_pattern": 7,
    "attn.hook_z": 8,
    "attn.hook_result": 9,
    "hook_attn_out": 10,
    "hook_resid_mid": 11,
    "hook_mlp_in": 12,
    "ln2.hook_scale": 13,
    "ln2.hook_normalized": 13,
    "mlp.hook_pre": 14,
    "mlp.hook_pre_linear": 14,
    "mlp.hook_post": 15,
    "hook_mlp_out": 16,
}


def hook_position(hook: str, n_layers: int) -> tuple[int, int] | None:
    """``(layer, rank)``: where ``hook`` fires in a forward pass (:data:`BLOCK_ORDER`), None for a hook
    kind whose place is not known. A hook outside the model is a one-line error."""
    parse_hook(hook, n_layers)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook)
    assert m is not None  # parse_hook accepted it
    layer, rest = int(m.group(1)), m.group(2)
    if rest == "hook_resid_post":
        return layer + 1, 0
    rank = BLOCK_ORDER.get(rest)
    return None if rank is None else (layer, rank)


def check_downstream(hook_in: str, hook_out: str, n_layers: int, sae_label: str) -> None:
    """Refuse, in one line, a transcoder whose output hook does not fire after its input hook: its
    prediction could not be spliced into the pass that read its input."""
    a, b = hook_position(hook_in, n_layers), hook_position(hook_out, n_layers)
    if a is None or b is None:
        unknown = hook_in if a is None else hook_out
        raise SaebenchError(
            f"transcoder {sae_label}: cannot place hook {unknown!r} in a block's order, so cannot check that "
            f"{hook_out} is downstream of {hook_in}; use hook_resid_post or one of {', '.join(BLOCK_ORDER)}"
        )
    if b <= a:
        raise SaebenchError(
            f"transcoder {sae_label} reads {hook_in} but writes {hook_out}, which is not downstream of it; its "
            "hook_name_out must fire after its hook_name (e.g. blocks.6.ln2.hook_normalized -> blocks.6.hook_mlp_out)"
        )


def out_width_error(sae_label: str, d_out: int, hook_out: str, model: str, width: int) -> str:
    """The one-line refusal of a transcoder whose ``d_out`` is not its output hook's width."""
    return (
        f"transcoder {sae_label} has d_out={d_out} but its output hook {hook_out} of {model} has width {width}; "
        "fix hook_name_out / d_out in its config, or pass the model (--model) it was trained on"
    )


def target_hook(sae: Any, hook: str) -> str:
    """The hook ``sae``, evaluated at input hook ``hook``, is compared with and spliced into: its
    ``hook_name_out`` when that differs from its ``hook_name`` (a transcoder), else ``hook`` itself (an
    SAE, or a skip-SAE writing the hook it reads; ``--force-hook`` moves both)."""
    out = getattr(sae, "hook_name_out", None)
    if out is None or out == getattr(sae, "hook_name", None):
        return hook
    return str(out)


def check_target(sae: Any, hook: str, n_layers: int, sae_label: str) -> str:
    """The output hook of ``sae`` at input ``hook`` (:func:`target_hook`), refusing a transcoder whose
    output is not downstream of its input, or one that writes a width other than its input's without
    naming the hook it writes."""
    out = target_hook(sae, hook)
    if out == hook:
        if output_width(sae) != int(sae.d_in):
            raise SaebenchError(
                f"transcoder {sae_label} has d_out={output_width(sae)} != d_in={sae.d_in} but names no output hook; "
                "set hook_name_out (e.g. blocks.6.hook_mlp_out) in its config"
            )
        return out
    check_downstream(hook, out, n_layers, sae_label)
    return out


def check_embedded(model: str, hook: str, sae: Any, sae_label: str) -> str | None:
    """Before the model is loaded: the output hook of a transcoder evaluated at ``hook`` (None for an
    SAE), refusing on the embedded model an output hook that is not downstream of the input or a
    ``d_out`` that is not its width (other models are checked once loaded)."""
    if model != EMBEDDED_MODEL:
        return None
    out = check_target(sae, hook, EMBEDDED_SHAPE.n_layers, sae_label)
    if out == hook:
        return None
    width = hook_width(EMBEDDED_SHAPE, out)
    if width is not None and width != output_width(sae):
        raise SaebenchError(out_width_error(sae_label, output_width(sae), out, EMBEDDED_MODEL, width))
    return out
