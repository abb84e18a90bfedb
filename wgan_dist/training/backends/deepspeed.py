"""DeepSpeed ZeRO-1/2 (``train.backend=deepspeed``): the same objective and loop as DDP, other
step mechanics.

One DeepSpeed engine per network, each around the torch Adam the DDP path builds. What
differs from DDP, and why:

- **Forwards.** A ZeRO engine's forward hooks its output so that any backward through it runs
  ZeRO's gradient epilogue; the penalty's ``autograd.grad(create_graph=True)`` w.r.t. the
  *input* fills no parameter gradient and that epilogue fails (IndexError, docs/deepspeed.md).
  So the penalty's forward (``eager``) and the generator phase's critic forward (``frozen``,
  critic parameters frozen) go through ``engine.module``; only each network's own loss goes
  through its engine (``fwd``). Autograd sums every path into a parameter's gradient before
  its accumulation hook fires, so ZeRO still sees each gradient once.
- **Backward and step.** ``engine.backward`` / ``engine.step``: gradients are averaged over
  ranks (reduce-scatter under ZeRO-2), each rank updates its partition of the fp32 master
  weights and Adam state, and the updated weights are all-gathered.
- **Non-finite steps.** DeepSpeed skips a step whose global gradient norm (fp32) or
  gradients (bf16, fp16) are non-finite -- an all-reduced decision, the same on every rank.
  A non-finite *loss* on any rank is made every rank's: the loss is divided by
  (1 - any-rank-non-finite), i.e. by 1.0 (exact) or by 0, whose infinite gradients make
  DeepSpeed skip (and, under fp16, back the loss scale off, as the DDP path does).
- **Precision.** bf16 / fp16 as DeepSpeed does them (16-bit weights, fp32 master weights in
  the optimizer), from the DeepSpeed config or ``train.mixed_precision``. Floating inputs are
  cast to the weights' dtype by a forward pre-hook; the penalty differentiates w.r.t. the
  fp32 interpolates, so its norm is taken in fp32 (the penalty recipe).
- **Checkpoints.** The whole model's fp32 master weights and Adam state are gathered from
  the partitions into torch Adam's own layout (``ZeroOptimizer``): the project's single-file
  checkpoint, the same as a DDP run's, so a DeepSpeed run resumes under DDP and back, on any
  number of processes. Gathering is a collective: every rank calls ``state_dict``.

Settings: the ZeRO stage, precision and every refusal are settled here, once, by
``resolve`` -- before the config is validated and frozen -- from whichever source gave them
(an Accelerate DeepSpeed launch, ``train.zero_stage``, the DeepSpeed config file).

Private DeepSpeed attributes are read in ``deepspeed_state`` only (deepspeed 0.19.8);
tests/test_deepspeed.py exercises them for real.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ...config import Config, ConfigError
from ... import ranks
from ..checkpoint import load_module_state
from ..ema import EMA
from ..networks import Network, adam, init_models, load_optimizer_state, use_fused_adam
from .base import MicroBatch, Stats, split
from .deepspeed_state import ZeroOptimizer

OFFLOAD_REFUSED = (
    "DeepSpeed CPU/NVMe offload is not supported: it is not proven equal to the DDP path here "
    "(on a CPU-only machine there is nothing to offload to, and no GPU was available to test "
    "it); remove offload_optimizer / offload_param (docs/deepspeed.md)")
ZERO3_REFUSED = (
    "ZeRO-3 partitions the parameters themselves and gathers each layer only around its own "
    "forward and backward, but the gradient penalty's create_graph=True graph runs a second "
    "backward through the critic's layers after the first has released them; use "
    "train.zero_stage=1 or 2 (docs/deepspeed.md)")
WHAT = {1: "optimizer state partitioned", 2: "optimizer state and gradients partitioned"}
LAUNCH_ENV = "ACCELERATE_USE_DEEPSPEED"


def launcher_settings() -> dict[str, str | None] | None:
    """What `accelerate launch` with a DeepSpeed Accelerate config handed this process (it
    sets ACCELERATE_USE_DEEPSPEED and ACCELERATE_DEEPSPEED_* from the config's
    ``deepspeed_config``), or None for any other launch; it routes the run to this backend.
    Values are the launcher's strings, absent -> None."""
    env = os.environ
    if env.get(LAUNCH_ENV, "false").lower() != "true":
        return None
    names = {"zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
             "config_file": "ACCELERATE_DEEPSPEED_CONFIG_FILE",
             "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
             "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
             "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
             "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING"}
    return {key: (None if env.get(var, "none").lower() in ("none", "") else env[var])
            for key, var in names.items()}


