"""vlc as an lmms-eval model: ``lmms-eval --model vlc --model_args <the overrides eval.py takes>``.

lmms-eval (0.7 on) builds its model registry from the Python entry-point group
``lmms_eval.models`` as well as its own models; ``pyproject.toml`` points the ``vlc`` entry there at
:func:`manifest`. Nothing heavy is imported here: every lmms-eval run loads this entry, whichever
model it evaluates. The model itself is ``vlc.integrations.lmms.model.VLC``; docs/evaluation.md
("lmms-eval") has the commands.
"""

from __future__ import annotations

MODEL_ID = "vlc"
CLASS_PATH = "vlc.integrations.lmms.model.VLC"


def manifest():
    """The registry entry lmms-eval loads: model id ``vlc``, a "simple" model (it receives the task's
    prompt text and its ``doc_to_visual``, and applies vlc's own chat template)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
