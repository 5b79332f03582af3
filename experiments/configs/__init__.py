"""ml_collections configuration files: ``get_config()`` in each."""