# ------------------------------------------------------------------ settings
def read_config_file(path: str) -> dict:
    """A DeepSpeed config from a JSON or YAML file, as a dict (one-line error otherwise)."""
    import yaml

    from ...config.load import load_yaml_text, read_config_text

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"train.deepspeed_config={path!r}: no such file")
    try:  # the same limits as our own configs: 1 MiB, safe tags, no aliases
        text = read_config_text(p)
        values = json.loads(text) if p.suffix == ".json" else load_yaml_text(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a DeepSpeed JSON/YAML config ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a mapping, got {type(values).__name__}")
    return values


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and str(section.get("enabled", False)).lower() == "true"


def _check_file(ds: dict, where: str) -> None:
    """Refuse what the trainer owns or cannot prove equal to DDP, one line each."""
    zero = ds.get("zero_optimization") or {}
    for key in ("offload_optimizer", "offload_param"):
        if str((zero.get(key) or {}).get("device", "none")).lower() not in ("none", ""):
            raise ConfigError(f"{where}: zero_optimization.{key}: {OFFLOAD_REFUSED}")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{where}: remove the {key!r} section: the trainer builds torch Adam "
                              f"from optim.lr_g, optim.lr_d, optim.beta1, optim.beta2, as under DDP")
    if float(ds.get("gradient_clipping", 0) or 0) > 0:
        raise ConfigError(f"{where}: gradient_clipping: the DDP path does not clip, so a clipped "
                          f"step would be another objective; remove it")
    if int(ds.get("gradient_accumulation_steps", 1) if ds.get("gradient_accumulation_steps")
           not in (None, "auto") else 1) != 1:
        raise ConfigError(f"{where}: gradient_accumulation_steps must be 1 under train.backend="
                          f"deepspeed (one optimizer step per phase)")
    for key in ("torch_autocast", "amp"):
        if _enabled(ds.get(key)):
            raise ConfigError(f"{where}: {key}: not supported; use bf16.enabled or fp16.enabled "
                              f"(or train.mixed_precision)")
    if _enabled(ds.get("bf16")) and _enabled(ds.get("fp16")):
        raise ConfigError(f"{where}: bf16 and fp16 are both enabled; choose one")
    if str((ds.get("bf16") or {}).get("check_grad_overflow", True)).lower() == "false" or \
            str(zero.get("compute_grad_norm", True)).lower() == "false":
        raise ConfigError(f"{where}: check_grad_overflow / compute_grad_norm false: DeepSpeed would "
                          f"then apply non-finite steps, which every backend skips")


def _check_launcher(launcher: dict) -> None:
    where = "the Accelerate DeepSpeed config"
    for key in ("offload_optimizer_device", "offload_param_device"):
        if launcher.get(key):
            raise ConfigError(f"{where}: {key}={launcher[key]}: {OFFLOAD_REFUSED}")
    if launcher.get("gradient_accumulation_steps") not in (None, "1"):
        raise ConfigError(f"{where}: gradient_accumulation_steps="
                          f"{launcher['gradient_accumulation_steps']}: must be 1 (one optimizer "
                          f"step per phase)")
    if launcher.get("gradient_clipping") not in (None, "0", "0.0"):
        raise ConfigError(f"{where}: gradient_clipping={launcher['gradient_clipping']}: the DDP "
                          f"path does not clip, so a clipped step would be another objective")


