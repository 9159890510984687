from __future__ import annotations

from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from apps.api import views

router = DefaultRouter()
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("models", views.ModelImageViewSet, basename="model")
router.register("experiments", views.ExperimentViewSet, basename="experiment")
router.register("runs", views.RunViewSet, basename="run")
router.register("hosts", views.HostViewSet, basename="host")
router.register("comparisons", views.ComparisonViewSet, basename="comparison")

urlpatterns = [
    path("leaderboard/", views.LeaderboardView.as_view(), name="leaderboard"),
    *router.urls,
    # Last: an id the router's patterns refuse (runs/0.5/report/) is a JSON 404 too. Only URLs ending
    # in "/", so APPEND_SLASH still redirects runs -> runs/; not auth/token/ (hyperbench_web/urls.py).
    re_path(r"^(?!auth/token/$).*/$", views.NotFoundView.as_view(), name="api-not-found"),
]
