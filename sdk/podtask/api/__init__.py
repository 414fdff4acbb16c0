"""podtask's resource API: models (the source of truth), durations, machine presets, CRDs."""
