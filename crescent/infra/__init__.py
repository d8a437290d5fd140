"""What every stage stands on: engines, models, io, tracking, provenance, serving."""
