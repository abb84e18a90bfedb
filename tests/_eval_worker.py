"""Run under 1 or 2 processes: evaluate a fixed generator with the training-time monitor and
write rank 0's numbers (and the world size) as JSON. Used by test_evaluate.

    _eval_worker.py SHARDS OUT [cond]    cond: a conditional generator (8 classes) scored by
                                         the domain classifier (cls_acc on requested labels)"""
import json
import sys
from pathlib import Path

import torch

from wgan_dist import ranks as dist
from wgan_dist.config import load_config
from wgan_dist.nets import Generator
from wgan_dist.training.monitor import QualityMonitor

shards, out = sys.argv[1], Path(sys.argv[2])
cond = sys.argv[3:] == ["cond"]
acc = dist.make_accelerator("no")
extra = ["model.conditional=true", "model.num_classes=8", "eval.classifier=true",
         "eval.classifier_steps=20"] if cond else []
cfg = load_config(None, ["eval.num=60", "model.latent_dim=16", *extra])
torch.manual_seed(0)  # the same generator on every rank and in every world size
g = Generator(28, 1, latent_dim=16, width=8, num_classes=8 if cond else 0).eval()
monitor = QualityMonitor(acc, cfg, dist.NullWriter(), out.parent, Path(shards))
result = monitor.evaluate(g, step=1, nimg=0)
if acc.is_main_process:
    out.write_text(json.dumps({"world": acc.num_processes, **result}))
acc.wait_for_everyone()
acc.end_training()
