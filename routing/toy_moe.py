"""Tiny MoE transformer on the embedded toy world (``workbench moe train --task toy``).

Model: the toy model's architecture (``workbench.models.toy_config_dict``: pre-LN HookedTransformer,
learned positions) at width ``--d-model`` with every block's MLP replaced by a ``MoEFeedForward`` of
``--experts`` ReLU experts (hidden ``--d-hidden``) behind any gate. The hash gate hashes the current
token id (Roller et al.); the learned gates route on the residual stream.

Trained by routing.train's one MoE loop through ToyTask: sequences from ``toyworld.training_text`` (80%
IOI prompts with their answer, 20% general text), encoded by ``workbench.toy_train.WordEncoder``; AdamW
with the warm-up + cosine schedule ``workbench.toy_train.warmup_cosine`` (warm-up = 10% of ``--steps``),
gradient clip 1. The loss is next-token
cross-entropy (pads ignored) plus every layer's gate aux losses. Pad tokens are routed too (they pass
through the gate like any token) but are left out of every load and specialisation number.

Evaluation (results.json):
- ``test_loss``: next-token cross-entropy on 512 held-out toy-world sequences (fixed seed);
- ``test.load[l]``: tokens (non-pad) dispatched to each expert in layer l on those sequences;
- ``ioi``: accuracy (logit of IO > logit of S at END) and mean logit difference on ``--ioi-prompts``
  IOI prompts (training names and templates, ABB/BAB alternating, seed 1234);
- ``specialisation[L<l>][<role>][<attr>]``: how much of the routing at the IO / S1 / S2 / END position
  of those prompts is explained by an attribute (``io`` name, ``s`` name, ``pos`` ABB/BAB,
  ``template``), with the expert of a token = its highest-weight expert. ``nmi`` is the usual NMI
  (arithmetic normalisation); ``mi`` the plug-in mutual information in nats, ``mi_chance`` the mean MI
  after shuffling the attribute (the plug-in estimator's bias: large for the 80-valued names) and
  ``excess`` = (mi - mi_chance) / H(expert), the share of the expert choice's entropy explained beyond
  chance. ``assignment[L<l>][<role>][<attr>]``: for each attribute value the expert that best stands for it
  (``routing.metrics.expert_assignment``), the mean over values of its precision P(value | expert) and
  recall P(expert | value) and F1, and the same after shuffling the attribute (``*_chance``).
  ``role_nmi[L<l>]``: NMI between the expert and the role (IO/S1/S2/END) over all four positions.
Expert Choice routes over all tokens of a batch at once, so it is not causal (a token's experts depend
on later tokens of other sequences in the batch); its numbers are evaluated with the training batch size.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from routing.config import MoETrainConfig
from routing.gates import make_gate
from routing.moe import MoEFeedForward
from workbench import ioi, toyworld
from workbench.runs import Run
from workbench.toy_train import WordEncoder, warmup_cosine

N_CTX = 64
HELDOUT_SEQS = 512
HELDOUT_SEED = 987_654
IOI_SEED = 1234
ROLES = ("IO", "S1", "S2", "END")
ATTRS = ("io", "s", "pos", "template")


class ToyMoETransformer(nn.Module):
    """A HookedTransformer with the toy model's architecture whose MLPs are MoE blocks."""

    def __init__(self, cfg: MoETrainConfig):
        super().__init__()
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        from workbench.models import toy_config_dict

        arch = toy_config_dict(cfg.n_layers, cfg.d_model, cfg.n_heads, None, N_CTX, seed=cfg.seed)
        self.arch = arch
        self.tl = HookedTransformer(HookedTransformerConfig(**arch, device="cpu"))
        for layer, block in enumerate(self.tl.blocks):
            gate = make_gate(cfg.routing, cfg.d_model, seed=12345 + 100 * cfg.seed + layer)
            block.mlp = MoEFeedForward(gate, cfg.d_model, cfg.d_hidden)

    @property
    def moe_blocks(self) -> list[MoEFeedForward]:
        return [b.mlp for b in self.tl.blocks]

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, P) -> logits (B, P, V); each block's last route stays on the block."""
        for m in self.moe_blocks:
            m.token_ids = tokens
        try:
            return self.tl(tokens)
        finally:
            for m in self.moe_blocks:
                m.token_ids = None

    def aux_loss(self) -> Tensor:
        return sum(m.aux_loss() for m in self.moe_blocks)

    def set_progress(self, progress: float) -> None:
        for m in self.moe_blocks:
            m.moe.gate.set_progress(progress)

    def routes(self) -> list:
        return [m.last_route for m in self.moe_blocks]


