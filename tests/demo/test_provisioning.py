"""The demo project's first screen says what to try: description + instructions set through Label Studio's API."""
from __future__ import annotations

from pathlib import Path

from dam_tools.provisioning import DEMO_INSTRUCTIONS, project_guide, provision_project, synthetic_tasks

ROOT = Path(__file__).resolve().parents[2]


class RecordingAPI:
    """The LabelStudioAPI calls provision_project makes, recorded."""

    def __init__(self) -> None:
        self.projects: list[dict] = []

    def create_project(self, title, label_config, **fields):
        self.projects.append({"title": title, **fields})
        return 1

    def upload_files(self, project, paths):
        return list(range(1, len(paths) + 1))

    def create_prediction(self, task_id, result, model_version, score=None):
        return task_id

    def connect_ml_backend(self, project, url, title="DAM", interactive=True):
        return 7


def test_project_instructions_name_what_to_try(tmp_path):
    config = (ROOT / "label_config" / "image.xml").read_text()
    api = RecordingAPI()
    provision_project(api, "demo", config, synthetic_tasks(config, tmp_path, 1), "http://backend", guide=project_guide())
    fields = api.projects[0]
    assert fields["show_instruction"] is True and fields["expert_instruction"] == DEMO_INSTRUCTIONS
    for step in ("brush", "KeyPoint", "Auto-Annotation", "Submit", "Start Training"):
        assert step in DEMO_INSTRUCTIONS
    assert "Start Training" in fields["description"]
