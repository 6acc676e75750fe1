"""Task packages. Importing one registers its datasets, spaces, models and modules in core's registries."""
