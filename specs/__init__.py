"""Package data: the specs of the committed catalogue, their JSON Schema, and the sweep specs."""
