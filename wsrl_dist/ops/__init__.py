"""ops layer of wsrl_dist."""
