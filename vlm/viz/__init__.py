"""Pictures: attention heat-maps and caption galleries (matplotlib, Agg)."""
