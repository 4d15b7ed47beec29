"""`run --resume` and `launch --resume` on something that is not a run directory: one error line
naming the problem, exit status 2, no traceback (issue 16 item 6: launch raised FileNotFoundError)."""

from __future__ import annotations

import pytest

from wsrl_dist.cli import main


def _targets(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    no_config = tmp_path / "empty"
    no_config.mkdir()
    no_checkpoints = tmp_path / "config-only"
    no_checkpoints.mkdir()
    (no_checkpoints / "config.yaml").write_text("task: {name: inverted-pendulum-v5}\n")
    return {"missing": (tmp_path / "nope", "no such directory"), "file": (a_file, "not a directory"),
            "no_config": (no_config, "no config.yaml"), "no_checkpoints": (no_checkpoints, "no checkpoints/")}


@pytest.mark.parametrize("cmd", ["run", "launch"])
@pytest.mark.parametrize("case", ["missing", "file", "no_config", "no_checkpoints"])
def test_bad_resume_target_is_one_error_line(cmd, case, tmp_path, capsys):
    target, why = _targets(tmp_path)[case]
    assert main([cmd, "--resume", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wsrl-dist: cannot resume {target}: {why}"), err


def test_resume_of_a_run_dir_without_checkpoints_is_accepted(tmp_path):
    """Stopped before its first checkpoint (checkpoints/ empty): a valid target, it starts over."""
    from wsrl_dist.storage import check_resume_dir

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("{}\n")
    assert check_resume_dir(tmp_path) == tmp_path
