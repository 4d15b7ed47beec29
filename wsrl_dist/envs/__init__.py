"""envs layer of wsrl_dist."""
