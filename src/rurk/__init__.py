"""rurk: robust machine unlearning for image classifiers.

Data flows one way through the package::

    scenario (TOML) -> data -> split -> Original / Re-train (cached) -> method -> audit + metrics -> report

Every input tensor is in [0, 1] pixel space; normalisation lives inside the models, so perturbation
strengths (tau) are in pixel units.
"""

__version__ = "0.1.0"
