"""Plan a run without its weights: a peak-memory estimate from a preset's architecture.

`render_plan(cfg)` is what `run_cv.py --dry-run` prints. The network is built on the meta device from the
preset's config facts (pipeline/arch.py: no download, no memory) and `estimate_memory` turns it into bytes per
component; pipeline/plan_measure.py measures real training steps on this CPU to check the formulas (docs/MEMORY.md).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from pipeline import plan_generate
from pipeline.arch import ArchFacts, arch_facts, count_from, matches_target, skeletons
from pipeline.config import RunConfig

GIB = 1024 ** 3
MIB = 1024 ** 2

# NF4 stores one absmax per block of 64 weights. Plain: an fp32 absmax per block = 32/64 = 0.5 bits per weight.
# Double quantization (QLoRA, Dettmers et al. 2023, section 3): the absmaxes become 8-bit with one fp32
# constant per 256 blocks, 8/64 + 32/(64*256) = 0.127 bits per weight.
NF4_BLOCK = 64
ABSMAX_BITS_DOUBLE = 8 / NF4_BLOCK + 32 / (NF4_BLOCK * 256)
ABSMAX_BITS_SINGLE = 32 / NF4_BLOCK

# A CUDA process holds ~0.5 GiB before its first tensor (context and kernels, CUDA 12 with lazy loading;
# what nvidia-smi shows for an idle torch process), plus cuBLAS workspaces and the caching allocator's
# rounding of blocks: 1 GiB in all, added to every 'cuda' estimate. The CPU has no such term.
CUDA_OVERHEAD_BYTES = 1 * GIB

# Cards we report on (GiB as nvidia-smi counts them) and the share of a card a plan may use: 10% stays free
# for allocator fragmentation, batches of unusual shape and the eval pass.
CARDS_GIB = (24, 40, 80)
CARD_HEADROOM = 0.10

# Linear layers by role, from the last part of their name (Llama/Qwen/Mistral/Gemma, GPT-2, BERT family).
_ATTN_IN = {"q_proj", "k_proj", "v_proj", "query", "key", "value", "q_lin", "k_lin", "v_lin", "c_attn",
            "query_proj", "key_proj", "value_proj", "in_proj", "qkv_proj", "Wqkv"}
_MLP_IN = {"gate_proj", "up_proj", "c_fc", "fc1", "lin1", "w1", "w3", "gate_up_proj"}


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of tensor a training step keeps, for one device and setup."""
    device: str  # 'cuda' (bf16 compute, as on a GPU) or 'cpu' (fp32, as on this machine)
    stream: int  # the residual stream between blocks
    compute: int  # matmul inputs/outputs under autocast (SDPA's q, k, v, out; LoRA inputs)
    linear_out: int  # output of a frozen base linear (bitsandbytes 4-bit returns its input's dtype)
    norm: int  # norm inputs as kept for backward (RMSNorm upcasts to fp32; LayerNorm runs fp32 in autocast)
    mask: int  # one dropout-mask element (bool from CUDA's fused dropout; a float on CPU)
    per_linear_casts: bool  # autocast casts an fp32 input once per consuming linear, each copy kept
    frozen_weight: int  # bytes per non-quantized backbone parameter that does not train


def precision(settings, device: str) -> Precision:
    """The dtype rules of the pipeline's model on `device` ('cuda' or 'cpu'); reasons in the comments."""
    if device == "cpu":
        return Precision("cpu", 4, 4, 4, 4, 4, False, 4)
    if device != "cuda":
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if settings.finetune == "full":
        # fp32 master weights under bf16 autocast: embeddings (not autocast) put an fp32 stream in, each
        # linear casts its fp32 input to bf16 separately and keeps that copy
        return Precision("cuda", 4, 2, 2, 4, 1, True, 4)
    if settings.load_in_4bit:
        # prepare_model_for_kbit_training casts embeddings and norms to fp32, so the stream is fp32;
        # bitsandbytes computes in bf16 but casts its output back to the input's dtype (fp32)
        return Precision("cuda", 4, 2, 4, 4, 1, True, 4)
    # frozen bf16 weights (16-bit LoRA or head): everything bf16 but the fp32 norm internals; peft casts each
    # adapter's input to its fp32 weight, and autocast each of those back to bf16, one kept copy per adapter
    return Precision("cuda", 2, 2, 2, 4, 1, True, 2)


