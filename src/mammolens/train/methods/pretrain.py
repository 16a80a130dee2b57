"""``pretrain``: self-supervised pretraining of the image tower, DINO family (DINO image loss + iBOT patch loss
+ KoLeo), the stage 1 of VersaMammo's recipe, on any ViT tower (any tower without the patch term).

Labels are ignored for training (the method uses every non-test, non-validation image, labelled or not).

* Views (``data.views``): ``global_crops`` crops of the whole breast at the model's input size and
  ``local_crops`` smaller crops with at least ``min_tissue`` breast, cut from the cache tile at its own
  resolution; intensity jitter only.
* Student = the run's ``MammoCLIP`` image tower (its text tower and temperature stay frozen) + a DINO head on
  the pooled embedding + an iBOT head on the patch tokens (lightly's ``DINOProjectionHead``) + a learnable
  mask token that replaces the masked patches of the student's global crops (lightly's ``random_block_mask``).
  Teacher = an EMA copy of tower and heads (lightly's ``update_momentum``, cosine schedule from
  ``momentum`` to 1), never trained, never DDP-wrapped.
* Terms (``method.terms``): ``dino`` (teacher global crops vs every other student crop), ``ibot`` (teacher vs
  student on the masked patches), ``koleo`` (lightly's ``KoLeoLoss`` on the student's global embeddings).
  Centering ``mean`` uses lightly's ``DINOLoss`` and ``IBOTPatchLoss`` (running centres); ``sinkhorn`` (default,
  DINOv2) normalises the teacher's outputs with :func:`sinkhorn_knopp` (written here: lightly has none) and uses
  :func:`dino_cross_entropy` / :func:`patch_cross_entropy`.
* Method state (every checkpoint): the teacher's tower and heads, the student's heads and mask token, the
  running centres, the step count, the probe head: a resumed run is bit-identical.
* Monitoring per epoch (``metrics.jsonl``): the terms, ``train_agreement`` (the student's top prototype for a
  crop is the top of the teacher's centred target for another crop of the image), ``train_embed_std``
  (per-dimension std of the normalised embeddings x sqrt(D): about 1 when spread, 0 at collapse), and on up to
  ``probe_max_images`` labelled training images: ``effective_rank`` of the embeddings, a leave-patient-out kNN
  probe (``knn_macro_auc``, ``knn_balanced_accuracy``) and a linear probe that is the run's head (so
  ``val_macro_auc`` is a linear probe's, and ``best.pt`` the best tower by it). A collapse (std <
  ``COLLAPSE_STD`` or effective rank < ``COLLAPSE_RANK``) is logged as a warning and recorded as
  ``collapse: true``.

The run is an ordinary run (a linear head on the task); its tower starts ``mammolens train`` with
``pretrained: run:PATH``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens._optional import optional_import
from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod, extract_features, warm_start_head

__all__ = ["PretrainMethod", "PretrainStep", "sinkhorn_knopp", "dino_cross_entropy", "patch_cross_entropy",
           "effective_rank", "knn_probe", "ssl_rows", "teacher_copy"]

log = logging.getLogger(__name__)

# a collapse warning below these (std of the normalised embeddings x sqrt(D); a random tiny ViT gives ~0.09)
COLLAPSE_STD, COLLAPSE_RANK = 0.02, 2.0


def _lightly():
    """lightly's losses, heads and utilities (the ``pretrain`` extra), imported on first use."""
    optional_import("lightly", "pretrain", "self-supervised pretraining (method: pretrain)")
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import random_block_mask, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    return dict(DINOLoss=DINOLoss, IBOTPatchLoss=IBOTPatchLoss, KoLeoLoss=KoLeoLoss, DINOProjectionHead=DINOProjectionHead,
                random_block_mask=random_block_mask, update_momentum=update_momentum, cosine_schedule=cosine_schedule)


