"""Caption metrics: n-gram scores and grounded scene scores."""
