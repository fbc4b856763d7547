"""Lifecycle's Celery side: `celery -A workers worker | beat | flower`."""

from workers.app import app, create_app

__all__ = ['app', 'create_app']
