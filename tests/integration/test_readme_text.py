"""README.md's text beside its commands: the configuration table names only groups and options that exist,
and the command extraction test_readme_commands.py relies on (tests/helpers/readme.py) joins continuations,
drops comments and reads the documented variants."""

from __future__ import annotations

import re

from bmca_clip.config import PretrainConfig
from tests.helpers.config import REPO
from tests.helpers.readme import compose_line, readme_commands


def test_config_table_names_only_groups_and_options_that_exist():
    """README's configuration table: each group is a folder of conf/ holding each option it lists;
    a `name.*` row is a key of the schema that has no group."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Configuration", 1)[1].split("\n\n| group |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines()[2:]]
    assert rows, "no configuration table in README.md"
    for group_cell, options_cell in rows:
        group = re.findall(r"`([^`]+)`", group_cell)[0]
        if group.endswith(".*"):
            key = group[:-2]
            assert key in PretrainConfig.__dataclass_fields__, group
            assert not (REPO / "conf" / key).is_dir(), f"{group}: conf/{key}/ exists, so it is a group"
            continue
        assert (REPO / "conf" / group).is_dir(), f"README lists the group {group}: there is no conf/{group}/"
        for option in re.findall(r"`([^`/]+)`", options_cell):
            assert (REPO / "conf" / group / f"{option}.yaml").is_file(), f"{group}={option}: no such option"


def test_extraction_joins_continuations_drops_comments_and_reads_variants():
    text = (
        "```bash\n# a comment\nexport A=1   # why\npython train.py a=1 \\\n    'b=[x, y]'  # note\n\n"
        "# Resume: same command plus\n    resume=latest\n```\n```python\nimport x\n```\n"
    )
    assert readme_commands(text) == [
        "export A=1",
        "python train.py a=1 'b=[x, y]'",
        "python train.py a=1 'b=[x, y]' resume=latest",
    ]
    assert compose_line("sbatch --nodes=4 slurm/train.sbatch -m a=1,2 ...") == "python train.py a=1 --cfg job"
