"""algo layer of wsrl_dist."""
