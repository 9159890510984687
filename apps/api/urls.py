from __future__ import annotations

from django.urls import path
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
]
