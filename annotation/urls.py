"""Page URLs. Each view module keeps its own `urlpatterns`; they are joined here."""

from .views import adjudication, exports, imports, models, projects, review

urlpatterns = [
    *projects.urlpatterns,
    *review.urlpatterns,
    *adjudication.urlpatterns,
    *imports.urlpatterns,
    *exports.urlpatterns,
    *models.urlpatterns,
]