def _as_stage(value: Any, source: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: ZeRO stage {value!r} is not a number; choose 1 or 2") from None


def resolve(cfg: Config, launcher: dict | None) -> list[str]:
    """Route and settle the DeepSpeed settings in ``cfg`` (in place), before anything is built;
    the notes to print. ``launcher`` (``launcher_settings()``): what an `accelerate
    launch` with a DeepSpeed config passed; it routes the run to this backend. ZeRO stage:
    the launcher's, else train.zero_stage, else the DeepSpeed config file's, else 2."""
    t, notes = cfg.train, []
    if launcher is not None:
        _check_launcher(launcher)
        if t.backend != "deepspeed":
            notes.append(f"note: an Accelerate DeepSpeed launch: train.backend {t.backend} -> deepspeed")
        t.backend = "deepspeed"
        if launcher.get("config_file"):
            t.deepspeed_config = launcher["config_file"]
    if t.backend != "deepspeed":
        return notes
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("train.backend=deepspeed needs the deepspeed package: "
                          "pip install -c constraints.txt -e \".[deepspeed]\"")
    ds = read_config_file(t.deepspeed_config) if t.deepspeed_config else {}
    where = t.deepspeed_config or "the DeepSpeed config"
    _check_file(ds, where)
    file_stage = (ds.get("zero_optimization") or {}).get("stage")
    chosen = [(v, k) for v, k in (((launcher or {}).get("zero_stage"), "the Accelerate config"),
              (t.zero_stage or None, "train.zero_stage"), (file_stage, where)) if v is not None]
    chosen = [(_as_stage(v, k), k) for v, k in chosen]
    stage, source = chosen[0] if chosen else (2, "the default")
    notes += [f"note: ZeRO stage {stage} from {source} (not {v} from {k})"
              for v, k in chosen[1:] if v != stage]
    if stage not in (1, 2):
        # One refusal for every source, naming the one that asked.
        named = {"train.zero_stage": "train.zero_stage", "the Accelerate config":
                 "the Accelerate config: zero_stage"}.get(source, f"{source}: zero_optimization.stage")
        why = ZERO3_REFUSED if stage == 3 else ("choose 1 or 2 (without ZeRO, use "
                                                "train.backend=ddp)")
        raise ConfigError(f"{named}={stage}: {why}")
    t.zero_stage = stage
    precision = "bf16" if _enabled(ds.get("bf16")) else "fp16" if _enabled(ds.get("fp16")) else "no"
    if precision != "no" and t.mixed_precision not in ("no", precision):
        raise ConfigError(f"train.mixed_precision={t.mixed_precision} but {where} enables "
                          f"{precision}; make them agree")
    t.mixed_precision = precision if precision != "no" else t.mixed_precision
    if t.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("fp16 under train.backend=deepspeed needs a GPU: DeepSpeed's CPU "
                          "accelerator has no fp16 (\"Type fp16 is not supported on your "
                          "device\"); use bf16 here")
    _check_training(cfg)
    return notes


def _check_training(cfg: Config) -> None:
    """What this trainer does not do under DeepSpeed, one line each."""
    t = cfg.train
    refused = {"train.micro_batch": (t.micro_batch, t.micro_batch, "DeepSpeed accumulates with "
                                     "its own gradient_accumulation_steps, which this trainer does not drive"),
               "train.grad_comm": (t.grad_comm != "fp32", t.grad_comm, "DeepSpeed reduces gradients "
                                   "itself (communication_data_type in the DeepSpeed config)"),
               "train.compile": (t.compile, t.compile, "not tested with DeepSpeed engines")}
    for key, (bad, value, why) in refused.items():
        if bad:
            raise ConfigError(f"{key}={value!r} is not supported with train.backend=deepspeed: {why}")


def engine_config(cfg: Config, world: int) -> dict:
    """The DeepSpeed config of both engines: the file's, with the batch sizes, ZeRO stage and
    precision of this run (a file that disagrees about the batch is refused)."""
    t = cfg.train
    ds = copy.deepcopy(read_config_file(t.deepspeed_config)) if t.deepspeed_config else {}
    ours = {"train_batch_size": t.batch_size, "train_micro_batch_size_per_gpu": t.batch_size // world,
            "gradient_accumulation_steps": 1}
    for key, value in ours.items():
        if ds.get(key) not in (None, "auto", value):
            raise ConfigError(f"{t.deepspeed_config}: {key}={ds[key]} but this run has {value} "
                              f"(train.batch_size={t.batch_size} over {world} processes); remove it")
        ds[key] = value
    ds["zero_optimization"] = {**(ds.get("zero_optimization") or {}), "stage": t.zero_stage}
    ds["bf16"] = {**(ds.get("bf16") or {}), "enabled": t.mixed_precision == "bf16"}
    ds["fp16"] = {**(ds.get("fp16") or {}), "enabled": t.mixed_precision == "fp16"}
    if t.mixed_precision != "no":
        # Buffers in the weights' 16-bit type too (DeepSpeed keeps them fp32 by default): batch
        # norm refuses a 16-bit weight beside fp32 running statistics ("expected scalar type
        # BFloat16 but found Float"). The EMA generator and the checkpoints hold them in fp32.
        ds["data_types"] = {"buffer_dtype": t.mixed_precision, **(ds.get("data_types") or {})}
    if t.mixed_precision == "fp16":
        # The DDP path's initial 2**10 (backends.ddp.accelerator says why not 2**16).
        ds["fp16"].setdefault("initial_scale_power", 10)
    # DeepSpeed's default gradient_clipping is 1.0 (deepspeed/runtime/constants.py, 0.19.8): it
    # would rescale every critic gradient to norm 1, another objective. A file's > 0 is refused.
    ds["gradient_clipping"] = 0.0
    ds.setdefault("steps_per_print", 2**31 - 1)  # DeepSpeed's own progress lines: off
    return ds


def _cast_inputs(dtype: torch.dtype) -> Callable:
    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        def cast(v: Any) -> Any:
            return v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
    return hook


def _float_outputs(module: Any, args: tuple, output: Any) -> Any:
    """16-bit outputs back to fp32, as autocast's do for the loss: the losses, the penalty's
    interpolates between fakes and fp32 reals, and its norm are computed in fp32."""
    if isinstance(output, tuple):
        return tuple(o.float() if torch.is_tensor(o) and o.is_floating_point() else o for o in output)
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


def _engine(module: torch.nn.Module, opt: torch.optim.Optimizer, conf: dict) -> Any:
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=copy.deepcopy(conf))
    dtype = next(engine.module.parameters()).dtype
    if dtype != torch.float32:  # every caller (engine, penalty, diagnostics) alike
        engine.module.register_forward_pre_hook(_cast_inputs(dtype), with_kwargs=True)
        engine.module.register_forward_hook(_float_outputs)
    return engine


