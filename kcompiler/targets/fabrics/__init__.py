"""Interconnect presets (interconnects.toml), read by kcompiler.targets.interconnect."""
