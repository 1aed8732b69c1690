"""The `mmcli` commands shown in README.md run as written (from the repository root)."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from conftest import REPO


def readme_blocks() -> list[list[str]]:
    """The `mmcli` commands of each ```bash block of README.md, in order (blocks without one are left out)."""
    text = (REPO / "README.md").read_text()
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        cmds = []
        for line in block.splitlines():
            # the quickstart lines chain the install with `&&`; keep the mmcli part
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mmcli "):
                    cmds.append(part)
        if cmds:
            blocks.append(cmds)
    return blocks


def readme_commands() -> list[str]:
    return [cmd for block in readme_blocks() for cmd in block]


def test_readme_has_commands():
    assert len(readme_commands()) >= 4


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: b[0][:60])
def test_readme_block_runs(block, run_cli, tmp_path):
    """Each block runs as written, its commands in order in one directory (a later command may use
    what an earlier one made, as `finetune --init runs/pt` uses the pretrain run above it)."""
    # run where README's relative paths resolve, without writing into the repository
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    for cmd in block:
        code, out, err = run_cli(*shlex.split(cmd)[1:])
        assert code == 0, f"{cmd}: {err}"
        assert out.strip(), cmd
