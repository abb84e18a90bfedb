"""One typed config tree: dataclasses with a documented field each (``schema``), presets and
dotted overrides (``load``), allowed values (``validate``)."""
from .load import (CONFIG_DIR, REPO_ROOT, apply_values, config_from_dict, dump_yaml,
                   load_config, parse_overrides, read_yaml, resolve_preset, thawed, to_dict,
                   updated)
from .schema import (Config, ConfigError, DataConfig, EvalConfig, LogConfig, LossConfig, ModelConfig,
                     OptimConfig, TrainConfig, freeze, is_frozen)
from .validate import validate

__all__ = ["CONFIG_DIR", "REPO_ROOT", "Config", "ConfigError", "DataConfig", "EvalConfig",
           "LogConfig", "LossConfig", "ModelConfig", "OptimConfig", "TrainConfig", "apply_values",
           "config_from_dict", "dump_yaml", "freeze", "is_frozen", "load_config", "parse_overrides",
           "read_yaml", "resolve_preset", "thawed", "to_dict", "updated", "validate"]
