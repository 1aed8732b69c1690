"""The `mmcli` commands shown in README.md run as written (from the repository root)."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            # the quickstart lines chain the install with `&&`; keep the mmcli part
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mmcli "):
                    cmds.append(part)
    return cmds


def test_readme_has_commands():
    assert len(readme_commands()) >= 4


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_runs(cmd, run_cli, tmp_path):
    # run where README's relative paths resolve, without writing into the repository
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    code, out, err = run_cli(*shlex.split(cmd)[1:])
    assert code == 0, err
    assert out.strip()
