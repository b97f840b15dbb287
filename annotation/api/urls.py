"""API URLs, mounted under /api/. Every view class declares `required_capability`."""

from django.urls import path

from . import views

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("kinds/", views.KindListView.as_view(), name="api-kinds"),
    path("kinds/<str:name>/", views.KindDetailView.as_view(), name="api-kind"),
    path("projects/", views.ProjectListView.as_view(), name="api-projects"),
    path("projects/<int:project_id>/", views.ProjectDetailView.as_view(), name="api-project"),
    path("projects/<int:project_id>/stats/", views.ProjectStatsView.as_view(), name="api-project-stats"),
    path("projects/<int:project_id>/members/", views.MemberListView.as_view(), name="api-members"),
    path("projects/<int:project_id>/members/<int:membership_id>/", views.MemberDetailView.as_view(),
         name="api-member"),
    path("projects/<int:project_id>/items/", views.ItemListView.as_view(), name="api-items"),
    path("projects/<int:project_id>/items/<int:item_id>/", views.ItemDetailView.as_view(), name="api-item"),
    path("projects/<int:project_id>/items/<int:item_id>/answer/", views.AnswerView.as_view(),
         name="api-item-answer"),
    path("projects/<int:project_id>/items/<int:item_id>/skip/", views.SkipView.as_view(), name="api-item-skip"),
    path("projects/<int:project_id>/items/<int:item_id>/adjudicate/", views.AdjudicateView.as_view(),
         name="api-item-adjudicate"),
    path("projects/<int:project_id>/next/", views.NextItemView.as_view(), name="api-next"),
    path("projects/<int:project_id>/disagreements/", views.DisagreementListView.as_view(),
         name="api-disagreements"),
    path("projects/<int:project_id>/answers/<int:answer_id>/review/", views.ReviewAnswerView.as_view(),
         name="api-answer-review"),
    path("projects/<int:project_id>/imports/", views.ImportListView.as_view(), name="api-imports"),
    path("projects/<int:project_id>/imports/<int:job_id>/", views.ImportDetailView.as_view(), name="api-import"),
    path("projects/<int:project_id>/export/", views.ExportView.as_view(), name="api-export"),
    path("projects/<int:project_id>/audit/", views.AuditListView.as_view(), name="api-audit"),
    path("projects/<int:project_id>/runs/", views.RunListView.as_view(), name="api-runs"),
    path("projects/<int:project_id>/runs/<int:run_id>/", views.RunDetailView.as_view(), name="api-run"),
    path("projects/<int:project_id>/runs/<int:run_id>/cancel/", views.RunCancelView.as_view(), name="api-run-cancel"),
    path("projects/<int:project_id>/versions/", views.VersionListView.as_view(), name="api-versions"),
    path("projects/<int:project_id>/versions/<int:version_id>/", views.VersionDetailView.as_view(),
         name="api-version"),
    path("projects/<int:project_id>/versions/<int:version_id>/promote/", views.VersionPromoteView.as_view(),
         name="api-version-promote"),
]
