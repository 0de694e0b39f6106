"""Where the package's configs live, and the folders a user adds with `hydra.searchpath`.

conf/ sits at the top of the repository and is mapped into the wheel as the package bmca_clip.conf
(pyproject.toml). CONF_DIR is found beside this file rather than imported as bmca_clip.conf: in a checkout
run with PYTHONPATH (or a worktree beside another editable install) the import machinery would find the
configs of whichever checkout was installed, not the ones next to the code that runs.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Installed from a wheel: site-packages/bmca_clip/conf; a source checkout or editable install: <repo>/conf.
CONF_DIR = _HERE / "conf" if (_HERE / "conf" / "pretrain.yaml").is_file() else _HERE.parent / "conf"


def searchpath_dirs() -> list[Path]:
    """The file:// folders on hydra.searchpath (command line or primary config), in Hydra's order, while
    Hydra runs this process (train.py, eval.py, a launcher's job); [] otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    return [Path(s.path) for s in sources if s.schema == "file" and s.provider.startswith("hydra.searchpath")]


def config_dirs(group: str) -> list[Path]:
    """conf/<group> of the package, then <dir>/<group> of each folder on hydra.searchpath: where a task or
    suite name is looked up, first match wins (the order in which Hydra picks a config)."""
    return [CONF_DIR / group] + [d / group for d in searchpath_dirs() if (d / group).is_dir()]
