"""Multi-process pieces on the CPU with the gloo backend and 2 real processes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TEST_SYNTHETIC_CACHE, TINY_DRAWS
from paramcrop.distributed import DistInfo, gather, gather_with_grad, shard
from paramcrop.frameworks.simclr import nt_xent_loss

B, D, WORLD = 4, 8, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        local1 = z1[rank * B:(rank + 1) * B].clone().requires_grad_()
        local2 = z2[rank * B:(rank + 1) * B].clone().requires_grad_()
        loss = nt_xent_loss(gather_with_grad(local1), gather_with_grad(local2), 0.5)
        loss.backward()
        grads = torch.cat([local1.grad, local2.grad], 1)
        out[rank] = (loss.item(), grads.tolist(), gather(local1.detach()).tolist())
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b():
    torch.manual_seed(0)
    z1, z2 = torch.randn(WORLD * B, D), torch.randn(WORLD * B, D)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(free_port(), z1, z2, out), nprocs=WORLD, join=True)

    full1, full2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = nt_xent_loss(full1, full2, 0.5)
    loss.backward()
    for rank in range(WORLD):
        rank_loss, rank_grads, gathered = out[rank]
        assert rank_loss == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(torch.tensor(gathered), z1)  # rank order = global order
        # every rank computes the same global loss, so all_gather's backward (a sum over ranks)
        # gives each rank W x the single-process gradient of its slice; DDP's averaging over the
        # W ranks then yields exactly the single-process parameter gradient
        want = torch.cat([full1.grad, full2.grad], 1)[rank * B:(rank + 1) * B] * WORLD
        torch.testing.assert_close(torch.tensor(rank_grads), want, rtol=1e-5, atol=1e-7)


def test_single_process_gather_is_identity_and_shard_slices():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x and gather(x) is x
    assert shard(list(range(8)), DistInfo(rank=1, world_size=2)) == [4, 5, 6, 7]
    assert shard(list(range(8)), DistInfo()) == list(range(8))


def test_paramcrop_train_under_torchrun_two_cpu_processes(tmp_path):
    """2 gloo ranks train together; only rank 0 talks to MLflow: one run, FINISHED, with its metrics."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PARAMCROP_CACHE": str(TEST_SYNTHETIC_CACHE)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cli",
               "train", "--data", "synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2",
               "--device", "cpu", "--steps", "3", "--batch-size", "4", "--crop", "paramcrop", "--no-progress",
               "--set", "data.size=32", "--set", "data.stride=1", "--set", "view.size=32", "--set", "log_every=1", "--set", "visualize_at=0",
               "--set", "eval.linear=false", "--set", "eval.retrieval=false", "--set", f"eval.draw_per_class={TINY_DRAWS}", "--experiment", "ddp"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert "eval/knn_top1" in runs[0].data.metrics