def lm_loss(logits: Tensor, tokens: Tensor, pad: int) -> Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=pad)


def _mi(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Plug-in mutual information I(a; b) and entropy H(b), in nats."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    t = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(t, (ai, bi), 1)
    p = t / t.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return max(mi, 0.0), hb


def specialisation(attr: np.ndarray, expert: np.ndarray, shuffles: int = 5, seed: int = 0) -> dict:
    """NMI, MI, its chance level (shuffled attribute) and the excess share of H(expert)."""
    from routing.metrics import nmi

    mi, h = _mi(attr, expert)
    rng = np.random.default_rng(seed)
    chance = float(np.mean([_mi(rng.permutation(attr), expert)[0] for _ in range(shuffles)]))
    return {"nmi": nmi(attr, expert), "mi": mi, "mi_chance": chance,
            "excess": (mi - chance) / h if h > 0 else 0.0, "h_expert": h}


def ioi_set(enc: WordEncoder, n: int) -> dict:
    """Tokens, role positions and attribute labels of n IOI prompts (training names and templates)."""
    prompts = ioi.sample_prompts(n, toyworld.IOI_NAMES, IOI_SEED)
    tokens = enc([p.text for p in prompts])
    io_id = torch.tensor([enc.ids[p.io] for p in prompts])
    s_id = torch.tensor([enc.ids[p.s] for p in prompts])
    pos_idx = torch.arange(tokens.shape[1])
    big = tokens.shape[1]
    is_io, is_s = tokens == io_id[:, None], tokens == s_id[:, None]
    io_pos = torch.where(is_io, pos_idx, big).min(1).values
    s1 = torch.where(is_s, pos_idx, big).min(1).values
    s2 = torch.where(is_s & (pos_idx > s1[:, None]), pos_idx, big).min(1).values
    end = (tokens != enc.pad).sum(1) - 1
    assert int(io_pos.max()) < big and int(s2.max()) < big, "every IOI prompt has IO once and S twice"
    return {"tokens": tokens, "io_id": io_id, "s_id": s_id, "roles": {"IO": io_pos, "S1": s1, "S2": s2, "END": end},
            "attrs": {"io": np.array([p.io for p in prompts]), "s": np.array([p.s for p in prompts]),
                      "pos": np.array([p.pos for p in prompts]), "template": np.array([p.family for p in prompts])}}


@torch.no_grad()
def _forward_chunks(model: ToyMoETransformer, tokens: Tensor, batch: int, device: str):
    """Logits and per-layer top expert / dispatch mask for tokens (N, P), batch sequences at a time."""
    logits, tops, masks = [], [[] for _ in model.moe_blocks], [[] for _ in model.moe_blocks]
    for lo in range(0, len(tokens), batch):
        t = tokens[lo:lo + batch].to(device)
        logits.append(model(t).float().cpu())
        for layer, r in enumerate(model.routes()):
            tops[layer].append(r.weights.argmax(-1).view(t.shape).cpu())
            masks[layer].append(r.mask.view(*t.shape, -1).cpu())
    return torch.cat(logits), [torch.cat(x) for x in tops], [torch.cat(x) for x in masks]


@torch.no_grad()
def evaluate_toy(model: ToyMoETransformer, heldout: Tensor, ioi_data: dict, pad: int, batch: int, device: str) -> dict:
    model.eval()
    logits, _, masks = _forward_chunks(model, heldout, batch, device)
    loss = float(lm_loss(logits, heldout, pad))
    not_pad = heldout != pad
    not_pad[:, 0] = True  # BOS
    load = [m[not_pad].sum(0).float().tolist() for m in masks]  # per layer (E,)
    sample = model.routes()[0].weights[:64].float().cpu().tolist()
    logits, tops, _ = _forward_chunks(model, ioi_data["tokens"], batch, device)
    idx = torch.arange(len(logits))
    end_logits = logits[idx, ioi_data["roles"]["END"]]
    ld = end_logits[idx, ioi_data["io_id"]] - end_logits[idx, ioi_data["s_id"]]
    spec, role_nmi, assign = {}, {}, {}
    from routing.metrics import assignment_summary, nmi

    for layer, top in enumerate(tops):
        per_role = {}
        experts_by_role = {}
        for role in ROLES:
            ex = top[idx, ioi_data["roles"][role]].numpy()
            experts_by_role[role] = ex
            per_role[role] = {a: specialisation(v, ex, seed=layer) for a, v in ioi_data["attrs"].items()}
        spec[f"L{layer}"] = per_role
        assign[f"L{layer}"] = {role: {a: assignment_summary(v, experts_by_role[role], len(load[layer]), seed=layer)
                                      for a, v in ioi_data["attrs"].items()} for role in ROLES}
        role_nmi[f"L{layer}"] = nmi(np.repeat(np.arange(len(ROLES)), len(idx)),
                                    np.concatenate([experts_by_role[r] for r in ROLES]))
    model.train()
    return {"loss": loss, "load": load, "weights_sample": sample,
            "ioi": {"accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean()), "n": len(ld)},
            "specialisation": spec, "assignment": assign, "role_nmi": role_nmi}


class ToyTask:
    """The tiny MoE transformer for routing.train's loop: `steps` batches of freshly sampled toy-world text
    (one epoch), AdamW (weight decay 0.01) on a warm-up (10% of the steps) + cosine schedule to 0.1x,
    gradient clip 1; evaluated once at the end (held-out loss, IOI, expert specialisation)."""

    grad_clip = 1.0
    weight_decay = 0.01
    min_lr_frac = 0.1

    def __init__(self, cfg: MoETrainConfig):
        self.cfg, self.device = cfg, cfg.device
        self.model = ToyMoETransformer(cfg).to(cfg.device)
        self.total_steps = self.steps_per_epoch = cfg.steps
        self.enc = WordEncoder(toyworld.vocabulary(), N_CTX, truncate=True)
        self.rng = random.Random(cfg.seed)  # the training text
        hrng = random.Random(HELDOUT_SEED)
        self.heldout = self.enc([toyworld.training_text(hrng) for _ in range(HELDOUT_SEQS)])
        self.ioi_data = ioi_set(self.enc, cfg.ioi_prompts)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.weight_decay)

    def state_dict(self) -> dict:
        """The training text's RNG: the rest of a resumed run draws the text it would have drawn."""
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.cfg.steps, self.cfg.lr, self.cfg.steps // 10, self.min_lr_frac)

    def batch_loss(self, step: int) -> tuple[Tensor, dict, list]:
        tokens = self.enc([toyworld.training_text(self.rng) for _ in range(self.cfg.batch_size)]).to(self.device)
        loss = lm_loss(self.model(tokens), tokens, self.enc.pad)
        return loss, {"lm_loss": loss.item()}, self.model.routes()

    def end_epoch(self, epoch: int) -> dict:
        return {}

    def finish(self, run: Run, train_time: float, steps: int) -> dict:
        cfg, tag = self.cfg, self.cfg.routing.tag
        test = evaluate_toy(self.model, self.heldout, self.ioi_data, self.enc.pad, cfg.batch_size, self.device)
        results = {"task": "toy", "gate": tag, "seed": cfg.seed, "experts": cfg.routing.experts, "k": cfg.routing.k,
                   "train_time_s": train_time, "steps": steps,
                   "n_params": sum(p.numel() for p in self.model.parameters()),
                   "test_loss": test["loss"], "ioi": test["ioi"], "role_nmi": test["role_nmi"],
                   "test": {"loss": test["loss"], "load": test["load"]}, "specialisation": test["specialisation"],
                   "assignment": test["assignment"]}
        run.write_json("load.json", {"experts": cfg.routing.experts,
                                     "gates": [f"{tag}:L{layer}" for layer in range(cfg.n_layers)],
                                     "epochs": [{"epoch": 0, "load": test["load"]}],
                                     "weights_sample": test["weights_sample"]})
        return results


def summary_rows(results: dict) -> dict:
    """The headline numbers of one toy run: loss, IOI, load balance per layer, END/S2 specialisation."""
    out = {"gate": results["gate"], "seed": results["seed"], "test_loss": results["test_loss"],
           "ioi_acc": results["ioi"]["accuracy"], "ioi_ld": results["ioi"]["logit_diff"], "time_s": results["train_time_s"]}
    k = results["k"]
    for layer, load in enumerate(results["test"]["load"]):
        load = np.asarray(load)
        out[f"L{layer}_topk_share"] = float(np.sort(load)[::-1][:k].sum() / max(load.sum(), 1e-12))
        out[f"L{layer}_load_cv"] = float(load.std() / max(load.mean(), 1e-12))
        out[f"L{layer}_role_nmi"] = results["role_nmi"][f"L{layer}"]
        sp = results["specialisation"][f"L{layer}"]
        for role in ("IO", "S2", "END"):
            for attr in ("io", "pos"):
                out[f"L{layer}_{role}_{attr}"] = sp[role][attr]["excess"]
    return out
