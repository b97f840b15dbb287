from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/live/", consumers.ProjectLiveConsumer.as_asgi()),
    path("ws/projects/<int:project_id>/models/live/", consumers.ModelsLiveConsumer.as_asgi()),
]
