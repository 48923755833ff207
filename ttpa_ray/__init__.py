"""ttpa_ray."""
