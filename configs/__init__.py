"""Built-in scenario configs (YAML), shipped as package data so `rmio ... halfcheetah_6x1` works
anywhere."""
