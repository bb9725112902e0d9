"""Label Studio ML backend: a thin adapter over dam_model."""
