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
    assert "batch-setup" in done.stdout and "demo" in done.stdout
    subcommand_modules = {module for module, _ in cli.SUBCOMMANDS.values()}
    assert subcommand_modules == {"airflow_gpu.provision.command", "airflow_gpu.demo.command"}
    loaded = set(result["modules"])
    assert "airflow_gpu.cli" in loaded  # the list is the child's, not empty
    assert not subcommand_modules & loaded
    assert not {m for m in loaded if m == "airflow" or m.startswith(("airflow.", "boto3", "airflow_gpu.provision", "airflow_gpu.demo"))}


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_a_missing_subcommand_module_fails_clearly(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "demo", ("airflow_gpu._no_such_module", "run the demo"))
    assert cli.main(["demo"]) == 2
    assert "airflow-gpu demo: not available: this installation has no airflow_gpu._no_such_module module" in capsys.readouterr().err


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
