"""LRP composites: which rule each layer gets, by kind and position, as zennit's composites of
the same names assign them (Montavon et al. 2019, section 10.2; Kohlbrenner et al. 2020).

| composite | first layer | convolutions | dense layers |
|---|---|---|---|
| `epsilon_plus_flat` (default) | Flat (conv or dense) | ZPlus | Epsilon |
| `epsilon_gamma_box` | ZBox(low, high) (first conv) | Gamma(gamma) | Epsilon |
| `epsilon_alpha2_beta1_flat` | Flat (conv or dense) | AlphaBeta(2, 1) | Epsilon |
| `epsilon_plus` | - | ZPlus | Epsilon |
| `epsilon_alpha2_beta1` | - | AlphaBeta(2, 1) | Epsilon |
| `epsilon` | - | Epsilon | Epsilon (epsilon=0: LRP-0) |

In every composite: sums of branches and average pools get Norm (the stabilizer as epsilon),
element-wise activations and BatchNorms that could not be folded get Pass. "First layer" is
the first conv or dense layer the forward runs. A user's `rules={name: Rule}` wins over the
composite for the layers it names (a container's name covers the layers inside it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, Rule, ZBox, ZPlus

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat", "epsilon_plus",
              "epsilon_alpha2_beta1", "epsilon")


@dataclass(frozen=True)
class Composite:
    """A composite's rules, with its parameters filled in."""

    name: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    stabilizer: float = 1e-6
    low: tuple | float = 0.0   # in the network's input units (normalised)
    high: tuple | float = 1.0

    def rule(self, kind: str, first: bool) -> Rule:
        """The rule for a layer of `kind` ("conv", "dense", "pool", "sum", "activation",
        "batchnorm"); `first`: it is the first conv or dense layer of the forward."""
        eps, stab = self.epsilon, self.stabilizer
        if kind in ("pool", "sum"):
            return Norm(stab)
        if kind in ("activation", "batchnorm"):
            return Pass()
        name = self.name
        if first and name in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
            return Flat(stab)
        if first and name == "epsilon_gamma_box" and kind == "conv":
            return ZBox(self.low, self.high, stab)
        if kind == "dense" or name == "epsilon":
            return Epsilon(eps)
        if name in ("epsilon_plus_flat", "epsilon_plus"):
            return ZPlus(stab)
        if name == "epsilon_gamma_box":
            return Gamma(self.gamma, stab)
        return AlphaBeta(2.0, 1.0, stab)
