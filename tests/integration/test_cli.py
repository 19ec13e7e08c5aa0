"""The `airflow-gpu` dispatcher: lazy subcommands, clear failures, no Airflow behind batch-setup."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from airflow_gpu import cli


def test_help_lists_the_subcommands_without_loading_them():
    """In a fresh interpreter: --help names every subcommand and imports none of their modules."""
    script = (
        "import json, sys\n"
        "from airflow_gpu import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    for name in ("batch-setup", "demo", "submit", "logs", "status", "cancel", "jobs"):
        assert name in done.stdout
    subcommand_modules = {module for module, _ in cli.SUBCOMMANDS.values()}
    assert subcommand_modules == {"airflow_gpu.provision.command", "airflow_gpu.demo.command"} | {
        f"airflow_gpu.terminal.{name}" for name in ("submit", "logs", "status", "cancel", "jobs")
    }
    loaded = set(result["modules"])
    assert "airflow_gpu.cli" in loaded  # the list is the child's, not empty
    assert not subcommand_modules & loaded
    assert not {
        m
        for m in loaded
        if m == "airflow"
        or m.startswith(("airflow.", "boto3", "airflow_gpu.provision", "airflow_gpu.demo", "airflow_gpu.terminal"))
    }


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_a_missing_subcommand_module_fails_clearly(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "demo", ("airflow_gpu._no_such_module", "run the demo"))
    assert cli.main(["demo"]) == 2
    assert (
        "airflow-gpu demo: not available: this installation has no airflow_gpu._no_such_module module"
        in capsys.readouterr().err
    )


def test_a_broken_dependency_is_not_mistaken_for_a_missing_subcommand(monkeypatch, tmp_path):
    package = tmp_path / "fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "demo", ("fake_pkg.sub", "run the demo"))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        cli.main(["demo"])


def test_the_chosen_module_gets_its_arguments_and_returns_the_exit_status(monkeypatch):
    seen = {}
    module = types.ModuleType("fake_demo")
    module.add_arguments = lambda parser: parser.add_argument("--size", type=int, default=1)
    module.run = lambda args: seen.setdefault("size", args.size) and 7
    monkeypatch.setitem(sys.modules, "fake_demo", module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "demo", ("fake_demo", "run the demo"))
    assert cli.main(["demo", "--size", "3"]) == 7
    assert seen == {"size": 3}


def test_batch_setup_help_shows_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["batch-setup", "--help"])
    out = capsys.readouterr().out
    for option in ("--config", "--dry-run", "--delete", "--endpoint-url", "--output", "--region", "--wait-timeout"):
        assert option in out


def test_batch_setup_never_imports_airflow(tmp_path):
    """Run the console entry point in a fresh interpreter and list what it imported."""
    config = tmp_path / "batch.toml"
    config.write_text('prefix = "x"\n')
    script = (
        "import json, sys\n"
        "from airflow_gpu.cli import main\n"
        f"rc = main(['batch-setup', '--config', {str(config)!r}])\n"
        "print(json.dumps({'rc': rc, 'modules': sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'boto3', 'implicit', 'airflow_gpu'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 2  # the config is incomplete
    assert "region is missing" in done.stderr
    tops = {m.split(".")[0] for m in result["modules"]}
    assert "airflow" not in tops and "implicit" not in tops
    assert "airflow_gpu.demo" not in result["modules"]


# -- rough edges: a closed pipe, --version, help without "(default: None)" ---------------------------

_JSON_COMMAND = """
import json, sys, types
from airflow_gpu import cli

module = types.ModuleType("json_writer")
module.add_arguments = lambda parser: None
module.run = lambda args: json.dump({"actions": ["x" * 100] * 2000}, sys.stdout, indent=2) or 0
sys.modules["json_writer"] = module
cli.SUBCOMMANDS["json-out"] = ("json_writer", "print a JSON document, as batch-setup --output json does")
sys.exit(cli.main(["json-out"]))
"""


def test_a_reader_that_stops_early_gets_no_broken_pipe_traceback():
    # `airflow-gpu batch-setup --output json | head`: the reader is gone before the document is written.
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _JSON_COMMAND], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1


@pytest.mark.parametrize("program", ["airflow-gpu", "airflow-gpu-worker"])
def test_both_commands_say_their_version(program):
    from pathlib import Path

    from airflow_gpu import __version__

    done = subprocess.run(
        [str(Path(sys.executable).parent / program), "--version"], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"{program} {__version__}"), done.stderr


@pytest.mark.parametrize("command", ["als", "run-script"])
def test_worker_help_shows_real_defaults_only(command, capsys):
    from airflow_gpu.worker.__main__ import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in " ".join(out.split()), out
    assert "(default: 16)" in out  # --concurrency: a real default is still shown
