"""Code that both the API and the workers load: config, contracts, storage, registry, errors."""