def _role(name: str) -> str:
    """'attn_in', 'attn_out', 'mlp_in' or 'mlp_out' for a linear layer of a block, from its name."""
    last = name.rsplit(".", 1)[-1]
    if last in _ATTN_IN:
        return "attn_in"
    if last in _MLP_IN or "intermediate" in name:
        return "mlp_in"
    if "attn" in name or "attention" in name:
        return "attn_out"
    return "mlp_out"


def layer_activation_terms(f: ArchFacts, settings, prec: Precision, seq: int) -> dict:
    """Bytes per token that one interior block keeps for backward, by item (an inventory, not a fit).

    Derived from Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    section 4.1: 34*h + 5*a*s bytes per token in fp16 for GPT-3 blocks), adapted op by op to what PyTorch
    actually saves: a matmul keeps its input only when its weight trains (so LoRA keeps far less than full
    fine-tuning); gated MLPs keep gate, act and up (3 i); SDPA (flash or memory-efficient kernel) keeps q, k,
    v, out and a log-sum-exp instead of the a*s*s softmax; transformers repeats GQA's K/V heads to all `a`
    heads before SDPA when a padding mask is passed, so K and V are a*d wide; and per-tensor dtypes follow
    `prec`. Checked tensor by tensor against autograd's saved tensors in tests/test_plan.py.
    """
    h, i, a, d = f.hidden, f.intermediate, f.heads, f.head_dim
    full = settings.finetune == "full"
    c, t = {}, prec
    # each norm keeps its input, and per row an fp32 rsqrt (RMSNorm) or mean and rstd (LayerNorm)
    c["norm inputs"] = sum(f.norm_widths) * t.norm + f.norm_rows * (8 if f.layer_norm else 4)
    if full and f.family == "gated":
        # RMSNorm multiplies its weight by the normalised input, kept for the weight's gradient;
        # LayerNorm's backward rebuilds it from the input, mean and rstd
        c["normalised (norm weight grads)"] = sum(f.norm_widths) * t.norm
    # attention: SDPA keeps q, k, v, out (+ lse, fp32); without SDPA, or with dropout on this CPU (the math
    # kernel), the a x s probabilities are kept: softmax output, and with dropout its mask and the result
    math_kernel = not f.sdpa or (prec.device == "cpu" and f.attention_dropout > 0)
    if math_kernel:
        c["attention q, k, v"] = 3 * a * d * t.compute
        c["attention probabilities"] = a * seq * t.compute
        if f.attention_dropout > 0:
            c["attention dropout"] = a * seq * (t.compute + t.mask)
    else:
        # K and V reach SDPA repeated to all a heads (a copy) unless there is one KV head, which repeats as a
        # stride-0 view of the kv_heads * d original
        kv_width = f.kv_heads * d if f.kv_heads == 1 else a * d
        c["attention q, k, v, out"] = (2 * a * d + 2 * kv_width) * t.compute
        c["attention lse"] = a * 4
        # the boolean padding mask becomes an additive bias inside each SDPA call, kept per block
        c["attention mask"] = seq * t.compute
    if f.hidden_dropout > 0:
        c["residual dropout masks"] = 2 * h * t.mask
    if f.family == "gated":
        c["MLP gate, act, up"] = 3 * i * t.linear_out
    else:
        c["MLP activation"] = f.act_saved * i * t.linear_out
    roles: dict = {}
    for name, n_in, _ in f.block_linears:
        roles.setdefault(_role(name), []).append((name, n_in))
    if full:
        # inputs kept for the weight gradients; autocast copies once per linear when the stream is fp32
        for role, members in roles.items():
            n_in = members[0][1]
            if role == "attn_out" and not math_kernel:
                continue  # the SDPA output, already counted
            if role == "mlp_out" and f.family == "gated":
                c["MLP act*up (down_proj input)"] = n_in * t.linear_out
                continue
            copies = len(members) if t.per_linear_casts and role in ("attn_in", "mlp_in") else 1
            c[f"{role} linear inputs"] = c.get(f"{role} linear inputs", 0) + copies * n_in * t.compute
    elif settings.finetune == "lora":
        lora_in = lora_b = 0
        shared: set = set()
        for role, members in roles.items():
            for name, n_in in members:
                if not matches_target(name, settings.lora_targets):
                    continue
                lora_b += settings.lora_r * t.compute
                if settings.lora_dropout > 0:
                    lora_in += n_in * (t.mask + t.compute)  # each adapter's dropout: mask + its own output
                elif t.per_linear_casts or role not in shared:
                    shared.add(role)
                    lora_in += n_in * t.compute
        c["LoRA inputs (dropout mask + input of A)"] = lora_in
        c["LoRA B inputs"] = lora_b
    return {k: v for k, v in c.items() if v}


