"""The weighted contrastive loss under torch.distributed (two gloo processes on CPU).

Each rank holds part of a global batch (uneven sizes, 3 and 2). The gathered loss must equal the
single-process full-batch loss (also when each rank pads to a fixed size and
the padding stays as unlabelled rows), and after DDP-style gradient averaging (divide by world size) the
gradients of the image embeddings, the text embeddings and the logit scale must equal the full-batch ones.
"""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mammolens.losses import WeightedContrastiveLoss

WORLD = 2
SPLITS = (3, 2)


def _data():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(sum(SPLITS), 8, generator=g), dim=-1)  # [5, 8]
    txt = F.normalize(torch.randn(3, 8, generator=g), dim=-1)  # [3, 8]
    labels = torch.tensor([0, 2, 0, 1, 0])
    modality = torch.tensor([0, 2, 1, 0, 2])
    return img, txt, labels, modality


def _loss_fn(pad_to=None):
    return WeightedContrastiveLoss(class_weights=torch.tensor([0.5, 2.0, 1.0]), modality_weights={"DBT": 2.0},
                                   gather_pad_to=pad_to)


def _full_batch():
    img, txt, labels, modality = _data()
    img, txt = img.requires_grad_(True), txt.requires_grad_(True)
    scale = torch.tensor(2.5, requires_grad=True)
    loss = _loss_fn()(img, txt, labels, scale, modality=modality)
    loss.backward()
    return loss.detach(), img.grad, txt.grad, scale.grad


def _worker(rank, init_file, out_dir, pad_to):
    # file rendezvous: no TCP port to race for with other tests running at the same time
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        img, txt, labels, modality = _data()
        start = sum(SPLITS[:rank])
        rows = slice(start, start + SPLITS[rank])
        local = img[rows].clone().requires_grad_(True)
        txt = txt.clone().requires_grad_(True)
        scale = torch.tensor(2.5, requires_grad=True)
        loss = _loss_fn(pad_to)(local, txt, labels[rows], scale, modality=modality[rows])
        loss.backward()
        torch.save({"loss": loss.detach(), "img": local.grad, "txt": txt.grad, "scale": scale.grad},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pad_to", [None, 4], ids=["exchange-sizes", "fixed-pad"])
def test_distributed_loss_and_grads_equal_full_batch(tmp_path, monkeypatch, pad_to):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only; inherited by the spawned ranks
    for attempt in range(2):  # a rank killed by a signal is an infrastructure flake: start once more
        run = tmp_path / f"attempt{attempt}"
        run.mkdir()
        try:
            mp.spawn(_worker, args=(str(run / "rendezvous"), str(run), pad_to), nprocs=WORLD, join=True)
            break
        except mp.ProcessExitedException:
            if attempt:
                raise
    tmp_path = run
    loss, img_grad, txt_grad, scale_grad = _full_batch()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        assert torch.allclose(res["loss"], loss, atol=1e-6)
        start = sum(SPLITS[:r])
        # every rank computes the global loss; all_gather's backward sums over ranks, DDP divides by WORLD
        assert torch.allclose(res["img"] / WORLD, img_grad[start:start + SPLITS[r]], atol=1e-6)
    # text tower and logit scale: DDP averages the ranks' gradients
    assert torch.allclose(sum(res["txt"] for res in results) / WORLD, txt_grad, atol=1e-6)
    assert torch.allclose(sum(res["scale"] for res in results) / WORLD, scale_grad, atol=1e-6)