def _one_process_without_launcher() -> None:
    """`python -m wgan_dist.train train.backend=deepspeed` with no launcher: DeepSpeed would
    ask MPI (mpi4py) for the rank; it gets the environment of a 1-process group instead."""
    import os
    import socket

    import torch.distributed as dist

    if dist.is_initialized() or "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def accelerator(cfg: Config) -> Accelerator:
    """The plain process group the engines run on, without autocast (the engines do the
    precision and the gradient reduction). An Accelerate DeepSpeed launch sets
    ACCELERATE_USE_DEEPSPEED; it is hidden while the Accelerator is built, so that it forms the
    plain group: its DeepSpeed plugin needs `transformers` and on a CPU forms no DeepSpeed
    group (docs/deepspeed.md)."""
    launched = os.environ.pop(LAUNCH_ENV, None)
    try:
        acc = ranks.make_accelerator("no", timeout=cfg.train.collective_timeout)
    finally:
        if launched is not None:
            os.environ[LAUNCH_ENV] = launched
    if acc.distributed_type == DistributedType.DEEPSPEED:
        raise RuntimeError("Accelerate formed a DeepSpeed state: the trainer builds its DeepSpeed "
                           "engines itself (train.backend=deepspeed, docs/deepspeed.md) on a plain "
                           "process group")
    return acc


