"""The data path of a transition: rollout -> wire -> replay -> feed -> learner -> weights -> rollout
(runtime/__init__.py draws it)."""
