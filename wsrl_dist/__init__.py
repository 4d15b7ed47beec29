"""wsrl_dist: warm-start RL (WSRL) fine-tuning as a distributed actor-learner system on Ray.

Importing the package never imports ray: the algorithm, data and env layers are usable alone.
"""

__version__ = "0.1.0"
