"""Iteration Influence-Aware Distillation (paper §4): measure influence, plan iterations, distil (docs/iiad.md).

``influence``: block / iteration influence (Eq. 12) over text segments; ``plan``: iteration plans (E-IIET, Lower
Bound, threshold, budget); ``distill``: the IIAD objective (Eq. 13-15) on the pretraining ``Trainer``; ``plots``: the
paper's Figures 4-6. Import the submodules directly (``distill`` pulls in the training package).
"""

from iiet.iiad.influence import Influence, compute_influence
from iiet.iiad.plan import Plan, make_plan

__all__ = ["Influence", "Plan", "compute_influence", "make_plan"]
