"""Celery workers: data assembly, LightFM training, evaluation, callback delivery."""
