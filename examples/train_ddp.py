"""Data-parallel training of a structured MLP with ``torch.distributed`` (see docs/distributed.md).

One machine, two processes on the CPU (gloo)::

    torchrun --nproc-per-node 2 examples/train_ddp.py --structure low_rank --params 0.25

Two machines (run on each; ``--node-rank`` 0 and 1, ``MASTER`` = address of node 0)::

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint MASTER:29500 examples/train_ddp.py --strategy fsdp

Each process trains on its slice of every global batch (``DistributedSampler``); gradients are
averaged across processes, so the result matches single-process training on the global batch.
The task is regression onto a fixed random teacher network, generated identically on every rank
from ``--seed`` (nothing is downloaded). Rank 0 prints the loss and writes the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import structmat as sm
from structmat.nn.distributed import distribute


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--structure", default="low_rank", help="family for the hidden layers (structmat families)")
    parser.add_argument("--params", type=float, default=0.25, help="parameter budget per layer, fraction of dense")
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256, help="global batch size (split across processes)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="structured-mlp.safetensors", help="checkpoint written at the end")
    return parser.parse_args()


def make_data(samples: int, width: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(width, 64, generator=generator) / 8, torch.randn(16, width, generator=generator) / width**0.5]
    x = torch.randn(samples, 64, generator=generator)
    y = torch.tanh(x @ teacher[0].T) @ teacher[1].T
    return TensorDataset(x, y)


def make_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 16))


def main() -> None:
    args = parse_args()
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(args.seed)  # identical initialisation on every rank
    model = make_model(args.width)
    model, summary = sm.structurize(model, args.structure, include=["0", "2"], project=False, params=args.params, return_summary=True)
    model = distribute(model.to(device), args.strategy)
    optimizer = torch.optim.AdamW(sm.param_groups(model, lr=args.lr, weight_decay=args.weight_decay))
    if rank == 0:
        print(summary)
        print(f"{world} process(es), strategy {args.strategy}, device {device}")

    data = make_data(args.samples, args.width, args.seed)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch // world, sampler=sampler, drop_last=True)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, device=device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += torch.stack([loss.detach() * len(x), torch.tensor(float(len(x)), device=device)])
        dist.all_reduce(total)
        if rank == 0:
            print(f"epoch {epoch + 1}: train mse {float(total[0] / total[1]):.5f} ({time.perf_counter() - start:.1f} s)")
    sm.save(model, args.out)  # every rank calls it (FSDP gathers shards); rank 0 writes
    if rank == 0:
        print(f"checkpoint written to {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