# ------------------------------------------------------------------------------------------ loss terms
@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, n_iters: int = 3) -> Tensor:
    """Sinkhorn-Knopp normalisation of teacher outputs (DINOv2's centering): ``[N, K]`` logits → ``[N, K]``
    targets whose rows sum to 1 and whose columns (prototypes) each hold ``N / K`` of the mass, as nearly
    as ``n_iters`` alternating normalisations reach. Under DDP the sums run over every rank's rows."""
    world = torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1
    top = logits.float().max()
    if world > 1:  # one shift for every rank, or the ranks' columns would be scaled differently
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp((logits.float() - top) / temp).t()  # [K, N]; the shift cancels in the normalisation
    n = q.shape[1] * world
    k = q.shape[0]

    def total(x: Tensor) -> Tensor:
        if world > 1:
            torch.distributed.all_reduce(x)
        return x

    q = q / total(q.sum())
    for _ in range(n_iters):
        q = q / total(q.sum(dim=1, keepdim=True)) / k  # each prototype: 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / n  # each row: 1/N
    return (q * n).t()  # [N, K], rows sum to 1


def dino_cross_entropy(teacher_probs: list[Tensor], student_logits: list[Tensor], student_temp: float) -> Tensor:
    """DINO's multi-crop cross-entropy: the mean over pairs (teacher view t, student view s != t) and images of
    ``-sum_k p_t log softmax(s / student_temp)``. Teacher views are the first ``len(teacher_probs)`` student
    views (the global crops); the same crop is never its own target."""
    total, n_pairs = None, 0
    logs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    for t, p in enumerate(teacher_probs):
        for s, ls in enumerate(logs):
            if s == t:
                continue
            ce = -(p * ls).sum(-1).mean()
            total = ce if total is None else total + ce
            n_pairs += 1
    if not n_pairs:
        raise ValueError("dino_cross_entropy needs at least two views (one teacher view and another student view)")
    return total / n_pairs


def patch_cross_entropy(teacher_probs: Tensor, student_logits: Tensor, mask: Tensor, student_temp: float) -> Tensor:
    """iBOT's masked-patch cross-entropy: per masked patch ``-sum_k p log softmax(s / student_temp)``, averaged
    over each image's masked patches, then over the images (images without a masked patch count 0).

    Args:
        teacher_probs: ``[M, K]`` targets of the masked patches (in ``mask``'s row-major order).
        student_logits: ``[M, K]``.
        mask: ``[B, H, W]`` (or ``[B, N]``) bool, ``M`` of them True.
    """
    ce = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)  # [M]
    flat = mask.reshape(mask.shape[0], -1)
    per_image = flat.sum(1, keepdim=True).clamp_min(1).expand_as(flat)[flat].float()  # [M]
    return (ce / per_image).sum() / mask.shape[0]