def _first_block_saving(f: ArchFacts, settings, prec: Precision) -> float:
    """Bytes per token the first block keeps less when embeddings are frozen: its input needs no gradient,
    so its first norm and the dropout of adapters reading that norm keep nothing."""
    if settings.finetune == "full":
        return 0.0
    saving = 0.0
    if f.pre_norm and f.norm_widths:
        saving = f.norm_widths[0] * prec.norm + (8 if f.layer_norm else 4)
    if settings.finetune == "lora" and settings.lora_dropout > 0:
        for name, n_in, _ in f.block_linears:
            if _role(name) == "attn_in" and matches_target(name, settings.lora_targets):
                saving += n_in * prec.mask
    return saving


def _outside_blocks(f: ArchFacts, settings, prec: Precision) -> float:
    """Bytes per token kept outside the blocks: the final norm's input (pre-norm models); with trainable
    embeddings also the token ids, the embedding dropout mask and BERT's embedding LayerNorm input. The last
    hidden state itself is not kept: pooling copies the rows it needs."""
    full = settings.finetune == "full"
    per_token = 0.0
    stats = 8 if f.layer_norm else 4
    if f.pre_norm:
        per_token += f.hidden * prec.norm * (2 if full and f.family == "gated" else 1) + stats
    if full:
        per_token += 8  # int64 token ids for the embedding gradient
        if f.hidden_dropout > 0:
            per_token += f.hidden * prec.mask
        if not f.pre_norm:
            per_token += f.hidden * prec.norm + stats
    return per_token


def _backward_workspace(f: ArchFacts, settings, prec: Precision, seq: int) -> float:
    """Bytes per token of activation gradients alive, on top of every saved activation, at the step's peak.

    Located with the profiler on this CPU: without checkpointing the peak sits in the backward of the last
    block's MLP (MulBackward0 of act * up), where the gradients of the product, act and up (3 i) are alive
    while nothing but the down projection's input has been released; full fine-tuning saved that input (the
    product) and has freed it by then, so 2 i net. A plain MLP has the gradients of fc2's input and of the
    activation's input (2 i; i net in full). The math/eager softmax has a x s gradients of its probabilities.
    With checkpointing the same happens in the block being recomputed. Grads take their activation's dtype.
    """
    released = 1 if settings.finetune == "full" else 0
    mlp = ((3 if f.family == "gated" else 2) - released) * f.intermediate * prec.linear_out
    attn = 0
    if not f.sdpa or (prec.device == "cpu" and f.attention_dropout > 0):
        attn = 2 * f.heads * seq * prec.compute
    return max(mlp, attn)


