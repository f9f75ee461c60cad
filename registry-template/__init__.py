"""The skeleton of a new registry, shipped as package data (see ptm.registry.template_dir)."""
