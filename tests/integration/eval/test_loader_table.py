"""The loaders' shared Table (bmca_clip/eval/loaders/table.py): a missing column names the file and the
columns it has."""

from __future__ import annotations

import pytest

from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.tasks import TaskError
from tests.helpers.eval_loaders import SKIN, task


def test_table_column_errors_name_the_file_and_the_columns_found(tmp_path):
    table = Table("org/skin@abc:data/test.parquet", {"dx": ["a"]}, {}, [0])
    with pytest.raises(
        TaskError, match=r"task 't': org/skin@abc:data/test.parquet: no column 'label'.*\['dx'\]"
    ):
        table.column(task(tmp_path, "t", SKIN + "  label_column: label\n"), "label_column")