class ZeroBackend:
    """One ZeRO engine per network, around the torch Adam the DDP backend builds."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.acc = accelerator(cfg)
        self.fused_adam = False

    def build(self, cfg: Config, say: Callable[[str], None]) -> tuple[Network, Network, EMA]:
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines, per rank
        _one_process_without_launcher()
        self.cfg, acc = cfg, self.acc
        g, d, ema = init_models(cfg, acc.device)
        fused = use_fused_adam(cfg, acc.device, say)
        conf = engine_config(cfg, acc.num_processes)
        nets = []
        for module, lr in ((g, cfg.optim.lr_g), (d, cfg.optim.lr_d)):
            engine = _engine(module.to(acc.device), adam(module, lr, cfg, fused), conf)
            raw = engine.module
            nets.append(Network(raw, engine, raw, raw, ZeroOptimizer(engine, raw), engine))
        return nets[0], nets[1], ema

    def describe(self) -> str:
        stage = self.cfg.train.zero_stage
        return f", DeepSpeed ZeRO-{stage} ({WHAT.get(stage, '?')} over {self.acc.num_processes} process(es))"

    # ------------------------------------------------------------------ a step
    def loss_scale(self, net: Network) -> float:
        """fp16's dynamic loss scale, else 1."""
        return float(net.opt.zero.loss_scale) if net.handle.fp16_enabled() else 1.0

    def micro_batches(self, net: Network, batch: int) -> list[MicroBatch]:
        return split(batch, 0, lambda: None)  # one piece: train.micro_batch is refused

    def backward(self, net: Network, loss: torch.Tensor, mb: MicroBatch) -> None:
        bad = (~torch.isfinite(loss.detach())).float()
        if self.acc.num_processes > 1:
            bad = self.acc.reduce(bad, reduction="sum").clamp_(max=1.0)
        net.handle.backward(loss / (1.0 - bad))  # / 1.0 is exact; / 0 makes DeepSpeed skip everywhere

    def step(self, net: Network, loss: torch.Tensor, stats: Stats) -> None:
        engine = net.handle
        engine.step()
        stats["skipped_steps"] = torch.tensor(0.0 if engine.was_step_applied() else 1.0,
                                              device=loss.device)

    # ------------------------------------------------------------------ state
    @staticmethod
    def _weights(net: Network) -> dict[str, torch.Tensor]:
        """The fp32 master weights (gathered: a collective) and the buffers, in fp32."""
        state = {k: v.float() if v.is_floating_point() else v for k, v in net.raw.state_dict().items()}
        names = [n for n, _ in net.raw.named_parameters()]
        state.update(zip(names, net.opt.master_weights()))
        return state

    def state_dict(self, G: Network, D: Network) -> dict[str, Any]:
        return {"G": self._weights(G), "D": self._weights(D),
                "opt_G": G.opt.state_dict(), "opt_D": D.opt.state_dict(), "scaler": {}}

    def load_state_dict(self, G: Network, D: Network, state: dict[str, Any], where: str) -> None:
        for net, key, what in ((G, "G", "generator"), (D, "D", "critic")):
            load_module_state(net.raw, state[key], what, where)
            net.opt.set_master_weights([state[key][n] for n, _ in net.raw.named_parameters()])
        load_optimizer_state(G.opt, state["opt_G"])
        load_optimizer_state(D.opt, state["opt_D"])
