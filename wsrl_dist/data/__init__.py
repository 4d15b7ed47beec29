"""data layer of wsrl_dist."""
