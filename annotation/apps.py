from django.apps import AppConfig


def _forget_places(sender, instance, **kwargs):
    from . import queue

    queue.forget_places(instance.pk)


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete

        # a deleted user's places in the queue go with them (SQLite may give a new user the same id)
        post_delete.connect(_forget_places, sender=get_user_model(), dispatch_uid="annotation.forget_places")