def _inference_workspace(f: ArchFacts, prec: Precision, seq: int) -> float:
    """Bytes per token alive inside one block in a no-grad forward (frozen features, the prediction pass):
    stream and residual, plus the wider of the attention (q, k, v, out) and MLP (gate, up, act) intermediates,
    each in the dtype a base linear returns (fp32 from bitsandbytes 4-bit on an fp32 stream)."""
    attn = 4 * f.heads * f.head_dim * prec.linear_out + (f.heads * seq * prec.compute if not f.sdpa else 0)
    mlp = (3 if f.family == "gated" else 2) * f.intermediate * prec.linear_out
    return 2 * f.hidden * prec.stream + max(attn, mlp)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak accelerator (or CPU tensor) memory of one training step, by component, in bytes.

    peak = weights + trainable_weights + optimizer_states + autocast_copies + overhead
           + max(activations + max(workspace, logits + logits_workspace) [+ gradients when accumulating],
                 gradients, prediction)
    because zero_grad(set_to_none=True) frees gradients before the forward, and backward frees saved
    activations as it creates gradients: the large transient terms peak at different moments. `prediction`
    is the no-grad forward of one eval batch (validation each epoch, then the test set), which with the
    default eval batch of 128 can outgrow a small training batch. In generate mode the loss's logits are
    freed before the blocks' backward begins, so they and the block workspace peak at different moments.
    """
    device: str  # 'cuda' or 'cpu'
    batch_size: int  # examples per forward pass
    max_length: int  # tokens per example (the estimate assumes every batch padded to it)
    weights: int  # frozen or full backbone weights as stored (4-bit + absmax, 16-bit or fp32)
    quantization_constants: int  # NF4 absmax constants (part of `weights`)
    trainable_weights: int  # LoRA and head (fp32; LoRA adds the frozen original head); full FT: only the head
    gradients: int  # fp32 gradient of every trainable parameter
    optimizer_states: int  # AdamW exp_avg and exp_avg_sq, fp32
    activations: int  # saved for backward without gradient checkpointing
    activations_checkpointed: int  # saved with gradient checkpointing (block inputs + one block recomputed)
    workspace: int  # transient gradients of activations inside one block (+ 4-bit dequantization scratch)
    autocast_copies: int  # bf16 copies of fp32 linear weights kept from forward to backward (full, cuda)
    overhead: int  # CUDA context, cuBLAS workspaces, allocator rounding (0 on CPU)
    gradient_checkpointing: bool  # what the config asks for
    grad_accum_steps: int  # >1 keeps gradients alive through the next forward
    eval_batch_size: int = 0  # examples per prediction forward pass
    prediction: int = 0  # transient of one eval batch's no-grad forward (0 in head mode: that is `workspace`)
    logits: int = 0  # generate mode: the fp32 log-softmax over the vocabulary (and labels) kept for backward
    logits_workspace: int = 0  # generate mode: the loss's fp32 logit gradients at the start of backward
    prediction_kv_cache: int = 0  # generate mode: the scoring pass's KV caches (part of `prediction`)
    recomputed_block: int = 0  # the block checkpointing recomputes (in activations_checkpointed; not yet alive
    # while the loss's logits are differentiated)

    def total(self, checkpointed: Optional[bool] = None) -> int:
        """Peak bytes with (True) or without (False) gradient checkpointing; None = as configured."""
        ckpt = self.gradient_checkpointing if checkpointed is None else checkpointed
        acts = self.activations_checkpointed if ckpt else self.activations
        held_grads = self.gradients if self.grad_accum_steps > 1 else 0
        backward = max(self.workspace, self.logits + self.logits_workspace - (self.recomputed_block if ckpt else 0))
        transient = max(acts + backward + held_grads, self.gradients, self.prediction)
        return (self.weights + self.trainable_weights + self.optimizer_states + self.autocast_copies
                + self.overhead + transient)

    def fits(self, card_gib: float, checkpointed: Optional[bool] = None) -> bool:
        """True when the peak leaves CARD_HEADROOM of a card of `card_gib` GiB free."""
        return self.total(checkpointed) <= (1 - CARD_HEADROOM) * card_gib * GIB


def estimate_memory(cfg: RunConfig, device: str = "cuda", n_labels: int = 11,
                    batch_size: Optional[int] = None, max_length: Optional[int] = None) -> MemoryEstimate:
    """Peak memory of one training step of `cfg`'s model; batch_size (examples) and max_length (tokens)
    default to the config's (preset's). Bytes; see MemoryEstimate for how the components combine."""
    from pipeline import presets

    s = presets.settings(cfg.model)
    backbone, published = skeletons(s.preset.name)
    rate = cfg.model.backbone_dropout if cfg.model.backbone_dropout is not None else s.preset.backbone_dropout
    batch = batch_size or (cfg.train.eval_batch_size if s.finetune == "head" else presets.train_settings(cfg)[1])
    seq, prompt = max_length or s.max_length, None
    if s.finetune == "generate":
        # a row is the chat prompt around the text, then the answer: longer than max_length
        prompt = plan_generate.config_prompt_tokens(cfg, n_labels, seq)
        seq = prompt.row
    return _estimate(backbone, published, s, device, n_labels, batch, seq, cfg.train.grad_accum_steps, rate,
                     cfg.train.eval_batch_size, prompt)


def planned_tensor_peak(cfg: RunConfig, n_labels: int) -> int:
    """The dry run's CUDA peak for `cfg` as configured, less the fixed CUDA context term: the figure to set
    beside torch.cuda.max_memory_allocated, which counts tensors only. Every batch is taken max_length long,
    so a run whose batches are padded shorter should stay below it."""
    from pipeline import presets

    est = estimate_memory(cfg, "cuda", n_labels)
    return est.total(presets.settings(cfg.model).gradient_checkpointing) - est.overhead


def _estimate(backbone, published, s, device: str, n_labels: int, batch: int, seq: int, grad_accum_steps: int,
              backbone_dropout: Optional[float], eval_batch: int = 0,
              prompt: Optional[plan_generate.PromptTokens] = None) -> MemoryEstimate:
    """The estimate for settings `s`; seq is the padded row length (tokens), in generate mode prompt + answer,
    and `prompt` (generate mode) sizes the scoring pass."""
    counts = count_from(backbone, published, s, n_labels)
    f = arch_facts(backbone, backbone_dropout)
    prec = precision(s, device)
    full = s.finetune == "full"
    tokens = batch * seq
    generate = s.finetune == "generate"
    # generate mode trains the causal LM's blocks as LoRA does; its LM head is part of the weights
    stored = counts.published if generate else counts.backbone
    s = dataclasses.replace(s, finetune="lora") if generate else s

    non_quantized = stored - (counts.quantizable if s.load_in_4bit else 0)
    constants = 0
    if s.load_in_4bit:
        constants = math.ceil(counts.quantizable * ABSMAX_BITS_DOUBLE / 8)
        weights = counts.quantizable // 2 + constants + non_quantized * prec.frozen_weight
    else:
        weights = stored * (4 if full else prec.frozen_weight)
    # under LoRA, peft's modules_to_save trains a copy of the head and keeps the original, frozen, beside it
    trainable_weights = 4 * (counts.lora + counts.head * (2 if s.finetune == "lora" else 1))
    gradients = 4 * counts.trainable
    optimizer_states = 8 * counts.trainable
    # the loop's AdamW is torch's fused one (pipeline.train.adamw): it updates in place, no scratch copies
    autocast_copies = 2 * counts.quantizable if full and device == "cuda" else 0
    dequant = 2 * counts.largest_linear if s.load_in_4bit else 0

    # model.feature_layers: a no-grad forward keeps every hidden state (embeddings and each block's output) until
    # it returns, where it would free each after the next block; in training they are saved for backward anyway
    states = (f.layers + 1) * f.hidden * prec.stream if s.feature_layers else 0
    if s.finetune == "head":
        acts = acts_ckpt = prediction = 0
        workspace = int(tokens * (_inference_workspace(f, prec, seq) + states)) + dequant
    else:
        per_block = sum(layer_activation_terms(f, s, prec, seq).values())
        outside = _outside_blocks(f, s, prec)
        first = _first_block_saving(f, s, prec)
        # rotary cos and sin (gated family), shared by all blocks: (batch, seq, head_dim) each, because
        # SequenceClassifier passes per-example position ids (counted along the mask) to decoders
        rotary = 2 * tokens * f.head_dim * prec.compute if f.family == "gated" else 0
        # adapters on some blocks only (model.lora_layers): the frozen blocks below the lowest keep nothing, as
        # nothing below it needs a gradient (blocks between listed ones are counted with adapters: an overestimate)
        kept = f.layers - (s.lora_layers[0] if s.finetune in ("lora", "generate") and s.lora_layers else 0)
        acts = int(tokens * (kept * per_block - first + outside) + rotary)
        # checkpointing keeps each block's input and recomputes one block at a time during backward
        acts_ckpt = int(tokens * (kept * f.hidden * prec.stream + per_block + outside) + rotary)
        workspace = int(tokens * _backward_workspace(f, s, prec, seq)) + dequant
        prediction = int(eval_batch * seq * (_inference_workspace(f, prec, seq) + states)) + dequant \
            if eval_batch else 0
    logits = logits_workspace = kv_cache = 0
    if generate:
        logits, logits_workspace = plan_generate.logits_memory(tokens, f.vocab)
        if s.load_in_4bit and device == "cuda":
            # k-bit preparation makes the unquantized LM head fp32; autocast's bf16 copy is kept for backward
            autocast_copies += 2 * f.vocab * f.hidden
        prediction = 0
        if eval_batch and prompt is not None:
            scoring = plan_generate.scoring_memory(eval_batch, prompt, f.vocab, f.layers, f.heads, f.kv_heads,
                                                   f.head_dim, prec.linear_out, prec.compute,
                                                   _inference_workspace(f, prec, prompt.prompt))
            prediction, kv_cache = scoring.total + dequant, scoring.kv_cache
    return MemoryEstimate(
        device=device, batch_size=batch, max_length=seq, weights=int(weights), quantization_constants=constants,
        trainable_weights=trainable_weights, gradients=gradients, optimizer_states=optimizer_states,
        activations=acts, activations_checkpointed=acts_ckpt, workspace=workspace,
        autocast_copies=autocast_copies, overhead=CUDA_OVERHEAD_BYTES if device == "cuda" else 0,
        gradient_checkpointing=s.gradient_checkpointing, grad_accum_steps=grad_accum_steps,
        eval_batch_size=eval_batch, prediction=prediction, logits=logits, logits_workspace=logits_workspace,
        prediction_kv_cache=kv_cache, recomputed_block=int(tokens * per_block) if s.finetune != "head" else 0)


def human(n: float) -> str:
    """A count in K/M/B with two decimals (14.77B)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def gib(n: float) -> str:
    """Bytes in binary units: GiB, or MiB / KiB for small amounts."""
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def render_plan(cfg: RunConfig, n_labels: int = 11) -> str:
    """The text `run_cv.py --dry-run` prints: preset, architecture, parameter counts, each memory
    component with and without gradient checkpointing, the peak, and which cards it fits.

    n_labels: width of the head; 11 is emotion-detection-fall-2024's count (the plan reads no data, and
    the head is a rounding error next to the backbone either way)."""
    from pipeline import presets

    s = presets.settings(cfg.model)
    p = s.preset
    head = f"Plan for preset '{p.name}' ({p.hf_id or p.package or 'no hub id'}), kind {p.kind}"
    if p.kind == "tfidf" or (p.arch is None and p.tiny is None):
        return (f"{head}\n{p.description}\nNothing to plan: this preset has no neural network "
                f"(no weights to load, no accelerator needed; it runs in seconds on a CPU).")
    backbone, published = skeletons(p.name)
    counts = count_from(backbone, published, s, n_labels)
    rate = cfg.model.backbone_dropout if cfg.model.backbone_dropout is not None else p.backbone_dropout
    f = arch_facts(backbone, rate)
    est = estimate_memory(cfg, "cuda", n_labels)
    lines = [head + "; nothing was downloaded, loaded or written.", p.description, ""]
    kv = f", {f.kv_heads} KV heads" if f.kv_heads != f.heads else ""
    lines.append(f"Architecture  {f.model_type}: {f.layers} blocks, hidden {f.hidden}, MLP {f.intermediate} "
                 f"({'gated' if f.family == 'gated' else 'plain'}), {f.heads} heads{kv} of {f.head_dim}, "
                 f"vocab {f.vocab:,}, {'SDPA' if f.sdpa else 'eager'} attention")
    blocks = ""
    if s.lora_layers:
        lo, hi = s.lora_layers[0], s.lora_layers[-1]
        contiguous = len(s.lora_layers) == hi - lo + 1
        blocks = f" in blocks {lo}-{hi}" if contiguous else f" in blocks {','.join(map(str, s.lora_layers))}"
    adapters = (f"LoRA r={s.lora_r} alpha={s.lora_alpha:g} dropout={s.lora_dropout:g} on "
                f"{', '.join(s.lora_targets)}{blocks} ({counts.lora_layers} layers)")
    tune = {"full": "full fine-tuning (every weight)", "head": "head only, on features computed once",
            "lora": adapters + " + head", "generate": adapters + " of the causal LM, which writes the labels "
            "(loss on the answer tokens)"}[s.finetune]
    quant = "4-bit NF4, double quantization" if s.load_in_4bit else ("fp32 master weights" if s.finetune == "full"
                                                                     else "bf16 frozen weights")
    lines.append(f"Training      {tune}; {quant}; gradient checkpointing "
                 f"{'on' if s.gradient_checkpointing else 'off'}")
    what = "eval batch (features pass)" if s.finetune == "head" else "batch"
    length = f"max_length {est.max_length}" if s.finetune != "generate" else f"{est.max_length} (prompt + answer)"
    lines.append(f"Shapes        {what} {est.batch_size} x {length} tokens, {n_labels} labels, "
                 f"gradient accumulation {cfg.train.grad_accum_steps}")
    if s.finetune == "generate":
        lines += plan_generate.render_prompt(plan_generate.config_prompt_tokens(cfg, n_labels, s.max_length),
                                             cfg.train.eval_batch_size)
    lines += ["", "Parameters"]
    pub = "causal LM, tied embeddings once" if p.kind == "decoder" else "= the backbone"
    rows = [("published (" + pub + ")", counts.published),
            ("backbone (AutoModel, no LM head)", counts.backbone),
            (f"head ({f.hidden} x {n_labels} + {n_labels})", counts.head) if not counts.causal_lm else
            ("LM head " + ("(tied to the embeddings)" if counts.published == counts.backbone
                           else f"({f.vocab:,} x {f.hidden})"), counts.published - counts.backbone),
            ("LoRA adapters", counts.lora),
            ("total (causal LM + LoRA)" if counts.causal_lm else "total (backbone + LoRA + head)", counts.total),
            ("trainable", counts.trainable)]
    for label, value in rows:
        lines.append(f"  {label:44s}{human(value):>10s}")
    lines[-1] += f"   ({100 * counts.trainable / counts.total:.2f}% of total)"
    wlabel = ("weights: NF4 4-bit + absmax, rest fp32" if s.load_in_4bit
              else "weights: fp32" if s.finetune == "full" else "weights: bf16")
    on = " (configured)"
    cols = ("no checkpointing" + ("" if s.gradient_checkpointing else on),
            "checkpointing" + (on if s.gradient_checkpointing else ""))
    w0, w1 = len(cols[0]) + 3, len(cols[1]) + 3
    lines += ["", f"{'Peak GPU memory, bf16 compute':46s}{cols[0]:>{w0}s}{cols[1]:>{w1}s}"]
    comps = [(wlabel, est.weights, est.weights),
             ("  of which NF4 absmax constants", est.quantization_constants, est.quantization_constants),
             ({"lora": "LoRA + head weights (fp32)", "generate": "LoRA weights (fp32)"}.get(
                 s.finetune, "head weights (fp32)"), est.trainable_weights, est.trainable_weights),
             ("gradients (fp32)", est.gradients, est.gradients),
             ("AdamW states (2 x fp32)", est.optimizer_states, est.optimizer_states),
             ("activations kept for backward", est.activations, est.activations_checkpointed),
             ("backward workspace", est.workspace, est.workspace),
             ("logits kept for backward (fp32 log-softmax)", est.logits, est.logits),
             ("logit gradients (fp32, start of backward)", est.logits_workspace, est.logits_workspace),
             (f"prediction pass (eval batch {est.eval_batch_size}, no grad)", est.prediction, est.prediction),
             ("  of which KV caches (scoring)", est.prediction_kv_cache, est.prediction_kv_cache),
             ("autocast bf16 weight copies", est.autocast_copies, est.autocast_copies),
             ("CUDA context + allocator (fixed)", est.overhead, est.overhead)]
    for label, a, b in comps:
        if a or b:
            lines.append(f"  {label:44s}{gib(a):>{w0}s}{gib(b):>{w1}s}")
    lines.append(f"  {'peak':44s}{gib(est.total(False)):>{w0}s}{gib(est.total(True)):>{w1}s}")
    lines.append("  peak = weights + LoRA/head + AdamW + autocast copies + overhead")
    lines.append("         + max(activations + workspace, gradients, prediction pass)"
                 if s.finetune != "generate" else "         + max(activations + max(workspace, logits + "
                 "logit gradients), gradients, prediction pass)")
    lines += ["", f"{'Fits, keeping ' + format(CARD_HEADROOM, '.0%') + ' of the card free':46s}"
                  f"{cols[0]:>{w0}s}{cols[1]:>{w1}s}"]
    for card in CARDS_GIB:
        yes = ["yes" if est.fits(card, ckpt) else "no" for ckpt in (False, True)]
        lines.append(f"  {str(card) + ' GB':44s}{yes[0]:>{w0}s}{yes[1]:>{w1}s}")
    lines += ["", "An estimate, not a measurement: the formulas and their checks against measured peaks (CPU "
              "steps, and CUDA steps on an H100) are in docs/MEMORY.md."]
    return "\n".join(lines)
