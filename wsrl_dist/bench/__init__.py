"""bench layer of wsrl_dist."""
