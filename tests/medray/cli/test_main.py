"""`medray`: one module per command, each with add_parser and run; errors exit 1 with the reason."""

import pytest

from medray.cli.main import COMMANDS, build_parser, main

EXPECTED = ["up", "down", "status", "guards", "ray-start", "synth", "kuberay", "models", "demo", "audit", "token", "key",
            "serve"]


def test_the_parser_lists_every_command_in_order_and_each_module_has_the_same_shape():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == EXPECTED
    assert all(callable(m.add_parser) and callable(m.run) for m in COMMANDS)


def test_up_without_local_exits_2_and_a_medray_error_exits_1(capsys):
    assert main(["up"]) == 2
    assert "only `medray up --local` is built in" in capsys.readouterr().err
    assert main(["ray-start", "no-such-type"]) == 1
    assert capsys.readouterr().err.startswith("medray: error: no node type 'no-such-type'")


def test_a_command_is_required():
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
