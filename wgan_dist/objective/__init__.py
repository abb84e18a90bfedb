"""The objective: what is minimised, never when.

``losses`` holds the pure loss functions (critic and generator losses, the gradient penalty
and its per-sample norms, drift, the auxiliary classifier); ``phases`` composes them into the
objective of one critic or one generator phase. The training loop only calls phases.
"""
from .phases import critic_phase, generator_phase

__all__ = ["critic_phase", "generator_phase"]