def effective_rank(x: Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred ``[N, D]`` features: 1 for a collapse
    onto one direction, up to min(N, D) for features spread evenly."""
    x = x.float() - x.float().mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_probe(feats: Tensor, labels: np.ndarray, groups: np.ndarray, num_classes: int, k: int = 10,
              temp: float = 0.07) -> np.ndarray:
    """Leave-patient-out kNN class probabilities ``[N, K]``: each row votes among its ``k`` most cosine-similar
    rows of *other* patients, weighted ``exp(sim / temp)`` (DINO's weighted kNN)."""
    f = F.normalize(feats.float(), dim=-1)
    sim = f @ f.t()  # [N, N]
    g = np.asarray(groups)
    same = torch.from_numpy(g[:, None] == g[None, :])
    sim = sim.masked_fill(same, float("-inf"))
    kk = min(k, max(int((~same).sum(1).min()), 1))
    top, idx = sim.topk(kk, dim=1)  # [N, k]
    w = torch.exp(top / temp).nan_to_num(0.0)  # -inf (no other patient) → 0
    y = torch.as_tensor(labels, dtype=torch.long)[idx]  # [N, k]
    votes = torch.zeros(len(f), num_classes).scatter_add_(1, y, w)
    votes = votes + 1e-6  # no neighbour: uniform
    return (votes / votes.sum(1, keepdim=True)).numpy()


# --------------------------------------------------------------------------------------------- helpers
def ssl_rows(cache, cfg, labels: np.ndarray) -> np.ndarray:
    """The rows self-supervised training uses: every done, non-test row of the run's modalities, labelled or
    not, except the validation patients of the run's split (the probe's validation stays unseen)."""
    from mammolens.data.splits import split_rows

    d, index = cfg.data, cache.index
    _, val_rows = split_rows(index, labels, split_column=d.split_column, fold=d.fold, val_frac=d.val_frac,
                             modalities=d.modalities, seed=cfg.seed)
    keep = (index["status"].astype(str) == "done").to_numpy().copy() if "status" in index else np.ones(len(index), bool)
    if d.modalities:
        keep &= index["modality"].astype(str).isin(d.modalities).to_numpy()
    if d.split_column in index.columns:
        keep &= index[d.split_column].astype(str).str.lower().to_numpy() != "test"
    patients = index["patient_id"].astype(str).to_numpy()
    keep &= ~np.isin(patients, np.unique(patients[val_rows]))
    return np.flatnonzero(keep)


def teacher_copy(clip: nn.Module) -> nn.Module:
    """A copy of ``clip`` whose image tower is its own (the EMA teacher) and whose other tensors (text tower,
    temperature) and tokenizer are shared with ``clip``: no memory for a text tower the teacher never uses."""
    memo = {id(t): t for name, t in itertools.chain(clip.named_parameters(), clip.named_buffers())
            if not name.startswith("clip.visual.")}
    memo[id(clip.tokenizer)] = clip.tokenizer
    teacher = copy.deepcopy(clip, memo)
    teacher.clip.visual.requires_grad_(False)
    return teacher.eval()


def _patch_embed(visual: nn.Module) -> tuple[nn.Module | None, int]:
    """The module whose output holds one vector per patch (where the mask token goes), and its width."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "patch_embed"):  # timm ViT
        return trunk.patch_embed, int(trunk.embed_dim)
    conv = getattr(visual, "conv1", None)  # open_clip VisionTransformer
    if isinstance(conv, nn.Conv2d):
        return conv, int(conv.out_channels)
    return None, 0


class PretrainStep(nn.Module):
    """What the loop optimises (and DDP wraps): the student's tower (``clip``), its DINO and iBOT heads and the
    mask token. ``forward(globals [G*B, C, S, S], locals [L*B, C, s, s] | None, token_mask [G*B, h, w] | None)``
    → ``{"pooled": [G*B, D], "cls": [G*B, K], "local_cls": [L*B, K], "patch": [M, K']}``."""

    def __init__(self, clip: nn.Module, dino_head: nn.Module, ibot_head: nn.Module | None):
        super().__init__()
        self.clip, self.dino_head, self.ibot_head = clip, dino_head, ibot_head
        self._mask: Tensor | None = None
        self.mask_token = None
        if ibot_head is not None:
            embed, width = _patch_embed(clip.visual)
            if embed is None:
                raise ValueError(f"the ibot term needs a ViT image tower (open_clip or timm); "
                                 f"{type(clip.visual).__name__} has no patch embedding. Set method.terms.ibot: 0")
            self.mask_token = nn.Parameter(torch.zeros(width))
            embed.register_forward_hook(self._apply_mask)

    def _apply_mask(self, module, inputs, out):
        m = self._mask
        if m is None:
            return out
        tok = self.mask_token.to(out.dtype)
        if out.ndim == 4 and out.shape[1] == tok.shape[0] and out.shape[-2:] == m.shape[-2:]:  # [B, C, h, w]
            return torch.where(m[:, None], tok.view(1, -1, 1, 1), out)
        if out.ndim == 4:  # [B, h, w, C]
            return torch.where(m[..., None], tok.view(1, 1, 1, -1), out)
        return torch.where(m.reshape(m.shape[0], -1, 1), tok.view(1, 1, -1), out)  # [B, N, C]

    def forward(self, globals_: Tensor, locals_: Tensor | None, token_mask: Tensor | None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        self._mask = token_mask
        try:
            if self.ibot_head is not None:
                pooled, tokens = self.clip.encode_image_tokens(globals_, normalize=False)  # [GB, D], [GB, N, D]
            else:
                pooled, tokens = self.clip.encode_image(globals_, normalize=False), None
        finally:
            self._mask = None
        out["pooled"], out["cls"] = pooled, self.dino_head(pooled)
        if tokens is not None and token_mask is not None:
            out["patch"] = self.ibot_head(tokens[token_mask.reshape(tokens.shape[0], -1)])  # [M, K']
        if locals_ is not None:
            out["local_cls"] = self.dino_head(self.clip.encode_image(locals_, normalize=False))
        return out


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


# ---------------------------------------------------------------------------------------------- method
@register_method("pretrain")
class PretrainMethod(TrainMethod):
    """DINO + iBOT + KoLeo self-distillation of the image tower (see the module docstring)."""

    terms = {"dino": 1.0, "ibot": 1.0, "koleo": 0.1}
    needs_training_rows = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.step = 0
        self.teacher = self.teacher_heads = None
        self._rows = None

    # ---------------------------------------------------------------------------------------- data
    def train_dataset(self):
        from mammolens.data.dataset import MammoDataset
        from mammolens.data.views import ViewSource

        return ViewSource(MammoDataset(self.ctx.train_ds.cache, self.ctx.task, rows=self.rows()))

    def rows(self) -> np.ndarray:
        """The cache rows pretrained on (:func:`ssl_rows`), chosen once."""
        if self._rows is None:
            ctx = self.ctx
            cache = ctx.train_ds.cache
            labels = np.asarray(ctx.task.encode(cache.index[ctx.task.label_column]), dtype=np.int64)
            self._rows = ssl_rows(cache, ctx.cfg, labels)
            if not len(self._rows):
                raise ValueError(f"no images to pretrain on in cache {cache.path} (every row failed, is a test row "
                                 "or belongs to a validation patient)")
        return self._rows

    def _total_steps(self) -> int:
        cfg = self.ctx.cfg
        n = len(self.rows())
        batches = math.ceil(n / (cfg.batch_size * int(os.environ.get("WORLD_SIZE", "1"))))
        if cfg.max_steps_per_epoch:
            batches = min(batches, cfg.max_steps_per_epoch * cfg.grad_accum)
        return max(1, math.ceil(batches / cfg.grad_accum) * cfg.epochs)

    # --------------------------------------------------------------------------------------- build
    def build(self) -> nn.Module:
        from mammolens.data.views import MultiCropViews, ViewCfg

        ctx, p = self.ctx, self.ctx.cfg.method_cfg.pretrain
        w = ctx.cfg.method_cfg.terms
        L = _lightly()
        self.L = L
        clip = ctx.clip
        clip.requires_grad_(False)
        clip.visual.requires_grad_(True)
        size = clip.image_size if isinstance(clip.image_size, int) else clip.image_size[0]
        self.views = MultiCropViews(ViewCfg(
            global_crops=p.global_crops, global_scale=p.global_scale, global_size=size, local_crops=p.local_crops,
            local_scale=p.local_scale, local_size=p.local_size or size, min_tissue=p.min_tissue,
            brightness=p.brightness, contrast=p.contrast, gamma=p.gamma, blur_p=p.blur_p, noise=p.noise))
        was_training = clip.training
        clip.eval()  # the shape probe below must not touch batch-norm statistics
        with torch.no_grad():
            probe = torch.zeros(1, 1, size, size, device=ctx.device)
            dim = int(clip.encode_image(probe, normalize=False).shape[-1])
            self.grid = None
            if w["ibot"] > 0:
                if _patch_embed(clip.visual)[0] is None:
                    raise ValueError(f"the ibot term needs a ViT image tower (open_clip or timm); "
                                     f"{type(clip.visual).__name__} has no patch embedding. Set method.terms.ibot: 0")
                n_tok = int(clip.encode_image_tokens(probe, normalize=False)[1].shape[1])
                side = int(round(math.sqrt(n_tok)))
                if side * side != n_tok:
                    raise ValueError(f"the ibot term needs a square patch grid; the tower gives {n_tok} tokens")
                self.grid = (side, side)
        clip.train(was_training)
        self.teacher = teacher_copy(clip)  # before the mask hook: the teacher never sees mask tokens

        def heads():
            dino = L["DINOProjectionHead"](dim, p.hidden_dim, p.bottleneck_dim, p.out_dim)
            ibot = L["DINOProjectionHead"](dim, p.hidden_dim, p.bottleneck_dim, p.patch_out_dim) if self.grid else None
            return nn.ModuleDict({"dino": dino} | ({"ibot": ibot} if ibot is not None else {})).to(ctx.device)

        student_heads = heads()
        self.teacher_heads = heads()
        self.teacher_heads.load_state_dict(student_heads.state_dict())
        self.teacher_heads.requires_grad_(False).eval()
        ibot = student_heads["ibot"] if "ibot" in student_heads else None
        step = PretrainStep(clip, student_heads["dino"], ibot).to(ctx.device)
        self.student_heads = student_heads
        if p.centering == "mean":
            self.dino_loss = L["DINOLoss"](p.out_dim, warmup_teacher_temp=p.warmup_teacher_temp,
                                           teacher_temp=p.teacher_temp, student_temp=p.student_temp,
                                           center_momentum=p.center_momentum).to(ctx.device)
            self.ibot_loss = L["IBOTPatchLoss"](p.patch_out_dim, teacher_temp=p.teacher_temp, student_temp=p.student_temp,
                                                center_momentum=p.center_momentum).to(ctx.device)
        else:
            self.dino_loss = self.ibot_loss = None
        self.koleo = L["KoLeoLoss"]()
        self.total_steps = self._total_steps()
        return step

    # ------------------------------------------------------------------------------------ schedules
    def teacher_temp(self) -> float:
        p = self.ctx.cfg.method_cfg.pretrain
        warm = p.teacher_temp_warmup * self.total_steps
        if warm <= 0 or self.step >= warm:
            return p.teacher_temp
        return p.warmup_teacher_temp + (p.teacher_temp - p.warmup_teacher_temp) * self.step / warm

    def momentum(self) -> float:
        p = self.ctx.cfg.method_cfg.pretrain
        return float(self.L["cosine_schedule"](min(self.step, self.total_steps), self.total_steps, p.momentum, 1.0))

    # --------------------------------------------------------------------------------------- a step
    def _token_mask(self, n: int, device) -> Tensor | None:
        if self.grid is None:
            return None
        p = self.ctx.cfg.method_cfg.pretrain
        small = self.grid[0] * self.grid[1] < 64
        # on a small grid an image's share can round to 0 patches, below lightly's default block maximum (that
        # share): allow blocks up to the whole grid there (the number masked still follows mask_ratio)
        return self.L["random_block_mask"]((n, *self.grid), batch_mask_ratio=p.mask_prob,
                                           min_image_mask_ratio=p.mask_ratio[0], max_image_mask_ratio=p.mask_ratio[1],
                                           min_num_masks_per_block=1 if small else 4,
                                           max_num_masks_per_block=self.grid[0] * self.grid[1] if small else None,
                                           device=device)

    def training_forward(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        p, w = self.ctx.cfg.method_cfg.pretrain, self.ctx.cfg.method_cfg.terms
        v = self.views(batch["tile"], batch["mask"])
        b, g = batch["tile"].shape[0], len(v["global"])
        globals_ = torch.cat(v["global"])  # [G*B, 1, S, S]
        locals_ = torch.cat(v["local"]) if v["local"] else None  # [L*B, 1, s, s]
        token_mask = self._token_mask(len(globals_), globals_.device) if w["ibot"] > 0 else None
        out = model(globals_, locals_, token_mask)
        with torch.no_grad():
            tt = self.teacher
            if self.grid is not None:
                t_pooled, t_tokens = tt.encode_image_tokens(globals_, normalize=False)
            else:
                t_pooled, t_tokens = tt.encode_image(globals_, normalize=False), None
            t_cls = self.teacher_heads["dino"](t_pooled).float()  # [G*B, K]
            t_patch = None
            if token_mask is not None and token_mask.any():
                t_patch = self.teacher_heads["ibot"](t_tokens[token_mask.reshape(len(globals_), -1)]).float()
        temp = self.teacher_temp()
        s_views = list(out["cls"].float().split(b)) + (list(out["local_cls"].float().split(b)) if locals_ is not None else [])
        res: dict[str, Tensor] = {}
        if self.dino_loss is not None:
            t_target = t_cls - self.dino_loss.center.reshape(1, -1)  # the centred logits the loss targets
            res["dino"] = self.dino_loss(list(t_cls.split(b)), s_views, teacher_temp=temp)
        else:
            t_target = sinkhorn_knopp(t_cls, temp, p.sinkhorn_iters)
            res["dino"] = dino_cross_entropy(list(t_target.split(b)), s_views, p.student_temp)
        if w["ibot"] > 0:
            if t_patch is None:
                res["ibot"] = out["cls"].sum() * 0.0
            elif self.ibot_loss is not None:
                res["ibot"] = self.ibot_loss(t_patch, out["patch"].float(), token_mask, teacher_temp=temp)
            else:
                res["ibot"] = patch_cross_entropy(sinkhorn_knopp(t_patch, temp, p.sinkhorn_iters), out["patch"],
                                                  token_mask, p.student_temp)
        if w["koleo"] > 0:
            res["koleo"] = sum(self.koleo(x.float()) for x in out["pooled"].split(b)) / g
        loss = sum(w[k] * v_ for k, v_ in res.items())
        with torch.no_grad():
            s_arg = out["cls"].float().argmax(-1).view(g, b)
            t_arg = t_target.argmax(-1).view(g, b)  # the prototype of the centred target, not of the raw logits
            agree = (s_arg[:, None] == t_arg[None]).float()  # [G, G, B]: student view s vs teacher view t
            off = ~torch.eye(g, dtype=torch.bool, device=agree.device) if g > 1 else torch.ones(1, 1, dtype=torch.bool,
                                                                                                device=agree.device)
            res["agreement"] = agree[off].mean()
            z = F.normalize(out["pooled"].float(), dim=-1)
            res["embed_std"] = z.std(0).mean() * math.sqrt(z.shape[-1])
            res["teacher_temp"] = torch.tensor(temp, device=z.device)
        return {"loss": loss, **res}

    def after_step(self) -> None:
        self.step += 1
        m = self.momentum()
        upd = self.L["update_momentum"]
        upd(self.ctx.clip.clip.visual, self.teacher.clip.visual, m)
        upd(self.student_heads, self.teacher_heads, m)

    # ----------------------------------------------------------------------------------- monitoring
    def log(self) -> dict:
        ctx, cfg, p = self.ctx, self.ctx.cfg, self.ctx.cfg.method_cfg.pretrain
        out: dict = {"momentum": self.momentum()}
        ds = ctx.train_ds
        if p.probe_max_images <= 0 or ds is None or len(ds) < 2:
            return out
        from mammolens.models.run import RunModel

        sel = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), p.probe_max_images)).round().astype(int))
        sub = torch.utils.data.Subset(ds, sel.tolist())
        model = RunModel(ctx.clip, None, nn.Linear(1, 1), self.name)  # only encode_image is used
        feats = extract_features(model, sub, cfg.batch_size, cfg.workers, ctx.device, ctx.dtype)  # [N, D]
        labels = np.asarray(ds.labels)[sel]
        groups = ds.frame["patient_id"].astype(str).to_numpy()[sel]
        k = len(ctx.task.class_names)
        from mammolens.evaluation.metrics import val_metrics

        out["effective_rank"] = effective_rank(feats)
        std = float(F.normalize(feats.float(), dim=-1).std(0).mean() * math.sqrt(feats.shape[1]))
        out["probe_embed_std"] = std
        out["collapse"] = bool(std < COLLAPSE_STD or out["effective_rank"] < COLLAPSE_RANK)
        if out["collapse"]:
            log.warning("pretrain: the embeddings are collapsing (std %.3f, effective rank %.2f of %d dims); lower lr, "
                        "raise teacher_temp warm-up or use centering: sinkhorn", std, out["effective_rank"], feats.shape[1])
        if len(np.unique(groups)) > 1:
            knn = val_metrics(labels, knn_probe(feats, labels, groups, k, p.knn_k), ctx.task.class_names)
            out["knn_macro_auc"] = knn.get("val_macro_auc")
            out["knn_balanced_accuracy"] = knn.get("val_balanced_accuracy")
        head = warm_start_head(ctx).cpu()
        from mammolens.train.baselines import fit_linear_probe

        fit_linear_probe(feats, torch.as_tensor(labels), head, class_weights=ctx.class_weights.cpu(),
                         steps=cfg.probe_steps, lr=1e-2)
        self.head = head.to(ctx.device)
        return out

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["step"] = self.step
        if self.teacher is not None:
            state["teacher"] = _cpu(self.teacher.clip.visual.state_dict())
            state["teacher_heads"] = _cpu(self.teacher_heads.state_dict())
            state["student_heads"] = _cpu(self.student_heads.state_dict())
            if self.module is not None and self.module.mask_token is not None:
                state["mask_token"] = self.module.mask_token.detach().cpu().clone()
            if self.dino_loss is not None:
                state["centers"] = {"dino": _cpu(self.dino_loss.state_dict()), "ibot": _cpu(self.ibot_loss.state_dict())}
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("head") is not None:
            self.head = nn.Linear(state["head"]["weight"].shape[1], state["head"]["weight"].shape[0]).to(self.ctx.device)
        super().load_state_dict(state)
        self.step = int(state.get("step", 0))
        if self.teacher is None or "teacher" not in state:
            return
        self.teacher.clip.visual.load_state_dict(state["teacher"])
        self.teacher_heads.load_state_dict(state["teacher_heads"])
        self.student_heads.load_state_dict(state["student_heads"])
        if "mask_token" in state and self.module is not None and self.module.mask_token is not None:
            with torch.no_grad():
                self.module.mask_token.copy_(state["mask_token"])
        if "centers" in state and self.dino_loss is not None:
            self.dino_loss.load_state_dict(state["centers"]["dino"])
            self.ibot_loss.load_state_dict(state["centers"]["ibot"])


PRETRAIN_METHODS = ("pretrain",)


def pretrain_config(path, overrides: list[str] | None = None):
    """The ``TrainCfg`` of ``mammolens pretrain --config PATH``: the file's method when it is a pretraining
    method, ``pretrain`` when it names none.

    Raises:
        ValueError: the file (or an override) names another method (train it with ``mammolens train``).
    """
    from mammolens.train.config import load_cfg

    cfg = load_cfg(path, overrides)
    if cfg.method in PRETRAIN_METHODS:
        return cfg
    import yaml

    from mammolens.train.config import parse_overrides

    def names(section) -> bool:  # a method section that names its method
        return isinstance(section, str) or (isinstance(section, dict) and "name" in section)

    from_file = (yaml.safe_load(open(path)) or {}).get("method") if path is not None else None
    if names(from_file) or names(parse_overrides(overrides).get("method")):
        raise ValueError(f"config {path} names method {cfg.method!r}, which is not a pretraining method "
                         f"({', '.join(PRETRAIN_METHODS)}); run it with `mammolens train`, or set method: pretrain")
    return load_cfg(path, ["method=pretrain", *(overrides or [])])
