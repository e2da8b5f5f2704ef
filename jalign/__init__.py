"""jalign: a JAX research framework for preference-alignment objectives."""
