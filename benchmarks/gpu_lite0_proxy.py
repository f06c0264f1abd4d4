"""GPU throughput of EfficientNet-Lite0 training, as a proxy for train-image on a GPU worker.

Why a proxy: the lent GPU sandbox has Python 3.12, PyTorch and timm but no TensorFlow, and a
TensorFlow 2.15 wheel cannot be brought there, so the project's own Keras/Horovod job cannot run
on it. This measures the same network (timm's efficientnet_lite0, random weights: throughput does
not depend on them) at the job's settings: 224 px, bf16 autocast (the job's mixed precision),
(a) frozen backbone feature extraction (fold mode) and (b) fine-tuning of the upper blocks plus
head (final mode). Prints images/s; run: python3 benchmarks/gpu_lite0_proxy.py
"""
from __future__ import annotations

import json
import time

import timm
import torch


def bench(model: torch.nn.Module, batch: int, steps: int, train: bool) -> float:
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 15, (batch,), device="cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, 1e-4) if train else None
    model.train(train)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if train:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model.forward_features(x).mean((2, 3))

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "timm": timm.__version__}
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=15).cuda().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad = False
    for batch in (128, 512):
        results[f"frozen_features_batch{batch}_img_s"] = round(bench(model, batch, 30, train=False), 1)
    # Final mode: blocks from the upper half (the job's finetune_from_block=10 of 16) + head train.
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(("blocks.5", "blocks.6", "conv_head", "bn2", "classifier"))
    for batch in (64, 256):
        results[f"finetune_upper_batch{batch}_img_s"] = round(bench(model, batch, 30, train=True), 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
