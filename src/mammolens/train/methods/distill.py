"""``distill``: one student tower trained on several tasks at once plus distillation from a frozen teacher run
(stage 2 of VersaMammo's recipe).

* Heads: one ``linear`` head per task (``task`` is the primary head; ``method.distill.tasks`` adds more), all on
  the student's image embedding. A row without a task's label is left out of that task's loss only; each task
  has its own class weights (``method.distill.class_weighting``, default ``class_weighting``).
* Rows: every non-test image outside the validation patients, labelled or not (unlabelled rows are only
  distilled); ``method.distill.label_fraction`` keeps the labels of that fraction of the training patients.
* Teacher: ``method.distill.teacher`` (``run:PATH`` or a run folder), frozen. With ``cache_teacher`` (default) its
  embeddings (and, for the ``patch`` term, patch tokens) of the training rows are computed once into the
  teacher's feature cache (``pipeline.features.cache_features``) and looked up by cache row; otherwise the
  teacher runs on every batch (seeing the same augmented images as the student).
* Terms (``method.terms``): ``supervised`` (mean over tasks of the weighted cross-entropy), ``cosine``
  (1 - cos of the projected student embedding and the teacher's), ``l2`` (squared distance of the two unit
  vectors), ``patch`` (cosine of projected student patch tokens, resampled to the teacher's grid, and the
  teacher's), ``similarity`` (:func:`similarity_kl`: KL between the teacher's and the student's batch
  similarity matrices). The projection (student dim → teacher dim) is trained and saved in the method state.

The run is an ordinary run (one backbone, one head per task) that evaluate, predict, explain and search load.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens.losses import class_weights as _class_weights
from mammolens.losses import weighted_cross_entropy
from mammolens.run.model import LinearHead, RunModel
from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod

__all__ = ["DistillMethod", "DistillStep", "similarity_kl", "feature_cosine", "feature_l2", "resample_tokens"]

log = logging.getLogger(__name__)
DISTILL_TERMS = ("cosine", "l2", "patch", "similarity")


# ------------------------------------------------------------------------------------------ loss terms
def similarity_kl(student: Tensor, teacher: Tensor, temperature: float = 0.1) -> Tensor:
    """KL(teacher || student) between the rows of the two batch similarity matrices, self-pairs left out:
    ``P = softmax(t t^T / T)``, ``Q = softmax(s s^T / T)`` over the other images of the batch, mean over rows.

    Args:
        student: ``[B, Ds]``; teacher: ``[B, Dt]`` (normalised inside; the dims may differ).
    """
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    b = s.shape[0]
    if b < 3:  # fewer than two other images: no distribution to match
        return (s * 0).sum()
    eye = torch.eye(b, dtype=torch.bool, device=s.device)
    logit_t = (t @ t.t() / temperature).masked_fill(eye, float("-inf"))
    logit_s = (s @ s.t() / temperature).masked_fill(eye, float("-inf"))
    p = F.softmax(logit_t, dim=-1)
    log_p = F.log_softmax(logit_t, dim=-1).masked_fill(eye, 0.0)
    log_q = F.log_softmax(logit_s, dim=-1).masked_fill(eye, 0.0)
    return (p * (log_p - log_q)).sum(-1).mean()


def feature_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean of ``1 - cos(student, teacher)`` over rows (any leading shape, features last)."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def feature_l2(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared distance of the unit vectors (``= 2 x feature_cosine``: the L2 form of the same pull)."""
    d = F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)
    return d.pow(2).sum(-1).mean()


def resample_tokens(tokens: Tensor, n_out: int) -> Tensor:
    """Patch tokens ``[B, N, D]`` of a square grid resampled (bilinear) to a square grid of ``n_out`` tokens."""
    b, n, d = tokens.shape
    side, side_out = int(round(n ** 0.5)), int(round(n_out ** 0.5))
    if side * side != n or side_out * side_out != n_out:
        raise ValueError(f"the patch term needs square token grids; got {n} and {n_out} tokens")
    if n == n_out:
        return tokens
    grid = tokens.transpose(1, 2).reshape(b, d, side, side)
    out = F.interpolate(grid.float(), size=(side_out, side_out), mode="bilinear", align_corners=False)
    return out.reshape(b, d, n_out).transpose(1, 2)


