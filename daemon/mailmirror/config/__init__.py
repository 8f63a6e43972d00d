"""Configuration: YAML files to validated, typed models with file:line errors; secret references; pair sets;
provider presets; the imapsync converter. Imports no runtime part."""
