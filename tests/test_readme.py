"""The README's commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command.startswith("python3.11 -m venv .venv")
    readme = (ROOT / "README.md").read_text()
    assert f"```sh\n{ci_command}\n```" in readme


def test_readme_main_command_installs_the_pinned_torch() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [block.split("```")[0].strip() for block in readme.split("```sh\n")[1:3]]
    assert len(blocks) == 2
    assert all("torch==2.13.0" in block for block in blocks)
