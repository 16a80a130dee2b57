"""``method: pretrain`` (train/methods/pretrain.py): the hand-written loss terms by hand, lightly's terms against a
small reference, the EMA teacher and mask token, a tiny end-to-end run with bit-identical resume, the
``mammolens pretrain`` config rule, and a pretrained tower as the starting point of ``train`` (``run:PATH``)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammolens.train import train
from mammolens.train.loop import load_checkpoint
from mammolens.train.methods import list_methods
from mammolens.train.methods.pretrain import (
    dino_cross_entropy,
    effective_rank,
    knn_probe,
    patch_cross_entropy,
    pretrain_config,
    sinkhorn_knopp,
    teacher_copy,
)

from _train_helpers import _cfg, cache_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
SMALL = {"out_dim": 32, "patch_out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2,
         "probe_max_images": 32}


def _pre_cfg(cache_dir, out, pretrain=None, **kw):  # noqa: F811
    section = {"name": "pretrain", "pretrain": {**SMALL, **(pretrain or {})}}
    base = dict(method=section, epochs=2, max_steps_per_epoch=1, ood=False, probe_steps=5, overwrite=True)
    base.update(kw)
    return _cfg(cache_dir, out, **base)


# ------------------------------------------------------------------------------------ terms by hand
def test_sinkhorn_knopp_one_iteration_by_hand():
    # exp(logits) = [[3, 1], [1, 1]] (rows: images). Normalise the total to 1, then each prototype to 1/2,
    # then each image to 1/2, times 2: image 0 -> [0.6, 0.4], image 1 -> [1/3, 2/3] (worked out on paper).
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    q = sinkhorn_knopp(logits, temp=1.0, n_iters=1)
    assert torch.allclose(q, torch.tensor([[0.6, 0.4], [1 / 3, 2 / 3]]), atol=1e-6)


def test_sinkhorn_knopp_balances_prototypes_where_softmax_does_not():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=g) + torch.linspace(0, 4, 8)  # prototype 7 dominates every row
    q = sinkhorn_knopp(logits, temp=0.5, n_iters=50)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)  # each row a distribution
    assert torch.allclose(q.sum(0), torch.full((8,), 64 / 8), atol=1e-2)  # each prototype N/K of the mass
    assert F.softmax(logits / 0.5, dim=1).sum(0).max() > 20  # without centering two prototypes take most


def test_dino_cross_entropy_by_hand():
    # two teacher views (one-hot), two student views, student_temp 1: the pairs (t0, s1) and (t1, s0)
    p0, p1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    s0, s1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    got = dino_cross_entropy([p0, p1], [s0, s1], student_temp=1.0)
    assert got.item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, abs=1e-6)
    # a local crop is a third student view: pairs (t0, s1), (t0, s2), (t1, s0), (t1, s2)
    s2 = torch.tensor([[0.0, math.log(3.0)]])
    got = dino_cross_entropy([p0, p1], [s0, s1, s2], student_temp=1.0)
    want = (-math.log(0.75) - math.log(0.25) - math.log(0.5) - math.log(0.75)) / 4
    assert got.item() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="two views"):
        dino_cross_entropy([p0], [s0], 1.0)


def test_patch_cross_entropy_by_hand():
    # image 0 has two masked patches (each weighs 1/2), image 1 one (weighs 1); the sum is divided by B = 2
    mask = torch.tensor([[[True, True], [False, False]], [[False, False], [False, True]]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    s = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    ce = [-math.log(0.5), -math.log(0.25), -math.log(0.75)]
    want = ((ce[0] + ce[1]) / 2 + ce[2]) / 2
    assert patch_cross_entropy(t, s, mask, student_temp=1.0).item() == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------ lightly's terms
def test_lightly_dino_loss_equals_the_reference_with_a_zero_centre():
    from lightly.loss import DINOLoss

    g = torch.Generator().manual_seed(1)
    t = [torch.randn(4, 16, generator=g) for _ in range(2)]
    s = [torch.randn(4, 16, generator=g) for _ in range(3)]
    loss = DINOLoss(16, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9)
    got = loss(t, s, teacher_temp=0.04)
    want = dino_cross_entropy([F.softmax(x / 0.04, dim=-1) for x in t], s, 0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # the centre moved 10 % of the way to the teacher's batch mean (the state the method saves)
    assert torch.allclose(loss.center.flatten(), 0.1 * torch.cat(t).mean(0), atol=1e-6)


def test_lightly_ibot_loss_equals_the_reference_with_a_zero_centre():
    from lightly.loss import IBOTPatchLoss

    g = torch.Generator().manual_seed(2)
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[2, 0, 1] = True
    t, s = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    got = IBOTPatchLoss(8, teacher_temp=0.05, student_temp=0.1)(t, s, mask, teacher_temp=0.05)
    want = patch_cross_entropy(F.softmax(t / 0.05, dim=-1), s, mask, 0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_lightly_koleo_against_nearest_neighbour_distances_by_hand():
    from lightly.loss import KoLeoLoss

    # unit vectors at 0, 90 and 45 degrees: nearest neighbours at angle 45 degrees for all three,
    # distance 2 sin(22.5 deg); the loss is -log of it
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # not normalised: KoLeo normalises
    d = 2 * math.sin(math.radians(22.5))
    assert KoLeoLoss()(x).item() == pytest.approx(-math.log(d), abs=1e-5)


# ------------------------------------------------------------------------------------- monitoring
def test_effective_rank_counts_spread_directions():
    g = torch.Generator().manual_seed(0)
    two = torch.zeros(400, 8)
    two[:, :2] = torch.randn(400, 2, generator=g)  # two independent directions of equal variance
    assert effective_rank(two) == pytest.approx(2.0, abs=0.1)
    assert effective_rank(torch.randn(50, 1, generator=g).repeat(1, 8)) == pytest.approx(1.0, abs=1e-3)  # collapse


def test_knn_probe_leaves_the_patient_out():
    # rows 0/1 are one patient with identical features: the kNN must not use one to predict the other
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    groups = np.array(["p", "p", "q", "r"])
    probs = knn_probe(feats, labels, groups, num_classes=2, k=1)
    assert probs[0].argmax() == 1 and probs[1].argmax() == 1  # their nearest other-patient row is row 2 (class 1)
    assert probs[2].argmax() == 0  # row 2's nearest other-patient row is row 0 or 1 (class 0)


# --------------------------------------------------------------------------------- teacher, mask token
def test_teacher_copy_owns_its_image_tower_and_shares_the_rest():
    from mammolens.models import create_model

    clip = create_model("tiny-clip", image_size=64)
    teacher = teacher_copy(clip)
    sv, tv = dict(clip.named_parameters()), dict(teacher.named_parameters())
    visual = [k for k in sv if k.startswith("clip.visual.")]
    assert visual and all(sv[k] is not tv[k] and torch.equal(sv[k], tv[k]) for k in visual)
    assert all(sv[k] is tv[k] for k in sv if not k.startswith("clip.visual."))  # text tower: no second copy
    assert not any(tv[k].requires_grad for k in visual) and all(sv[k].requires_grad for k in visual)


def test_mask_token_replaces_only_the_masked_patches():
    from lightly.models.modules import DINOProjectionHead

    from mammolens.models import create_model
    from mammolens.train.methods.pretrain import PretrainStep

    torch.manual_seed(0)
    clip = create_model("tiny-clip", image_size=64).eval()
    step = PretrainStep(clip, DINOProjectionHead(64, 16, 8, 8), DINOProjectionHead(64, 16, 8, 8))
    with torch.no_grad():
        step.mask_token.fill_(3.0)
        x = torch.rand(2, 1, 64, 64)
        plain = clip.encode_image_tokens(x, normalize=False)[1]  # no mask set: the hook does nothing
        mask = torch.zeros(2, 4, 4, dtype=torch.bool)
        mask[0, 1, 2] = True
        out = step(x, None, mask)
        step._mask = mask
        masked = clip.encode_image_tokens(x, normalize=False)[1]
        step._mask = None
        again = clip.encode_image_tokens(x, normalize=False)[1]
    assert out["patch"].shape == (1, 8)  # one masked token through the iBOT head
    assert torch.equal(plain, again)  # outside the student's masked forward the tower is unchanged
    assert torch.allclose(masked[1], plain[1], atol=1e-5)  # image 1 has no masked patch
    assert not torch.allclose(masked[0, 6], plain[0, 6], atol=1e-3)  # patch (1, 2) of image 0 became the token


# ------------------------------------------------------------------------------------ end to end
def test_pretrain_runs_and_resumes_bit_identically_with_running_centres(cache_dir, tmp_path):  # noqa: F811
    from test_method_contract import _assert_same, _lines

    mean = {"centering": "mean"}
    full = train(_pre_cfg(cache_dir, tmp_path / "full", mean), progress=False)
    part = train(_pre_cfg(cache_dir, tmp_path / "part", mean), stop_after=1, progress=False)
    part = train(_pre_cfg(cache_dir, tmp_path / "part", mean, resume=True), progress=False)
    a, b = load_checkpoint(full, "last"), load_checkpoint(part, "last")
    for key in ("state_dict", "heads", "method_state", "optimizer", "scheduler", "step"):
        _assert_same(a[key], b[key], key)
    assert _lines(full) == _lines(part)
    state = a["method_state"]
    assert state["step"] == 2 and set(state) >= {"teacher", "teacher_heads", "student_heads", "mask_token", "centers"}
    assert state["centers"]["dino"]["center"].abs().sum() > 0  # the running centre moved and is saved
    # the EMA teacher moved towards the student, but is not the student
    student = {k[len("clip.visual."):]: v for k, v in a["state_dict"].items() if k.startswith("clip.visual.")}
    first = load_checkpoint(part, "last")  # same as full
    assert any(not torch.equal(student[k], v) for k, v in state["teacher"].items())
    line = _lines(full)[-1]
    for key in ("train_dino", "train_ibot", "train_koleo", "train_agreement", "train_embed_std", "effective_rank",
                "knn_macro_auc", "val_macro_auc", "momentum"):
        assert key in line and math.isfinite(line[key]), key
    assert first["heads"][first["primary_head"]]["kind"] == "linear"  # the probe is the run's head


def test_pretrain_trains_a_cnn_tower_without_the_patch_term(cache_dir, tmp_path):  # noqa: F811
    cfg = _pre_cfg(cache_dir, tmp_path / "cnn", epochs=1, model="timm:resnet10t",
                   method={"name": "pretrain", "terms": {"ibot": 0.0}, "pretrain": SMALL})
    line = (train(cfg, progress=False) / "metrics.jsonl").read_text()
    assert '"train_dino"' in line and '"train_ibot"' not in line
    with pytest.raises(ValueError, match="ibot term needs a ViT"):
        train(_pre_cfg(cache_dir, tmp_path / "cnn2", epochs=1, model="timm:resnet10t"), progress=False)


def test_pretrain_config_defaults_to_pretrain_and_refuses_other_methods(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: tiny-clip\nepochs: 1\n")
    assert pretrain_config(plain).method == "pretrain"
    assert pretrain_config(plain, ["method.pretrain.local_crops=6"]).method_cfg.pretrain.local_crops == 6
    other = tmp_path / "other.yaml"
    other.write_text("model: tiny-clip\nmethod: contrastive\n")
    with pytest.raises(ValueError, match="not a pretraining method"):
        pretrain_config(other)


def test_pretrain_cli_prints_the_run_and_its_probes(cache_dir, tmp_path):  # noqa: F811
    import yaml
    from typer.testing import CliRunner

    from mammolens.cli import app

    cfg = _pre_cfg(cache_dir, tmp_path / "cli", epochs=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    res = CliRunner().invoke(app, ["pretrain", "--config", str(path)])
    assert res.exit_code == 0, res.output
    assert "run: " in res.output and "knn_macro_auc" in res.output and "pretrained: run:" in res.output


# ------------------------------------------------------------------------ the tower starts `train`
@pytest.fixture(scope="module")
def pretrained_run(cache_dir, tmp_path_factory):  # noqa: F811
    return train(_pre_cfg(cache_dir, tmp_path_factory.mktemp("pre") / "run", epochs=1), progress=False)


START = {"report-contrastive": {"batch_size": 4},
         "distill": {"method": {"name": "distill", "terms": {"cosine": 0.0, "similarity": 0.0}}},
         "pretrain": {"method": {"name": "pretrain", "pretrain": SMALL}}}


@pytest.mark.parametrize("method", list_methods())
def test_a_pretrained_tower_is_the_starting_point_of_every_method(cache_dir, tmp_path, pretrained_run, method):  # noqa: F811
    """With lr = 0 nothing moves: the run's backbone must be exactly the pretrained run's (loaded from run:PATH),
    and its lineage names that run."""
    kw = dict(method=method, epochs=1, max_steps_per_epoch=1, ood=False, probe_steps=2, lr=0.0, min_lr=0.0)
    kw.update(START.get(method, {}))
    run = train(_cfg(cache_dir, tmp_path / method, pretrained=f"run:{pretrained_run}", **kw), progress=False)
    src, ck = load_checkpoint(pretrained_run, "best"), load_checkpoint(run, "last")
    visual = [k for k in src["state_dict"] if k.startswith("clip.visual.")]
    assert visual and all(torch.equal(src["state_dict"][k], ck["state_dict"][k]) for k in visual)
    assert ck["lineage"]["towers"]["image"]["run"] == str(pretrained_run)
    from mammolens.models import create_model

    random = create_model("tiny-clip", image_size=64)
    assert not torch.equal(random.state_dict()[visual[0]], ck["state_dict"][visual[0]])


def test_a_pretrained_tower_loads_at_another_input_size_and_refuses_another_model(pretrained_run, tmp_path):
    from mammolens.models import create_model
    from mammolens.run.folder import load_checkpoint as load_ck

    big = create_model("tiny-clip", pretrained=f"run:{pretrained_run}", image_size=96)
    assert big.encode_image(torch.rand(1, 1, 96, 96)).shape == (1, 64)  # position embedding resized to 6 x 6
    src = load_ck(pretrained_run, "best")["state_dict"]
    same = create_model("tiny-clip", pretrained=f"run:{pretrained_run}", image_size=64)
    assert all(torch.equal(v, src[k]) for k, v in same.state_dict().items() if k in src)
    with pytest.raises(ValueError, match="was trained with model 'tiny-clip'"):
        create_model("timm:resnet10t", pretrained=f"run:{pretrained_run}")
    with pytest.raises(FileNotFoundError):
        create_model("tiny-clip", pretrained=f"run:{tmp_path / 'nothing'}")


def test_pretrain_runs_on_an_archive_without_labels(cache_dir, tmp_path):  # noqa: F811
    """No row has a label of the task (an unlabeled archive): pretraining uses every image; no probe, a prompt head."""
    task = {"name": "unlabelled", "label_column": "site", "class_names": ["x", "y"],
            "class_values": [["no-such-site-x"], ["no-such-site-y"]], "templates": ["a mammogram, {}"]}
    run = train(_pre_cfg(cache_dir, tmp_path / "nolabels", epochs=1, task=task), progress=False)
    from test_method_contract import _lines

    line = _lines(run)[0]
    assert math.isfinite(line["train_dino"]) and "knn_macro_auc" not in line and line["step"] == 1
    ck = load_checkpoint(run, "last")
    assert ck["heads"][ck["primary_head"]]["kind"] == "prompt" and ck["n_train"] == 0


def test_pretrain_settings_are_checked_and_round_trip(tmp_path):
    from mammolens.train.config import cfg_from_dict, load_cfg, save_cfg

    cfg = cfg_from_dict({"method": {"name": "pretrain", "pretrain": {"local_scale": [0.1, 0.4]}}},
                        ["method.pretrain.centering=mean"])
    assert cfg.method_cfg.pretrain.local_scale == [0.1, 0.4] and cfg.method_cfg.pretrain.centering == "mean"
    assert load_cfg(save_cfg(cfg, tmp_path / "c.yaml")) == cfg
    for bad, match in (({"centering": "median"}, "centering"), ({"local_scale": [0.6, 0.2]}, "local_scale"),
                       ({"global_crops": 1, "local_crops": 0}, "two crops"), ({"crops": 3}, "method.pretrain.crops")):
        with pytest.raises(ValueError, match=match):
            cfg_from_dict({"method": {"name": "pretrain", "pretrain": bad}})
