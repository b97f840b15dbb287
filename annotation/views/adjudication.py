"""Pages: adjudication."""

urlpatterns = []