# --------------------------------------------------------------------------------------------- module
class DistillStep(nn.Module):
    """What the loop optimises: the student tower, its task heads and the projection to the teacher's space.
    ``forward(x, tokens)`` → ``{"embedding": [B, D], "logits": {task: [B, K]}, "proj": [B, Dt], "patch": [B, N, Dt]}``."""

    def __init__(self, clip: nn.Module, heads: nn.ModuleDict, proj: nn.Module | None):
        super().__init__()
        self.clip, self.heads, self.proj = clip, heads, proj

    def forward(self, x: Tensor, tokens: bool = False) -> dict:
        out: dict = {}
        if tokens:
            emb, tok = self.clip.encode_image_tokens(x)  # [B, D], [B, N, D]
        else:
            emb, tok = self.clip.encode_image(x), None
        out["embedding"] = emb
        out["logits"] = {name: h(emb) for name, h in self.heads.items()}
        if self.proj is not None:
            out["proj"] = self.proj(emb)
            if tok is not None:
                out["patch"] = self.proj(tok)
        return out


# ---------------------------------------------------------------------------------------------- method
@register_method("distill")
class DistillMethod(TrainMethod):
    """Multi-task student + distillation from a frozen teacher run (see the module docstring)."""

    terms = {"supervised": 1.0, "cosine": 1.0, "l2": 0.0, "patch": 0.0, "similarity": 1.0}

    def __init__(self, ctx):
        super().__init__(ctx)
        from mammolens.tasks import resolve_task

        tasks = {ctx.task.name: ctx.task}
        for name in ctx.cfg.method_cfg.distill.tasks:
            t = resolve_task(name)
            tasks.setdefault(t.name, t)
        self.tasks = tasks
        self.heads = nn.ModuleDict({n: LinearHead.build(ctx.clip, t) for n, t in tasks.items()}).to(ctx.device)
        self.proj = None
        self._rows = None

    def rows(self) -> np.ndarray:
        if self._rows is None:
            from mammolens.train.methods.pretrain import ssl_rows

            cache, task = self.ctx.train_ds.cache, self.ctx.task
            labels = np.asarray(task.encode(cache.index[task.label_column]), dtype=np.int64)
            self._rows = ssl_rows(cache, self.ctx.cfg, labels)
        return self._rows

    def train_dataset(self):
        from mammolens.data.dataset import MammoDataset

        return MammoDataset(self.ctx.train_ds.cache, self.ctx.task, rows=self.rows())

    # --------------------------------------------------------------------------------------- build
    def _labels(self) -> dict[str, Tensor]:
        """Per task, the label of every cache row (``-1``: none, or dropped by ``label_fraction``), on the device."""
        ctx, d = self.ctx, self.ctx.cfg.method_cfg.distill
        cache = ctx.train_ds.cache
        index = cache.index
        keep = np.zeros(len(index), dtype=bool)
        rows = self.rows()
        patients = index["patient_id"].astype(str).to_numpy()
        uniq = np.unique(patients[rows])
        n_keep = int(round(d.label_fraction * len(uniq)))
        if d.label_fraction > 0:
            n_keep = max(n_keep, 1)
        kept = np.random.default_rng(ctx.cfg.seed).permutation(uniq)[:n_keep]
        keep[rows] = np.isin(patients[rows], kept)
        out = {}
        for name, task in self.tasks.items():
            if task.label_column not in index.columns:
                raise ValueError(f"task {name!r} needs column {task.label_column!r}, which the cache index "
                                 f"({cache.path}) lacks; remove it from method.distill.tasks or add the column")
            y = np.asarray(task.encode(index[task.label_column]), dtype=np.int64)
            out[name] = torch.as_tensor(np.where(keep, y, -1)).to(ctx.device)
        self.n_labelled_patients = len(kept)
        return out

    def _teacher(self, tokens: bool):
        """The teacher's features of the training rows ``(lut [N_cache], emb [R, Dt], tok [R, T, Dt] | None)``,
        or a frozen teacher model when ``cache_teacher`` is off."""
        from pathlib import Path

        ctx, d = self.ctx, self.ctx.cfg.method_cfg.distill
        if not d.teacher:
            raise ValueError("method distill: a distillation term weighs > 0 but method.distill.teacher is empty; "
                             "name the teacher run (run:PATH) or set method.terms.cosine/l2/patch/similarity to 0")
        run_dir = Path(d.teacher[len("run:"):] if d.teacher.startswith("run:") else d.teacher)
        from mammolens.run.folder import load_run

        teacher = load_run(run_dir, device=str(ctx.device), which=d.teacher_which)
        teacher.model.requires_grad_(False).eval()
        dim = int(teacher.model.clip.embed_dim)
        if not d.cache_teacher:
            return teacher.model, dim
        from mammolens.pipeline import features as _feat

        cache = ctx.train_ds.cache
        feats = _feat.cache_features(teacher, cache, self.rows(), tokens=tokens, which=d.teacher_which,
                                     batch_size=ctx.cfg.batch_size, device=str(ctx.device))
        lut = torch.full((len(cache.index),), -1, dtype=torch.long)
        lut[torch.as_tensor(np.asarray(feats.rows))] = torch.arange(len(feats.rows))
        self.teacher_emb = torch.as_tensor(np.array(feats.embeddings)).to(ctx.device)  # [R, Dt]
        self.teacher_tok = torch.as_tensor(np.array(feats.tokens)).float().to(ctx.device) if tokens else None
        self.lut = lut.to(ctx.device)
        self.teacher_reused = bool(feats.reused)
        return None, int(self.teacher_emb.shape[1])

    def build(self) -> nn.Module:
        ctx, cfg = self.ctx, self.ctx.cfg
        w, d = cfg.method_cfg.terms, cfg.method_cfg.distill
        ctx.clip.requires_grad_(False)
        ctx.clip.visual.requires_grad_(True)
        self.labels = self._labels()
        rows = torch.as_tensor(self.rows())
        self.class_weights = {}
        for name, task in self.tasks.items():
            y = self.labels[name].cpu()[rows]
            how = d.class_weighting.get(name, cfg.class_weighting)
            k = len(task.class_names)
            self.class_weights[name] = (_class_weights(y, k, method=how) if (y >= 0).any()
                                        else torch.ones(k)).float().to(ctx.device)
        self.teacher_model = None
        self.distilling = any(w[t] > 0 for t in DISTILL_TERMS)
        if self.distilling:
            self.teacher_model, t_dim = self._teacher(tokens=w["patch"] > 0)
            if self.proj is None:
                self.proj = nn.Linear(int(ctx.clip.embed_dim), t_dim).to(ctx.device)
        return DistillStep(ctx.clip, self.heads, self.proj).to(ctx.device)

    # --------------------------------------------------------------------------------------- a step
    def _teacher_features(self, batch: dict) -> tuple[Tensor, Tensor | None]:
        w = self.ctx.cfg.method_cfg.terms
        if self.teacher_model is None:
            pos = self.lut[batch["index"].long()]
            return self.teacher_emb[pos], (self.teacher_tok[pos] if self.teacher_tok is not None else None)
        with torch.no_grad():
            if w["patch"] > 0:
                return self.teacher_model.clip.encode_image_tokens(batch["image"])
            return self.teacher_model.clip.encode_image(batch["image"]), None

    def training_forward(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        w, d = self.ctx.cfg.method_cfg.terms, self.ctx.cfg.method_cfg.distill
        o = model(batch["image"], tokens=self.distilling and w["patch"] > 0)
        rows = batch["index"].long()
        res: dict[str, Tensor] = {}
        if w["supervised"] > 0:
            per_task = [weighted_cross_entropy(o["logits"][n].float(), self.labels[n][rows], self.class_weights[n])
                        for n in self.tasks]
            res["supervised"] = sum(per_task) / len(per_task)
            for n, v in zip(self.tasks, per_task):
                res[f"ce_{n}"] = v.detach()
        if self.distilling:
            t_emb, t_tok = self._teacher_features(batch)
            if w["cosine"] > 0:
                res["cosine"] = feature_cosine(o["proj"], t_emb)
            if w["l2"] > 0:
                res["l2"] = feature_l2(o["proj"], t_emb)
            if w["patch"] > 0:
                res["patch"] = feature_cosine(resample_tokens(o["patch"], t_tok.shape[1]), t_tok)
            if w["similarity"] > 0:
                res["similarity"] = similarity_kl(o["embedding"], t_emb, d.temperature)
        loss = sum(w[k] * v for k, v in res.items() if k in w)
        return {"loss": loss, **res}

    # -------------------------------------------------------------------------------------- outputs
    def run_model(self) -> RunModel:
        self.ctx.clip.eval()
        return RunModel(self.ctx.clip, dict(self.heads.items()), method=self.name, primary=self.ctx.task.name)

    def log(self) -> dict:
        out: dict = {"labelled_patients": int(getattr(self, "n_labelled_patients", 0))}
        if getattr(self, "teacher_reused", None) is not None:
            out["teacher_features_reused"] = self.teacher_reused
        return out

    def state_dict(self) -> dict:
        heads = {n: {k: v.detach().cpu().clone() for k, v in h.state_dict().items()} for n, h in self.heads.items()}
        state = {"head": heads[self.ctx.task.name], "heads": heads}  # "head": the primary one, as other methods
        if self.proj is not None:
            state["proj"] = {k: v.detach().cpu().clone() for k, v in self.proj.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for n, s in (state.get("heads") or {}).items():
            if n in self.heads:
                self.heads[n].load_state_dict(s)
        if self.proj is not None and state.get("proj") is not None:
            self.proj.load_state_dict(state["proj"])
